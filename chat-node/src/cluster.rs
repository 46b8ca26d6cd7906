//! Which node serves which user, and how nodes reach each other (DESIGN.md, "Cluster").
//!
//! - [`membership`]: with `--etcd`, this node registers itself under a lease and watches the
//!   other members; the live view is held here. Without `--etcd` the cluster is this node.
//! - [`rendezvous`]: weighted rendezvous hashing of a user id over the live, non-draining
//!   members picks the user's node, identically on every node and without a lookup.
//! - [`link`]: node-to-node links that carry live deliveries and presence changes, batched.
//! - [`rebalance`]: when membership changes, users who now belong elsewhere are moved,
//!   spread over seconds.
//! - [`rpc`]: calls between nodes that need an answer (the write path's routing).
//! - Ownership of the write path's units (channels, users' inboxes): the same rendezvous
//!   over one consistent snapshot of the view ([`OwnerView`]), with the epoch the writer's
//!   fence needs (`store::writer::fence`).
//! - [`transport`]: mutual TLS between nodes: the internal listener's config, one client
//!   per peer that only talks to that peer, node identities in certificates.
//! - [`trust`]: a member's record in etcd is believed only once the node it names proved,
//!   over mutual TLS, that it is that node and wrote that record.

pub mod link;
pub mod membership;
pub mod rebalance;
pub mod rendezvous;
pub mod rpc;
pub mod transport;
pub mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// A node as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub node_id: String,
    pub ws_url: String,
}

/// A member's registration in etcd (`/parley/<cluster>/nodes/<node_id>`), the contract
/// with the operator (docs/operator.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Member {
    pub node_id: String,
    /// How peers reach the node (its HTTP base URL).
    #[serde(default)]
    pub advertise_url: String,
    /// Where clients open their WebSocket.
    #[serde(default)]
    pub ws_url: String,
    /// Where peers reach the node's internal listener (links, status, probes): `https://`
    /// with mutual TLS. Empty from nodes older than the internal listener.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub internal_url: String,
    #[serde(default)]
    pub zone: Option<String>,
    /// The node's weight in assignment.
    #[serde(default)]
    pub capacity: u64,
    /// Live client sockets.
    #[serde(default)]
    pub connections: u64,
    /// Handing its clients over: takes no new users.
    #[serde(default)]
    pub draining: bool,
}

/// Where a user belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this node.
    Here,
    /// On another live member.
    Peer(Member),
}

/// This node's view of the cluster.
pub struct Cluster {
    node_id: String,
    cluster: String,
    advertise_url: Option<String>,
    internal_url: Option<String>,
    listen: SocketAddr,
    /// `https` when the client port has TLS (`--tls-cert-file`).
    client_scheme: &'static str,
    capacity: u64,
    zone: Option<String>,
    /// Whether etcd membership is on (`--etcd`).
    clustered: bool,
    /// The other live members, by id (this node is never in it): the records of etcd that
    /// are believed (all of them unless `require_proof`).
    peers: RwLock<Arc<HashMap<String, Member>>>,
    /// What etcd holds, believed or not, and which identities were proved ([`trust`]).
    records: RwLock<trust::Records>,
    /// Whether a record counts only once its node proved it over mutual TLS.
    require_proof: bool,
    /// Bumped when etcd's records change; the trust task waits on it.
    record_changes: tokio::sync::watch::Sender<u64>,
    /// This node hands its users over (operator drain or SIGTERM).
    draining: AtomicBool,
    /// Registered in etcd under a live lease (always true on a single node): only then
    /// does the node take users. See `membership` (fail safe).
    serving: AtomicBool,
    /// Bumped on every membership change; the rebalancer waits on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Who owns the write path's units: the view as etcd last said, as one snapshot.
    owners: RwLock<Arc<OwnerView>>,
}

/// One consistent snapshot of who may own the write path's units (a channel's `seq`, a
/// user's inbox): the live members as etcd last said, this node's draining flag as it
/// published it, and the epoch (the etcd revision of the last change that moved ownership).
/// Owners are picked by the same weighted rendezvous as users' nodes.
#[derive(Debug, Clone, Default)]
pub struct OwnerView {
    node_id: String,
    capacity: u64,
    draining: bool,
    peers: Arc<HashMap<String, Member>>,
    epoch: u64,
    /// The etcd revision the view is current at (at least the epoch).
    revision: u64,
}

