//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label of the push metrics: which provider (`webhook`, `fcm`, `apns`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: &'static str,
}

/// The label of `parley_rate_limited_total`: which limit refused (docs/operations.md).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// The label of `parley_http_timeouts_total`: which phase of a connection ran out of time.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// Push notification metrics (see docs/push.md for what each counts).
#[derive(Default)]
pub struct PushMetrics {
    /// Pushes the provider accepted.
    pub sent: Family<ProviderLabel, Counter>,
    /// Tries that did not deliver, whatever happened next.
    pub failed: Family<ProviderLabel, Counter>,
    /// Failed tries scheduled to be tried again.
    pub retried: Family<ProviderLabel, Counter>,
    /// Pushes given up: refused (4xx), registration gone, tries exhausted, provider not set up.
    pub dropped: Family<ProviderLabel, Counter>,
    /// Outbox entries plus push jobs in the store (counted up to 10,000 each).
    pub outbox_depth: Gauge,
}

/// Write path metrics (docs/operations.md, "Metrics").
pub struct WriteMetrics {
    /// Batches applied and made durable.
    pub batches: Counter,
    /// Operations per batch.
    pub batch_ops: Histogram,
    /// From a batch's start to its durability, in seconds.
    pub batch_seconds: Histogram,
    /// Operations refused `unavailable` because the node was overloaded.
    pub shed: Counter,
}

impl Default for WriteMetrics {
    fn default() -> Self {
        Self {
            batches: Counter::default(),
            // 1 .. 4096 operations
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 50 µs .. ~1.6 s
            batch_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            shed: Counter::default(),
        }
    }
}

