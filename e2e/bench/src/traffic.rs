//! The paced traffic engine behind `dm` and `group`: one task per socket that sends at its
//! share of the offered rate (open loop; a message held back more than 2 ms past the time
//! it was *due* is stamped with its due time, so a slow node cannot hide its queueing: no
//! coordinated omission) and reads acks and deliveries. The controller steps the rate, drains between steps, and collects each
//! step's HDR histograms from the sockets at the step boundary.
//!
//! A socket that gets `reconnect` (or loses its connection) dials again (the given
//! `ws_url`, else `/v1/assign`) and syncs from the last `inbox_id` it saw, as a client of
//! the protocol must; sends left unacked by a lost connection are counted as `lost`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::api::User;
use crate::clock;
use crate::mix::{self, Mix, Op, Seen};
use crate::report::{self, CpuMeter, Latency, NodeProbe};
pub use crate::step::StepResult;
use crate::ws::{self, Dialer, Frame};

/// Where a participant sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// A one-on-one message to this user id.
    To(String),
    /// A message to this channel (a group's `g:…`).
    Channel(String),
}

/// One socket of the run.
#[derive(Debug, Clone)]
pub struct Participant {
    pub user: User,
    pub target: Target,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub participants: Vec<Participant>,
    /// Deliveries one acked send causes (1 for a DM, members − 1 for a group).
    pub deliveries_per_send: u64,
    pub text_chars: usize,
    pub max_unacked: u64,
    pub step_secs: u64,
    pub p99_limit_ms: f64,
    pub half_step: bool,
    /// Besides sends: edits, reactions and read markers (the `mixed` scenario).
    pub mix: Option<Mix>,
}

/// Counters and the collection point shared by every socket.
struct Shared {
    /// Sends per second per socket, × 1000.
    rate_milli: AtomicU64,
    epoch: AtomicU64,
    flushed: AtomicUsize,
    connected: AtomicUsize,
    stop: AtomicBool,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    unsent: AtomicU64,
    reconnects: AtomicU64,
    reads: AtomicU64,
    read_frames: AtomicU64,
    /// (deliver, ack, answer: an ack or an error) histograms of the epoch being collected.
    hists: Mutex<Hists>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }
}

/// The whole run: every step's result and the run's totals.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub steps: Vec<StepResult>,
    /// The highest offered rate that was held (0 if none).
    pub max_held_per_s: u64,
    pub reconnects: u64,
    pub first_error: Option<String>,
    pub connect_secs: f64,
}

