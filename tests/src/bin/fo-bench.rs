//! `cargo xtask bench`: times the XDP program through BPF_PROG_TEST_RUN against a baseline
//! program timed the same way in the same run, reports medians and ratios, map memory, and
//! Maglev table generation time, and health checks per second with the daemon's CPU share
//! and memory ([`checks_bench`]); writes `target/bench/summary.json`.
//!
//! Two timing styles, each compared only with the baseline timed the same way:
//! - `repeat`: one syscall runs the program N times on the same buffer. Only for paths that
//!   leave the packet on the same path (dsr hit/miss, pass); counters prove every
//!   repetition took the path claimed.
//! - `single`: N syscalls of one repetition each (each adds ~55 ns of syscall overhead to
//!   the measured figure on both sides), for modes that rewrite the packet (tunnel, nat).

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use etherparse::PacketBuilder;
use failover::{
    config::Config,
    layout,
    loader::{self, BASELINE_OBJECT},
    selection::maglev::{MaglevBackend, build_table},
};
use failover_common::{
    Counter,
    maps::{BASELINE_SENT, BASELINE_TARGETS, PROG_BALANCER, PROG_BASELINE},
};
use failover_tests::{
    checks_bench,
    rig::{Rig, XDP_PASS, XDP_TX},
};

#[derive(Parser)]
struct Args {
    /// Packets per run.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u32,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where to write the summary.
    #[arg(long, default_value = "target/bench/summary.json")]
    out: std::path::PathBuf,
    /// Run only the health-check bench (the real daemon checking many backends), keeping
    /// the other figures already in the summary.
    #[arg(long, conflicts_with = "skip_checks")]
    only_checks: bool,
    /// Skip the health-check bench.
    #[arg(long)]
    skip_checks: bool,
    /// Health-check bench: services in the generated config.
    #[arg(long, default_value_t = 100)]
    check_services: usize,
    /// Health-check bench: backends per service.
    #[arg(long, default_value_t = 100)]
    check_backends: usize,
    /// Health-check bench: check interval (the rate asked is backends / interval).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    check_interval: std::time::Duration,
    /// Health-check bench: only half-open checks (it measures connecting checks, then
    /// half-open ones, by default).
    #[arg(long)]
    check_half_open: bool,
}

const MAC_CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 2];
const MAC_LB: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn config() -> String {
    let mut s = String::from(
        "interface = \"lo\"\nflow_capacity = 1048576\n[tunnel]\nsource_v4 = \"198.18.250.0/24\"\nsource_v6 = \"2001:db8:ffff::/112\"\n",
    );
    let services = [
        ("dsr", "ipv4", "198.18.0.10"),
        ("dsr", "ipv6", "2001:db8:0:1::10"),
        ("tunnel", "ipv4", "198.18.0.11"),
        ("tunnel", "ipv6", "2001:db8:0:1::11"),
        ("nat", "ipv4", "198.18.0.12"),
        ("nat", "ipv6", "2001:db8:0:1::12"),
    ];
    for (mode, fam, vip) in services {
        s += &format!(
            "[[service]]\nname = \"{mode}-{fam}\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n"
        );
        if mode == "nat" {
            // The bench times the packet path alone.
            s += "passive_reset = false\n";
        }
        for i in 1..=3 {
            let addr = if fam == "ipv4" {
                format!("198.18.1.{i}")
            } else {
                format!("2001:db8:0:2::{i}")
            };
            let port = if mode == "nat" { "port = 8080\n" } else { "" };
            s += &format!(
                "  [[service.backend]]\n  name = \"b{i}\"\n  address = \"{addr}\"\n  {port}"
            );
        }
    }
    s
}