/// The node's metrics. Cheap to share (every metric is an `Arc` inside).
pub struct Metrics {
    registry: Registry,
    /// Open WebSockets.
    pub connections: Gauge,
    /// Users with at least one open socket on this node.
    pub online_users: Gauge,
    /// Messages stored (acked), duplicates excluded.
    pub messages_sent: Counter,
    /// Message frames handed to sockets (one per device).
    pub messages_delivered: Counter,
    /// Resent `client_msg_id`s answered with the original ack.
    pub duplicate_sends: Counter,
    /// Store failures (unreachable, fsync failed, too contended, corrupt).
    pub store_errors: Counter,
    /// Sockets cut because they did not read their frames.
    pub slow_consumers: Counter,
    /// From a send's arrival to its durable ack, in seconds.
    pub send_latency: Histogram,
    /// HTTP requests answered.
    pub http_requests: Counter,
    /// Store commits that conflicted with another transaction and were retried.
    pub store_conflicts: Counter,
    /// 1 while the node is registered in etcd (cluster mode), else 0.
    pub etcd_up: Gauge,
    /// Live members in this node's view, itself included (believed records only).
    pub cluster_members: Gauge,
    /// Member records in etcd whose node has not proved them over mutual TLS (not used).
    pub cluster_unproved_members: Gauge,
    /// TLS handshakes refused on the internal and client listeners (no or a wrong
    /// certificate, plain HTTP on a TLS port, a handshake that never finished).
    pub tls_handshakes_refused: Counter,
    /// Events sent to other nodes over links (deliveries, presence, frames).
    pub link_events_sent: Counter,
    /// Events to other nodes dropped (queue full or peer unreachable); devices `sync`.
    pub link_events_dropped: Counter,
    /// Users told to reconnect elsewhere because membership changed.
    pub users_moved: Counter,
    /// Push notifications.
    pub push: PushMetrics,
    /// The write path.
    pub write: WriteMetrics,
    /// Requests and frames refused by a limit against abuse, by limit.
    pub rate_limited: Family<LimitLabel, Counter>,
    /// HTTP connections closed for a timeout, by phase (`header`, `body`, `idle`).
    pub http_timeouts: Family<PhaseLabel, Counter>,
    /// Password hashing refused because its queue was full (503).
    pub password_queue_full: Counter,
    /// Devices removed because a login passed `--max-devices-per-user`.
    pub devices_evicted: Counter,
    /// Sockets closed because their session was revoked.
    pub sessions_revoked: Counter,
    /// 1 while this node is registered in etcd and serving users; 0 while stepped down.
    pub serving: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("parley");
        let connections = Gauge::default();
        let online_users = Gauge::default();
        let messages_sent = Counter::default();
        let messages_delivered = Counter::default();
        let duplicate_sends = Counter::default();
        let store_errors = Counter::default();
        let slow_consumers = Counter::default();
        let http_requests = Counter::default();
        let etcd_up = Gauge::default();
        let store_conflicts = Counter::default();
        let cluster_members = Gauge::default();
        let cluster_unproved_members = Gauge::default();
        let tls_handshakes_refused = Counter::default();
        let link_events_sent = Counter::default();
        let link_events_dropped = Counter::default();
        let users_moved = Counter::default();
        // 50 µs .. ~1.6 s
        let send_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register(
            "online_users",
            "Users with an open socket on this node",
            online_users.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages durably stored and acked",
            messages_sent.clone(),
        );
        registry.register(
            "messages_delivered",
            "Message frames pushed to devices",
            messages_delivered.clone(),
        );
        registry.register(
            "duplicate_sends",
            "Resends answered with the original ack",
            duplicate_sends.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations",
            store_errors.clone(),
        );
        registry.register(
            "slow_consumers",
            "Sockets closed for not reading",
            slow_consumers.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        registry.register(
            "send_latency_seconds",
            "Send arrival to durable ack",
            send_latency.clone(),
        );
        registry.register(
            "store_conflicts",
            "Store commits that conflicted and were retried",
            store_conflicts.clone(),
        );
        registry.register("etcd_up", "1 while registered in etcd", etcd_up.clone());
        registry.register(
            "cluster_members",
            "Live members in this node's view, itself included",
            cluster_members.clone(),
        );
        registry.register(
            "cluster_unproved_members",
            "Member records in etcd not proved by their node over mutual TLS (not used)",
            cluster_unproved_members.clone(),
        );
        registry.register(
            "tls_handshakes_refused",
            "TLS handshakes refused on the internal and client listeners",
            tls_handshakes_refused.clone(),
        );
        registry.register(
            "link_events_sent",
            "Events sent to other nodes",
            link_events_sent.clone(),
        );
        registry.register(
            "link_events_dropped",
            "Events to other nodes dropped (devices sync instead)",
            link_events_dropped.clone(),
        );
        registry.register(
            "users_moved",
            "Users told to reconnect elsewhere after a membership change",
            users_moved.clone(),
        );
        let rate_limited = Family::<LimitLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests and frames refused by a limit against abuse",
            rate_limited.clone(),
        );
        let http_timeouts = Family::<PhaseLabel, Counter>::default();
        registry.register(
            "http_timeouts",
            "HTTP connections closed for a header, body or idle timeout",
            http_timeouts.clone(),
        );
        let password_queue_full = Counter::default();
        registry.register(
            "password_queue_full",
            "Logins and sign-ups refused (503) because password hashing was saturated",
            password_queue_full.clone(),
        );
        let devices_evicted = Counter::default();
        registry.register(
            "devices_evicted",
            "Longest-unused devices removed by a login past --max-devices-per-user",
            devices_evicted.clone(),
        );
        let sessions_revoked = Counter::default();
        registry.register(
            "sessions_revoked",
            "Sockets closed because their token was revoked",
            sessions_revoked.clone(),
        );
        let serving = Gauge::default();
        registry.register(
            "serving",
            "1 while the node serves users (registered in etcd in a cluster), 0 while stepped down",
            serving.clone(),
        );
        let push = PushMetrics::default();
        registry.register(
            "push_sent",
            "Push notifications the provider accepted",
            push.sent.clone(),
        );
        registry.register(
            "push_failed",
            "Push tries that did not deliver",
            push.failed.clone(),
        );
        registry.register(
            "push_retried",
            "Failed push tries scheduled again",
            push.retried.clone(),
        );
        registry.register(
            "push_dropped",
            "Push notifications given up (refused, gone, tries exhausted, unconfigured)",
            push.dropped.clone(),
        );
        registry.register(
            "push_outbox_depth",
            "Push outbox entries and jobs waiting in the store",
            push.outbox_depth.clone(),
        );
        let write = WriteMetrics::default();
        registry.register(
            "write_batches",
            "Write batches applied and made durable",
            write.batches.clone(),
        );
        registry.register(
            "write_batch_ops",
            "Operations per write batch",
            write.batch_ops.clone(),
        );
        registry.register(
            "write_batch_seconds",
            "From a write batch's start to its durability",
            write.batch_seconds.clone(),
        );
        registry.register(
            "write_shed",
            "Operations refused unavailable because the node was overloaded",
            write.shed.clone(),
        );
        Self {
            registry,
            write,
            etcd_up,
            store_conflicts,
            cluster_members,
            cluster_unproved_members,
            tls_handshakes_refused,
            link_events_sent,
            link_events_dropped,
            users_moved,
            connections,
            online_users,
            messages_sent,
            messages_delivered,
            duplicate_sends,
            store_errors,
            slow_consumers,
            send_latency,
            http_requests,
            push,
            rate_limited,
            http_timeouts,
            password_queue_full,
            devices_evicted,
            sessions_revoked,
            serving,
        }
    }

    /// Count one refusal by `limit`.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Count one connection closed in `phase`.
    pub fn http_timeout(&self, phase: &'static str) {
        self.http_timeouts
            .get_or_create(&PhaseLabel { phase })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