/// Connect every participant, run the warm-up, the steps of `rates` (stopping after the
/// first not held) and the half step; then close everything.
pub async fn run(spec: Spec, dialer: Dialer, probe: &NodeProbe, rates: &[u64]) -> Result<Outcome> {
    let n = spec.participants.len();
    if n == 0 {
        bail!("nothing to run: no participants");
    }
    let shared = Arc::new(Shared {
        rate_milli: AtomicU64::new(0),
        epoch: AtomicU64::new(0),
        flushed: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        unsent: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        read_frames: AtomicU64::new(0),
        hists: Mutex::new(new_hists()),
        first_error: Mutex::new(None),
    });
    let gate = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (idx, p) in spec.participants.iter().cloned().enumerate() {
        let (dialer, shared, gate, spec) =
            (dialer.clone(), shared.clone(), gate.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            participant(idx, p, dialer, shared, gate, spec).await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.connected.load(Relaxed) < n {
        if Instant::now() > deadline {
            shared.stop.store(true, Relaxed);
            bail!(
                "only {}/{n} sockets connected within 120 s; first error: {:?}",
                shared.connected.load(Relaxed),
                shared.first_error.lock().unwrap().clone()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!("{n} sockets connected in {connect_secs:.1} s");
    // Whatever connecting cost (errors while the node was busy) is not a step's.
    collect(&shared, n).await;

    let mut steps = Vec::new();
    let warm = rates.first().copied().unwrap_or(1000).min(1000);
    let w = step(&spec, &shared, probe, n, warm, 2, "warmup").await;
    eprintln!("{}", w.human());
    steps.push(w);
    let mut max_held = 0;
    for &rate in rates {
        let r = step(&spec, &shared, probe, n, rate, spec.step_secs, "step").await;
        eprintln!("{}", r.human());
        let held = r.held;
        steps.push(r);
        if !held {
            break;
        }
        max_held = rate;
    }
    if spec.half_step && max_held > 0 {
        let r = step(
            &spec,
            &shared,
            probe,
            n,
            max_held / 2,
            spec.step_secs,
            "half",
        )
        .await;
        eprintln!("{}", r.human());
        steps.push(r);
    }
    shared.stop.store(true, Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let first_error = shared.first_error.lock().unwrap().clone();
    Ok(Outcome {
        steps,
        max_held_per_s: max_held,
        reconnects: shared.reconnects.load(Relaxed),
        first_error,
        connect_secs,
    })
}

/// Offer `rate` sends/s for `secs`, drain, and collect.
async fn step(
    spec: &Spec,
    shared: &Shared,
    probe: &NodeProbe,
    n: usize,
    rate: u64,
    secs: u64,
    kind: &'static str,
) -> StepResult {
    let meter = CpuMeter::start(probe);
    let began = Instant::now();
    shared.rate_milli.store(rate * 1000 / n as u64, Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    shared.rate_milli.store(0, Relaxed);
    // Drain: every send answered and every delivery in, or 10 s.
    let drain_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain_until {
        let sent = shared.sent.load(Relaxed);
        let answered =
            shared.acked.load(Relaxed) + shared.errors.load(Relaxed) + shared.lost.load(Relaxed);
        let want = shared.acked.load(Relaxed) * spec.deliveries_per_send;
        if answered >= sent && shared.delivered.load(Relaxed) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = meter.read(probe);
    let (deliver, ack, answer) = collect(shared, n).await;
    let take = |c: &AtomicU64| c.swap(0, Relaxed);
    let (sent, acked, delivered) = (
        take(&shared.sent),
        take(&shared.acked),
        take(&shared.delivered),
    );
    let (errors, lost, unsent) = (
        take(&shared.errors),
        take(&shared.lost),
        take(&shared.unsent),
    );
    let (reads, read_frames) = (take(&shared.reads), take(&shared.read_frames));
    // Reads are offered too but answer nothing: an operation is done when it was acked, or
    // when it was a read and went out (reads are not exactly `--read-pct` of a step's
    // operations: the fixed sequence of shares is per socket, and a step ends mid-sequence).
    let done = acked + reads;
    let offered = rate as f64 * secs as f64;
    let deliver = Latency::of(&deliver);
    let held = done as f64 / elapsed >= 0.95 * rate as f64
        && done as f64 >= 0.95 * offered
        && acked as f64 >= 0.95 * sent as f64
        && deliver.p99_ms <= spec.p99_limit_ms
        && (errors + lost) as f64 <= 0.001 * sent as f64;
    StepResult {
        kind,
        offered_per_s: rate,
        secs: report::round2(elapsed),
        sent,
        acked,
        delivered,
        errors,
        lost,
        unsent,
        acked_per_s: (acked as f64 / elapsed).round(),
        delivered_per_s: (delivered as f64 / elapsed).round(),
        deliver,
        ack: Latency::of(&ack),
        answer: Latency::of(&answer),
        cpu,
        held,
        reads,
        read_frames,
    }
}

/// Close the current epoch: every socket adds its histograms into the shared pair (each
/// checks at least every 20 ms), then take the pair.
async fn collect(shared: &Shared, n: usize) -> Hists {
    shared.flushed.store(0, Relaxed);
    shared.epoch.fetch_add(1, Relaxed);
    let until = Instant::now() + Duration::from_secs(5);
    while shared.flushed.load(Relaxed) < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut h = shared.hists.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::replace(&mut *h, new_hists())
}

/// Deliver, ack, answer (ack or error) latencies.
type Hists = (Histogram<u64>, Histogram<u64>, Histogram<u64>);

fn new_hists() -> Hists {
    (report::new_hist(), report::new_hist(), report::new_hist())
}

/// The shortest sleep of a sender between batches: at high rates it sends what fell due
/// in that time in one write.
const MIN_TICK: Duration = Duration::from_millis(1);
/// How late a send may go out, against its due time, and still be stamped with the time it
/// was written (the tool's timers have millisecond granularity); a later one is stamped
/// with its due time, so the wait that held it back counts against the node.
const SLACK_NS: u64 = 2_000_000;
/// The longest, so a socket notices a new step or epoch quickly.
const MAX_TICK: Duration = Duration::from_millis(20);

/// One socket for its whole life: connect (again), send paced, read, flush histograms at
/// each epoch.
async fn participant(
    idx: usize,
    p: Participant,
    dialer: Dialer,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    spec: Spec,
) {
    let local = Mutex::new(new_hists());
    let last_inbox = AtomicU64::new(0);
    let mut ws_url: Option<String> = None;
    let mut counted = false;
    let mut my_epoch = shared.epoch.load(Relaxed);
    let mut due_ns: Option<u64> = None;
    let mut counter = 0u64;
    let seen = Seen::default();
    let channel = match &p.target {
        Target::To(peer) => mix::dm(&p.user.user_id, peer),
        Target::Channel(ch) => ch.clone(),
    };
    let to_json = |cmid: &str, text: &str| match &p.target {
        Target::To(user) => {
            json!({"type": "send", "client_msg_id": cmid, "to": user, "text": text}).to_string()
        }
        Target::Channel(ch) => {
            json!({"type": "send", "client_msg_id": cmid, "channel": ch, "text": text}).to_string()
        }
    };
    let flush_epoch = |my_epoch: &mut u64| {
        let e = shared.epoch.load(Relaxed);
        if e != *my_epoch {
            let mut mine = local.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = shared.hists.lock().unwrap_or_else(|p| p.into_inner());
            let _ = all.0.add(&mine.0);
            let _ = all.1.add(&mine.1);
            let _ = all.2.add(&mine.2);
            mine.0.reset();
            mine.1.reset();
            mine.2.reset();
            *my_epoch = e;
            shared.flushed.fetch_add(1, Relaxed);
        }
    };

    while !shared.stop.load(Relaxed) {
        let dialled = {
            let _permit = if counted {
                None
            } else {
                gate.acquire().await.ok()
            };
            match &ws_url {
                Some(url) => dialer
                    .dial(url, &p.user.token, idx)
                    .await
                    .map(|w| (w, url.clone())),
                None => dialer.assign_and_dial(&p.user, idx).await,
            }
        };
        let (mut socket, _url) = match dialled {
            Ok(x) => x,
            Err(e) => {
                shared.note_error(format!("{e:#}"));
                ws_url = None;
                flush_epoch(&mut my_epoch);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if counted {
            shared.reconnects.fetch_add(1, Relaxed);
            let after = last_inbox.load(Relaxed);
            let sync = json!({"type": "sync", "after": after, "limit": 1000}).to_string();
            let _ = socket.send(Message::Text(sync.into())).await;
        } else {
            counted = true;
            shared.connected.fetch_add(1, Relaxed);
        }
        let (mut sink, mut stream) = socket.split();
        let unacked = AtomicU64::new(0);
        let redirect: Mutex<Option<String>> = Mutex::new(None);

        let writer = async {
            loop {
                if shared.stop.load(Relaxed) {
                    return;
                }
                flush_epoch(&mut my_epoch);
                let rate_milli = shared.rate_milli.load(Relaxed);
                if rate_milli == 0 {
                    due_ns = None;
                    tokio::time::sleep(MAX_TICK).await;
                    continue;
                }
                let interval = (1e12 / rate_milli as f64) as u64;
                let now = clock::now_ns();
                // A new rate starts each socket at its own phase within one interval, so
                // the sockets do not send in lockstep bursts (the offered load is smooth).
                let phase = (idx as f64 * 0.618_033_988_75).fract();
                let mut due = due_ns.unwrap_or(now + (phase * interval as f64) as u64);
                // More than a second behind: those sends are not offered at all.
                if due + 1_000_000_000 < now {
                    let skip = (now - 1_000_000_000 - due) / interval;
                    shared.unsent.fetch_add(skip, Relaxed);
                    due += skip * interval;
                }
                let mut batch = 0;
                while due <= now && unacked.load(Relaxed) < spec.max_unacked && batch < 256 {
                    counter += 1;
                    // Up to SLACK late is the tool's timer, not the node: stamp the send
                    // time. Later than that the socket was held back: stamp the due time.
                    let stamp = if now - due > SLACK_NS { due } else { now };
                    let text = ws::stamped_text(stamp, spec.text_chars);
                    let (op, json) = match &spec.mix {
                        None => (
                            Op::Send,
                            to_json(&ws::stamped_cmid(idx, counter, stamp), &text),
                        ),
                        Some(m) => {
                            let op = mix::pick(m, counter, &seen);
                            let cmid = mix::cmid(&op, idx, counter, stamp);
                            let json = mix::frame(&op, &channel, &cmid, &text)
                                .unwrap_or_else(|| to_json(&cmid, &text));
                            (op, json)
                        }
                    };
                    if sink.feed(Message::Text(json.into())).await.is_err() {
                        return;
                    }
                    if let Op::Read(_) = op {
                        shared.reads.fetch_add(1, Relaxed);
                        due += interval;
                        batch += 1;
                        continue;
                    }
                    unacked.fetch_add(1, Relaxed);
                    shared.sent.fetch_add(1, Relaxed);
                    due += interval;
                    batch += 1;
                }
                due_ns = Some(due);
                if batch > 0 && sink.flush().await.is_err() {
                    return;
                }
                let now = clock::now_ns();
                let wait = Duration::from_nanos(due.saturating_sub(now)).clamp(MIN_TICK, MAX_TICK);
                tokio::time::sleep(wait).await;
            }
        };
        let reader = async {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else {
                    if matches!(msg, Message::Close(_)) {
                        return;
                    }
                    continue;
                };
                let frame = match Frame::decode(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        shared.note_error(format!("{e:#}"));
                        continue;
                    }
                };
                match frame.kind.as_ref() {
                    "ack" => {
                        unacked.fetch_sub(1, Relaxed);
                        shared.acked.fetch_add(1, Relaxed);
                        if let Some(ns) =
                            frame.client_msg_id.as_deref().and_then(ws::read_cmid_stamp)
                        {
                            let mut h = local.lock().unwrap_or_else(|p| p.into_inner());
                            let us = clock::since_us(ns);
                            report::record(&mut h.1, us);
                            report::record(&mut h.2, us);
                        }
                        if let Some(id) = frame.inbox_id {
                            last_inbox.fetch_max(id, Relaxed);
                        }
                        if let (Some(cmid), Some(seq)) = (frame.client_msg_id.as_deref(), frame.seq)
                        {
                            seen.acked(cmid, seq);
                        }
                    }
                    "message" => {
                        shared.delivered.fetch_add(1, Relaxed);
                        if let Some(seq) = frame.seq {
                            seen.received(seq, frame.item.is_none());
                        }
                        if let Some(ns) = frame.text.as_deref().and_then(ws::read_stamp) {
                            let mut h = local.lock().unwrap_or_else(|p| p.into_inner());
                            report::record(&mut h.0, clock::since_us(ns));
                        }
                        if let Some(id) = frame.inbox_id {
                            last_inbox.fetch_max(id, Relaxed);
                        }
                    }
                    "sync" => {
                        // After a reconnect: what live delivery missed (no latency: it
                        // was not delivered live).
                        for item in frame.items.unwrap_or_default() {
                            if item.inbox_id > last_inbox.load(Relaxed) {
                                shared.delivered.fetch_add(1, Relaxed);
                                last_inbox.fetch_max(item.inbox_id, Relaxed);
                            }
                        }
                    }
                    "error" => {
                        if let Some(cmid) = frame.client_msg_id.as_deref() {
                            unacked.fetch_sub(1, Relaxed);
                            if let Some(ns) = ws::read_cmid_stamp(cmid) {
                                let mut h = local.lock().unwrap_or_else(|p| p.into_inner());
                                report::record(&mut h.2, clock::since_us(ns));
                            }
                        }
                        shared.note_error(format!(
                            "{}: {}",
                            frame.code.as_deref().unwrap_or("?"),
                            frame.message.as_deref().unwrap_or("")
                        ));
                    }
                    "reconnect" => {
                        *redirect.lock().unwrap() = frame.ws_url.clone();
                        return;
                    }
                    "read" => {
                        shared.read_frames.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
            }
        };
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
        if shared.stop.load(Relaxed) {
            break;
        }
        // The connection ended under us: whatever it had unacked is lost to this run.
        shared.lost.fetch_add(unacked.load(Relaxed), Relaxed);
        // Where `reconnect` pointed, else ask `/v1/assign` again.
        ws_url = redirect.lock().unwrap().take();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still answer the collector if it is waiting on this socket.
    flush_epoch(&mut my_epoch);
}
