//! Calls between nodes that need an answer: the write path's routing in a cluster (a send
//! goes to its channel's owner; the owner hands the stored items to the owners of the
//! members' inboxes). Unlike the links' fire-and-forget events, an acknowledgement waits on
//! these, so they are never dropped silently: a call that cannot be delivered is answered
//! with an error the caller acts on (retry elsewhere, or `unavailable`).
//!
//! Calls to one peer are batched: a sender task per peer takes what is queued (up to a
//! batch's bytes), posts it as one request to the peer's `/internal/v1/rpc` over the
//! transport (mutual TLS, [`super::transport`]), and hands each answer back, in order; a few
//! batches may be in flight at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Cluster;
use super::transport::Transport;
use crate::protocol::ApiError;
use crate::protocol::types::{Ack, Message};
use crate::store::GroupRecord;
use crate::store::writer::{
    AppendOp, AppendOutcome, BlockOp, GroupOp, ReadOp, ReadOutcome, SendOp,
};

/// A batch stops growing past this many bytes (after its first call).
const BATCH_BYTES: usize = 1024 * 1024;
/// Calls queued per peer before new ones are refused.
const QUEUE: usize = 16_384;
/// Batches in flight to one peer at once, on the lane of calls that wait on nothing but
/// the callee's writer.
const IN_FLIGHT: usize = 4;
/// The same on the lane of calls that wait on other calls (a send waits for its second
/// stage): a batch is answered when its slowest call is, so a few slow sends must not hold
/// every slot (with 4, one stalled second stage stopped all sends between two nodes).
const IN_FLIGHT_WAITING: usize = 64;
/// Bound on one batch's request and answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The same for calls that wait on other calls: past the second stage's own deadline
/// (15 s), so that a caller does not give up on, and resend, a send its owner still works on.
const TIMEOUT_WAITING: Duration = Duration::from_secs(20);

/// A call to another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// Run a send at its channel's owner (the receiving node, as the caller sees it).
    Sequence { op: SendOp },
    /// Append a channel's items to inboxes the receiving node owns, and deliver them live;
    /// `messages` are the items as clients see them, one per item.
    Append {
        op: AppendOp,
        messages: Vec<Message>,
    },
    /// A group change at the group channel's owner (which also hands its system item to
    /// every member's inbox).
    Group { change: GroupOp },
    /// Move a read marker at the owner of the reader's inbox.
    Read { op: ReadOp },
    /// Block or unblock at the owner of the two users' one-on-one channel.
    Block { op: BlockOp },
}

impl Call {
    /// Whether answering it waits on other calls (so it must not share their lane): a send
    /// and a group change wait on their items' appends; appends, read markers and blocks
    /// wait on nothing but the writer.
    fn waits_on_calls(&self) -> bool {
        !matches!(
            self,
            Call::Append { .. } | Call::Read { .. } | Call::Block { .. }
        )
    }
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Acked {
        ack: Ack,
    },
    Appended {
        outcome: AppendOutcome,
    },
    Group {
        group: GroupRecord,
    },
    Read {
        outcome: ReadOutcome,
    },
    Blocked {
        changed: bool,
    },
    /// The receiving node does not own what the call is about: ask the owner.
    NotOwner,
    /// Refused or failed as a client would see it.
    Refused {
        error: ApiError,
    },
}

/// A batch of calls, as posted to `/internal/v1/rpc`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallBatch {
    pub from: String,
    pub calls: Vec<Call>,
}

/// Its answers, in the order of the calls.
#[derive(Debug, Serialize, Deserialize)]
pub struct AnswerBatch {
    pub answers: Vec<Answer>,
}

type Pending = (String, oneshot::Sender<Result<Answer, String>>);

struct Peer {
    url: String,
    tx: mpsc::Sender<Pending>,
}

/// This node's calls to its peers.
pub struct Rpc {
    cluster: Arc<Cluster>,
    transport: Arc<Transport>,
    /// Per (peer, lane: whether its calls wait on other calls).
    peers: Mutex<HashMap<(String, bool), Peer>>,
}

