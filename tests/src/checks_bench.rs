//! The health-check throughput bench: the real daemon checking many backends (10,000 by
//! default: 100 services x 100) by TCP (connect, or half-open) at a 1 s interval, and what that costs it:
//! checks per second, CPU share of one core, resident memory.
//!
//! Two namespaces joined by a veth pair: the daemon runs in one, attached to its end; the
//! other makes the whole backend range local (`ip route add local 198.19.0.0/18 dev lo`)
//! and answers every address with one listener. The daemon reaches the backends through
//! the peer as its gateway, so it resolves one neighbour, as it would for backends behind
//! a router (local backends in the daemon's own namespace would not do: the daemon waits
//! up to a second for each backend's MAC, and a local address has none). Every check is a
//! TCP connect to a distinct address, counted as one connection accepted by the listener;
//! or, with [`Options::half_open`], a SYN, counted as one SYN-ACK the backends' namespace
//! sends (its `OutSegs`: it sends nothing else).
//!
//! A veth delivers a packet on the sender's CPU, inside its system call, and a kernel
//! without IRQ time accounting charges that work to whatever task runs. Left alone, the
//! backends' half of every TCP handshake would be billed to the daemon. So, with two CPUs
//! or more, the daemon (and what it runs) is pinned to CPU 0 and the backends' receive
//! processing is steered to CPU 1 (RPS), with the listener: the daemon's figure is then
//! its own work, as on a load balancer whose backends are other machines, plus one
//! inter-processor interrupt per packet it sends (under a hypervisor, where an IPI is
//! costly, about a fifth of the daemon's time). The whole machine's busy time is reported
//! too.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    daemon::{failover_binary, test_bpffs},
    lab::Netns,
};

/// Backends are numbered into this range, 250 per /24 (no .0, no .255).
const BACKEND_NET: &str = "198.19.0.0/18";
/// The veth link between the two namespaces (outside [`BACKEND_NET`]).
const LINK_LB: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
const LINK_BACKENDS: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 2);
/// The port every backend (and so every check) uses.
const PORT: u16 = 8080;
/// Small Maglev tables, so tables and their maps do not dominate the memory figure.
const TABLE_SIZE: u32 = 1021;
/// The daemon's CPU, and the backends' (as an RPS mask), when there are two or more.
const DAEMON_CPU: usize = 0;
const BACKENDS_CPU: usize = 1;
const BACKENDS_CPU_MASK: u32 = 1 << BACKENDS_CPU;

/// Whether the daemon and the backends' side get a CPU each.
fn pinned() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > BACKENDS_CPU)
}

/// Pins the calling thread (or, before exec, the process) to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads
    // it for the duration of the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Busy and total time of the whole machine from `/proc/stat`, in clock ticks.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    ensure!(v.len() >= 5, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Ok((total - idle, total))
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Services in the generated config.
    pub services: usize,
    /// Backends per service (each at its own address).
    pub backends_per_service: usize,
    /// Check interval.
    pub interval: Duration,
    /// Time after the daemon reports forwarding before the first measurement.
    pub warmup: Duration,
    /// Length of one measurement window.
    pub window: Duration,
    /// Measurement windows (medians are reported).
    pub runs: usize,
    /// How long the daemon may take to start forwarding.
    pub startup_limit: Duration,
    /// Half-open checks (`half_open = true`: a SYN from a raw socket) instead of
    /// connecting ones.
    pub half_open: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            services: 100,
            backends_per_service: 100,
            interval: Duration::from_secs(1),
            warmup: Duration::from_secs(5),
            window: Duration::from_secs(10),
            runs: 3,
            startup_limit: Duration::from_secs(180),
            half_open: false,
        }
    }
}

impl Options {
    /// Every backend, each at its own address.
    pub fn backends(&self) -> usize {
        self.services * self.backends_per_service
    }
}

