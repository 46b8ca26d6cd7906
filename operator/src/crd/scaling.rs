//! The placement and scaling parts of the ChatCluster: per-zone node pools
//! (`spec.zones`), autoscaling on live connections (`spec.autoscaling`), and what the
//! operator reports about them in `status`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One node pool: a StatefulSet `<name>-<zone>` (and its PodDisruptionBudget) whose chat
/// nodes run with `--zone <name> --region <region>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSpec {
    /// The zone's name (a DNS label, e.g. `eu-west-1a`): it names the StatefulSet
    /// `<chatcluster>-<name>` and its pods, and is the nodes' `--zone`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The region the zone belongs to, the nodes' `--region`: users whose home region it is
    /// are placed on the nodes of this region's zones.
    #[serde(default = "default_region")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub region: String,
    /// Chat nodes in this zone (when `spec.autoscaling` is unset). `0` keeps the zone
    /// empty.
    #[serde(default = "default_zone_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Node labels this zone's pods must be scheduled on, typically
    /// `topology.kubernetes.io/zone: <zone>`. Replaces `spec.nodeSelector` for the zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity of this zone's pods. Replaces `spec.affinity` for the zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of this zone's pods. Replaces `spec.tolerations` for the zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

/// Autoscaling on live connections, read from etcd: the operator sizes each node pool (the
/// cluster, or each zone when `spec.zones` is set) to `ceil(connections /
/// targetConnectionsPerNode)`, within `[minReplicas, maxReplicas]`. It scales up at once and
/// down only after the recommendation stayed lower for `scaleDownStabilizationSeconds` (then
/// to the highest recommendation of that window), draining the leaving nodes first. While it
/// is set, `spec.replicas` and the zones' `replicas` only say whether the cluster runs
/// (`spec.replicas: 0` pauses it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest chat nodes per pool.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most chat nodes per pool.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Live connections one node should hold (below `limits.connectionsPerNode`, to leave
    /// room for a node's share of a failed node's clients).
    #[serde(default = "default_target_connections")]
    #[schemars(range(min = 1, max = 10000000))]
    pub target_connections_per_node: i64,
    /// How long the recommendation must stay below the current size before a pool shrinks.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i64,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_connections_per_node: default_target_connections(),
            scale_down_stabilization_seconds: default_stabilization(),
        }
    }
}

/// One zone as the operator sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    /// The zone's name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// Pods of the zone's StatefulSet.
    #[serde(default)]
    pub replicas: i32,
    /// Of those, ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The size the operator is heading to (the zone's `replicas`, or the autoscaler's).
    #[serde(default)]
    pub desired_replicas: i32,
    /// The zone's nodes registered live in etcd.
    #[serde(default)]
    pub members: i32,
    /// Their live client sockets.
    #[serde(default)]
    pub connections: i64,
}

/// The autoscaler's state, kept in status so that an operator restart resumes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// One entry per node pool (StatefulSet).
    #[serde(default)]
    pub pools: Vec<PoolScaling>,
    /// The last scaling decision, e.g. `scaling 3→4: 31,200 connections, target 8,000 per
    /// node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    /// When the last scaling decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// One pool's autoscaling state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolScaling {
    /// The pool's StatefulSet.
    pub stateful_set: String,
    /// The size the autoscaler decided.
    pub desired_replicas: i32,
    /// Since when (milliseconds since the epoch) the recommendation has stayed below
    /// `desiredReplicas`: a scale-down waits for the stabilization window from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since: Option<i64>,
    /// The highest recommendation seen since `lowSince`: what the pool shrinks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_recommendation: Option<i32>,
}

fn default_region() -> String {
    parley_cluster_contract::DEFAULT_REGION.to_owned()
}
fn default_zone_replicas() -> i32 {
    1
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_connections() -> i64 {
    8_000
}
fn default_stabilization() -> i64 {
    300
}