impl OwnerView {
    /// The node that owns `unit`: `None` for this node. A one-on-one channel is owned by
    /// the owner of one of its two users' inboxes (rendezvous between those two), so a
    /// one-on-one message involves at most two nodes, and one when both users are on one.
    pub fn owner(&self, unit: &str) -> Option<&str> {
        if self.peers.is_empty() {
            return None;
        }
        if let Some((a, b)) = unit.strip_prefix("dm:").and_then(|r| r.split_once(':')) {
            let (oa, ob) = (self.owner_by_hash(a), self.owner_by_hash(b));
            if oa == ob {
                return oa;
            }
            let weight = |o: Option<&str>| {
                o.and_then(|id| self.peers.get(id))
                    .map_or(self.capacity, |m| m.capacity)
            };
            let candidates = [
                (oa.unwrap_or(self.node_id.as_str()), weight(oa)),
                (ob.unwrap_or(self.node_id.as_str()), weight(ob)),
            ];
            return match rendezvous::owner(unit, candidates) {
                Some(id) if id != self.node_id => Some(id),
                _ => None,
            };
        }
        self.owner_by_hash(unit)
    }

    /// Weighted rendezvous of `unit` over the members that may own units.
    fn owner_by_hash(&self, unit: &str) -> Option<&str> {
        if self.peers.is_empty() {
            return None;
        }
        let takers =
            self.peers.values().filter(|m| !m.draining).count() + usize::from(!self.draining);
        let candidates = self
            .peers
            .values()
            .filter(|m| takers == 0 || !m.draining)
            .map(|m| (m.node_id.as_str(), m.capacity))
            .chain(
                (takers == 0 || !self.draining).then_some((self.node_id.as_str(), self.capacity)),
            );
        match rendezvous::owner(unit, candidates) {
            Some(id) if id != self.node_id => Some(id),
            _ => None,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A member's record as etcd holds it (believed or not: a call to it goes over mutual
    /// TLS that checks the peer is that member).
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.peers.get(node_id)
    }
}

impl crate::store::writer::fence::OwnershipView for OwnerView {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn owner(&self, unit: &str) -> Option<&str> {
        OwnerView::owner(self, unit)
    }
    fn peers(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }
}

impl crate::store::writer::fence::Ownership for Cluster {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn current(&self) -> Arc<dyn crate::store::writer::fence::OwnershipView> {
        self.owners()
    }
}

/// How a cluster node is set up.
pub struct Settings {
    pub node_id: String,
    pub cluster: String,
    pub advertise_url: Option<String>,
    pub listen: SocketAddr,
    pub capacity: u64,
    pub zone: Option<String>,
    pub clustered: bool,
    /// The node's internal URL as peers reach it (`--internal-advertise-url`).
    pub internal_url: Option<String>,
    /// Whether the client port speaks TLS (`ws_url` is then `wss://`).
    pub client_tls: bool,
    /// Believe a member only once it proved its record over mutual TLS.
    pub require_proof: bool,
}

impl Cluster {
    pub fn new(s: Settings) -> Self {
        Self {
            node_id: s.node_id,
            cluster: s.cluster,
            advertise_url: s.advertise_url,
            internal_url: s.internal_url,
            listen: s.listen,
            client_scheme: if s.client_tls { "https" } else { "http" },
            records: RwLock::new(trust::Records::default()),
            require_proof: s.require_proof,
            record_changes: tokio::sync::watch::channel(0).0,
            capacity: s.capacity.max(1),
            zone: s.zone,
            clustered: s.clustered,
            peers: RwLock::new(Arc::new(HashMap::new())),
            draining: AtomicBool::new(false),
            serving: AtomicBool::new(!s.clustered),
            changes: tokio::sync::watch::channel(0).0,
            owners: RwLock::new(Arc::new(OwnerView::default())),
        }
        .with_owner_identity()
    }

    fn with_owner_identity(self) -> Self {
        *self.owners.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(OwnerView {
            node_id: self.node_id.clone(),
            capacity: self.capacity,
            ..OwnerView::default()
        });
        self
    }

    /// Who owns the write path's units, as one snapshot of the view.
    pub fn owners(&self) -> Arc<OwnerView> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the ownership view (from etcd): the other members, this node's draining flag
    /// as its registration in etcd says, and the epoch of the last change that moved
    /// ownership.
    pub fn set_owners(
        &self,
        mut peers: HashMap<String, Member>,
        draining: bool,
        epoch: u64,
        revision: u64,
    ) {
        peers.remove(&self.node_id);
        let view = OwnerView {
            node_id: self.node_id.clone(),
            capacity: self.capacity,
            draining,
            peers: Arc::new(peers),
            epoch,
            revision: revision.max(epoch),
        };
        *self.owners.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
    }

