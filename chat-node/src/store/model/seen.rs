//! Last-seen times, coalesced. A disconnect (and a device's first connect) records its time
//! here and returns; one flusher writes everything recorded since its last pass as one blind
//! write batch per chunk, retrying with a growing wait while the store refuses.
//! A reconnect storm of 10,000 sockets was 20,000 transactions of two reads and two writes
//! each (a fifth of the node's CPU); now it is a few dozen blind batches.
//!
//! Reads of this node overlay what is still pending, so the node never shows an older time
//! than it recorded. Other nodes see a time once it is flushed: a few milliseconds later.
//! Like the single transactions before it, a flush does not wait for an fsync (a machine
//! crash costs a last-seen time a few seconds old); a clean shutdown flushes what is left.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::ChatStore;
use crate::protocol::ApiError;
use crate::store::records::encode_u64;
use crate::store::{Batch, keys};

/// Most writes one flushed entry makes: the device's time and its user's.
const OPS_PER_ENTRY: usize = 2;
/// Most entries in one flush batch (so one batch stays small on any backend).
const MAX_ENTRIES: usize = 512;
/// The flusher's first wait after the store refused a pass, and its longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One device's pending time, as a flush writes it.
struct Entry {
    user: String,
    device: String,
    at: i64,
    /// Write only if the device has no time yet (a connect: see [`ChatStore::note_online`]).
    if_absent: bool,
    /// The latest pending time of the user's devices whose times are written in any case.
    user_latest: Option<i64>,
}

/// A device's time waiting in memory.
struct Pending {
    device: String,
    at: i64,
    if_absent: bool,
}

/// Times recorded and not yet flushed, and the flusher's state.
#[derive(Default)]
pub(super) struct Seen {
    /// User → their devices' latest times recorded. A user has a handful of devices.
    pending: Mutex<HashMap<String, Vec<Pending>>>,
    /// A flusher task runs, or is about to.
    scheduled: AtomicBool,
    /// Held for a whole flush pass: one pass at a time (the task's or the shutdown's).
    flushing: tokio::sync::Mutex<()>,
    /// Passes the store refused, since start (for the tests of the retry).
    failed_passes: AtomicU64,
}

