//! Step 2 of the pipeline: pure builders, spec in and objects out, no client.
//!
//! One file per kind; the StatefulSet and the PodDisruptionBudget are built once per node
//! pool ([`crate::pools`]). Every builder takes the (validated) [`ChatCluster`] and returns the
//! child exactly as the operator server-side-applies it, with owner references when the
//! ChatCluster has a uid (it always does in a cluster; a file given to `render` has none).

mod configmap;
mod pdb;
mod secret;
mod service;
mod statefulset;
pub mod tls;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

pub use configmap::{config_hash, configmap};
pub use pdb::pdb;
pub use secret::{TOKEN_SECRET_KEY, token_secret};
pub use service::{client_service, headless_service};
pub use statefulset::{
    CONTAINER_NAME, DATA_DIR, HTTP_PORT, PRESTOP_SLEEP_SECONDS, PUSH_MOUNT, TOKEN_MOUNT,
    statefulset, termination_grace_seconds,
};
pub use tls::{
    INTERNAL_PORT, NODE_TLS_MOUNT, ca_secret, certificates, node_tls_secret, plain_text_parts,
};

use crate::crd::{ChatCluster, SecretKeyRef};
use crate::pools::{Pool, pools};

/// `app.kubernetes.io/name` of every chat pod.
pub const APP_NAME: &str = "parley";

/// Name of the client Service (and of the StatefulSet and PodDisruptionBudget of a cluster
/// without zones).
pub fn base_name(cc: &ChatCluster) -> String {
    cc.name_or_empty()
}

/// Name of the headless Service that gives each pod a stable DNS name.
pub fn headless_name(cc: &ChatCluster) -> String {
    format!("{}-headless", cc.name_or_empty())
}

/// Name of the ConfigMap holding the nodes' environment.
pub fn configmap_name(cc: &ChatCluster) -> String {
    format!("{}-config", cc.name_or_empty())
}

/// Name of the Secret the operator creates when `spec.auth.tokenSecretRef` is absent.
pub fn generated_token_secret_name(cc: &ChatCluster) -> String {
    format!("{}-token", cc.name_or_empty())
}

/// The token Secret key the nodes use: the referenced one, or the generated Secret.
pub fn token_secret_ref(cc: &ChatCluster) -> SecretKeyRef {
    cc.spec
        .auth
        .as_ref()
        .and_then(|a| a.token_secret_ref.clone())
        .unwrap_or_else(|| SecretKeyRef {
            name: generated_token_secret_name(cc),
            key: TOKEN_SECRET_KEY.into(),
        })
}

/// Labels that select the chat pods (never change them: a StatefulSet selector is immutable).
pub fn selector_labels(cc: &ChatCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), cc.name_or_empty()),
    ])
}

