//! `parley-bench`: see the library's docs and docs/benchmarks.md.

use anyhow::Result;
use clap::Parser;

use parley_bench::api::Api;
use parley_bench::cli::{Cli, Scenario};
use parley_bench::report::{self, Facts, NodeProbe};
use parley_bench::scenario::{self, Ctx};
use parley_bench::{clock, procfs, ws::Dialer};

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    clock::start();
    let api = Api::new(&cli.global.url)?;
    let pids = if cli.global.node_pid.is_empty() {
        let mut pids: Vec<u32> = api
            .urls()
            .iter()
            .filter_map(|u| procfs::url_port(u))
            .flat_map(procfs::pids_listening_on)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    } else {
        cli.global.node_pid.clone()
    };
    let ctx = Ctx {
        dialer: Dialer::new(api.clone(), cli.global.source_ips),
        api,
        probe: NodeProbe { pids: pids.clone() },
        global: cli.global.clone(),
        created: Default::default(),
    };
    let facts = Facts::gather(&cli.global.url, &pids, &cli.global.label);
    eprintln!(
        "parley-bench: {} cores, load average {:?}, commit {}, node pids {:?}",
        facts.nproc, facts.loadavg_start, facts.git_commit, pids
    );
    let (name, figures) = match &cli.scenario {
        Scenario::Idle(a) => ("idle", scenario::idle::run(&ctx, a).await?),
        Scenario::Dm(a) => ("dm", scenario::dm::run(&ctx, a).await?),
        Scenario::Group(a) => ("group", scenario::group::run(&ctx, a).await?),
        Scenario::Mixed(a) => ("mixed", scenario::mixed::run(&ctx, a).await?),
        Scenario::Storm(a) => ("storm", scenario::storm::run(&ctx, a).await?),
        Scenario::Catchup(a) => ("catchup", scenario::catchup::run(&ctx, a).await?),
    };
    report::emit(name, facts, figures, cli.global.json_out.as_deref());
    Ok(())
}
