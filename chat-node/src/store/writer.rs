//! The write path: one writer per node for every counter the node owns (each channel's
//! `seq`, each user's `inbox_id`), many sends per durable commit.
//!
//! Sends and group changes are queued to one writer task. It holds the counters in memory
//! (loaded from the store on first use), takes everything queued (up to a bound in
//! operations and bytes), turns it into one blind [`Batch`] of writes, applies it with one
//! [`Kv::apply`], and hands the batch to the durability stage, which waits for one
//! [`Kv::sync`] (one fsync on the embedded store) and only then answers every operation of
//! the batch. While one batch waits for its fsync the writer already builds the next, so
//! the disk and the CPU work side by side. Nothing else writes the keys the writer writes
//! (messages, inbox pointers, channel heads, send dedupe records, push outbox entries,
//! group records after creation), so it never conflicts and never retries: there is no
//! sleeping retry loop on this path. See docs/storage.md ("The write path").
//!
//! Overload is shed, not queued without end: the queue is bounded
//! ([`WriterConfig::queue`]), and an operation that waited longer than
//! [`WriterConfig::shed_after`] is answered `unavailable` without being written, so a client
//! learns within about a second that it should retry, and the node recovers as soon as the
//! load drops.
//!
//! # Layout
//!
//! | module | role |
//! | --- | --- |
//! | `units` | the owned units' state in memory (channel heads and members, users' inbox heads), bounded, loaded from the store |
//! | `apply` | one operation applied to the state and to the batch being built |
//! | `durable` | the durability stage: one sync per round, then the answers |

mod apply;
mod durable;
mod units;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::records::GroupRecord;
use super::{Batch, Kv, SendOutcome};
use crate::protocol::ApiError;

pub use apply::SendOp;
pub(crate) use units::inbox_head;

/// Tunables of the write path.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Operations waiting for the writer before new ones are refused `unavailable`.
    pub queue: usize,
    /// Most operations in one batch.
    pub max_ops: usize,
    /// A batch stops growing past this many bytes of writes (after its first operation).
    pub max_bytes: usize,
    /// An operation that waited longer than this is answered `unavailable`, unwritten.
    pub shed_after: Duration,
    /// Channels and users whose state is kept in memory (each); the least recently used
    /// beyond are forgotten and reloaded on their next use.
    pub cache: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue: 16_384,
            max_ops: 1_024,
            max_bytes: 8 * 1024 * 1024,
            shed_after: Duration::from_millis(500),
            cache: 200_000,
        }
    }
}

/// What the writer is asked to do.
#[derive(Debug)]
pub enum Op {
    /// Store a message.
    Send(SendOp),
    /// `caller` adds `user` to the group (a member may add; adding a member is a no-op).
    AddMember {
        caller: String,
        group_id: String,
        user: String,
        max_members: usize,
    },
    /// The owner removes `user`, or a member leaves (`caller == user`).
    RemoveMember {
        caller: String,
        group_id: String,
        user: String,
    },
}

/// What an operation did, once it is durable.
#[derive(Debug)]
pub enum Reply {
    Sent(SendOutcome),
    Group(GroupRecord),
}

/// Called per durable batch with its operations, its writes and how long it took.
pub type BatchHook = Arc<dyn Fn(usize, usize, Duration) + Send + Sync>;

/// Counts the writer reports (for `/metrics`); set by the server.
#[derive(Clone, Default)]
pub struct WriterHooks {
    /// An operation refused because the node is overloaded.
    pub on_shed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// A batch applied: its operations and writes, and how long apply + sync took.
    pub on_batch: Option<BatchHook>,
}

struct Queued {
    op: Op,
    reply: oneshot::Sender<Result<Reply, ApiError>>,
    queued_at: Instant,
}

/// A handle on the node's writer. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Queued>,
    /// Set when a sync failed: the store may have lost what it was given, so nothing more is
    /// written or acknowledged until the node restarts.
    poisoned: Arc<AtomicBool>,
    hooks: WriterHooks,
}

