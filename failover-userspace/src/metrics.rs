//! The Prometheus endpoint: a [`Status`] snapshot as text exposition, served over HTTP/1.1.
//!
//! The daemon already keeps every number as a cumulative value (BPF counters, states), so
//! there is no metric object to update: each scrape takes a fresh snapshot and encodes it
//! through a `prometheus-client` [`Collector`] of const metrics. The server is a few dozen
//! lines on tokio rather than a web framework: it answers one `GET` per connection and
//! bounds everything a client can make it wait for.

use std::{fmt, future::Future, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use crate::control::protocol::{Status, TrafficView};

/// The longest request head (request line and headers) read from a client.
const MAX_HEAD_BYTES: u64 = 8 * 1024;
/// How long a client has to send its request head, and to take the response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon has to produce a snapshot before the scrape gets a 503.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes `status` in the Prometheus text exposition format (version 0.0.4), every
/// metric prefixed `failover_`. Series whose value is unknown (no check latency yet, no
/// active tier, no table switch yet) are left out rather than reported as 0.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("failover");
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail, and the collector only passes on the encoder's errors.
    prometheus_text::encode(&mut out, &registry).expect("encoding metrics into a String");
    out
}

/// A snapshot, encoded as const metrics on each scrape.
#[derive(Debug)]
struct Snapshot(Status);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let svc = || {
            s.services
                .iter()
                .map(|v| ([("service", v.name.as_str())], v))
        };
        let be = || {
            s.services.iter().flat_map(|v| {
                v.backends.iter().map(move |b| {
                    (
                        [("service", v.name.as_str()), ("backend", b.name.as_str())],
                        b,
                    )
                })
            })
        };
        let counter = |v: u64| ConstCounter::new(v);
        let flag = |b: bool| ConstGauge::new(i64::from(b));
        let e = &mut enc;
        let traffic: [(&str, &str, TrafficField); 3] = [
            ("packets", "Packets forwarded to the", |t| t.packets),
            ("bytes", "Bytes (as received) forwarded to the", |t| t.bytes),
            (
                "new_flows",
                "New flows (connection-table entries) of the",
                |t| t.new_flows,
            ),
        ];
        for (what, help, get) in traffic {
            let series = svc().map(|(l, v)| (l, counter(get(&v.traffic))));
            family(
                e,
                &format!("service_{what}"),
                &format!("{help} service"),
                series,
            )?;
        }
        for (what, help, get) in traffic {
            let series = be().map(|(l, b)| (l, counter(get(&b.traffic))));
            family(
                e,
                &format!("backend_{what}"),
                &format!("{help} backend"),
                series,
            )?;
        }
        family(
            e,
            "backend_up",
            "Whether the backend is up (1) or not (0)",
            be().map(|(l, b)| (l, flag(b.state == "up"))),
        )?;
        family(
            e,
            "backend_state",
            "The backend's current state, as the label state (up, down, draining, disabled, unknown)",
            be().map(|([s, b], v)| {
                (
                    [s, b, ("state", state_label(&v.state))],
                    ConstGauge::new(1i64),
                )
            }),
        )?;
        family(
            e,
            "backend_check_latency_seconds",
            "How long the backend's last health check took",
            be().filter_map(|(l, b)| Some((l, ConstGauge::new(b.last_check_latency_ms? / 1000.0)))),
        )?;
        family(
            e,
            "backend_in_table",
            "Whether the backend takes new flows (is in the Maglev table)",
            be().map(|(l, b)| (l, flag(b.new_flows))),
        )?;
        family(
            e,
            "service_active_tier",
            "The tier taking new flows (0 is preferred); absent when no tier is usable",
            svc().filter_map(|(l, v)| Some((l, ConstGauge::new(i64::from(v.active_tier?))))),
        )?;
        family(
            e,
            "service_panic",
            "Whether the service has no usable backend and applies its no-backend policy",
            svc().map(|(l, v)| (l, flag(v.panic))),
        )?;
        family(
            e,
            "packets",
            "Packets seen by the XDP program, by verdict or event reason",
            s.counters
                .iter()
                .map(|c| ([("reason", c.name.as_str())], counter(c.value))),
        )?;
        let switch = s.switch_time_us.iter().flat_map(|t| {
            [("last", t.last), ("median", t.median), ("max", t.max)]
                .map(|(q, us)| ([("quantity", q)], ConstGauge::new(us as f64 / 1e6)))
        });
        family(
            e,
            "map_switch_seconds",
            "How long switching a service's Maglev table took (last, median and max of the kept samples)",
            switch,
        )?;
        family(
            e,
            "verdict_to_map_seconds",
            "Time from a health verdict to the switched Maglev table, every switch since the start",
            s.switch_time_us
                .iter()
                .filter(|t| t.buckets.len() == t.bounds_us.len() + 1)
                .map(|t| (NO_LABELS, SwitchHistogram(t))),
        )?;
        family(
            e,
            "uptime_seconds",
            "Seconds since the daemon started",
            [(NO_LABELS, ConstGauge::new(s.uptime_secs))],
        )?;
        family(
            e,
            "build_info",
            "The daemon's version and the interface it is attached to; always 1",
            [(
                [
                    ("version", s.version.as_str()),
                    ("interface", s.interface.as_str()),
                ],
                ConstGauge::new(1i64),
            )],
        )
    }
}

