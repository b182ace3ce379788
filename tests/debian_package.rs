//! The Debian package (`cargo xtask deb`, which `cargo xtask test` runs first) installs the
//! three things an operator needs: the binary, the systemd unit and the example config as
//! a conffile; the packaged unit starts the packaged binary, and that binary accepts the
//! packaged config.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: build it with `cargo xtask deb` (cargo xtask test does; needs cargo-deb, which `cargo xtask setup` installs)",
                dir.display()
            )
        })
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("dpkg-deb is needed (apt-get install dpkg): {e}"));
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn package_installs_binary_unit_and_config() {
    let deb = package();
    let deb = deb.to_str().unwrap();
    assert_eq!(dpkg_deb(&["-f", deb, "Package"]).trim(), "failover");
    let tmp = std::env::temp_dir().join(format!("fo-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    let control = tmp.join("control");
    std::fs::create_dir_all(&tmp).unwrap();
    dpkg_deb(&["-x", deb, root.to_str().unwrap()]);
    dpkg_deb(&["-e", deb, control.to_str().unwrap()]);

    let binary = root.join("usr/bin/failover");
    let unit = root.join("lib/systemd/system/failover.service");
    let config = root.join("etc/failover/failover.toml");
    for f in [&binary, &unit, &config] {
        assert!(f.is_file(), "the package lacks {}", f.display());
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/failover/failover.toml"),
        "the config is a conffile (kept on upgrade): {conffiles:?}"
    );
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/failover run --config /etc/failover/failover.toml"),
        "the unit starts the packaged binary with the packaged config:\n{unit_text}"
    );

    let check = Command::new(&binary)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run the packaged binary");
    assert!(
        check.status.success(),
        "the packaged binary rejects the packaged config: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let local_unit = tmp.join("failover.service");
    std::fs::write(
        &local_unit,
        unit_text.replace("/usr/bin/failover", binary.to_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local_unit)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (apt-get install systemd): {e}"));
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
