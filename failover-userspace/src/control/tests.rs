//! Server and client together, over real sockets in a temporary directory.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    ClientError, ControlError, Request, Response, ServerOptions, protocol::tests::sample_status,
    request, serve_with,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "failover-control-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Calls = mpsc::Receiver<(Request, oneshot::Sender<Response>)>;

/// A running server at `dir/sub/control.sock` (so the directory creation is exercised),
/// stopped by sending on `stop`.
struct Server {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ControlError>>,
}

impl Server {
    async fn start(dir: &TempDir, options: ServerOptions) -> (Self, Calls) {
        let path = dir.0.join("sub").join("control.sock");
        let (calls_tx, calls) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let path = path.clone();
            async move { serve_with(&path, calls_tx, stopped, options).await }
        });
        wait_for_socket(&path).await;
        let server = Self {
            path,
            stop: Some(stop),
            task,
        };
        (server, calls)
    }

    async fn stop(mut self) -> Result<(), ControlError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

async fn wait_for_socket(path: &Path) {
    // Connecting, not the file's existence: a stale file may be there before the bind.
    for _ in 0..500 {
        if UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never listened on {}", path.display());
}

/// A handler that answers every `Status` with the sample status, and `Drain` with `Done`.
fn answer_status(mut calls: Calls) {
    tokio::spawn(async move {
        while let Some((req, reply)) = calls.recv().await {
            let response = match req {
                Request::Status => Response::Status(sample_status()),
                Request::Drain { service, backend } => Response::Done {
                    message: format!("{service}/{backend}: draining"),
                },
                other => Response::Error {
                    message: format!("unexpected {other:?}"),
                },
            };
            let _ = reply.send(response);
        }
    });
}

/// Sends a raw line and returns the raw answer line.
async fn raw_exchange(path: &Path, line: &[u8]) -> Response {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream.write_all(line).await.unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await.unwrap();
    serde_json::from_str(&answer).unwrap()
}

fn error_message(response: Response) -> String {
    match response {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn status_over_the_socket() {
    let dir = TempDir::new();
    let (server, calls) = Server::start(&dir, ServerOptions::default()).await;
    answer_status(calls);

    // The test runs as the daemon's own user (root or not): allowed.
    let response = request(&server.path, &Request::Status, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response, Response::Status(sample_status()));
    let drain = Request::Drain {
        service: "web".into(),
        backend: "web-2".into(),
    };
    assert_eq!(
        request(&server.path, &drain, TIMEOUT).await.unwrap(),
        Response::Done {
            message: "web/web-2: draining".into()
        }
    );

    let mode = std::fs::metadata(&server.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(server.path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "directory mode {dir_mode:o}");

    let path = server.path.clone();
    server.stop().await.unwrap();
    assert!(!path.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn bad_requests_get_errors() {
    let dir = TempDir::new();
    let options = ServerOptions {
        request_timeout: Duration::from_millis(200),
        max_request_bytes: 1024,
        ..ServerOptions::default()
    };
    let (server, calls) = Server::start(&dir, options).await;
    answer_status(calls);

    let message = error_message(raw_exchange(&server.path, b"{\"command\":\n").await);
    assert!(message.starts_with("malformed request: "), "{message}");
    let message = error_message(raw_exchange(&server.path, b"{\"command\":\"explode\"}\n").await);
    assert!(message.contains("unknown variant `explode`"), "{message}");
    let message = error_message(raw_exchange(&server.path, b"\n").await);
    assert!(message.starts_with("empty request"), "{message}");
    let long = vec![b' '; 2000];
    let message = error_message(raw_exchange(&server.path, &long).await);
    assert!(message.starts_with("request too long"), "{message}");
    // Connected, but silent: the request timeout answers.
    let message = error_message(raw_exchange(&server.path, b"").await);
    assert!(message.starts_with("no request within 200ms"), "{message}");

    // The server still serves well-formed requests.
    let response = request(&server.path, &Request::Status, TIMEOUT)
        .await
        .unwrap();
    assert!(matches!(response, Response::Status(_)));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_handler_that_never_answers_times_out() {
    let dir = TempDir::new();
    let options = ServerOptions {
        reply_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let (server, mut calls) = Server::start(&dir, options).await;
    // Takes requests and keeps their reply senders without answering.
    let hoard = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(call) = calls.recv().await {
            kept.push(call);
        }
    });

    let response = request(&server.path, &Request::Reload, TIMEOUT)
        .await
        .unwrap();
    let message = error_message(response);
    assert!(
        message.starts_with("the daemon did not answer in time"),
        "{message}"
    );
    server.stop().await.unwrap();
    hoard.abort();
}

#[tokio::test]
async fn a_dropped_reply_is_reported() {
    let dir = TempDir::new();
    let (server, mut calls) = Server::start(&dir, ServerOptions::default()).await;
    tokio::spawn(async move { while calls.recv().await.is_some() {} });
    let message = error_message(
        request(&server.path, &Request::Reload, TIMEOUT)
            .await
            .unwrap(),
    );
    assert!(message.contains("dropped the request"), "{message}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn missing_socket_says_no_daemon() {
    let dir = TempDir::new();
    let path = dir.0.join("control.sock");
    let err = request(&path, &Request::Status, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "no failover daemon is running (no control socket at {})",
            path.display()
        )),
        "{message}"
    );
    assert!(message.contains("failover run --config FILE"), "{message}");
}

#[tokio::test]
async fn stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = TempDir::new();
    let (server, calls) = Server::start(&dir, ServerOptions::default()).await;
    answer_status(calls);

    // A second daemon on the same path must refuse to start, and leave the socket alone.
    let (tx, _rx) = mpsc::channel(1);
    let err = serve_with(
        &server.path,
        tx,
        std::future::ready(()),
        ServerOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ControlError::AlreadyRunning { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("another failover daemon is running")
    );
    assert!(
        request(&server.path, &Request::Status, TIMEOUT)
            .await
            .is_ok()
    );
    server.stop().await.unwrap();

    // A socket file nothing listens on (a crashed daemon's): refused, then replaced.
    let path = dir.0.join("sub").join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let err = request(&path, &Request::Status, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    let (server, calls) = Server::start(&dir, ServerOptions::default()).await;
    answer_status(calls);
    assert!(
        request(&server.path, &Request::Status, TIMEOUT)
            .await
            .is_ok()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_regular_file_is_not_removed() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("control.sock");
    std::fs::write(&path, "not a socket").unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let err = serve_with(&path, tx, std::future::ready(()), ServerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

#[tokio::test]
async fn client_timeout_is_bounded() {
    let dir = TempDir::new();
    let options = ServerOptions {
        reply_timeout: Duration::from_secs(30),
        ..ServerOptions::default()
    };
    let (server, mut calls) = Server::start(&dir, options).await;
    let hoard = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(call) = calls.recv().await {
            kept.push(call);
        }
    });
    let started = std::time::Instant::now();
    let err = request(&server.path, &Request::Status, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.stop().await.unwrap();
    hoard.abort();
}

/// A handler whose every `Status` is 0.5 s of daemon time after the previous one, with
/// 100 more packets on web-1; `Events` has one event; actions on `web` succeed, others fail.
fn fake_daemon(mut calls: Calls) {
    tokio::spawn(async move {
        let mut samples = 0_u64;
        while let Some((req, reply)) = calls.recv().await {
            let response = match req {
                Request::Status => {
                    let mut status = sample_status();
                    status.uptime_secs += 0.5 * samples as f64;
                    status.services[0].backends[0].traffic.packets += 100 * samples;
                    samples += 1;
                    Response::Status(status)
                }
                Request::Events { limit } => Response::Events {
                    events: vec![super::EventView {
                        age_secs: 1.5,
                        service: "web".into(),
                        backend: Some("web-1".into()),
                        what: format!("unknown -> up: 3 checks passed (limit {limit:?})"),
                    }],
                },
                Request::Drain { service, backend } if service == "web" => Response::Done {
                    message: format!("{service}/{backend}: draining"),
                },
                _ => Response::Error {
                    message: "no service named \"api\"".into(),
                },
            };
            let _ = reply.send(response);
        }
    });
}

#[tokio::test]
async fn commands_print_the_daemons_answers() {
    use super::commands::{self, CommandError, StatusOptions};

    let dir = TempDir::new();
    let (server, calls) = Server::start(&dir, ServerOptions::default()).await;
    fake_daemon(calls);
    let text = |out: Vec<u8>| String::from_utf8(out).unwrap();

    let mut options = StatusOptions {
        json: false,
        watch: false,
        interval: Some(Duration::from_millis(10)),
        rates: true,
        terminal: false,
    };
    let mut out = Vec::new();
    commands::status(&server.path, &options, &mut out)
        .await
        .unwrap();
    let table = text(out);
    let row = table.lines().find(|l| l.contains("web-1")).unwrap();
    // 100 packets over 0.5 s of daemon uptime.
    let rates: Vec<&str> = row.split_whitespace().rev().take(3).collect();
    assert_eq!(rates, ["0", "0", "200"], "{table}");

    options.json = true;
    let mut out = Vec::new();
    commands::status(&server.path, &options, &mut out)
        .await
        .unwrap();
    let status: super::Status = serde_json::from_str(&text(out)).unwrap();
    assert_eq!(status.services[0].name, "web");

    let mut out = Vec::new();
    commands::events(&server.path, Some(3), false, &mut out)
        .await
        .unwrap();
    assert_eq!(
        text(out),
        "-1.5s  web/web-1  unknown -> up: 3 checks passed (limit Some(3))\n"
    );

    let drain = Request::Drain {
        service: "web".into(),
        backend: "web-2".into(),
    };
    let mut out = Vec::new();
    commands::act(&server.path, &drain, &mut out).await.unwrap();
    assert_eq!(text(out), "web/web-2: draining\n");

    let mut out = Vec::new();
    let err = commands::act(&server.path, &Request::Reload, &mut out)
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Daemon { .. }), "{err:?}");
    assert_eq!(err.to_string(), "no service named \"api\"");
    assert!(out.is_empty());

    server.stop().await.unwrap();
    let err = commands::act(&server_path(&dir), &drain, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("no failover daemon is running"));
}

fn server_path(dir: &TempDir) -> PathBuf {
    dir.0.join("sub").join("control.sock")
}

#[tokio::test]
async fn bind_early_serve_later() {
    use super::ControlListener;

    let dir = TempDir::new();
    let path = server_path(&dir);
    let bound = ControlListener::bind(&path, ServerOptions::default())
        .await
        .unwrap();
    assert_eq!(bound.path(), path);
    // Bound but not serving yet: a second daemon already sees this one.
    let err = ControlListener::bind(&path, ServerOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ControlError::AlreadyRunning { .. }),
        "{err:?}"
    );
    // A daemon that fails to start after binding leaves no socket behind.
    drop(bound);
    assert!(!path.exists());

    let bound = ControlListener::bind(&path, ServerOptions::default())
        .await
        .unwrap();
    let (tx, calls) = mpsc::channel(1);
    answer_status(calls);
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(bound.serve(tx, stopped));
    assert!(matches!(
        request(&path, &Request::Status, TIMEOUT).await.unwrap(),
        Response::Status(_)
    ));
    // Dropping the sender is a shutdown too.
    drop(stop);
    served.await.unwrap();
    assert!(!path.exists());
}