impl Seen {
    /// Record `ts` for `(user, device)`, keeping the later time; an entry to be written in
    /// any case stays so. True when it is the first entry since the flusher last ran dry
    /// and the caller must start one.
    fn record(&self, user_id: &str, device_id: &str, ts: i64, if_absent: bool) -> bool {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let devices = pending.entry(user_id.to_owned()).or_default();
            match devices.iter_mut().find(|p| p.device == device_id) {
                Some(p) => {
                    p.at = p.at.max(ts);
                    p.if_absent &= if_absent;
                }
                None => devices.push(Pending {
                    device: device_id.to_owned(),
                    at: ts,
                    if_absent,
                }),
            }
        }
        !self.scheduled.swap(true, Ordering::SeqCst)
    }

    /// The latest pending time of `user_id` (any device).
    pub(super) fn user(&self, user_id: &str) -> Option<i64> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .get(user_id)
            .and_then(|devices| devices.iter().map(|p| p.at).max())
    }

    /// [`Seen::user`], if `user_id` has a pending definitive time (a disconnect's, not a
    /// connect's only-if-absent one): the flush then writes their `ls/` blindly, so what is
    /// pending is what the store will hold.
    pub(super) fn user_if_definitive(&self, user_id: &str) -> Option<i64> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let devices = pending.get(user_id)?;
        if devices.iter().any(|p| !p.if_absent) {
            devices.iter().map(|p| p.at).max()
        } else {
            None
        }
    }

    /// The pending time of one device.
    pub(super) fn device(&self, user_id: &str, device_id: &str) -> Option<i64> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .get(user_id)?
            .iter()
            .find(|p| p.device == device_id)
            .map(|p| p.at)
    }

    /// Up to `limit` pending entries, copied: they stay pending (and visible to reads) until
    /// their flush commits. Each carries its user's latest time over all their pending
    /// devices, so that a user whose devices fall in two chunks is written the same time by
    /// both.
    fn snapshot(&self, limit: usize) -> Vec<Entry> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .iter()
            .flat_map(|(user, devices)| {
                let latest = devices.iter().filter(|p| !p.if_absent).map(|p| p.at).max();
                devices.iter().map(move |p| Entry {
                    user: user.clone(),
                    device: p.device.clone(),
                    at: p.at,
                    if_absent: p.if_absent,
                    user_latest: latest,
                })
            })
            .take(limit)
            .collect()
    }

    /// Drop what is pending for a device that was removed.
    pub(super) fn forget(&self, user_id: &str, device_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(devices) = pending.get_mut(user_id) {
            devices.retain(|p| p.device != device_id);
            if devices.is_empty() {
                pending.remove(user_id);
            }
        }
    }

    /// Forget flushed entries, unless a later time was recorded meanwhile.
    fn flushed(&self, entries: &[Entry]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            let Some(devices) = pending.get_mut(&e.user) else {
                continue;
            };
            // Keep what changed meanwhile: a later time, or a definitive time
            // recorded over the only-if-absent one that was flushed.
            let became_definitive = |p: &Pending| !p.if_absent && e.if_absent;
            devices.retain(|p| p.device != e.device || p.at > e.at || became_definitive(p));
            if devices.is_empty() {
                pending.remove(&e.user);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

impl ChatStore {
    /// Record that `user_id` (on `device_id`) was last active at `ts` (a socket closed).
    /// Returns at once: the time is visible to this node's reads now and written within
    /// milliseconds.
    pub fn set_last_seen(&self, user_id: &str, device_id: &str, ts: i64) {
        self.record_seen(user_id, device_id, ts, false);
    }

    /// A socket of `device_id` opened at `ts`: written only if the device has no time yet
    /// (its first session), so that a device that was online has a time even if the node
    /// dies before the socket closes. A device that has one keeps it until the close
    /// writes the new one: while online, contacts see the live time, not the stored one
    /// (docs/protocol.md), and a reconnect then costs one read, not two writes.
    pub fn note_online(&self, user_id: &str, device_id: &str, ts: i64) {
        self.record_seen(user_id, device_id, ts, true);
    }

    fn record_seen(&self, user_id: &str, device_id: &str, ts: i64, if_absent: bool) {
        if self.seen.record(user_id, device_id, ts, if_absent) {
            let store = self.clone();
            tokio::spawn(async move { store.flush_seen_task().await });
        }
    }

    /// Write every pending last-seen time now (a clean shutdown, before the store closes).
    pub async fn flush_last_seen(&self) -> Result<(), ApiError> {
        let _pass = self.seen.flushing.lock().await;
        self.flush_seen_pass().await
    }

    /// The flusher: passes until nothing is pending, then stands down (the next record
    /// starts another). A failed pass keeps its entries pending and the flusher running: it
    /// retries after [`RETRY_FIRST`], doubling to [`RETRY_MAX`] while the store refuses
    /// (a plain doubling sleep: one task, nothing for a retry crate to add).
    async fn flush_seen_task(&self) {
        let mut retry = RETRY_FIRST;
        loop {
            let failed = {
                let _pass = self.seen.flushing.lock().await;
                self.flush_seen_pass().await.err()
            };
            if let Some(e) = failed {
                self.seen.failed_passes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %e.message,
                    retry_in_ms = retry.as_millis() as u64,
                    "could not write last-seen times; they stay pending and are retried"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            retry = RETRY_FIRST;
            self.seen.scheduled.store(false, Ordering::SeqCst);
            // A record between the pass and the store above saw `scheduled` set and started
            // nothing: take it over unless another task already has.
            if self.seen.is_empty() || self.seen.scheduled.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Write what is pending, one batch per chunk. The caller holds `flushing`.
    async fn flush_seen_pass(&self) -> Result<(), ApiError> {
        let limit = MAX_ENTRIES
            .min(self.kv.max_batch_ops() / OPS_PER_ENTRY)
            .max(1);
        loop {
            let entries = self.seen.snapshot(limit);
            if entries.is_empty() {
                return Ok(());
            }
            self.write_seen(&entries).await?;
            self.seen.flushed(&entries);
            if entries.len() < limit {
                return Ok(());
            }
        }
    }

    /// One blind batch: each device's time and each user's. No read: the times have keys of
    /// their own (`dl/`, `ls/`), written by the node that holds the user's sockets, so the
    /// flush costs no store lookups and no conflict checks. A time only moves back when
    /// an older one is recorded after a newer one was flushed (a socket of the same user on
    /// another node closing late during a move): the user is online then, and shown online
    /// with their live activity, and their next disconnect writes a fresh time.
    async fn write_seen(&self, entries: &[Entry]) -> Result<(), ApiError> {
        // The connects' entries: written only where the device has no time yet.
        let firsts: Vec<Vec<u8>> = entries
            .iter()
            .filter(|e| e.if_absent)
            .map(|e| keys::device_seen(&e.user, &e.device))
            .collect();
        let stored = if firsts.is_empty() {
            Vec::new()
        } else {
            self.kv
                .get_many(&firsts)
                .await
                .map_err(|e| self.failed(e))?
        };
        let mut stored = stored.into_iter();
        let mut batch = Batch::default();
        // A user's devices are adjacent in a snapshot: one write per user, of the latest
        // time written for any of their devices.
        let mut user: Option<(&str, i64)> = None;
        for e in entries {
            if e.if_absent && stored.next().flatten().is_some() {
                continue;
            }
            batch.put(
                keys::device_seen(&e.user, &e.device),
                encode_u64(e.at.max(0) as u64).to_vec(),
            );
            let latest = e.user_latest.unwrap_or(e.at).max(e.at);
            user = match user {
                Some((u, at)) if u == e.user => Some((u, at.max(latest))),
                Some((u, at)) => {
                    batch.put(keys::last_seen(u), encode_u64(at.max(0) as u64).to_vec());
                    Some((&e.user, latest))
                }
                None => Some((&e.user, latest)),
            };
        }
        if let Some((u, at)) = user {
            batch.put(keys::last_seen(u), encode_u64(at.max(0) as u64).to_vec());
        }
        self.kv
            .apply(&batch, None)
            .await
            .map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::embedded::Embedded;
    use crate::store::records::decode_u64;
    use crate::store::{Guard, Kv, KvTxn, StoreError};

    /// The embedded store, with writes by batch refused while `refuse` is set.
    struct Refusing {
        inner: Embedded,
        refuse: AtomicBool,
        applies: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Kv for Refusing {
        async fn begin(&self) -> Result<Box<dyn KvTxn>, StoreError> {
            self.inner.begin().await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            self.inner.sync().await
        }
        async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
            self.inner.get_many(keys).await
        }
        async fn apply(&self, batch: &Batch, guard: Option<&Guard>) -> Result<(), StoreError> {
            self.applies.fetch_add(1, Ordering::SeqCst);
            if self.refuse.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("refused by the test".into()));
            }
            self.inner.apply(batch, guard).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
        fn name(&self) -> &'static str {
            "refusing"
        }
    }

    async fn stored(store: &ChatStore, user: &str) -> Option<u64> {
        let key = keys::last_seen(user);
        let value = store
            .kv()
            .get_many(std::slice::from_ref(&key))
            .await
            .unwrap();
        value[0].as_ref().map(|v| decode_u64(&key, v).unwrap())
    }

    #[tokio::test]
    async fn a_recorded_time_is_read_at_once_and_written_by_the_flush_the_later_winning() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChatStore::new(Arc::new(Embedded::open(dir.path()).unwrap()));
        store.touch_device("a", "phone", 1, 0).await.unwrap();
        store.touch_device("a", "laptop", 1, 0).await.unwrap();

        store.set_last_seen("a", "phone", 500);
        store.set_last_seen("a", "laptop", 300);
        // Visible before any flush, per user and per device.
        assert_eq!(store.last_seen("a").await.unwrap(), Some(500));
        let devices = store.devices("a").await.unwrap();
        let of = |id: &str| {
            devices
                .iter()
                .find(|d| d.device_id == id)
                .unwrap()
                .last_seen
        };
        assert_eq!((of("phone"), of("laptop")), (Some(500), Some(300)));

        store.flush_last_seen().await.unwrap();
        assert!(
            store.seen.is_empty(),
            "a flushed entry is no longer pending"
        );
        assert_eq!(stored(&store, "a").await, Some(500));

        let devices = store.devices("a").await.unwrap();
        let of = |id: &str| {
            devices
                .iter()
                .find(|d| d.device_id == id)
                .unwrap()
                .last_seen
        };
        assert_eq!(
            (of("phone"), of("laptop")),
            (Some(500), Some(300)),
            "read back stored"
        );

        // Two times recorded between flushes (sockets closing out of order): the later wins.
        store.set_last_seen("a", "phone", 900);
        store.set_last_seen("a", "phone", 700);
        assert_eq!(store.last_seen("a").await.unwrap(), Some(900));
        store.flush_last_seen().await.unwrap();
        assert_eq!(stored(&store, "a").await, Some(900));
    }

    #[tokio::test]
    async fn a_connect_writes_a_time_only_for_a_device_that_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChatStore::new(Arc::new(Embedded::open(dir.path()).unwrap()));
        store.touch_device("a", "phone", 1, 0).await.unwrap();

        // First session: the connect's time is written.
        store.note_online("a", "phone", 100);
        store.flush_last_seen().await.unwrap();
        assert_eq!(stored(&store, "a").await, Some(100));

        // Closed, then a reconnect: the close's time stays stored, the connect's is only
        // read back while pending.
        store.set_last_seen("a", "phone", 200);
        store.flush_last_seen().await.unwrap();
        store.note_online("a", "phone", 300);
        assert_eq!(store.last_seen("a").await.unwrap(), Some(300));
        store.flush_last_seen().await.unwrap();
        assert!(store.seen.is_empty());
        assert_eq!(stored(&store, "a").await, Some(200));

        // A close merged with a pending connect is written in any case.
        store.note_online("a", "phone", 400);
        store.set_last_seen("a", "phone", 350);
        store.flush_last_seen().await.unwrap();
        assert_eq!(stored(&store, "a").await, Some(400));
        let devices = store.devices("a").await.unwrap();
        assert_eq!(devices[0].last_seen, Some(400));
    }

    #[tokio::test]
    async fn a_refused_flush_keeps_its_times_and_is_retried_with_a_growing_wait() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Arc::new(Refusing {
            inner: Embedded::open(dir.path()).unwrap(),
            refuse: AtomicBool::new(true),
            applies: AtomicU64::new(0),
        });
        let store = ChatStore::new(kv.clone());
        store.set_last_seen("a", "phone", 700);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // 50 + 100 + 200 ms of waits: a handful of tries, not a busy loop.
        let tries = kv.applies.load(Ordering::SeqCst);
        assert!((2..=6).contains(&tries), "{tries} flush attempts in 400 ms");
        assert_eq!(store.seen.failed_passes.load(Ordering::SeqCst), tries);
        assert_eq!(
            store.last_seen("a").await.unwrap(),
            Some(700),
            "still pending"
        );
        assert_eq!(stored(&store, "a").await, None);
        // The store answers again: the next try writes it and the flusher stands down.
        kv.refuse.store(false, Ordering::SeqCst);
        for _ in 0..200 {
            if store.seen.is_empty() && !store.seen.scheduled.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stored(&store, "a").await, Some(700));
        assert!(
            !store.seen.scheduled.load(Ordering::SeqCst),
            "the flusher stood down"
        );
    }

    #[tokio::test]
    async fn the_flusher_writes_a_storm_of_records_in_few_chunks_and_stands_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChatStore::new(Arc::new(Embedded::open(dir.path()).unwrap()));
        let users: Vec<String> = (0..2 * MAX_ENTRIES + 7).map(|i| format!("u{i}")).collect();
        for (i, user) in users.iter().enumerate() {
            store.set_last_seen(user, "d", i as i64 + 1);
        }
        // The spawned flusher drains everything without being asked.
        for _ in 0..500 {
            if store.seen.is_empty() && !store.seen.scheduled.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(store.seen.is_empty(), "the flusher left entries pending");
        for (i, user) in users.iter().enumerate() {
            assert_eq!(stored(&store, user).await, Some(i as u64 + 1), "{user}");
        }
    }
}
