//! The http and https probes: a minimal HTTP/1.1 client that sends one request with
//! `Connection: close`, reads the status line and, when a body substring is configured,
//! up to 64 KiB of body.
//!
//! Written by hand on a tokio stream because a probe needs so little of HTTP: no
//! keep-alive, no redirects, no decoding. Chunked bodies are searched raw, so a substring
//! split across two chunks is not found; health endpoints answer in one chunk.

use std::net::{IpAddr, SocketAddr};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{HttpProbe, ProbeError, Tls, connect, io_failure, tls};

/// Longest response head (status line and headers) read.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest body prefix searched for the expected substring.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// `User-Agent` of every request, so backends can tell probes from clients in their logs.
const USER_AGENT: &str = concat!("failover-health-check/", env!("CARGO_PKG_VERSION"));

/// What made an HTTP response unhealthy.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    /// The status is not in the check's set.
    #[error("HTTP {status}")]
    Status {
        /// The response status.
        status: u16,
    },
    /// The status line is not `HTTP/1.x NNN ...`.
    #[error("malformed status line {line:?}: is this port serving HTTP?")]
    StatusLine {
        /// The line received (cut).
        line: String,
    },
    /// The response head never ended.
    #[error("response headers longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLong,
    /// The connection closed in the middle of the response head.
    #[error("connection closed after {received} bytes, before the end of the response headers")]
    Truncated {
        /// Bytes received before the close.
        received: usize,
    },
    /// `Content-Length` is not a number.
    #[error("malformed Content-Length {value:?}")]
    ContentLength {
        /// The header value.
        value: String,
    },
    /// The body does not contain the expected substring.
    #[error("body does not contain {expected:?} (searched {searched} bytes)")]
    Body {
        /// The configured substring.
        expected: String,
        /// How much of the body was searched.
        searched: usize,
    },
}

/// Sends the check's request to `addr` (over TLS for https) and judges the response.
pub(super) async fn probe(addr: SocketAddr, check: &HttpProbe) -> Result<(), ProbeError> {
    let request = request(addr, check);
    let tls = match check.tls {
        Tls::Off => None,
        Tls::Verified => Some(tls::verified().await?),
        Tls::Unverified => Some(tls::unverified().await?),
    };
    let stream = connect(addr).await?;
    let Some(config) = tls else {
        return exchange(stream, addr, &request, check).await;
    };
    let name = server_name(addr, check.host.as_deref())?;
    let stream = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|source| ProbeError::Tls { addr, source })?;
    exchange(stream, addr, &request, check).await
}

/// The request bytes.
fn request(addr: SocketAddr, check: &HttpProbe) -> Vec<u8> {
    let host = match &check.host {
        Some(host) => host.clone(),
        None => default_host(addr, check.tls),
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        method = check.method,
        path = check.path,
    )
    .into_bytes()
}

/// The `Host` header for a check without `host`: the address, with the port unless it is
/// the scheme's default.
fn default_host(addr: SocketAddr, tls: Tls) -> String {
    let default_port = if tls == Tls::Off { 80 } else { 443 };
    match addr.ip() {
        _ if addr.port() != default_port => addr.to_string(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// The TLS server name: the check's host without its port, else the address.
fn server_name(addr: SocketAddr, host: Option<&str>) -> Result<ServerName<'static>, ProbeError> {
    let Some(host) = host else {
        return Ok(ServerName::IpAddress(addr.ip().into()));
    };
    ServerName::try_from(strip_port(host).to_owned()).map_err(|_| ProbeError::ServerName {
        host: host.to_owned(),
    })
}

/// `example.org:8443` -> `example.org`, `[::1]:8443` -> `::1`.
fn strip_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Writes `request`, reads the response head, and judges status and body.
async fn exchange<S>(
    mut stream: S,
    addr: SocketAddr,
    request: &[u8],
    check: &HttpProbe,
) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(request)
        .await
        .map_err(io_failure("sending the request to", addr))?;
    stream
        .flush()
        .await
        .map_err(io_failure("sending the request to", addr))?;

    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        let head_len = read_head(&mut stream, addr, &mut buf).await?;
        let head = Head::parse(&buf[..head_len])?;
        buf.drain(..head_len);
        // Interim responses (100 Continue and the like) precede the real one.
        if !(100..200).contains(&head.status) || head.status == 101 {
            break head;
        }
    };
    if !check.accepts(head.status) {
        return Err(HttpError::Status {
            status: head.status,
        }
        .into());
    }
    let Some(expected) = &check.body else {
        return Ok(());
    };
    let has_body = !check.method.eq_ignore_ascii_case("HEAD")
        && head.status >= 200
        && head.status != 204
        && head.status != 304;
    let limit = match (has_body, head.chunked, head.length) {
        (false, _, _) => 0,
        (true, false, Some(length)) => length.min(MAX_BODY_BYTES),
        _ => MAX_BODY_BYTES,
    };
    search_body(&mut stream, addr, buf, expected, limit, head.chunked).await
}

