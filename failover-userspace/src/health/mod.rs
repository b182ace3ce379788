//! Active health-check probes: one probe is one bounded attempt (tcp, http, https, udp or
//! exec) against one [`Target`]; the rise/fall state machine lives with the caller.
//!
//! Every probe ends in an [`Outcome`] and never in an error: what a failure *means* is
//! decided in one place, [`ProbeError::into_outcome`]. `Refused` is kept apart from
//! `Failed` because it is definitive evidence that nothing serves the target (a TCP RST to
//! the SYN, an ICMP unreachable), which the state machine may act on faster
//! (`fall_refused`).

mod exec;
mod http;
pub mod scheduler;
mod syn;
mod tcp;
mod tls;
mod udp;

use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time;

use crate::config::{CheckConfig, CheckKind, CheckType};
use http::HttpError;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered as the check expects.
    Up,
    /// Definitive evidence that nothing serves the target: the connection was refused
    /// (TCP RST, or ICMP port unreachable for UDP) or the address is unreachable (ICMP
    /// host or network unreachable). A crashed server looks like this.
    Refused {
        /// What was refused, and the system's words for it.
        reason: String,
    },
    /// The target answered, but not as the check expects (wrong status, wrong reply,
    /// non-zero exit), or the probe could not be carried out.
    Failed {
        /// What was wrong.
        reason: String,
    },
    /// No answer within the check's timeout.
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
}

impl Outcome {
    /// Whether the probe succeeded.
    pub const fn is_up(&self) -> bool {
        matches!(self, Self::Up)
    }

    /// A short description used as the reason of a health change.
    pub fn reason(&self) -> String {
        match self {
            Self::Up => "check passed".to_owned(),
            Self::Refused { reason } | Self::Failed { reason } => reason.clone(),
            Self::Timeout { after } => {
                format!("timeout after {}", crate::config::format_duration(*after))
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Up => f.write_str("up"),
            Self::Refused { reason } => write!(f, "refused: {reason}"),
            Self::Failed { reason } => write!(f, "failed: {reason}"),
            Self::Timeout { after } => write!(f, "no answer within {after:?}"),
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// What the probe found.
    pub outcome: Outcome,
    /// How long the probe took, from its first step (connect, spawn) to its outcome; a
    /// wait for a [`Checker`] slot is not included.
    pub latency: Duration,
    /// When the probe finished.
    pub at: Instant,
}

/// Whether and how an HTTP check uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tls {
    /// Plain HTTP (`type = "http"`).
    Off,
    /// HTTPS, with the server certificate verified against the system's root
    /// certificates and the check's host (or the target address).
    Verified,
    /// HTTPS accepting any server certificate (`tls_verify = false`). The connection is
    /// encrypted but not authenticated: anything on the path can answer in the backend's
    /// name and make it look up. Use it only for backends with self-signed certificates
    /// on a network you trust.
    Unverified,
}

/// An HTTP or HTTPS check, as a hashable value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpProbe {
    /// Request method.
    pub method: String,
    /// Request path, starting with `/`.
    pub path: String,
    /// `Host` header (and TLS server name); `None` uses the target address and port.
    pub host: Option<String>,
    /// Statuses counted as healthy, as inclusive ranges.
    pub status: Vec<RangeInclusive<u16>>,
    /// Substring the response body must contain (searched in the first 64 KiB).
    pub body: Option<String>,
    /// Plain HTTP or HTTPS.
    pub tls: Tls,
}

impl HttpProbe {
    /// Whether `status` counts as healthy.
    pub fn accepts(&self, status: u16) -> bool {
        self.status.iter().any(|r| r.contains(&status))
    }
}

/// How a target is probed: a hashable copy of a [`CheckKind`], without the `none` kind
/// (which has no probe).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// TCP connect, optionally writing `send` and matching a reply prefix; or, half-open,
    /// a SYN answered by a SYN-ACK (see [`syn`]).
    Tcp {
        /// Bytes written after connecting.
        send: Option<String>,
        /// Prefix the reply must start with.
        expect: Option<String>,
        /// A SYN from a raw socket instead of a connection (never with `send`/`expect`).
        half_open: bool,
    },
    /// HTTP or HTTPS request.
    Http(HttpProbe),
    /// UDP datagram, waiting for a reply.
    Udp {
        /// Datagram sent to the target.
        send: String,
        /// Prefix the reply must start with; `None` accepts any reply.
        expect: Option<String>,
    },
    /// A command run by the daemon; exit status 0 means up.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
}

