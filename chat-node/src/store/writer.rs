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
//! load drops. Appends (the second stage of items another node already sequenced) are not
//! shed for waiting: they finish what was started, and only the bounded queue refuses them.
//!
//! # Layout
//!
//! | module | role |
//! | --- | --- |
//! | `op` | the operations ([`Op`]) and their answers |
//! | `units` | the owned units' state in memory (channel heads and members, users' inbox heads and channel entries), bounded, loaded from the store |
//! | `apply` | one operation applied to the state and to the batch being built: sends and the second stage's appends |
//! | `targets` | items about another message (edit, delete, reaction): checks and the target's aggregate |
//! | `groups` | group changes and their system items |
//! | `marks` | read markers and blocks |
//! | `durable` | the durability stage: one sync per round, then the answers |
//! | [`fence`] | in a cluster: who owns what, and the fence that stops a node that lost a unit |

mod apply;
mod durable;
pub mod fence;
mod groups;
mod marks;
mod op;
mod targets;
mod units;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::index as store_index;
use super::{Batch, Kv, StoreError};
use crate::protocol::ApiError;
use fence::{SharedOwnership, Standing};

pub use op::{
    AppendItem, AppendOp, AppendOutcome, BlockOp, Counted, GroupEdit, GroupOp, GroupOutcome,
    Member, MemberAppend, Op, ReadOp, ReadOutcome, Reply, SendOp, SendOutcome, WriteError,
};
pub(crate) use units::inbox_head;

