//! The machine's floor for one-on-one traffic: what moving a message costs on these cores
//! when nothing but the sockets is left (no store, no fsync, no JSON, no WebSocket framing).
//!
//! `relay` is the least a chat node can do per message: read the sender's bytes, write an
//! ack back, write the message to the recipient, each as its own `write` from the sender's
//! task (no queue, no extra wakeup). `drive` plays both clients of every pair, paced like
//! `dm`, and reports the relay's and its own CPU per message. Any design of the node costs at
//! least the relay's figure, and the tool at least the driver's, so the sum bounds the
//! one-on-one rate two shared cores can carry (docs/benchmarks.md, "The machine's floor").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::report::Latency;
use crate::{clock, procfs};

/// Bytes of one message: an 8-byte send time then a 64-byte text, like `dm`'s texts.
pub const MESSAGE: usize = 72;
/// Bytes of one ack: the message's send time, echoed.
pub const ACK: usize = 8;

/// A connection's first 5 bytes: the pair (u32, little-endian) and the role.
const SENDER: u8 = 0;
const RECIPIENT: u8 = 1;

type Recipients = Arc<Mutex<HashMap<u32, Arc<Mutex<OwnedWriteHalf>>>>>;

/// Serve relay connections on `listen` until the process is stopped.
pub async fn relay(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: pick a free address"))?;
    eprintln!("parley-floor relay: listening on {listen}");
    let recipients: Recipients = Arc::default();
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(serve(socket, recipients.clone()));
    }
}

async fn serve(socket: TcpStream, recipients: Recipients) -> Result<()> {
    let (mut read, write) = socket.into_split();
    let mut hello = [0u8; 5];
    read.read_exact(&mut hello).await?;
    let pair = u32::from_le_bytes([hello[0], hello[1], hello[2], hello[3]]);
    let write = Arc::new(Mutex::new(write));
    if hello[4] == RECIPIENT {
        recipients.lock().await.insert(pair, write);
        // Hold the read half open until the client goes.
        let mut sink = [0u8; 1];
        let _ = read.read(&mut sink).await;
        recipients.lock().await.remove(&pair);
        return Ok(());
    }
    let mut message = [0u8; MESSAGE];
    loop {
        read.read_exact(&mut message).await?;
        write.lock().await.write_all(&message[..ACK]).await?;
        let to = recipients.lock().await.get(&pair).cloned();
        if let Some(to) = to {
            to.lock().await.write_all(&message).await?;
        }
    }
}

/// What `drive` measures at one offered rate.
#[derive(Debug, Serialize)]
pub struct FloorStep {
    pub offered_per_s: u64,
    pub secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub ack: Latency,
    pub deliver: Latency,
    /// Cores the relay and the driver used over the step.
    pub relay_cores: Option<f64>,
    pub driver_cores: f64,
    /// CPU per delivered message, in microseconds.
    pub relay_us_per_msg: Option<f64>,
    pub driver_us_per_msg: f64,
    /// Everything acked and delivered, p99 of both within 50 ms (`dm`'s rule).
    pub held: bool,
}

/// One pair's counters and latencies (microseconds since the sender's write).
#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    delivered: u64,
    ack: Option<Histogram<u64>>,
    deliver: Option<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn dial(addr: &str, pair: u32, role: u8) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the relay at {addr}: start `parley-floor relay`"))?;
    s.set_nodelay(true)?;
    let mut hello = pair.to_le_bytes().to_vec();
    hello.push(role);
    s.write_all(&hello).await?;
    Ok(s)
}

/// Read `size`-byte frames from `read` (deliveries or acks), counting each in `tally` with
/// its latency from the send time it carries.
async fn receive(
    mut read: tokio::net::tcp::OwnedReadHalf,
    size: usize,
    tally: Arc<std::sync::Mutex<Tally>>,
    deliveries: bool,
) {
    let mut buf = [0u8; MESSAGE];
    while read.read_exact(&mut buf[..size]).await.is_ok() {
        let due = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let us = clock::since_us(due).max(1);
        let mut t = tally.lock().expect("tally lock");
        if deliveries {
            t.delivered += 1;
            let _ = t.deliver.get_or_insert_with(histogram).record(us);
        } else {
            t.acked += 1;
            let _ = t.ack.get_or_insert_with(histogram).record(us);
        }
    }
}