fn packet(vip: IpAddr, dport: u16, syn: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let eth = PacketBuilder::ethernet2(MAC_CLIENT, MAC_LB);
    let payload = [0u8; 10]; // 64-byte IPv4 frame
    match vip {
        IpAddr::V4(a) => {
            let b = eth
                .ipv4([198, 18, 0, 2], a.octets(), 64)
                .tcp(40_000, dport, 1, 65535);
            let b = if syn { b.syn() } else { b.ack(1) };
            b.write(&mut v, &payload).unwrap();
        }
        IpAddr::V6(a) => {
            let src: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
            let b = eth
                .ipv6(src.octets(), a.octets(), 64)
                .tcp(40_000, dport, 1, 65535);
            let b = if syn { b.syn() } else { b.ack(1) };
            b.write(&mut v, &payload).unwrap();
        }
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What a timed path must show in the counters, per packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Hit,
    Miss,
    Pass,
}

struct Bench {
    rig: Rig,
    args: Args,
}

impl Bench {
    /// Mean ns per packet, `repeat` style or `single` style, checked against the counters.
    fn time(
        &mut self,
        service: Option<u32>,
        pkt: &[u8],
        path: Path,
        single: bool,
    ) -> anyhow::Result<f64> {
        let mut runs = Vec::new();
        for _ in 0..self.args.runs {
            let before = self.snapshot(service)?;
            let ns = if single {
                let mut total = 0u128;
                for _ in 0..self.args.packets {
                    total += self.rig.time(PROG_BALANCER, pkt, 1)?.duration.as_nanos();
                }
                total as f64 / f64::from(self.args.packets)
            } else {
                let r = self.rig.time(PROG_BALANCER, pkt, self.args.packets)?;
                let want = if path == Path::Pass { XDP_PASS } else { XDP_TX };
                ensure!(
                    r.return_value == want,
                    "unexpected verdict {}",
                    r.return_value
                );
                r.duration.as_nanos() as f64
            };
            let after = self.snapshot(service)?;
            let n = u64::from(self.args.packets);
            let (fwd, new, pass) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
            match path {
                Path::Hit => ensure!(
                    fwd == n && new == 0,
                    "hit path: {fwd} forwarded, {new} new flows of {n}"
                ),
                Path::Miss => ensure!(
                    fwd == n && new == n,
                    "miss path: {fwd} forwarded, {new} new flows of {n}"
                ),
                Path::Pass => ensure!(pass == n, "pass path: {pass} passed of {n}"),
            }
            runs.push(ns);
        }
        Ok(median(runs))
    }

    /// (forwarded packets, new flows) of a service, and packets passed as "not a service".
    fn snapshot(&self, service: Option<u32>) -> anyhow::Result<(u64, u64, u64)> {
        let t = match service {
            Some(id) => self.rig.dp.service_traffic(id)?,
            None => Default::default(),
        };
        Ok((
            t.packets,
            t.new_flows,
            self.rig.counter(Counter::PassNotService)?,
        ))
    }
}

/// Times the baseline program on an IPv4 TCP packet, both styles.
fn baseline(args: &Args) -> anyhow::Result<(f64, f64)> {
    let mut ebpf = loader::load_aux(BASELINE_OBJECT, "failover-baseline", PROG_BASELINE)?;
    let mut targets: aya::maps::HashMap<_, u32, [u8; 8]> =
        aya::maps::HashMap::try_from(ebpf.map_mut(BASELINE_TARGETS).context("baseline map")?)?;
    targets.insert(
        u32::from_ne_bytes([198, 18, 0, 10]),
        [2, 0, 0, 0, 1, 1, 0, 0],
        0,
    )?;
    let pkt = packet("198.18.0.10".parse()?, 80, false);
    let prog = loader::xdp_mut(&mut ebpf, PROG_BASELINE)?;
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut rep = Vec::new();
    let mut single = Vec::new();
    for _ in 0..args.runs {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&pkt),
            repeat: args.packets,
            ..Default::default()
        })?;
        ensure!(r.return_value == XDP_TX, "baseline did not transmit");
        rep.push(r.duration.as_nanos() as f64);
        let mut total = 0u128;
        for _ in 0..args.packets {
            total += prog
                .test_run(TestRunOptions {
                    data_in: Some(&pkt),
                    repeat: 1,
                    ..Default::default()
                })?
                .duration
                .as_nanos();
        }
        single.push(total as f64 / f64::from(args.packets));
    }
    Ok((median(rep), median(single)))
}

/// Kernel memory of the balancer's maps for `cfg` (from each map's fdinfo `memlock`).
fn map_memory(cfg: &Config) -> anyhow::Result<BTreeMap<String, u64>> {
    let plan = layout::plan(cfg);
    let ebpf = loader::load_balancer(&plan.sizes, cfg.xdp_log_level)?;
    let mut out = BTreeMap::new();
    for (name, map) in ebpf.maps() {
        let info = map_info(map)?;
        let fd = info.fd()?;
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
        let memlock = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no memlock in fdinfo")?;
        out.insert(name.to_string(), memlock);
    }
    Ok(out)
}

