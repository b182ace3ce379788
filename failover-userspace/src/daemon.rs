//! The daemon: loads and attaches the packet path, writes its tables, keeps backend MACs
//! fresh, and exits on SIGTERM/SIGINT.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{Config, XdpLogLevel, XdpMode},
    dataplane::Dataplane,
    layout,
    loader::{self, AttachMode},
    neighbor, program,
};

/// How often backend MAC addresses are re-read from the kernel.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(5);

const fn attach_mode(m: XdpMode) -> AttachMode {
    match m {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Auto => AttachMode::Auto,
    }
}

/// Resolves every backend's next-hop MAC; unresolved ones get zeros (and a warning): the
/// packet path drops their packets with `drop_backend_unresolved` until they resolve.
fn resolve_all(cfg: &Config, wait: Duration) -> HashMap<IpAddr, [u8; 6]> {
    let mut macs = HashMap::new();
    for b in cfg.services.iter().flat_map(|s| &s.backends) {
        if macs.contains_key(&b.address) {
            continue;
        }
        let mac = match neighbor::resolve(b.address, wait) {
            Ok(hop) => hop.mac,
            Err(e) => {
                tracing::warn!(backend = %b.address, error = %e, "backend MAC unresolved");
                [0; 6]
            }
        };
        macs.insert(b.address, mac);
    }
    macs
}

/// `failover run`.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let plan = layout::plan(&cfg);
    let mut ebpf = loader::load_balancer(&plan.sizes, cfg.xdp_log_level)?;
    let mut logger = if cfg.xdp_log_level == XdpLogLevel::Off {
        None
    } else {
        Some(aya_log::EbpfLogger::init(&mut ebpf).context("starting the XDP program's logger")?)
    };
    let mut dp = Dataplane::new(ebpf)?;
    let mut macs = resolve_all(&cfg, Duration::from_secs(1));
    let all_usable = |_: &str, _: &str| true;
    program::apply(
        &mut dp,
        &cfg,
        &plan,
        &|a| macs.get(&a).copied().unwrap_or([0; 6]),
        &all_usable,
    )?;
    loader::attach(
        dp.ebpf_mut(),
        failover_common::maps::PROG_BALANCER,
        &cfg.interface,
        attach_mode(cfg.xdp_mode),
    )?;
    tracing::info!(
        interface = %cfg.interface,
        services = cfg.services.len(),
        backends = plan.sizes.backends,
        "forwarding"
    );

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut refresh = tokio::time::interval(NEIGHBOR_REFRESH);
    refresh.tick().await;
    let mut log_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = log_tick.tick(), if logger.is_some() => {
                if let Some(l) = logger.as_mut() { l.flush() }
            }
            _ = refresh.tick() => {
                let cfg2 = cfg.clone();
                let fresh = tokio::task::spawn_blocking(move || resolve_all(&cfg2, Duration::from_millis(500))).await?;
                if fresh != macs {
                    tracing::info!("backend MACs changed; rewriting backends");
                    macs = fresh;
                    program::apply(&mut dp, &cfg, &plan, &|a| macs.get(&a).copied().unwrap_or([0; 6]), &all_usable)?;
                }
            }
        }
    }
    tracing::info!(
        "stopping: the XDP program is detached with the daemon (pinning comes with issue 4)"
    );
    Ok(())
}