impl Rpc {
    /// Calls over `transport` (the links' one).
    pub fn new(cluster: Arc<Cluster>, transport: Arc<Transport>) -> Self {
        Self {
            cluster,
            transport,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Call `node_id` and wait for its answer. `Err` says why the call got no answer (the
    /// node is not a live member, the link failed, the queue is full); the callee may or may
    /// not have acted on it, so what is called must be safe to call again.
    pub async fn call(&self, node_id: &str, call: &Call) -> Result<Answer, String> {
        let body = serde_json::to_string(call).map_err(|e| format!("encoding a call: {e}"))?;
        let tx = self.queue(node_id, call.waits_on_calls())?;
        let (answer_tx, answer) = oneshot::channel();
        tx.try_send((body, answer_tx))
            .map_err(|_| format!("the calls to {node_id} are backed up"))?;
        answer
            .await
            .map_err(|_| format!("the link to {node_id} closed"))?
    }

    fn queue(&self, node_id: &str, lane: bool) -> Result<mpsc::Sender<Pending>, String> {
        // The write path's owners come from etcd's records, believed yet or not: the call
        // goes over mutual TLS that accepts only a certificate naming `node_id`.
        let member = self
            .cluster
            .owners()
            .member(node_id)
            .cloned()
            .ok_or_else(|| format!("node {node_id} is not a live member"))?;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (node_id.to_owned(), lane);
        if let Some(peer) = peers.get(&key)
            && peer.url == member.internal_url
            && !peer.tx.is_closed()
        {
            return Ok(peer.tx.clone());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = format!(
            "{}/internal/v1/rpc",
            member.internal_url.trim_end_matches('/')
        );
        tokio::spawn(run_peer(
            self.transport.client(node_id),
            url,
            self.cluster.node_id().to_owned(),
            rx,
            lane,
        ));
        peers.insert(
            key,
            Peer {
                url: member.internal_url.clone(),
                tx: tx.clone(),
            },
        );
        Ok(tx)
    }

    /// Forget peers that left (their tasks end once their queues are empty).
    pub fn retain_members(&self) {
        let members = self.cluster.records();
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _), _| members.contains_key(id));
    }
}

/// One peer's sender: take what is queued (up to a batch), post it, answer each call.
async fn run_peer(
    http: reqwest::Client,
    url: String,
    from: String,
    mut rx: mpsc::Receiver<Pending>,
    waiting: bool,
) {
    let head = format!("{{\"from\":{},\"calls\":[", serde_json::Value::String(from));
    let (in_flight, timeout) = if waiting {
        (IN_FLIGHT_WAITING, TIMEOUT_WAITING)
    } else {
        (IN_FLIGHT, TIMEOUT)
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let mut body = String::with_capacity(head.len() + first.0.len() + 2);
        body.push_str(&head);
        body.push_str(&first.0);
        let mut waiting = vec![first.1];
        while body.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok((call, answer)) => {
                    body.push(',');
                    body.push_str(&call);
                    waiting.push(answer);
                }
                Err(_) => break,
            }
        }
        body.push_str("]}");
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match post(&http, &url, body, timeout).await {
                Ok(batch) if batch.answers.len() == waiting.len() => {
                    for (answer, tx) in batch.answers.into_iter().zip(waiting) {
                        let _ = tx.send(Ok(answer));
                    }
                }
                Ok(batch) => {
                    let e = format!(
                        "{url} answered {} calls with {} answers",
                        waiting.len(),
                        batch.answers.len()
                    );
                    for tx in waiting {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    tracing::debug!(url = %url, error = %e, "a batch of calls failed");
                    for tx in waiting {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// An error with its causes, for the log (reqwest's own text hides them).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: String,
    timeout: Duration,
) -> Result<AnswerBatch, String> {
    let response = tokio::time::timeout(
        timeout,
        http.post(url)
            // The client's own bound is the short one (5 s): this request's overrides it.
            .timeout(timeout)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    .map_err(|e| format!("{url}: {}", chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let bytes = tokio::time::timeout(timeout, response.bytes())
        .await
        .map_err(|_| format!("{url}: the answer did not arrive within {timeout:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: an unreadable answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_round_trip_as_json() {
        let call = Call::Group {
            change: GroupOp {
                caller: "a".into(),
                device: "d".into(),
                group_id: "g".into(),
                change: crate::store::writer::GroupEdit::Remove { user: "b".into() },
                ts: 1,
                push_due: None,
            },
        };
        let json = serde_json::to_string(&CallBatch {
            from: "n1".into(),
            calls: vec![call],
        })
        .unwrap();
        let back: CallBatch = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            &back.calls[0],
            Call::Group { change: GroupOp { change: crate::store::writer::GroupEdit::Remove { user }, .. } } if user == "b"
        ));
        let answer = serde_json::to_string(&Answer::NotOwner).unwrap();
        assert_eq!(answer, r#"{"answer":"not_owner"}"#);
    }
}
