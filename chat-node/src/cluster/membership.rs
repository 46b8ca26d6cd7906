//! Membership in etcd: this node's registration under a lease, and the live view of the
//! others.
//!
//! Keys (the contract with the operator, defined once in `parley-cluster-contract` and
//! described in docs/operator.md):
//! - `/parley/<cluster>/nodes/<node_id>`: a [`Member`] as JSON, under a lease of
//!   [`LEASE_TTL`]; refreshed every [`REFRESH`] when the connection count or draining flag
//!   changed.
//! - `/parley/<cluster>/drain/<node_id>`: written by the operator; while it exists the node
//!   drains (takes no new users and moves its users away).
//!
//! Fail safe: a node serves users only while it is registered under a live lease. A short
//! etcd blip changes nothing (the last known view is kept while the node reconnects). But
//! once the lease may have expired (no keep-alive answered for [`LEASE_TTL`] less a
//! margin), the others have dropped this node and taken its users: it **steps down**
//! (tells its clients `reconnect`, refuses new sockets, fails `/readyz`) until it has
//! registered again. Registration is a transaction: it writes the key only if it is absent
//! (create revision 0) or already ours (our lease), so a second node started with a node id
//! that a live node holds is refused, and says so, instead of claiming the same users.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use parley_etcd_connect::EtcdFiles;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Member};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::CloseReason;

pub use parley_cluster_contract::{KEY_ROOT, cluster_prefix, drain_key, nodes_prefix};

/// Lease time-to-live: a node that stops refreshing leaves the view after this.
pub const LEASE_TTL: i64 = parley_cluster_contract::LEASE_TTL_SECONDS;
/// How often the lease is kept alive and the registration refreshed.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Bound on connecting and on each request.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A node steps down this long after its last answered keep-alive: the lease's TTL less a
/// margin, so it stops before the others can have taken its users over.
pub const STEP_DOWN_AFTER: Duration = Duration::from_secs(LEASE_TTL as u64 - 2);

/// The membership task's handle: leave the cluster at the end of shutdown.
pub struct Membership {
    leave: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Start registering and watching. `shutdown` marks the node draining (SIGTERM); the
    /// registration stays until [`Membership::leave`].
    pub fn start(
        cluster: Arc<Cluster>,
        endpoints: Vec<String>,
        files: EtcdFiles,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let leave = CancellationToken::new();
        let lease_alive_until = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(watchdog(
            cluster.clone(),
            hub.clone(),
            metrics.clone(),
            lease_alive_until.clone(),
            leave.clone(),
        ));
        let task = Task {
            cluster,
            endpoints,
            files,
            hub,
            metrics,
            shutdown,
            leave: leave.clone(),
            lease_alive_until,
            previous_lease: std::sync::Mutex::new(None),
        };
        Self {
            leave,
            done: tokio::spawn(task.run()),
        }
    }

    /// Revoke the lease (peers drop this node at once) and stop.
    pub async fn leave(self) {
        self.leave.cancel();
        let _ = tokio::time::timeout(TIMEOUT, self.done).await;
    }
}

struct Task {
    cluster: Arc<Cluster>,
    endpoints: Vec<String>,
    /// TLS and credential files, re-read at every (re)connect (so rotated ones are used).
    files: EtcdFiles,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    leave: CancellationToken,
    /// Until when the lease is surely alive (last answered keep-alive + [`STEP_DOWN_AFTER`]);
    /// `None` while not registered.
    lease_alive_until: Arc<std::sync::Mutex<Option<Instant>>>,
    /// The lease of this process's previous registration: after etcd restarts (leases
    /// survive it) or a reconnect, the key under it is ours, not another node's.
    previous_lease: std::sync::Mutex<Option<i64>>,
}

/// Step the node down once its lease may have expired; it steps up again on registering.
async fn watchdog(
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    alive_until: Arc<std::sync::Mutex<Option<Instant>>>,
    leave: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = leave.cancelled() => return,
        }
        let expired = alive_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| Instant::now() >= until);
        if expired && cluster.is_serving() {
            step_down(&cluster, &hub, &metrics);
        }
    }
}

/// Stop serving: the others no longer see this node, so its users belong elsewhere.
fn step_down(cluster: &Cluster, hub: &Hub, metrics: &Metrics) {
    if !cluster.set_serving(false) {
        return;
    }
    metrics.serving.set(0);
    let conns = hub.all();
    tracing::error!(
        node_id = %cluster.node_id(),
        sockets = conns.len(),
        "lost the etcd lease: stepping down (clients are told to reconnect; /readyz fails) until registered again"
    );
    for conn in conns {
        conn.redirect(None, "stepped_down", CloseReason::STEPPED_DOWN);
    }
}

