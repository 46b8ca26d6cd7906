//! Presence: a user is online while one of their devices has a socket on their node (the
//! node that holds all of a user's devices), and mutual contacts hear of each change once.
//!
//! Transitions are announced per user under a lock and compared with what was last
//! announced, so a connect racing a disconnect can never leave contacts with a stale status
//! or tell them the same thing twice. In a cluster the user's node is the one that decides;
//! it sends the change to the nodes of the user's mutual contacts over the links. Each node
//! remembers which remote users it told its local users were online, so that when a node
//! dies those users turn offline here as soon as its lease expires.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::link::{Event, Links, StatusAnswer};
use crate::hub::{Conn, Hub};
use crate::metrics::Metrics;
use crate::protocol::ApiError;
use crate::protocol::frames::{ServerFrame, Status};
use crate::store::ChatStore;

const STRIPES: usize = 64;

/// How long after moving a user elsewhere this node waits before deciding they went offline.
pub const MOVE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A user online on another node, as this node's users were told.
struct Remote {
    node: String,
    viewers: HashSet<String>,
}

/// The presence service.
pub struct Presence {
    store: ChatStore,
    hub: Arc<Hub>,
    links: Arc<Links>,
    metrics: Arc<Metrics>,
    /// Users announced online (absent: offline), guarded per stripe of users.
    announced: Mutex<HashSet<String>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
    /// Remote users this node's users believe online, by user.
    remote: Mutex<HashMap<String, Remote>>,
}

/// A user's status as contacts see it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub user: String,
    pub status: Status,
    pub last_seen: Option<i64>,
    /// The other node the user is online on, if any.
    pub node: Option<String>,
}

impl Seen {
    fn frame(&self) -> Utf8Bytes {
        Utf8Bytes::from(
            ServerFrame::Presence {
                user: self.user.clone(),
                status: self.status,
                last_seen: self.last_seen,
            }
            .to_json(),
        )
    }
}

impl Presence {
    pub fn new(store: ChatStore, hub: Arc<Hub>, links: Arc<Links>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            hub,
            links,
            metrics,
            announced: Mutex::new(HashSet::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            remote: Mutex::new(HashMap::new()),
        }
    }

    /// A socket is about to open (before its `101`): deliveries to its user reach its
    /// queue from now on. [`Presence::connected`] follows once the session runs.
    pub fn register(&self, conn: Arc<Conn>) {
        self.hub.register(conn);
    }

    /// A registered socket that never ran (its upgrade failed, or it was sent elsewhere).
    pub fn abandon(&self, conn: &Conn) {
        self.hub.unregister(conn);
    }

    /// A registered socket's session runs: record it, announce the user if they just came online, and
    /// queue on the new socket the status of each of the user's mutual contacts.
    pub async fn connected(&self, conn: &Arc<Conn>, now: i64) -> Result<(), ApiError> {
        self.store.note_online(&conn.user_id, &conn.device_id, now);
        let contacts = match self.announce(&conn.user_id).await? {
            Some(contacts) => contacts,
            None => self.store.mutual_contacts(&conn.user_id).await?,
        };
        for seen in self.statuses(&contacts).await? {
            if let Some(node) = &seen.node {
                self.track(&seen.user, node, [conn.user_id.as_str()]);
            }
            conn.push(seen.frame());
        }
        Ok(())
    }

