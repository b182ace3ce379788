//! Client traffic from inside a namespace: many short TCP or UDP requests to one address,
//! bounded in count and time, and a tally of which backend answered them.

use std::{collections::BTreeMap, fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, timeout, timeout_at},
};

use super::netns::{Netns, run_in};

/// How many times [`udp_requests`] sends one datagram before giving up on it.
const UDP_ATTEMPTS: u32 = 3;

/// The outcome of one request: the reply (`"{backend} req-{i}"`) or what went wrong.
pub type Reply = Result<String, String>;

/// Opens `count` TCP connections to `target` from inside `ns` (at most `concurrency` at a
/// time, each from its own ephemeral port), sends `"req-{i}\n"` on connection `i` and reads
/// the reply line. Each connection gets `timeout`; requests still queued when the whole run's
/// bound (enough for every batch to time out once) passes fail as unfinished.
pub fn tcp_requests(
    ns: &Netns,
    target: SocketAddr,
    count: usize,
    timeout: Duration,
    concurrency: usize,
) -> Vec<Reply> {
    run_requests(ns, count, concurrency, timeout, move |i| {
        tcp_request(target, i, timeout)
    })
}

/// Like [`tcp_requests`] with one UDP datagram `"req-{i}"` per request, each from a new
/// socket on an ephemeral port; a datagram without an answer within `timeout` is sent again,
/// at most twice. A reply must come from `target` itself (so a backend answering from the
/// wrong address in direct-server-return mode shows as an error, not as silence).
pub fn udp_requests(
    ns: &Netns,
    target: SocketAddr,
    count: usize,
    timeout: Duration,
    concurrency: usize,
) -> Vec<Reply> {
    run_requests(ns, count, concurrency, timeout * UDP_ATTEMPTS, move |i| {
        udp_request(target, i, timeout)
    })
}

/// Replies counted per backend name (the reply's first word), and the errors.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// How many replies each backend sent.
    pub by_backend: BTreeMap<String, usize>,
    /// The failed requests' errors, in request order.
    pub errors: Vec<String>,
}

impl Tally {
    /// Counts `results`.
    pub fn of(results: &[Reply]) -> Self {
        let mut tally = Tally::default();
        for result in results {
            match result {
                Ok(reply) => {
                    let backend = reply.split(' ').next().unwrap_or_default();
                    *tally.by_backend.entry(backend.to_owned()).or_default() += 1;
                }
                Err(e) => tally.errors.push(e.clone()),
            }
        }
        tally
    }

    /// How many replies came from `backend`.
    pub fn count(&self, backend: &str) -> usize {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replies {:?}, {} errors",
            self.by_backend,
            self.errors.len()
        )?;
        if let Some(first) = self.errors.first() {
            write!(f, " (first: {first})")?;
        }
        Ok(())
    }
}

/// Runs `request(i)` for `i` in `0..count` inside `ns` on a current-thread runtime, at most
/// `concurrency` at once; `per_request` bounds one request, and so the whole run.
fn run_requests<F, Fut>(
    ns: &Netns,
    count: usize,
    concurrency: usize,
    per_request: Duration,
    request: F,
) -> Vec<Reply>
where
    F: Fn(usize) -> Fut + Send,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let batches = u32::try_from(count.div_ceil(concurrency)).unwrap_or(u32::MAX);
    let overall = per_request.saturating_mul(batches) + Duration::from_secs(1);
    run_in(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot build a tokio runtime");
        runtime.block_on(async move {
            let mut results: Vec<Reply> = vec![
                Err(format!(
                    "not finished within the run's bound of {overall:?}"
                ));
                count
            ];
            let permits = Arc::new(Semaphore::new(concurrency));
            let mut tasks = JoinSet::new();
            for i in 0..count {
                let permits = Arc::clone(&permits);
                let fut = request(i);
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("never closed");
                    (i, fut.await)
                });
            }
            // Dropping the JoinSet on the deadline aborts whatever is left.
            let _ = timeout(overall, async {
                while let Some(done) = tasks.join_next().await {
                    if let Ok((i, reply)) = done {
                        results[i] = reply;
                    }
                }
            })
            .await;
            results
        })
    })
}

pub(crate) async fn tcp_request(target: SocketAddr, i: usize, limit: Duration) -> Reply {
    let request = format!("req-{i}");
    let deadline = Instant::now() + limit;
    let stream = timeout_at(deadline, TcpStream::connect(target))
        .await
        .map_err(|_| format!("connect to {target}: timed out after {limit:?}"))?
        .map_err(|e| format!("connect to {target}: {e}"))?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let exchange = async {
        stream
            .get_mut()
            .write_all(format!("{request}\n").as_bytes())
            .await?;
        stream.read_line(&mut line).await
    };
    match timeout_at(deadline, exchange).await {
        Err(_) => Err(format!("{target}: no reply to {request} within {limit:?}")),
        Ok(Err(e)) => Err(format!("{target}: {request}: {e}")),
        Ok(Ok(0)) => Err(format!("{target}: closed without replying to {request}")),
        Ok(Ok(_)) => check_reply(line.trim_end_matches(['\r', '\n']), &request),
    }
}

async fn udp_request(target: SocketAddr, i: usize, limit: Duration) -> Reply {
    let request = format!("req-{i}");
    let any: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(any)
        .await
        .map_err(|e| format!("bind {any}: {e}"))?;
    let mut buf = vec![0; 2048];
    for _ in 0..UDP_ATTEMPTS {
        socket
            .send_to(request.as_bytes(), target)
            .await
            .map_err(|e| format!("send to {target}: {e}"))?;
        let Ok(received) = timeout(limit, socket.recv_from(&mut buf)).await else {
            continue;
        };
        let (len, from) = received.map_err(|e| format!("receive from {target}: {e}"))?;
        if from != target {
            return Err(format!("reply to {request} came from {from}, not {target}"));
        }
        return check_reply(&String::from_utf8_lossy(&buf[..len]), &request);
    }
    Err(format!(
        "{target}: no reply to {request} after {UDP_ATTEMPTS} datagrams, {limit:?} each"
    ))
}

/// A reply is `"{backend} {request}"`.
fn check_reply(reply: &str, request: &str) -> Reply {
    match reply.strip_suffix(request) {
        Some(backend) if backend.len() > 1 && backend.ends_with(' ') => Ok(reply.to_owned()),
        _ => Err(format!("unexpected reply {reply:?} to {request:?}")),
    }
}