/// Users whose channel index one batch writes at most (the rest wait for the next).
const FLUSH_USERS: usize = 512;

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
    reply: oneshot::Sender<Result<Reply, WriteError>>,
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
    /// Start the writer of a single node over `kv`: it owns everything. Must be called
    /// inside a Tokio runtime.
    pub fn spawn(kv: Arc<dyn Kv>, config: WriterConfig, hooks: WriterHooks) -> Self {
        Self::start(kv, config, hooks, None)
    }

    /// Start the writer of a cluster's node: it owns what `ownership` says, and writes under
    /// its fence ([`fence`]).
    pub fn spawn_clustered(
        kv: Arc<dyn Kv>,
        config: WriterConfig,
        hooks: WriterHooks,
        ownership: SharedOwnership,
    ) -> Self {
        Self::start(kv, config, hooks, Some(ownership))
    }

    fn start(
        kv: Arc<dyn Kv>,
        config: WriterConfig,
        hooks: WriterHooks,
        ownership: Option<SharedOwnership>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let poisoned = Arc::new(AtomicBool::new(false));
        let durable = durable::spawn(kv.clone(), poisoned.clone(), hooks.clone());
        let task = Task {
            units: units::Units::new(kv.clone(), config.cache, ownership.is_some()),
            kv,
            config,
            durable,
            poisoned: poisoned.clone(),
            hooks: hooks.clone(),
            ownership,
            standing: None,
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

    /// Queue `op` now; the answer comes once it is durable (or refused). Operations queued
    /// one after the other are applied in that order.
    pub fn enqueue(&self, op: Op) -> impl Future<Output = Result<Reply, WriteError>> + use<> {
        let queued = if self.is_poisoned() {
            Err(poisoned())
        } else {
            let (reply, answer) = oneshot::channel();
            let queued = Queued {
                op,
                reply,
                queued_at: Instant::now(),
            };
            match self.tx.try_send(queued) {
                Ok(()) => Ok(answer),
                Err(_) => {
                    self.shed();
                    Err(overloaded())
                }
            }
        };
        async move {
            match queued {
                Ok(answer) => answer.await.map_err(|_| {
                    WriteError::Api(ApiError::unavailable("the writer stopped; retry shortly"))
                })?,
                Err(e) => Err(WriteError::Api(e)),
            }
        }
    }

    /// Queue `op` and wait until it is durable (or refused).
    pub async fn submit(&self, op: Op) -> Result<Reply, WriteError> {
        self.enqueue(op).await
    }

    /// Store a message; see [`Op::Send`].
    pub async fn send(&self, op: SendOp) -> Result<SendOutcome, WriteError> {
        match self.submit(Op::Send(op)).await? {
            Reply::Sent(outcome) => Ok(outcome),
            _ => Err(unexpected("a send")),
        }
    }

    /// Append items to inboxes this node owns; see [`Op::Append`].
    pub async fn append(&self, op: AppendOp) -> Result<AppendOutcome, WriteError> {
        match self.submit(Op::Append(op)).await? {
            Reply::Appended(outcome) => Ok(outcome),
            _ => Err(unexpected("an append")),
        }
    }

    /// Write every user's channel index (at shutdown, so that the next start replays no
    /// inbox).
    pub async fn flush(&self) -> Result<(), WriteError> {
        self.submit(Op::Flush).await.map(|_| ())
    }

    /// Run a group change; see [`Op::Group`].
    pub async fn group_change(&self, op: GroupOp) -> Result<GroupOutcome, WriteError> {
        match self.submit(Op::Group(op)).await? {
            Reply::Group(outcome) => Ok(outcome),
            _ => Err(unexpected("a group change")),
        }
    }

    /// Move a read marker; see [`Op::Read`].
    pub async fn read(&self, op: ReadOp) -> Result<ReadOutcome, WriteError> {
        match self.submit(Op::Read(op)).await? {
            Reply::Read(outcome) => Ok(outcome),
            _ => Err(unexpected("a read marker")),
        }
    }

    /// Block or unblock; see [`Op::Block`]. Returns whether anything changed.
    pub async fn block(&self, op: BlockOp) -> Result<bool, WriteError> {
        match self.submit(Op::Block(op)).await? {
            Reply::Blocked(changed) => Ok(changed),
            _ => Err(unexpected("a block")),
        }
    }

    fn shed(&self) {
        if let Some(hook) = &self.hooks.on_shed {
            hook();
        }
    }
}

fn unexpected(what: &str) -> WriteError {
    WriteError::Api(ApiError::internal(format!(
        "the writer answered {what} with something else"
    )))
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
    /// In a cluster: who owns what.
    ownership: Option<SharedOwnership>,
    /// In a cluster: the epoch this node adopted and the fence guard its batches carry.
    standing: Option<Standing>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let max_ops = self.config.max_ops.min(self.kv.max_batch_ops() / 4).max(1);
        let mut backlog: VecDeque<Queued> = VecDeque::new();
        let mut taken = Vec::new();
        loop {
            if backlog.is_empty() {
                // Idle with index changes unwritten: write them when they are due.
                let wait = self.units.unwritten.front().map(|(since, _)| {
                    (*since + store_index::FLUSH_AFTER).saturating_duration_since(Instant::now())
                });
                let received = match wait {
                    Some(wait) => {
                        match tokio::time::timeout(wait, rx.recv_many(&mut taken, max_ops)).await {
                            Ok(n) => n,
                            Err(_) => {
                                self.round(&mut backlog, max_ops).await;
                                continue;
                            }
                        }
                    }
                    None => rx.recv_many(&mut taken, max_ops).await,
                };
                if received == 0 {
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
                    let _ = q.reply.send(Err(WriteError::Api(poisoned())));
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
            // Appends are the second stage of items already sequenced (and flushes are
            // the node's own): shedding them only leaves gaps that every later item of the
            // channel must repair, which kept a cluster overloaded after the load dropped.
            // New work is what is shed.
            if !matches!(q.op, Op::Append(_) | Op::Flush)
                && started.duration_since(q.queued_at) > self.config.shed_after
            {
                if let Some(hook) = &self.hooks.on_shed {
                    hook();
                }
                let _ = q.reply.send(Err(WriteError::Api(overloaded())));
                continue;
            }
            live.push(q);
        }
        if live.is_empty() && self.units.unwritten.is_empty() && self.units.pending.is_empty() {
            return;
        }
        // In a cluster, the round works under one snapshot of the view, adopted (fenced)
        // before anything is read or written under it.
        let view = match self.stand().await {
            Ok(view) => view,
            Err(e) => {
                for q in live {
                    let _ = q.reply.send(Err(WriteError::Api(e.clone())));
                }
                return;
            }
        };
        if let Err(e) = self.units.prefetch(live.iter().map(|q| &q.op)).await {
            for q in live {
                let _ = q.reply.send(Err(WriteError::Api(e.clone())));
            }
            return;
        }
        // Index changes that have waited long enough ride along (all of them when asked).
        let all = live.iter().any(|q| matches!(q.op, Op::Flush));
        self.units.flush_due(
            started,
            all,
            if all { usize::MAX } else { FLUSH_USERS },
            self.kv.max_batch_ops() / 2,
        );
        let pending = std::mem::take(&mut self.units.pending);
        let mut batch = apply::BatchBuilder::new(self.kv.max_batch_ops(), pending);
        let mut answers = Vec::with_capacity(live.len());
        let mut live = live.into_iter();
        let mut rest = Vec::new();
        for q in live.by_ref() {
            let writes = apply::writes_of(&self.units, &q.op);
            if !batch.fits(writes, self.config.max_bytes) {
                rest.push(q);
                break;
            }
            let result = apply::apply(&mut self.units, &mut batch, q.op, view.as_deref());
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
        match self.write(&batch).await {
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
                tracing::warn!(error = ?e, "the write path could not apply a batch");
                for (reply, _) in answers {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// In a cluster: the view this round works under, adopted first when it moved (the
    /// other nodes fenced, the memory of units forgotten). `None` on a single node.
    async fn stand(&mut self) -> Result<Option<Arc<dyn fence::OwnershipView>>, ApiError> {
        let Some(ownership) = &self.ownership else {
            return Ok(None);
        };
        let view = ownership.current();
        if self.standing.as_ref().map(|s| s.view_epoch) != Some(view.epoch()) {
            self.standing = None;
            self.units.clear();
            match fence::adopt(self.kv.as_ref(), ownership.node_id(), view.as_ref()).await? {
                Ok(standing) => {
                    tracing::info!(
                        epoch = standing.epoch,
                        "the write path adopted a new membership epoch"
                    );
                    self.standing = Some(standing);
                }
                Err(higher) => {
                    tracing::info!(
                        epoch = view.epoch(),
                        fence = higher,
                        "another node fenced this one at a newer epoch than this node's view: waiting for the view to catch up"
                    );
                    return Err(behind());
                }
            }
        }
        Ok(Some(view))
    }

    /// Apply a batch, under this node's fence in a cluster. A fence raised by a node that
    /// adopted the same or an older epoch leaves this node's standing intact (the batch is
    /// applied under the new value); one raised past it ends the standing: nothing is
    /// written, and the units are forgotten.
    async fn write(&mut self, batch: &Batch) -> Result<(), WriteError> {
        let Some(standing) = &self.standing else {
            if self.ownership.is_some() {
                return Err(WriteError::Api(behind()));
            }
            return self.kv.apply(batch, None).await.map_err(WriteError::from);
        };
        match self.kv.apply(batch, Some(&standing.guard)).await {
            Err(StoreError::Conflict) => {}
            other => return other.map_err(WriteError::from),
        }
        let (view_epoch, epoch) = (standing.view_epoch, standing.epoch);
        let node_id = self
            .ownership
            .as_ref()
            .map_or("", |o| o.node_id())
            .to_owned();
        let fence = fence::read_own(self.kv.as_ref(), &node_id).await?;
        if fence > epoch {
            tracing::info!(
                epoch,
                fence,
                "fenced out by a node at a newer epoch: this node writes nothing until its view catches up"
            );
            self.standing = None;
            return Err(WriteError::NotOwner);
        }
        let guard = super::Guard {
            key: fence::fence_key(&node_id),
            expected: Some(fence.to_be_bytes().to_vec()),
        };
        let result = self.kv.apply(batch, Some(&guard)).await;
        self.standing = Some(Standing {
            view_epoch,
            epoch,
            guard,
        });
        result.map_err(|e| match e {
            StoreError::Conflict => WriteError::NotOwner,
            e => WriteError::from(e),
        })
    }
}

fn behind() -> ApiError {
    ApiError::unavailable(
        "this node's view of the cluster is behind another node's; nothing was written, retry shortly",
    )
}
