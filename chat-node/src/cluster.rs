//! Which node serves which user, and how nodes reach each other (DESIGN.md, "Cluster").
//!
//! - [`membership`]: with `--etcd`, this node registers itself under a lease and watches the
//!   other members; the live view is held here. Without `--etcd` the cluster is this node.
//! - [`placement`]: which node a user belongs on: weighted rendezvous over the live,
//!   non-draining members of the user's home region (falling back to every region), and the
//!   cache of users' home regions. [`Cluster::owner`], [`Cluster::partition_by`] and
//!   [`Cluster::assign`] all ask it.
//! - [`rendezvous`]: weighted rendezvous hashing itself, identical on every node.
//! - [`link`]: node-to-node links that carry live deliveries and presence changes, batched.
//! - [`rebalance`]: when membership changes (or a user's home region does), users who now
//!   belong elsewhere are moved, spread over seconds.
//! - [`rpc`]: calls between nodes that need an answer (the write path's routing).
//! - Ownership of the write path's units (channels, users' inboxes): the same rendezvous
//!   over one consistent snapshot of the view ([`OwnerView`]), with the epoch the writer's
//!   fence needs (`store::writer::fence`).
//! - [`transport`]: mutual TLS between nodes: the internal listener's config, one client
//!   per peer that only talks to that peer, node identities in certificates.
//! - [`trust`]: a member's record in etcd is believed only once the node it names proved,
//!   over mutual TLS, that it is that node and wrote that record.
//!
//! Users are placed by home region; anything else that needs one owner node (a channel's
//! push work, the write path's units) ignores regions ([`Cluster::owns_key`], [`OwnerView`]).

pub mod link;
pub mod membership;
pub mod placement;
pub mod rebalance;
pub mod rendezvous;
pub mod rpc;
pub mod transport;
pub mod trust;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

pub use parley_cluster_contract::Member;
use placement::{HomeDirectory, Homes, Pool, Seat};

/// A node as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub node_id: String,
    pub ws_url: String,
    /// The node's region.
    pub region: String,
}

/// Where a user belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this node.
    Here,
    /// On another live member.
    Peer(Member),
}

/// One membership snapshot: the peers and the placement pool built from them (and this
/// node), swapped whole on every change so that a batch is routed against one view.
#[derive(Default)]
struct View {
    /// The other live members, by id (this node is never in it).
    peers: Arc<HashMap<String, Member>>,
    pool: Pool,
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
    region: String,
    /// Whether etcd membership is on (`--etcd`).
    clustered: bool,
    /// The other live members and the placement pool built from them: the records of etcd
    /// that are believed (all of them unless `require_proof`).
    view: RwLock<Arc<View>>,
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
    /// Users' home regions, as far as this node knows them.
    homes: Arc<Homes>,
    /// Where homes are read when they must be known now (set at start-up).
    directory: OnceLock<Arc<dyn HomeDirectory>>,
    /// Users whose home region changed, waiting for the rebalancer.
    moves: Mutex<HashSet<String>>,
    moved: tokio::sync::Notify,
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
    /// `--region`.
    pub region: String,
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
        let c = Self {
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
            region: s.region,
            clustered: s.clustered,
            view: RwLock::default(),
            draining: AtomicBool::new(false),
            serving: AtomicBool::new(!s.clustered),
            changes: tokio::sync::watch::channel(0).0,
            homes: Arc::new(Homes::default()),
            directory: OnceLock::new(),
            moves: Mutex::default(),
            moved: tokio::sync::Notify::new(),
            owners: RwLock::new(Arc::new(OwnerView::default())),
        };
        c.rebuild(Some(HashMap::new()));
        c.with_owner_identity()
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
            region: parley_cluster_contract::DEFAULT_REGION.into(),
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

    /// This node's region (`--region`): the home of the users who sign up here without
    /// choosing one.
    pub fn region(&self) -> &str {
        &self.region
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
            self.rebuild(None);
            self.changes.send_modify(|v| *v += 1);
        }
        changed
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Build the placement pool of `peers` (or of the current peers, when `None`: this
    /// node's draining flag changed) and this node, and make it the view. Returns whether the
    /// peers changed. The view's lock is held throughout, so a change of the peers (etcd, or
    /// a record proved) and of the draining flag never undo one another.
    fn rebuild(&self, peers: Option<HashMap<String, Member>>) -> bool {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let (peers, changed) = match peers {
            Some(p) if *view.peers == p => return false,
            Some(p) => (Arc::new(p), true),
            None => (view.peers.clone(), false),
        };
        let me = Seat {
            id: self.node_id.clone(),
            weight: self.capacity,
            region: self.region.clone(),
            draining: self.is_draining(),
        };
        let seats = peers
            .values()
            .map(|m| Seat {
                id: m.node_id.clone(),
                weight: m.capacity,
                region: m.region.clone(),
                draining: m.draining,
            })
            .chain(std::iter::once(me))
            .collect();
        *view = Arc::new(View {
            peers,
            pool: Pool::new(seats),
        });
        changed
    }

    /// The other live members.
    pub fn peers(&self) -> Arc<HashMap<String, Member>> {
        self.view().peers.clone()
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

    /// A receiver that sees every membership change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether every member, this one included, drains (a pause or a full shutdown): no node
    /// takes new users.
    pub fn all_draining(&self) -> bool {
        self.view().pool.seats().iter().all(|s| s.draining)
    }

    /// The node id `user_id` belongs on in `view`. A home this node does not know (it
    /// never saw the user's record, or too long ago) is taken to be this node's region, and
    /// learned in the background; routing of deliveries does not guess (see
    /// [`Cluster::partition_by`]).
    fn place<'v>(&self, view: &'v View, user_id: &str) -> Option<&'v str> {
        if !view.pool.needs_homes() {
            return view.pool.owner(user_id, &self.region);
        }
        let home = self.homes.get(user_id);
        view.pool
            .owner(user_id, home.as_deref().unwrap_or(&self.region))
    }