    /// A cluster of one: this node. `listen` is the bound address (port 0 resolved).
    pub fn single(node_id: String, advertise_url: Option<String>, listen: SocketAddr) -> Self {
        Self::new(Settings {
            node_id,
            cluster: "parley".into(),
            advertise_url,
            listen,
            capacity: 1,
            zone: None,
            clustered: false,
            internal_url: None,
            client_tls: false,
            require_proof: false,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster's name (`--cluster`).
    pub fn name(&self) -> &str {
        &self.cluster
    }

    /// Whether this node is one of several, through etcd.
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// Whether the node serves users: on a single node always; in a cluster while it is
    /// registered under a live lease.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Set by membership on registering (true) and on losing the lease (false). Returns
    /// whether it changed.
    pub fn set_serving(&self, serving: bool) -> bool {
        self.serving.swap(serving, Ordering::Relaxed) != serving
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start (or stop) handing users over. Returns whether that changed anything.
    pub fn set_draining(&self, draining: bool) -> bool {
        let changed = self.draining.swap(draining, Ordering::Relaxed) != draining;
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
        changed
    }

    /// The other live members.
    pub fn peers(&self) -> Arc<HashMap<String, Member>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the view of the other members (etcd's records). Only the records whose node
    /// proved them (see [`trust`]) become peers when proof is required.
    pub fn set_peers(&self, mut peers: HashMap<String, Member>) {
        peers.remove(&self.node_id);
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let changed = records.replace(peers);
        self.publish(&records);
        drop(records);
        if changed {
            self.record_changes.send_modify(|v| *v += 1);
        }
    }

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
    fn publish(&self, records: &trust::Records) {
        let peers = records.believed(self.require_proof);
        let mut current = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if **current != peers {
            *current = Arc::new(peers);
            drop(current);
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// A receiver that sees every membership change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The node `user_id` belongs on: weighted rendezvous over the live, non-draining
    /// members (this one included unless draining). When every member drains, over all.
    pub fn owner(&self, user_id: &str) -> Owner {
        let peers = self.peers();
        match self.peer_for(&peers, user_id) {
            Some(id) => Owner::Peer(peers[id].clone()),
            None => Owner::Here,
        }
    }

    /// The id of the peer `user_id` belongs on among `peers` (one snapshot of the view, so a
    /// batch of users is routed against one membership), or `None` for this node.
    fn peer_for<'p>(&self, peers: &'p HashMap<String, Member>, user_id: &str) -> Option<&'p str> {
        if peers.is_empty() {
            return None;
        }
        let me_draining = self.is_draining();
        let takers = peers.values().filter(|m| !m.draining).count() + usize::from(!me_draining);
        let candidates = peers
            .values()
            .filter(|m| takers == 0 || !m.draining)
            .map(|m| (m.node_id.as_str(), m.capacity))
            .chain((takers == 0 || !me_draining).then_some((self.node_id.as_str(), self.capacity)));
        match rendezvous::owner(user_id, candidates) {
            Some(id) if id != self.node_id => peers.get_key_value(id).map(|(k, _)| k.as_str()),
            _ => None,
        }
    }

    /// Whether `user_id` belongs on this node.
    pub fn is_here(&self, user_id: &str) -> bool {
        self.peer_for(&self.peers(), user_id).is_none()
    }

    /// Split `users` by the node they belong on: this node's, and each peer's.
    pub fn partition<'a>(
        &self,
        users: impl IntoIterator<Item = &'a str>,
    ) -> (Vec<&'a str>, HashMap<String, Vec<&'a str>>) {
        self.partition_by(users, |user| user)
    }

    /// Split `items` by the node the user `user_of` names belongs on, against one snapshot
    /// of the membership.
    pub fn partition_by<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        user_of: impl Fn(&T) -> &str,
    ) -> (Vec<T>, HashMap<String, Vec<T>>) {
        let peers = self.peers();
        let mut local = Vec::new();
        let mut remote: HashMap<String, Vec<T>> = HashMap::new();
        for item in items {
            match self.peer_for(&peers, user_of(&item)) {
                None => local.push(item),
                Some(id) => remote.entry(id.to_owned()).or_default().push(item),
            }
        }
        (local, remote)
    }

    /// The node `user_id` should open its WebSocket on. `host` is the Host header the client
    /// used, which names this node best when it listens on all interfaces and no
    /// `--advertise-url` was given.
    pub fn assign(&self, user_id: &str, host: Option<&str>) -> NodeAddress {
        match self.owner(user_id) {
            Owner::Here => NodeAddress {
                node_id: self.node_id.clone(),
                ws_url: self.ws_url(host),
            },
            Owner::Peer(m) => NodeAddress {
                node_id: m.node_id,
                ws_url: m.ws_url,
            },
        }
    }

    /// This node's HTTP base URL as peers and clients reach it.
    pub fn base_url(&self, host: Option<&str>) -> String {
        let scheme = self.client_scheme;
        match (&self.advertise_url, host) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(host)) if self.listen.ip().is_unspecified() => format!("{scheme}://{host}"),
            (None, _) => format!("{scheme}://{}", self.listen),
        }
    }

    /// This node's WebSocket URL.
    pub fn ws_url(&self, host: Option<&str>) -> String {
        let base = self.base_url(host);
        let ws = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base.trim_start_matches("http://")),
        };
        format!("{ws}/v1/ws")
    }

