//! The daemon: loads the packet path, starts the probes, lets the brain decide and write
//! the tables, attaches, keeps backend MACs fresh, and exits on SIGTERM/SIGINT.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    brain::Brain,
    config::{CheckKind, Config, XdpLogLevel, XdpMode},
    control::{Request, Response},
    dataplane::Dataplane,
    health::{Checker, scheduler},
    layout,
    loader::{self, AttachMode},
    neighbor::{self, RouteCache},
    pins::Pins,
};

/// How often backend MAC addresses are re-read from the kernel.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(5);
/// How soon to look again while a backend's MAC is unresolved.
const UNRESOLVED_REFRESH: Duration = Duration::from_millis(250);

const fn attach_mode(m: XdpMode) -> AttachMode {
    match m {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Auto => AttachMode::Auto,
    }
}

/// Backend MACs, and the egress interface of backends not behind the attached interface.
type Resolved = (HashMap<IpAddr, [u8; 6]>, HashMap<IpAddr, u32>);

/// Resolves every backend's next-hop MAC; unresolved ones get zeros (and a warning): the
/// packet path drops their packets with `drop_backend_unresolved` until they resolve.
/// Backends routed through another interface than `cfg.interface` get its ifindex.
fn resolve_all(cfg: &Config, wait: Duration, routes: &std::sync::Mutex<RouteCache>) -> Resolved {
    let mut addrs: Vec<IpAddr> = cfg
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let mut macs = HashMap::new();
    let mut egress = HashMap::new();
    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    for (addr, hop) in neighbor::resolve_all(&addrs, wait, &mut routes) {
        let mac = match hop {
            Ok(hop) => {
                if let Some(ifindex) = hop.egress(&cfg.interfaces) {
                    egress.insert(addr, ifindex);
                }
                hop.mac
            }
            Err(e) => {
                tracing::warn!(backend = %addr, error = %e, "backend MAC unresolved");
                [0; 6]
            }
        };
        macs.insert(addr, mac);
    }
    (macs, egress)
}

/// Most probes in flight at once (each bounded by its own timeout).
const MAX_CONCURRENT_PROBES: usize = 256;

