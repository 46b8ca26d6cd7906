//! What a node does when membership changes: forget links to nodes that left, turn their
//! users offline for the contacts here, and move this node's users who now belong on
//! another node, spread over a window so that a change never becomes a reconnect storm.

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

    /// Tell every user whose owner is now another node to reconnect there, one at a time
    /// over the window. A newer change interrupts and the next pass starts over.
    async fn move_misplaced(&self, changes: &mut tokio::sync::watch::Receiver<u64>) {
        let mut by_user: HashMap<String, Vec<Arc<Conn>>> = HashMap::new();
        for conn in self.hub.all() {
            by_user.entry(conn.user_id.clone()).or_default().push(conn);
        }
        let mut misplaced: Vec<(String, Vec<Arc<Conn>>)> = by_user
            .into_iter()
            .filter(|(user, _)| !self.cluster.is_here(user))
            .collect();
        if misplaced.is_empty() {
            return;
        }
        misplaced.shuffle(&mut rand::rng());
        let pause = self.window / misplaced.len() as u32;
        tracing::info!(users = misplaced.len(), window = ?self.window, "moving users to their new nodes");
        for (user, conns) in misplaced {
            if let Owner::Peer(member) = self.cluster.owner(&user) {
                for conn in &conns {
                    conn.redirect(Some(member.ws_url.clone()), "moved", CloseReason::MOVED);
                }
                self.metrics.users_moved.inc();
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