fn map_info(map: &aya::maps::Map) -> anyhow::Result<aya::maps::MapInfo> {
    use aya::maps::Map::*;
    let data = match map {
        Array(d) | PerCpuArray(d) | HashMap(d) | LruHashMap(d) | RingBuf(d) | PerCpuHashMap(d)
        | PerCpuLruHashMap(d) | ProgramArray(d) | DevMap(d) | DevMapHash(d) => d,
        other => anyhow::bail!("unexpected map type {other:?}"),
    };
    Ok(data.info()?)
}

fn switch_times(names: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut text = String::from(
        "interface = \"lo\"\nflow_capacity = 1024\n[[service]]\nname = \"big\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n  [service.check]\n  type = \"none\"\n",
    );
    for (i, n) in names.iter().enumerate() {
        text += &format!(
            "  [[service.backend]]\n  name = \"{n}\"\n  address = \"198.19.0.{}\"\n",
            i + 1
        );
    }
    let mut rig = Rig::new(&text)?;
    let svc = rig.cfg.services[0].clone();
    let sl = rig.layout.services[0].clone();
    let mut times = Vec::new();
    for round in 0..101 {
        let gone = &names[round % names.len()];
        let new_flows: Vec<(&str, u32)> = names
            .iter()
            .filter(|n| *n != gone)
            .map(|n| (n.as_str(), 100))
            .collect();
        let existing = |b: &str| b != gone.as_str();
        let t = Instant::now();
        failover::program::apply_service(
            &mut rig.dp,
            &svc,
            &sl,
            &failover_tests::rig::backend_mac,
            &failover::program::Membership {
                new_flows,
                existing: &existing,
            },
        )?;
        times.push(t.elapsed().as_nanos() as f64);
    }
    Ok(times)
}

const GEN_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
const LB_MAC_LIVE: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {name}");
    Ok(i)
}

