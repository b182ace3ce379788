//! The tcp probe: connect, optionally send bytes, optionally match a reply prefix.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ProbeError, connect, expect_prefix, io_failure, quote};

/// Connects to `addr`, writes `send`, and reads until the reply shows whether it starts
/// with `expect`. A refused connect is [`ProbeError::Refused`]; anything after the
/// connection is established only fails.
pub(super) async fn probe(
    addr: SocketAddr,
    send: Option<&str>,
    expect: Option<&str>,
) -> Result<(), ProbeError> {
    let mut stream = connect(addr).await?;
    if let Some(send) = send {
        stream
            .write_all(send.as_bytes())
            .await
            .map_err(io_failure("sending to", addr))?;
    }
    let Some(expected) = expect else {
        return Ok(());
    };
    let mut reply = Vec::with_capacity(expected.len());
    let mut chunk = [0u8; 1024];
    // Stop as soon as the reply is long enough or already differs: a mismatch should not
    // wait for the rest of a reply that may never come.
    while reply.len() < expected.len() && expected.as_bytes().starts_with(&reply) {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(io_failure("reading the reply from", addr))?;
        if n == 0 {
            return Err(ProbeError::ShortReply {
                expected: expected.to_owned(),
                got: quote(&reply),
            });
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    expect_prefix(expected, &reply)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::health::testing::{closed_tcp_port, silent_tcp_server, target};
    use crate::health::{Outcome, ProbeKind, probe};

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn tcp(send: Option<&str>, expect: Option<&str>) -> ProbeKind {
        ProbeKind::Tcp {
            send: send.map(str::to_owned),
            expect: expect.map(str::to_owned),
            half_open: false,
        }
    }

    /// A server that reads one request (if `reads`) and answers `reply`.
    async fn replying_server(reads: bool, reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if reads {
                        let mut buf = [0u8; 64];
                        let _ = stream.read(&mut buf).await;
                    }
                    let _ = stream.write_all(reply).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_up_when_listening() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let result = probe(&target(addr, tcp(None, None), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
        assert!(result.latency < TIMEOUT);
    }

    #[tokio::test]
    async fn tcp_probe_closes_with_a_reset_leaving_no_time_wait() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let result = probe(&target(addr, tcp(None, None), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
        // An orderly close would read as end of stream here.
        let (mut conn, _) = listener.accept().await.unwrap();
        let read = conn.read(&mut [0u8; 16]).await;
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn tcp_up_on_ipv6_loopback() {
        let Ok(listener) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await else {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        };
        let addr = listener.local_addr().unwrap();
        let result = probe(&target(addr, tcp(None, None), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn tcp_refused_when_nothing_listens() {
        let addr = closed_tcp_port().await;
        let result = probe(&target(addr, tcp(None, None), TIMEOUT)).await;
        let Outcome::Refused { reason } = &result.outcome else {
            panic!("expected Refused, got {:?}", result.outcome);
        };
        assert!(
            reason.starts_with(&format!("connecting to {addr}: ")),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn tcp_timeout_when_the_reply_never_comes() {
        let (addr, _server) = silent_tcp_server().await;
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let result = probe(&target(addr, tcp(Some("PING\r\n"), Some("+PONG")), timeout)).await;
        assert_eq!(result.outcome, Outcome::Timeout { after: timeout });
        assert!(start.elapsed() < timeout + Duration::from_millis(100));
    }

    #[tokio::test]
    async fn tcp_send_expect_match() {
        let addr = replying_server(true, b"+PONG\r\n").await;
        let result = probe(&target(addr, tcp(Some("PING\r\n"), Some("+PONG")), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn tcp_expect_banner_without_send() {
        let addr = replying_server(false, b"220 mail ready\r\n").await;
        let result = probe(&target(addr, tcp(None, Some("220 ")), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn tcp_send_expect_mismatch() {
        let addr = replying_server(true, b"-ERR unknown command\r\n").await;
        let result = probe(&target(addr, tcp(Some("PING\r\n"), Some("+PONG")), TIMEOUT)).await;
        assert_eq!(
            result.outcome,
            Outcome::Failed {
                reason: r#"expected reply starting with "+PONG", got "-ERR unknown command\r\n""#
                    .into()
            }
        );
    }

    #[tokio::test]
    async fn tcp_short_reply_then_close_fails() {
        let addr = replying_server(true, b"+PO").await;
        let result = probe(&target(addr, tcp(Some("PING\r\n"), Some("+PONG")), TIMEOUT)).await;
        assert_eq!(
            result.outcome,
            Outcome::Failed {
                reason: r#"expected reply starting with "+PONG", got "+PO" before the connection closed"#
                    .into()
            }
        );
    }
}
