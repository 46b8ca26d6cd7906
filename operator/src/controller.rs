//! Steps 3 and 4 of the pipeline (apply, status), the reconcile entry point, the error policy,
//! the finalizer and the controller loop.
//!
//! - [`reconcile`]: finalizer first (it adds `parley.dev/etcd-cleanup`), then `apply::apply`
//!   (validate → observe → size the pools (`scale`) → the pools' node certificates
//!   ([`certificates`]) → roll outdated pods (`rollout`) → build → server-side apply →
//!   status) or, on delete, [`cleanup`], which gives up on etcd after
//!   [`Context::finalizer_timeout`] so that a deletion never blocks for ever.
//! - [`error_policy`]: an invalid spec waits for the next change of the object (the status
//!   already says what is wrong); anything else is retried with a doubling backoff.
//! - [`run`]: leader election, the `/healthz` + `/metrics` server, and the kube-runtime
//!   `Controller` watching ChatClusters and the children it owns.

mod apply;
pub mod certificates;
pub mod credentials;
mod rollout;
mod scale;
pub mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, info, instrument, warn};

use parley_etcd_connect::EtcdConnect;

use crate::crd::{ChatCluster, FINALIZER};
use crate::drain::{self, Etcd};
use crate::leader::{self, LeaderConfig};
use crate::metrics::{self, Metrics};
use crate::validate::InvalidSpec;

/// Reconcile failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be acted on; reported as the `Degraded` condition.
    #[error(transparent)]
    InvalidSpec(#[from] InvalidSpec),
    /// A Kubernetes API call failed.
    #[error("{what} failed: {source}")]
    Kube {
        /// The call, e.g. `apply StatefulSet chat/demo`.
        what: String,
        #[source]
        source: kube::Error,
    },
    /// etcd failed (only where the operator cannot go on without it: the finalizer).
    #[error(transparent)]
    Etcd(#[from] drain::Error),
    /// Issuing a node certificate failed (selfSigned; a corrupt `<name>-ca` Secret).
    #[error(
        "cannot issue node certificates: {0}; if the <name>-ca Secret is corrupt, delete it to roll a new CA"
    )]
    Pki(#[from] crate::pki::PkiError),
    /// The finalizer helper failed (wraps the errors above).
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `error` label of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self.inner() {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube { .. } => "kube",
            Error::Etcd(_) => "etcd",
            Error::Pki(_) => "pki",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// The error under the finalizer wrapper, when there is one.
    pub fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            e => e,
        }
    }

    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes events about ChatClusters.
    pub recorder: Recorder,
    /// How often a draining scale-down re-checks the leaving nodes.
    pub drain_poll: Duration,
    /// How often a settled cluster is re-read (status: connections move without events).
    pub resync: Duration,
    /// How often a cluster with `spec.autoscaling` is re-read (connections, decisions).
    pub autoscale_poll: Duration,
    /// How long after a deletion started the finalizer keeps trying to clear the cluster's
    /// etcd keys; then it gives up with a Warning event and lets the object go.
    pub finalizer_timeout: Duration,
    failures: Mutex<HashMap<String, u32>>,
    /// One etcd connection per ChatCluster (by `namespace/name`), with the settings it was
    /// dialled with, reused by every reconcile.
    etcd: tokio::sync::Mutex<HashMap<String, (EtcdConnect, Etcd)>>,
}

