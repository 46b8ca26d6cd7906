//! Graceful scale-down (and rolling replacement) through etcd, and the etcd contract with
//! the chat nodes.
//!
//! The contract (key layout and JSON) is defined once, in `parley-cluster-contract`, which
//! the chat node uses too:
//!
//! - `/parley/<cluster>/nodes/<node_id>` → [`NodeRegistration`] JSON, written by each node
//!   under a lease (TTL ≈ 10 s). The operator only reads these (status, drain progress,
//!   autoscaling).
//! - `/parley/<cluster>/drain/<node_id>` → [`DrainRequest`] JSON, written by the operator
//!   before the StatefulSet loses that node (scale-down, pause) or before it replaces the
//!   node's pod (rolling upgrade). A node that sees its key sets `draining: true` and moves
//!   its clients away. Deleting the key cancels the drain.
//!
//! The drain state lives in etcd, not in the operator: reconcile stays level-based and an
//! operator restart in the middle of a drain picks up where it was.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use parley_etcd_connect::EtcdConnect;

pub use parley_cluster_contract::{
    DrainPurpose, DrainRequest, KEY_ROOT, Member as NodeRegistration, cluster_prefix, drain_key,
    drain_prefix, nodes_prefix,
};

/// Bound on connecting to etcd and on each request.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd failures. The operator reports them as a `Degraded` condition and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not reach etcd in time.
    #[error(
        "cannot reach etcd at {endpoints}: {reason}; check spec.etcd.endpoints and that the operator's network can reach them"
    )]
    Connect { endpoints: String, reason: String },
    /// A request failed.
    #[error("etcd request {op} failed: {source}")]
    Request {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// A request did not answer in time.
    #[error("etcd request {0} timed out after {ETCD_TIMEOUT:?}")]
    Timeout(&'static str),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operator's view of a cluster's keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtcdView {
    /// Live registrations, by node id.
    pub nodes: BTreeMap<String, NodeRegistration>,
    /// Pending drain requests, by node id.
    pub drains: BTreeMap<String, DrainRequest>,
    /// The etcd revision at which each registration key was created: a node that restarted
    /// registered anew (its key went with its old lease), so its registration is newer than
    /// a drain request written before the restart.
    pub node_created: BTreeMap<String, i64>,
    /// The etcd revision at which each drain request was created.
    pub drain_created: BTreeMap<String, i64>,
}

impl EtcdView {
    /// Registered nodes.
    pub fn members(&self) -> i32 {
        i32::try_from(self.nodes.len()).unwrap_or(i32::MAX)
    }

    /// Sum of the nodes' live sockets.
    pub fn connections(&self) -> i64 {
        self.nodes
            .values()
            .map(|n| i64::try_from(n.connections).unwrap_or(i64::MAX))
            .sum()
    }

    /// Registered nodes and their live sockets among those `pick` selects.
    pub fn count(&self, pick: impl Fn(&str) -> bool) -> (i32, i64) {
        self.nodes
            .iter()
            .filter(|(id, _)| pick(id))
            .fold((0, 0), |(m, c), (_, n)| {
                (m + 1, c + i64::try_from(n.connections).unwrap_or(i64::MAX))
            })
    }

    /// Whether `node_id` registered after its drain request was written (the process that
    /// was asked to drain is gone and a new one runs).
    pub fn registered_since_drain(&self, node_id: &str) -> bool {
        match (
            self.node_created.get(node_id),
            self.drain_created.get(node_id),
        ) {
            (Some(node), Some(drain)) => node > drain,
            _ => false,
        }
    }
}

/// A connection to the etcd of one ChatCluster, every call bounded by [`ETCD_TIMEOUT`]. Cheap
/// to clone (clones share the connection), so one connection serves every reconcile.
#[derive(Clone)]
pub struct Etcd {
    client: etcd_client::Client,
}

async fn bounded<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(ETCD_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Request { op, source }),
        Err(_) => Err(Error::Timeout(op)),
    }
}

