//! `cargo xtask setup`: installs everything a fresh machine lacks, idempotently.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the project's own tools go (`FAILOVER_TOOLS`, default `~/.local/share/failover`);
/// `failover-userspace/build.rs` looks there for bpf-linker.
pub fn tools_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = env::var_os("FAILOVER_TOOLS") {
        return Ok(PathBuf::from(d));
    }
    let home = env::var_os("HOME").context("HOME is not set; set FAILOVER_TOOLS")?;
    Ok(PathBuf::from(home).join(".local/share/failover"))
}

/// Runs a command, failing with its command line if it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions.
    unsafe { geteuid() == 0 }
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    println!("setup: rust-src for the nightly toolchain (for -Z build-std=core)");
    run_cmd(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context(
        "the eBPF crate builds with nightly; install it with `rustup toolchain install nightly`",
    )?;
    bpf_linker()?;
    cargo_deb()?;
    println!("setup: done");
    Ok(())
}

/// iproute2 for the namespace lab and the daemon's neighbour lookups, systemd-analyze (the lab turns
/// checksum offload off through the kernel's ethtool ioctl: no ethtool package needed).
fn debian_packages() -> anyhow::Result<()> {
    let wanted = [
        ("ip", "-V", "iproute2"),
        // The test of the shipped unit file runs `systemd-analyze verify`.
        ("systemd-analyze", "--version", "systemd"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(prog, arg, _)| !have(prog, arg))
        .map(|(_, _, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: apt-get install {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed (run as root)")?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// bpf-linker, built against the LLVM inside the nightly toolchain (no prebuilt binary
/// can be downloaded here).
/// cargo-deb, for `cargo xtask deb` (the Debian package; `cargo xtask test` checks it).
fn cargo_deb() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        println!("setup: cargo-deb present");
        return Ok(());
    }
    println!("setup: cargo install cargo-deb");
    run_cmd(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))
        .context("installing cargo-deb failed")
}

fn bpf_linker() -> anyhow::Result<()> {
    let tools = tools_dir()?;
    let root = tools.join("bpf-linker");
    let bin = root.join("bin/bpf-linker");
    if have(bin.to_str().context("non-UTF-8 path")?, "--version") {
        println!("setup: bpf-linker present at {}", bin.display());
        return Ok(());
    }
    let sysroot = String::from_utf8(
        Command::new("rustc")
            .args(["+nightly", "--print", "sysroot"])
            .output()?
            .stdout,
    )?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", libdir.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("LLVM version")?
        .to_string();
    let prefix = tools.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&llvm), &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker against the nightly toolchain's LLVM {major} (about a minute)"
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )
}