/// One measurement window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Completed checks per second: connections accepted by the backends' listener, or
    /// (half-open) SYN-ACKs sent by the backends.
    pub checks_per_s: f64,
    /// The daemon's own CPU time (user + system) over wall time: a fraction of one core.
    pub cpu_share: f64,
    /// The user-space part of `cpu_share` (the rest is the kernel: sockets, TCP).
    pub user_cpu_share: f64,
    /// CPU time of the processes the daemon ran and waited for (e.g. `ip`), same unit.
    pub children_cpu_share: f64,
    /// Busy time of the whole machine (every CPU, the backends' side included), in cores.
    pub system_cpu_cores: f64,
    /// VmRSS at the end of the window, MiB.
    pub rss_mib: f64,
    /// RssAnon (heap, stacks), MiB.
    pub rss_anon_mib: f64,
    /// RssFile (the binary and libraries), MiB.
    pub rss_file_mib: f64,
    /// RssShmem (memory-mapped BPF maps), MiB.
    pub rss_shmem_mib: f64,
}

/// The medians over the windows, with how the run went.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Backends checked.
    pub backends: usize,
    /// The check rate the config asks for (backends / interval).
    pub expected_per_s: f64,
    /// Seconds from starting the daemon to its "forwarding" line.
    pub startup_s: f64,
    /// Whether the daemon ran alone on CPU 0, the backends' side on CPU 1.
    pub pinned: bool,
    /// Medians of the windows.
    pub median: Sample,
    /// Every window.
    pub samples: Vec<Sample>,
    /// The daemon's warnings and errors (counted by message).
    pub warnings: Vec<(String, usize)>,
    /// Half-open checks rather than connecting ones.
    pub half_open: bool,
    /// CPU time of the processes the daemon ran (`ip`, looking up routes every 30 s and
    /// neighbours every 5 s) over every window together, as a share of one core: a
    /// window alone may hold no route lookup, or two.
    pub children_cpu_share: f64,
}

impl Figures {
    /// `(summary.json key, value)` pairs.
    /// Keys start `checks_` (connect checks) or `checks_half_open_`.
    pub fn summary(&self) -> Vec<(String, f64)> {
        let prefix = if self.half_open {
            "checks_half_open_"
        } else {
            "checks_"
        };
        [
            ("backends", self.backends as f64),
            ("expected_per_s", self.expected_per_s),
            ("startup_s", self.startup_s),
            ("per_s", self.median.checks_per_s),
            ("cpu_share", self.median.cpu_share),
            ("user_cpu_share", self.median.user_cpu_share),
            ("children_cpu_share", self.children_cpu_share),
            ("system_cpu_cores", self.median.system_cpu_cores),
            ("rss_mib", self.median.rss_mib),
            ("rss_anon_mib", self.median.rss_anon_mib),
            ("rss_file_mib", self.median.rss_file_mib),
            ("rss_shmem_mib", self.median.rss_shmem_mib),
        ]
        .into_iter()
        .map(|(key, value)| (format!("{prefix}{key}"), value))
        .collect()
    }
}

/// The address of backend `index` (0-based, across all services).
fn backend_address(index: usize) -> Ipv4Addr {
    let index = u32::try_from(index).expect("fewer than 2^32 backends");
    let third = u8::try_from(index / 250).expect("the backend range holds 16,000 backends");
    Ipv4Addr::new(198, 19, third, (index % 250 + 1) as u8)
}

/// The daemon's config: `services` x `backends_per_service` tcp-checked backends.
fn config(opts: &Options, interface: &str, socket: &str, pin_dir: &str) -> String {
    let interval = failover::config::format_duration(opts.interval);
    let timeout = failover::config::format_duration(opts.interval / 2);
    let half_open = opts.half_open;
    let mut s = format!(
        "interface = \"{interface}\"\ncontrol_socket = \"{socket}\"\npin_dir = \"{pin_dir}\"\nflow_capacity = 1024\n\n[defaults.check]\ntype = \"tcp\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\nhalf_open = {half_open}\n"
    );
    for svc in 0..opts.services {
        s += &format!(
            "\n[[service]]\nname = \"s{svc}\"\nvip = \"198.18.{}.{}\"\nport = {PORT}\nmode = \"dsr\"\ntable_size = {TABLE_SIZE}\n",
            100 + svc / 250,
            1 + svc % 250
        );
        for b in 0..opts.backends_per_service {
            let address = backend_address(svc * opts.backends_per_service + b);
            s += &format!("  [[service.backend]]\n  name = \"b{b}\"\n  address = \"{address}\"\n");
        }
    }
    s
}

