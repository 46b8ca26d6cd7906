//! The apply branch of reconcile: validate → observe → size → roll → build → apply → status.
//!
//! Order of the API calls (the reconcile tests assert it):
//! 1. the generated token Secret: GET, and POST only when it does not exist (never
//!    re-applied: a new key would log everyone out); GET of referenced Secrets (a missing
//!    one is reported as `Degraded`/`SecretMissing`, the children are applied anyway);
//! 2. LIST the cluster's StatefulSets, to know their current sizes and revisions (a
//!    scale-down drains first; a StatefulSet the spec no longer has is drained and deleted);
//!    GETs of the etcd Secrets `spec.etcd` names, for the operator's own etcd connection
//!    (dialled once and kept while they are unchanged);
//! 3. the node certificates of `spec.tls` for every pod there is or will be, in every pool
//!    (see `certificates` for their calls), before the StatefulSets that mount them;
//! 4. only while a rolling upgrade is under way: LIST the chat pods, and DELETE the one pod
//!    that has drained (see [`super::rollout`]);
//! 5. server-side apply of ConfigMap, headless Service, client Service, then per node pool
//!    its PDB and StatefulSet (the children are built once, at the sizes decided);
//! 6. merge patch of the ChatCluster's `status`.
//!
//! etcd is read once per reconcile over a connection kept in the [`Context`]. Events are
//! published along the way for what changes (secret created, scaling, drains, replacements,
//! autoscaling decisions).

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::scale::{self, Target};
use super::status::{self, DrainState, Observed};
use super::{Context, Error, Result};
use crate::FIELD_MANAGER;
use crate::crd::{ChatCluster, ChatClusterStatus, ZoneStatus};
use crate::drain::{self, Etcd, EtcdView};
use crate::metrics::PoolLabels;
use crate::pools::{self, paused};
use crate::resources::{self, Children};
use crate::validate::validate;

