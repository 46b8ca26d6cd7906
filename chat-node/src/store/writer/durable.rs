//! The durability stage: a batch's operations are answered only once the batch is durable.
//! Each round takes every applied batch waiting, makes them durable with one
//! [`Kv::sync`], then answers them all; meanwhile the writer builds the next batch. A sync
//! that fails answers every waiting operation `unavailable` and stops the writer: the store
//! may have lost what it was given, and acknowledging anything after that could acknowledge
//! a loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Reply, WriteError, WriterHooks, poisoned};
use crate::store::Kv;

/// Batches applied but not yet durable, at most.
pub(super) const IN_FLIGHT: usize = 8;

/// Where an operation's answer goes.
pub(super) type Answer = oneshot::Sender<Result<Reply, WriteError>>;

/// One applied batch, waiting to be durable.
pub(super) struct Round {
    pub answers: Vec<(Answer, Result<Reply, WriteError>)>,
    pub started: Instant,
    pub ops: usize,
    pub writes: usize,
}

/// Start the stage. The writer waits when [`IN_FLIGHT`] batches are waiting already, so a
/// stalled disk backs the queue up into the writer's shedding instead of memory.
pub(super) fn spawn(
    kv: Arc<dyn Kv>,
    poisoned_flag: Arc<AtomicBool>,
    hooks: WriterHooks,
) -> mpsc::Sender<Round> {
    let (tx, mut rx) = mpsc::channel::<Round>(IN_FLIGHT);
    tokio::spawn(async move {
        let mut rounds = Vec::with_capacity(IN_FLIGHT);
        while rx.recv_many(&mut rounds, IN_FLIGHT).await > 0 {
            match kv.sync().await {
                Ok(()) => {
                    for round in rounds.drain(..) {
                        if let Some(hook) = &hooks.on_batch {
                            hook(round.ops, round.writes, round.started.elapsed());
                        }
                        for (reply, answer) in round.answers {
                            let _ = reply.send(answer);
                        }
                    }
                }
                Err(e) => {
                    poisoned_flag.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, "the store failed to make a batch durable: nothing of it is acknowledged, and the node writes nothing more until it restarts");
                    for round in rounds.drain(..) {
                        for (reply, _) in round.answers {
                            let _ = reply.send(Err(WriteError::Api(poisoned())));
                        }
                    }
                }
            }
        }
    });
    tx
}
