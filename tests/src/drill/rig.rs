//! What every drill stands on: a lab of three backends running `fo-echo` behind the real
//! daemon, its config, the daemon's log read as timed events, and the client traffic.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use super::interrupt::{self, POLL};
use crate::{
    daemon::{Daemon, failover_binary, test_bpffs},
    lab::{
        Lab, Listen, Server,
        traffic::{Attempt, Held, Persistent, Stream},
    },
    xdp,
};

/// The service's VIP and port.
pub(crate) const VIP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(crate::lab::VIPS_V4[0]), 80);
/// The port of the health endpoints (`http-fail`).
pub(crate) const HEALTH_PORT: u16 = 8008;
/// New connections per second of the steady stream (10 per 50 ms bucket).
pub(crate) const RATE: u32 = 200;
/// Long-lived connections held from the start.
pub(crate) const HELD: usize = 30;
/// How long one new connection may take: more than the 1 s SYN retransmission, so a SYN
/// lost to a blackholed backend is retried (and re-picked) within it.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a long-lived connection exchanges a line.
const HELD_PERIOD: Duration = Duration::from_millis(100);

/// The health check a drill configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `tcp` with a request and an expected reply prefix, or `http` to [`HEALTH_PORT`].
    pub http: bool,
    /// Time between checks.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Successes in a row that bring a backend up.
    pub rise: u32,
    /// Failures in a row that bring it down.
    pub fall: u32,
    /// Refused connections in a row that bring it down (the daemon's default is 1).
    pub fall_refused: u32,
}

impl Check {
    /// The drills' check: TCP, sending a line and expecting the echo (`"be-N drill"`), so a
    /// server that accepts but never answers (SIGSTOP) fails it too; every 50 ms, 40 ms
    /// timeout, rise 2, fall 2, one refused connection is enough.
    pub fn tcp() -> Self {
        Self {
            http: false,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(40),
            rise: 2,
            fall: 2,
            fall_refused: 1,
        }
    }

    /// The same timing as an HTTP check of each backend's health endpoint (status 200).
    /// A refusal must count like any failure here: swapping a health endpoint for one
    /// answering 503 leaves the port closed for a few milliseconds, and the verdict should
    /// come from the 503.
    pub fn http() -> Self {
        Self {
            http: true,
            fall_refused: 2,
            ..Self::tcp()
        }
    }

    /// The detection bound of the issue: interval x fall + one timeout + 100 ms.
    pub fn detection_bound(&self) -> Duration {
        self.interval * self.fall + self.timeout + Duration::from_millis(100)
    }

    /// `[service.check]` keys.
    fn toml(&self) -> String {
        let kind = if self.http {
            format!(
                "  type = \"http\"\n  port = {HEALTH_PORT}\n  path = \"/healthz\"\n  status = \"200\"\n"
            )
        } else {
            "  type = \"tcp\"\n  send = \"drill\\n\"\n  expect = \"be-\"\n".to_owned()
        };
        format!(
            "{kind}  interval = \"{}ms\"\n  timeout = \"{}ms\"\n  rise = {}\n  fall = {}\n  fall_refused = {}\n",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.rise,
            self.fall,
            self.fall_refused
        )
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.http {
            write!(f, "http GET :{HEALTH_PORT}/healthz expecting 200")?;
        } else {
            f.write_str("tcp, send \"drill\" expect \"be-\"")?;
        }
        write!(
            f,
            ", interval {} ms, timeout {} ms, rise {}, fall {}, fall_refused {}",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.rise,
            self.fall,
            self.fall_refused
        )
    }
}