/// `failover run`.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Bound before anything is loaded or attached: a second daemon fails here, touching nothing.
    let listener = crate::control::ControlListener::bind(
        &cfg.control_socket,
        crate::control::ServerOptions::default(),
    )
    .await
    .with_context(|| format!("control socket {}", cfg.control_socket.display()))?;
    let pins = Pins::prepare(&cfg.pin_dir)?;
    let (mut dp, plan, stale) = open_tables(&cfg, &pins)?;
    let adopting = stale.is_some();
    let mut logger = if cfg.xdp_log_level == XdpLogLevel::Off {
        None
    } else {
        Some(
            aya_log::EbpfLogger::init(dp.ebpf_mut())
                .context("starting the XDP program's logger")?,
        )
    };
    if adopting {
        let entries: Vec<_> = plan.services.iter().map(|s| s.entry.clone()).collect();
        dp.adopt(&entries);
        tracing::info!(pin_dir = %cfg.pin_dir.display(), "adopted the pinned tables: they stay in use until fresh verdicts");
    }
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let mut resets = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            dp.take_resets()?,
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(|e| anyhow::anyhow!("polling the RESETS ring buffer: {e}"))?;
    let cfg_for_macs = cfg.clone();
    let routes = std::sync::Arc::new(std::sync::Mutex::new(RouteCache::default()));
    let routes_for_macs = routes.clone();
    let (macs, egress) = tokio::task::spawn_blocking(move || {
        resolve_all(&cfg_for_macs, Duration::from_secs(1), &routes_for_macs)
    })
    .await?;
    dp.set_egress(&egress)?;
    let mut brain = Brain::new(cfg.clone(), plan, dp, macs, Instant::now());
    if let Some(stale) = stale {
        brain.remove_at_publish(stale);
    }
    let started = Instant::now();
    let (control_tx, mut control) = mpsc::channel(64);
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_handler = control_tx.clone();
    let control_server = tokio::spawn(listener.serve(control_tx, async {
        let _ = control_stopped.await;
    }));
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = cfg.metrics_listen {
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics_listen {addr}: cannot listen (in use? choose another address or remove the key)"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        // Each scrape asks the brain for a status snapshot, like `failover status`.
        let snapshot = move || {
            let handler = metrics_handler.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                handler.send((Request::Status, tx)).await.ok()?;
                match rx.await.ok()? {
                    Response::Status(s) => Some(s),
                    _ => None,
                }
            }
        };
        tokio::spawn(crate::metrics::serve(socket, snapshot, async {
            let _ = metrics_stopped.await;
        }));
    } else {
        drop(metrics_handler);
    }

    let (reports_tx, mut reports) = mpsc::channel(1024);
    let checker = Checker::new(MAX_CONCURRENT_PROBES);
    let mut probes = scheduler::spawn(
        brain.targets(),
        checker.clone(),
        reports_tx.clone(),
        brain.generation(),
    )
    .context("starting the health checks")?;

    // A fresh start waits (bounded) for first verdicts, so the tables it attaches with
    // already route around dead backends.
    let startup = tokio::time::Instant::now() + brain.startup_wait(MAX_CONCURRENT_PROBES);
    while !brain.converged() {
        tokio::select! {
            Some(report) = reports.recv() => {
                if let Some(s) = brain.on_probe(&report, Instant::now())? {
                    probes.set_schedule(report.target, s);
                }
            }
            Some((request, reply)) = control.recv() => {
                let _ = reply.send(brain.handle(request, started, Instant::now()));
            }
            () = tokio::time::sleep_until(startup) => {
                tracing::warn!("some backends have no verdict yet; they take no traffic until they do");
                break;
            }
        }
    }
    if adopting {
        brain.publish_converged(Instant::now())?;
    } else {
        brain.publish_all(Instant::now())?;
    }
    pins.drop_other_links(&cfg.interfaces)?;
    let mut adopted_link = true;
    for interface in &cfg.interfaces {
        adopted_link &= pins.attach(
            brain.dataplane_mut().ebpf_mut(),
            interface,
            attach_mode(cfg.xdp_mode),
        )?;
    }
    tracing::info!(
        interface = %cfg.interfaces.join(","),
        services = cfg.services.len(),
        adopted_link,
        "forwarding"
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("forwarding"),
    ]);

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut cfg = cfg;
    let mut refresh = tokio::time::interval(NEIGHBOR_REFRESH);
    refresh.tick().await;
    let mut log_tick = tokio::time::interval(Duration::from_millis(100));
    // systemd's watchdog (WatchdogSec=): pinged from the brain's loop, so a wedged brain
    // gets the daemon restarted (forwarding goes on from the pinned tables meanwhile).
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
    let (macs_tx, mut fresh_macs) = mpsc::channel(1);
    let mut resolving = false;
    loop {
        let next = brain.next_deadline();
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(report) = reports.recv() => {
                if let Some(s) = brain.on_probe(&report, Instant::now())? {
                    probes.set_schedule(report.target, s);
                }
            }
            () = scheduler::sleep_until(next) => brain.tick(Instant::now())?,
            guard = resets.readable_mut() => {
                let mut guard = guard.context("RESETS ring buffer")?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Some(report) = reset_report(&item) {
                        if let Some(t) = brain.on_reset(report.service, report.backend, Instant::now()) {
                            probes.probe_now(t);
                        }
                    }
                }
                guard.clear_ready();
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[sd_notify::NotifyState::Watchdog]),
            _ = log_tick.tick(), if logger.is_some() => {
                if let Some(l) = logger.as_mut() { l.flush() }
            }
            _ = refresh.tick(), if !resolving => {
                // Resolution may wait on ARP: off the brain's task, one round at a time.
                resolving = true;
                let cfg2 = cfg.clone();
                let tx = macs_tx.clone();
                let routes = routes.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = tx.try_send(resolve_all(&cfg2, Duration::from_millis(500), &routes));
                });
            }
            Some((macs, egress)) = fresh_macs.recv() => {
                resolving = false;
                match brain.dataplane_mut().set_egress(&egress) {
                    Ok(true) => {
                        tracing::info!("backend egress interfaces changed; rewriting backends");
                        brain.publish_all(Instant::now())?;
                    }
                    Ok(false) => {}
                    // The backends keep their previous interfaces; the next refresh retries.
                    Err(e) => tracing::warn!(error = %e, "backend egress interfaces not updated"),
                }
                // A backend whose MAC is not known yet (new, or its neighbour entry expired)
                // takes no traffic: look again soon rather than in 5 s.
                if macs.values().any(|m| *m == [0; 6]) {
                    refresh.reset_after(UNRESOLVED_REFRESH);
                }
                brain.set_macs(macs, Instant::now())?;
            }
            Some((request, reply)) = control.recv() => {
                let response = if request == Request::Reload {
                    match reload(&mut cfg, &mut brain, &mut probes, &checker, &reports_tx) {
                        Ok(message) => {
                            // Backends the reload added need their MACs and interfaces.
                            refresh.reset_immediately();
                            Response::Done { message }
                        }
                        Err(message) => Response::Error { message },
                    }
                } else {
                    brain.handle(request, started, Instant::now())
                };
                let _ = reply.send(response);
            }
            _ = hup.recv() => {
                // SIGHUP: the same as `failover reload`; the outcome goes to the log.
                if reload(&mut cfg, &mut brain, &mut probes, &checker, &reports_tx).is_ok() {
                    refresh.reset_immediately();
                }
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_metrics.send(());
    drop(probes);
    let _ = stop_control.send(());
    if let Err(e) = control_server.await {
        tracing::warn!(error = %e, "control socket task");
    }
    if cfg.detach_on_exit {
        pins.detach()?;
        tracing::info!("stopped: detached (detach_on_exit)");
    } else {
        tracing::info!(pin_dir = %cfg.pin_dir.display(), "stopped: forwarding continues with the last tables (pinned); a new daemon adopts them");
    }
    Ok(())
}

