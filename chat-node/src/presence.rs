//! Presence: a user is online while one of their devices has a socket on this node (the
//! node that holds all of a user's devices), and mutual contacts hear of each change once.
//!
//! Transitions are announced per user under a lock and compared with what was last
//! announced, so a connect racing a disconnect can never leave contacts with a stale status
//! or tell them the same thing twice.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::{Conn, Hub};
use crate::metrics::Metrics;
use crate::protocol::ApiError;
use crate::protocol::frames::{ServerFrame, Status};
use crate::store::ChatStore;

const STRIPES: usize = 64;

/// The presence service.
pub struct Presence {
    store: ChatStore,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Users announced online (absent: offline), guarded per stripe of users.
    announced: Mutex<HashSet<String>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
}

impl Presence {
    pub fn new(store: ChatStore, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            hub,
            metrics,
            announced: Mutex::new(HashSet::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// A socket opened: register it, announce the user if they just came online, and
    /// queue on the new socket the status of each of the user's mutual contacts.
    pub async fn connected(&self, conn: &Arc<Conn>, now: i64) -> Result<(), ApiError> {
        self.hub.register(conn.clone());
        self.store
            .set_last_seen(&conn.user_id, &conn.device_id, now)
            .await?;
        self.announce(&conn.user_id).await?;
        for contact in self.store.mutual_contacts(&conn.user_id).await? {
            let (status, last_seen) = self.status(&contact).await?;
            let frame = ServerFrame::Presence {
                user: contact,
                status,
                last_seen,
            };
            conn.push(Utf8Bytes::from(frame.to_json()));
        }
        Ok(())
    }

    /// A socket closed: unregister it, remember when the device was last active, and
    /// announce the user offline if it was their last socket.
    pub async fn disconnected(&self, conn: &Conn) -> Result<(), ApiError> {
        self.hub.unregister(conn);
        self.store
            .set_last_seen(&conn.user_id, &conn.device_id, conn.last_active())
            .await?;
        self.announce(&conn.user_id).await
    }

    /// A user's status and last activity, as contacts see it.
    pub async fn status(&self, user_id: &str) -> Result<(Status, Option<i64>), ApiError> {
        match self.hub.last_active(user_id) {
            Some(ts) => Ok((Status::Online, Some(ts))),
            None => Ok((Status::Offline, self.store.last_seen(user_id).await?)),
        }
    }

    /// Tell `user_id`'s online mutual contacts of a status change, if there was one since
    /// the last announcement.
    async fn announce(&self, user_id: &str) -> Result<(), ApiError> {
        let stripe = (self.hasher.hash_one(user_id) as usize) % STRIPES;
        let _guard = self.stripes[stripe].lock().await;
        let online = self.hub.is_online(user_id);
        let was_online = self.lock_announced().contains(user_id);
        if online == was_online {
            return Ok(());
        }
        let (status, last_seen) = self.status(user_id).await?;
        let frame = Utf8Bytes::from(
            ServerFrame::Presence {
                user: user_id.to_owned(),
                status,
                last_seen,
            }
            .to_json(),
        );
        for contact in self.store.mutual_contacts(user_id).await? {
            self.hub.send_to_user(&contact, &frame, None);
        }
        let mut announced = self.lock_announced();
        if online {
            announced.insert(user_id.to_owned());
        } else {
            announced.remove(user_id);
        }
        self.metrics.online_users.set(announced.len() as i64);
        Ok(())
    }

    fn lock_announced(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.announced.lock().unwrap_or_else(|p| p.into_inner())
    }
}
