//! `storm`: N clients connected and synced drop their sockets at once and reconnect at
//! once, each then syncing from the last `inbox_id` it held; the figure is the time from
//! the drop until every client is back and synced (and its distribution).
//!
//! A refused or failed reconnect is retried after 50 ms, doubling to 1 s, as a client
//! would; a `reconnect` frame is followed. Each client reconnects to the `ws_url` it had.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use crate::cli::StormArgs;
use crate::report::{self, Latency};
use crate::ws::{Dialer, Frame, Ws};

/// Sync from `after` until the node says there is no more; returns the last `inbox_id`.
async fn sync_all(ws: &mut Ws, mut after: u64) -> Result<u64> {
    loop {
        let frame = json!({"type": "sync", "after": after, "limit": 1000}).to_string();
        ws.send(Message::Text(frame.into())).await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("no sync answer within 30 s")?
                .context("socket closed before the sync answer")??;
            let Message::Text(text) = msg else { continue };
            let f = Frame::decode(&text)?;
            match f.kind.as_ref() {
                "sync" => {
                    let items = f.items.unwrap_or_default();
                    if let Some(last) = items.last() {
                        after = after.max(last.inbox_id);
                    }
                    if f.more == Some(true) && !items.is_empty() {
                        break;
                    }
                    return Ok(after);
                }
                "error" => bail!(
                    "sync failed: {} {}",
                    f.code.as_deref().unwrap_or("?"),
                    f.message.as_deref().unwrap_or("")
                ),
                "reconnect" => bail!("told to reconnect while syncing"),
                _ => {}
            }
        }
    }
}

/// Dial (retrying with backoff until `deadline`) and sync.
async fn come_back(
    dialer: &Dialer,
    url: &mut String,
    token: &str,
    slot: usize,
    after: u64,
    retries: &AtomicU64,
    deadline: Instant,
) -> Result<(Ws, u64)> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = async {
            let mut ws = dialer.dial(url, token, slot).await?;
            let last = sync_all(&mut ws, after).await?;
            anyhow::Ok((ws, last))
        };
        match attempt.await {
            Ok(x) => return Ok(x),
            Err(e) => {
                if Instant::now() + backoff > deadline {
                    return Err(e);
                }
                retries.fetch_add(1, Relaxed);
                if e.to_string().contains("reconnect") {
                    *url = dialer.api.assign(token).await.unwrap_or(url.clone());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

pub async fn run(ctx: &Ctx, args: &StormArgs) -> Result<Value> {
    let n = args.clients;
    let users = ctx.users(n).await?;
    super::check_open_files(n)?;
    if let Some(cap) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&cap| cap < n)
    {
        eprintln!(
            "storm: warning: net.core.somaxconn is {cap}, below {n} clients: connects past a full accept queue are dropped and retried by TCP after 1 s; on a node's machine raise it (docs/operations.md: sysctl -w net.core.somaxconn=16384 net.ipv4.tcp_max_syn_backlog=16384)"
        );
    }

    let (storm_tx, storm_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let ready = Arc::new(AtomicUsize::new(0));
    let setup_failed = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
    let timeout = Duration::from_secs(args.timeout_secs);
    let setup_started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (slot, user) in users.into_iter().enumerate() {
        let (dialer, gate, mut storm) = (ctx.dialer.clone(), gate.clone(), storm_rx.clone());
        let (ready, setup_failed, retries, done, t0) = (
            ready.clone(),
            setup_failed.clone(),
            retries.clone(),
            done_tx.clone(),
            t0.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Set up: connect and sync to the newest entry.
            let setup = async {
                let _permit = gate.acquire().await;
                let (mut ws, url) = dialer.assign_and_dial(&user, slot).await?;
                let last = sync_all(&mut ws, 0).await?;
                anyhow::Ok((ws, url, last))
            };
            let (mut ws, mut url, last) = match setup.await {
                Ok(x) => x,
                Err(e) => {
                    setup_failed.fetch_add(1, Relaxed);
                    eprintln!("storm: setup of client {slot} failed: {e:#}");
                    return;
                }
            };
            ready.fetch_add(1, Relaxed);
            // Idle, heartbeating, until the storm.
            let mut beat = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = storm.changed() => break,
                    _ = beat.tick() => {
                        let _ = ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await;
                    }
                    m = ws.next() => if m.is_none() {
                        // Closed before the storm: it still takes part, from where it was.
                        let _ = storm.changed().await;
                        break;
                    },
                }
            }
            // The drop: the socket goes away with no close handshake, as on a network cut.
            drop(ws);
            let start = *t0.get().expect("t0 is set before the storm signal");
            let deadline = start + timeout;
            let r = come_back(
                &dialer,
                &mut url,
                &user.token,
                slot,
                last,
                &retries,
                deadline,
            )
            .await;
            match r {
                Ok((ws, _)) => {
                    let _ = done.send(Ok(start.elapsed()));
                    // Hold the socket until every client is back, so the node carries
                    // the full count at the end.
                    let _ = storm.changed().await;
                    drop(ws);
                }
                Err(e) => {
                    let _ = done.send(Err(format!("{e:#}")));
                }
            }
        }));
    }
    drop(done_tx);
    while ready.load(Relaxed) + setup_failed.load(Relaxed) < n {
        if setup_started.elapsed() > Duration::from_secs(300) {
            bail!(
                "storm: only {} of {n} clients set up within 300 s",
                ready.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clients = ready.load(Relaxed);
    if clients == 0 {
        bail!("storm: no client could connect");
    }
    eprintln!(
        "storm: {clients} clients connected and synced in {:.1} s; dropping them all at once",
        setup_started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = t0.set(Instant::now());
    let _ = storm_tx.send(true);
    let mut hist = report::new_hist();
    let mut failures = Vec::new();
    let mut back = 0usize;
    while back + failures.len() < clients {
        match done_rx.recv().await {
            Some(Ok(took)) => {
                back += 1;
                report::record(&mut hist, took.as_micros() as u64);
            }
            Some(Err(e)) => failures.push(e),
            None => break,
        }
    }
    let all_back = t0.get().map(|t| t.elapsed()).unwrap_or_default();
    let node_connections = super::idle::node_connections(ctx).await;
    let _ = storm_tx.send(false);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let lat = Latency::of(&hist);
    eprintln!(
        "storm: {back}/{clients} back and synced; all within {:.3} s (target < 2 s); per client {}; retries {}; failed {}{}",
        lat.max_ms / 1000.0,
        lat.human(),
        retries.load(Relaxed),
        failures.len(),
        failures
            .first()
            .map(|e| format!("; first failure: {e}"))
            .unwrap_or_default()
    );
    Ok(json!({
        "clients": n,
        "set_up": clients,
        "setup_failed": setup_failed.load(Relaxed),
        "back": back,
        "failed": failures.len(),
        "first_failure": failures.first(),
        "retries": retries.load(Relaxed),
        "all_back_secs": if back == clients { Some(lat.max_ms / 1000.0) } else { None },
        "wall_secs": report::round2(all_back.as_secs_f64()),
        "per_client": lat,
        "node_connections_metric": node_connections,
    }))
}