/// The switch-time histogram the brain keeps, as a Prometheus histogram.
struct SwitchHistogram<'a>(&'a crate::control::protocol::SwitchTimes);

impl EncodeMetric for SwitchHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let t = self.0;
        let buckets: Vec<(f64, u64)> = t
            .bounds_us
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(t.buckets.iter().copied())
            .collect();
        let count = t.buckets.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(t.sum_us as f64 / 1e6, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Reads one of the counters of a [`TrafficView`].
type TrafficField = fn(&TrafficView) -> u64;

/// The label set of a metric with a single, unlabelled series.
const NO_LABELS: [(&str, &str); 0] = [];

/// The state's stable part: `down (held 20s)` counts down, and a label value that changes
/// every scrape would make a new series each time.
fn state_label(state: &str) -> &str {
    state.split_whitespace().next().unwrap_or("unknown")
}

/// Encodes one metric and all its series; a metric without series is left out entirely.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let series: Vec<_> = series.into_iter().collect();
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut metric = enc.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in &series {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
///
/// Each connection gets one answer and is closed: `GET /metrics` is [`render`] of a fresh
/// `snapshot()` (503 when it gives `None` or takes longer than 5 s), `GET /` a pointer to
/// `/metrics`, other paths 404 and other methods 405. Connections are served concurrently,
/// each bounded to an 8 KiB request head and 5 s for the client to send it and to take the
/// answer, so a slow client only delays itself. Connections still in progress when
/// `shutdown` resolves are dropped.
pub async fn serve<S, Fut>(listener: TcpListener, snapshot: S, shutdown: impl Future)
where
    S: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<Status>> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reaps finished connections; only failures (panics) need a word.
            Some(Err(e)) = connections.join_next(), if !connections.is_empty() => {
                if e.is_panic() {
                    tracing::error!(error = %e, "metrics connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let snapshot = snapshot.clone();
                    connections.spawn(async move { connection(stream, snapshot).await });
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracing::info!("metrics endpoint closed");
}

/// What a request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    /// The request head was over [`MAX_HEAD_BYTES`].
    TooLarge,
    /// The request head did not arrive within [`CLIENT_TIMEOUT`].
    Timeout,
}

/// Routes a request line such as `GET /metrics?x=1 HTTP/1.1`.
fn route(request_line: &str) -> Route {
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        Some("/") => Route::Index,
        _ => Route::NotFound,
    }
}

/// Serves one connection: reads the request head, answers, closes.
async fn connection<S, Fut>(mut stream: TcpStream, snapshot: S)
where
    S: Fn() -> Fut,
    Fut: Future<Output = Option<Status>>,
{
    let route = match tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(line))) => route(&line),
        // Closed before a whole request: nobody to answer.
        Ok(Ok(None)) => return,
        Ok(Err(Head::Invalid)) => Route::BadRequest,
        Ok(Err(Head::TooLarge)) => Route::TooLarge,
        Err(_) => Route::Timeout,
    };
    let (status, content_type, body) = match route {
        Route::Metrics => match tokio::time::timeout(SNAPSHOT_TIMEOUT, snapshot()).await {
            Ok(Some(status)) => ("200 OK", prometheus_text::CONTENT_TYPE, render(&status)),
            Ok(None) => text(UNAVAILABLE, "the daemon's status is not available\n"),
            Err(_) => text(UNAVAILABLE, "the daemon did not give its status in time\n"),
        },
        Route::Index => text("200 OK", "failover: Prometheus metrics are at /metrics\n"),
        Route::NotFound => text("404 Not Found", "not found: metrics are at /metrics\n"),
        Route::MethodNotAllowed => text("405 Method Not Allowed", "only GET is supported\n"),
        Route::BadRequest => text("400 Bad Request", "malformed HTTP request\n"),
        Route::TooLarge => text("431 Request Header Fields Too Large", "head over 8 KiB\n"),
        Route::Timeout => text("408 Request Timeout", "no request within 5 s\n"),
    };
    respond(&mut stream, status, content_type, &body).await;
}

