//! Interruption: SIGINT and SIGTERM set a flag that drills poll between phases (and inside
//! every wait); a drill that sees it returns [`Interrupted`] at once, so its guards (daemon,
//! servers, pins, namespaces) drop and clean up on the way out.
//!
//! A handler only stores to an atomic, the one thing a signal handler may safely do. It
//! puts the default action back, so a second Ctrl-C ends the process at once (leaving the
//! lab to `ip netns list | grep ^fo-` and `/run/failover-test-bpf`).

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// Set by the signal handler; never cleared.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often sleeps and waits look at the flag: bounds how late an interruption is seen.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// A drill stopped early because the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted (SIGINT or SIGTERM)")
    }
}

impl std::error::Error for Interrupted {}

extern "C" fn on_signal(signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // SAFETY: sigaction is async-signal-safe; the zeroed struct is a valid SIG_DFL action.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &raw const default, std::ptr::null_mut());
    }
}

/// Installs the handler for SIGINT and SIGTERM (for the `fo-drill` binary; tests do not).
pub fn install() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with an empty mask is valid; the handler is an
        // `extern "C" fn(c_int)` that only touches an atomic and calls sigaction.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut())
        };
        anyhow::ensure!(
            rc == 0,
            "cannot install a handler for signal {signal}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a signal arrived.
pub fn check() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps for `duration`, waking early with `Err` on interruption.
pub fn sleep(duration: Duration) -> Result<(), Interrupted> {
    sleep_until(Instant::now() + duration)
}

/// Sleeps until `deadline`, waking early with `Err` on interruption.
pub fn sleep_until(deadline: Instant) -> Result<(), Interrupted> {
    loop {
        check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(POLL));
    }
}
