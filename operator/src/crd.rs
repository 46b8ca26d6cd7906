//! The `ChatCluster` custom resource (`parley.dev/v1alpha1`), as CHATCLUSTER.md fixes it.
//!
//! The field docs below become the schema's descriptions, which is what `kubectl explain
//! chatcluster.spec` prints: they are written for the platform team reading them there.
//! Defaults live in the schema (through `#[serde(default)]`), so `kubectl get -o yaml` shows
//! what is in force, and `render` (which has no API server) fills in the same values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod scaling;

pub use scaling::{AutoscalingSpec, AutoscalingStatus, PoolScaling, ZoneSpec, ZoneStatus};

/// The finalizer the operator puts on every ChatCluster, so it can clear the cluster's etcd
/// keys before the object goes away.
pub const FINALIZER: &str = "parley.dev/etcd-cleanup";

/// Desired state of a Parley chat cluster: a StatefulSet of chat nodes that share membership
/// through etcd and history through a store.
// Several `printcolumn(type_ = ...)` look like duplicates to clippy; they are not.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "parley.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    singular = "chatcluster",
    shortname = "chat",
    namespaced,
    status = "ChatClusterStatus",
    derive = "PartialEq",
    doc = "A Parley chat cluster: chat nodes (a StatefulSet) that hold clients' WebSockets, find each other through etcd and keep history in a store.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "desired chat nodes"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "chat nodes ready to serve"
    ),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.connections",
        description = "live client sockets, read from etcd"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.storage.backend != 'embedded' || self.replicas <= 1").message("storage.backend embedded keeps history on one pod's disk: replicas must be 1 (or 0 to pause; use tikv or etcd to run more nodes)"))]
#[x_kube(validation = Rule::new("self.storage.backend != 'embedded' || (!has(self.zones) && !has(self.autoscaling))").message("storage.backend embedded runs one node: zones and autoscaling need tikv or etcd"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas").message("autoscaling.minReplicas must not be above autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.zones) || self.zones.all(z, self.zones.exists_one(y, y.name == z.name))").message("zones must have distinct names"))]
#[x_kube(validation = Rule::new("self.storage.backend != 'tikv' || has(self.storage.tikv)").message("storage.backend tikv needs storage.tikv.pdEndpoints"))]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Number of chat nodes (StatefulSet pods). `kubectl scale chat/NAME --replicas=N` moves it.
    /// A scale-down first drains the leaving nodes (see `drain`); a scale-up is immediate.
    /// `0` pauses the cluster: every node drains, then the pods go; history and volumes stay,
    /// and scaling back up restores service. With `zones` or `autoscaling` set, the pool sizes
    /// come from those and this field only pauses (`0`) or runs (any other value).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container image of the chat node, e.g. `registry.example.com/parley/chat-node:0.1.0`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The etcd the nodes use for membership, connection assignment and draining.
    pub etcd: EtcdSpec,
    /// Where message history lives.
    #[serde(default)]
    pub storage: StorageSpec,
    /// The client-facing Service.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Per-node limits passed to every chat node.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The key that signs client tokens. Omitted: the operator creates a Secret `<name>-token`
    /// once and never rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Where pushes for offline users go. Omitted: no pushes are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSpec>,
    /// How a leaving node hands its clients over.
    #[serde(default)]
    pub drain: DrainSpec,
    /// Certificates for mutual TLS between the chat nodes (their internal port). Default:
    /// `selfSigned`, the operator's own CA.
    #[serde(default)]
    pub tls: TlsSpec,
    /// The PodDisruptionBudget that guards the chat nodes against voluntary evictions.
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,
    /// CPU and memory requests and limits of the chat node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the chat pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the chat pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the chat pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the chat pods spread over failure domains. Omitted: spread over hosts, best effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Per-zone node pools: one StatefulSet (and PodDisruptionBudget) per zone, its nodes
    /// started with the zone's `--zone` and `--region`. Omitted: one StatefulSet `<name>` of
    /// `replicas` nodes in the default region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub zones: Option<Vec<ZoneSpec>>,
    /// Size the node pools from live connections instead of `replicas`. Omitted: the sizes
    /// are `replicas` (or the zones' `replicas`), e.g. moved by `kubectl scale` or an HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// etcd endpoints of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// etcd client URLs, e.g. `http://etcd.chat.svc:2379`. Both the chat nodes and the operator
    /// connect to them.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<String>,
    /// A Secret with TLS material for etcd: `ca.crt` (the CA that signed etcd's server
    /// certificate) and the client certificate etcd's `--client-cert-auth` checks, `tls.crt`
    /// and `tls.key` (a `kubernetes.io/tls` Secret with `ca.crt`, as cert-manager writes
    /// it). Used by the nodes and by the operator; the endpoints must then be `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<LocalSecretRef>,
    /// A Secret with `username` and `password` for etcd's user + password auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<LocalSecretRef>,
}

