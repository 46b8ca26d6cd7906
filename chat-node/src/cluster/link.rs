//! Node-to-node links: live deliveries, presence changes and relayed frames go to the node
//! that holds the recipients' sockets, batched, over long-lived HTTP/1.1 keep-alive
//! connections (one pool per peer, re-dialled by the client on failure).
//!
//! Nothing acked depends on a link: the inbox is the truth and devices `sync`. So a peer's
//! queue is bounded and a batch that cannot be delivered after a few tries is dropped (and
//! counted), never buffered without bound.
//!
//! Links go to a peer's internal listener (`internal_url`) through [`Transport`]: with
//! mutual TLS, each peer's client accepts only that peer's certificate, and the peer checks
//! ours (see [`super::transport`]). Only believed members are peers ([`super::trust`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::transport::Transport;
use super::{Cluster, Member};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::frames::Status;
use crate::protocol::types::Message;

/// Events queued per peer before new ones are dropped.
const QUEUE: usize = 65_536;
/// A batch stops growing past this many bytes (after its first event).
const BATCH_BYTES: usize = 1024 * 1024;
/// Largest body a node accepts on its link routes: one full batch plus one largest event.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// What one node tells another.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A stored message for these recipients (`(user, inbox_id)`) with sockets on the
    /// receiving node; the sender's sending device is skipped.
    Deliver {
        message: Box<Message>,
        recipients: Vec<(String, u64)>,
        sending_device: String,
    },
    /// `user`, whose node is the sender, changed status; tell these contacts.
    Presence {
        user: String,
        status: Status,
        last_seen: Option<i64>,
        to: Vec<String>,
    },
    /// A ready-made frame for these users' sockets (typing, a contact's status).
    Frame { to: Vec<String>, frame: String },
}

/// A batch of events, as posted to `/internal/v1/link`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    pub from: String,
    pub events: Vec<Event>,
}

/// A status question, as posted to `/internal/v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusQuery {
    pub users: Vec<String>,
}

/// Its answer: the users online on the answering node, with their last activity and the
/// devices they are online with.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct StatusAnswer {
    pub online: HashMap<String, i64>,
    #[serde(default)]
    pub devices: HashMap<String, Vec<String>>,
}

/// A user's new home region, as posted to `/internal/v1/home` by the node that took the
/// change. Outside the batched events on purpose: a node of an older version answers 404 to
/// it and keeps every batch it understands.
#[derive(Debug, Serialize, Deserialize)]
pub struct HomeChange {
    pub user: String,
    pub region: String,
}

struct Peer {
    url: String,
    tx: mpsc::Sender<String>,
}

/// This node's links to its peers.
pub struct Links {
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    transport: Arc<Transport>,
    peers: Mutex<HashMap<String, Peer>>,
    /// Calls that need an answer, over the same transport.
    rpc: super::rpc::Rpc,
}

impl Links {
    pub fn new(
        cluster: Arc<Cluster>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        transport: Arc<Transport>,
    ) -> Self {
        Self {
            rpc: super::rpc::Rpc::new(cluster.clone(), transport.clone()),
            cluster,
            hub,
            metrics,
            transport,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Calls to other nodes that need an answer.
    pub fn rpc(&self) -> &super::rpc::Rpc {
        &self.rpc
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// How this node reaches its peers (and proves itself to them).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Queue `frame` on the sockets of `users`, here or on the nodes they belong on.
    pub fn relay<'a>(&self, users: impl IntoIterator<Item = &'a str>, frame: &Utf8Bytes) {
        let (local, remote) = self.cluster.partition(users);
        for user in local {
            self.hub.send_to_user(user, frame, None);
        }
        for (node, to) in remote {
            let event = Event::Frame {
                to: to.into_iter().map(str::to_owned).collect(),
                frame: frame.to_string(),
            };
            self.send(&node, &event);
        }
    }

    /// Queue `event` for `node_id`. Never waits: a full queue or an unknown peer drops it.
    pub fn send(&self, node_id: &str, event: &Event) {
        let Some(member) = self.cluster.peers().get(node_id).cloned() else {
            self.metrics.link_events_dropped.inc();
            return;
        };
        let json = match serde_json::to_string(event) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a link event");
                return;
            }
        };
        let tx = self.queue(&member);
        if tx.try_send(json).is_ok() {
            self.metrics.link_events_sent.inc();
        } else {
            self.metrics.link_events_dropped.inc();
        }
    }