/// Why a membership session ended.
enum End {
    Left,
    Failed(String),
}

async fn call<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, End> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(End::Failed(format!("{what}: {e}"))),
        Err(_) => Err(End::Failed(format!("{what}: no answer within {TIMEOUT:?}"))),
    }
}

impl Task {
    async fn run(self) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let started = Instant::now();
            match self.session().await {
                End::Left => return,
                End::Failed(reason) => {
                    self.metrics.etcd_up.set(0);
                    tracing::warn!(
                        endpoints = %self.endpoints.join(","),
                        "etcd membership interrupted ({reason}); serving with the last known members and retrying"
                    );
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(250);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.leave.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn node_key(&self) -> String {
        parley_cluster_contract::node_key(self.cluster.name(), self.cluster.node_id())
    }

    fn registration(&self) -> Member {
        self.cluster.registration(self.hub.connection_count())
    }

    /// One connected stretch: register, list, watch and refresh until etcd fails or the
    /// node leaves.
    async fn session(&self) -> End {
        match self.session_inner().await {
            Ok(()) => End::Left,
            Err(end) => end,
        }
    }

    async fn session_inner(&self) -> Result<(), End> {
        let options = ConnectOptions::new()
            .with_connect_timeout(TIMEOUT)
            .with_timeout(TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3));
        let etcd = self
            .files
            .load(&self.endpoints)
            .map_err(|e| End::Failed(e.to_string()))?;
        let mut client = call(
            "connect",
            Client::connect(etcd.urls(), Some(etcd.options(options))),
        )
        .await?;
        let lease = call("grant a lease", client.lease_grant(LEASE_TTL, None))
            .await?
            .id();
        let key = self.node_key();
        let mut registered = self.registration();
        self.put(&mut client, &key, &registered, lease).await?;
        let (mut keeper, mut acks) =
            call("keep the lease alive", client.lease_keep_alive(lease)).await?;
        self.lease_answered();

        let prefix = cluster_prefix(self.cluster.name());
        let listing = call(
            "list members",
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = listing.header().map_or(0, |h| h.revision());
        let mut view = View::default();
        for kv in listing.kvs() {
            view.apply(&prefix, kv.key(), Some(kv.value()), self.cluster.node_id());
        }
        // A fresh listing cannot tell when ownership last moved: its revision is the epoch
        // (the write path's fences sort out the rest; see store::writer::fence).
        self.publish(&view, Some(revision as u64), revision as u64);
        let mut watch = call(
            "watch members",
            client.watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        self.metrics.etcd_up.set(1);
        if self.cluster.set_serving(true) {
            self.metrics.serving.set(1);
            tracing::info!(node_id = %self.cluster.node_id(), "registered: serving users");
        }
        tracing::info!(
            node_id = %self.cluster.node_id(),
            members = view.nodes.len() + 1,
            "joined the cluster in etcd"
        );

        let mut changes = self.cluster.subscribe();
        let mut tick = tokio::time::interval(REFRESH);
        let mut published = Instant::now();
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                () = self.leave.cancelled() => {
                    let _ = call("revoke the lease", client.lease_revoke(lease)).await;
                    return Ok(());
                }
                () = self.shutdown.cancelled(), if !self.cluster.is_draining() => {
                    self.cluster.set_draining(true);
                }
                _ = tick.tick() => {
                    if last_ack.elapsed() > Duration::from_secs(LEASE_TTL as u64 - 2) {
                        return Err(End::Failed("etcd stopped answering lease keep-alives".into()));
                    }
                    call("keep the lease alive", keeper.keep_alive()).await?;
                    // Keep the view's revision current while nothing changes, so that a node
                    // fenced at a newer revision sees it has caught up (store::writer::fence).
                    call("ask the watch for progress", watch.request_progress()).await?;
                    let now = self.registration();
                    if worth_publishing(&registered, &now, published.elapsed()) {
                        self.put(&mut client, &key, &now, lease).await?;
                        registered = now;
                        published = Instant::now();
                    }
                }
                // A drain starts or ends: tell the peers now, not at the next refresh.
                r = changes.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let now = self.registration();
                    if now.draining != registered.draining {
                        self.put(&mut client, &key, &now, lease).await?;
                        registered = now;
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => {
                        last_ack = Instant::now();
                        self.lease_answered();
                    }
                    Ok(Some(_)) => return Err(End::Failed("the lease expired".into())),
                    Ok(None) => return Err(End::Failed("the keep-alive stream ended".into())),
                    Err(e) => return Err(End::Failed(format!("keep-alive: {e}"))),
                },
                message = watch.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err(End::Failed("the watch ended".into())),
                        Err(e) => return Err(End::Failed(format!("watch: {e}"))),
                    };
                    if response.canceled() {
                        return Err(End::Failed(format!("the watch was cancelled: {}", response.cancel_reason())));
                    }
                    let before = view.ownership();
                    let mut newest = 0;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let value = (event.event_type() == EventType::Put).then(|| kv.value());
                        view.apply(&prefix, kv.key(), value, self.cluster.node_id());
                        newest = newest.max(kv.mod_revision());
                    }
                    // Every node sees the same events, so every node gives a change of
                    // ownership the same epoch: the revision of the events that made it.
                    let moved = (view.ownership() != before).then_some(newest as u64);
                    let revision = response.header().map_or(0, |h| h.revision()) as u64;
                    self.publish(&view, moved, revision.max(newest as u64));
                    // Our own key vanished (lease expired while we were away): re-register.
                    if view.self_missing {
                        view.self_missing = false;
                        self.put(&mut client, &key, &registered, lease).await?;
                    }
                }
            }
        }
    }

    /// The lease was just confirmed alive.
    fn lease_answered(&self) {
        *self
            .lease_alive_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + STEP_DOWN_AFTER);
    }

    fn remember_lease(&self, lease: i64) {
        *self
            .previous_lease
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(lease);
    }

    /// Write our registration if the key is ours (this lease, or this process's previous
    /// one) or free (create revision 0); refuse when another live node holds this node id.
    async fn put(
        &self,
        client: &mut Client,
        key: &str,
        member: &Member,
        lease: i64,
    ) -> Result<(), End> {
        let value = serde_json::to_vec(member).unwrap_or_default();
        let put = || {
            TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        let ours = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([put()]);
        if call("register", client.txn(ours)).await?.succeeded() {
            self.remember_lease(lease);
            return Ok(());
        }
        let free = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put()]);
        if call("register", client.txn(free)).await?.succeeded() {
            self.remember_lease(lease);
            return Ok(());
        }
        // Our own registration from before a reconnect (etcd keeps a lease alive across its
        // restart): take it over, and let its old lease go.
        let previous = *self
            .previous_lease
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = previous.filter(|p| *p != lease) {
            let mine = Txn::new()
                .when([Compare::lease(key, CompareOp::Equal, previous)])
                .and_then([put()]);
            if call("register", client.txn(mine)).await?.succeeded() {
                let _ = call("revoke the old lease", client.lease_revoke(previous)).await;
                self.remember_lease(lease);
                return Ok(());
            }
        }
        let _ = call("revoke the lease", client.lease_revoke(lease)).await;
        tracing::error!(
            node_id = %self.cluster.node_id(),
            key,
            "another live node holds this node id: not registering (give every node its own --node-id); retrying in case it goes away"
        );
        Err(End::Failed(format!(
            "the node id {} is held by another live node",
            self.cluster.node_id()
        )))
    }

    /// Hand the view to the cluster: its members, and for the write path's ownership the
    /// epoch of the last change that moved it (`moved`, when this one did) and the revision
    /// the view is current at.
    fn publish(&self, view: &View, moved: Option<u64>, revision: u64) {
        self.cluster.set_peers(view.nodes.clone());
        let epoch = moved.unwrap_or_else(|| self.cluster.owners().epoch());
        self.cluster
            .set_owners(view.nodes.clone(), view.self_draining, epoch, revision);
        let draining = view.drain_requested || self.shutdown.is_cancelled();
        if self.cluster.set_draining(draining) {
            tracing::info!(draining, "drain state changed");
        }
        self.metrics
            .cluster_members
            .set(self.cluster.peers().len() as i64 + 1);
    }
}

