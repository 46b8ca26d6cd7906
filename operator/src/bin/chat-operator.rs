//! `chat-operator`: the Parley operator.
//!
//! - `chat-operator` (or `chat-operator run`): the controller, with leader election,
//!   `/healthz` and `/metrics`.
//! - `chat-operator render -f FILE`: prints the children the operator would apply for the
//!   ChatCluster in FILE (`-` for stdin) as multi-document YAML, with no cluster; exits
//!   non-zero with the reasons on an invalid spec.

use std::io::Read;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat-operator", version, about = "Parley Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the children of a ChatCluster as multi-document YAML, with no cluster.
    Render {
        /// ChatCluster YAML file, or `-` for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the `/healthz` and `/metrics` server.
    #[arg(
        long,
        env = "OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    metrics_addr: SocketAddr,
    /// Namespace of the leader election Lease (the operator's own namespace).
    #[arg(
        long,
        env = "OPERATOR_NAMESPACE",
        default_value = "parley-system",
        global = true
    )]
    lease_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "chat-operator",
        global = true
    )]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "chat-operator", global = true)]
    identity: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "OPERATOR_WATCH_NAMESPACE", global = true)]
    watch_namespace: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Render { file }) => match render(&file) {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat-operator render: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
        Some(Command::Run) | None => match run(cli.run) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "chat-operator stopped");
                eprintln!("chat-operator: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn render(file: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    }
    operator::resources::render(&text).with_context(|| file.to_string())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .json()
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        operator::controller::run(
            client,
            operator::controller::RunConfig {
                metrics_addr: args.metrics_addr,
                lease_namespace: args.lease_namespace,
                lease_name: args.lease_name,
                identity: args.identity,
                watch_namespace: args.watch_namespace,
            },
        )
        .await
        .context("controller")
    })
}
