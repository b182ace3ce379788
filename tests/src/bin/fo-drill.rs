//! `fo-drill [--out DIR] [SCENARIO...]`: runs failover drills (all by default), prints the
//! report table, writes `DIR/<scenario>.svg`, `DIR/report.txt` and `DIR/report.json`, and
//! exits non-zero if any expectation failed. Run by `cargo xtask drill`; needs root.
//!
//! Exit status: 0 every drill passed, 1 some failed, 2 it could not run, 130 interrupted.
//! SIGINT/SIGTERM stop the running drill at its next poll; its lab, servers, daemon and
//! pins are removed before the process exits. A second Ctrl-C exits at once.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use failover_tests::drill::{
    self, Interrupted, Scenario, chart,
    report::{self, Outcome},
};

/// Command line.
#[derive(Parser)]
#[command(about = "Failover drills: inject faults into a namespace lab under load and measure")]
struct Cli {
    /// Where the pictures and reports go.
    #[arg(long, default_value = "target/drill")]
    out: PathBuf,
    /// Drills to run (default: all): crash, blackhole, hang, http-fail, flap,
    /// tier-failover, lb-restart, reload.
    #[arg(value_parser = |s: &str| s.parse::<Scenario>())]
    scenarios: Vec<Scenario>,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fo-drill: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    anyhow::ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "drills build network namespaces and load XDP programs: run as root (sudo -E)"
    );
    drill::interrupt::install()?;
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios
    };
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;

    let mut outcomes = Vec::new();
    for (i, &scenario) in scenarios.iter().enumerate() {
        eprintln!("\n== drill {} of {}: {scenario}", i + 1, scenarios.len());
        match drill::run(scenario) {
            Ok(run) => {
                let svg = cli.out.join(format!("{scenario}.svg"));
                chart::draw_svg(&run, &svg)?;
                outcomes.push(Outcome::Ran(Box::new(run)));
            }
            Err(e) if e.is::<Interrupted>() => {
                eprintln!("fo-drill: interrupted; the lab was torn down");
                return Ok(ExitCode::from(130));
            }
            Err(e) => outcomes.push(Outcome::Broken {
                scenario,
                error: format!("{e:#}"),
            }),
        }
    }

    let table = report::table(&outcomes);
    let details = report::details(&outcomes);
    println!("\n{table}{details}");
    let text = cli.out.join("report.txt");
    std::fs::write(&text, format!("{table}{details}"))
        .with_context(|| format!("cannot write {}", text.display()))?;
    let json = cli.out.join("report.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&report::json(&outcomes))?,
    )
    .with_context(|| format!("cannot write {}", json.display()))?;
    println!(
        "pictures and reports in {}: {}",
        cli.out.display(),
        outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Ran(_)))
            .map(|o| format!("{}.svg", o.scenario()))
            .chain(["report.txt".into(), "report.json".into()])
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    if failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("fo-drill: {failed} of {} drills failed", outcomes.len());
        Ok(ExitCode::FAILURE)
    }
}