/// Loads the balancer with its maps: the pinned ones when they fit the config (their
/// ids and live tables read back from them), else fresh ones. Returns the dataplane, the
/// layout, and when adopting, what the maps hold that the config no longer has.
fn open_tables(
    cfg: &Config,
    pins: &Pins,
) -> anyhow::Result<(Dataplane, layout::Layout, Option<layout::Stale>)> {
    let adoption = pins.adoption(&layout::needs(cfg), &layout::capacity(cfg))?;
    let ebpf = loader::load_balancer_pinned(&adoption.sizes, cfg.xdp_log_level, Some(pins))?;
    let dp = Dataplane::new(ebpf)?;
    if !adoption.tables {
        return Ok((dp, layout::plan_in(cfg, adoption.sizes)?, None));
    }
    match layout::recover(cfg, adoption.sizes, &dp.snapshot()?) {
        Ok((plan, stale)) => Ok((dp, plan, Some(stale))),
        Err(e) => {
            tracing::warn!(error = %e, "the pinned maps cannot hold this config: starting with fresh tables; established flows will be re-picked");
            drop(dp);
            pins.clear_maps()?;
            let sizes = layout::capacity(cfg);
            let dp = Dataplane::new(loader::load_balancer_pinned(
                &sizes,
                cfg.xdp_log_level,
                Some(pins),
            )?)?;
            Ok((dp, layout::plan_in(cfg, sizes)?, None))
        }
    }
}

/// Re-reads the config file and applies the difference; a config that fails validation
/// is rejected and the running one stays. Returns what to tell the operator.
fn reload(
    cfg: &mut Config,
    brain: &mut Brain,
    probes: &mut scheduler::Probes,
    checker: &Checker,
    reports: &mpsc::Sender<scheduler::Report>,
) -> Result<String, String> {
    let fresh = match Config::load(&cfg.file) {
        Ok(c) => c,
        Err(e) => {
            let message = format!("reload rejected, the running config stays:\n{e}");
            tracing::error!("{message}");
            return Err(message);
        }
    };
    let immutable = |c: &Config| {
        (
            c.interfaces.clone(),
            c.xdp_mode,
            c.pin_dir.clone(),
            c.control_socket.clone(),
            c.metrics_listen,
            c.xdp_log_level,
        )
    };
    if immutable(&fresh) != immutable(cfg) {
        let message = "reload rejected: interface, xdp_mode, pin_dir, control_socket, metrics_listen and xdp_log_level need a restart".to_string();
        tracing::error!("{message}");
        return Err(message);
    }
    let (v4, v6) = half_open_families(&fresh);
    if let Err(e) = checker.prepare_half_open(v4, v6) {
        let message = format!("reload rejected, the running config stays: {e}");
        tracing::error!("{message}");
        return Err(message);
    }
    match brain.reload(fresh.clone(), Instant::now()) {
        Ok(done) => {
            if done.targets_changed {
                // Cannot fail: the only failure, a raw socket, was ruled out above.
                match scheduler::spawn(
                    brain.targets(),
                    checker.clone(),
                    reports.clone(),
                    brain.generation(),
                ) {
                    Ok(p) => *probes = p,
                    Err(e) => {
                        let message =
                            format!("reloaded, but the health checks could not restart: {e}");
                        tracing::error!("{message}");
                        return Err(message);
                    }
                }
            }
            *cfg = fresh;
            let message = format!("reloaded: {done}");
            tracing::info!("{message}");
            Ok(message)
        }
        Err(message) => {
            tracing::error!("{message}");
            Err(message)
        }
    }
}

/// Whether any backend has a half-open TCP check of an IPv4 (first) or IPv6 (second)
/// address: those need raw sockets.
fn half_open_families(cfg: &Config) -> (bool, bool) {
    let mut families = (false, false);
    for backend in cfg.services.iter().flat_map(|s| &s.backends) {
        if let CheckKind::Tcp {
            half_open: true, ..
        } = backend.check.kind
        {
            if backend.check.address.unwrap_or(backend.address).is_ipv4() {
                families.0 = true;
            } else {
                families.1 = true;
            }
        }
    }
    families
}

/// Tells systemd (when it started us with Type=notify); a failure is only logged.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify");
    }
}

/// Decodes one `RESETS` record.
fn reset_report(bytes: &[u8]) -> Option<failover_common::ResetReport> {
    if bytes.len() < std::mem::size_of::<failover_common::ResetReport>() {
        return None;
    }
    // SAFETY: the record is a `ResetReport` written by the packet path (repr(C), any bits
    // valid); read_unaligned because the ring gives no alignment guarantee we rely on.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}
