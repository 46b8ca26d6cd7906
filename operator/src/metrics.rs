//! Prometheus metrics of the operator, and the `/healthz` + `/metrics` HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use warp::Filter;

/// Label of the failure counter: which kind of error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `invalid_spec`, `kube`, `etcd`, ...
    pub error: String,
}

/// Labels of the per-pool gauges: which ChatCluster, and which zone (`""` without zones).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The ChatCluster's namespace.
    pub namespace: String,
    /// The ChatCluster's name.
    pub name: String,
    /// The zone, or `""` for a cluster without zones.
    pub zone: String,
}

/// The operator's metrics (all prefixed `parley_operator_`).
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// How long reconciles take, in seconds.
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Live client sockets per pool, read from etcd: what an HPA with a custom-metrics
    /// adapter scales on when `spec.autoscaling` is not used.
    pub connections: Family<PoolLabels, Gauge>,
    /// Nodes registered in etcd per pool.
    pub members: Family<PoolLabels, Gauge>,
    /// Pool sizes the operator applies (after drains and autoscaling).
    pub desired_replicas: Family<PoolLabels, Gauge>,
    /// Connections made to etcd (one per set of endpoints while they keep working).
    pub etcd_connects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("parley_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let leader = Gauge::default();
        let connections = Family::<PoolLabels, Gauge>::default();
        let members = Family::<PoolLabels, Gauge>::default();
        let desired_replicas = Family::<PoolLabels, Gauge>::default();
        let etcd_connects = Counter::default();
        registry.register(
            "connections",
            "Live client sockets of a ChatCluster's nodes, per zone, read from etcd",
            connections.clone(),
        );
        registry.register(
            "members",
            "Chat nodes registered in etcd, per zone",
            members.clone(),
        );
        registry.register(
            "desired_replicas",
            "StatefulSet size the operator applies, per zone",
            desired_replicas.clone(),
        );
        registry.register(
            "etcd_connects",
            "Connections the operator made to etcd",
            etcd_connects.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of ChatClusters started",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            connections,
            members,
            desired_replicas,
            etcd_connects,
        }
    }
}

impl Metrics {
    /// Counts a started reconcile and returns a guard that records its duration on drop.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: std::time::Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, error: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.to_string(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Serves `/healthz` (200 while the process runs) and `/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz and /metrics");
    let healthz = warp::path!("healthz").map(|| String::from("ok"));
    let m = metrics.clone();
    let metrics_route = warp::path!("metrics").map(move || {
        let mut res = warp::reply::Response::new(m.encode().into());
        res.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        res
    });
    warp::serve(healthz.or(metrics_route))
        .incoming(listener)
        .run()
        .await;
    Ok(())
}

/// How long the error policy waits after the n-th consecutive failure: 5 s doubling to 5 min.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << consecutive_failures.min(6));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_reconciles_failures_and_durations() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.reconcile_failed("etcd");
        let text = m.encode();
        assert!(
            text.contains("parley_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("parley_operator_reconcile_failures_total{error=\"etcd\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("parley_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(60), Duration::from_secs(300));
    }
}