/// The two namespaces and the veth pair between them.
struct Net {
    lb: Netns,
    backends: Netns,
    lb_if: String,
}

impl Net {
    fn new() -> anyhow::Result<Self> {
        let id = std::process::id() % 10_000;
        let lb = Netns::new(&format!("fo-chk{id}-lb"))?;
        let backends = Netns::new(&format!("fo-chk{id}-be"))?;
        let (lb_if, be_if) = (format!("fochk{id}l"), format!("fochk{id}b"));
        crate::lab::netns::ip([
            "link",
            "add",
            &lb_if,
            "netns",
            lb.name(),
            "type",
            "veth",
            "peer",
            "name",
            &be_if,
            "netns",
            backends.name(),
        ])?;
        lb.ip(["addr", "add", &format!("{LINK_LB}/30"), "dev", &lb_if])?;
        lb.ip(["link", "set", &lb_if, "up"])?;
        lb.ip([
            "route",
            "add",
            BACKEND_NET,
            "via",
            &LINK_BACKENDS.to_string(),
        ])?;
        backends.ip(["addr", "add", &format!("{LINK_BACKENDS}/30"), "dev", &be_if])?;
        backends.ip(["link", "set", &be_if, "up"])?;
        backends.ip(["route", "add", "local", BACKEND_NET, "dev", "lo"])?;
        if pinned() {
            // /sys/class/net shows the namespace of whoever mounted /sys: `ip netns
            // exec` mounts the namespace's own.
            let rps = format!("/sys/class/net/{be_if}/queues/rx-0/rps_cpus");
            let out = backends
                .exec("sh", ["-c", &format!("echo {BACKENDS_CPU_MASK} > {rps}")])
                .output()
                .context("running sh")?;
            ensure!(
                out.status.success(),
                "steering {be_if}'s receive processing to CPU 1: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            lb,
            backends,
            lb_if,
        })
    }
}