    /// This node's registration, with its live connection count.
    pub fn registration(&self, connections: u64) -> Member {
        Member {
            node_id: self.node_id.clone(),
            advertise_url: self.base_url(None),
            ws_url: self.ws_url(None),
            internal_url: self.internal_url.clone().unwrap_or_default(),
            zone: self.zone.clone(),
            capacity: self.capacity,
            connections,
            draining: self.is_draining(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_follows_advertise_url_then_host_then_listen() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let c = Cluster::single("n1".into(), Some("https://chat.example.com/".into()), any);
        assert_eq!(c.ws_url(Some("x")), "wss://chat.example.com/v1/ws");
        let c = Cluster::single("n1".into(), None, any);
        assert_eq!(c.ws_url(Some("10.0.0.5:8080")), "ws://10.0.0.5:8080/v1/ws");
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let c = Cluster::single("n1".into(), None, lo);
        assert_eq!(
            c.assign("u", Some("localhost:9000")).ws_url,
            "ws://127.0.0.1:9000/v1/ws"
        );
    }

    fn member(id: &str, draining: bool) -> Member {
        Member {
            node_id: id.into(),
            advertise_url: format!("http://{id}"),
            ws_url: format!("ws://{id}/v1/ws"),
            capacity: 10,
            draining,
            ..Member::default()
        }
    }

    fn node(id: &str) -> Cluster {
        Cluster::new(settings(id))
    }

    fn settings(id: &str) -> Settings {
        Settings {
            node_id: id.into(),
            cluster: "c".into(),
            advertise_url: Some(format!("http://{id}")),
            listen: "127.0.0.1:1".parse().unwrap(),
            capacity: 10,
            zone: None,
            clustered: true,
            internal_url: Some(format!("https://{id}:8081")),
            client_tls: false,
            require_proof: false,
        }
    }

    #[test]
    fn every_node_assigns_a_user_to_the_same_node() {
        let ids = ["a", "b", "c"];
        let nodes: Vec<Cluster> = ids.iter().map(|id| node(id)).collect();
        for n in &nodes {
            n.set_peers(
                ids.iter()
                    .map(|id| (id.to_string(), member(id, false)))
                    .collect(),
            );
        }
        for k in 0..300 {
            let user = format!("user{k}");
            let answers: Vec<String> = nodes
                .iter()
                .map(|n| n.assign(&user, None).node_id)
                .collect();
            assert!(
                answers.windows(2).all(|w| w[0] == w[1]),
                "{user}: {answers:?}"
            );
        }
    }

    #[test]
    fn draining_members_take_no_users_unless_all_drain() {
        let n = node("a");
        n.set_peers([("b".to_string(), member("b", true))].into());
        for k in 0..50 {
            assert_eq!(n.owner(&format!("u{k}")), Owner::Here);
        }
        n.set_draining(true);
        n.set_peers([("b".to_string(), member("b", false))].into());
        for k in 0..50 {
            assert!(matches!(n.owner(&format!("u{k}")), Owner::Peer(m) if m.node_id == "b"));
        }
        n.set_peers([("b".to_string(), member("b", true))].into());
        let owners: std::collections::HashSet<bool> =
            (0..50).map(|k| n.is_here(&format!("u{k}"))).collect();
        assert_eq!(
            owners.len(),
            2,
            "with every node draining, users still spread over all"
        );
    }

    #[test]
    fn a_one_on_one_channel_is_owned_where_one_of_its_users_inboxes_is() {
        let ids = ["a", "b", "c", "d", "e"];
        let n = node("a");
        let peers: HashMap<String, Member> = ids
            .iter()
            .map(|id| (id.to_string(), member(id, false)))
            .collect();
        n.set_owners(peers, false, 1, 1);
        let view = n.owners();
        let mut both_local = 0;
        for k in 0..300 {
            let (u, v) = (format!("u{k}"), format!("v{k}"));
            let (ou, ov) = (view.owner(&u), view.owner(&v));
            let channel = crate::protocol::validate::Channel::direct(&u, &v).to_string();
            let oc = view.owner(&channel);
            assert!(
                oc == ou || oc == ov,
                "{channel}: owned by {oc:?}, inboxes at {ou:?} and {ov:?}"
            );
            both_local += usize::from(ou == ov);
        }
        assert!(both_local > 0, "some pairs share a node");
    }
}
