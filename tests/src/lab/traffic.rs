//! Traffic over time, for failover tests: a steady stream of new TCP connections at a fixed
//! rate, and long-lived connections that keep exchanging lines. Both run on their own
//! thread inside a namespace, bounded in count and time, and record when each thing
//! happened so a test can line results up with the fault it injected.

use std::{
    net::SocketAddr,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    task::JoinSet,
};

use super::{
    client::{Reply, tcp_request},
    netns::{Netns, run_in},
};

/// One connection of a steady stream.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When its connect started.
    pub started: Instant,
    /// The reply (naming the backend) or the error.
    pub reply: Reply,
}

impl Attempt {
    /// The backend that answered, if any.
    pub fn backend(&self) -> Option<&str> {
        self.reply.as_ref().ok().and_then(|r| r.split(' ').next())
    }
}

/// A stream of new connections running in the background.
pub struct Stream {
    handle: Option<JoinHandle<Vec<Attempt>>>,
}

impl Stream {
    /// Opens `count` connections to `target` from `ns`, one every `1 / rate` seconds
    /// (each bounded by `timeout`, so the whole stream by `count / rate + timeout`).
    pub fn start(
        ns: &Netns,
        target: SocketAddr,
        rate: u32,
        count: usize,
        timeout: Duration,
    ) -> Self {
        let handle = in_background(ns, move || async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = JoinSet::new();
            for i in 0..count {
                tick.tick().await;
                let started = Instant::now();
                tasks.spawn(async move {
                    (
                        i,
                        Attempt {
                            started,
                            reply: tcp_request(target, i, timeout).await,
                        },
                    )
                });
            }
            let mut out: Vec<Option<Attempt>> = vec![None; count];
            while let Some(Ok((i, a))) = tasks.join_next().await {
                out[i] = Some(a);
            }
            out.into_iter().flatten().collect()
        });
        Self {
            handle: Some(handle),
        }
    }

    /// Waits for every connection to finish.
    pub fn join(mut self) -> Vec<Attempt> {
        self.handle
            .take()
            .map(|h| h.join().expect("stream thread panicked"))
            .unwrap_or_default()
    }
}

/// What happened to one long-lived connection.
#[derive(Clone, Debug)]
pub struct Held {
    /// The backend that answered its first line.
    pub backend: Option<String>,
    /// Lines exchanged successfully.
    pub exchanges: usize,
    /// The first error, with when it happened.
    pub error: Option<(Instant, String)>,
}

/// Long-lived connections running in the background.
pub struct Persistent {
    handle: Option<JoinHandle<Vec<Held>>>,
}

impl Persistent {
    /// Opens `count` connections to `target` from `ns` and, on each, sends a line every
    /// `period` and reads the reply, for `duration`.
    pub fn start(
        ns: &Netns,
        target: SocketAddr,
        count: usize,
        period: Duration,
        duration: Duration,
    ) -> Self {
        let handle = in_background(ns, move || async move {
            let mut tasks = JoinSet::new();
            for i in 0..count {
                tasks.spawn(async move { (i, hold(target, i, period, duration).await) });
            }
            let mut out = vec![None; count];
            while let Some(Ok((i, h))) = tasks.join_next().await {
                out[i] = Some(h);
            }
            out.into_iter().flatten().collect()
        });
        Self {
            handle: Some(handle),
        }
    }

    /// Waits for every connection's time to run out.
    pub fn join(mut self) -> Vec<Held> {
        self.handle
            .take()
            .map(|h| h.join().expect("persistent thread panicked"))
            .unwrap_or_default()
    }
}

/// Runs `work` on a thread of its own inside `ns`, on a current-thread runtime (a
/// namespace belongs to a thread).
fn in_background<T, F, Fut>(ns: &Netns, work: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns_name = ns.name().to_owned();
    std::thread::spawn(move || {
        let ns = Netns::existing(&ns_name);
        run_in(&ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(work())
        })
    })
}

async fn hold(target: SocketAddr, i: usize, period: Duration, duration: Duration) -> Held {
    let mut held = Held {
        backend: None,
        exchanges: 0,
        error: None,
    };
    let end = Instant::now() + duration;
    let stream =
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                held.error = Some((Instant::now(), format!("connect: {e}")));
                return held;
            }
            Err(_) => {
                held.error = Some((Instant::now(), "connect timed out".into()));
                return held;
            }
        };
    let mut stream = BufReader::new(stream);
    let mut n = 0;
    while Instant::now() < end {
        let request = format!("hold-{i}-{n}");
        let mut line = String::new();
        let exchange = async {
            stream
                .get_mut()
                .write_all(format!("{request}\n").as_bytes())
                .await?;
            stream.read_line(&mut line).await
        };
        match tokio::time::timeout(Duration::from_secs(2), exchange).await {
            Ok(Ok(len)) if len > 0 && line.trim_end().ends_with(&request) => {
                let backend = line.split(' ').next().unwrap_or_default().to_owned();
                held.backend.get_or_insert(backend);
                held.exchanges += 1;
            }
            Ok(Ok(_)) => {
                held.error = Some((Instant::now(), format!("bad reply {line:?} to {request}")));
                return held;
            }
            Ok(Err(e)) => {
                held.error = Some((Instant::now(), format!("{request}: {e}")));
                return held;
            }
            Err(_) => {
                held.error = Some((Instant::now(), format!("{request}: no reply within 2s")));
                return held;
            }
        }
        n += 1;
        tokio::time::sleep(period).await;
    }
    held
}