impl ProbeKind {
    /// The probe for a check, or `None` for a `none` check.
    pub fn from_check(kind: &CheckKind) -> Option<Self> {
        Some(match kind {
            CheckKind::Tcp {
                send,
                expect,
                half_open,
            } => Self::Tcp {
                send: send.clone(),
                expect: expect.clone(),
                half_open: *half_open,
            },
            CheckKind::Http {
                path,
                method,
                host,
                status,
                body,
                tls,
                tls_verify,
            } => Self::Http(HttpProbe {
                method: method.clone(),
                path: path.clone(),
                host: host.clone(),
                status: status.ranges().to_vec(),
                body: body.clone(),
                tls: match (tls, tls_verify) {
                    (false, _) => Tls::Off,
                    (true, true) => Tls::Verified,
                    (true, false) => Tls::Unverified,
                },
            }),
            CheckKind::Udp { send, expect } => Self::Udp {
                send: send.clone(),
                expect: expect.clone(),
            },
            CheckKind::Exec { command } => Self::Exec {
                command: command.clone(),
            },
            CheckKind::None => return None,
        })
    }

    /// The check's `type` as spelled in the config file.
    pub const fn check_type(&self) -> CheckType {
        match self {
            Self::Tcp { .. } => CheckType::Tcp,
            Self::Http(HttpProbe { tls: Tls::Off, .. }) => CheckType::Http,
            Self::Http(_) => CheckType::Https,
            Self::Udp { .. } => CheckType::Udp,
            Self::Exec { .. } => CheckType::Exec,
        }
    }

    /// Whether the probe opens a connection, and so cannot work without a port.
    pub const fn needs_port(&self) -> bool {
        !matches!(self, Self::Exec { .. })
    }
}

/// A probe target: where and how. Equal targets are probed once, so the daemon can share
/// one probe among the services that use the same backend with the same check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Address probed.
    pub address: IpAddr,
    /// Port probed. Always `Some` for connecting probes built by [`Target::new`]; an exec
    /// probe may have none (its command then gets no `FAILOVER_BACKEND_PORT`).
    pub port: Option<u16>,
    /// What the probe does.
    pub kind: ProbeKind,
    /// How long one probe may take.
    pub timeout: Duration,
}

impl Target {
    /// The target of `check` for a backend at `backend_addr`.
    ///
    /// The check's own `address` and `port` take precedence; then the backend's port
    /// (nat mode), then the service's port (`None` for `port = "all"` services).
    ///
    /// Returns `None` for a `none` check (nothing to probe), and for a tcp, http, https
    /// or udp check when no port can be determined (config validation rejects that, so
    /// it only happens with hand-built configs). An exec check needs no port.
    pub fn new(
        backend_addr: IpAddr,
        service_port: Option<u16>,
        backend_port: Option<u16>,
        check: &CheckConfig,
    ) -> Option<Self> {
        let kind = ProbeKind::from_check(&check.kind)?;
        let port = check.port.or(backend_port).or(service_port);
        if port.is_none() && kind.needs_port() {
            return None;
        }
        Some(Self {
            address: check.address.unwrap_or(backend_addr),
            port,
            kind,
            timeout: check.timeout,
        })
    }

