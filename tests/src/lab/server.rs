//! A guard for a `fo-echo` test server running inside a namespace: started, waited for,
//! crashed, restarted, and killed on drop.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::netns::Netns;

/// How long a server may take to bind its sockets and print "ready".
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// One socket for `fo-echo` to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// A TCP listener: each line is answered with `"{name} {line}\n"`.
    Tcp(SocketAddr),
    /// A UDP socket: each datagram is answered with `"{name} {datagram}"`, sent from the
    /// address the datagram was sent to (so direct-server-return replies come from the VIP).
    Udp(SocketAddr),
    /// An HTTP endpoint answering every request with this status (for HTTP checks).
    Http(SocketAddr, u16),
}

impl Listen {
    /// TCP and UDP on `port` of every address, IPv4 and IPv6: what a backend usually serves.
    pub fn all(port: u16) -> Vec<Listen> {
        let v4 = SocketAddr::from(([0, 0, 0, 0], port));
        let v6 = SocketAddr::from(([0u16; 8], port));
        vec![
            Listen::Tcp(v4),
            Listen::Tcp(v6),
            Listen::Udp(v4),
            Listen::Udp(v6),
        ]
    }

    fn args(self) -> [String; 2] {
        match self {
            Listen::Tcp(addr) => ["--tcp".into(), addr.to_string()],
            Listen::Udp(addr) => ["--udp".into(), addr.to_string()],
            Listen::Http(addr, status) => ["--http".into(), format!("{addr}={status}")],
        }
    }
}

/// A `fo-echo` process inside a namespace. Dropping the guard kills the process.
#[derive(Debug)]
pub struct Server {
    netns: String,
    name: String,
    listen: Vec<Listen>,
    binary: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `fo-echo --name NAME` serving `listen` inside `ns` and waits (at most 5 s) until
    /// it has bound every socket. The binary is found by [`echo_binary`].
    pub fn start(ns: &Netns, name: &str, listen: &[Listen]) -> anyhow::Result<Self> {
        let mut server = Server {
            netns: ns.name().to_owned(),
            name: name.to_owned(),
            listen: listen.to_vec(),
            binary: echo_binary()?,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The name the server puts in front of every answer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it has already exited, which is what we want anyway.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM (SIGKILL if it is still there after 2 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) takes plain integers; the child is not reaped yet, so the pid
            // still names it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if wait_for_exit(&mut child, STOP_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again with the same sockets.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns])
            .arg(&self.binary)
            .args(["--name", &self.name])
            .args(self.listen.iter().flat_map(|l| l.args()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads until the server exits, so a chatty server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        // Kept in the guard before waiting, so a failure below still kills it.
        self.child = Some(child);
        if ready_rx.recv_timeout(READY_TIMEOUT).is_ok() {
            return Ok(());
        }
        // A server that failed to bind is exiting: give it a moment so its status shows.
        let status = self
            .child
            .as_mut()
            .and_then(|c| wait_for_exit(c, Duration::from_millis(500)));
        self.kill9();
        match status {
            Some(status) => bail!(
                "{} in {} exited ({status}) before it was ready: see its stderr above",
                self.name,
                self.netns
            ),
            None => bail!(
                "{} in {} did not print \"ready\" within {READY_TIMEOUT:?}",
                self.name,
                self.netns
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `child` until it exits or `limit` passes; `None` if it still runs.
fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `fo-echo` binary: `$FO_ECHO_BIN` if set, else the one cargo built next to the running
/// test (tests run from `target/<profile>/deps/`, binaries sit in `target/<profile>/`).
/// Cargo builds binaries for integration tests; for `cargo test --lib` build it first with
/// `cargo build -p failover-tests --bin fo-echo`.
pub fn echo_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FO_ECHO_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("fo-echo"))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "fo-echo not found near {}: build it with \
                 `cargo build -p failover-tests --bin fo-echo`, or set FO_ECHO_BIN",
                exe.display()
            )
        })
}
