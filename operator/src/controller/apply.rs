//! The apply branch of reconcile: validate → build → server-side apply → status.
//!
//! Order of the API calls (the reconcile tests assert it):
//! 1. the generated token Secret: GET, and POST only when it does not exist (never
//!    re-applied: a new key would log everyone out); GET of referenced Secrets (a missing
//!    one is reported as `Degraded`/`SecretMissing`, the children are applied anyway);
//! 2. GET the StatefulSet, to know its current size (scale-down drains first); then the
//!    node certificates of `spec.tls` (see `certificates` for their calls), and GETs of the
//!    etcd Secrets `spec.etcd` names, for the operator's own etcd connection;
//! 3. server-side apply of ConfigMap, headless Service, client Service, PDB, StatefulSet;
//! 4. merge patch of the ChatCluster's `status`.
//!
//! Events are published along the way for what changes (secret created, scaling, drains).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::status::{self, DrainState, Observed};
use super::{Context, Error, Result};
use crate::FIELD_MANAGER;
use crate::crd::{ChatCluster, ChatClusterStatus};
use crate::drain::{self, DrainRequest, Etcd, EtcdView, ScalePlan};
use crate::resources::{self, Children};
use crate::validate::validate;

/// Reconciles a ChatCluster that is not being deleted.
pub(super) async fn apply(cc: &ChatCluster, ctx: &Context) -> Result<Action> {
    let ns = cc.namespace_or_default();
    let name = cc.name_or_empty();

    // 1. validate
    if let Err(invalid) = validate(cc) {
        warn!(%invalid, "invalid spec");
        ctx.event(cc, EventType::Warning, "InvalidSpec", invalid.to_string())
            .await;
        patch_status(
            cc,
            ctx,
            status::invalid_status(cc, &invalid.to_string(), Timestamp::now()),
        )
        .await?;
        return Err(invalid.into());
    }

    // 2. the token Secret, created once; referenced Secrets checked
    if let Some(secret) = resources::children(cc, cc.spec.replicas).token_secret {
        ensure_token_secret(cc, ctx, secret).await?;
    }
    let missing_secrets = missing_secrets(cc, ctx).await?;
    if !missing_secrets.is_empty() {
        ctx.event(
            cc,
            EventType::Warning,
            "SecretMissing",
            missing_secrets.join("; "),
        )
        .await;
    }

    // 3. current size, etcd view, scale plan
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let current = sts_api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("get StatefulSet {ns}/{name}")))?
        .and_then(|s| s.spec.and_then(|s| s.replicas));
    let cluster = cc.cluster_id();
    // 3b. node certificates for every pod there is or will be (before their StatefulSet)
    let pods = current.unwrap_or(0).max(cc.spec.replicas);
    super::certificates::ensure(cc, ctx, pods, Timestamp::now().as_second()).await?;
    let plain = resources::plain_text_parts(cc);
    if !plain.is_empty() {
        warn!(parts = ?plain, "the nodes run with --insecure-cluster: {}", plain.join("; "));
    }
    let mut etcd = connect_and_view(cc, ctx, &cluster).await;
    let plan = drain::plan(current, cc.spec.replicas, |o| resources::pod_name(cc, o));
    let (sts_replicas, drain_state, shrunk) =
        scale_step(cc, ctx, &cluster, &mut etcd, current, &plan).await?;

    // 4. build and apply the children
    let children = resources::children(cc, sts_replicas);
    let sts = apply_children(cc, ctx, &children).await?;

    // 5. after a shrink, the removed nodes' drain keys go
    if let (Some(leaving), Ok((client, _))) = (&shrunk, &mut etcd) {
        for id in leaving {
            if let Err(e) = client.delete_drain(&cluster, id).await {
                warn!(node_id = %id, error = %e, "deleting a drain key failed; retried next reconcile");
            }
        }
    }

    // 6. status
    let sts_status = sts.status.clone().unwrap_or_default();
    let seen = Observed {
        replicas: sts_status.replicas,
        ready_replicas: sts_status.ready_replicas.unwrap_or(0),
        updated_replicas: sts_status.updated_replicas.unwrap_or(0),
        etcd: match &etcd {
            Ok((_, view)) => Ok((view.members(), view.connections())),
            Err(e) => Err(e.to_string()),
        },
        missing_secrets,
        drain: drain_state.clone(),
    };
    patch_status(cc, ctx, status::status(cc, &seen, Timestamp::now())).await?;

    Ok(match (&drain_state, &etcd) {
        (DrainState::Waiting { .. }, _) => Action::requeue(ctx.drain_poll),
        (_, Err(_)) | (DrainState::Blocked { .. }, _) => Action::requeue(ctx.drain_poll * 6),
        _ => Action::requeue(ctx.resync),
    })
}

