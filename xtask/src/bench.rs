//! `cargo xtask bench`: builds and runs the bench binary (`fo-bench`, in the tests crate,
//! so xtask itself needs no BPF toolchain) in release mode, as root.

use std::process::Command;

use crate::setup::run_cmd;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
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
