//! Sessions and their revocation, cluster-wide (PROTOCOL.md, second wave, "Sessions").
//!
//! Every device has a session generation in the store (`sg/{user}/{device}`, 0 until first
//! revoked); a token carries the generation it was issued at and is valid only while that
//! is the device's current one. Logging out, removing a device, changing the password, and
//! a login past `--max-devices-per-user` bump it.
//!
//! How fast every node knows:
//! - each HTTP call and socket open checks the generation through a per-node cache of at
//!   most [`CACHE_TTL`], so a revoked token is refused within that on every node even if
//!   nothing else reaches it;
//! - the revoking transaction also appends to the revocation feed (`rv/`); every node reads
//!   the feed's recent part every [`POLL_EVERY`], drops the cache entries it names and
//!   closes the sockets opened with an older generation (1008, [`CloseReason::REVOKED`]).
//!   The node that revoked does both at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth::Claims;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::protocol::{ApiError, CloseReason};
use crate::store::{ChatStore, Revocation, Revoke};

/// How long a node trusts a generation it read.
pub const CACHE_TTL: Duration = Duration::from_millis(1_000);
/// How often the revocation feed is read.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How far back each read of the feed looks (covers clock skew between nodes).
const FEED_WINDOW_MS: i64 = 30_000;
/// Entries this young are applied again on every read: a socket whose open raced with the
/// revocation (checked against a cache entry from just before it) is closed all the same.
const REAPPLY_MS: i64 = 3_000;
/// Most feed entries read at once.
const FEED_PAGE: usize = 1_000;
/// Most cached generations; past it the cache starts over.
const MAX_CACHED: usize = 200_000;

type DeviceKey = (String, String);

/// The sessions service.
pub struct Sessions {
    store: ChatStore,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    cache: Mutex<HashMap<DeviceKey, (u64, Instant)>>,
}

fn revoked() -> ApiError {
    ApiError::unauthorized(
        "this session was revoked (logged out, device removed or password changed); log in again with POST /v1/sessions",
    )
}

impl Sessions {
    pub fn new(store: ChatStore, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            hub,
            metrics,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceKey, (u64, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device's current generation, from the cache when it is fresh.
    pub async fn generation(&self, user_id: &str, device_id: &str) -> Result<u64, ApiError> {
        let key = (user_id.to_owned(), device_id.to_owned());
        if let Some((generation, at)) = self.cache().get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(*generation);
        }
        let generation = self.store.session_generation(user_id, device_id).await?;
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (generation, Instant::now()));
        Ok(generation)
    }

    /// 401 unless the token's generation is its device's current one.
    pub async fn check(&self, claims: &Claims) -> Result<(), ApiError> {
        if self.generation(&claims.sub, &claims.dev).await? == claims.generation {
            Ok(())
        } else {
            Err(revoked())
        }
    }

    /// `DELETE /v1/sessions/current`: the caller's device is logged out.
    pub async fn log_out(&self, claims: &Claims) -> Result<(), ApiError> {
        let now = now_ms();
        let generation = self
            .store
            .revoke_device(&claims.sub, &claims.dev, Revoke::LogOut, now)
            .await?;
        self.apply(&claims.sub, &claims.dev, generation);
        tracing::info!(user_id = %claims.sub, device_id = %claims.dev, "logged out");
        Ok(())
    }

    /// `DELETE /v1/devices/{device_id}`: the device is removed and its tokens revoked.
    pub async fn remove_device(&self, user_id: &str, device_id: &str) -> Result<(), ApiError> {
        let generation = self
            .store
            .revoke_device(user_id, device_id, Revoke::Remove, now_ms())
            .await?;
        self.apply(user_id, device_id, generation);
        tracing::info!(user_id, device_id, "device removed");
        Ok(())
    }

    /// A revocation took effect: forget the cached generation and close this node's
    /// sockets of the device that were opened with an older one.
    pub fn apply(&self, user_id: &str, device_id: &str, generation: u64) {
        let key = (user_id.to_owned(), device_id.to_owned());
        {
            let mut cache = self.cache();
            match cache.get(&key) {
                Some((known, _)) if *known >= generation => {}
                _ => {
                    cache.remove(&key);
                }
            }
        }
        for conn in self.hub.conns_of(user_id) {
            if conn.device_id == device_id && conn.generation() < generation {
                self.metrics.sessions_revoked.inc();
                conn.close(CloseReason::REVOKED);
            }
        }
    }

    fn apply_entry(&self, entry: &Revocation) {
        self.apply(&entry.user_id, &entry.device_id, entry.generation);
    }

    /// Follow the revocation feed until `stop`; every so often prune its old entries.
    pub async fn run_watcher(self: Arc<Self>, stop: CancellationToken) {
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            rounds += 1;
            let now = now_ms();
            match self
                .store
                .revocations_since(now - FEED_WINDOW_MS, FEED_PAGE)
                .await
            {
                Ok(entries) => {
                    for entry in &entries {
                        if now - entry.ts < REAPPLY_MS || !seen.contains(&entry.key) {
                            self.apply_entry(entry);
                        }
                    }
                    seen = entries.into_iter().map(|e| e.key).collect();
                }
                Err(e) => {
                    tracing::debug!(error = %e.message, "cannot read the revocation feed; retrying");
                }
            }
            // About once a minute, some node removes entries past their keep time.
            if rounds.is_multiple_of(120) {
                let before = now - crate::store::REVOCATION_FEED_KEEP_MS;
                if let Err(e) = self.store.prune_revocations(before, 500).await {
                    tracing::debug!(error = %e.message, "cannot prune the revocation feed");
                }
            }
        }
    }
}