const UNAVAILABLE: &str = "503 Service Unavailable";

/// A plain-text answer: status line, content type and body.
fn text(status: &'static str, body: &str) -> (&'static str, &'static str, String) {
    (status, "text/plain; charset=utf-8", body.to_owned())
}

/// Why a request head could not be read.
#[derive(Debug)]
enum Head {
    TooLarge,
    Invalid,
}

/// Reads the request head up to its blank line and returns its request line; `None` when
/// the client closed before a whole head.
async fn read_head(stream: &mut TcpStream) -> Result<Option<String>, Head> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD_BYTES));
    let mut request_line = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .await
            .map_err(|_| Head::Invalid)?;
        if !line.ends_with('\n') {
            // End of input: the client's, or ours at the size limit.
            return if reader.get_ref().limit() == 0 {
                Err(Head::TooLarge)
            } else {
                Ok(None)
            };
        }
        if line.trim_end().is_empty() {
            return if request_line.is_empty() {
                Err(Head::Invalid)
            } else {
                Ok(Some(request_line))
            };
        }
        if request_line.is_empty() {
            request_line = line.trim_end().to_owned();
        }
    }
}

/// Writes a complete response and closes the write side; clients that do not take it
/// within [`CLIENT_TIMEOUT`] are dropped.
async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, write).await {
        Ok(Ok(())) => linger(stream).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics client went away before the response"),
        Err(_) => tracing::debug!("metrics client did not take the response in time"),
    }
}

