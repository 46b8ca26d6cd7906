//! `idle`: open N authenticated sockets that only heartbeat, hold them, and read what they
//! cost the node: resident memory per connection (RSS delta / N from `/proc/PID/status`),
//! plus the kernel's share (slab and TCP buffer pages, both ends of loopback halved).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use crate::cli::IdleArgs;
use crate::procfs;

pub async fn run(ctx: &Ctx, args: &IdleArgs) -> Result<Value> {
    let n = args.connections;
    let users = ctx.users(n).await?;
    super::check_open_files(n)?;
    let distorted = ctx.created.load(Relaxed) > 0;
    if distorted {
        eprintln!(
            "idle: NOTE this node process just ran argon2 for the new users: its allocator holds \
             freed memory that sockets will reuse, so RSS per connection reads LOW. Rerun with \
             a fresh node (the users are cached now) for the figure."
        );
    }
    if ctx.probe.pids.is_empty() {
        eprintln!(
            "idle: NOTE no node process to read memory from (give --node-pid); reporting connections only"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = ctx.probe.rss();
    let slab0 = procfs::slab_bytes();
    let tcp0 = procfs::tcp_kernel_bytes();

    let (stop_tx, stop_rx) = watch::channel(false);
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (slot, user) in users.into_iter().enumerate() {
        let (dialer, gate, mut stop) = (ctx.dialer.clone(), gate.clone(), stop_rx.clone());
        let (connected, failed, closed, first_error) = (
            connected.clone(),
            failed.clone(),
            closed.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let dialled = {
                let _permit = gate.acquire().await;
                dialer.assign_and_dial(&user, slot).await
            };
            let mut ws = match dialled {
                Ok((ws, _)) => ws,
                Err(e) => {
                    failed.fetch_add(1, Relaxed);
                    first_error.lock().unwrap().get_or_insert(format!("{e:#}"));
                    return;
                }
            };
            connected.fetch_add(1, Relaxed);
            // Spread the heartbeats over the interval rather than all at once.
            let offset = heartbeat.mul_f64((slot % 1000) as f64 / 1000.0);
            let mut beat =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
            loop {
                tokio::select! {
                    _ = stop.changed() => {
                        let _ = ws.close(None).await;
                        return;
                    }
                    _ = beat.tick() => {
                        let hb = Message::Text(r#"{"type":"heartbeat"}"#.into());
                        if ws.send(hb).await.is_err() {
                            closed.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            closed.fetch_add(1, Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    },
                }
            }
        }));
    }
    while connected.load(Relaxed) + failed.load(Relaxed) < n {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = stop_tx.send(true);
            bail!(
                "only {} of {n} sockets opened within 300 s",
                connected.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let open = connected.load(Relaxed);
    eprintln!(
        "idle: {open}/{n} sockets open in {connect_secs:.1} s; holding {} s",
        args.hold_secs
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss1 = ctx.probe.rss();
    let slab1 = procfs::slab_bytes();
    let tcp1 = procfs::tcp_kernel_bytes();
    let node_connections = node_connections(ctx).await;
    let still_open = open - closed.load(Relaxed);

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }

    let per = |a: Option<u64>, b: Option<u64>, div: usize| -> Option<f64> {
        let (a, b) = (a?, b?);
        (div > 0).then(|| (b as f64 - a as f64) / div as f64 / 1024.0)
    };
    let rss_kib = per(rss0, rss1, still_open);
    // Loopback: both ends of every connection are on this machine; the node's is half.
    let slab_kib = per(slab0, slab1, 2 * still_open);
    let tcp_kib = per(tcp0, tcp1, 2 * still_open);
    let total_kib = rss_kib.map(|r| r + slab_kib.unwrap_or(0.0) + tcp_kib.unwrap_or(0.0));
    let f = |x: Option<f64>| x.map_or("?".into(), |v| format!("{v:.2}"));
    eprintln!(
        "idle: {still_open} sockets held (failed {}, closed early {}); node RSS {} → {} MiB = {} KiB per connection; kernel ≈ {} KiB slab + {} KiB TCP buffers per socket; total ≈ {} KiB (issue 11's target: ≤ 8 KiB)",
        failed.load(Relaxed),
        closed.load(Relaxed),
        f(rss0.map(|b| b as f64 / 1048576.0)),
        f(rss1.map(|b| b as f64 / 1048576.0)),
        f(rss_kib),
        f(slab_kib),
        f(tcp_kib),
        f(total_kib),
    );
    Ok(json!({
        "connections": n,
        "rss_distorted_by_setup": distorted,
        "opened": open,
        "held": still_open,
        "failed": failed.load(Relaxed),
        "closed_early": closed.load(Relaxed),
        "first_error": first_error.lock().unwrap().clone(),
        "connect_secs": crate::report::round2(connect_secs),
        "hold_secs": args.hold_secs,
        "heartbeat_secs": args.heartbeat_secs,
        "node_connections_metric": node_connections,
        "node_rss_before_bytes": rss0,
        "node_rss_after_bytes": rss1,
        "rss_kib_per_connection": rss_kib,
        "kernel_slab_kib_per_socket": slab_kib,
        "kernel_tcp_buffers_kib_per_socket": tcp_kib,
        "total_kib_per_connection": total_kib,
    }))
}

/// The sum of `parley_connections` over the nodes' `/metrics`.
pub async fn node_connections(ctx: &Ctx) -> Option<f64> {
    let mut total = None;
    for url in ctx.api.urls() {
        let text = ctx.api.metrics(url).await;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("parley_connections ") {
                *total.get_or_insert(0.0) += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    total
}
