//! `catchup`: a device is offline while K messages arrive for it; then it connects and
//! syncs them page by page. The figure is messages per second received by that one device
//! (and how fast one pipelined socket filled the inbox, as a by-product).
//!
//! Each run signs up a fresh sender and receiver (four argon2 hashes, well under a second),
//! so the receiver's inbox holds exactly the K messages and every number can be checked:
//! the sync must return `inbox_id` 1..=K, gapless, nothing twice.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use crate::cli::CatchupArgs;
use crate::report::{self, CpuMeter};
use crate::ws::{self, Frame};
use crate::{clock, users};

pub async fn run(ctx: &Ctx, args: &CatchupArgs) -> Result<Value> {
    let k = args.messages;
    if k == 0 {
        bail!("--messages must be at least 1");
    }
    let tag = format!("{:x}", clock::now_ns() ^ u64::from(std::process::id()));
    let tag = &tag[tag.len().saturating_sub(8)..];
    let (sname, rname) = (format!("cs{tag}"), format!("cr{tag}"));
    ctx.api.sign_up(&sname).await?;
    ctx.api.sign_up(&rname).await?;
    let sender = ctx.api.log_in(&sname, users::DEVICE).await?;
    let receiver = ctx.api.log_in(&rname, "catchup-device").await?;

    // Fill the offline device's inbox over one pipelined socket.
    eprintln!(
        "catchup: sending {k} messages to an offline device (window {})",
        args.window
    );
    let (mut ws, _) = ctx.dialer.assign_and_dial(&sender, 0).await?;
    let fill_started = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < k {
        if sent < k && sent - acked <= args.window / 2 {
            while sent < k && sent - acked < args.window {
                sent += 1;
                let frame = json!({
                    "type": "send",
                    "client_msg_id": format!("c{sent}"),
                    "to": receiver.user_id,
                    "text": ws::stamped_text(clock::now_ns(), args.text_chars),
                });
                ws.feed(Message::Text(frame.to_string().into())).await?;
            }
            ws.flush().await?;
        }
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no ack within 30 s while filling the inbox")?
            .context("the sender's socket closed while filling the inbox")??;
        let Message::Text(text) = msg else { continue };
        let f = Frame::decode(&text)?;
        match f.kind.as_ref() {
            "ack" => acked += 1,
            "error" => bail!(
                "a send failed: {} {}",
                f.code.as_deref().unwrap_or("?"),
                f.message.as_deref().unwrap_or("")
            ),
            _ => {}
        }
    }
    let fill_secs = fill_started.elapsed().as_secs_f64();
    drop(ws);
    eprintln!(
        "catchup: inbox filled in {fill_secs:.2} s ({:.0} acked sends/s on one socket)",
        k as f64 / fill_secs
    );

    // The device comes online once the node has settled, and catches up.
    let settle_secs = settle(ctx).await;
    eprintln!("catchup: the node settled in {settle_secs:.1} s");
    let (mut ws, _) = ctx.dialer.assign_and_dial(&receiver, 1).await?;
    let meter = CpuMeter::start(&ctx.probe);
    let started = Instant::now();
    let (mut after, mut received, mut bytes, mut pages) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let frame = json!({"type": "sync", "after": after, "limit": args.page}).to_string();
        ws.send(Message::Text(frame.into())).await?;
        let more = loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("no sync answer within 30 s")?
                .context("the receiver's socket closed while syncing")??;
            let Message::Text(text) = msg else { continue };
            let f = Frame::decode(&text)?;
            match f.kind.as_ref() {
                "sync" => {
                    bytes += text.len() as u64;
                    pages += 1;
                    for item in f.items.unwrap_or_default() {
                        if item.inbox_id != after + 1 {
                            bail!(
                                "sync is not gapless: after inbox_id {after} came {}",
                                item.inbox_id
                            );
                        }
                        after = item.inbox_id;
                        received += 1;
                    }
                    break f.more == Some(true);
                }
                "error" => bail!(
                    "sync failed: {} {}",
                    f.code.as_deref().unwrap_or("?"),
                    f.message.as_deref().unwrap_or("")
                ),
                _ => {}
            }
        };
        if !more {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = meter.read(&ctx.probe);
    if received != k {
        bail!("the device synced {received} messages, expected {k}");
    }
    let rate = received as f64 / secs;
    eprintln!(
        "catchup: {received} messages in {pages} pages of ≤ {} synced in {secs:.3} s = {rate:.0} msg/s ({:.1} MB/s of frames) (target ≥ 200,000 msg/s); node {} cores",
        args.page,
        bytes as f64 / secs / 1e6,
        cpu.node_cores.map_or("?".into(), |c| format!("{c:.2}"))
    );
    Ok(json!({
        "messages": k,
        "page": args.page,
        "text_chars": args.text_chars,
        "fill_secs": report::round2(fill_secs),
        "settle_secs": report::round2(settle_secs),
        "fill_acked_per_s": (k as f64 / fill_secs).round(),
        "sync_secs": secs,
        "pages": pages,
        "frame_bytes": bytes,
        "messages_per_s": rate.round(),
        "cpu": cpu,
    }))
}

/// Wait (at most 30 s) until the node is idle. The fill leaves the store writing its memory
/// tables out and compacting for a while; a sync started meanwhile shares the cores with
/// that, and the figure depended on when it started (the same build measured 173,000 and
/// 328,000 msg/s in two runs a minute apart). A device catches up on messages that arrived
/// while it was away, not on a store still busy writing them; without a node to probe
/// (`--url` only) there is nothing to wait for.
async fn settle(ctx: &Ctx) -> f64 {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let meter = CpuMeter::start(&ctx.probe);
        tokio::time::sleep(Duration::from_millis(500)).await;
        match meter.read(&ctx.probe).node_cores {
            Some(cores) if cores > 0.05 => continue,
            _ => break,
        }
    }
    started.elapsed().as_secs_f64()
}