    fn queue(&self, member: &Member) -> mpsc::Sender<String> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(&member.node_id)
            && peer.url == member.internal_url
            && !peer.tx.is_closed()
        {
            return peer.tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = member.internal_url.trim_end_matches('/').to_owned();
        tokio::spawn(run_peer(
            self.transport.client(&member.node_id),
            format!("{url}/internal/v1/link"),
            self.cluster.node_id().to_owned(),
            member.node_id.clone(),
            rx,
            self.metrics.clone(),
        ));
        peers.insert(
            member.node_id.clone(),
            Peer {
                url: member.internal_url.clone(),
                tx: tx.clone(),
            },
        );
        tx
    }

    /// Forget links to nodes that left (their tasks end once their queues drain).
    pub fn retain_members(&self) {
        self.rpc.retain_members();
        let members = self.cluster.peers();
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| members.contains_key(id));
        self.transport.retain(|id| members.contains_key(id));
    }

    /// `user`'s home region changed here: learn it (and move their sockets if they are
    /// here), and tell every peer at once, each tried three times. A peer that misses it
    /// routes that user with its old knowledge until it expires
    /// ([`super::placement::HOME_TTL`]); the user's own sockets move as soon as their node
    /// hears of it.
    pub fn announce_home(&self, user: &str, region: &str) {
        self.cluster.home_changed(user, region);
        let body = match serde_json::to_string(&HomeChange {
            user: user.to_owned(),
            region: region.to_owned(),
        }) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a home change");
                return;
            }
        };
        for member in self.cluster.peers().values() {
            // To the peer's internal listener, with the client that only talks to that peer
            // (mutual TLS), like the links.
            let url = format!(
                "{}/internal/v1/home",
                member.internal_url.trim_end_matches('/')
            );
            let (http, body) = (self.transport.client(&member.node_id), body.clone());
            let peer = member.node_id.clone();
            tokio::spawn(async move {
                for pause in [0u64, 200, 1000] {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) if r.status().is_client_error() => {
                            tracing::warn!(peer = %peer, status = %r.status(), "a peer refused a home change (an older version?)");
                            return;
                        }
                        Ok(r) => {
                            tracing::debug!(peer = %peer, status = %r.status(), "home change not taken")
                        }
                        Err(e) => tracing::debug!(peer = %peer, error = %e, "home change not sent"),
                    }
                }
                tracing::warn!(peer = %peer, "a peer did not take a home change; it learns it when its knowledge expires");
            });
        }
    }

    /// Ask `node_id` which of `users` are online there.
    pub async fn status(&self, node_id: &str, users: &[&str]) -> Result<StatusAnswer, String> {
        let member = self
            .cluster
            .peers()
            .get(node_id)
            .cloned()
            .ok_or_else(|| format!("node {node_id} is not a live member"))?;
        let url = format!(
            "{}/internal/v1/status",
            member.internal_url.trim_end_matches('/')
        );
        let query = StatusQuery {
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        };
        let response = self
            .transport
            .client(node_id)
            .post(&url)
            .json(&query)
            .send()
            .await
            .map_err(|e| format!("status from {node_id}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("status from {node_id}: HTTP {}", response.status()));
        }
        response
            .json()
            .await
            .map_err(|e| format!("status from {node_id}: {e}"))
    }
}

/// One peer's sender: take what is queued (up to a batch), post it, repeat. A batch is
/// tried three times, then dropped.
async fn run_peer(
    http: reqwest::Client,
    url: String,
    from: String,
    peer: String,
    mut rx: mpsc::Receiver<String>,
    metrics: Arc<Metrics>,
) {
    let head = format!(
        "{{\"from\":{},\"events\":[",
        serde_json::Value::String(from)
    );
    while let Some(first) = rx.recv().await {
        let mut body = String::with_capacity(head.len() + first.len() + 2);
        body.push_str(&head);
        body.push_str(&first);
        let mut count = 1u64;
        while body.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(event) => {
                    body.push(',');
                    body.push_str(&event);
                    count += 1;
                }
                Err(_) => break,
            }
        }
        body.push_str("]}");
        let mut delivered = false;
        for (attempt, pause) in [0u64, 100, 500].into_iter().enumerate() {
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let result = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => {
                    tracing::warn!(peer = %peer, status = %r.status(), attempt, "link batch refused");
                    if r.status().is_client_error() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(peer = %peer, error = %e, attempt, "link batch failed"),
            }
        }
        if !delivered {
            metrics.link_events_dropped.inc_by(count);
            tracing::warn!(peer = %peer, events = count, "dropped a link batch; the recipients' devices get it with sync");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_json() {
        let event = Event::Frame {
            to: vec!["u".into()],
            frame: "{\"type\":\"typing\"}".into(),
        };
        let json = serde_json::to_string(&Batch {
            from: "n1".into(),
            events: vec![event],
        })
        .unwrap();
        let back: Batch = serde_json::from_str(&json).unwrap();
        assert_eq!(back.from, "n1");
        assert!(matches!(&back.events[0], Event::Frame { to, .. } if to == &["u"]));
    }
}