impl Context {
    /// A context with default timings.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            drain_poll: Duration::from_secs(5),
            resync: Duration::from_secs(60),
            autoscale_poll: Duration::from_secs(15),
            finalizer_timeout: Duration::from_secs(300),
            failures: Mutex::new(HashMap::new()),
            etcd: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The etcd connection of `cc`: its `spec.etcd.endpoints` with the TLS material and
    /// credentials of the Secrets `spec.etcd` names (read every time, see
    /// [`credentials::etcd_connect`]). The connection kept from an earlier reconcile is
    /// reused while that material is unchanged; otherwise (first use, a rotated certificate
    /// or password) a new one is dialled (counted in `parley_operator_etcd_connects_total`).
    /// Kept per ChatCluster, never shared between two: each connects with its own Secrets.
    pub(crate) async fn etcd(&self, cc: &ChatCluster) -> Result<Etcd, drain::Error> {
        let connect = credentials::etcd_connect(cc, &self.client).await?;
        let key = object_key(cc);
        let mut cache = self.etcd.lock().await;
        if let Some((kept, etcd)) = cache.get(&key)
            && *kept == connect
        {
            return Ok(etcd.clone());
        }
        let etcd = Etcd::connect(&connect).await?;
        self.metrics.etcd_connects.inc();
        cache.insert(key, (connect, etcd.clone()));
        Ok(etcd)
    }

    /// Drop the connection kept for `cc` (it failed, or the cluster is gone): the next
    /// reconcile dials again.
    pub(crate) async fn forget_etcd(&self, cc: &ChatCluster) {
        self.etcd.lock().await.remove(&object_key(cc));
    }

    /// Publishes an event about `cc`; a failure to publish is logged, never fatal.
    pub(crate) async fn event(
        &self,
        cc: &ChatCluster,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &cc.object_ref(&())).await {
            warn!(error = %e, reason, "publishing event failed");
        }
    }

    fn failure_count(&self, key: &str, reset: bool) -> u32 {
        let mut map = match self.failures.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if reset {
            map.remove(key);
            return 0;
        }
        let n = map.entry(key.to_string()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }
}

fn object_key(cc: &ChatCluster) -> String {
    format!("{}/{}", cc.namespace().unwrap_or_default(), cc.name_any())
}

