//! Project tasks: `cargo xtask setup | test | demo | drill | bench | deb`.
//!
//! Every install step the project needs lives in `setup`, so a fresh machine needs nothing
//! done by hand.

mod bench;
mod deb;
mod drill;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "failover project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src, bpf-linker, iproute2.
    Setup,
    /// Run every test: formatting, clippy, unit tests, packet tests, end-to-end tests.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Show the product working: a namespace lab, the daemon, traffic, a crash, failback.
    Demo,
    /// Failover drills: inject faults (crash, blackhole, hang, http-fail, flap,
    /// tier-failover, lb-restart, reload) into a namespace lab under load, measure, judge;
    /// writes target/drill/report.txt, report.json and a timeline SVG per drill. Needs root.
    Drill {
        /// Drills to run (default: all).
        scenarios: Vec<String>,
    },
    /// Build the Debian package (binary, systemd unit, example config) into target/debian
    /// with cargo-deb.
    Deb,
    /// Time the XDP program against a baseline (BPF_PROG_TEST_RUN), Maglev generation and
    /// map memory; writes target/bench/summary.json. Needs root.
    Bench {
        /// Passed to the bench (e.g. `--packets 1000000 --runs 5`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { no_lint, filter } => test::run(no_lint, filter.as_deref()),
        Task::Bench { args } => bench::run(&args),
        Task::Demo => bench::demo(),
        Task::Drill { scenarios } => drill::run(&scenarios),
        Task::Deb => deb::run().map(drop),
    }
}