/// Reads into `buf` until it holds a complete response head; returns the head's length.
async fn read_head<S>(
    stream: &mut S,
    addr: SocketAddr,
    buf: &mut Vec<u8>,
) -> Result<usize, ProbeError>
where
    S: AsyncRead + Unpin,
{
    let mut searched = 0;
    loop {
        if let Some(at) = find(&buf[searched..], b"\r\n\r\n") {
            return Ok(searched + at + 4);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLong.into());
        }
        searched = buf.len().saturating_sub(3);
        if read_more(stream, addr, buf).await? == 0 {
            return Err(HttpError::Truncated {
                received: buf.len(),
            }
            .into());
        }
    }
}

/// Searches the body (starting with what is already in `body`) for `expected`, reading
/// until found, `limit` bytes are in, the chunked body ends, or the server closes.
async fn search_body<S>(
    stream: &mut S,
    addr: SocketAddr,
    mut body: Vec<u8>,
    expected: &str,
    limit: usize,
    chunked: bool,
) -> Result<(), ProbeError>
where
    S: AsyncRead + Unpin,
{
    let needle = expected.as_bytes();
    let mut searched = 0;
    loop {
        let window = &body[..body.len().min(limit)];
        if find(&window[searched..], needle).is_some() {
            return Ok(());
        }
        // The next search starts where a match could still begin.
        searched = window.len().saturating_sub(needle.len().saturating_sub(1));
        let complete = window.len() >= limit || (chunked && ends_chunked(&body));
        if complete || read_more(stream, addr, &mut body).await? == 0 {
            return Err(HttpError::Body {
                expected: expected.to_owned(),
                searched: body.len().min(limit),
            }
            .into());
        }
    }
}

/// Whether a raw chunked body ends with its last (empty) chunk.
fn ends_chunked(body: &[u8]) -> bool {
    body == b"0\r\n\r\n" || body.ends_with(b"\r\n0\r\n\r\n")
}

/// Appends what the stream has to `buf`; 0 means the peer closed. A TLS peer closing
/// without `close_notify` counts as closed: many servers do, and the probe has already
/// authenticated what it read.
async fn read_more<S>(
    stream: &mut S,
    addr: SocketAddr,
    buf: &mut Vec<u8>,
) -> Result<usize, ProbeError>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(error) => Err(io_failure("reading the response from", addr)(error)),
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the probe needs from a response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// `Content-Length`, if present.
    length: Option<usize>,
    /// Whether `Transfer-Encoding` includes `chunked` (which overrides the length).
    chunked: bool,
}

impl Head {
    /// Parses a head ending with the empty line.
    fn parse(head: &[u8]) -> Result<Self, HttpError> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = parse_status_line(status_line).ok_or_else(|| HttpError::StatusLine {
            line: status_line.chars().take(80).collect(),
        })?;
        let mut parsed = Self {
            status,
            length: None,
            chunked: false,
        };
        for (name, value) in lines.filter_map(|line| line.split_once(':')) {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                let length = value.parse().map_err(|_| HttpError::ContentLength {
                    value: value.to_owned(),
                })?;
                parsed.length = Some(length);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                parsed.chunked |= value.to_ascii_lowercase().contains("chunked");
            }
        }
        Ok(parsed)
    }
}

