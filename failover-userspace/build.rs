//! Builds the XDP programs (the `failover-ebpf` crate) for the BPF target and leaves the
//! objects in `OUT_DIR`, where `loader.rs` embeds them.

use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The eBPF binaries `failover-ebpf` produces (its `[[bin]]` names).
const OBJECTS: [&str; 3] = ["failover-xdp", "failover-decap", "failover-baseline"];

fn main() -> anyhow::Result<()> {
    // `cargo xtask setup` installs bpf-linker here; put it on PATH for the nested build so a
    // plain `cargo build` works after setup without touching the shell's PATH.
    let tools = env::var_os("FAILOVER_TOOLS")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/failover")))
        .context("neither FAILOVER_TOOLS nor HOME is set")?;
    println!("cargo:rerun-if-env-changed=FAILOVER_TOOLS");
    let linker_dir = tools.join("bpf-linker/bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![linker_dir.clone()];
    dirs.extend(env::split_paths(&path));
    let joined = env::join_paths(dirs).context("PATH")?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", joined) };

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !skip
        && !linker_dir.join("bpf-linker").exists()
        && std::process::Command::new("bpf-linker")
            .arg("--version")
            .output()
            .is_err()
    {
        return Err(anyhow!(
            "bpf-linker not found (looked in {} and PATH): run `cargo xtask setup` first",
            linker_dir.display()
        ));
    }

    let ebpf = cargo_metadata_root()?.join("failover-ebpf");
    let ebpf = ebpf.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "failover-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        Toolchain::default(),
    )?;
    if skip {
        // Unit tests and clippy can run without the BPF toolchain; the loader refuses an
        // empty object at run time with a message saying so.
        let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
        for name in OBJECTS {
            let p = out.join(name);
            if !p.exists() {
                std::fs::write(&p, b"").context("placeholder object")?;
            }
        }
    }
    Ok(())
}

fn cargo_metadata_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    manifest
        .parent()
        .map(PathBuf::from)
        .context("workspace root")
}