/// Drive `pairs` pairs through the relay at each of `rates` (messages a second in all) for
/// `step_secs` each; `relay_pid` is read for its CPU time.
pub async fn drive(
    addr: &str,
    pairs: u32,
    rates: &[u64],
    step_secs: u64,
    relay_pid: Option<u32>,
) -> Result<Vec<FloorStep>> {
    let mut senders = Vec::new();
    let mut tallies = Vec::new();
    // The recipients' write halves: dropping one would half-close its connection.
    let mut open = Vec::new();
    for pair in 0..pairs {
        let recipient = dial(addr, pair, RECIPIENT).await?;
        let sender = dial(addr, pair, SENDER).await?;
        let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
        let (r_read, r_write) = recipient.into_split();
        tokio::spawn(receive(r_read, MESSAGE, tally.clone(), true));
        open.push(r_write);
        let (s_read, s_write) = sender.into_split();
        tokio::spawn(receive(s_read, ACK, tally.clone(), false));
        senders.push(Arc::new(Mutex::new(s_write)));
        tallies.push(tally);
    }
    // Let every recipient register before the first send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut steps = Vec::new();
    for &rate in rates {
        for t in &tallies {
            *t.lock().expect("tally lock") = Tally::default();
        }
        let relay_cpu0 = relay_pid.and_then(procfs::cpu_seconds);
        let self_cpu0 = procfs::self_cpu_seconds().unwrap_or(0.0);
        let start = std::time::Instant::now();
        let per_pair = rate as f64 / pairs as f64;
        let count = (per_pair * step_secs as f64).round() as u64;
        let mut tasks = Vec::new();
        for (i, s) in senders.iter().enumerate() {
            let s = s.clone();
            let tally = tallies[i].clone();
            // Spread the pairs' first sends over one period.
            let offset = Duration::from_secs_f64(i as f64 / pairs as f64 / per_pair);
            tasks.push(tokio::spawn(async move {
                let mut message = [b'x'; MESSAGE];
                let begin = tokio::time::Instant::now() + offset;
                for k in 0..count {
                    let due = begin + Duration::from_secs_f64(k as f64 / per_pair);
                    tokio::time::sleep_until(due).await;
                    // Latency counts from the write: tokio's timer wakes up to 1 ms late,
                    // which would otherwise read as the relay's latency.
                    message[..8].copy_from_slice(&clock::now_ns().to_le_bytes());
                    if s.lock().await.write_all(&message).await.is_err() {
                        break;
                    }
                    tally.lock().expect("tally lock").sent += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = start.elapsed().as_secs_f64();
        let relay_cpu = relay_pid
            .and_then(procfs::cpu_seconds)
            .zip(relay_cpu0)
            .map(|(b, a)| b - a);
        let self_cpu = procfs::self_cpu_seconds().unwrap_or(0.0) - self_cpu0;
        // Give the last messages time to arrive, outside the CPU window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut sent, mut acked, mut delivered) = (0, 0, 0);
        let (mut ack, mut deliver) = (histogram(), histogram());
        for t in &tallies {
            let t = t.lock().expect("tally lock");
            sent += t.sent;
            acked += t.acked;
            delivered += t.delivered;
            if let Some(h) = &t.ack {
                ack.add(h).expect("same bounds");
            }
            if let Some(h) = &t.deliver {
                deliver.add(h).expect("same bounds");
            }
        }
        let (ack, deliver) = (Latency::of(&ack), Latency::of(&deliver));
        let per_msg = |cpu: f64| cpu * 1e6 / delivered.max(1) as f64;
        let held = sent > 0
            && acked == sent
            && delivered == sent
            && ack.p99_ms <= 50.0
            && deliver.p99_ms <= 50.0;
        let step = FloorStep {
            offered_per_s: rate,
            secs,
            sent,
            acked,
            delivered,
            relay_cores: relay_cpu.map(|c| c / secs),
            driver_cores: self_cpu / secs,
            relay_us_per_msg: relay_cpu.map(per_msg),
            driver_us_per_msg: per_msg(self_cpu),
            ack,
            deliver,
            held,
        };
        eprintln!(
            "floor {:>6}/s offered: {:>8.0} delivered/s | deliver p50 {:.2} p99 {:.2} ms | ack p99 {:.2} ms | relay {} cores {} µs/msg | driver {:.2} cores {:.1} µs/msg | {}",
            rate,
            delivered as f64 / secs,
            step.deliver.p50_ms,
            step.deliver.p99_ms,
            step.ack.p99_ms,
            step.relay_cores.map_or("?".into(), |c| format!("{c:.2}")),
            step.relay_us_per_msg
                .map_or("?".into(), |c| format!("{c:.1}")),
            step.driver_cores,
            step.driver_us_per_msg,
            if held { "held" } else { "NOT held" }
        );
        steps.push(step);
    }
    Ok(steps)
}