/// The selector as a string, as `status.selector` (and so `kubectl scale`) wants it.
pub fn selector_string(cc: &ChatCluster) -> String {
    selector_labels(cc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels on every child: the selector labels plus component and manager.
pub fn labels(cc: &ChatCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(cc);
    l.insert("app.kubernetes.io/component".into(), "chat-node".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        crate::FIELD_MANAGER.into(),
    );
    l.insert("app.kubernetes.io/part-of".into(), APP_NAME.into());
    l
}

/// Metadata of a child: name, namespace, labels, and the controller owner reference.
pub fn child_meta(cc: &ChatCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(cc.namespace_or_default()),
        labels: Some(labels(cc)),
        owner_references: cc.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// One node pool's children.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolChildren {
    /// The pool they are built for.
    pub pool: Pool,
    /// Guards the pool's pods against voluntary disruptions.
    pub pdb: PodDisruptionBudget,
    /// The pool's chat nodes.
    pub statefulset: StatefulSet,
}

/// Every child the operator applies for a ChatCluster, at given StatefulSet sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The nodes' environment.
    pub configmap: ConfigMap,
    /// Stable DNS names of the pods.
    pub headless_service: Service,
    /// What clients connect to.
    pub client_service: Service,
    /// One StatefulSet and PodDisruptionBudget per node pool, in spec order.
    pub pools: Vec<PoolChildren>,
    /// The generated token Secret, when the spec references none (its data is filled in only
    /// when the operator creates it, never by `render`).
    pub token_secret: Option<Secret>,
    /// The CA Secret (selfSigned) and the node certificates Secret every pod mounts (not
    /// certManager's per-pod ones), without data: the operator fills them in when it
    /// applies, `render` shows what it will manage.
    pub tls_secrets: Vec<Secret>,
    /// cert-manager `Certificate`s, one per pod of every pool (certManager mode).
    pub certificates: Vec<kube::api::DynamicObject>,
}

/// Whether the operator generates the token Secret (the spec references none).
pub fn needs_token_secret(cc: &ChatCluster) -> bool {
    cc.spec
        .auth
        .as_ref()
        .and_then(|a| a.token_secret_ref.as_ref())
        .is_none()
}

/// Builds every child. `size(pool)` is the StatefulSet size to apply for each pool, which
/// differs from the spec while a scale-down is draining or the autoscaler decided.
pub fn children(cc: &ChatCluster, size: impl Fn(&Pool) -> i32) -> Children {
    let configmap = configmap(cc);
    let hash = config_hash(&configmap);
    let pods: Vec<String> = pools(cc)
        .iter()
        .flat_map(|p| (0..size(p)).map(|o| p.pod_name(o)))
        .collect();
    Children {
        headless_service: headless_service(cc),
        client_service: client_service(cc),
        pools: pools(cc)
            .into_iter()
            .map(|pool| PoolChildren {
                pdb: pdb(cc, &pool),
                statefulset: statefulset(cc, &pool, size(&pool), &hash),
                pool,
            })
            .collect(),
        token_secret: needs_token_secret(cc).then(|| token_secret(cc, None)),
        tls_secrets: match cc.spec.tls.mode {
            crate::crd::TlsMode::SelfSigned => vec![
                ca_secret(cc, None),
                node_tls_secret(cc, None, &BTreeMap::new()),
            ],
            crate::crd::TlsMode::CertManager => {
                vec![node_tls_secret(cc, None, &BTreeMap::new())]
            }
            crate::crd::TlsMode::Disabled => Vec::new(),
        },
        certificates: certificates(cc, &pods),
        configmap,
    }
}

/// Errors of turning children into YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise {kind} to YAML: {source}")]
pub struct YamlError {
    kind: &'static str,
    #[source]
    source: serde_yaml::Error,
}

impl Children {
    /// Multi-document YAML of every child, in apply order (what `render` prints).
    pub fn to_yaml(&self) -> Result<String, YamlError> {
        fn doc<T: serde::Serialize>(kind: &'static str, v: &T) -> Result<String, YamlError> {
            serde_yaml::to_string(v).map_err(|source| YamlError { kind, source })
        }
        let mut docs = Vec::new();
        if let Some(s) = &self.token_secret {
            docs.push(doc("Secret", s)?);
        }
        for s in &self.tls_secrets {
            docs.push(doc("Secret", s)?);
        }
        for c in &self.certificates {
            docs.push(doc("Certificate", c)?);
        }
        docs.push(doc("ConfigMap", &self.configmap)?);
        docs.push(doc("Service", &self.headless_service)?);
        docs.push(doc("Service", &self.client_service)?);
        for p in &self.pools {
            docs.push(doc("PodDisruptionBudget", &p.pdb)?);
            docs.push(doc("StatefulSet", &p.statefulset)?);
        }
        Ok(docs.iter().map(|d| format!("---\n{d}")).collect())
    }
}

/// Why `render` refused a file.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The file is not a ChatCluster (bad YAML, wrong kind, a missing or mistyped field).
    #[error("not a valid ChatCluster: {0}")]
    Parse(String),
    /// A ChatCluster the operator would report as Degraded.
    #[error(transparent)]
    Invalid(#[from] crate::validate::InvalidSpec),
    /// Serialisation failed.
    #[error(transparent)]
    Yaml(#[from] YamlError),
}

/// `chat-operator render`: a ChatCluster document in, the children's multi-document YAML
/// out, with the schema's defaults applied and the same validation as the controller.
pub fn render(yaml: &str) -> Result<String, RenderError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| RenderError::Parse(e.to_string()))?;
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if api_version != "parley.dev/v1alpha1" || kind != "ChatCluster" {
        return Err(RenderError::Parse(format!(
            "expected apiVersion parley.dev/v1alpha1 and kind ChatCluster, found apiVersion {api_version:?} kind {kind:?}"
        )));
    }
    let cc: ChatCluster =
        serde_yaml::from_value(value).map_err(|e| RenderError::Parse(e.to_string()))?;
    crate::validate::validate(&cc)?;
    Ok(children(&cc, |p| p.initial_replicas(&cc)).to_yaml()?)
}
