//! The control socket server: the daemon's end of `failover status`, `drain`, `reload`, ...
//!
//! Sozu-style: a Unix stream socket of mode 0600 in a 0700 directory, the peer's
//! credentials checked on every connection (only root and the daemon's own user), and a
//! bound on everything a client can make the daemon wait for: the request's size and
//! arrival, the daemon's answer, and the write of the reply. The server does not act on
//! requests itself: it hands each one, with a oneshot for the answer, to the daemon's
//! handler task, which owns the state.

use std::{
    future::Future,
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinSet,
};

use super::protocol::{Request, Response};
use crate::config::format_duration;

/// Limits of the control server. [`Default`] gives the production values; tests shorten
/// the timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// How long a client has to send its request line, and to take the reply (5 s).
    pub request_timeout: Duration,
    /// How long the daemon's handler has to answer a request (10 s).
    pub reply_timeout: Duration,
    /// The longest request line accepted, without its newline (64 KiB).
    pub max_request_bytes: usize,
    /// Connections served at once; further ones wait in the listen backlog (64).
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            max_request_bytes: 64 * 1024,
            max_connections: 64,
        }
    }
}

/// The control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket's directory did not exist and could not be created.
    #[error("cannot create the control socket directory {}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why creating it failed.
        #[source]
        source: io::Error,
    },
    /// Something other than a socket is at the socket's path.
    #[error(
        "{} exists and is not a socket: remove it, or set another control_socket in the config",
        .path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A daemon answers on the socket already.
    #[error(
        "another failover daemon is running (it answers on {}): stop it first \
         (`systemctl stop failover`), or give this one another control_socket",
        .path.display()
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The existing socket file could not be checked for a live daemon.
    #[error("cannot check whether a daemon answers on {}", .path.display())]
    Probe {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A socket file nothing answers on (left by a crashed daemon) could not be removed.
    #[error("cannot remove the stale control socket {}: remove it by hand", .path.display())]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why removing it failed.
        #[source]
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot listen on the control socket {}", .path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// The socket's mode could not be set to 0600 (the socket is removed again).
    #[error("cannot restrict the control socket {} to mode 0600", .path.display())]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// Why `chmod` failed.
        #[source]
        source: io::Error,
    },
}

/// The channel requests reach the daemon through: each request comes with the oneshot
/// sender its [`Response`] goes back on.
pub type Handler = mpsc::Sender<(Request, oneshot::Sender<Response>)>;

/// Serves the control socket at `path` with [`ServerOptions::default`] until `shutdown`
/// resolves, then removes the socket file.
///
/// Each request is sent to `handler` with a oneshot sender for its [`Response`]; the
/// handler should answer every request (a dropped sender is reported to the client as an
/// error). See [`ControlListener::bind`] and [`ControlListener::serve`] for the details,
/// and for binding early (to fail fast when another daemon runs) and serving later.
///
/// # Errors
///
/// A [`ControlError`] if the socket cannot be set up, notably
/// [`ControlError::AlreadyRunning`] when another daemon answers on `path`. Once listening,
/// it only returns `Ok(())`: failures of single connections are logged and answered.
pub async fn serve(
    path: &Path,
    handler: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    shutdown: impl Future,
) -> Result<(), ControlError> {
    serve_with(path, handler, shutdown, ServerOptions::default()).await
}

/// [`serve`] with explicit limits.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_with(
    path: &Path,
    handler: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    shutdown: impl Future,
    options: ServerOptions,
) -> Result<(), ControlError> {
    ControlListener::bind(path, options)
        .await?
        .serve(handler, shutdown)
        .await;
    Ok(())
}

/// A bound control socket, not yet serving. Dropping it (or the end of
/// [`ControlListener::serve`]) removes the socket file.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of our socket file, so we never remove another process's.
    identity: Option<(u64, u64)>,
    options: ServerOptions,
}

