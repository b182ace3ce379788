//! The broken-config corpus (`tests/configs/broken/`): realistic files with exactly one
//! mistake each, announced in the file's header:
//!
//! ```text
//! # expect-line: 14
//! # expect-key: service[0].backend[1].port
//! # expect-text: only allowed in nat mode      (optional)
//! ```
//!
//! The real `failover check` must reject every file with that one error at that line and
//! key, and accept the example configs; the real daemon, in a lab, must reject a reload of
//! every file the same way and go on serving its old config.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use failover_tests::{
    daemon::{Daemon, failover_binary},
    lab::{Lab, Listen, Server, client},
    xdp,
};

/// The issue asks for at least this many broken files.
const MIN_CORPUS: usize = 25;

/// What a broken file's header says `failover check` must report.
#[derive(Debug)]
struct Broken {
    path: PathBuf,
    text: String,
    line: usize,
    key: String,
    fragment: Option<String>,
}

impl Broken {
    /// The start of the one error line expected for this file read from `shown_as`:
    /// `FILE:LINE: KEY: `.
    fn prefix(&self, shown_as: &Path) -> String {
        format!("{}:{}: {}: ", shown_as.display(), self.line, self.key)
    }

    /// Asserts that `stderr` reports exactly one problem (one line naming the file), at
    /// this file's line and key, with its expected text.
    #[track_caller]
    fn assert_reported(&self, shown_as: &Path, stderr: &str) {
        let prefix = self.prefix(shown_as);
        let file = format!("{}:", shown_as.display());
        let located: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&file)).collect();
        assert!(
            located.len() == 1 && located[0].starts_with(&prefix),
            "{}: expected exactly one error starting `{prefix}`, got:\n{stderr}",
            self.name()
        );
        if let Some(fragment) = &self.fragment {
            assert!(
                located[0].contains(fragment.as_str()),
                "{}: the error does not say {fragment:?}:\n{stderr}",
                self.name()
            );
        }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/broken")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every `*.toml` of the corpus, in name order, with its header parsed.
fn corpus() -> Vec<Broken> {
    let dir = corpus_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let header = |name: &str| {
                let tag = format!("# expect-{name}: ");
                text.lines()
                    .take_while(|l| l.starts_with('#'))
                    .find_map(|l| l.strip_prefix(tag.as_str()))
                    .map(str::to_owned)
            };
            let line = header("line")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("{}: no `# expect-line: N` header", path.display()));
            let key = header("key")
                .unwrap_or_else(|| panic!("{}: no `# expect-key: KEY` header", path.display()));
            let fragment = header("text");
            Broken {
                path,
                text,
                line,
                key,
                fragment,
            }
        })
        .collect()
}

/// Runs the `failover` binary with `args`.
fn failover(args: &[&str]) -> Output {
    Command::new(failover_binary().expect("the failover binary"))
        .args(args)
        .output()
        .expect("run failover")
}

fn check(path: &Path) -> Output {
    failover(&["check", "--config", path.to_str().expect("a UTF-8 path")])
}

#[test]
fn every_broken_file_is_rejected_at_its_line_and_key() {
    let corpus = corpus();
    assert!(
        corpus.len() >= MIN_CORPUS,
        "the corpus has {} files, at least {MIN_CORPUS} are wanted",
        corpus.len()
    );
    for broken in &corpus {
        let out = check(&broken.path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: `failover check` must exit 2 for an invalid file; stdout: {} stderr: {stderr}",
            broken.name(),
            String::from_utf8_lossy(&out.stdout)
        );
        broken.assert_reported(&broken.path, &stderr);
    }
}

#[test]
fn example_configs_pass_check() {
    for name in ["failover.toml", "demo.toml"] {
        let path = examples_dir().join(name);
        let out = check(&path);
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK ("));
    }
}

/// (service names, their backends' names and states) from `failover status --json`.
fn services(socket: &str) -> Vec<(String, Vec<(String, String)>)> {
    let out = failover(&["status", "--json", "--socket", socket]);
    assert!(
        out.status.success(),
        "status --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    status["services"]
        .as_array()
        .expect("a services array")
        .iter()
        .map(|s| {
            let backends = s["backends"]
                .as_array()
                .expect("a backends array")
                .iter()
                .map(|b| (text(&b["name"]), text(&b["state"])))
                .collect();
            (text(&s["name"]), backends)
        })
        .collect()
}

/// Every broken file written over a running daemon's config and reloaded: each reload is
/// refused with the file's line and key, and the daemon keeps its services, its backends
/// and its traffic; the original file then reloads.
#[test]
fn reloading_each_broken_file_keeps_the_old_config() {
    let started = Instant::now();
    let corpus = corpus();
    let lab = Lab::new(2).expect("build the lab");
    let _pass = xdp::pass_on_lb_peer(&lab).expect("attach the pass program");
    let _servers: Vec<Server> = lab
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let listen = [Listen::Tcp(([0, 0, 0, 0], 80).into())];
            Server::start(b.ns(), &format!("be-{}", i + 1), &listen).expect("server")
        })
        .collect();
    let socket = format!("/run/failover/{}sock", lab.prefix());
    let mut config = format!(
        "interface = \"{}\"\ncontrol_socket = \"{socket}\"\nflow_capacity = 65536\n[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n  [service.check]\n  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n",
        lab.lb_if()
    );
    for (i, b) in lab.backends().iter().enumerate() {
        config += &format!(
            "  [[service.backend]]\n  name = \"be-{}\"\n  address = \"{}\"\n",
            i + 1,
            b.ipv4()
        );
    }
    let daemon = Daemon::start(lab.lb().ns(), &config).expect("daemon");
    let path = daemon.config_path().to_owned();
    let original = std::fs::read_to_string(&path).expect("the daemon's config");

    let vip = "198.18.0.10:80".parse().unwrap();
    let client = lab.client().ns();
    let served = |n: usize| {
        let replies = client::tcp_requests(client, vip, n, Duration::from_secs(2), 4);
        let ok = replies.iter().all(|r| {
            r.as_ref()
                .is_ok_and(|s| s.starts_with("be-1 ") || s.starts_with("be-2 "))
        });
        (ok, replies)
    };
    let up = vec![
        ("be-1".to_owned(), "up".to_owned()),
        ("be-2".to_owned(), "up".to_owned()),
    ];
    let before = services(&socket);
    assert_eq!(before, [("web".to_owned(), up.clone())]);
    let (ok, replies) = served(8);
    assert!(ok, "the lab serves before any reload: {replies:?}");

    for broken in &corpus {
        std::fs::write(&path, &broken.text).expect("write the broken config");
        let out = failover(&["reload", "--socket", &socket]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("reload rejected"),
            "{}: the reload was not rejected: {}{stderr}",
            broken.name(),
            String::from_utf8_lossy(&out.stdout)
        );
        broken.assert_reported(&path, &stderr);
        assert_eq!(
            services(&socket),
            before,
            "{}: the running services changed",
            broken.name()
        );
        let (ok, replies) = served(2);
        assert!(
            ok,
            "{}: the VIP is no longer served by the old backends: {replies:?}",
            broken.name()
        );
    }

    // The file the daemon started with is still good to it.
    std::fs::write(&path, &original).expect("restore the config");
    let out = failover(&["reload", "--socket", &socket]);
    assert!(
        out.status.success(),
        "the original config must reload: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(services(&socket), before);
    let (ok, replies) = served(8);
    assert!(ok, "{replies:?}");
    let took = started.elapsed();
    eprintln!(
        "{} broken reloads rejected, daemon unchanged, in {:.1} s",
        corpus.len(),
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}: the test must stay under a minute"
    );
}