async fn connect_and_view(
    cc: &ChatCluster,
    ctx: &Context,
    cluster: &str,
) -> Result<(Etcd, EtcdView), drain::Error> {
    let connect = super::credentials::etcd_connect(cc, &ctx.client).await?;
    let mut etcd = Etcd::connect(&connect).await?;
    let view = etcd.view(cluster).await?;
    Ok((etcd, view))
}

/// Decides the StatefulSet size: immediate on scale-up, draining first on scale-down.
/// Returns (size to apply, drain state for status, leaving nodes when this reconcile shrinks).
async fn scale_step(
    cc: &ChatCluster,
    ctx: &Context,
    cluster: &str,
    etcd: &mut Result<(Etcd, EtcdView), drain::Error>,
    current: Option<i32>,
    plan: &ScalePlan,
) -> Result<(i32, DrainState, Option<Vec<String>>)> {
    match plan {
        ScalePlan::Apply(n) => {
            if let Ok((client, view)) = etcd {
                // Drain requests for nodes that stay (a scale-down undone): cancel them.
                for id in view.drains.keys().cloned().collect::<Vec<_>>() {
                    client.delete_drain(cluster, &id).await?;
                    view.drains.remove(&id);
                    info!(node_id = %id, "drain cancelled: the node stays");
                }
            }
            if let Some(cur) = current.filter(|c| c < n) {
                ctx.event(
                    cc,
                    EventType::Normal,
                    "ScalingUp",
                    format!("scaling {cur} → {n} nodes"),
                )
                .await;
            }
            Ok((*n, DrainState::None, None))
        }
        ScalePlan::Drain {
            hold,
            target,
            leaving,
        } => {
            let (client, view) = match etcd {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "cannot drain without etcd; holding the StatefulSet size");
                    return Ok((
                        *hold,
                        DrainState::Blocked {
                            from: *hold,
                            to: *target,
                        },
                        None,
                    ));
                }
            };
            let now = drain::now_ms();
            let mut started = Vec::new();
            for id in leaving {
                if !view.drains.contains_key(id) {
                    let req = DrainRequest {
                        requested_at: now,
                        deadline: now + cc.spec.drain.timeout_seconds * 1000,
                    };
                    let in_force = client.request_drain(cluster, id, req).await?;
                    view.drains.insert(id.clone(), in_force);
                    started.push(id.clone());
                }
            }
            for id in view
                .drains
                .keys()
                .filter(|id| !leaving.contains(id))
                .cloned()
                .collect::<Vec<_>>()
            {
                client.delete_drain(cluster, &id).await?;
                view.drains.remove(&id);
            }
            if !started.is_empty() {
                ctx.event(
                    cc,
                    EventType::Normal,
                    "DrainStarted",
                    format!(
                        "scaling {hold} → {target}: asked {} to move their clients away (timeout {}s)",
                        started.join(", "),
                        cc.spec.drain.timeout_seconds
                    ),
                )
                .await;
            }
            let progress = drain::progress(leaving, view, now);
            if !progress.done {
                info!(waiting = ?progress.waiting, "scale-down waits for draining nodes");
                return Ok((
                    *hold,
                    DrainState::Waiting {
                        from: *hold,
                        to: *target,
                        waiting: progress.waiting,
                    },
                    None,
                ));
            }
            if progress.timed_out.is_empty() {
                ctx.event(
                    cc,
                    EventType::Normal,
                    "ScaledDown",
                    format!("scaling {hold} → {target}: {} drained", leaving.join(", ")),
                )
                .await;
            } else {
                ctx.event(
                    cc,
                    EventType::Warning,
                    "DrainTimedOut",
                    format!(
                        "scaling {hold} → {target}: {} still had clients after {}s; removing them anyway (their clients reconnect)",
                        progress.timed_out.join(", "),
                        cc.spec.drain.timeout_seconds
                    ),
                )
                .await;
            }
            Ok((*target, DrainState::None, Some(leaving.clone())))
        }
    }
}