    /// A socket closed: unregister it, remember when the device was last active, and
    /// announce the user offline if it was their last socket. A socket this node sent
    /// elsewhere (a move or a drain) is not an offline: its user is on the way to their new
    /// node, which announces nothing new to contacts who already see them online; the
    /// offline waits [`MOVE_GRACE`] and is announced only if the user is online nowhere.
    pub async fn disconnected(self: &Arc<Self>, conn: &Conn) -> Result<(), ApiError> {
        self.hub.unregister(conn);
        self.store
            .set_last_seen(&conn.user_id, &conn.device_id, conn.last_active());
        if conn.was_redirected() && !self.hub.is_online(&conn.user_id) {
            self.hand_over(&conn.user_id).await?;
            let this = self.clone();
            let user = conn.user_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(MOVE_GRACE).await;
                if let Err(e) = this.after_move(&user).await {
                    tracing::warn!(user_id = %user, error = %e.message, "presence after a move");
                }
            });
            return Ok(());
        }
        self.announce(&conn.user_id).await.map(drop)
    }

    /// Remember that this node's viewers of `user_id` were told "online", so that the
    /// user's next node announcing "online" does not tell them twice.
    async fn hand_over(&self, user_id: &str) -> Result<(), ApiError> {
        if !self.lock_announced().contains(user_id) {
            return Ok(());
        }
        let contacts = self.store.mutual_contacts(user_id).await?;
        let (local, _) = self
            .links
            .cluster()
            .partition(contacts.iter().map(String::as_str));
        self.track(user_id, "", local);
        Ok(())
    }

    /// [`MOVE_GRACE`] after a user was sent elsewhere: if they are back here, or online on
    /// another node, nothing changed for their contacts; otherwise announce them offline.
    async fn after_move(&self, user_id: &str) -> Result<(), ApiError> {
        if self.hub.is_online(user_id) {
            return Ok(());
        }
        if self
            .online_among(&[user_id.to_owned()])
            .await
            .contains(user_id)
        {
            let mut announced = self.lock_announced();
            announced.remove(user_id);
            self.metrics.online_users.set(announced.len() as i64);
            return Ok(());
        }
        self.lock_remote().remove(user_id);
        self.announce(user_id).await.map(drop)
    }

    /// A user's status and last activity, as contacts see it.
    pub async fn status(&self, user_id: &str) -> Result<(Status, Option<i64>), ApiError> {
        let seen = self.statuses(&[user_id.to_owned()]).await?;
        Ok(seen
            .into_iter()
            .next()
            .map_or((Status::Offline, None), |s| (s.status, s.last_seen)))
    }

    /// The status of each of `users`, asking the nodes they belong on. A node that does
    /// not answer counts its users offline (with their stored last activity).
    pub async fn statuses(&self, users: &[String]) -> Result<Vec<Seen>, ApiError> {
        let online = self.online_map(users).await;
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            out.push(match online.get(user.as_str()) {
                Some((ts, node)) => Seen {
                    user: user.clone(),
                    status: Status::Online,
                    last_seen: Some(*ts),
                    node: node.clone(),
                },
                None => Seen {
                    user: user.clone(),
                    status: Status::Offline,
                    last_seen: self.store.last_seen(user).await?,
                    node: None,
                },
            });
        }
        Ok(out)
    }

    /// Which of `users` are online anywhere (push notifications skip them).
    pub async fn online_among(&self, users: &[String]) -> HashSet<String> {
        self.online_map(users)
            .await
            .into_keys()
            .map(str::to_owned)
            .collect()
    }

    /// Which of `users` are online, with their last activity and the other node they are
    /// on (absent: here), asking each node for its users.
    pub async fn online_map<'u>(
        &self,
        users: &'u [String],
    ) -> HashMap<&'u str, (i64, Option<String>)> {
        let cluster = self.links.cluster();
        let (local, remote) = cluster.partition(users.iter().map(String::as_str));
        let mut online = HashMap::new();
        for user in local {
            if let Some(ts) = self.hub.last_active(user) {
                online.insert(user, (ts, None));
            }
        }
        let asks = remote.into_iter().map(|(node, users)| async move {
            let answer = self.links.status(&node, &users).await;
            (node, users, answer)
        });
        for (node, users, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(answer) => {
                    for user in users {
                        if let Some(ts) = answer.online.get(user) {
                            online.insert(user, (*ts, Some(node.clone())));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence: a node did not answer; its users count as offline")
                }
            }
        }
        online
    }

    /// Which of `users` are online on this node, with their last activity and devices (a
    /// peer's status question).
    pub fn local_online(&self, users: &[String]) -> StatusAnswer {
        let mut answer = StatusAnswer::default();
        for user in users {
            if let Some(ts) = self.hub.last_active(user) {
                answer.online.insert(user.clone(), ts);
                answer
                    .devices
                    .insert(user.clone(), self.hub.online_devices(user));
            }
        }
        answer
    }

    /// The devices of `user_id` with an open socket, on whichever node holds them.
    /// (Where the user's home region is not known here, every node they could be on is
    /// asked: see `Cluster::partition_by`.)
    pub async fn online_devices(&self, user_id: &str) -> Vec<String> {
        let (local, remote) = self.links.cluster().partition([user_id]);
        let mut devices = if local.is_empty() {
            Vec::new()
        } else {
            self.hub.online_devices(user_id)
        };
        for node in remote.keys() {
            match self.links.status(node, &[user_id]).await {
                Ok(mut answer) => {
                    devices.extend(answer.devices.remove(user_id).unwrap_or_default())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence: a node did not answer; its devices count as offline");
                }
            }
        }
        devices.sort();
        devices.dedup();
        devices
    }

    /// Tell `user_id`'s online mutual contacts of a status change, if there was one since
    /// the last announcement. Returns the mutual contacts when it read them (a connect
    /// needs them too).
    async fn announce(&self, user_id: &str) -> Result<Option<Vec<String>>, ApiError> {
        let stripe = (self.hasher.hash_one(user_id) as usize) % STRIPES;
        let _guard = self.stripes[stripe].lock().await;
        let last_active = self.hub.last_active(user_id);
        let online = last_active.is_some();
        let was_online = self.lock_announced().contains(user_id);
        if online == was_online {
            return Ok(None);
        }
        let seen = Seen {
            user: user_id.to_owned(),
            status: if online {
                Status::Online
            } else {
                Status::Offline
            },
            last_seen: match last_active {
                Some(ts) => Some(ts),
                None => self.store.last_seen(user_id).await?,
            },
            node: None,
        };
        let contacts = self.store.mutual_contacts(user_id).await?;
        let (local, remote) = self
            .links
            .cluster()
            .partition(contacts.iter().map(String::as_str));
        let frame = seen.frame();
        // Contacts here who were told "online" while the user was on another node (a move)
        // heard nothing new.
        let told = if online {
            self.lock_remote()
                .remove(user_id)
                .map(|r| r.viewers)
                .unwrap_or_default()
        } else {
            HashSet::new()
        };
        for contact in local.into_iter().filter(|c| !told.contains(*c)) {
            self.hub.send_to_user(contact, &frame, None);
        }
        for (node, to) in remote {
            let event = Event::Presence {
                user: seen.user.clone(),
                status: seen.status,
                last_seen: seen.last_seen,
                to: to.into_iter().map(str::to_owned).collect(),
            };
            self.links.send(&node, &event);
        }
        let mut announced = self.lock_announced();
        if online {
            announced.insert(user_id.to_owned());
        } else {
            announced.remove(user_id);
        }
        self.metrics.online_users.set(announced.len() as i64);
        Ok(Some(contacts))
    }

    /// A peer (`from`, the user's node) announced a change: tell the contacts here, and
    /// remember who believes the user online.
    pub fn remote_change(
        &self,
        from: &str,
        user: String,
        status: Status,
        last_seen: Option<i64>,
        to: Vec<String>,
    ) {
        let seen = Seen {
            user,
            status,
            last_seen,
            node: None,
        };
        let frame = seen.frame();
        let told = match status {
            Status::Online => self
                .lock_remote()
                .get(&seen.user)
                .map(|r| r.viewers.clone())
                .unwrap_or_default(),
            Status::Offline => HashSet::new(),
        };
        for viewer in to.iter().filter(|v| !told.contains(*v)) {
            self.hub.send_to_user(viewer, &frame, None);
        }
        match status {
            // Only viewers with a socket here are remembered: a viewer who connects later
            // asks for the status afresh, and a node that is not the viewer's (an event sent
            // to every node the viewer could be on) keeps nothing.
            Status::Online => self.track(
                &seen.user,
                from,
                to.iter()
                    .map(String::as_str)
                    .filter(|v| self.hub.is_online(v)),
            ),
            Status::Offline => {
                let mut remote = self.lock_remote();
                if remote.get(&seen.user).is_some_and(|r| r.node == from) {
                    remote.remove(&seen.user);
                }
            }
        }
    }

    fn track<'a>(&self, user: &str, node: &str, viewers: impl IntoIterator<Item = &'a str>) {
        let mut remote = self.lock_remote();
        let entry = remote.entry(user.to_owned()).or_insert_with(|| Remote {
            node: node.to_owned(),
            viewers: HashSet::new(),
        });
        // The user moved: everyone told "online" so far still believes it.
        entry.node = node.to_owned();
        entry.viewers.extend(viewers.into_iter().map(str::to_owned));
    }

    /// Nodes left the cluster (their leases expired): the users this node's users saw
    /// online there are offline now, unless they came back elsewhere since.
    pub async fn nodes_left(&self, nodes: &[String]) {
        let gone: Vec<(String, HashSet<String>)> = {
            let mut remote = self.lock_remote();
            let users: Vec<String> = remote
                .iter()
                .filter(|(_, r)| nodes.contains(&r.node))
                .map(|(u, _)| u.clone())
                .collect();
            users
                .into_iter()
                .filter_map(|u| remote.remove(&u).map(|r| (u, r.viewers)))
                .collect()
        };
        for (user, viewers) in gone {
            if self.hub.is_online(&user) {
                continue;
            }
            let last_seen = self.store.last_seen(&user).await.ok().flatten();
            let frame = Seen {
                user,
                status: Status::Offline,
                last_seen,
                node: None,
            }
            .frame();
            for viewer in viewers {
                self.hub.send_to_user(&viewer, &frame, None);
            }
        }
    }

    fn lock_announced(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.announced.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_remote(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remote>> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }
}
