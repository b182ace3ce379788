//! `cargo xtask deb`: the Debian package, built with cargo-deb (`cargo xtask setup`
//! installs it). It holds the `failover` binary (/usr/bin), the systemd unit
//! (/lib/systemd/system, its paths pointed at /usr/bin) and the example config
//! (/etc/failover/failover.toml, a conffile); see `[package.metadata.deb]` in
//! failover-userspace/Cargo.toml.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::setup::run_cmd;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// The package cargo-deb writes, under `target/debian/`.
pub fn package_dir() -> PathBuf {
    root().join("target/debian")
}

/// Builds the package; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    let root = root();
    if !Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!(
            "cargo-deb is missing: run `cargo xtask setup` (or `cargo install cargo-deb --locked`)"
        );
    }
    // The unit in the repository starts /usr/local/bin/failover (a hand install); the
    // package installs to /usr/bin.
    let unit = std::fs::read_to_string(root.join("examples/failover.service"))
        .context("reading examples/failover.service")?;
    let assets = root.join("target/deb-assets");
    std::fs::create_dir_all(&assets)?;
    std::fs::write(
        assets.join("failover.service"),
        unit.replace("/usr/local/bin/failover", "/usr/bin/failover"),
    )?;
    let out = package_dir();
    let _ = std::fs::remove_dir_all(&out);
    println!("deb: cargo deb -p failover-userspace");
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["deb", "-p", "failover-userspace", "--output"])
            .arg(&out),
    )?;
    let deb = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb wrote no .deb")?;
    println!("deb: {}", deb.display());
    Ok(deb)
}
