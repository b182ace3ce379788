//! `cargo xtask bench` and `cargo xtask demo`: build and run the bench and demo binaries
//! (`fo-bench`, `fo-demo`, in the tests crate, so xtask itself needs no BPF toolchain).

use std::process::Command;

use crate::setup::run_cmd;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The health-check section runs the release daemon next to fo-bench: build it fresh.
    run_cmd(Command::new(&cargo).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "failover-userspace",
        "--bin",
        "failover",
    ]))?;
    run_cmd(
        Command::new(cargo)
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "failover-tests",
                "--bin",
                "fo-bench",
                "--",
            ])
            .args(args),
    )
}

/// Builds the daemon and the lab's binaries (servers, demo, drills).
pub fn build_bins() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(Command::new(cargo).args([
        "build",
        "--quiet",
        "-p",
        "failover-userspace",
        "-p",
        "failover-tests",
        "--bins",
    ]))
}

/// `cargo xtask demo`: builds the daemon and the lab's servers, then runs the demo.
pub fn demo() -> anyhow::Result<()> {
    build_bins()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(Command::new(cargo).args([
        "run",
        "--quiet",
        "-p",
        "failover-tests",
        "--bin",
        "fo-demo",
    ]))
}
