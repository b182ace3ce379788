//! The real `failover` daemon, run inside a lab namespace by a guard that stops it on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::lab::Netns;

/// The `failover` binary cargo built next to the running test (`$FAILOVER_BIN` overrides).
pub fn failover_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FAILOVER_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("failover"))
        .find(|c| c.is_file())
        .with_context(|| {
            format!(
                "the failover binary is not built near {}: run `cargo build -p failover-userspace` \
                 (cargo xtask test does), or set FAILOVER_BIN",
                exe.display()
            )
        })
}

/// A bpffs for the tests' pins. `ip netns exec` gives the daemon a private mount
/// namespace with a fresh /sys, so pins under /sys/fs/bpf would vanish with the process;
/// this mount, made in the test's own mount namespace under /run, is shared with it.
pub fn test_bpffs() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from("/run/failover-test-bpf");
    std::fs::create_dir_all(&dir)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new("/run/failover-test-bpf")?;
    // SAFETY: a valid C string and a zeroed statfs for the kernel to fill.
    let mounted =
        unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type == libc::BPF_FS_MAGIC;
    if !mounted {
        let bpf = std::ffi::CString::new("bpf")?;
        // SAFETY: valid C strings; mounts a bpffs instance.
        let rc =
            unsafe { libc::mount(bpf.as_ptr(), c.as_ptr(), bpf.as_ptr(), 0, std::ptr::null()) };
        anyhow::ensure!(
            rc == 0,
            "mounting bpffs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(dir)
}

/// A running daemon; its log lines are collected, and it is stopped on drop.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
    _config: tempfile_path::TempPath,
    /// The bpffs directory its maps and link are pinned in (one per lab).
    pub pin_dir: PathBuf,
    /// Whether dropping this guard removes the pins (and so detaches the program).
    remove_pins: bool,
}

mod tempfile_path {
    //! A config file that is deleted on drop.
    use std::path::PathBuf;

    /// A file path removed on drop.
    pub struct TempPath(pub PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Daemon {
    /// Writes `config` to a file and starts `failover run` in `ns`; waits (bounded) until it
    /// logs that it is forwarding.
    pub fn start(ns: &Netns, config: &str) -> anyhow::Result<Self> {
        Self::start_with_env(ns, config, &[])
    }

    /// [`Daemon::start`], with extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_with_env(ns: &Netns, config: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{}-failover.toml", ns.name()));
        // Every lab pins in a directory of its own, removed with the guard.
        let pin_dir = test_bpffs()?.join(ns.name());
        write_config(&path, &pin_dir, config)?;
        let config_path = tempfile_path::TempPath(path.clone());
        let mut child = ns
            .exec(
                failover_binary()?,
                ["run", "--config", path.to_str().context("path")?],
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting failover run")?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut d = Self {
            child,
            lines,
            log: Vec::new(),
            _config: config_path,
            pin_dir,
            remove_pins: true,
        };
        d.wait_for("forwarding interface=", Duration::from_secs(15))?;
        Ok(d)
    }

    /// Waits until a log line contains `needle`; fails with the log if the daemon exits or
    /// the time runs out.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        self.wait_for_all(&[needle], limit)
    }

    /// Waits until one log line contains every one of `needles`.
    pub fn wait_for_all(&mut self, needles: &[&str], limit: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if needles.iter().all(|n| line.contains(n)) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the daemon exited before logging {needles:?}; its log:\n{}",
                        self.log.join("\n")
                    )
                }
            }
            if let Some(status) = self.child.try_wait()? {
                self.drain();
                bail!(
                    "the daemon exited ({status}) before logging {needles:?}; its log:\n{}",
                    self.log.join("\n")
                );
            }
            if left.is_zero() {
                bail!(
                    "the daemon did not log {needles:?} within {limit:?}; its log:\n{}",
                    self.log.join("\n")
                );
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
            self.log.push(line);
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Some(s) = self.child.try_wait()? {
                self.drain();
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("the daemon did not exit within 5 s of SIGTERM")
    }
}

/// Writes `config` to `path`, pinning in `pin_dir` unless the config names its own.
fn write_config(
    path: &std::path::Path,
    pin_dir: &std::path::Path,
    config: &str,
) -> anyhow::Result<()> {
    let config = if config.contains("pin_dir") {
        config.to_owned()
    } else {
        format!("pin_dir = \"{}\"\n{config}", pin_dir.display())
    };
    std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
}

impl Daemon {
    /// Replaces the daemon's config file (keeping its pin directory), for a reload.
    pub fn rewrite_config(&self, config: &str) -> anyhow::Result<()> {
        write_config(self.config_path(), &self.pin_dir, config)
    }

    /// The config file the daemon runs with (rewrite it, then reload).
    pub fn config_path(&self) -> &std::path::Path {
        &self._config.0
    }

    /// Kills the daemon with SIGKILL (a crash) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
    }

    /// Leaves the pinned program and maps in place when this guard drops (for a test of
    /// restarts: the next daemon adopts them, and its guard removes them).
    pub fn keep_pins(&mut self) {
        self.remove_pins = false;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
        if self.remove_pins {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}