/// Removes what a daemon leaves when it is killed, or when its guard was told to keep
/// its pins and the drill is interrupted before the next daemon adopts them: the pinned
/// program and maps, and the control socket.
struct Leftovers {
    pin_dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A lab of `n` backends `be-1..be-n` serving TCP on port 80, the pass program on the load
/// balancer's peer, and (once started) the daemon. Fields drop in order: the daemon first,
/// then its leftovers, the servers, and the lab (namespaces) last.
pub(crate) struct Rig {
    daemon: Option<Daemon>,
    /// Log lines of daemons that ran before the current one.
    past_log: Vec<String>,
    _leftovers: Leftovers,
    /// The backends' TCP servers, `servers[0]` is `be-1`.
    pub servers: Vec<Server>,
    /// Health endpoints (`http-fail` only), `health[0]` is `be-1`'s.
    pub health: Vec<Server>,
    _pass: aya::Ebpf,
    /// The namespaces.
    pub lab: Lab,
    /// Maps the daemon's log timestamps to this process's clock.
    pub clock: Clock,
}

impl Rig {
    /// Builds the lab and starts the servers; with `health`, each backend also runs a
    /// separate health endpoint answering 200.
    pub fn new(n: usize, health: bool) -> anyhow::Result<Self> {
        let lab = Lab::new(n).context("building the lab")?;
        let pass = xdp::pass_on_lb_peer(&lab).context("attaching the pass program")?;
        let leftovers = Leftovers {
            pin_dir: test_bpffs()?.join(lab.lb().ns().name()),
            socket: control_socket(&lab),
        };
        let mut rig = Self {
            daemon: None,
            past_log: Vec::new(),
            _leftovers: leftovers,
            servers: Vec::new(),
            health: Vec::new(),
            _pass: pass,
            lab,
            clock: Clock::now(),
        };
        for i in 1..=n {
            let ns = rig.lab.backend(i).ns();
            let tcp = [Listen::Tcp(SocketAddr::from(([0, 0, 0, 0], 80)))];
            rig.servers.push(Server::start(ns, &backend(i), &tcp)?);
            if health {
                rig.health.push(health_endpoint(&rig.lab, i, 200)?);
            }
        }
        Ok(rig)
    }

    /// The backends' names, in order.
    pub fn backends(&self) -> Vec<String> {
        (1..=self.lab.backends().len()).map(backend).collect()
    }

    /// A `web` service over every backend; `backend_extra(i)` adds keys to backend `i`
    /// (from 1).
    pub fn config(
        &self,
        check: &Check,
        service_extra: &str,
        backend_extra: &dyn Fn(usize) -> String,
    ) -> String {
        let mut s = format!(
            "interface = \"{}\"\ncontrol_socket = \"{}\"\nflow_capacity = 65536\n\n\
             [[service]]\nname = \"web\"\nvip = \"{}\"\nport = {}\nprotocol = \"tcp\"\nmode = \"dsr\"\n\
             {service_extra}\n  [service.check]\n{}",
            self.lab.lb_if(),
            control_socket(&self.lab).display(),
            VIP.ip(),
            VIP.port(),
            check.toml(),
        );
        for (i, b) in self.lab.backends().iter().enumerate() {
            let _ = write!(
                s,
                "\n  [[service.backend]]\n  name = \"{}\"\n  address = \"{}\"\n{}",
                backend(i + 1),
                b.ipv4(),
                backend_extra(i + 1)
            );
        }
        s
    }

    /// Starts the daemon (a running one is stopped first) and waits until it forwards.
    pub fn start_daemon(&mut self, config: &str) -> anyhow::Result<&mut Daemon> {
        if let Some(old) = self.daemon.take() {
            self.past_log.extend(old.log.iter().cloned());
        }
        interrupt::check()?;
        let daemon = Daemon::start(self.lab.lb().ns(), config)?;
        Ok(self.daemon.insert(daemon))
    }

    /// The running daemon.
    pub fn daemon(&mut self) -> anyhow::Result<&mut Daemon> {
        self.daemon.as_mut().context("no daemon is running")
    }