/// Discards what the client still sends (the rest of an oversized head, a body), for at
/// most a second: closing with unread input resets the connection, and the reset can
/// destroy the response before the client has read it.
async fn linger(stream: &mut TcpStream) {
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::sync::oneshot;

    use super::*;
    use crate::control::protocol::tests::sample_status;

    /// The sample status plus a held-down backend with no check yet.
    fn status() -> Status {
        let mut s = sample_status();
        let mut web2 = s.services[0].backends[0].clone();
        web2.name = "web-2".into();
        web2.state = "down (held 20s)".into();
        web2.last_check_latency_ms = None;
        web2.new_flows = false;
        web2.traffic.packets = 7;
        s.services[0].backends.push(web2);
        s
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing {line}\nin\n{text}"
            );
        }
    }

    #[test]
    fn renders_every_series_with_labels_and_values() {
        let text = render(&status());
        assert_lines(
            &text,
            &[
                "# HELP failover_service_packets_total Packets forwarded to the service",
                "# TYPE failover_service_packets_total counter",
                r#"failover_service_packets_total{service="web"} 100"#,
                r#"failover_service_bytes_total{service="web"} 10000"#,
                r#"failover_service_new_flows_total{service="web"} 10"#,
                r#"failover_backend_packets_total{service="web",backend="web-1"} 100"#,
                r#"failover_backend_packets_total{service="web",backend="web-2"} 7"#,
                r#"failover_backend_bytes_total{service="web",backend="web-1"} 10000"#,
                r#"failover_backend_new_flows_total{service="web",backend="web-1"} 10"#,
                "# TYPE failover_backend_up gauge",
                r#"failover_backend_up{service="web",backend="web-1"} 1"#,
                r#"failover_backend_up{service="web",backend="web-2"} 0"#,
                r#"failover_backend_state{service="web",backend="web-1",state="up"} 1"#,
                r#"failover_backend_state{service="web",backend="web-2",state="down"} 1"#,
                r#"failover_backend_check_latency_seconds{service="web",backend="web-1"} 0.0004"#,
                r#"failover_backend_in_table{service="web",backend="web-1"} 1"#,
                r#"failover_backend_in_table{service="web",backend="web-2"} 0"#,
                r#"failover_service_active_tier{service="web"} 0"#,
                r#"failover_service_panic{service="web"} 0"#,
                "# TYPE failover_packets_total counter",
                r#"failover_packets_total{reason="drop_no_backend"} 3"#,
                r#"failover_map_switch_seconds{quantity="last"} 0.00012"#,
                r#"failover_map_switch_seconds{quantity="median"} 0.0001"#,
                r#"failover_map_switch_seconds{quantity="max"} 0.0003"#,
                "# TYPE failover_verdict_to_map_seconds histogram",
                r#"failover_verdict_to_map_seconds_bucket{le="0.0001"} 4"#,
                r#"failover_verdict_to_map_seconds_bucket{le="0.001"} 12"#,
                r#"failover_verdict_to_map_seconds_bucket{le="+Inf"} 12"#,
                "failover_verdict_to_map_seconds_sum 0.0015",
                "failover_verdict_to_map_seconds_count 12",
                "failover_uptime_seconds 12.5",
                r#"failover_build_info{version="0.1.0",interface="eth0"} 1"#,
            ],
        );
        let latencies = text
            .matches("failover_backend_check_latency_seconds{")
            .count();
        assert_eq!(latencies, 1, "web-2 has no check latency:\n{text}");
        assert_eq!(
            text.matches("failover_backend_state{").count(),
            2,
            "one state per backend"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = status();
        s.services[0].name = "we\"b\\1\nx".into();
        let text = render(&s);
        assert_lines(
            &text,
            &[r#"failover_service_panic{service="we\"b\\1\nx"} 0"#],
        );
    }

    #[test]
    fn unknown_values_make_no_series() {
        let mut s = status();
        s.services[0].active_tier = None;
        s.services[0]
            .backends
            .iter_mut()
            .for_each(|b| b.last_check_latency_ms = None);
        s.switch_time_us = None;
        let text = render(&s);
        for absent in [
            "service_active_tier",
            "backend_check_latency_seconds",
            "map_switch_seconds",
        ] {
            assert!(!text.contains(absent), "{absent} present:\n{text}");
        }
        assert!(text.contains("failover_service_panic{"), "{text}");
    }

    #[test]
    fn routes_request_lines() {
        let cases = [
            ("GET /metrics HTTP/1.1", Route::Metrics),
            ("GET /metrics?name[]=x HTTP/1.0", Route::Metrics),
            ("GET / HTTP/1.1", Route::Index),
            ("GET /metricsx HTTP/1.1", Route::NotFound),
            ("POST /metrics HTTP/1.1", Route::MethodNotAllowed),
            ("HEAD / HTTP/1.1", Route::MethodNotAllowed),
            ("GET /metrics", Route::BadRequest),
            ("GET /metrics SPDY/3", Route::BadRequest),
            ("GET /metrics HTTP/1.1 extra", Route::BadRequest),
        ];
        for (line, want) in cases {
            assert_eq!(route(line), want, "{line}");
        }
    }

    /// Serves `snapshot` on a loopback port; send on the sender to shut down.
    async fn start(
        snapshot: Option<Status>,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let snap = move || std::future::ready(snapshot.clone());
        let server = tokio::spawn(serve(listener, snap, stopped));
        (addr, stop, server)
    }

    /// Sends `request` as is and reads the whole response.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("response in time")
        .unwrap();
        response
    }

    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
        exchange(addr, request.as_bytes()).await
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let (addr, stop, server) = start(Some(status())).await;
        let response = get(addr, "GET", "/metrics").await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert_eq!(body, render(&status()));
        assert_lines(
            body,
            &[r#"failover_backend_up{service="web",backend="web-1"} 1"#],
        );

        let index = get(addr, "GET", "/").await;
        assert!(
            index.starts_with("HTTP/1.1 200 OK\r\n") && index.contains("/metrics"),
            "{index}"
        );

        stop.send(()).unwrap();
        server.await.unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after shutdown"
        );
    }

    #[tokio::test]
    async fn answers_errors() {
        let (addr, _stop, _server) = start(Some(status())).await;
        let not_found = get(addr, "GET", "/nope").await;
        assert!(
            not_found.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{not_found}"
        );
        let post = get(addr, "POST", "/metrics").await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
        let garbage = exchange(addr, b"hello\r\n\r\n").await;
        assert!(
            garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbage}"
        );
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        let huge = exchange(addr, huge.as_bytes()).await;
        assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
    }

    #[tokio::test]
    async fn no_snapshot_is_503() {
        let (addr, _stop, _server) = start(None).await;
        let response = get(addr, "GET", "/metrics").await;
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        let body = response.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(body.lines().count(), 1, "{body}");
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_others() {
        let (addr, _stop, _server) = start(Some(status())).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let response = get(addr, "GET", "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            started.elapsed() < CLIENT_TIMEOUT,
            "waited for the silent client"
        );
    }
}