    /// Turn a placement answer into an [`Owner`].
    fn owner_in(&self, view: &View, id: Option<&str>) -> Owner {
        match id {
            Some(id) if id != self.node_id => match view.peers.get(id) {
                Some(m) => Owner::Peer(m.clone()),
                None => Owner::Here,
            },
            _ => Owner::Here,
        }
    }

    /// The node `user_id` belongs on: weighted rendezvous over the live, non-draining
    /// members of the user's home region (this one included unless draining), else of every
    /// region; when every member drains, over all.
    pub fn owner(&self, user_id: &str) -> Owner {
        let view = self.view();
        self.owner_in(&view, self.place(&view, user_id))
    }

    /// Whether `user_id` belongs on this node.
    pub fn is_here(&self, user_id: &str) -> bool {
        let view = self.view();
        self.place(&view, user_id)
            .is_none_or(|id| id == self.node_id)
    }

    /// Whether this node owns `key`, which is not a user (a channel's push work): exactly
    /// one live node answers true, whatever the regions.
    pub fn owns_key(&self, key: &str) -> bool {
        self.view()
            .pool
            .owner_of_key(key)
            .is_none_or(|id| id == self.node_id)
    }

    /// Split `users` by the node they belong on: this node's, and each peer's.
    pub fn partition<'a>(
        &self,
        users: impl IntoIterator<Item = &'a str>,
    ) -> (Vec<&'a str>, HashMap<String, Vec<&'a str>>) {
        self.partition_by(users, |user| user)
    }

    /// Split `items` by the node the user `user_of` names belongs on, against one snapshot
    /// of the membership. In a cluster spanning regions, an item whose user's home this node
    /// does not know goes to every node the user could be on (one per region: the nodes
    /// without the user's sockets ignore it), so that nothing depends on a guess.
    pub fn partition_by<T: Clone>(
        &self,
        items: impl IntoIterator<Item = T>,
        user_of: impl Fn(&T) -> &str,
    ) -> (Vec<T>, HashMap<String, Vec<T>>) {
        let view = self.view();
        let mut local = Vec::new();
        let mut remote: HashMap<String, Vec<T>> = HashMap::new();
        let mut route = |id: Option<&str>, item: T| match id {
            Some(id) if id != self.node_id && view.peers.contains_key(id) => {
                remote.entry(id.to_owned()).or_default().push(item)
            }
            _ => local.push(item),
        };
        if !view.pool.needs_homes() {
            for item in items {
                let id = view.pool.owner(user_of(&item), &self.region);
                route(id, item);
            }
        } else {
            let items: Vec<T> = items.into_iter().collect();
            let homes = self.homes.get_many(items.iter().map(&user_of));
            for (item, home) in items.into_iter().zip(homes) {
                match home {
                    Some(home) => {
                        let id = view.pool.owner(user_of(&item), &home);
                        route(id, item);
                    }
                    None => {
                        let owners = view.pool.possible_owners(user_of(&item));
                        for id in &owners {
                            route(Some(id), item.clone());
                        }
                    }
                }
            }
        }
        (local, remote)
    }

    /// The node `user_id`, whose home region is `home` (read from the user record), should
    /// open its WebSocket on. `host` is the Host header the client used, which names this
    /// node best when it listens on all interfaces and no `--advertise-url` was given.
    pub fn assign(&self, user_id: &str, home: &str, host: Option<&str>) -> NodeAddress {
        let view = self.view();
        match self.owner_in(&view, view.pool.owner(user_id, home)) {
            Owner::Here => NodeAddress {
                node_id: self.node_id.clone(),
                ws_url: self.ws_url(host),
                region: self.region.clone(),
            },
            Owner::Peer(m) => NodeAddress {
                node_id: m.node_id,
                ws_url: m.ws_url,
                region: m.region,
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
            region: self.region.clone(),
            capacity: self.capacity,
            connections,
            draining: self.is_draining(),
        }
    }
}

#[cfg(test)]
mod tests;
