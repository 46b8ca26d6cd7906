//! # Layout
//!
//! The Parley operator reconciles `ChatCluster` resources into chat nodes. The reconcile
//! pipeline is named, and each step is a module:
//!
//! - [`crd`]: the `ChatCluster` types (`parley.dev/v1alpha1`): schema, defaults, CEL rules.
//! - [`validate`]: step 1, what the schema cannot say (lengths of derived names, URLs, ...).
//! - [`resources`]: step 2, pure builders, spec in and objects out, one file per kind.
//!   [`resources::children`] is the full set; `chat-operator render` prints it.
//! - [`controller`]: step 3 and 4, apply (server-side apply under one field manager) and
//!   status; the reconcile entry point, `error_policy`, the finalizer and the controller loop.
//! - [`pools`]: the node pools (StatefulSets): one, or one per zone (`spec.zones`).
//! - [`autoscale`]: the autoscaler's decision from live connections (pure).
//! - [`rollout`]: the next step of a rolling upgrade, each pod drained first (pure).
//! - [`drain`]: graceful scale-down through etcd (the etcd contract with the chat nodes,
//!   from `parley-cluster-contract`).
//! - [`pki`]: the operator's own CA for `spec.tls.mode: selfSigned` (rcgen): one certificate per pod.
//! - [`leader`]: leader election over a `coordination.k8s.io` Lease, so two replicas can run.
//! - [`fixtures`]: small builders of ChatClusters for tests (`ChatCluster::test()`).
//! - [`metrics`]: Prometheus metrics and the `/healthz` + `/metrics` HTTP server.
//!
//! Binaries: `chat-operator` (the controller, and `render -f FILE`) and `crdgen` (prints the
//! CRD that `crds/` holds).

pub mod autoscale;
pub mod controller;
pub mod crd;
pub mod drain;
pub mod fixtures;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod pools;
pub mod resources;
pub mod rollout;
pub mod validate;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "chat-operator";