impl Etcd {
    /// Connects (bounded by [`ETCD_TIMEOUT`]) with the TLS and credentials `etcd` carries
    /// (from the Secrets `spec.etcd` names, see `controller::credentials`).
    pub async fn connect(etcd: &EtcdConnect) -> Result<Self> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_timeout(ETCD_TIMEOUT);
        match etcd.connect(opts, ETCD_TIMEOUT).await {
            Ok(client) => Ok(Self { client }),
            Err(e) => Err(Error::Connect {
                endpoints: etcd.describe(),
                reason: e.to_string(),
            }),
        }
    }

    /// Reads the cluster's registrations and drain requests. Values that do not decode are
    /// skipped with a warning (a newer node may write more fields; missing ones default).
    pub async fn view(&mut self, cluster: &str) -> Result<EtcdView> {
        let mut view = EtcdView::default();
        let resp = bounded(
            "get nodes",
            self.client
                .get(nodes_prefix(cluster), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        for kv in resp.kvs() {
            let id = String::from_utf8_lossy(kv.key())
                .trim_start_matches(&nodes_prefix(cluster))
                .to_string();
            match serde_json::from_slice::<NodeRegistration>(kv.value()) {
                Ok(reg) => {
                    view.node_created.insert(id.clone(), kv.create_revision());
                    view.nodes.insert(id, reg);
                }
                Err(e) => {
                    tracing::warn!(node_id = %id, error = %e, "skipping undecodable node registration")
                }
            }
        }
        let resp = bounded(
            "get drains",
            self.client
                .get(drain_prefix(cluster), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        for kv in resp.kvs() {
            let id = String::from_utf8_lossy(kv.key())
                .trim_start_matches(&drain_prefix(cluster))
                .to_string();
            match serde_json::from_slice::<DrainRequest>(kv.value()) {
                Ok(req) => {
                    view.drain_created.insert(id.clone(), kv.create_revision());
                    view.drains.insert(id, req);
                }
                Err(e) => {
                    tracing::warn!(node_id = %id, error = %e, "skipping undecodable drain request")
                }
            }
        }
        Ok(view)
    }

    /// Writes a drain request unless one exists already (so a re-reconcile never moves the
    /// deadline). Returns the request in force.
    pub async fn request_drain(
        &mut self,
        cluster: &str,
        node_id: &str,
        req: DrainRequest,
    ) -> Result<DrainRequest> {
        let key = drain_key(cluster, node_id);
        let value = serde_json::to_vec(&req).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = bounded("request drain", self.client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(req);
        }
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(existing) = g
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice(kv.value()).ok())
            {
                return Ok(existing);
            }
        }
        Ok(req)
    }

    /// Deletes a node's drain request (drain done, or cancelled by a scale back up).
    pub async fn delete_drain(&mut self, cluster: &str, node_id: &str) -> Result<()> {
        bounded(
            "delete drain",
            self.client.delete(drain_key(cluster, node_id), None),
        )
        .await?;
        Ok(())
    }

    /// Deletes every key of the cluster (`/parley/<cluster>/`); returns how many went.
    pub async fn clear_cluster(&mut self, cluster: &str) -> Result<i64> {
        let resp = bounded(
            "delete cluster prefix",
            self.client.delete(
                cluster_prefix(cluster),
                Some(DeleteOptions::new().with_prefix()),
            ),
        )
        .await?;
        Ok(resp.deleted())
    }
}

/// What the StatefulSet's size should be this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScalePlan {
    /// Apply this size now (create, unchanged, or scale-up: immediate).
    Apply(i32),
    /// A scale-down: keep `hold` pods until the `leaving` nodes are drained, then `target`.
    Drain {
        hold: i32,
        target: i32,
        leaving: Vec<String>,
    },
}

/// Decides the StatefulSet size from its current size (`None`: it does not exist yet) and the
/// desired one. `node_id(ordinal)` names the pod of an ordinal.
pub fn plan(current: Option<i32>, desired: i32, node_id: impl Fn(i32) -> String) -> ScalePlan {
    match current {
        Some(cur) if cur > desired => ScalePlan::Drain {
            hold: cur,
            target: desired,
            leaving: (desired..cur).map(node_id).collect(),
        },
        _ => ScalePlan::Apply(desired),
    }
}

