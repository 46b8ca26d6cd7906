//! The node's live connections: which devices of which users have a socket here, and each
//! socket's bounded outbound queue.
//!
//! Delivery never blocks on a socket: frames are queued in the socket's [`Conn`] and its
//! session task writes them out. A socket whose queue passes its byte budget (a client that
//! stopped reading) is marked for closing as a slow consumer instead of growing memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::CloseReason;

struct Queue {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
    close: Option<CloseReason>,
}

/// One socket's shared state: its device, its outbound queue and its last activity.
pub struct Conn {
    pub id: u64,
    pub user_id: String,
    pub device_id: String,
    queue: Mutex<Queue>,
    ready: Notify,
    budget: usize,
    last_active: AtomicI64,
    /// The session generation of the token the socket was opened with (`crate::sessions`).
    generation: AtomicU64,
    /// The session is not reading because its in-flight work is full: the node, not the
    /// client, is slow, so the heartbeat timeout does not run.
    paused: AtomicBool,
    /// The node drains: once its in-flight work is answered, the session points the client
    /// elsewhere and closes.
    drain: AtomicBool,
}

impl Conn {
    /// A connection whose queue may hold `budget` bytes before it is cut.
    pub fn new(user_id: String, device_id: String, budget: usize, now: i64) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            user_id,
            device_id,
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
            }),
            ready: Notify::new(),
            budget,
            last_active: AtomicI64::new(now),
            generation: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            drain: AtomicBool::new(false),
        }
    }

    /// Queue a text frame. Returns false when the socket is closing; when the frame would
    /// pass the budget, the socket is marked a slow consumer and the frame dropped (the
    /// client gets it back with `sync` after reconnecting).
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.close.is_some() {
            return false;
        }
        if q.bytes + frame.len() > self.budget && !q.frames.is_empty() {
            q.close = Some(CloseReason::SLOW_CONSUMER);
            q.frames.clear();
            q.bytes = 0;
            drop(q);
            self.ready.notify_one();
            return false;
        }
        q.bytes += frame.len();
        q.frames.push_back(frame);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Ask the session to close the socket with `reason` once queued frames are written.
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.close.get_or_insert(reason);
        drop(q);
        self.ready.notify_one();
    }

    /// Send a `reconnect` frame (to `ws_url` if known, else "ask /v1/assign"), then close.
    pub fn redirect(&self, ws_url: Option<String>, reason: &str, close: CloseReason) {
        let frame = crate::protocol::frames::ServerFrame::Reconnect {
            ws_url,
            reason: reason.to_owned(),
        };
        self.push(Utf8Bytes::from(frame.to_json()));
        self.close(close);
    }

    /// Ask the session to send its client elsewhere once its in-flight work is answered
    /// (the node drains).
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Relaxed);
        self.ready.notify_one();
    }

    /// Whether a drain was asked for.
    pub fn drain_requested(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// The session stopped reading (its work is full), or resumed: silence while paused is
    /// not the client's, so resuming counts as activity.
    pub fn set_paused(&self, paused: bool) {
        if self.paused.swap(paused, Ordering::Relaxed) && !paused {
            self.touch(crate::now_ms());
        }
    }

    /// Whether the socket was closed to send its client to another node (moved, draining).
    pub fn was_redirected(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&q.close, Some(r) if *r == CloseReason::MOVED || *r == CloseReason::DRAINING)
    }

    /// Wait until there is something to write or a close was asked for.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Take what is queued: the frames in order, then the close reason if any.
    pub fn take(&self, out: &mut Vec<Utf8Bytes>) -> Option<CloseReason> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(q.frames.drain(..));
        q.bytes = 0;
        // An idle socket keeps no queue memory.
        if q.frames.capacity() > 8 {
            q.frames = VecDeque::new();
        }
        q.close.clone()
    }

    /// Record the session generation of the socket's token.
    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn touch(&self, now: i64) {
        self.last_active.store(now, Ordering::Relaxed);
    }

    pub fn last_active(&self) -> i64 {
        self.last_active.load(Ordering::Relaxed)
    }
}

const SHARDS: usize = 64;