/// History store choice. The backend and the embedded volume cannot change after creation:
/// history would stay behind in the old store (and a StatefulSet's volume claims are
/// immutable); create a new ChatCluster instead.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.backend == oldSelf.backend").message("storage.backend cannot change: history would stay in the old store; create a new ChatCluster and move users"))]
#[x_kube(validation = Rule::new("!has(oldSelf.embedded) || (has(self.embedded) && self.embedded == oldSelf.embedded)").message("storage.embedded cannot change: a StatefulSet's volume claims are immutable"))]
pub struct StorageSpec {
    /// `tikv` (production), `etcd` (small clusters: the same etcd as membership; not a
    /// long-term store at scale) or `embedded` (one node, history on a PersistentVolume).
    #[serde(default)]
    pub backend: StorageBackend,
    /// TiKV settings; required when backend is `tikv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tikv: Option<TikvSpec>,
    /// Embedded store settings; used when backend is `embedded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedSpec>,
}

/// The history store backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// TiKV transactions against PD endpoints.
    Tikv,
    /// The cluster's etcd.
    #[default]
    Etcd,
    /// A local embedded store on a PersistentVolume (one replica only).
    Embedded,
}

impl StorageBackend {
    /// The value of the chat node's `--store` flag.
    pub fn as_flag(self) -> &'static str {
        match self {
            Self::Tikv => "tikv",
            Self::Etcd => "etcd",
            Self::Embedded => "embedded",
        }
    }
}

/// TiKV connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TikvSpec {
    /// PD endpoints, e.g. `http://pd.tikv.svc:2379`.
    #[schemars(length(min = 1))]
    pub pd_endpoints: Vec<String>,
    /// A Secret with `ca.crt`, `tls.crt` and `tls.key` for TiKV's `security` section (PD
    /// and TiKV check the client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<LocalSecretRef>,
}

/// The embedded store's volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedSpec {
    /// Size of the PersistentVolumeClaim holding history, e.g. `10Gi`.
    #[serde(default = "default_embedded_size")]
    pub size: Quantity,
    /// StorageClass of the claim. Omitted: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for EmbeddedSpec {
    fn default() -> Self {
        Self {
            size: default_embedded_size(),
            storage_class_name: None,
        }
    }
}

/// The client-facing Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port clients connect to (HTTP and WebSocket); it forwards to the node's port 8080.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

/// Kubernetes Service type of the client Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only (put an Ingress or Gateway in front).
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Service's `spec.type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Limits every chat node enforces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Most members a group may have (`--max-group-members`; the chat node accepts 2 to
    /// 10,000, and so does the schema).
    #[serde(default = "default_max_group_members")]
    #[schemars(range(min = 2, max = 10000))]
    pub max_group_members: i32,
    /// Longest message body, in characters (`--max-message-chars`).
    #[serde(default = "default_max_message_chars")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_message_chars: i32,
    /// Seconds without a heartbeat before a device counts as offline (`--heartbeat-timeout`).
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub heartbeat_timeout_seconds: i32,
    /// Connections a node takes before `/v1/assign` prefers other nodes (`--capacity`).
    #[serde(default = "default_connections_per_node")]
    #[schemars(range(min = 1, max = 1000000))]
    pub connections_per_node: i32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_group_members: default_max_group_members(),
            max_message_chars: default_max_message_chars(),
            heartbeat_timeout_seconds: default_heartbeat_timeout(),
            connections_per_node: default_connections_per_node(),
        }
    }
}

/// Token signing key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A key of a Secret in the cluster's namespace holding the token signing key. Omitted:
    /// the operator creates `<name>-token` once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// Push notifications for offline users.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.webhookUrl) || has(self.secretRef)").message("push.webhookUrl needs push.secretRef: the HMAC key that signs pushes"))]
