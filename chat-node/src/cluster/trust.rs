//! Membership that cannot be forged: a record in etcd names a node, its URLs and its
//! weight, but anyone who can write to etcd can write one. So a record is believed (used by
//! `/v1/assign`, the rebalancer, links and push ownership) only once this node has asked
//! the node it names, over mutual TLS, and the answer matches:
//!
//! 1. `GET <internal_url>/internal/v1/identity` with the client that accepts only a server
//!    certificate naming that node id ([`Transport::client`]);
//! 2. the node answers with its own registration; every field but the live ones
//!    (`connections`, `draining`) must equal etcd's record ([`identity_of`]).
//!
//! A record that fails is retried with backoff (a node registers a moment before it
//! serves) and stays unbelieved meanwhile; a record whose identity fields change is asked
//! again. Without mutual TLS (`--insecure-cluster`) every record is believed and this task
//! does not run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::transport::Transport;
use super::{Cluster, Member};
use crate::metrics::Metrics;

/// A record with what changes at run time blanked: two records of one node are "the same
/// identity" when they agree on everything else (URLs, capacity, zone, and any field added
/// later), so a forged record that moves a node's URLs or weight is not believed.
pub fn identity_of(m: &Member) -> Member {
    Member {
        connections: 0,
        draining: false,
        ..m.clone()
    }
}

/// etcd's records of the other nodes and the identities their nodes proved (held by
/// [`Cluster`], which publishes the believed ones as its peers).
#[derive(Default)]
pub struct Records {
    all: HashMap<String, Member>,
    /// Node id → the record (its identity fields) the node itself confirmed.
    proved: HashMap<String, Member>,
}

impl Records {
    /// Replace etcd's records (a node that left must prove itself again when it returns).
    /// Returns whether they changed.
    pub fn replace(&mut self, records: HashMap<String, Member>) -> bool {
        self.proved.retain(|id, _| records.contains_key(id));
        let changed = self.all != records;
        self.all = records;
        changed
    }

    pub fn all(&self) -> &HashMap<String, Member> {
        &self.all
    }

    /// `member`'s node confirmed this record.
    pub fn prove(&mut self, member: &Member) {
        self.proved
            .insert(member.node_id.clone(), identity_of(member));
    }

    fn is_proved(&self, m: &Member) -> bool {
        self.proved
            .get(&m.node_id)
            .is_some_and(|p| *p == identity_of(m))
    }

    /// The records not (or no longer) proved.
    pub fn unproved(&self) -> Vec<Member> {
        self.all
            .values()
            .filter(|m| !self.is_proved(m))
            .cloned()
            .collect()
    }

    /// The records to believe: the proved ones, or all when no proof is required.
    pub fn believed(&self, require_proof: bool) -> HashMap<String, Member> {
        self.all
            .iter()
            .filter(|(_, m)| !require_proof || self.is_proved(m))
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }
}

/// The trust bookkeeping of [`Cluster`]: etcd's records, which are proved, and the believed
/// ones published as its peers.
impl Cluster {
    /// etcd's records of the other nodes, believed or not.
    pub fn records(&self) -> HashMap<String, Member> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all()
            .clone()
    }

    /// Records of etcd that are not (or no longer) believed.
    pub fn unproved(&self) -> Vec<Member> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .unproved()
    }

    /// `member` (as etcd holds it) was confirmed by its node over mutual TLS.
    pub fn prove(&self, member: &Member) {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        records.prove(member);
        self.publish(&records);
    }

    /// Whether proof is required before a record is believed (mutual TLS is on).
    pub fn requires_proof(&self) -> bool {
        self.require_proof
    }

    /// A receiver that sees every change of etcd's records.
    pub fn subscribe_records(&self) -> tokio::sync::watch::Receiver<u64> {
        self.record_changes.subscribe()
    }

    /// Recompute the believed peers from the records.
    pub(super) fn publish(&self, records: &Records) {
        if self.rebuild(Some(records.believed(self.require_proof))) {
            self.changes.send_modify(|v| *v += 1);
        }
    }
}