/// All sockets on this node, by user.
pub struct Hub {
    shards: Vec<Mutex<HashMap<String, Vec<Arc<Conn>>>>>,
    hasher: RandomState,
    connections: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            connections: AtomicU64::new(0),
        }
    }

    fn shard(&self, user_id: &str) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Conn>>>> {
        let i = (self.hasher.hash_one(user_id) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a socket. Returns true when the user was offline on this node until now.
    pub fn register(&self, conn: Arc<Conn>) -> bool {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(&conn.user_id);
        let conns = shard.entry(conn.user_id.clone()).or_default();
        conns.push(conn);
        conns.len() == 1
    }

    /// Remove a socket. Returns true when it was the user's last one here.
    pub fn unregister(&self, conn: &Conn) -> bool {
        let mut shard = self.shard(&conn.user_id);
        let Some(conns) = shard.get_mut(&conn.user_id) else {
            return false;
        };
        let before = conns.len();
        conns.retain(|c| c.id != conn.id);
        if conns.len() < before {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if conns.is_empty() {
            shard.remove(&conn.user_id);
            return before > 0;
        }
        false
    }

    pub fn is_online(&self, user_id: &str) -> bool {
        self.shard(user_id).contains_key(user_id)
    }

    /// The user's latest activity over their sockets here, if they have any.
    pub fn last_active(&self, user_id: &str) -> Option<i64> {
        self.shard(user_id)
            .get(user_id)
            .and_then(|conns| conns.iter().map(|c| c.last_active()).max())
    }

    /// The devices of `user_id` with a socket here.
    pub fn online_devices(&self, user_id: &str) -> Vec<String> {
        self.shard(user_id)
            .get(user_id)
            .map(|conns| conns.iter().map(|c| c.device_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Queue `frame` on every socket of `user_id`, except those of `except_device`. Returns
    /// how many sockets took it.
    pub fn send_to_user(
        &self,
        user_id: &str,
        frame: &Utf8Bytes,
        except_device: Option<&str>,
    ) -> usize {
        let targets: Vec<Arc<Conn>> = match self.shard(user_id).get(user_id) {
            Some(conns) => conns
                .iter()
                .filter(|c| Some(c.device_id.as_str()) != except_device)
                .cloned()
                .collect(),
            None => return 0,
        };
        targets.iter().filter(|c| c.push(frame.clone())).count()
    }

    /// The sockets of `user_id` on this node.
    pub fn conns_of(&self, user_id: &str) -> Vec<Arc<Conn>> {
        self.shard(user_id)
            .get(user_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Sockets whose device sent nothing since `oldest` (ms since the epoch), unless their
    /// session is paused: the heartbeat timeout, checked for every socket by one sweep
    /// rather than a timer per socket.
    pub fn silent_since(&self, oldest: i64) -> Vec<Arc<Conn>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for conns in shard.values() {
                out.extend(
                    conns
                        .iter()
                        .filter(|c| c.last_active() < oldest && !c.paused.load(Ordering::Relaxed))
                        .cloned(),
                );
            }
        }
        out
    }

    /// Every socket on the node (for draining).
    pub fn all(&self) -> Vec<Arc<Conn>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_over_budget_closes_as_slow_consumer() {
        let conn = Conn::new("u".into(), "d".into(), 10, 0);
        assert!(conn.push(Utf8Bytes::from("12345678")));
        assert!(
            !conn.push(Utf8Bytes::from("12345678")),
            "the second frame passes the budget"
        );
        let mut out = Vec::new();
        assert_eq!(conn.take(&mut out), Some(CloseReason::SLOW_CONSUMER));
        assert!(out.is_empty(), "a slow consumer's queue is dropped");
    }

    #[test]
    fn online_follows_the_last_socket() {
        let hub = Hub::new();
        let a = Arc::new(Conn::new("u".into(), "phone".into(), 1000, 0));
        let b = Arc::new(Conn::new("u".into(), "laptop".into(), 1000, 0));
        assert!(hub.register(a.clone()));
        assert!(!hub.register(b.clone()));
        assert_eq!(
            hub.send_to_user("u", &Utf8Bytes::from("x"), Some("phone")),
            1
        );
        assert!(!hub.unregister(&a));
        assert!(hub.is_online("u"));
        assert!(hub.unregister(&b));
        assert!(!hub.is_online("u"));
        assert_eq!(hub.connection_count(), 0);
    }
}