/// One listener for every backend address, counting accepted connections on a thread
/// inside the backends' namespace; stops on drop.
struct Listener {
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Listener {
    fn start(ns: &Netns) -> anyhow::Result<Self> {
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let name = ns.name().to_owned();
        let (ready_tx, ready) = mpsc::channel();
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let ns = Netns::existing(&name);
                let _inside = ns.enter()?;
                if pinned() {
                    pin_to(BACKENDS_CPU).context("pinning the listener")?;
                }
                let listener = listen(SocketAddr::from(([0, 0, 0, 0], PORT)));
                let listener = match listener {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                // Non-blocking with a short sleep when idle, so the stop flag is seen.
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            drop(conn);
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Err(e).context("accepting a check's connection"),
                    }
                }
                Ok(())
            })
        };
        match ready.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the backends' listener: {e}"),
            Err(_) => bail!("the backends' listener did not start"),
        }
        Ok(Self {
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Err(e)) => eprintln!("checks bench: listener: {e:#}"),
                Err(_) => eprintln!("checks bench: the listener thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// A non-blocking listener with a backlog deep enough for a burst of checks.
fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// `failover run` in a namespace, stopped (SIGTERM) on drop, with its pins and config
/// removed. [`crate::daemon::Daemon`] waits 15 s for the daemon to forward, too short for
/// 10,000 backends, hence this guard.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    config: PathBuf,
    pin_dir: PathBuf,
}

impl Running {
    fn start(ns: &Netns, opts: &Options, interface: &str) -> anyhow::Result<Self> {
        let config = std::env::temp_dir().join(format!("{}-failover.toml", ns.name()));
        let pin_dir = test_bpffs()?.join(ns.name());
        let socket = format!("/run/failover/{}.sock", ns.name());
        let text = config_text(opts, interface, &socket, &pin_dir)?;
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let binary = failover_binary()?;
        let mut command = ns.exec(
            &binary,
            ["run", "--config", config.to_str().context("config path")?],
        );
        if pinned() {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: sched_setaffinity is async-signal-safe and touches no memory shared
            // with the parent; every thread the daemon starts inherits the mask.
            unsafe { command.pre_exec(|| pin_to(DAEMON_CPU)) };
        }
        let mut child = command
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} run", binary.display()))?;
        let (tx, lines) = mpsc::channel();
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            lines,
            log: Vec::new(),
            config,
            pin_dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a log line contains `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the daemon exited; its log ends:\n{}", self.tail())
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the daemon exited ({status}); its log ends:\n{}",
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the daemon did not log {needle:?} within {limit:?}; its log ends:\n{}",
                    self.tail()
                );
            }
        }
    }

    /// Collects the log lines written so far.
    fn collect(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    fn tail(&self) -> String {
        let start = self.log.len().saturating_sub(20);
        self.log[start..].join("\n")
    }

    /// Warnings and errors, counted by message (fields after the message dropped).
    fn warnings(&mut self) -> Vec<(String, usize)> {
        self.collect();
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for line in &self.log {
            if let Some(pos) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) {
                let text = &line[pos..];
                // `LEVEL target: message field=…`: keep the level and the message.
                let message = text
                    .split_once(": ")
                    .map_or(text, |(_, m)| m)
                    .split(" backend=")
                    .next()
                    .unwrap_or(text)
                    .to_owned();
                *counts.entry(message).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        v
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn config_text(
    opts: &Options,
    interface: &str,
    socket: &str,
    pin_dir: &std::path::Path,
) -> anyhow::Result<String> {
    let text = config(
        opts,
        interface,
        socket,
        pin_dir.to_str().context("pin dir")?,
    );
    // The bench measures the daemon, not a config mistake.
    failover::config::Config::parse(&text, "checks-bench.toml")
        .map_err(|e| anyhow::anyhow!("the generated config is invalid:\n{e}"))?;
    Ok(text)
}

/// TCP segments sent from `ns` (`OutSegs` of its `/proc/net/snmp`). The backends'
/// namespace sends only checks' answers.
fn segments_sent(ns: &Netns) -> anyhow::Result<u64> {
    let out = ns
        .exec("cat", ["/proc/net/snmp"])
        .output()
        .context("running cat in the backends' namespace")?;
    ensure!(out.status.success(), "reading the backends' /proc/net/snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in the backends' /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .context("no OutSegs in the backends' /proc/net/snmp")
}

/// CPU times of a process from `/proc/PID/stat`, in seconds: (own, own in user space,
/// waited-for children).
fn cpu_seconds(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat: did the daemon exit?"))?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..=17: indices 10..=13 after `state`.
    ensure!(fields.len() > 13, "short /proc/{pid}/stat");
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((
        (fields[10] + fields[11]) as f64 / ticks,
        fields[10] as f64 / ticks,
        (fields[12] + fields[13]) as f64 / ticks,
    ))
}

/// (VmRSS, RssAnon, RssFile, RssShmem) of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<[f64; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        let n: f64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{key} {line:?}"))?;
        Ok(n / 1024.0)
    };
    Ok([
        kib("VmRSS:")?,
        kib("RssAnon:")?,
        kib("RssFile:")?,
        kib("RssShmem:")?,
    ])
}

fn median_of(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(field).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the bench: builds the namespaces, starts the daemon, measures `opts.runs`
/// windows after the warm-up. `progress` gets a line now and then.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Figures> {
    ensure!(opts.runs > 0, "at least one measurement window");
    let backends = opts.backends();
    ensure!(
        backends <= 16_000,
        "at most 16,000 backends fit 198.19.0.0/18"
    );
    let net = Net::new()?;
    let listener = Listener::start(&net.backends)?;
    let started = Instant::now();
    let mut daemon = Running::start(&net.lb, opts, &net.lb_if)?;
    progress(&format!(
        "daemon started (pid {}), waiting up to {:?} for it to forward",
        daemon.pid(),
        opts.startup_limit
    ));
    daemon.wait_for("forwarding interface=", opts.startup_limit)?;
    let startup_s = started.elapsed().as_secs_f64();
    progress(&format!(
        "forwarding after {startup_s:.1} s; warming up for {:?}",
        opts.warmup
    ));
    std::thread::sleep(opts.warmup);

    let pid = daemon.pid();
    let (_, _, children_start) = cpu_seconds(pid)?;
    let measuring = Instant::now();
    let mut samples = Vec::with_capacity(opts.runs);
    for run in 0..opts.runs {
        daemon.collect();
        let (cpu0, user0, children0) = cpu_seconds(pid)?;
        let (busy0, total0) = machine_ticks()?;
        // A connect check is one accepted connection; a half-open one never becomes a
        // connection: it is one SYN-ACK sent by the backends.
        let answered = || -> anyhow::Result<u64> {
            if opts.half_open {
                segments_sent(&net.backends)
            } else {
                Ok(listener.accepted())
            }
        };
        let (accepted0, t0) = (answered()?, Instant::now());
        std::thread::sleep(opts.window);
        let (cpu1, user1, children1) = cpu_seconds(pid)?;
        let (busy1, total1) = machine_ticks()?;
        let (accepted1, wall) = (answered()?, t0.elapsed().as_secs_f64());
        let [rss, anon, file, shmem] = rss_mib(pid)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let sample = Sample {
            checks_per_s: (accepted1 - accepted0) as f64 / wall,
            cpu_share: (cpu1 - cpu0) / wall,
            user_cpu_share: (user1 - user0) / wall,
            children_cpu_share: (children1 - children0) / wall,
            system_cpu_cores: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cpus,
            rss_mib: rss,
            rss_anon_mib: anon,
            rss_file_mib: file,
            rss_shmem_mib: shmem,
        };
        progress(&format!(
            "window {}/{}: {:.0} checks/s, daemon CPU {:.1}% of a core ({:.1}% user space; +{:.1}% in processes it ran), machine {:.2} cores busy, RSS {:.1} MiB",
            run + 1,
            opts.runs,
            sample.checks_per_s,
            sample.cpu_share * 100.0,
            sample.user_cpu_share * 100.0,
            sample.children_cpu_share * 100.0,
            sample.system_cpu_cores,
            sample.rss_mib
        ));
        samples.push(sample);
    }
    let median = Sample {
        checks_per_s: median_of(&samples, |s| s.checks_per_s),
        cpu_share: median_of(&samples, |s| s.cpu_share),
        user_cpu_share: median_of(&samples, |s| s.user_cpu_share),
        children_cpu_share: median_of(&samples, |s| s.children_cpu_share),
        system_cpu_cores: median_of(&samples, |s| s.system_cpu_cores),
        rss_mib: median_of(&samples, |s| s.rss_mib),
        rss_anon_mib: median_of(&samples, |s| s.rss_anon_mib),
        rss_file_mib: median_of(&samples, |s| s.rss_file_mib),
        rss_shmem_mib: median_of(&samples, |s| s.rss_shmem_mib),
    };
    let (_, _, children_end) = cpu_seconds(pid)?;
    let children_cpu_share = (children_end - children_start) / measuring.elapsed().as_secs_f64();
    let warnings = daemon.warnings();
    drop(daemon);
    drop(listener);
    drop(net);
    Ok(Figures {
        backends,
        expected_per_s: backends as f64 / opts.interval.as_secs_f64(),
        startup_s,
        pinned: pinned(),
        median,
        samples,
        warnings,
        half_open: opts.half_open,
        children_cpu_share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_are_distinct_unicast_and_in_range() {
        let all: std::collections::BTreeSet<Ipv4Addr> = (0..16_000).map(backend_address).collect();
        assert_eq!(all.len(), 16_000);
        for a in &all {
            let [a0, a1, a2, a3] = a.octets();
            assert_eq!((a0, a1), (198, 19));
            assert!(a2 < 64 && (1..=250).contains(&a3), "{a}");
        }
    }

    #[test]
    fn the_generated_config_is_valid() {
        let opts = Options {
            services: 3,
            backends_per_service: 4,
            ..Options::default()
        };
        let text = config(&opts, "veth0", "/run/failover/x.sock", "/run/x");
        let cfg = failover::config::Config::parse(&text, "x.toml").expect("valid");
        assert_eq!(cfg.services.len(), 3);
        assert!(cfg.services.iter().all(|s| s.backends.len() == 4));
        assert_eq!(
            cfg.services[2].backends[3].address.to_string(),
            "198.19.0.12"
        );
    }
}