/// The status of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    code.parse()
        .ok()
        .filter(|status| (100..=999).contains(status))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::{Head, find, strip_port};
    use crate::health::testing::{closed_tcp_port, silent_tcp_server, target};
    use crate::health::{HttpProbe, Outcome, ProbeKind, Tls, probe};

    const TIMEOUT: Duration = Duration::from_millis(1000);

    /// Answers a request head with a whole response; the server closes afterwards.
    type Respond = fn(&str) -> String;

    fn http(status: &str, body: Option<&str>) -> HttpProbe {
        HttpProbe {
            method: "GET".into(),
            path: "/healthz".into(),
            host: None,
            status: status
                .parse::<crate::config::StatusSet>()
                .unwrap()
                .ranges()
                .to_vec(),
            body: body.map(str::to_owned),
            tls: Tls::Off,
        }
    }

    fn response(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Reads one request head from `stream`, writes `respond(head)`, closes.
    async fn serve<S>(mut stream: S, respond: Respond)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&head, b"\r\n\r\n").is_none() {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let reply = respond(&String::from_utf8_lossy(&head));
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A plain HTTP server on `listener`.
    fn spawn_http(listener: TcpListener, respond: Respond) -> SocketAddr {
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, respond));
            }
        });
        addr
    }

    async fn http_server(respond: Respond) -> SocketAddr {
        spawn_http(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap(),
            respond,
        )
    }

    /// An HTTPS server with a fresh self-signed certificate for "localhost".
    async fn https_server(respond: Respond) -> SocketAddr {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let private = PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![key.cert.der().clone()], PrivateKeyDer::from(private))
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, respond).await;
                    }
                });
            }
        });
        addr
    }

    async fn run(addr: SocketAddr, check: HttpProbe) -> Outcome {
        probe(&target(addr, ProbeKind::Http(check), TIMEOUT))
            .await
            .outcome
    }

    fn failed(reason: &str) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
        }
    }

    #[tokio::test]
    async fn http_200_up() {
        let addr = http_server(|_| response("200 OK", "ok")).await;
        assert_eq!(run(addr, http("200", None)).await, Outcome::Up);
    }

    #[tokio::test]
    async fn http_503_failed() {
        let addr = http_server(|_| response("503 Service Unavailable", "busy")).await;
        assert_eq!(run(addr, http("200-399", None)).await, failed("HTTP 503"));
    }

    #[tokio::test]
    async fn http_status_range_accepts_302() {
        let addr = http_server(|_| {
            "HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n".into()
        })
        .await;
        assert_eq!(run(addr, http("200-399", None)).await, Outcome::Up);
        assert_eq!(run(addr, http("200", None)).await, failed("HTTP 302"));
    }

    #[tokio::test]
    async fn http_body_substring_match() {
        let addr = http_server(|_| response("200 OK", r#"{"status":"ok","db":"up"}"#)).await;
        assert_eq!(
            run(addr, http("200", Some(r#""db":"up""#))).await,
            Outcome::Up
        );
    }

    #[tokio::test]
    async fn http_body_substring_mismatch() {
        let addr = http_server(|_| response("200 OK", r#"{"status":"degraded"}"#)).await;
        assert_eq!(
            run(addr, http("200", Some(r#""status":"ok""#))).await,
            failed(r#"body does not contain "\"status\":\"ok\"" (searched 21 bytes)"#)
        );
    }

    #[tokio::test]
    async fn http_body_read_until_close_without_length() {
        let addr = http_server(|_| "HTTP/1.0 200 OK\r\n\r\nall systems ok\n".into()).await;
        assert_eq!(
            run(addr, http("200", Some("systems ok"))).await,
            Outcome::Up
        );
    }

    #[tokio::test]
    async fn http_chunked_body_searched_raw() {
        let addr = http_server(|_| {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nhealthy\r\n0\r\n\r\n".into()
        })
        .await;
        assert_eq!(run(addr, http("200", Some("healthy"))).await, Outcome::Up);
        assert_eq!(
            run(addr, http("200", Some("sick"))).await,
            failed(r#"body does not contain "sick" (searched 17 bytes)"#)
        );
    }

    #[tokio::test]
    async fn http_body_mismatch_does_not_wait_for_close() {
        // Content-Length says the body is complete; the server keeps the connection open.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(response("200 OK", "nope").as_bytes())
                .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let start = Instant::now();
        assert_eq!(
            run(addr, http("200", Some("ok"))).await,
            failed(r#"body does not contain "ok" (searched 4 bytes)"#)
        );
        assert!(start.elapsed() < TIMEOUT / 2);
    }

    #[tokio::test]
    async fn http_sends_request_line_and_default_host() {
        let addr = http_server(|head| {
            let port = head
                .lines()
                .find_map(|l| l.strip_prefix("Host: 127.0.0.1:"))
                .unwrap_or_default();
            let ok = head.starts_with("GET /healthz HTTP/1.1\r\n")
                && head.contains("\r\nConnection: close\r\n")
                && port.parse::<u16>().is_ok();
            response(if ok { "200 OK" } else { "400 Bad Request" }, "")
        })
        .await;
        assert_eq!(run(addr, http("200", None)).await, Outcome::Up);
    }

    #[tokio::test]
    async fn http_default_host_carries_the_probed_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The responder cannot capture the port, so it echoes the Host header back.
        let addr = spawn_http(listener, |head| {
            let host = head
                .lines()
                .find_map(|l| l.strip_prefix("Host: "))
                .unwrap_or("");
            response("200 OK", &format!("host={host};"))
        });
        let body = format!("host=127.0.0.1:{port};");
        assert_eq!(run(addr, http("200", Some(&body))).await, Outcome::Up);
    }

    #[tokio::test]
    async fn http_sends_configured_host_and_method() {
        let addr = http_server(|head| {
            let ok = head.starts_with("HEAD /healthz HTTP/1.1\r\n")
                && head.contains("\r\nHost: app.example.org\r\n");
            if ok {
                "HTTP/1.1 204 No Content\r\n\r\n".into()
            } else {
                response("400 Bad Request", "")
            }
        })
        .await;
        let mut check = http("200-299", None);
        check.method = "HEAD".into();
        check.host = Some("app.example.org".into());
        assert_eq!(run(addr, check).await, Outcome::Up);
    }

    #[tokio::test]
    async fn http_on_ipv6_loopback_brackets_the_host() {
        let Ok(listener) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await else {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let addr = spawn_http(listener, |head| {
            let host = head
                .lines()
                .find_map(|l| l.strip_prefix("Host: "))
                .unwrap_or("");
            response("200 OK", &format!("host={host};"))
        });
        let body = format!("host=[::1]:{port};");
        assert_eq!(run(addr, http("200", Some(&body))).await, Outcome::Up);
    }

    #[tokio::test]
    async fn http_refused_when_nothing_listens() {
        let addr = closed_tcp_port().await;
        let outcome = run(addr, http("200", None)).await;
        assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
    }

    #[tokio::test]
    async fn http_timeout_when_the_server_never_answers() {
        let (addr, _server) = silent_tcp_server().await;
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let result = probe(&target(addr, ProbeKind::Http(http("200", None)), timeout)).await;
        assert_eq!(result.outcome, Outcome::Timeout { after: timeout });
        assert!(start.elapsed() < timeout + Duration::from_millis(100));
    }

    #[tokio::test]
    async fn http_garbage_is_failed() {
        let addr = http_server(|_| "SSH-2.0-OpenSSH_9.6\r\n\r\n".into()).await;
        assert_eq!(
            run(addr, http("200", None)).await,
            failed(r#"malformed status line "SSH-2.0-OpenSSH_9.6": is this port serving HTTP?"#)
        );
    }

    #[tokio::test]
    async fn http_close_before_headers_end_is_failed() {
        let addr = http_server(|_| "HTTP/1.1 200 OK\r\nContent-Le".into()).await;
        assert_eq!(
            run(addr, http("200", None)).await,
            failed("connection closed after 27 bytes, before the end of the response headers")
        );
    }

    #[tokio::test]
    async fn http_skips_interim_responses() {
        let addr =
            http_server(|_| format!("HTTP/1.1 100 Continue\r\n\r\n{}", response("200 OK", "ok")))
                .await;
        assert_eq!(run(addr, http("200", Some("ok"))).await, Outcome::Up);
    }

    #[tokio::test]
    async fn https_without_verification_up_against_self_signed() {
        let addr = https_server(|_| response("200 OK", "secure ok")).await;
        let mut check = http("200", Some("secure ok"));
        check.tls = Tls::Unverified;
        assert_eq!(run(addr, check).await, Outcome::Up);
    }

    #[tokio::test]
    async fn https_without_verification_reports_status() {
        let addr = https_server(|_| response("503 Service Unavailable", "")).await;
        let mut check = http("200", None);
        check.tls = Tls::Unverified;
        check.host = Some("localhost".into());
        assert_eq!(run(addr, check).await, failed("HTTP 503"));
    }

    #[tokio::test]
    async fn https_with_verification_rejects_self_signed() {
        let addr = https_server(|_| response("200 OK", "")).await;
        let mut check = http("200", None);
        check.tls = Tls::Verified;
        check.host = Some("localhost".into());
        let outcome = run(addr, check).await;
        let Outcome::Failed { reason } = &outcome else {
            panic!("expected Failed, got {outcome:?}");
        };
        assert!(
            reason.starts_with(&format!("TLS handshake with {addr}: ")),
            "{reason}"
        );
        assert!(reason.contains("certificate"), "{reason}");
    }

    #[test]
    fn head_parses_status_and_framing() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(
            Head::parse(head).unwrap(),
            Head {
                status: 200,
                length: Some(12),
                chunked: true
            }
        );
        assert!(Head::parse(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert_eq!(Head::parse(b"HTTP/1.0 404\r\n\r\n").unwrap().status, 404);
    }

    #[test]
    fn host_port_is_stripped_for_the_server_name() {
        assert_eq!(strip_port("example.org:8443"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:8443"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }
}