impl ControlListener {
    /// Creates the socket's parent directory (mode 0700) if it is missing, removes a
    /// socket file nothing answers on (left by a daemon that died), binds, and sets the
    /// socket's mode to 0600. Connections wait in the backlog until
    /// [`ControlListener::serve`].
    ///
    /// # Errors
    ///
    /// A [`ControlError`], notably [`ControlError::AlreadyRunning`] when another daemon
    /// answers on `path`.
    pub async fn bind(path: &Path, options: ServerOptions) -> Result<Self, ControlError> {
        let listener = listen(path).await?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: socket_identity(path).await,
            options,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` resolves, then removes the socket file.
    ///
    /// Connections are served concurrently (at most
    /// [`ServerOptions::max_connections`]): each peer's uid is checked (root or the
    /// daemon's effective uid; others get a `permission denied` error), one request line
    /// is read, `handler` is asked, one response line is written and the connection is
    /// closed. Malformed, oversized or late requests are answered with
    /// [`Response::Error`] saying what was wrong. When `shutdown` resolves, connections
    /// still in progress are dropped.
    pub async fn serve(self, handler: Handler, shutdown: impl Future) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        tracing::info!(socket = %self.path.display(), "control socket listening");
        let options = Arc::new(self.options.clone());
        let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                // Reaps finished connections; only failures (panics) need a word.
                Some(Err(e)) = connections.join_next(), if !connections.is_empty() => {
                    if e.is_panic() {
                        tracing::error!(error = %e, "control connection task panicked");
                    }
                }
                accepted = accept(&self.listener, &slots) => match accepted {
                    Ok((stream, permit)) => {
                        let (handler, options) = (handler.clone(), Arc::clone(&options));
                        connections.spawn(async move {
                            connection(stream, &handler, &options, euid).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(connections);
        tracing::info!(socket = %self.path.display(), "control socket closed");
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        // A plain unlink: quick, and there is no runtime to rely on inside `drop`.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| self.identity == Some((m.dev(), m.ino())));
        if !ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the control socket");
        }
    }
}

/// Prepares the path and binds the socket with mode 0600.
async fn listen(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if tokio::fs::metadata(dir).await.is_err() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .await
                .map_err(|source| ControlError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    remove_stale(path).await?;
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    // Until this chmod the socket has the umask's mode; the peer-credential check still
    // guards every connection accepted in that window.
    let mode = std::fs::Permissions::from_mode(0o600);
    if let Err(source) = tokio::fs::set_permissions(path, mode).await {
        drop(listener);
        let _ = tokio::fs::remove_file(path).await;
        return Err(ControlError::Permissions {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(listener)
}

/// Removes a socket file left by a daemon that died, after checking nothing answers.
async fn remove_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match tokio::fs::symlink_metadata(path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Probe {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let probe = tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await;
    match probe {
        // Something accepted, or is too busy to (a full backlog or a slow accept): alive.
        Ok(Ok(_)) | Err(_) => Err(ControlError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(ControlError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale control socket");
            match tokio::fs::remove_file(path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ControlError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        Ok(Err(source)) => Err(ControlError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The device and inode of the file at `path`, if any.
async fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    let meta = tokio::fs::symlink_metadata(path).await.ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &UnixListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(UnixStream, OwnedSemaphorePermit)> {
    let permit = Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// Serves one connection: one request, one response.
async fn connection(mut stream: UnixStream, handler: &Handler, options: &ServerOptions, euid: u32) {
    let response = answer(&mut stream, handler, options, euid).await;
    let mut line = serde_json::to_string(&response).unwrap_or_else(|e| {
        format!(r#"{{"result":"error","message":"cannot encode the response: {e}"}}"#)
    });
    line.push('\n');
    let write = async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(options.request_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "control client went away before the reply"),
        Err(_) => tracing::debug!("control client did not take the reply in time"),
    }
}

/// Checks the peer, reads its request and gets the daemon's answer.
async fn answer(
    stream: &mut UnixStream,
    handler: &Handler,
    options: &ServerOptions,
    euid: u32,
) -> Response {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => return error(format!("cannot read the peer's credentials: {e}")),
    };
    if let Err(message) = permitted(uid, euid) {
        tracing::warn!(
            uid,
            "control request refused: peer is neither root nor the daemon's user"
        );
        return error(message);
    }
    let request = match read_request(stream, options).await {
        Ok(request) => request,
        Err(message) => {
            tracing::debug!(uid, %message, "bad control request");
            return error(message);
        }
    };
    tracing::debug!(uid, ?request, "control request");
    ask(handler, request, options.reply_timeout).await
}

/// Whether a peer of uid `uid` may use the socket of a daemon running as `euid`: root and
/// the daemon's own user may, others get the message to send them.
fn permitted(uid: u32, euid: u32) -> Result<(), String> {
    if uid == 0 || uid == euid {
        return Ok(());
    }
    let who = if euid == 0 {
        "only root".to_owned()
    } else {
        format!("only root or uid {euid}")
    };
    Err(format!(
        "permission denied: uid {uid} may not use the control socket ({who}): run as root"
    ))
}

/// Reads and parses one request line; `Err` says what was wrong with it.
async fn read_request(stream: &mut UnixStream, options: &ServerOptions) -> Result<Request, String> {
    let limit = options.max_request_bytes;
    let mut line = Vec::new();
    // One byte past the limit tells a line of exactly `limit` bytes from a longer one.
    let mut reader = BufReader::new(stream.take(limit as u64 + 1));
    match tokio::time::timeout(options.request_timeout, reader.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Err(format!(
                "no request within {}: send one JSON line, such as {{\"command\":\"status\"}}",
                format_duration(options.request_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() > limit {
        return Err(format!(
            "request too long: more than {limit} bytes without a newline"
        ));
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "empty request: send one JSON line, such as {\"command\":\"status\"}".to_owned(),
        );
    }
    serde_json::from_slice(&line).map_err(|e| format!("malformed request: {e}"))
}

/// Hands `request` to the daemon and waits for its answer, at most `within`.
async fn ask(handler: &Handler, request: Request, within: Duration) -> Response {
    let exchange = async {
        let (reply, answer) = oneshot::channel();
        if handler.send((request, reply)).await.is_err() {
            return error("the daemon is shutting down".to_owned());
        }
        answer.await.unwrap_or_else(|_| {
            error("the daemon dropped the request without answering: see its log".to_owned())
        })
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or_else(|_| {
            error(format!(
                "the daemon did not answer in time ({}): it may be busy; see its log",
                format_duration(within)
            ))
        })
}

fn error(message: String) -> Response {
    Response::Error { message }
}

#[cfg(test)]
mod tests {
    use super::permitted;

    #[test]
    fn only_root_and_the_daemons_user_are_permitted() {
        assert_eq!(permitted(0, 0), Ok(()));
        assert_eq!(permitted(0, 998), Ok(()));
        assert_eq!(permitted(998, 998), Ok(()));
        let refused = permitted(1000, 998).unwrap_err();
        assert_eq!(
            refused,
            "permission denied: uid 1000 may not use the control socket (only root or uid 998): \
             run as root"
        );
        assert_eq!(
            permitted(1000, 0).unwrap_err(),
            "permission denied: uid 1000 may not use the control socket (only root): run as root"
        );
    }
}