    /// Address and port, for the probes that connect.
    fn socket_addr(&self) -> Result<SocketAddr, ProbeError> {
        let port = self.port.ok_or(ProbeError::NoPort)?;
        Ok(SocketAddr::new(self.address, port))
    }
}

impl fmt::Display for Target {
    /// `tcp 10.0.0.1:80`, `https [2001:db8::1]:443/healthz`, `exec 10.0.0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind.check_type())?;
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.address, port))?,
            None => write!(f, "{}", self.address)?,
        }
        if let ProbeKind::Http(http) = &self.kind {
            f.write_str(&http.path)?;
        }
        Ok(())
    }
}

/// Probes `target` once.
///
/// Never panics and never fails: every problem becomes an [`Outcome`]. Returns within
/// `target.timeout` plus scheduling slack; an exec probe that runs out of time has its
/// process group killed.
pub async fn probe(target: &Target) -> ProbeResult {
    let start = Instant::now();
    let outcome = match time::timeout(target.timeout, attempt(target)).await {
        Ok(Ok(())) => Outcome::Up,
        Ok(Err(error)) => error.into_outcome(),
        Err(_elapsed) => Outcome::Timeout {
            after: target.timeout,
        },
    };
    let at = Instant::now();
    ProbeResult {
        outcome,
        latency: at.duration_since(start),
        at,
    }
}

/// One unbounded attempt; [`probe`] bounds it and turns its error into an outcome.
async fn attempt(target: &Target) -> Result<(), ProbeError> {
    match &target.kind {
        // A half-open target probed alone (they are normally probed by the scheduler's
        // engine) connects: the same evidence, at the cost of a connection.
        ProbeKind::Tcp { send, expect, .. } => {
            tcp::probe(target.socket_addr()?, send.as_deref(), expect.as_deref()).await
        }
        ProbeKind::Http(check) => http::probe(target.socket_addr()?, check).await,
        ProbeKind::Udp { send, expect } => {
            udp::probe(target.socket_addr()?, send, expect.as_deref()).await
        }
        ProbeKind::Exec { command } => exec::probe(command, target.address, target.port).await,
    }
}

/// Runs probes concurrently, at most `max_concurrent` at a time, so a burst of due checks
/// cannot open thousands of sockets or processes at once. A probe holds its slot for at
/// most its own timeout, so a hung backend delays no other probe by more than that.
///
/// Cloning is cheap and the clones share the bound.
#[derive(Debug, Clone)]
pub struct Checker {
    slots: Arc<Semaphore>,
    raw: syn::RawSockets,
}

impl Checker {
    /// A checker running at most `max_concurrent` probes at once (at least 1).
    pub fn new(max_concurrent: usize) -> Self {
        let permits = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(permits)),
            raw: syn::RawSockets::default(),
        }
    }

    /// The raw sockets of half-open checks (opened on first use, shared by the clones).
    pub(crate) fn raw_sockets(&self) -> &syn::RawSockets {
        &self.raw
    }

    /// Opens the raw sockets half-open checks need, so a daemon (or a reload) that
    /// cannot have them is refused before anything changes.
    pub fn prepare_half_open(&self, v4: bool, v6: bool) -> io::Result<()> {
        if v4 {
            self.raw.get(false)?;
        }
        if v6 {
            self.raw.get(true)?;
        }
        Ok(())
    }

    /// Waits for a free slot, then probes `target` once.
    pub async fn run(&self, target: Target) -> ProbeResult {
        let queued = Instant::now();
        // The semaphore is never closed; if it were, probing without a slot beats
        // reporting a backend down for a reason of our own.
        let _slot = self.slots.acquire().await.ok();
        let queued = queued.elapsed();
        // Boxed, once a slot is held: a probe's future is over 11 KiB (it can hold an
        // HTTPS exchange). Inline, it would size every caller's future, so every probe
        // task of the scheduler, idle or waiting for a slot (110 MiB for 10,000 targets);
        // boxed here, only the probes in flight hold it.
        let result = Box::pin(probe(&target)).await;
        tracing::debug!(
            check = %target.kind.check_type(),
            address = %target.address,
            port = ?target.port,
            outcome = %result.outcome,
            latency_ms = result.latency.as_secs_f64() * 1e3,
            queued_ms = queued.as_secs_f64() * 1e3,
            "health probe finished"
        );
        result
    }
}

