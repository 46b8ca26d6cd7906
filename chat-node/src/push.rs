//! Push notifications for offline devices (PROTOCOL.md guarantee 5).
//!
//! The send transaction writes one outbox entry per message (`store/model/push.rs`), due a
//! coalescing window after the message; sends never wait on pushes. The [`worker`] reads
//! what is due, asks the [`Audience`] who is online, turns the entries for each offline
//! user's registered devices into one [`Notification`] per device (a burst becomes one push
//! carrying a `count`), and hands each to its [`Provider`]: [`webhook`], [`fcm`] or [`apns`].
//! Failures that may pass (5xx, timeouts) are retried with exponential backoff and jitter,
//! durably, so delivery is at least once across crashes; refusals (4xx) are dropped, and a
//! registration the provider calls gone is removed. docs/push.md is the operator's guide.

pub mod apns;
pub mod config;
pub mod fcm;
pub mod webhook;
pub mod worker;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::protocol::types::PushProvider;
use crate::store::ChatStore;

pub use crate::store::PushNotification as Notification;
pub use config::PushConfig;

/// What became of one try to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Delivered,
    /// It may work later (5xx, 429, timeout, connection refused): try again after a backoff.
    Retry(String),
    /// The provider refused it for good (4xx): give up on this push.
    Drop(String),
    /// The provider says the token no longer reaches a device: give up and remove the
    /// device's push registration.
    Gone(String),
}

/// One push service (webhook, FCM, APNs).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The registration's `provider` this one serves, also the metrics label.
    fn kind(&self) -> PushProvider;

    /// Try once to deliver `n`. Never panics and never waits longer than its timeout.
    async fn send(&self, n: &Notification) -> Outcome;
}

/// Who is online and which node does which push work. On a single node that is the local
/// [`Hub`]; cluster mode answers for the whole cluster ([`NodeAudience`] does both).
#[async_trait]
pub trait Audience: Send + Sync + 'static {
    /// Of `users`, those with at least one online device anywhere in the cluster.
    async fn online(&self, users: &[String]) -> HashSet<String>;
    /// Whether this node does the push work for `key` (an outbox entry's channel);
    /// on a single node always true, in a cluster exactly one live node answers true.
    fn owns(&self, key: &str) -> bool;
}

/// The [`Audience`] of a node: who is online comes from [`Presence`] (this node's sockets,
/// and in a cluster the users' own nodes), and an outbox entry is this node's work when its
/// channel hashes here over the live members (rendezvous, like users).
pub struct NodeAudience {
    presence: Arc<Presence>,
    cluster: Arc<Cluster>,
}

impl NodeAudience {
    pub fn new(presence: Arc<Presence>, cluster: Arc<Cluster>) -> Self {
        Self { presence, cluster }
    }
}

#[async_trait]
impl Audience for NodeAudience {
    async fn online(&self, users: &[String]) -> HashSet<String> {
        self.presence.online_among(users).await
    }

    fn owns(&self, key: &str) -> bool {
        self.cluster.owns_key(key)
    }
}

/// A problem with the push configuration found at start-up.
#[derive(Debug, thiserror::Error)]
#[error("push configuration: {0}")]
pub struct PushError(pub String);

/// Timing of coalescing and retries.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// How long a message waits for others to join its push.
    pub coalesce: Duration,
    /// The first retry comes within this; each later one waits about twice as long.
    pub retry_base: Duration,
    /// Tries before a push is given up (the first included).
    pub max_attempts: u32,
    /// The longest wait between two tries.
    pub retry_cap: Duration,
}