/// Whether a changed registration is worth a write that every node's watch will see. At
/// a thousand nodes, publishing every change of the connection count every 2 s would be
/// hundreds of thousands of watch events a second; so the count is published when it moved
/// by 1% of capacity, reached zero, or is 30 s old, or the node is draining (the operator
/// watches a draining node's count fall).
fn worth_publishing(old: &Member, new: &Member, age: Duration) -> bool {
    if old == new {
        return false;
    }
    let step = (new.capacity / 100).max(1);
    old.draining != new.draining
        || new.draining
        || old.advertise_url != new.advertise_url
        || old.connections.abs_diff(new.connections) >= step
        || (new.connections == 0) != (old.connections == 0)
        || age >= Duration::from_secs(30)
}

/// What the watched prefix holds.
#[derive(Default)]
struct View {
    nodes: HashMap<String, Member>,
    drain_requested: bool,
    self_missing: bool,
    /// This node's draining flag as its registration in etcd says.
    self_draining: bool,
}

impl View {
    /// What ownership of the write path's units depends on: who is a member, with what
    /// weight, and who drains (this node included), in a canonical order.
    fn ownership(&self) -> (Vec<(String, u64, bool)>, bool) {
        let mut nodes: Vec<(String, u64, bool)> = self
            .nodes
            .values()
            .map(|m| (m.node_id.clone(), m.capacity, m.draining))
            .collect();
        nodes.sort_unstable();
        (nodes, self.self_draining)
    }

