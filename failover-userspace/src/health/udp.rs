//! The udp probe: send one datagram, wait for one reply, optionally match its prefix.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::{ProbeError, expect_prefix, io_failure, refusable};

/// Replies longer than this are cut; only their prefix matters.
const MAX_REPLY_BYTES: usize = 4096;

/// Sends `send` to `addr` and waits for a reply starting with `expect` (any reply if
/// `None`).
///
/// The socket is connected, so the kernel reports an ICMP port unreachable for it as
/// ECONNREFUSED on receive: that is [`ProbeError::Refused`]. Silence is left to the
/// caller's timeout.
pub(super) async fn probe(
    addr: SocketAddr,
    send: &str,
    expect: Option<&str>,
) -> Result<(), ProbeError> {
    let local = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(io_failure("binding a UDP socket to probe", addr))?;
    socket
        .connect(addr)
        .await
        .map_err(refusable("connecting a UDP socket to", addr))?;
    socket
        .send(send.as_bytes())
        .await
        .map_err(refusable("sending to", addr))?;
    let mut reply = vec![0u8; MAX_REPLY_BYTES];
    let n = socket
        .recv(&mut reply)
        .await
        .map_err(refusable("waiting for a reply from", addr))?;
    match expect {
        Some(expected) => expect_prefix(expected, &reply[..n]),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use tokio::net::UdpSocket;

    use crate::health::testing::{closed_udp_port, target};
    use crate::health::{Outcome, ProbeKind, probe};

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn udp(send: &str, expect: Option<&str>) -> ProbeKind {
        ProbeKind::Udp {
            send: send.to_owned(),
            expect: expect.map(str::to_owned),
        }
    }

    /// A UDP server answering every datagram with `prefix` followed by the datagram.
    async fn echo_server(prefix: &'static [u8]) -> SocketAddr {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let reply = [prefix, &buf[..n]].concat();
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn udp_echo_up() {
        let addr = echo_server(b"").await;
        let result = probe(&target(addr, udp("ping", Some("ping")), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn udp_any_reply_up_without_expect() {
        let addr = echo_server(b"whatever ").await;
        let result = probe(&target(addr, udp("ping", None), TIMEOUT)).await;
        assert_eq!(result.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn udp_reply_mismatch_fails() {
        let addr = echo_server(b"ERR ").await;
        let result = probe(&target(addr, udp("ping", Some("pong")), TIMEOUT)).await;
        assert_eq!(
            result.outcome,
            Outcome::Failed {
                reason: r#"expected reply starting with "pong", got "ERR ping""#.into()
            }
        );
    }

    #[tokio::test]
    async fn udp_refused_on_closed_port() {
        let addr = closed_udp_port().await;
        let result = probe(&target(addr, udp("ping", None), TIMEOUT)).await;
        let Outcome::Refused { reason } = &result.outcome else {
            panic!("expected Refused, got {:?}", result.outcome);
        };
        assert!(reason.contains(&addr.to_string()), "{reason}");
    }

    #[tokio::test]
    async fn udp_timeout_when_nobody_answers() {
        let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = silent.local_addr().unwrap();
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let result = probe(&target(addr, udp("ping", None), timeout)).await;
        assert_eq!(result.outcome, Outcome::Timeout { after: timeout });
        assert!(start.elapsed() < timeout + Duration::from_millis(100));
        // The datagram did arrive: the socket read it and stayed silent.
        let mut buf = [0u8; 16];
        let (n, _) = silent.try_recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
    }
}
