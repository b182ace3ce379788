//! Named network namespaces: a guard that deletes them, entering one on the current thread,
//! and running `ip` with errors that say which command failed.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    marker::PhantomData,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Where `ip netns add` puts the files that name namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace (`ip netns add`), with `lo` up. Dropping it kills every process
/// still inside and deletes the namespace; the kernel then destroys its interfaces (and so
/// both ends of every veth pair that had one end inside).
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether dropping this value deletes the namespace.
    owned: bool,
}

impl Netns {
    /// A handle on a namespace another guard owns (for a background thread): dropping it
    /// leaves the namespace alone.
    pub fn existing(name: &str) -> Self {
        Netns {
            name: name.to_owned(),
            owned: false,
        }
    }

    /// Creates the namespace `name` and brings its loopback up.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        ip(["netns", "add", name])?;
        // From here on the guard owns the namespace: a failure below still deletes it.
        let ns = Netns {
            name: name.to_owned(),
            owned: true,
        };
        ip(["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `cmd args` inside the namespace (`ip netns exec NAME cmd args`).
    /// `ip netns exec` replaces itself with `cmd`, so the child's pid is `cmd`'s pid.
    pub fn exec<I, S>(&self, cmd: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(cmd)
            .args(args);
        command
    }

    /// Runs `ip -n NAME args` and fails with the command line and `ip`'s stderr.
    pub fn ip<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<OsString> = vec!["-n".into(), self.name.clone().into()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        ip(full)
    }

    /// Moves the current thread into the namespace until the guard drops. A namespace belongs
    /// to one thread: run a current-thread tokio runtime inside, or use [`run_in`].
    pub fn enter(&self) -> anyhow::Result<NsGuard> {
        let original = File::open("/proc/thread-self/ns/net")
            .context("cannot open /proc/thread-self/ns/net: is /proc mounted?")?;
        let path = PathBuf::from(NETNS_DIR).join(&self.name);
        let target = File::open(&path).with_context(|| {
            format!("cannot open {}: does the namespace exist?", path.display())
        })?;
        set_netns(&target).with_context(|| format!("cannot enter namespace {}", self.name))?;
        Ok(NsGuard {
            original,
            _one_thread: PhantomData,
        })
    }

    /// The pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> anyhow::Result<Vec<i32>> {
        let out = ip(["netns", "pids", &self.name])?;
        out.split_whitespace()
            .map(|p| p.parse().with_context(|| format!("bad pid {p:?}")))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // A process left inside keeps the namespace (and its interfaces) alive after the
        // name is gone, so kill them first.
        if let Ok(pids) = self.pids() {
            for pid in pids {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Err(e) = ip(["netns", "del", &self.name]) {
            eprintln!("lab: could not delete namespace {}: {e:#}", self.name);
        }
    }
}

/// While alive, the current thread is inside another network namespace; on drop the thread
/// goes back to the namespace it was in. Not `Send`: a namespace is a property of a thread.
#[derive(Debug)]
pub struct NsGuard {
    original: File,
    _one_thread: PhantomData<*const ()>,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = set_netns(&self.original) {
            // The thread would go on in the wrong namespace: never let that pass silently.
            if std::thread::panicking() {
                eprintln!("lab: cannot restore the thread's network namespace: {e}");
            } else {
                panic!("lab: cannot restore the thread's network namespace: {e}");
            }
        }
    }
}

/// Runs `f` on a new thread that sits inside `ns`, and returns its result. Use it for
/// anything that must happen in a namespace from Rust: sockets, a current-thread tokio
/// runtime, or attaching an XDP program (aya resolves the interface name and talks netlink
/// from the calling thread, so `Xdp::attach` run here attaches to the namespace's interface).
/// Values returned from `f` (e.g. a loaded `aya::Ebpf` that must stay alive) outlive the
/// thread. Panics if the namespace cannot be entered, and re-raises a panic from `f`.
pub fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            let _inside = ns
                .enter()
                .unwrap_or_else(|e| panic!("lab: cannot enter {}: {e:#}", ns.name()));
            f()
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Names of the namespaces that exist now (`ip netns list`, read from its directory).
pub fn list_namespaces() -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Runs `ip args`, returns its stdout, and fails with the command line, exit status and stderr.
pub(crate) fn ip<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let line = format!(
        "`ip {}`",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {line}: is iproute2 installed?"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn set_netns(ns: &File) -> std::io::Result<()> {
    // SAFETY: the fd is open for the call's whole duration; setns only reads it.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