/// Reconciles a ChatCluster that is not being deleted.
pub(super) async fn apply(cc: &ChatCluster, ctx: &Context) -> Result<Action> {
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
    if resources::needs_token_secret(cc) {
        ensure_token_secret(cc, ctx).await?;
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

    // 3. observe: the StatefulSets and etcd
    let existing = list_statefulsets(cc, ctx).await?;
    let cluster = cc.cluster_id();
    let plain = resources::plain_text_parts(cc);
    if !plain.is_empty() {
        warn!(parts = ?plain, "the nodes run with --insecure-cluster: {}", plain.join("; "));
    }
    let mut etcd = connect_and_view(cc, ctx, &cluster).await;
    let pools = pools::pools(cc);

    // 4. sizes: what each pool heads to, and this reconcile's step (drains first)
    let sizing = scale::desired(
        cc,
        &pools,
        etcd.as_ref().ok().map(|(_, v)| v),
        drain::now_ms(),
    );
    for (label, decision) in &sizing.decisions {
        let note = if pools.len() > 1 || cc.spec.zones.is_some() {
            format!("{label}: {decision}")
        } else {
            decision.to_string()
        };
        info!(%note, "autoscaling");
        ctx.event(cc, EventType::Normal, "Autoscaling", note).await;
    }
    let current = |name: &str| {
        existing
            .get(name)
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
    };
    let mut targets: Vec<Target> = pools
        .iter()
        .map(|p| Target {
            label: p.label(),
            name: p.name.clone(),
            current: current(&p.name),
            desired: sizing.desired.get(&p.name).copied().unwrap_or(0),
            leftover: false,
        })
        .collect();
    for name in existing
        .keys()
        .filter(|n| !pools.iter().any(|p| &p.name == *n))
    {
        targets.push(Target {
            label: format!("StatefulSet {name}"),
            name: name.clone(),
            current: current(name),
            desired: 0,
            leftover: true,
        });
    }

    // 4b. node certificates for every pod there is or will be, in every pool (before the
    // StatefulSets that mount them): a pool heading up gets its new pods' certificates now,
    // one draining down keeps its leaving pods' until they are gone
    let pods: Vec<String> = targets
        .iter()
        .flat_map(|t| (0..t.current.unwrap_or(0).max(t.desired)).map(|o| format!("{}-{o}", t.name)))
        .collect();
    super::certificates::ensure(cc, ctx, &pods, Timestamp::now().as_second()).await?;

    let scaled = scale::step(cc, ctx, &cluster, &mut etcd, &targets).await?;

    // 5. a rolling upgrade, one drained pod at a time (never while a scale-down drains)
    let rollout = if scaled.drain == DrainState::None {
        super::rollout::step(cc, ctx, &cluster, &mut etcd, &existing, &pools).await?
    } else {
        None
    };

    // 6. build the children once, at the decided sizes, and apply them
    let children = resources::children(cc, |p| scaled.sizes.get(&p.name).copied().unwrap_or(0));
    let applied = apply_children(cc, ctx, &children).await?;
    for t in targets.iter().filter(|t| t.leftover) {
        if scaled.gone.contains(&t.name) {
            scale::delete_leftover(cc, ctx, &t.name).await?;
        } else if let Some(n) = scaled.sizes.get(&t.name).filter(|n| Some(**n) != t.current) {
            scale::resize_leftover(cc, ctx, &t.name, *n).await?;
        }
    }

    // 7. after a shrink, the removed nodes' drain keys go
    if let Ok((client, _)) = &mut etcd {
        for id in &scaled.shrunk {
            if let Err(e) = client.delete_drain(&cluster, id).await {
                warn!(node_id = %id, error = %e, "deleting a drain key failed; retried next reconcile");
            }
        }
    }

    // 8. status (and the per-pool metrics)
    let seen = observe(
        cc,
        ctx,
        &children,
        &applied,
        &existing,
        &targets,
        &sizing.desired,
        &etcd,
    );
    let seen = Observed {
        missing_secrets,
        drain: scaled.drain.clone(),
        rollout: rollout.clone(),
        autoscaling: sizing.autoscaling.clone(),
        ..seen
    };
    patch_status(cc, ctx, status::status(cc, &seen, Timestamp::now())).await?;

    Ok(
        match (&scaled.drain, &etcd, &rollout, &cc.spec.autoscaling) {
            (DrainState::Waiting { .. }, _, _, _) | (_, Ok(_), Some(_), _) => {
                Action::requeue(ctx.drain_poll)
            }
            (_, Err(_), _, _) | (DrainState::Blocked { .. }, _, _, _) => {
                Action::requeue(ctx.drain_poll * 6)
            }
            (_, _, _, Some(_)) => Action::requeue(ctx.autoscale_poll.min(ctx.resync)),
            _ => Action::requeue(ctx.resync),
        },
    )
}

/// What the reconcile saw, for status; also sets the per-pool metrics.
#[allow(clippy::too_many_arguments)]
fn observe(
    cc: &ChatCluster,
    ctx: &Context,
    children: &Children,
    applied: &[StatefulSet],
    existing: &BTreeMap<String, StatefulSet>,
    targets: &[Target],
    desired: &BTreeMap<String, i32>,
    etcd: &std::result::Result<(Etcd, EtcdView), drain::Error>,
) -> Observed {
    let mut seen = Observed {
        etcd: match etcd {
            Ok((_, view)) => Ok((view.members(), view.connections())),
            Err(e) => Err(e.to_string()),
        },
        paused: paused(cc),
        desired: desired.values().sum(),
        ..Observed::settled(0)
    };
    let view = etcd.as_ref().ok().map(|(_, v)| v);
    let leftovers = targets
        .iter()
        .filter(|t| t.leftover)
        .filter_map(|t| existing.get(&t.name));
    for sts in applied.iter().chain(leftovers) {
        let st = sts.status.clone().unwrap_or_default();
        seen.replicas += st.replicas;
        seen.ready_replicas += st.ready_replicas.unwrap_or(0);
        seen.updated_replicas += st.updated_replicas.unwrap_or(0);
    }
    for (pc, sts) in children.pools.iter().zip(applied) {
        let pool = &pc.pool;
        let (members, connections) =
            view.map_or((0, 0), |v| v.count(|id| pool.ordinal_of(id).is_some()));
        let labels = PoolLabels {
            namespace: cc.namespace_or_default(),
            name: cc.name_or_empty(),
            zone: pool.zone.clone().unwrap_or_default(),
        };
        if view.is_some() {
            ctx.metrics
                .connections
                .get_or_create(&labels)
                .set(connections);
            ctx.metrics
                .members
                .get_or_create(&labels)
                .set(i64::from(members));
        }
        let want = desired.get(&pool.name).copied().unwrap_or(0);
        ctx.metrics
            .desired_replicas
            .get_or_create(&labels)
            .set(i64::from(want));
        if let (Some(zone), Some(region)) = (&pool.zone, &pool.region) {
            let st = sts.status.clone().unwrap_or_default();
            seen.zones.push(ZoneStatus {
                name: zone.clone(),
                region: region.clone(),
                replicas: st.replicas,
                ready_replicas: st.ready_replicas.unwrap_or(0),
                desired_replicas: want,
                members,
                connections,
            });
        }
    }
    seen
}

/// etcd's view of the cluster, over the connection kept in the context (a failed read drops
/// it, so the next reconcile dials again).
async fn connect_and_view(
    cc: &ChatCluster,
    ctx: &Context,
    cluster: &str,
) -> std::result::Result<(Etcd, EtcdView), drain::Error> {
    let mut etcd = ctx.etcd(cc).await?;
    match etcd.view(cluster).await {
        Ok(view) => Ok((etcd, view)),
        Err(e) => {
            ctx.forget_etcd(cc).await;
            Err(e)
        }
    }
}

/// The cluster's StatefulSets (the pools', and any the spec no longer has), by name: those
/// with the cluster's labels that this ChatCluster owns.
async fn list_statefulsets(
    cc: &ChatCluster,
    ctx: &Context,
) -> Result<BTreeMap<String, StatefulSet>> {
    let ns = cc.namespace_or_default();
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let list = api
        .list(&ListParams::default().labels(&resources::selector_string(cc)))
        .await
        .map_err(Error::kube(format!("list StatefulSets in {ns}")))?;
    let uid = cc.metadata.uid.clone();
    Ok(list
        .items
        .into_iter()
        .filter(|s| {
            uid.as_ref().is_none_or(|uid| {
                s.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| &o.uid == uid)
            })
        })
        .filter_map(|s| s.metadata.name.clone().map(|n| (n, s)))
        .collect())
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
async fn ensure_token_secret(cc: &ChatCluster, ctx: &Context) -> Result<()> {
    let ns = cc.namespace_or_default();
    let name = resources::generated_token_secret_name(cc);
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
    let secret = resources::token_secret(cc, Some(hex.as_bytes()));
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

/// Server-side applies every child (each pool's StatefulSet after its budget) and returns
/// the StatefulSets as the API server answered, with their status.
async fn apply_children(cc: &ChatCluster, ctx: &Context, c: &Children) -> Result<Vec<StatefulSet>> {
    ssa(ctx, cc, &c.configmap).await?;
    ssa(ctx, cc, &c.headless_service).await?;
    ssa(ctx, cc, &c.client_service).await?;
    let mut applied = Vec::with_capacity(c.pools.len());
    for p in &c.pools {
        ssa(ctx, cc, &p.pdb).await?;
        applied.push(ssa(ctx, cc, &p.statefulset).await?);
    }
    Ok(applied)
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
