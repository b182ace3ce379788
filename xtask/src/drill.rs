//! `cargo xtask drill [SCENARIO...]`: builds the daemon and the lab's binaries, runs the
//! failover drills (`fo-drill`, in the tests crate, like the demo and the bench), and says
//! where the report and the timeline pictures are. Needs root.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Where the report and pictures go.
fn out_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/drill"))
}

pub fn run(scenarios: &[String]) -> anyhow::Result<()> {
    if !crate::setup::is_root() {
        bail!(
            "drills build network namespaces and load XDP programs: run `cargo xtask drill` as root (sudo -E)"
        );
    }
    println!("drill: building the daemon and the lab's binaries");
    crate::bench::build_bins()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out.canonicalize().unwrap_or(out);
    let mut drill = Command::new(cargo);
    drill
        .args([
            "run",
            "--quiet",
            "-p",
            "failover-tests",
            "--bin",
            "fo-drill",
            "--",
            "--out",
        ])
        .arg(&out)
        .args(scenarios);
    // Ctrl-C reaches fo-drill too: wait while it tears its lab down, then report.
    let status = with_sigint_ignored(|| drill.status()).context("could not start fo-drill")?;
    let written = || {
        println!(
            "drill: report in {0}/report.txt and report.json, timelines in {0}/<scenario>.svg",
            out.display()
        );
    };
    // fo-drill: 0 every drill passed, 1 some failed (the report says which), 130
    // interrupted, anything else: it could not run.
    match status.code() {
        Some(0) => {
            written();
            Ok(())
        }
        Some(1) => {
            written();
            bail!("some drills failed: see the report above")
        }
        Some(130) => bail!("interrupted; the drill's lab was torn down"),
        _ => bail!("fo-drill could not run ({status}): see its message above"),
    }
}

/// Runs `f` with SIGINT ignored in this process; the child installs its own handler.
fn with_sigint_ignored<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: signal(2) with SIG_IGN/SIG_DFL installs no code of ours.
    unsafe { signal(SIGINT, SIG_IGN) };
    let out = f();
    // SAFETY: as above.
    unsafe { signal(SIGINT, SIG_DFL) };
    out
}

const SIGINT: i32 = 2;
const SIG_DFL: usize = 0;
const SIG_IGN: usize = 1;

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}