pub struct PushSpec {
    /// Where the nodes POST pushes, e.g. `https://push.example.com/hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// A key of a Secret holding the HMAC key that signs pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// A Secret of the ChatCluster's namespace, by name (its keys are fixed by the field).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Mutual TLS between the chat nodes. Each node's certificate names it as
/// `spiffe://parley/<namespace>.<name>/node/<pod>` (and its pod DNS name); the nodes check
/// each other's on every connection of their internal port (8081).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'certManager' || has(self.issuerRef)").message("tls.mode certManager needs tls.issuerRef: the cert-manager Issuer or ClusterIssuer that signs the node certificates"))]
pub struct TlsSpec {
    /// `selfSigned`: the operator keeps a CA in the Secret `<name>-ca` and issues every pod
    /// a certificate, renewed when a third of its lifetime is left. `certManager`: one
    /// cert-manager `Certificate` per pod, signed by `issuerRef`. `disabled`: no mutual TLS
    /// (the nodes run with `--insecure-cluster`; anyone who reaches their internal port can
    /// forge cluster traffic).
    #[serde(default)]
    pub mode: TlsMode,
    /// The cert-manager issuer of the node certificates (`certManager` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Lifetime of a node certificate, in hours (default 2160: 90 days).
    #[serde(default = "default_certificate_hours")]
    #[schemars(range(min = 2, max = 87600))]
    pub certificate_hours: i32,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            issuer_ref: None,
            certificate_hours: default_certificate_hours(),
        }
    }
}

/// Who issues the node certificates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// The operator's own CA (a Secret `<name>-ca`).
    #[default]
    SelfSigned,
    /// cert-manager `Certificate` resources, signed by `issuerRef`.
    CertManager,
    /// No mutual TLS between nodes (insecure: for trials only).
    Disabled,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer (in the ChatCluster's namespace) or ClusterIssuer.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// A key in a Secret of the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Graceful scale-down.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long a leaving node may take to move its clients to other nodes before the
    /// operator removes it anyway. Also sets the pods' termination grace period.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 3600))]
    pub timeout_seconds: i64,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout_seconds: default_drain_timeout(),
        }
    }
}

/// PodDisruptionBudget settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// How many chat pods a voluntary disruption (node drain, upgrade) may take at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 0))]
    pub max_unavailable: i32,
}

impl Default for PdbSpec {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// Observed state, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// Pods of the StatefulSet (what the scale subresource reports).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Nodes registered live in etcd.
    #[serde(default)]
    pub members: i32,
    /// Sum of the nodes' live client sockets, read from etcd.
    #[serde(default)]
    pub connections: i64,
    /// Label selector of the chat pods (for the scale subresource and HPA).
    #[serde(default)]
    pub selector: String,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason and message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per zone (when `spec.zones` is set): pods, ready pods, the size heading to, members
    /// and connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<ZoneStatus>,
    /// The autoscaler's decisions and state (when `spec.autoscaling` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

fn default_replicas() -> i32 {
    3
}
fn default_embedded_size() -> Quantity {
    Quantity("10Gi".into())
}
fn default_service_port() -> i32 {
    80
}
fn default_max_group_members() -> i32 {
    100
}
fn default_max_message_chars() -> i32 {
    100_000
}
fn default_heartbeat_timeout() -> i32 {
    30
}
fn default_connections_per_node() -> i32 {
    10_000
}
fn default_drain_timeout() -> i64 {
    120
}
fn default_max_unavailable() -> i32 {
    1
}
fn default_certificate_hours() -> i32 {
    2160
}
fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

impl ChatCluster {
    /// The chat node's `--cluster` value: `<namespace>.<name>`, so that clusters of the same
    /// name in different namespaces never share etcd keys.
    pub fn cluster_id(&self) -> String {
        format!("{}.{}", self.namespace_or_default(), self.name_or_empty())
    }

    /// The object's namespace (`default` when a file for `render` names none).
    pub fn namespace_or_default(&self) -> String {
        self.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    /// The object's name (empty only for a malformed object, which `validate` refuses).
    pub fn name_or_empty(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
}

/// The CRD as the YAML document `crdgen` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&ChatCluster::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p operator --bin crdgen`; do not edit (a test fails when stale).\n{body}"
    ))
}