    /// Kills the daemon with SIGKILL, leaving its pins for the next one (a crash).
    pub fn crash_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.keep_pins();
            daemon.kill9();
            self.past_log.append(&mut daemon.log);
        }
    }

    /// Every line the daemons of this rig logged so far, oldest first, with the time each
    /// was written (`None` for a line without a timestamp).
    pub fn daemon_log(&mut self) -> Vec<(Option<Instant>, String)> {
        let mut log = self.past_log.clone();
        if let Some(daemon) = self.daemon.as_mut() {
            // Reads what is waiting in the pipe: each call takes at most one line.
            let mut read = daemon.log.len();
            for _ in 0..10_000 {
                let _ = daemon.wait_for_all(&["\0 never logged"], Duration::ZERO);
                if daemon.log.len() == read {
                    break;
                }
                read = daemon.log.len();
            }
            log.extend(daemon.log.iter().cloned());
        }
        let clock = self.clock;
        log.into_iter()
            .map(|line| (log_time(&line).map(|t| clock.instant_of(t)), line))
            .collect()
    }

    /// Waits until the daemon logs a line containing every needle, stamped at or after
    /// `since`; returns the line and its time. Bounded by `limit`, and by interruption.
    pub fn wait_log(
        &mut self,
        needles: &[&str],
        since: Instant,
        limit: Duration,
    ) -> anyhow::Result<LogEvent> {
        let clock = self.clock;
        let daemon = self.daemon()?;
        let stamped = |line: &str| LogEvent {
            at: log_time(line).map_or_else(Instant::now, |t| clock.instant_of(t)),
            line: line.to_owned(),
        };
        // Lines an earlier wait read but did not want.
        if let Some(event) = daemon
            .log
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(|l| stamped(l))
            .find(|e| e.at >= since)
        {
            return Ok(event);
        }
        let deadline = Instant::now() + limit;
        loop {
            interrupt::check()?;
            let asked = Instant::now();
            match daemon.wait_for_all(needles, POLL) {
                Ok(line) => {
                    let event = stamped(&line);
                    if event.at >= since {
                        return Ok(event);
                    }
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "the daemon did not log {needles:?} within {limit:?}"
                    )));
                }
                // A daemon that exited fails at once: do not spin on it.
                Err(_) => std::thread::sleep(POLL.saturating_sub(asked.elapsed())),
            }
        }
    }

    /// Rewrites the daemon's config file and asks it to reload (`failover reload`).
    pub fn reload(&mut self, config: &str) -> anyhow::Result<()> {
        let daemon = self.daemon()?;
        daemon
            .rewrite_config(config)
            .context("rewriting the config")?;
        let out = std::process::Command::new(failover_binary()?)
            .arg("reload")
            .arg("--socket")
            .arg(control_socket(&self.lab))
            .output()
            .context("running `failover reload`")?;
        if !out.status.success() {
            bail!(
                "`failover reload` failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts backend `i`'s health endpoint anew, answering `status` (the old one stops
    /// first: the port is closed for the few milliseconds in between).
    pub fn swap_health(&mut self, i: usize, status: u16) -> anyhow::Result<()> {
        self.health[i - 1].stop();
        self.health[i - 1] = health_endpoint(&self.lab, i, status)?;
        Ok(())
    }
}

/// Backend `i`'s name (from 1): what its server puts in front of every reply.
pub(crate) fn backend(i: usize) -> String {
    format!("be-{i}")
}

fn health_endpoint(lab: &Lab, i: usize, status: u16) -> anyhow::Result<Server> {
    let http = [Listen::Http(
        SocketAddr::from(([0, 0, 0, 0], HEALTH_PORT)),
        status,
    )];
    Server::start(
        lab.backend(i).ns(),
        &format!("{}-health", backend(i)),
        &http,
    )
}

fn control_socket(lab: &Lab) -> PathBuf {
    PathBuf::from(format!("/run/failover/{}sock", lab.prefix()))
}

/// One line of the daemon's log with the time it was written.
#[derive(Debug, Clone)]
pub(crate) struct LogEvent {
    /// When the daemon wrote it (its timestamp on this process's clock).
    pub at: Instant,
    /// The line.
    pub line: String,
}

/// A moment read on both clocks: the daemon stamps its log with the wall clock, traffic is
/// timed with [`Instant`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// `t` on the monotonic clock.
    pub fn instant_of(&self, t: SystemTime) -> Instant {
        match t.duration_since(self.system) {
            Ok(after) => self.instant + after,
            Err(before) => self
                .instant
                .checked_sub(before.duration())
                .unwrap_or(self.instant),
        }
    }
}

/// The timestamp tracing puts in front of a line: `2026-11-25T22:31:50.051932Z`.
pub(crate) fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.trim_start_matches(|c: char| !c.is_ascii_digit());
    let stamp = stamp.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.splitn(3, ':');
    let hour: u64 = time.next()?.parse().ok()?;
    let minute: u64 = time.next()?.parse().ok()?;
    let seconds = time.next()?;
    let (second, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let second: u64 = second.parse().ok()?;
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        let digits = &fraction[..fraction.len().min(9)];
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The client traffic of one drill: a steady stream of new connections and long-lived
/// connections, all bounded in count and time.
pub(crate) struct Traffic {
    stream: Stream,
    held: Vec<Persistent>,
    /// When the stream's last connection starts.
    ends: Instant,
}

impl Traffic {
    /// [`RATE`] new connections per second for `duration`, and [`HELD`] long-lived
    /// connections exchanging a line every 100 ms until then.
    pub fn start(rig: &Rig, duration: Duration) -> Self {
        let ns = rig.lab.client().ns();
        let started = Instant::now();
        let stream = Stream::start(ns, VIP, RATE, Self::expected(duration), CONNECT_TIMEOUT);
        let held = Persistent::start(ns, VIP, HELD, HELD_PERIOD, duration);
        Self {
            stream,
            held: vec![held],
            ends: started + duration,
        }
    }

    /// Opens `count` more long-lived connections now, held until the stream ends.
    pub fn hold_more(&mut self, rig: &Rig, count: usize) {
        let left = self.ends.saturating_duration_since(Instant::now());
        self.held.push(Persistent::start(
            rig.lab.client().ns(),
            VIP,
            count,
            HELD_PERIOD,
            left,
        ));
    }

    /// When the last new connection starts.
    pub fn ends(&self) -> Instant {
        self.ends
    }

    /// Waits (interruptibly) until the traffic's time is up, then collects the results;
    /// connections still running then finish within their own bounds (2 s).
    pub fn finish(self) -> Result<(Vec<Attempt>, Vec<Held>), interrupt::Interrupted> {
        interrupt::sleep_until(self.ends)?;
        let attempts = self.stream.join();
        let held = self.held.into_iter().flat_map(Persistent::join).collect();
        Ok((attempts, held))
    }

    /// How many new connections the stream opens.
    pub fn expected(duration: Duration) -> usize {
        (f64::from(RATE) * duration.as_secs_f64()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_read_as_utc() {
        let line = "2026-11-25T22:31:50.051932Z  INFO failover::brain: backend state changed";
        let t = log_time(line).expect("a timestamp");
        let secs = t.duration_since(UNIX_EPOCH).unwrap();
        // date -u -d 2026-11-25T22:31:50Z +%s
        assert_eq!(secs.as_secs(), 1_795_645_910);
        assert_eq!(secs.subsec_micros(), 51_932);
        assert_eq!(
            log_time("2000-03-01T00:00:00Z x"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_800))
        );
        assert_eq!(log_time("no stamp here"), None);
    }

    #[test]
    fn detection_bound_is_interval_times_fall_plus_timeout_plus_100ms() {
        assert_eq!(Check::tcp().detection_bound(), Duration::from_millis(240));
    }
}