/// How far a drain is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainProgress {
    /// Every leaving node is empty, gone, or past its deadline: shrink now.
    pub done: bool,
    /// Leaving nodes still holding clients, with their connection counts.
    pub waiting: Vec<(String, u64)>,
    /// Leaving nodes removed although they still had clients (deadline passed).
    pub timed_out: Vec<String>,
}

/// Whether the leaving nodes may go: a node may when its registration is gone, shows zero
/// connections, or its drain deadline (`now_ms` in ms since the epoch) has passed.
pub fn progress(leaving: &[String], view: &EtcdView, now_ms: i64) -> DrainProgress {
    let mut waiting = Vec::new();
    let mut timed_out = Vec::new();
    for id in leaving {
        let Some(reg) = view.nodes.get(id) else {
            continue;
        };
        if reg.connections == 0 {
            continue;
        }
        match view.drains.get(id) {
            Some(req) if now_ms >= req.deadline => timed_out.push(id.clone()),
            _ => waiting.push((id.clone(), reg.connections)),
        }
    }
    DrainProgress {
        done: waiting.is_empty(),
        waiting,
        timed_out,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connections: u64) -> (String, NodeRegistration) {
        (
            id.to_string(),
            NodeRegistration {
                node_id: id.into(),
                connections,
                ..Default::default()
            },
        )
    }

    #[test]
    fn plan_scales_up_at_once_and_drains_the_highest_ordinals_on_scale_down() {
        let id = |o: i32| format!("demo-{o}");
        assert_eq!(plan(None, 3, id), ScalePlan::Apply(3));
        assert_eq!(plan(Some(3), 5, id), ScalePlan::Apply(5));
        assert_eq!(plan(Some(3), 3, id), ScalePlan::Apply(3));
        assert_eq!(
            plan(Some(5), 2, id),
            ScalePlan::Drain {
                hold: 5,
                target: 2,
                leaving: vec!["demo-2".into(), "demo-3".into(), "demo-4".into()]
            }
        );
    }

    #[test]
    fn progress_waits_for_connections_until_the_deadline() {
        let leaving = vec!["demo-3".to_string(), "demo-4".to_string()];
        let mut view = EtcdView {
            nodes: [node("demo-3", 7), node("demo-4", 0)].into(),
            ..EtcdView::default()
        };
        view.drains.insert(
            "demo-3".into(),
            DrainRequest {
                requested_at: 0,
                deadline: 1_000,
                purpose: DrainPurpose::ScaleDown,
            },
        );
        let p = progress(&leaving, &view, 999);
        assert!(!p.done);
        assert_eq!(p.waiting, vec![("demo-3".to_string(), 7)]);
        let p = progress(&leaving, &view, 1_000);
        assert!(p.done, "deadline passed");
        assert_eq!(p.timed_out, vec!["demo-3".to_string()]);
        view.nodes.remove("demo-3");
        assert!(
            progress(&leaving, &view, 0).done,
            "a node whose key is gone is empty"
        );
    }

    #[test]
    fn keys_follow_the_contract() {
        assert_eq!(cluster_prefix("chat.demo"), "/parley/chat.demo/");
        assert_eq!(nodes_prefix("chat.demo"), "/parley/chat.demo/nodes/");
        assert_eq!(
            drain_key("chat.demo", "demo-4"),
            "/parley/chat.demo/drain/demo-4"
        );
        let reg: NodeRegistration = serde_json::from_str(
            r#"{"node_id":"demo-0","advertise_url":"http://a","ws_url":"ws://a/ws","zone":"z1","capacity":10,"connections":3,"draining":true}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            (reg.connections, reg.draining, reg.zone.as_deref()),
            (3, true, Some("z1"))
        );
        let req = serde_json::to_value(DrainRequest {
            requested_at: 1,
            deadline: 2,
            purpose: DrainPurpose::ScaleDown,
        })
        .unwrap_or_default();
        assert_eq!(
            req,
            serde_json::json!({"requested_at": 1, "deadline": 2, "purpose": "scale_down"})
        );
    }
}