/// The Secrets the spec references (token key, push HMAC key) that do not exist or lack the
/// key, each described with the field that names it.
async fn missing_secrets(cc: &ChatCluster, ctx: &Context) -> Result<Vec<String>> {
    let ns = cc.namespace_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let refs = [
        (
            "spec.auth.tokenSecretRef",
            cc.spec
                .auth
                .as_ref()
                .and_then(|a| a.token_secret_ref.clone()),
        ),
        (
            "spec.push.secretRef",
            cc.spec.push.as_ref().and_then(|p| p.secret_ref.clone()),
        ),
    ];
    // The Secrets named without a key: each key the nodes mount must be there.
    let whole = |field: &'static str, r: Option<&crate::crd::LocalSecretRef>, keys: &[&str]| {
        r.map(|r| {
            keys.iter()
                .map(|k| {
                    (
                        field,
                        Some(crate::crd::SecretKeyRef {
                            name: r.name.clone(),
                            key: (*k).to_string(),
                        }),
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    };
    let tls_keys = ["ca.crt", "tls.crt", "tls.key"];
    let refs = refs
        .into_iter()
        .chain(whole(
            "spec.etcd.tlsSecretRef",
            cc.spec.etcd.tls_secret_ref.as_ref(),
            &tls_keys,
        ))
        .chain(whole(
            "spec.etcd.authSecretRef",
            cc.spec.etcd.auth_secret_ref.as_ref(),
            &["username", "password"],
        ))
        .chain(whole(
            "spec.storage.tikv.tlsSecretRef",
            cc.spec
                .storage
                .tikv
                .as_ref()
                .and_then(|t| t.tls_secret_ref.as_ref())
                .filter(|_| cc.spec.storage.backend == crate::crd::StorageBackend::Tikv),
            &tls_keys,
        ));
    let mut missing = Vec::new();
    for (field, r) in refs {
        let Some(r) = r else { continue };
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(Error::kube(format!("get Secret {ns}/{}", r.name)))?;
        match secret {
            None => missing.push(format!("Secret {ns}/{} ({field}) not found", r.name)),
            Some(s) => {
                let has_key = s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                    || s.string_data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&r.key));
                if !has_key {
                    missing.push(format!(
                        "Secret {ns}/{} ({field}) has no key {:?}",
                        r.name, r.key
                    ));
                }
            }
        }
    }
    Ok(missing)
}

/// Creates the generated token Secret unless it exists. Never overwrites it.
async fn ensure_token_secret(cc: &ChatCluster, ctx: &Context, mut secret: Secret) -> Result<()> {
    let ns = cc.namespace_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("get Secret {ns}/{name}")))?
        .is_some()
    {
        return Ok(());
    }
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    secret = resources::token_secret(cc, Some(hex.as_bytes()));
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &secret,
        )
        .await
    {
        Ok(_) => {
            ctx.event(
                cc,
                EventType::Normal,
                "TokenSecretCreated",
                format!("created Secret {name} with a random token signing key"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("create Secret {ns}/{name}"),
            source,
        }),
    }
}

/// Server-side applies every child (the StatefulSet last) and returns the StatefulSet as the
/// API server answered, with its status.
async fn apply_children(cc: &ChatCluster, ctx: &Context, c: &Children) -> Result<StatefulSet> {
    ssa(ctx, cc, &c.configmap).await?;
    ssa(ctx, cc, &c.headless_service).await?;
    ssa(ctx, cc, &c.client_service).await?;
    ssa(ctx, cc, &c.pdb).await?;
    ssa(ctx, cc, &c.statefulset).await
}

async fn ssa<K>(ctx: &Context, cc: &ChatCluster, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let ns = cc.namespace_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(Error::kube(format!("apply {} {ns}/{name}", K::kind(&()))))
}

async fn patch_status(cc: &ChatCluster, ctx: &Context, status: ChatClusterStatus) -> Result<()> {
    if cc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let ns = cc.namespace_or_default();
    let name = cc.name_or_empty();
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "patch status of ChatCluster {ns}/{name}"
        )))?;
    Ok(())
}
