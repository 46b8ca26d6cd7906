//! `chat-node`: run one Parley chat node. See `chat-node --help`.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chat_node::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colours only for a person at a terminal, never in log files or `kubectl logs`.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = Config::parse();
    let node = match chat_node::server::start(config).await {
        Ok(node) => node,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("chat-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match node.serve(shutdown_signal()).await {
        chat_node::server::Stopped::Clean => std::process::ExitCode::SUCCESS,
        chat_node::server::Stopped::Fatal(reason) => {
            eprintln!("chat-node: stopped: {reason}");
            std::process::ExitCode::from(1)
        }
    }
}

/// SIGTERM (Kubernetes, systemd) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = ctrl_c => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