impl Schedule {
    /// The wait after the `attempt`-th failed try (1-based): `base * 2^(attempt-1)`, capped,
    /// with jitter that takes it down to as little as half (never above the doubling).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        let full = self.retry_base.saturating_mul(doubling).min(self.retry_cap);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// The push service: the providers, the schedule, and a wake-up for the worker.
pub struct Push {
    store: ChatStore,
    providers: Vec<Arc<dyn Provider>>,
    audience: Arc<dyn Audience>,
    metrics: Arc<Metrics>,
    schedule: Schedule,
    wake: Notify,
}

impl Push {
    /// A push service over `providers`, or `None` when there are none (no outbox is written).
    pub fn new(
        store: ChatStore,
        providers: Vec<Arc<dyn Provider>>,
        audience: Arc<dyn Audience>,
        metrics: Arc<Metrics>,
        schedule: Schedule,
    ) -> Option<Arc<Self>> {
        if providers.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            store,
            providers,
            audience,
            metrics,
            schedule,
            wake: Notify::new(),
        }))
    }

    /// Build from the flags: reads the key files; `None` when no provider is configured.
    pub fn from_config(
        config: &PushConfig,
        store: ChatStore,
        audience: Arc<dyn Audience>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, PushError> {
        let providers = config.providers()?;
        let schedule = config.schedule();
        for p in &providers {
            tracing::info!(provider = label(p.kind()), "push notifications enabled");
        }
        Ok(Self::new(store, providers, audience, metrics, schedule))
    }

    /// When a message sent at `ts` falls due for pushing.
    pub fn due_at(&self, ts: i64) -> i64 {
        ts.saturating_add(self.schedule.coalesce.as_millis() as i64)
    }

    /// A send wrote an outbox entry: let the worker recompute when to look next.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn provider(&self, kind: PushProvider) -> Option<&Arc<dyn Provider>> {
        self.providers.iter().find(|p| p.kind() == kind)
    }
}

/// The metrics label of a provider.
pub fn label(kind: PushProvider) -> &'static str {
    match kind {
        PushProvider::Webhook => "webhook",
        PushProvider::Fcm => "fcm",
        PushProvider::Apns => "apns",
    }
}

/// A short title for a push: what the app shows above the preview.
pub fn title(n: &Notification) -> String {
    if n.count > 1 {
        format!("{} new messages", n.count)
    } else {
        "New message".to_owned()
    }
}

/// The HTTP client the providers share: rustls, HTTP/2 where the server offers it, and a
/// bound on every request.
pub fn http_client(
    timeout: Duration,
    h2_prior_knowledge: bool,
) -> Result<reqwest::Client, PushError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("parley-chat-node/", env!("CARGO_PKG_VERSION")));
    if h2_prior_knowledge {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .map_err(|e| PushError(format!("cannot build the HTTP client: {e}")))
}

/// Classify an HTTP status the common way: 2xx delivered; 408, 429 and 5xx retried; any
/// other status dropped.
pub fn classify(status: reqwest::StatusCode, detail: &str) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        Outcome::Delivered
    } else if code == 408 || code == 429 || status.is_server_error() {
        Outcome::Retry(format!("HTTP {code}: {detail}"))
    } else {
        Outcome::Drop(format!("HTTP {code}: {detail}"))
    }
}

/// A network failure (refused, reset, timed out) is worth retrying.
pub fn network_error(e: &reqwest::Error) -> Outcome {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    Outcome::Retry(format!("{what}: {e}"))
}

/// At most the first 512 bytes of a response body, for logs.
pub fn snippet(body: &[u8]) -> String {
    let end = body.len().min(512);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_the_base_and_doubles() {
        let s = Schedule {
            coalesce: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            max_attempts: 8,
            retry_cap: Duration::from_secs(300),
        };
        for _ in 0..100 {
            let first = s.backoff(1);
            assert!(first <= Duration::from_secs(1) && first >= Duration::from_millis(500));
            let third = s.backoff(3);
            assert!(third <= Duration::from_secs(4) && third >= Duration::from_secs(2));
            assert!(s.backoff(40) <= Duration::from_secs(300));
        }
    }

    #[test]
    fn statuses_classify_as_the_protocol_says() {
        use reqwest::StatusCode as S;
        assert_eq!(classify(S::OK, ""), Outcome::Delivered);
        assert!(matches!(
            classify(S::SERVICE_UNAVAILABLE, ""),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            classify(S::TOO_MANY_REQUESTS, ""),
            Outcome::Retry(_)
        ));
        assert!(matches!(classify(S::BAD_REQUEST, ""), Outcome::Drop(_)));
    }
}