/// Why a probe did not find its target up; [`ProbeError::into_outcome`] decides which
/// [`Outcome`] each becomes.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// Definitive refusal: connection refused or reset, host or network unreachable.
    #[error("{action} {addr}")]
    Refused {
        /// What was being done, e.g. "connecting to".
        action: &'static str,
        /// The peer.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O error with the target.
    #[error("{action} {addr}")]
    Io {
        /// What was being done, e.g. "reading the reply from".
        action: &'static str,
        /// The peer.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The reply does not start with the expected bytes.
    #[error("expected reply starting with {expected:?}, got {got:?}")]
    UnexpectedReply {
        /// The configured prefix.
        expected: String,
        /// The start of the reply (lossy UTF-8, possibly cut).
        got: String,
    },
    /// The peer closed the connection before sending the expected prefix.
    #[error("expected reply starting with {expected:?}, got {got:?} before the connection closed")]
    ShortReply {
        /// The configured prefix.
        expected: String,
        /// Everything received (lossy UTF-8).
        got: String,
    },
    /// The HTTP response was not healthy.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The TLS handshake failed (often: certificate not trusted).
    #[error("TLS handshake with {addr}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// The handshake error.
        #[source]
        source: io::Error,
    },
    /// The check's host is not a valid TLS server name.
    #[error("host {host:?} is not a valid TLS server name: set `host` to a DNS name or address")]
    ServerName {
        /// The configured host.
        host: String,
    },
    /// The TLS client configuration could not be built.
    #[error("building the TLS client configuration")]
    TlsConfig {
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The check command could not be started.
    #[error("cannot run {program:?}: check the command's path and permissions")]
    Spawn {
        /// The program.
        program: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Waiting for the check command failed.
    #[error("waiting for {program:?}")]
    Wait {
        /// The program.
        program: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The check command ended unsuccessfully.
    #[error("{status}{}", .stderr.as_ref().map(|line| format!(": {line}")).unwrap_or_default())]
    Exit {
        /// "exit status N" or "killed by signal N".
        status: String,
        /// The first line of its standard error, if any.
        stderr: Option<String>,
    },
    /// The exec check has an empty command (config validation rejects that).
    #[error("the exec check has no command: set `command`")]
    EmptyCommand,
    /// A connecting probe without a port (only from hand-built targets).
    #[error("no port to probe: set `port` in the check")]
    NoPort,
}

impl ProbeError {
    /// The outcome this error stands for; the reason is the whole error chain.
    fn into_outcome(self) -> Outcome {
        let reason = chain(&self);
        match self {
            Self::Refused { .. } => Outcome::Refused { reason },
            _ => Outcome::Failed { reason },
        }
    }
}

/// `error: cause: cause`, for reasons read by operators.
fn chain(error: &ProbeError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether an I/O error is definitive evidence that nothing serves the peer.
fn is_refusal(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Maps an error to [`ProbeError::Refused`] when it is a refusal, else to
/// [`ProbeError::Io`].
fn refusable(action: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| {
        if is_refusal(&source) {
            ProbeError::Refused {
                action,
                addr,
                source,
            }
        } else {
            ProbeError::Io {
                action,
                addr,
                source,
            }
        }
    }
}

/// Maps an error to [`ProbeError::Io`]: after a TCP connection is established, a reset is
/// not definitive (a server may reset a connection it does not like), so it only fails.
fn io_failure(action: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io {
        action,
        addr,
        source,
    }
}

/// Opens a TCP connection; refusals and unreachable addresses become
/// [`ProbeError::Refused`].
///
/// The connection is closed with a reset when dropped (`SO_LINGER` 0), as HAProxy closes
/// its checks: an orderly close would leave every check in TIME_WAIT on this host for a
/// minute (at 10,000 checks a second, 600,000 sockets: more than the kernel keeps by
/// default, `tcp_max_tw_buckets`, and every connect searches ports past them), and costs
/// a FIN exchange the check has no use for.
async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(refusable("connecting to", addr))?;
    // Without it the check still works: the connection only lingers in TIME_WAIT.
    let _ = stream.set_zero_linger();
    Ok(stream)
}

/// How many bytes of an unexpected reply a reason quotes.
const QUOTED_REPLY_BYTES: usize = 64;

/// The start of `bytes` as text for a reason.
fn quote(bytes: &[u8]) -> String {
    let cut = bytes.len().min(QUOTED_REPLY_BYTES);
    let mut text = String::from_utf8_lossy(&bytes[..cut]).into_owned();
    if cut < bytes.len() {
        text.push('…');
    }
    text
}

/// Checks that a complete reply starts with `expected`.
fn expect_prefix(expected: &str, reply: &[u8]) -> Result<(), ProbeError> {
    if reply.starts_with(expected.as_bytes()) {
        Ok(())
    } else {
        Err(ProbeError::UnexpectedReply {
            expected: expected.to_owned(),
            got: quote(reply),
        })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the probe tests: targets on loopback and hung servers.

    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, UdpSocket};
    use tokio::task::JoinHandle;

    use super::{ProbeKind, Target};

    /// 127.0.0.1.
    pub(crate) const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A target on `addr`.
    pub(crate) fn target(addr: SocketAddr, kind: ProbeKind, timeout: Duration) -> Target {
        Target {
            address: addr.ip(),
            port: Some(addr.port()),
            kind,
            timeout,
        }
    }

    /// A loopback TCP port with nothing listening: bound, then released.
    pub(crate) async fn closed_tcp_port() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A loopback UDP port with nothing bound: bound, then released.
    pub(crate) async fn closed_udp_port() -> SocketAddr {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        socket.local_addr().unwrap()
    }

    /// A TCP server that accepts connections, reads what comes and never answers. It runs
    /// until the test's runtime ends.
    pub(crate) async fn silent_tcp_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        (addr, task)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use tokio::task::JoinSet;

    use super::testing::{LOCALHOST, silent_tcp_server, target};
    use super::*;
    use crate::config::StatusSet;

    fn check(kind: CheckKind) -> CheckConfig {
        CheckConfig {
            kind,
            interval: Duration::from_secs(1),
            fast_interval: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 3,
            fall_refused: 1,
            jitter_percent: 10,
            port: None,
            address: None,
        }
    }

    fn tcp_check() -> CheckConfig {
        check(CheckKind::Tcp {
            send: None,
            expect: None,
            half_open: false,
        })
    }

    const BACKEND: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    #[test]
    fn target_uses_service_port_without_overrides() {
        let t = Target::new(BACKEND, Some(80), None, &tcp_check()).unwrap();
        assert_eq!((t.address, t.port), (BACKEND, Some(80)));
        assert_eq!(t.timeout, Duration::from_millis(300));
    }

    #[test]
    fn target_prefers_check_port_then_backend_port() {
        let t = Target::new(BACKEND, Some(80), Some(8080), &tcp_check()).unwrap();
        assert_eq!(t.port, Some(8080));
        let mut c = tcp_check();
        c.port = Some(9000);
        let t = Target::new(BACKEND, Some(80), Some(8080), &c).unwrap();
        assert_eq!(t.port, Some(9000));
    }

    #[test]
    fn target_prefers_check_address() {
        let mut c = tcp_check();
        c.address = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let t = Target::new(BACKEND, Some(80), None, &c).unwrap();
        assert_eq!(t.address, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn target_is_none_for_none_checks_and_portless_connecting_checks() {
        assert_eq!(
            Target::new(BACKEND, Some(80), None, &check(CheckKind::None)),
            None
        );
        assert_eq!(Target::new(BACKEND, None, None, &tcp_check()), None);
    }

    #[test]
    fn exec_target_needs_no_port() {
        let c = check(CheckKind::Exec {
            command: vec!["true".into()],
        });
        let t = Target::new(BACKEND, None, None, &c).unwrap();
        assert_eq!(t.port, None);
        assert_eq!(t.to_string(), "exec 192.0.2.10");
    }

    #[test]
    fn http_target_copies_the_check() {
        let c = check(CheckKind::Http {
            path: "/healthz".into(),
            method: "GET".into(),
            host: None,
            status: "200,300-399".parse::<StatusSet>().unwrap(),
            body: Some("ok".into()),
            tls: true,
            tls_verify: false,
        });
        let t = Target::new(BACKEND, Some(443), None, &c).unwrap();
        let ProbeKind::Http(http) = &t.kind else {
            panic!("expected an http probe, got {:?}", t.kind);
        };
        assert_eq!(http.tls, Tls::Unverified);
        assert!(http.accepts(200) && http.accepts(302) && !http.accepts(204));
        assert_eq!(t.to_string(), "https 192.0.2.10:443/healthz");
    }

    #[test]
    fn equal_checks_give_equal_targets() {
        use std::collections::HashSet;
        let a = Target::new(BACKEND, Some(80), None, &tcp_check()).unwrap();
        let b = Target::new(BACKEND, None, Some(80), &tcp_check()).unwrap();
        assert_eq!(HashSet::from([a, b]).len(), 1);
    }

    #[tokio::test]
    async fn probe_without_port_fails_instead_of_panicking() {
        let t = Target {
            address: LOCALHOST,
            port: None,
            kind: ProbeKind::Tcp {
                send: None,
                expect: None,
                half_open: false,
            },
            timeout: Duration::from_millis(200),
        };
        let result = probe(&t).await;
        assert_eq!(
            result.outcome,
            Outcome::Failed {
                reason: "no port to probe: set `port` in the check".into()
            }
        );
    }

    fn hung_tcp(addr: SocketAddr, timeout: Duration) -> Target {
        target(
            addr,
            ProbeKind::Tcp {
                send: Some("PING\r\n".into()),
                expect: Some("+PONG".into()),
                half_open: false,
            },
            timeout,
        )
    }

    #[tokio::test]
    async fn checker_runs_hung_probes_concurrently() {
        let (addr, _server) = silent_tcp_server().await;
        let checker = Checker::new(20);
        let start = Instant::now();
        let mut probes = JoinSet::new();
        for _ in 0..20 {
            let checker = checker.clone();
            let t = hung_tcp(addr, Duration::from_millis(200));
            probes.spawn(async move { checker.run(t).await });
        }
        let mut timeouts = 0;
        while let Some(result) = probes.join_next().await {
            let result = result.unwrap();
            assert!(
                matches!(result.outcome, Outcome::Timeout { .. }),
                "{result:?}"
            );
            timeouts += 1;
        }
        assert_eq!(timeouts, 20);
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn checker_bounds_concurrency() {
        let (addr, _server) = silent_tcp_server().await;
        let checker = Checker::new(2);
        let start = Instant::now();
        let mut probes = JoinSet::new();
        for _ in 0..4 {
            let checker = checker.clone();
            let t = hung_tcp(addr, Duration::from_millis(150));
            probes.spawn(async move { checker.run(t).await });
        }
        while let Some(result) = probes.join_next().await {
            let result = result.unwrap();
            // The wait for a slot is not part of the probe's latency.
            assert!(result.latency < Duration::from_millis(250), "{result:?}");
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "took {elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }

    #[test]
    fn zero_concurrency_still_runs_probes() {
        assert_eq!(Checker::new(0).slots.available_permits(), 1);
    }
}
