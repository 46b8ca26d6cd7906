//! `parley-floor`: the machine's floor for one-on-one traffic (see the `floor` module and
//! docs/benchmarks.md, "The machine's floor").
//!
//!   parley-floor relay --listen 127.0.0.1:8095 &
//!   parley-floor drive --addr 127.0.0.1:8095 --relay-pid $! --rates 8000,16000,32000,64000

use anyhow::Result;
use clap::{Parser, Subcommand};

use parley_bench::{clock, floor, procfs};

#[derive(Parser)]
#[command(
    about = "What moving a one-on-one message costs on this machine with nothing but sockets"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The least a node can do per message: read it, write an ack, write it to the recipient.
    Relay {
        #[arg(long, default_value = "127.0.0.1:8095")]
        listen: String,
    },
    /// Both clients of every pair, paced like `parley-bench dm`; one JSON line per step.
    Drive {
        #[arg(long, default_value = "127.0.0.1:8095")]
        addr: String,
        #[arg(long, default_value_t = 200)]
        pairs: u32,
        /// Messages a second in all, one step each.
        #[arg(long, value_delimiter = ',', default_value = "8000,16000,32000,64000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 5)]
        step_secs: u64,
        /// The relay's pid, for its CPU time (found from the port when left out).
        #[arg(long)]
        relay_pid: Option<u32>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    clock::start();
    match Cli::parse().mode {
        Mode::Relay { listen } => floor::relay(&listen).await,
        Mode::Drive {
            addr,
            pairs,
            rates,
            step_secs,
            relay_pid,
        } => {
            let relay_pid = relay_pid.or_else(|| {
                procfs::url_port(&format!("http://{addr}"))
                    .and_then(|p| procfs::pids_listening_on(p).first().copied())
            });
            eprintln!(
                "parley-floor: {} pairs, relay pid {relay_pid:?}, load average {:?}",
                pairs,
                procfs::loadavg()
            );
            let steps = floor::drive(&addr, pairs, &rates, step_secs, relay_pid).await?;
            for s in steps {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(())
        }
    }
}