    /// Apply one key's new value (`None`: deleted).
    fn apply(&mut self, prefix: &str, key: &[u8], value: Option<&[u8]>, me: &str) {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
        else {
            return;
        };
        if let Some(id) = rest.strip_prefix("nodes/") {
            if id == me {
                self.self_missing = value.is_none();
                if let Some(Ok(member)) = value.map(serde_json::from_slice::<Member>) {
                    self.self_draining = member.draining;
                }
                return;
            }
            match value.map(serde_json::from_slice::<Member>) {
                Some(Ok(member)) if member.node_id == id && !member.advertise_url.is_empty() => {
                    self.nodes.insert(id.to_owned(), member);
                }
                Some(Ok(_)) | Some(Err(_)) => {
                    tracing::warn!(node_id = id, "ignoring an unreadable member registration");
                    self.nodes.remove(id);
                }
                None => {
                    self.nodes.remove(id);
                }
            }
        } else if rest.strip_prefix("drain/") == Some(me) {
            self.drain_requested = value.is_some();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_load_changes_wait_but_drains_and_big_moves_do_not() {
        let old = Member {
            node_id: "a".into(),
            capacity: 10_000,
            connections: 500,
            ..Member::default()
        };
        let with = |connections, draining| Member {
            connections,
            draining,
            ..old.clone()
        };
        let fresh = Duration::from_secs(2);
        assert!(!worth_publishing(&old, &old, Duration::from_secs(60)));
        assert!(!worth_publishing(&old, &with(540, false), fresh));
        assert!(worth_publishing(
            &old,
            &with(540, false),
            Duration::from_secs(30)
        ));
        assert!(worth_publishing(&old, &with(600, false), fresh));
        assert!(worth_publishing(&old, &with(0, false), fresh));
        assert!(worth_publishing(&old, &with(500, true), fresh));
        assert!(worth_publishing(&with(3, true), &with(2, true), fresh));
    }

    #[test]
    fn the_view_follows_puts_and_deletes() {
        let prefix = cluster_prefix("c");
        let mut view = View::default();
        let b = serde_json::to_vec(&Member {
            node_id: "b".into(),
            advertise_url: "http://b".into(),
            ..Member::default()
        })
        .unwrap();
        view.apply(&prefix, b"/parley/c/nodes/b", Some(&b), "a");
        view.apply(&prefix, b"/parley/c/nodes/x", Some(b"not json"), "a");
        assert_eq!(view.nodes.keys().collect::<Vec<_>>(), ["b"]);
        view.apply(&prefix, b"/parley/c/drain/b", Some(b"{}"), "a");
        assert!(!view.drain_requested, "another node's drain is not ours");
        view.apply(&prefix, b"/parley/c/drain/a", Some(b"{}"), "a");
        assert!(view.drain_requested);
        view.apply(&prefix, b"/parley/c/drain/a", None, "a");
        assert!(!view.drain_requested, "deleting the key cancels the drain");
        view.apply(&prefix, b"/parley/c/nodes/b", None, "a");
        assert!(view.nodes.is_empty());
        view.apply(&prefix, b"/parley/c/nodes/a", None, "a");
        assert!(view.self_missing);
    }
}
