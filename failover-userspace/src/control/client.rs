//! The control socket client: what `failover status`, `drain`, `reload`, ... use to ask the
//! daemon.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::protocol::{Request, Response};
use crate::config::format_duration;

/// Where the daemon listens unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/failover/control.sock";

/// How long the CLI waits for an answer: longer than the server's own 10 s reply timeout,
/// so a stuck daemon is reported by the daemon's message rather than by this one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest response accepted (a status of thousands of backends fits many times).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// A request could not be made or answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file, or nothing listening on it.
    #[error(
        "no failover daemon is running (no control socket at {}): start it with \
         `failover run --config FILE` or `systemctl start failover`",
        .path.display()
    )]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket, or its directory, is not accessible to this user.
    #[error("permission denied on the control socket {}: run as root", .path.display())]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// The daemon did not answer within the timeout.
    #[error(
        "the daemon did not answer on {} within {}: it may be busy or stuck; see its log \
         (`journalctl -u failover`)",
        .path.display(),
        format_duration(*.timeout)
    )]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The daemon closed the connection without an answer.
    #[error(
        "the daemon on {} closed the connection without answering (is it shutting down?)",
        .path.display()
    )]
    NoAnswer {
        /// The socket.
        path: PathBuf,
    },
    /// The answer was not a response this CLI understands.
    #[error(
        "the daemon on {} sent a response this CLI cannot read: are the CLI and the daemon \
         the same version?",
        .path.display()
    )]
    BadResponse {
        /// The socket.
        path: PathBuf,
        /// Why parsing failed.
        #[source]
        source: serde_json::Error,
    },
    /// Another I/O error on the socket.
    #[error("control socket {}", .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// Sends `request` to the daemon listening on `path` and returns its response; the whole
/// exchange (connect, write, read) takes at most `timeout`.
///
/// A [`Response::Error`] is a successful exchange: the caller decides what it means.
///
/// # Errors
///
/// [`ClientError::NotRunning`] when nothing listens on `path`,
/// [`ClientError::PermissionDenied`] when the socket is not accessible,
/// [`ClientError::Timeout`], and the others for broken exchanges.
pub async fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    match tokio::time::timeout(timeout, exchange(path, request)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            path: path.to_path_buf(),
            timeout,
        }),
    }
}

async fn exchange(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let io_error = |source: io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path: path.to_path_buf(),
            },
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => io_error(e),
        })?;
    let mut line = serde_json::to_vec(request).map_err(|e| io_error(io::Error::other(e)))?;
    line.push(b'\n');
    // A server that refuses us answers without reading and closes: the write may then
    // fail while its answer waits to be read, so read before reporting the write error.
    let written = stream.write_all(&line).await;

    let mut answer = Vec::new();
    let mut reader = BufReader::new((&mut stream).take(MAX_RESPONSE_BYTES));
    if let Err(e) = reader.read_until(b'\n', &mut answer).await {
        // The server may close with our request unread (it refused us before reading):
        // Linux then reports a reset after the data, and the answer read so far stands.
        if answer.is_empty() || e.kind() != io::ErrorKind::ConnectionReset {
            return Err(io_error(e));
        }
    }
    if answer.iter().all(u8::is_ascii_whitespace) {
        written.map_err(io_error)?;
        return Err(ClientError::NoAnswer {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&answer).map_err(|source| ClientError::BadResponse {
        path: path.to_path_buf(),
        source,
    })
}