/// First retry of a record that could not be proved; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Asks each new record's node to prove it.
pub struct Trust {
    pub cluster: Arc<Cluster>,
    pub transport: Arc<Transport>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// A record's failed attempts: when to try again, and what failed last (logged once).
struct Pending {
    identity: Member,
    attempts: u32,
    next: Instant,
    last_error: String,
}

impl Trust {
    pub async fn run(self) {
        let mut changes = self.cluster.subscribe_records();
        let mut pending: HashMap<String, Pending> = HashMap::new();
        loop {
            let now = Instant::now();
            let unproved = self.cluster.unproved();
            pending.retain(|id, p| {
                unproved
                    .iter()
                    .any(|m| &m.node_id == id && identity_of(m) == p.identity)
            });
            let due: Vec<Member> = unproved
                .into_iter()
                .filter(|m| pending.get(&m.node_id).is_none_or(|p| p.next <= now))
                .collect();
            let results = futures_util::future::join_all(due.iter().map(|m| self.prove(m))).await;
            for (member, result) in due.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        pending.remove(&member.node_id);
                        self.cluster.prove(&member);
                        tracing::info!(peer = %member.node_id, url = %member.internal_url, "member proved its record over mutual TLS");
                    }
                    Err(error) => {
                        let p = pending
                            .entry(member.node_id.clone())
                            .or_insert_with(|| Pending {
                                identity: identity_of(&member),
                                attempts: 0,
                                next: now,
                                last_error: String::new(),
                            });
                        p.attempts += 1;
                        let delay = FIRST_RETRY
                            .saturating_mul(1 << p.attempts.min(8))
                            .min(MAX_RETRY);
                        p.next = Instant::now() + delay;
                        if p.last_error != error {
                            tracing::warn!(peer = %member.node_id, url = %member.internal_url, %error, "not believing a member record: its node did not prove it (it gets no users and no traffic until it does)");
                            p.last_error = error;
                        }
                    }
                }
            }
            let unproved = self.cluster.unproved().len();
            self.metrics.cluster_unproved_members.set(unproved as i64);
            self.metrics
                .cluster_members
                .set(self.cluster.peers().len() as i64 + 1);
            let wake = pending.values().map(|p| p.next).min();
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = sleep_until(wake) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Ask `member`'s node for its registration over mutual TLS and compare.
    async fn prove(&self, member: &Member) -> Result<(), String> {
        if member.internal_url.is_empty() {
            return Err("the record has no internal_url (a node without an internal listener cannot prove who it is)".into());
        }
        let url = format!(
            "{}/internal/v1/identity",
            member.internal_url.trim_end_matches('/')
        );
        let response = self
            .transport
            .client(&member.node_id)
            .get(&url)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered HTTP {}", response.status()));
        }
        let own: Member = response
            .json()
            .await
            .map_err(|e| format!("{url} answered something that is not a registration: {e}"))?;
        if identity_of(&own) != identity_of(member) {
            return Err(format!(
                "the node's own registration differs from etcd's record (node says {own:?})"
            ));
        }
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An error with its causes (reqwest hides the TLS reason in its sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, Settings};
    use super::*;

    fn member(id: &str, draining: bool) -> Member {
        Member {
            node_id: id.into(),
            advertise_url: format!("http://{id}"),
            ws_url: format!("ws://{id}/v1/ws"),
            internal_url: format!("https://{id}:8081"),
            capacity: 10,
            draining,
            ..Member::default()
        }
    }

    fn settings(id: &str) -> Settings {
        Settings {
            node_id: id.into(),
            cluster: "c".into(),
            advertise_url: Some(format!("http://{id}")),
            listen: "127.0.0.1:1".parse().unwrap(),
            capacity: 10,
            zone: None,
            region: "default".into(),
            clustered: true,
            internal_url: Some(format!("https://{id}:8081")),
            client_tls: false,
            require_proof: false,
        }
    }

    #[test]
    fn with_proof_required_only_proved_records_are_peers_and_a_moved_record_is_not() {
        let n = Cluster::new(Settings {
            require_proof: true,
            ..settings("a")
        });
        let b = member("b", false);
        n.set_peers([("b".to_string(), b.clone())].into());
        assert!(n.peers().is_empty(), "an unproved record is not a peer");
        assert_eq!(n.unproved().len(), 1);
        for k in 0..20 {
            assert_eq!(n.owner(&format!("u{k}")), Owner::Here);
        }
        n.prove(&b);
        assert_eq!(n.peers().len(), 1);
        // Live fields move freely; the identity (URLs, weight) may not.
        let busy = Member {
            connections: 500,
            draining: true,
            ..b.clone()
        };
        n.set_peers([("b".to_string(), busy)].into());
        assert_eq!(
            n.peers()["b"].connections,
            500,
            "live fields come from etcd"
        );
        let moved = Member {
            ws_url: "ws://evil/v1/ws".into(),
            ..b.clone()
        };
        n.set_peers([("b".to_string(), moved)].into());
        assert!(
            n.peers().is_empty(),
            "a record pointing b elsewhere is not believed"
        );
        n.set_peers(HashMap::new());
        n.set_peers([("b".to_string(), b)].into());
        assert!(
            n.peers().is_empty(),
            "a node that left proves itself again when it returns"
        );
    }

    #[test]
    fn a_region_counts_only_once_proved_and_a_record_moved_to_another_region_is_not_believed() {
        let n = Cluster::new(Settings {
            region: "eu".into(),
            require_proof: true,
            ..settings("a")
        });
        let us = Member {
            region: "us".into(),
            ..member("b", false)
        };
        n.set_peers([("b".to_string(), us.clone())].into());
        // Unproved, the only node of region us is not there: us users fall back to this node.
        for k in 0..20 {
            let placed = n.assign(&format!("u{k}"), "us", None);
            assert_eq!(
                (placed.node_id.as_str(), placed.region.as_str()),
                ("a", "eu")
            );
        }
        n.prove(&us);
        for k in 0..20 {
            let placed = n.assign(&format!("u{k}"), "us", None);
            assert_eq!(
                (placed.node_id.as_str(), placed.region.as_str()),
                ("b", "us")
            );
            assert_eq!(n.assign(&format!("u{k}"), "eu", None).node_id, "a");
        }
        // A forged record that moves b into eu (to draw eu's users) is not believed.
        let moved = Member {
            region: "eu".into(),
            ..us
        };
        n.set_peers([("b".to_string(), moved)].into());
        assert!(n.peers().is_empty(), "b moved to another region unproved");
        for k in 0..20 {
            assert_eq!(n.assign(&format!("u{k}"), "eu", None).node_id, "a");
        }
    }
}
