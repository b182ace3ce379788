//! `cargo xtask test`: every test, in three tiers: unit tests (no privileges), packet tests
//! (BPF_PROG_TEST_RUN on the real object) and end-to-end tests in network namespaces.
//! The last two need root; without it they fail loudly, never skip.

use std::process::Command;

use anyhow::bail;

use crate::setup::run_cmd;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run(no_lint: bool, filter: Option<&str>) -> anyhow::Result<()> {
    if !no_lint {
        println!("test: cargo fmt --check");
        run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
        println!("test: cargo clippy");
        run_cmd(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        println!("test: cargo clippy (eBPF crate, BPF target)");
        let tools = crate::setup::tools_dir()?.join("bpf-linker/bin");
        let path = std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))?;
        run_cmd(
            Command::new("cargo")
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../failover-ebpf"))
                .args([
                    "+nightly",
                    "clippy",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core", "--", "-D", "warnings"])
                .env("PATH", path)
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER"),
        )?;
    }
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "failover-tests",
        "--exclude",
        "failover-ebpf",
    ]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    println!("test: unit tests");
    run_cmd(&mut unit)?;
    if !crate::setup::is_root() {
        bail!(
            "packet and end-to-end tests load BPF programs and create network namespaces: run `cargo xtask test` as root (sudo -E)"
        );
    }
    // The end-to-end tests run the real `failover` binary and the lab's servers.
    crate::bench::build_bins()?;
    // The package test inspects the .deb this builds.
    crate::deb::run()?;
    // Namespace tests share the host's network stack: one at a time.
    let mut e2e = cargo();
    e2e.args(["test", "-p", "failover-tests"]);
    if let Some(f) = filter {
        e2e.arg(f);
    }
    e2e.args(["--", "--test-threads=1"]);
    println!("test: packet and end-to-end tests");
    run_cmd(&mut e2e)
}
