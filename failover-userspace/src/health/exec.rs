//! The exec probe: run a command with the target in its environment; exit 0 means up.
//!
//! The command runs in its own process group. If the probe is dropped before the command
//! exits (its timeout ran out), the whole group is killed, so a hung script does not leave
//! a `curl` or `sleep` behind at every interval.

use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, Command};
use tokio::time;

use super::ProbeError;

/// Environment variable holding the target address.
pub(super) const ADDRESS_VAR: &str = "FAILOVER_BACKEND_ADDRESS";
/// Environment variable holding the target port (unset when the target has none).
pub(super) const PORT_VAR: &str = "FAILOVER_BACKEND_PORT";

/// How much standard error is kept, to find its first line.
const MAX_STDERR_BYTES: usize = 4096;
/// How long standard error may stay open after the command exited (a background child
/// may hold it) before the probe reports without it.
const STDERR_GRACE: Duration = Duration::from_millis(50);
/// Longest stderr line quoted in a reason.
const MAX_LINE_CHARS: usize = 200;

/// Runs `command` with the target in [`ADDRESS_VAR`] and [`PORT_VAR`].
pub(super) async fn probe(
    command: &[String],
    address: IpAddr,
    port: Option<u16>,
) -> Result<(), ProbeError> {
    let (program, args) = command.split_first().ok_or(ProbeError::EmptyCommand)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(ADDRESS_VAR, address.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    match port {
        Some(port) => cmd.env(PORT_VAR, port.to_string()),
        None => cmd.env_remove(PORT_VAR),
    };
    let mut child = cmd.spawn().map_err(|source| ProbeError::Spawn {
        program: program.clone(),
        source,
    })?;
    // Declared after `child`, so it is dropped first: the group is killed while the
    // child is still unreaped and its id cannot have been reused.
    let mut group = GroupKiller {
        pgid: child.id().and_then(|id| libc::pid_t::try_from(id).ok()),
    };

    let mut stderr_head = Vec::new();
    let status = {
        let mut reader = pin!(read_head(child.stderr.take(), &mut stderr_head));
        let mut exited = pin!(child.wait());
        tokio::select! {
            status = &mut exited => {
                // The pipe normally closes with the process; a background child holding
                // it open must not turn an exit status into a timeout.
                let _ = time::timeout(STDERR_GRACE, &mut reader).await;
                status
            }
            () = &mut reader => exited.await,
        }
    };
    let status = status.map_err(|source| ProbeError::Wait {
        program: program.clone(),
        source,
    })?;
    // Reaped: from now on its id may belong to someone else.
    group.pgid = None;

    if status.success() {
        Ok(())
    } else {
        Err(ProbeError::Exit {
            status: describe(status),
            stderr: first_line(&stderr_head),
        })
    }
}

/// Kills a process group when dropped, unless disarmed by clearing `pgid`.
struct GroupKiller {
    pgid: Option<libc::pid_t>,
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.filter(|&pgid| pgid > 0) {
            // SAFETY: kill(2) has no memory-safety preconditions. The group leader is our
            // unreaped child, so the group id still names the command's group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Reads standard error to its end, keeping the first [`MAX_STDERR_BYTES`] in `head`
/// and draining the rest so the command never blocks on a full pipe.
async fn read_head(stderr: Option<ChildStderr>, head: &mut Vec<u8>) {
    let Some(mut stderr) = stderr else {
        return;
    };
    let mut chunk = [0u8; 1024];
    while let Ok(n) = stderr.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        let room = MAX_STDERR_BYTES.saturating_sub(head.len());
        head.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// "exit status N" or "killed by signal N".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The first non-blank line of `stderr`, trimmed and cut for a reason.
fn first_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.chars().count() <= MAX_LINE_CHARS {
        return Some(line.to_owned());
    }
    let mut cut: String = line.chars().take(MAX_LINE_CHARS).collect();
    cut.push('…');
    Some(cut)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::health::testing::LOCALHOST;
    use crate::health::{Outcome, ProbeKind, Target, probe};

    fn exec(command: &[&str], timeout: Duration) -> Target {
        Target {
            address: LOCALHOST,
            port: Some(8080),
            kind: ProbeKind::Exec {
                command: command.iter().map(|&s| s.to_owned()).collect(),
            },
            timeout,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn exec_true_up() {
        assert_eq!(probe(&exec(&["true"], TIMEOUT)).await.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn exec_false_failed() {
        assert_eq!(
            probe(&exec(&["false"], TIMEOUT)).await.outcome,
            Outcome::Failed {
                reason: "exit status 1".into()
            }
        );
    }

    #[tokio::test]
    async fn exec_failure_quotes_first_stderr_line() {
        let script = "echo; echo 'db: connection refused' >&2; echo second >&2; exit 3";
        assert_eq!(
            probe(&exec(&["sh", "-c", script], TIMEOUT)).await.outcome,
            Outcome::Failed {
                reason: "exit status 3: db: connection refused".into()
            }
        );
    }

    #[tokio::test]
    async fn exec_sleep_times_out_and_is_killed() {
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let result = probe(&exec(&["sleep", "5"], timeout)).await;
        assert_eq!(result.outcome, Outcome::Timeout { after: timeout });
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn exec_passes_address_and_port() {
        let script = r#"test "$FAILOVER_BACKEND_ADDRESS" = 127.0.0.1 && test "$FAILOVER_BACKEND_PORT" = 8080"#;
        assert_eq!(
            probe(&exec(&["sh", "-c", script], TIMEOUT)).await.outcome,
            Outcome::Up
        );
    }

    #[tokio::test]
    async fn exec_without_port_unsets_the_port_variable() {
        let mut target = exec(
            &["sh", "-c", r#"test -z "${FAILOVER_BACKEND_PORT+set}""#],
            TIMEOUT,
        );
        target.port = None;
        assert_eq!(probe(&target).await.outcome, Outcome::Up);
    }

    #[tokio::test]
    async fn exec_missing_program_fails() {
        let result = probe(&exec(&["/nonexistent/failover-check"], TIMEOUT)).await;
        let Outcome::Failed { reason } = &result.outcome else {
            panic!("expected Failed, got {:?}", result.outcome);
        };
        assert!(
            reason.starts_with(r#"cannot run "/nonexistent/failover-check""#),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn exec_background_child_holding_stderr_does_not_delay_the_status() {
        let timeout = Duration::from_secs(2);
        let start = Instant::now();
        let result = probe(&exec(&["sh", "-c", "sleep 1 & exit 4"], timeout)).await;
        assert_eq!(
            result.outcome,
            Outcome::Failed {
                reason: "exit status 4".into()
            }
        );
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn exec_timeout_kills_the_whole_process_group() {
        let pid_file = std::env::temp_dir().join(format!(
            "failover-health-exec-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let script = format!("sleep 5 & echo $! > '{}'; wait", pid_file.display());
        let result = probe(&exec(&["sh", "-c", &script], Duration::from_millis(300))).await;
        assert!(
            matches!(result.outcome, Outcome::Timeout { .. }),
            "{result:?}"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let _ = std::fs::remove_file(&pid_file);
        let pid = pid.trim();
        // Killed means gone, or a zombie waiting for whoever inherited it.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|s| !s.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {pid} survived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
