//! `cargo xtask demo`: the product working, in about a minute, leaving nothing behind.
//!
//! Builds a namespace lab (client, load balancer, three backends running real servers),
//! runs the real daemon with `examples/demo.toml`, sends traffic through the VIP, crashes
//! a backend (kill -9) while traffic flows, shows the traffic moving and the measured
//! failover time, brings the backend back and shows the failback. Every namespace and
//! process is removed on exit, also on Ctrl-C or failure (guards).

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use failover_tests::{
    daemon::{Daemon, failover_binary},
    lab::{Lab, Listen, Server, Tally, client, traffic::Stream},
    xdp,
};

const VIP: &str = "198.18.0.10:80";

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn status(config: &std::path::Path) {
    let out = Command::new(failover_binary().expect("failover binary"))
        .args(["status", "--config"])
        .arg(config)
        .output();
    match out {
        Ok(o) => {
            print!("{}", String::from_utf8_lossy(&o.stdout));
            eprint!("{}", String::from_utf8_lossy(&o.stderr));
        }
        Err(e) => println!("(failover status: {e})"),
    }
}

fn spread(what: &str, replies: &[client::Reply]) {
    let t = Tally::of(replies);
    println!(
        "{what}: {} connections -> {:?}, {} failed",
        replies.len(),
        t.by_backend,
        t.errors.len()
    );
}

fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the demo builds network namespaces: run it as root"
    );
    let started = Instant::now();
    let template = include_str!("../../../examples/demo.toml");

    step("building the lab: client, load balancer, 3 backends (network namespaces on a bridge)");
    let lab = Lab::new(3)?;
    let _pass = xdp::pass_on_lb_peer(&lab)?;
    let mut servers: Vec<Server> = lab
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Server::start(
                b.ns(),
                &format!("web-{}", i + 1),
                &[Listen::Tcp("0.0.0.0:80".parse().unwrap())],
            )
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "lab {}: load balancer on {}, backends 198.18.0.101-103 running a TCP server",
        lab.prefix(),
        lab.lb_if()
    );

    step("starting the daemon: failover run --config examples/demo.toml");
    let config = template.replace(
        "interface = \"fo-lb0\"",
        &format!("interface = \"{}\"", lab.lb_if()),
    );
    let mut daemon = Daemon::start(lab.lb().ns(), &config)?;
    let config_path = std::env::temp_dir().join(format!("{}-failover.toml", lab.lb().ns().name()));
    println!("XDP attached, tables written after the first health verdicts");
    status(&config_path);

    let vip: SocketAddr = VIP.parse()?;
    step("1000 connections to the VIP 198.18.0.10:80, spread by Maglev over the three backends");
    spread(
        "traffic",
        &client::tcp_requests(lab.client().ns(), vip, 1000, Duration::from_secs(2), 32),
    );

    step("crashing web-2 (kill -9) while 100 new connections per second flow");
    let stream = Stream::start(lab.client().ns(), vip, 100, 300, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1000));
    let killed = Instant::now();
    servers[1].kill9();
    let line = daemon.wait_for_all(&["backend=web-2", "to=down"], Duration::from_secs(5))?;
    let detected = killed.elapsed();
    let published = daemon.wait_for_all(
        &["selection published", "service=web"],
        Duration::from_secs(5),
    )?;
    let attempts = stream.join();
    let failed: Vec<_> = attempts.iter().filter(|a| a.reply.is_err()).collect();
    let after: Vec<_> = attempts
        .iter()
        .filter(|a| a.started > killed + detected)
        .collect();
    println!(
        "daemon: {}",
        line.split("INFO").last().unwrap_or(&line).trim()
    );
    println!(
        "daemon: {}",
        published.split("INFO").last().unwrap_or(&published).trim()
    );
    println!(
        "failover: web-2 out of the table {:.0} ms after the crash; {} of {} new connections failed (those sent to web-2 before detection)",
        detected.as_secs_f64() * 1000.0,
        failed.len(),
        attempts.len()
    );
    let t = Tally::of(&after.iter().map(|a| a.reply.clone()).collect::<Vec<_>>());
    println!(
        "connections started after detection: {:?}, {} failed",
        t.by_backend,
        t.errors.len()
    );
    status(&config_path);

    step("bringing web-2 back: it must pass 2 checks (rise), then it takes new flows again");
    let back = Instant::now();
    servers[1].restart()?;
    daemon.wait_for_all(&["backend=web-2", "to=up"], Duration::from_secs(5))?;
    daemon.wait_for_all(
        &["selection published", "web-2:100"],
        Duration::from_secs(5),
    )?;
    println!(
        "failback: web-2 serving again {:.0} ms after its restart",
        back.elapsed().as_secs_f64() * 1000.0
    );
    spread(
        "traffic",
        &client::tcp_requests(lab.client().ns(), vip, 600, Duration::from_secs(2), 32),
    );
    status(&config_path);

    step("tearing down");
    daemon.stop().context("stopping the daemon")?;
    drop(servers);
    drop(lab);
    println!(
        "done in {:.1} s; no namespace, process or XDP program left behind",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