impl Writer {
    /// Start the writer over `kv`. Must be called inside a Tokio runtime.
    pub fn spawn(kv: Arc<dyn Kv>, config: WriterConfig, hooks: WriterHooks) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let poisoned = Arc::new(AtomicBool::new(false));
        let durable = durable::spawn(kv.clone(), poisoned.clone(), hooks.clone());
        let task = Task {
            units: units::Units::new(kv.clone(), config.cache),
            kv,
            config,
            durable,
            poisoned: poisoned.clone(),
            hooks: hooks.clone(),
        };
        tokio::spawn(task.run(rx));
        Self {
            tx,
            poisoned,
            hooks,
        }
    }

    /// Whether a failed sync stopped the writer (the node must restart).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Queue `op` and wait until it is durable (or refused).
    pub async fn submit(&self, op: Op) -> Result<Reply, ApiError> {
        if self.is_poisoned() {
            return Err(poisoned());
        }
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            op,
            reply,
            queued_at: Instant::now(),
        };
        if self.tx.try_send(queued).is_err() {
            self.shed();
            return Err(overloaded());
        }
        answer
            .await
            .map_err(|_| ApiError::unavailable("the writer stopped; retry shortly"))?
    }

    /// Store a message; see [`Op::Send`].
    pub async fn send(&self, op: SendOp) -> Result<SendOutcome, ApiError> {
        match self.submit(Op::Send(op)).await? {
            Reply::Sent(outcome) => Ok(outcome),
            Reply::Group(_) => Err(ApiError::internal(
                "the writer answered a send with a group",
            )),
        }
    }

    /// Run a group change; see [`Op::AddMember`] and [`Op::RemoveMember`].
    pub async fn group_change(&self, op: Op) -> Result<GroupRecord, ApiError> {
        match self.submit(op).await? {
            Reply::Group(group) => Ok(group),
            Reply::Sent(_) => Err(ApiError::internal(
                "the writer answered a group change with a send",
            )),
        }
    }

    fn shed(&self) {
        if let Some(hook) = &self.hooks.on_shed {
            hook();
        }
    }
}

fn overloaded() -> ApiError {
    ApiError::unavailable(
        "the node is overloaded and shed this request; nothing was written, retry shortly",
    )
}

fn poisoned() -> ApiError {
    ApiError::unavailable(
        "the node's store failed to make writes durable and stopped writing; nothing was written, retry on another node or after the node restarts",
    )
}

/// The writer task.
struct Task {
    kv: Arc<dyn Kv>,
    units: units::Units,
    config: WriterConfig,
    durable: mpsc::Sender<durable::Round>,
    poisoned: Arc<AtomicBool>,
    hooks: WriterHooks,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let max_ops = self.config.max_ops.min(self.kv.max_batch_ops() / 4).max(1);
        let mut backlog: VecDeque<Queued> = VecDeque::new();
        let mut taken = Vec::new();
        loop {
            if backlog.is_empty() {
                if rx.recv_many(&mut taken, max_ops).await == 0 {
                    return;
                }
                backlog.extend(taken.drain(..));
            }
            while backlog.len() < max_ops {
                match rx.try_recv() {
                    Ok(q) => backlog.push_back(q),
                    Err(_) => break,
                }
            }
            if self.poisoned.load(Ordering::Relaxed) {
                for q in backlog.drain(..) {
                    let _ = q.reply.send(Err(poisoned()));
                }
                continue;
            }
            self.round(&mut backlog, max_ops).await;
        }
    }

    /// Build, apply and hand over one batch from the front of `backlog`. What does not fit
    /// stays at the front for the next round.
    async fn round(&mut self, backlog: &mut VecDeque<Queued>, max_ops: usize) {
        let started = Instant::now();
        let mut live = Vec::with_capacity(backlog.len().min(max_ops));
        while live.len() < max_ops {
            let Some(q) = backlog.pop_front() else { break };
            if q.reply.is_closed() {
                // Its caller is gone (a closed socket): nothing to answer, nothing to write.
                continue;
            }
            if started.duration_since(q.queued_at) > self.config.shed_after {
                if let Some(hook) = &self.hooks.on_shed {
                    hook();
                }
                let _ = q.reply.send(Err(overloaded()));
                continue;
            }
            live.push(q);
        }
        if live.is_empty() {
            return;
        }
        if let Err(e) = self.units.prefetch(live.iter().map(|q| &q.op)).await {
            for q in live {
                let _ = q.reply.send(Err(e.clone()));
            }
            return;
        }
        let mut batch = apply::BatchBuilder::new(self.kv.max_batch_ops());
        let mut answers = Vec::with_capacity(live.len());
        let mut live = live.into_iter();
        let mut rest = Vec::new();
        for q in live.by_ref() {
            let writes = apply::writes_of(&self.units, &q.op);
            if !batch.fits(writes, self.config.max_bytes) {
                rest.push(q);
                break;
            }
            let result = apply::apply(&mut self.units, &mut batch, q.op);
            answers.push((q.reply, result));
        }
        // What did not fit goes back to the front, in arrival order, ahead of anything newer.
        rest.extend(live);
        for q in rest.into_iter().rev() {
            backlog.push_front(q);
        }
        let ops = answers.len();
        let batch: Batch = batch.finish();
        let writes = batch.len();
        match self.kv.apply(batch, None).await {
            Ok(()) => {
                let round = durable::Round {
                    answers,
                    started,
                    ops,
                    writes,
                };
                if self.durable.send(round).await.is_err() {
                    self.poisoned.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                // Nothing of this batch is in the store: forget the state it moved on, so
                // that the next use reloads what the store holds.
                self.units.clear();
                tracing::warn!(error = %e, "the write path could not apply a batch");
                let error = ApiError::from(e);
                for (reply, _) in answers {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
