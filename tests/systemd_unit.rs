//! The shipped systemd unit (`examples/failover.service`) passes `systemd-analyze verify`,
//! with its binary path pointed at the freshly built `failover`.

use std::process::Command;

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = include_str!("../examples/failover.service");
    let binary = failover_tests::daemon::failover_binary().expect("the failover binary");
    let dir = std::env::temp_dir().join(format!("fo-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("failover.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/failover", binary.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|e| {
        panic!("systemd-analyze is needed to check the unit file: {e} (install it: apt-get install systemd)")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("failover.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about the unit: {ours:?}"
    );
}
