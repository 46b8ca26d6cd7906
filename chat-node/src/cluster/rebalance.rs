//! What a node does when membership changes: forget links to nodes that left, turn their
//! users offline for the contacts here, and move this node's users who now belong on
//! another node, spread over a window so that a change never becomes a reconnect storm.
//! The same happens to a user whose home region changed (`PATCH /v1/users/me`): their
//! sockets here are moved to their new node, within the window. When every node of the
//! cluster drains (a pause to zero replicas), there is nowhere to move to: the users are told
//! to reconnect later (no `ws_url`), and nodes refuse new sockets meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;

use super::link::Links;
use super::{Cluster, Owner};
use crate::hub::{Conn, Hub};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::protocol::CloseReason;

/// The rebalancer's parts.
pub struct Rebalancer {
    pub cluster: Arc<Cluster>,
    pub hub: Arc<Hub>,
    pub links: Arc<Links>,
    pub presence: Arc<Presence>,
    pub metrics: Arc<Metrics>,
    /// Moves after one change are spread over this long.
    pub window: Duration,
    pub shutdown: CancellationToken,
}

impl Rebalancer {
    /// Run until shutdown.
    pub async fn run(self) {
        let mut changes = self.cluster.subscribe();
        let mut known: HashSet<String> = self.cluster.peers().keys().cloned().collect();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = self.cluster.home_moves() => {
                    let users: HashSet<String> = self.cluster.take_moves().into_iter().collect();
                    let moving = self.held(|user| users.contains(user));
                    self.move_users(moving, &mut changes).await;
                    continue;
                }
                () = self.shutdown.cancelled() => return,
            }
            // Let a burst of changes (a node and its drain flag) settle into one pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
            changes.borrow_and_update();

            let now: HashSet<String> = self.cluster.peers().keys().cloned().collect();
            let left: Vec<String> = known.difference(&now).cloned().collect();
            known = now;
            self.links.retain_members();
            if !left.is_empty() {
                tracing::info!(nodes = ?left, "members left the cluster");
                self.presence.nodes_left(&left).await;
            }
            self.move_misplaced(&mut changes).await;
        }
    }

    /// This node's users for which `pick` is true, with their sockets.
    fn held(&self, pick: impl Fn(&str) -> bool) -> Vec<(String, Vec<Arc<Conn>>)> {
        let mut by_user: HashMap<String, Vec<Arc<Conn>>> = HashMap::new();
        for conn in self.hub.all() {
            if pick(&conn.user_id) {
                by_user.entry(conn.user_id.clone()).or_default().push(conn);
            }
        }
        by_user.into_iter().collect()
    }

    /// Tell every user whose owner is now another node to reconnect there, one at a time
    /// over the window. A newer change interrupts and the next pass starts over.
    async fn move_misplaced(&self, changes: &mut tokio::sync::watch::Receiver<u64>) {
        // Their homes must be known to place them (in a cluster spanning regions).
        let mut users: Vec<String> = self.hub.all().iter().map(|c| c.user_id.clone()).collect();
        users.sort_unstable();
        users.dedup();
        self.cluster.locate(&users).await;
        let paused = self.cluster.is_draining() && self.cluster.all_draining();
        let misplaced = self.held(|user| paused || !self.cluster.is_here(user));
        self.move_users(misplaced, changes).await;
    }

    /// Move `misplaced` users (those who still belong elsewhere when their turn comes), one
    /// at a time over the window, in random order. A membership change interrupts (and the
    /// next pass starts over).
    async fn move_users(
        &self,
        mut misplaced: Vec<(String, Vec<Arc<Conn>>)>,
        changes: &mut tokio::sync::watch::Receiver<u64>,
    ) {
        if misplaced.is_empty() {
            return;
        }
        misplaced.shuffle(&mut rand::rng());
        let pause = self.window / misplaced.len() as u32;
        tracing::info!(users = misplaced.len(), window = ?self.window, "moving users to their new nodes");
        for (user, conns) in misplaced {
            match self.cluster.owner(&user) {
                Owner::Peer(member) => {
                    for conn in &conns {
                        conn.redirect(Some(member.ws_url.clone()), "moved", CloseReason::MOVED);
                    }
                    self.metrics.users_moved.inc();
                }
                // Every node drains: nowhere to go yet.
                Owner::Here if self.cluster.is_draining() && self.cluster.all_draining() => {
                    for conn in &conns {
                        conn.redirect(None, "draining", CloseReason::DRAINING);
                    }
                }
                Owner::Here => {}
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                r = changes.changed() => {
                    if r.is_ok() {
                        // Put the change back for the main loop to see.
                        changes.mark_changed();
                    }
                    return;
                }
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}
