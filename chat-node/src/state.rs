//! [`AppState`]: everything a request or a session needs, shared as `Arc<AppState>`. It
//! lives in a module of its own so that the edge ([`crate::api`], [`crate::gateway`]) and
//! start-up ([`crate::server`]) all use it without importing each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::Accounts;
use crate::auth::Claims;
use crate::chat::Chat;
use crate::cluster::Cluster;
use crate::cluster::link::Links;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::protocol::{ApiError, Limits};
use crate::push::Push;
use crate::sessions::Sessions;
use crate::store::ChatStore;

/// Everything a request or a session needs, shared as `Arc<AppState>`.
pub struct AppState {
    pub config: Config,
    pub limits: Limits,
    pub store: ChatStore,
    pub hub: std::sync::Arc<Hub>,
    pub presence: std::sync::Arc<Presence>,
    pub chat: Chat,
    pub accounts: Accounts,
    /// Limits against abuse: rates, counts (both edges ask it).
    pub limiters: std::sync::Arc<Limiters>,
    /// Session generations and the revocation feed (logout, device removal).
    pub revocation: std::sync::Arc<Sessions>,
    pub metrics: std::sync::Arc<Metrics>,
    pub cluster: std::sync::Arc<Cluster>,
    pub links: std::sync::Arc<Links>,
    /// Push notifications; `None` when no provider is configured.
    pub push: Option<std::sync::Arc<Push>>,
    /// Cancelled when the node starts draining.
    pub shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Set once the node serves (start-up done).
    pub ready: AtomicBool,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Start-up is done: `/readyz` may answer 200.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// `/readyz`: started, not draining, registered in discovery (in a cluster: under a
    /// live etcd lease, its node id its own), and the store answers (and is not poisoned).
    pub async fn readiness(&self) -> Result<(), ApiError> {
        if !self.ready.load(Ordering::Relaxed) || self.is_draining() || self.cluster.is_draining() {
            return Err(ApiError::unavailable("the node is starting or draining"));
        }
        if !self.cluster.is_serving() {
            return Err(ApiError::unavailable(
                "the node is not registered in etcd (discovery unreachable, lease lost, or its node id is held by another live node); it serves again once registered",
            ));
        }
        tokio::time::timeout(Duration::from_secs(2), self.store.kv().ping())
            .await
            .map_err(|_| ApiError::unavailable("the store did not answer within 2 s"))?
            .map_err(ApiError::from)
    }

    /// The bearer token of `Authorization`, checked (signature, expiry, session generation);
    /// 401 if absent, invalid or revoked.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let header = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("this call needs `Authorization: Bearer <token>`; get a token with POST /v1/sessions")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        self.accounts.authenticate(token.trim()).await
    }
}