/// Reconciles one ChatCluster: finalizer, then apply (or cleanup when it is being deleted).
#[instrument(skip(cc, ctx), fields(namespace = cc.namespace().unwrap_or_default(), name = %cc.name_any()))]
pub async fn reconcile(cc: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let key = object_key(&cc);
    let ns = cc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, cc, |event| async {
        match event {
            Finalizer::Apply(cc) => apply::apply(&cc, &ctx).await,
            Finalizer::Cleanup(cc) => cleanup(&cc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => {
            ctx.failure_count(&key, true);
        }
        Err(e) => ctx.metrics.reconcile_failed(e.metric_label()),
    }
    result
}

/// What to do after a failed reconcile: an invalid spec waits for the object to change (its
/// status already says why); other failures are retried after 5 s, doubling up to 5 min.
pub fn error_policy(cc: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error.inner(), Error::InvalidSpec(_)) {
        info!(name = %cc.name_any(), %error, "invalid spec; waiting for a change");
        return Action::await_change();
    }
    let n = ctx.failure_count(&object_key(&cc), false);
    let delay = metrics::backoff(n);
    warn!(name = %cc.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The finalizer's work: deletes every etcd key of the cluster (`/parley/<ns>.<name>/`).
/// Children go with the ChatCluster through their owner references. When etcd cannot be
/// reached, the deletion is retried (with backoff) until [`Context::finalizer_timeout`] after
/// it started; then the finalizer gives up with a Warning event that says which keys are
/// left, so a cluster whose etcd is gone can still be deleted.
async fn cleanup(cc: &ChatCluster, ctx: &Context) -> Result<Action> {
    let cluster = cc.cluster_id();
    let prefix = drain::cluster_prefix(&cluster);
    let cleared = match ctx.etcd(cc).await {
        Ok(mut etcd) => etcd.clear_cluster(&cluster).await,
        Err(e) => Err(e),
    };
    match cleared {
        Ok(deleted) => {
            ctx.forget_etcd(cc).await;
            info!(%cluster, deleted, "cleared the cluster's etcd keys");
            ctx.event(
                cc,
                EventType::Normal,
                "EtcdKeysCleared",
                format!("deleted {deleted} etcd keys under {prefix}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => {
            ctx.forget_etcd(cc).await;
            let since = cc
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
            let waited = k8s_openapi::jiff::Timestamp::now().duration_since(since);
            let limit = k8s_openapi::jiff::SignedDuration::try_from(ctx.finalizer_timeout)
                .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
            if waited < limit {
                return Err(e.into());
            }
            warn!(%cluster, error = %e, "giving up on clearing the cluster's etcd keys");
            ctx.event(
                cc,
                EventType::Warning,
                "EtcdCleanupAbandoned",
                format!(
                    "could not delete the etcd keys under {prefix} for {}s ({e}); deleting the ChatCluster anyway: remove them by hand with `etcdctl del --prefix {prefix}`",
                    ctx.finalizer_timeout.as_secs()
                ),
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

/// How `run` is set up.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Address of `/healthz` and `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Namespace of the leader Lease.
    pub lease_namespace: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// This replica's identity.
    pub identity: String,
    /// Watch one namespace only (`None`: all).
    pub watch_namespace: Option<String>,
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Leadership was lost; the process must exit so it cannot act beside the new leader.
    #[error("lost leadership: {0}")]
    LostLeadership(String),
    /// The metrics server could not start.
    #[error("cannot serve /healthz and /metrics: {0}")]
    Metrics(#[source] std::io::Error),
    /// Leader election cannot work as configured (a missing namespace, no permission).
    #[error(transparent)]
    Lease(#[from] leader::LeaseError),
}

/// Runs the operator until SIGTERM (returns `Ok`) or lost leadership (returns `Err`).
pub async fn run(client: Client, cfg: RunConfig) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let listener_metrics = metrics.clone();
    let addr = cfg.metrics_addr;
    let server = tokio::spawn(async move { metrics::serve(addr, listener_metrics).await });

    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease_namespace);
    let leader_cfg = LeaderConfig::new(&cfg.lease_namespace, &cfg.lease_name, &cfg.identity);
    info!(identity = %cfg.identity, lease = %cfg.lease_name, "waiting for leadership");
    tokio::select! {
        won = leader::acquire(&lease_api, &leader_cfg) => won?,
        res = server => {
            let e = match res { Ok(Err(e)) => e, _ => std::io::Error::other("metrics server stopped") };
            return Err(RunError::Metrics(e));
        }
    }
    metrics.leader.set(1);

    let (ccs, owned_cfg) = (
        match &cfg.watch_namespace {
            Some(ns) => Api::<ChatCluster>::namespaced(client.clone(), ns),
            None => Api::<ChatCluster>::all(client.clone()),
        },
        watcher::Config::default().labels(&format!(
            "app.kubernetes.io/managed-by={}",
            crate::FIELD_MANAGER
        )),
    );
    fn owned<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
        client: &Client,
        ns: &Option<String>,
    ) -> Api<K>
    where
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = cfg.watch_namespace.clone();
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone()));
    let controller = Controller::new(ccs, watcher::Config::default().any_semantic())
        .owns(owned::<StatefulSet>(&client, &ns), owned_cfg.clone())
        .owns(owned::<Service>(&client, &ns), owned_cfg.clone())
        .owns(owned::<ConfigMap>(&client, &ns), owned_cfg.clone())
        .owns(owned::<PodDisruptionBudget>(&client, &ns), owned_cfg)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller event");
            }
        })
        .instrument(tracing::info_span!("controller"));
    info!("leading; reconciling ChatClusters");
    tokio::select! {
        () = controller => {
            leader::release(&lease_api, &leader_cfg).await;
            metrics.leader.set(0);
            info!("shut down");
            Ok(())
        }
        reason = leader::keep(&lease_api, &leader_cfg) => {
            metrics.leader.set(0);
            Err(RunError::LostLeadership(reason))
        }
    }
}
