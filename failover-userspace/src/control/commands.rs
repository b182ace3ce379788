//! The control subcommands of the `failover` binary: ask the daemon, print its answer.

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use super::{
    client::{self, ClientError},
    protocol::{Request, Response, Status},
    render::{self, Rates},
};

/// Clears a terminal and puts the cursor at the top left, for `--watch`.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// The gap between the two samples of a single `failover status`, when `--interval` is
/// not given: long enough for meaningful rates, short enough not to feel slow.
const DEFAULT_SAMPLE_GAP: Duration = Duration::from_millis(500);

/// The refresh period of `failover status --watch`, when `--interval` is not given.
const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A control subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The daemon could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// The daemon's message.
        message: String,
    },
    /// The daemon answered with a response of the wrong kind.
    #[error(
        "the daemon answered a {asked} request with a {got} response: are the CLI and the \
         daemon the same version?"
    )]
    Unexpected {
        /// The request's command.
        asked: &'static str,
        /// The response's kind.
        got: &'static str,
    },
    /// Writing to standard output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

/// How `failover status` samples and prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusOptions {
    /// Print [`Status`] as pretty JSON (one sample, no rates) instead of tables.
    pub json: bool,
    /// Refresh every interval until Ctrl-C.
    pub watch: bool,
    /// With `watch`, the refresh period (default 1 s); without, the gap between the two
    /// samples rates are computed from (default 500 ms).
    pub interval: Option<Duration>,
    /// Compute rates from two samples; `false` takes one sample and shows `-`.
    pub rates: bool,
    /// Standard output is a terminal: `watch` redraws in place rather than appending
    /// snapshots separated by blank lines.
    pub terminal: bool,
}

/// `failover status`: prints the daemon's status as tables or JSON, once or until Ctrl-C.
///
/// # Errors
///
/// A [`CommandError`] if the first sample fails. While watching, later failures (a daemon
/// restart) are shown in place of a snapshot and the watch goes on. A closed output pipe
/// (`failover status --watch | head`) ends the command quietly.
pub async fn status(
    socket: &Path,
    options: &StatusOptions,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let run = status_loop(socket, options, out);
    let result = if options.watch {
        tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        run.await
    };
    quiet_broken_pipe(result)
}

async fn status_loop(
    socket: &Path,
    options: &StatusOptions,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let interval = options.interval.unwrap_or(if options.watch {
        DEFAULT_WATCH_INTERVAL
    } else {
        DEFAULT_SAMPLE_GAP
    });
    let with_rates = options.rates && !options.json;
    let mut previous = None;
    if with_rates {
        previous = Some(sample(socket).await?);
        // A watch shows its first frame soon, then refreshes every interval.
        let gap = if options.watch {
            interval.min(DEFAULT_SAMPLE_GAP)
        } else {
            interval
        };
        tokio::time::sleep(gap).await;
    }
    let mut frames = 0_u64;
    loop {
        let frame = match sample(socket).await {
            Ok(current) => {
                let text = if options.json {
                    json(&current)
                } else {
                    let rates = previous.as_ref().and_then(|p| Rates::between(p, &current));
                    render::status(&current, rates.as_ref())
                };
                if with_rates {
                    previous = Some(current);
                }
                text
            }
            // Keep watching through a daemon restart, once it has answered at least once.
            Err(e) if options.watch && (frames > 0 || previous.is_some()) => {
                previous = None;
                format!("failover: {e}\n")
            }
            Err(e) => return Err(e),
        };
        let text = match (options.watch, options.terminal) {
            (true, true) => format!("{CLEAR_SCREEN}{frame}"),
            (true, false) if frames > 0 => format!("\n{frame}"),
            _ => frame,
        };
        emit(out, &text)?;
        frames += 1;
        if !options.watch {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// `failover events`: the newest `limit` events (all kept ones by default), as lines or
/// as a JSON array.
///
/// # Errors
///
/// A [`CommandError`] if the daemon cannot be asked or answers with an error.
pub async fn events(
    socket: &Path,
    limit: Option<usize>,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let request = Request::Events { limit };
    let events = match ask(socket, &request).await? {
        Response::Events { events } => events,
        other => return Err(unexpected(&request, &other)),
    };
    let text = if as_json {
        json(&events)
    } else {
        render::events(&events)
    };
    quiet_broken_pipe(emit(out, &text))
}

/// `failover drain|disable|enable|failback|reload`: sends `request`, prints the daemon's
/// one-line report.
///
/// # Errors
///
/// A [`CommandError`] if the daemon cannot be asked or refuses ([`CommandError::Daemon`]).
pub async fn act(
    socket: &Path,
    request: &Request,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match ask(socket, request).await? {
        Response::Done { message } => quiet_broken_pipe(emit(out, &format!("{message}\n"))),
        other => Err(unexpected(request, &other)),
    }
}

/// `failover explain`: which backend `client`'s packets to `service` go to, and why.
///
/// # Errors
///
/// A [`CommandError`] if the daemon cannot be asked or answers with an error.
pub async fn explain(
    socket: &Path,
    service: &str,
    client: SocketAddr,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let request = Request::Explain {
        service: service.to_owned(),
        client,
    };
    let explanation = match ask(socket, &request).await? {
        Response::Explain(e) => e,
        other => return Err(unexpected(&request, &other)),
    };
    let text = if as_json {
        json(&explanation)
    } else {
        render::explanation(&explanation)
    };
    quiet_broken_pipe(emit(out, &text))
}

/// Sends `request`; a [`Response::Error`] becomes [`CommandError::Daemon`].
async fn ask(socket: &Path, request: &Request) -> Result<Response, CommandError> {
    match client::request(socket, request, client::DEFAULT_TIMEOUT).await? {
        Response::Error { message } => Err(CommandError::Daemon { message }),
        response => Ok(response),
    }
}

async fn sample(socket: &Path) -> Result<Status, CommandError> {
    match ask(socket, &Request::Status).await? {
        Response::Status(status) => Ok(status),
        other => Err(unexpected(&Request::Status, &other)),
    }
}

fn unexpected(request: &Request, response: &Response) -> CommandError {
    CommandError::Unexpected {
        asked: match request {
            Request::Status => "status",
            Request::Events { .. } => "events",
            Request::Drain { .. } => "drain",
            Request::Disable { .. } => "disable",
            Request::Enable { .. } => "enable",
            Request::Failback { .. } => "failback",
            Request::Reload => "reload",
            Request::Explain { .. } => "explain",
        },
        got: match response {
            Response::Status(_) => "status",
            Response::Events { .. } => "events",
            Response::Done { .. } => "done",
            Response::Explain(_) => "explain",
            Response::Error { .. } => "error",
        },
    }
}

/// Pretty JSON with a final newline.
fn json<T: serde::Serialize>(value: &T) -> String {
    // These types hold only strings, numbers and options: serializing cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn emit(out: &mut dyn Write, text: &str) -> Result<(), CommandError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CommandError::Output)
}

/// A reader that went away (`| head`) is not an error.
fn quiet_broken_pipe(result: Result<(), CommandError>) -> Result<(), CommandError> {
    match result {
        Err(CommandError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
