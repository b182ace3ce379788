//! The packet-test rig: the real compiled XDP object, loaded with maps sized and filled from
//! a config exactly as the daemon does it, run on single packets through BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use anyhow::{Context as _, ensure};
use aya::programs::{TestRun as _, TestRunOptions};
use failover::{
    config::{Config, XdpLogLevel},
    dataplane::Dataplane,
    layout::{self, Layout},
    loader, program,
};
use failover_common::{Counter, maps::PROG_BALANCER};

/// XDP verdicts, as the kernel numbers them.
pub const XDP_DROP: u32 = 1;
/// Pass to the kernel stack.
pub const XDP_PASS: u32 = 2;
/// Transmit back out of the interface.
pub const XDP_TX: u32 = 3;
/// Redirect (here: through the `EGRESS` devmap to another interface).
pub const XDP_REDIRECT: u32 = 4;

/// The name of a verdict, for messages.
pub fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// The MAC the rig gives a backend: `02:00` and the address's last four bytes.
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let n = o.len();
    [0x02, 0x00, o[n - 4], o[n - 3], o[n - 2], o[n - 1]]
}

/// A loaded balancer with a config applied.
pub struct Rig {
    /// The config it was built from.
    pub cfg: Config,
    /// Its layout.
    pub layout: Layout,
    /// The dataplane (maps, counters).
    pub dp: Dataplane,
}

/// What one run of the program did.
#[derive(Debug)]
pub struct Outcome {
    /// XDP verdict.
    pub verdict: u32,
    /// The packet as the program left it.
    pub bytes: Vec<u8>,
}

impl Rig {
    /// Loads the balancer for `toml`, every backend usable.
    pub fn new(toml: &str) -> anyhow::Result<Self> {
        Self::with_usable(toml, &|_, _| true)
    }

    /// Loads the balancer for `toml`; `usable(service, backend)` picks usable backends.
    pub fn with_usable(toml: &str, usable: &dyn Fn(&str, &str) -> bool) -> anyhow::Result<Self> {
        require_root()?;
        let cfg = Config::parse(toml, "packet-test.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
        let layout = layout::plan(&cfg);
        let ebpf = loader::load_balancer(&layout.sizes, XdpLogLevel::Off)?;
        let mut dp = Dataplane::new(ebpf)?;
        program::apply(&mut dp, &cfg, &layout, &backend_mac, usable)?;
        Ok(Self { cfg, layout, dp })
    }

    /// Re-applies the config with another usable set (as the daemon does on a verdict).
    pub fn set_usable(&mut self, usable: &dyn Fn(&str, &str) -> bool) -> anyhow::Result<()> {
        program::apply(&mut self.dp, &self.cfg, &self.layout, &backend_mac, usable)?;
        Ok(())
    }

    /// Runs the program once on `packet`.
    pub fn run(&mut self, packet: &[u8]) -> anyhow::Result<Outcome> {
        let prog = loader::xdp_mut(self.dp.ebpf_mut(), PROG_BALANCER)?;
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok(Outcome {
            verdict: r.return_value,
            bytes: out,
        })
    }

    /// Runs `program` (of this rig's object) `repeat` times on `packet` and returns the
    /// kernel's result (its `duration` is the mean per repetition); no output is copied.
    pub fn time(
        &mut self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<aya::programs::TestRunResult> {
        let prog = loader::xdp_mut(self.dp.ebpf_mut(), program)?;
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        };
        prog.test_run(opts).context("BPF_PROG_TEST_RUN")
    }

    /// A reason counter's current value.
    pub fn counter(&self, c: Counter) -> anyhow::Result<u64> {
        Ok(self.dp.counter(c)?)
    }

    /// The id of backend `backend` of service `service`.
    pub fn backend_id(&self, service: &str, backend: &str) -> u32 {
        let s = self.layout.service(service).expect("service in layout");
        s.backends
            .iter()
            .find(|b| b.name == backend)
            .expect("backend in layout")
            .id
    }
}

/// Fails (never skips) when the tests cannot load BPF programs.
pub fn require_root() -> anyhow::Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "packet tests load XDP programs into the kernel: run them as root (`sudo -E cargo xtask test`)"
    );
    Ok(())
}