/// The generator: the baseline program in live-frames mode on `ifname`, its XDP_TX
/// pushing `count` copies of `pkt` out of the veth. Returns the seconds it took.
fn generate(ifname: &str, pkt: &[u8], count: u32) -> anyhow::Result<f64> {
    use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
    let mut ebpf = loader::load_aux(BASELINE_OBJECT, "failover-baseline", PROG_BASELINE)?;
    let mut targets: aya::maps::HashMap<_, u32, [u8; 8]> =
        aya::maps::HashMap::try_from(ebpf.map_mut(BASELINE_TARGETS).context("baseline map")?)?;
    let m = LB_MAC_LIVE;
    targets.insert(
        u32::from_ne_bytes([198, 18, 0, 10]),
        [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0],
        0,
    )?;
    let index = ifindex(ifname)?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let words = [0u32, pkt.len() as u32, 0, index, 0, 0];
    let ctx: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let prog = loader::xdp_mut(&mut ebpf, PROG_BASELINE)?;
    let t = Instant::now();
    prog.test_run(TestRunOptions {
        data_in: Some(pkt),
        ctx_in: Some(&ctx),
        repeat: count,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..Default::default()
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// Forwarded packets per second, load balancer and baseline, each attached in turn to the
/// receiving end of a veth pair and fed by the same generator (medians of 3 runs).
fn live_pps(args: &Args) -> anyhow::Result<(f64, f64)> {
    use failover_tests::lab::{Netns, run_in};
    let id = std::process::id() % 10_000;
    let (gen_ns, lb_ns) = (
        Netns::new(&format!("fo-bgen-{id}"))?,
        Netns::new(&format!("fo-blb-{id}"))?,
    );
    let (gen_if, lb_if) = (format!("fobg{id}"), format!("fobl{id}"));
    let ip = |a: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("ip").args(a).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip {}: {}",
            a.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    ip(&[
        "link",
        "add",
        &gen_if,
        "netns",
        gen_ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        &lb_if,
        "netns",
        lb_ns.name(),
    ])?;
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    ip(&[
        "-n",
        gen_ns.name(),
        "link",
        "set",
        &gen_if,
        "address",
        &mac(GEN_MAC),
        "up",
    ])?;
    ip(&[
        "-n",
        lb_ns.name(),
        "link",
        "set",
        &lb_if,
        "address",
        &mac(LB_MAC_LIVE),
        "up",
    ])?;
    let pkt = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(GEN_MAC, LB_MAC_LIVE)
            .ipv4([198, 18, 0, 2], [198, 18, 0, 10], 64)
            .tcp(40_000, 80, 1, 65535)
            .ack(1)
            .write(&mut v, &[0u8; 10])?;
        v
    };
    let count = (args.packets * 3).max(1_000_000);
    let config = format!(
        "interface = \"{lb_if}\"\nflow_capacity = 65536\n[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n  [service.check]\n  type = \"none\"\n  [[service.backend]]\n  name = \"gen\"\n  address = \"198.18.0.2\"\n"
    );
    let mut ours = Vec::new();
    {
        let lb_if2 = lb_if.clone();
        let mut rig = run_in(&lb_ns, move || -> anyhow::Result<Rig> {
            let cfg = Config::parse(&config, "live.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
            let plan = layout::plan(&cfg);
            let mut dp = failover::dataplane::Dataplane::new(loader::load_balancer(
                &plan.sizes,
                cfg.xdp_log_level,
            )?)?;
            failover::program::apply(&mut dp, &cfg, &plan, &|_| GEN_MAC, &|_, _| true)?;
            loader::attach(
                dp.ebpf_mut(),
                PROG_BALANCER,
                &lb_if2,
                loader::AttachMode::Native,
            )?;
            Ok(Rig {
                cfg,
                layout: plan,
                dp,
            })
        })?;
        for _ in 0..3 {
            let before = rig.dp.service_traffic(0)?.packets;
            let secs = run_in(&gen_ns, || generate(&gen_if, &pkt, count))?;
            std::thread::sleep(std::time::Duration::from_millis(100));
            ours.push((rig.dp.service_traffic(0)?.packets - before) as f64 / secs);
        }
        let _ = &mut rig;
    }
    let mut base = Vec::new();
    {
        let lb_if2 = lb_if.clone();
        let mut ebpf = run_in(&lb_ns, move || -> anyhow::Result<aya::Ebpf> {
            let mut ebpf = loader::load_aux(BASELINE_OBJECT, "failover-baseline", PROG_BASELINE)?;
            let mut t: aya::maps::HashMap<_, u32, [u8; 8]> = aya::maps::HashMap::try_from(
                ebpf.map_mut(BASELINE_TARGETS).context("baseline map")?,
            )?;
            let m = GEN_MAC;
            t.insert(
                u32::from_ne_bytes([198, 18, 0, 10]),
                [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0],
                0,
            )?;
            loader::attach(
                &mut ebpf,
                PROG_BASELINE,
                &lb_if2,
                loader::AttachMode::Native,
            )?;
            Ok(ebpf)
        })?;
        let sent = |ebpf: &aya::Ebpf| -> anyhow::Result<u64> {
            let a: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
                ebpf.map(BASELINE_SENT).context("baseline counter")?,
            )?;
            Ok(a.get(&0, 0)?.iter().sum())
        };
        for _ in 0..3 {
            let before = sent(&ebpf)?;
            let secs = run_in(&gen_ns, || generate(&gen_if, &pkt, count))?;
            std::thread::sleep(std::time::Duration::from_millis(100));
            base.push((sent(&ebpf)? - before) as f64 / secs);
        }
        let _ = &mut ebpf;
    }
    Ok((median(ours), median(base)))
}

fn big_config() -> String {
    let mut s = String::from("interface = \"lo\"\nflow_capacity = 1048576\n");
    for svc in 0..100 {
        s += &format!(
            "[[service]]\nname = \"s{svc}\"\nvip = \"198.18.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n  [service.check]\n  type = \"none\"\n",
            100 + svc / 200,
            1 + svc % 200
        );
        for b in 0..100 {
            s += &format!(
                "  [[service.backend]]\n  name = \"b{b}\"\n  address = \"198.19.{svc}.{}\"\n",
                b + 1
            );
        }
    }
    s
}

/// The health-check bench: checks per second, the daemon's CPU share and memory, with
/// connecting checks and with half-open ones.
fn checks(args: &Args, summary: &mut BTreeMap<String, f64>) -> anyhow::Result<()> {
    let modes: &[bool] = if args.check_half_open {
        &[true]
    } else {
        &[false, true]
    };
    for &half_open in modes {
        let opts = checks_bench::Options {
            services: args.check_services,
            backends_per_service: args.check_backends,
            runs: args.runs.min(5),
            interval: args.check_interval,
            half_open,
            ..Default::default()
        };
        println!(
            "\nhealth checks{}: {} backends ({} services x {}), tcp every {:?}, {} windows of {:?}",
            if half_open {
                ", half-open"
            } else {
                ", connecting"
            },
            opts.backends(),
            opts.services,
            opts.backends_per_service,
            opts.interval,
            opts.runs,
            opts.window
        );
        let figures = checks_bench::run(&opts, &mut |line| println!("  {line}"))?;
        let m = &figures.median;
        println!(
            "health checks{}, medians: {:.0} checks/s of {:.0} asked; daemon CPU {:.1}% of one core{} (target < 10%; {:.1}% in user space, \
             the rest in the kernel) plus {:.1}% in processes it ran (all windows); machine {:.2} cores busy; RSS {:.1} MiB \
             (target < 64; anon {:.1}, file {:.1}, shmem {:.1}); forwarding {:.1} s after start",
            if half_open {
                " (half-open)"
            } else {
                " (connecting)"
            },
            m.checks_per_s,
            figures.expected_per_s,
            m.cpu_share * 100.0,
            if figures.pinned {
                " (pinned; backends' side on another)"
            } else {
                ""
            },
            m.user_cpu_share * 100.0,
            figures.children_cpu_share * 100.0,
            m.system_cpu_cores,
            m.rss_mib,
            m.rss_anon_mib,
            m.rss_file_mib,
            m.rss_shmem_mib,
            figures.startup_s
        );
        for (message, count) in &figures.warnings {
            println!("  daemon: {count} x {message}");
        }
        // The summary holds the figures of the case: 1 s.
        if opts.interval == std::time::Duration::from_secs(1) {
            for (key, value) in figures.summary() {
                summary.insert(key, value);
            }
        }
    }
    Ok(())
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    failover::config::parse_duration(text).map_err(|e| e.to_string())
}

fn write_summary(out: &std::path::Path, summary: &BTreeMap<String, f64>) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(summary)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.only_checks {
        // Keep the figures of the last full run.
        let mut summary: BTreeMap<String, f64> = std::fs::read_to_string(&args.out)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        checks(&args, &mut summary)?;
        return write_summary(&args.out, &summary);
    }
    let mut summary: BTreeMap<String, f64> = BTreeMap::new();
    println!(
        "failover bench: {} runs x {} packets per figure, medians",
        args.runs, args.packets
    );

    let (floor, floor_single) = baseline(&args)?;
    summary.insert("floor_ns".into(), floor);
    summary.insert("single_floor_ns".into(), floor_single);
    println!(
        "\nbaseline (parse Eth/IPv4/TCP + 1 hash lookup + XDP_TX): repeat {floor:.1} ns, single {floor_single:.1} ns"
    );

    let cfg_text = config();
    let rig = Rig::new(&cfg_text)?;
    let mut bench = Bench { rig, args };
    println!(
        "\n{:<8} {:<5} {:<5} {:>9} {:>7} {:>10} {:>7}",
        "mode", "ip", "path", "repeat ns", "ratio", "single ns", "ratio"
    );
    for (mode, fam, vip) in [
        ("dsr", "ipv4", "198.18.0.10"),
        ("dsr", "ipv6", "2001:db8:0:1::10"),
        ("tunnel", "ipv4", "198.18.0.11"),
        ("tunnel", "ipv6", "2001:db8:0:1::11"),
        ("nat", "ipv4", "198.18.0.12"),
        ("nat", "ipv6", "2001:db8:0:1::12"),
    ] {
        let vip: IpAddr = vip.parse()?;
        let id = bench
            .rig
            .layout
            .service(&format!("{mode}-{fam}"))
            .context("service")?
            .entry
            .id;
        let syn = packet(vip, 80, true);
        let ack = packet(vip, 80, false);
        let other = packet(vip, 81, false);
        // Establish the flow so the ACK hits the connection table.
        bench.rig.run(&syn)?;
        for (path, pkt, kind) in [
            ("hit", &ack, Path::Hit),
            ("miss", &syn, Path::Miss),
            ("pass", &other, Path::Pass),
        ] {
            let svc = if kind == Path::Pass { None } else { Some(id) };
            // Rewriting modes cannot be repeated on one buffer: only the single style.
            let rep = if mode == "dsr" || kind == Path::Pass {
                Some(bench.time(svc, pkt, kind, false)?)
            } else {
                None
            };
            let single = bench.time(svc, pkt, kind, true)?;
            let key = format!("{mode}_{fam}_{path}");
            if let Some(r) = rep {
                summary.insert(format!("{key}_ns"), r);
                summary.insert(format!("{key}_ratio"), r / floor);
            }
            summary.insert(format!("single_{key}_ns"), single);
            summary.insert(format!("single_{key}_ratio"), single / floor_single);
            println!(
                "{mode:<8} {fam:<5} {path:<5} {:>9} {:>7} {single:>10.1} {:>7.2}",
                rep.map_or("-".into(), |r| format!("{r:.1}")),
                rep.map_or("-".into(), |r| format!("{:.2}", r / floor)),
                single / floor_single
            );
        }
    }
    for (k, src) in [
        ("hit_ns", "dsr_ipv4_hit_ns"),
        ("miss_ns", "dsr_ipv4_miss_ns"),
        ("pass_ns", "dsr_ipv4_pass_ns"),
    ] {
        let v = summary[src];
        summary.insert(k.into(), v);
    }
    summary.insert("hit_ratio".into(), summary["hit_ns"] / floor);
    println!(
        "\nIPv4 TCP dsr: hit {:.1} ns ({:.2}x baseline; target <= 2.0), miss {:.1} ns, pass {:.1} ns",
        summary["hit_ns"], summary["hit_ratio"], summary["miss_ns"], summary["pass_ns"]
    );

    // Maglev generation: 100 backends, 65537 slots.
    let names: Vec<String> = (0..100).map(|i| format!("backend-{i}")).collect();
    let backends: Vec<MaglevBackend<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| MaglevBackend {
            key: n,
            id: i as u32,
            weight: 100,
        })
        .collect();
    let mut builds = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let table = build_table(&backends, 65_537)?;
        builds.push(t.elapsed().as_nanos() as f64);
        ensure!(table.len() == 65_537);
    }
    let maglev = median(builds);
    summary.insert("maglev_100x65537_ns".into(), maglev);
    println!(
        "Maglev table, 100 backends x 65537 slots: {:.3} ms (median of 21)",
        maglev / 1e6
    );

    // Verdict to switched map: one service with 100 backends on 65537 slots; one backend
    // leaves or returns, the table is rebuilt into the inactive half and flipped in.
    let mut switches = switch_times(&names)?;
    switches.sort_by(f64::total_cmp);
    let switch = switches[switches.len() / 2];
    let p99 = switches[(switches.len() * 99).div_ceil(100) - 1];
    summary.insert("switch_100x65537_ns".into(), switch);
    summary.insert("verdict_to_map_us_p50".into(), switch / 1e3);
    summary.insert("verdict_to_map_us_p99".into(), p99 / 1e3);
    summary.insert("maglev_gen_ms".into(), maglev / 1e6);
    println!(
        "verdict to switched map: p50 {:.0} us, p99 {:.0} us ({} switches)",
        switch / 1e3,
        p99 / 1e3,
        switches.len()
    );
    println!(
        "map switch (one backend of 100 changes, 65537 slots: Maglev + write + flip): {:.3} ms (median of 101)",
        switch / 1e6
    );

    // Live traffic: 64-byte frames pushed through a veth into the attached program.
    match live_pps(&bench.args) {
        Ok((ours, base)) => {
            summary.insert("live_pps".into(), ours);
            summary.insert("live_baseline_pps".into(), base);
            summary.insert("live_ratio".into(), ours / base);
            println!(
                "live frames through a veth (one generator core): load balancer {:.2} Mpps forwarded, baseline {:.2} Mpps ({:.2}x)",
                ours / 1e6,
                base / 1e6,
                ours / base
            );
        }
        Err(e) => anyhow::bail!("live-frames bench failed: {e:#}"),
    }

    // Memory, sized from the config.
    for (label, text) in [
        (
            "example",
            include_str!("../../../examples/failover.toml").to_string(),
        ),
        ("100x100", big_config()),
    ] {
        let cfg =
            Config::parse(&text, format!("{label}.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mem = map_memory(&cfg)?;
        let total: u64 = mem.values().sum();
        println!(
            "\nmap memory, {label} config ({} services, flow capacity {}): {:.1} MiB",
            cfg.services.len(),
            cfg.flow_capacity,
            total as f64 / 1048576.0
        );
        for (name, bytes) in &mem {
            println!("  {name:<16} {:>10.1} KiB", *bytes as f64 / 1024.0);
            summary.insert(format!("mem_{label}_{name}_bytes"), *bytes as f64);
        }
        summary.insert(format!("mem_{label}_bytes"), total as f64);
    }

    if !bench.args.skip_checks {
        checks(&bench.args, &mut summary)?;
    }
    write_summary(&bench.args.out, &summary)
}
