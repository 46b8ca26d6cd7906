//! Sizing the node pools: the size each pool heads to (a pause, the autoscaler, the spec),
//! and this reconcile's step towards it: growth at once; a shrink drains the leaving nodes
//! first and shrinks when they are empty or their drain timed out. StatefulSets the spec no
//! longer has (a zone removed, zones turned on or off) are drained to zero and deleted.
//!
//! Each pool drains only its own leaving nodes: a zone that shrinks never takes nodes from
//! another zone.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::status::DrainState;
use super::{Context, Error, Result};
use crate::autoscale::{self, Decision};
use crate::crd::{AutoscalingStatus, ChatCluster};
use crate::drain::{self, DrainPurpose, DrainRequest, Etcd, EtcdView, ScalePlan};
use crate::pools::{Pool, paused};

/// The sizes the pools head to.
pub(super) struct Sizing {
    /// By StatefulSet name.
    pub desired: BTreeMap<String, i32>,
    /// The autoscaler's new state (when the spec has autoscaling).
    pub autoscaling: Option<AutoscalingStatus>,
    /// The autoscaler's decisions this reconcile, with the pool's label.
    pub decisions: Vec<(String, Decision)>,
}

/// Decides what size each pool heads to. `view` is `None` when etcd could not be read (the
/// autoscaler then holds every size).
pub(super) fn desired(
    cc: &ChatCluster,
    pools: &[Pool],
    view: Option<&EtcdView>,
    now_ms: i64,
) -> Sizing {
    let old = cc.status.as_ref().and_then(|s| s.autoscaling.clone());
    let mut sizing = Sizing {
        desired: BTreeMap::new(),
        autoscaling: None,
        decisions: Vec::new(),
    };
    match &cc.spec.autoscaling {
        Some(spec) if !paused(cc) => {
            let mut status = AutoscalingStatus {
                last_decision: old.as_ref().and_then(|o| o.last_decision.clone()),
                last_scale_time: old.as_ref().and_then(|o| o.last_scale_time.clone()),
                ..AutoscalingStatus::default()
            };
            for pool in pools {
                let state = old
                    .as_ref()
                    .and_then(|o| o.pools.iter().find(|p| p.stateful_set == pool.name));
                let connections = view.map(|v| v.count(|id| pool.ordinal_of(id).is_some()).1);
                let step = autoscale::decide(
                    &pool.name,
                    state,
                    pool.initial_replicas(cc),
                    connections,
                    spec,
                    now_ms,
                );
                if let Some(d) = &step.decision {
                    let text = match &pool.zone {
                        Some(_) => format!("{}: {d}", pool.label()),
                        None => d.to_string(),
                    };
                    status.last_decision = Some(text);
                    status.last_scale_time =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::now(),
                        ));
                    sizing.decisions.push((pool.label(), d.clone()));
                }
                sizing.desired.insert(pool.name.clone(), step.desired);
                status.pools.push(step.state);
            }
            sizing.autoscaling = Some(status);
        }
        _ => {
            for pool in pools {
                sizing
                    .desired
                    .insert(pool.name.clone(), pool.initial_replicas(cc));
            }
            // Paused with autoscaling: keep its state for the resume.
            if cc.spec.autoscaling.is_some() {
                sizing.autoscaling = old;
            }
        }
    }
    sizing
}

/// One StatefulSet to size: a pool, or one the spec no longer has (desired 0, then deleted).
pub(super) struct Target {
    /// `zone a`, `the cluster`, or `StatefulSet demo-old` for a leftover.
    pub label: String,
    /// The StatefulSet's name; its pods are `<name>-<ordinal>`.
    pub name: String,
    /// Its current size (`None`: it does not exist yet).
    pub current: Option<i32>,
    /// The size it heads to.
    pub desired: i32,
    /// Whether the spec no longer has it.
    pub leftover: bool,
}

/// This reconcile's sizes and what they wait for.
pub(super) struct Scaled {
    /// The size to apply, by StatefulSet name.
    pub sizes: BTreeMap<String, i32>,
    /// The first pool that waits for a drain (or cannot drain).
    pub drain: DrainState,
    /// Nodes of StatefulSets shrunk this reconcile: their drain keys go after the apply.
    pub shrunk: Vec<String>,
    /// Leftover StatefulSets that are empty: delete them (and their budgets).
    pub gone: Vec<String>,
}

fn ordinal_in(sts: &str, node_id: &str) -> Option<i32> {
    node_id
        .strip_prefix(sts)
        .and_then(|r| r.strip_prefix('-'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

/// Steps every target towards its size: immediate on growth, draining first on shrink.
pub(super) async fn step(
    cc: &ChatCluster,
    ctx: &Context,
    cluster: &str,
    etcd: &mut std::result::Result<(Etcd, EtcdView), drain::Error>,
    targets: &[Target],
) -> Result<Scaled> {
    let mut out = Scaled {
        sizes: BTreeMap::new(),
        drain: DrainState::None,
        shrunk: Vec::new(),
        gone: Vec::new(),
    };
    for t in targets {
        let plan = drain::plan(t.current, t.desired, |o| format!("{}-{o}", t.name));
        let (size, state, shrunk) = step_one(cc, ctx, cluster, etcd, t, &plan).await?;
        if out.drain == DrainState::None {
            out.drain = state;
        }
        if t.leftover && size == 0 {
            out.gone.push(t.name.clone());
        }
        out.shrunk.extend(shrunk.unwrap_or_default());
        out.sizes.insert(t.name.clone(), size);
    }
    Ok(out)
}

/// One target's step. Returns (size to apply, drain state, leaving nodes when it shrinks now).
async fn step_one(
    cc: &ChatCluster,
    ctx: &Context,
    cluster: &str,
    etcd: &mut std::result::Result<(Etcd, EtcdView), drain::Error>,
    t: &Target,
    plan: &ScalePlan,
) -> Result<(i32, DrainState, Option<Vec<String>>)> {
    let prefix = if t.label.starts_with("zone ") || t.leftover {
        format!("{}: ", t.label)
    } else {
        String::new()
    };
    let scale_downs_of = |view: &EtcdView, keep: &dyn Fn(i32) -> bool| -> Vec<String> {
        view.drains
            .iter()
            .filter(|(_, d)| d.purpose == DrainPurpose::ScaleDown)
            .filter_map(|(id, _)| ordinal_in(&t.name, id).map(|o| (id, o)))
            .filter(|(_, o)| keep(*o))
            .map(|(id, _)| id.clone())
            .collect()
    };
    match plan {
        ScalePlan::Apply(n) => {
            if let Ok((client, view)) = etcd {
                // Scale-down drains of nodes that stay (a scale-down undone): cancel them.
                let n = *n;
                for id in scale_downs_of(view, &|o| o < n) {
                    client.delete_drain(cluster, &id).await?;
                    view.drains.remove(&id);
                    info!(node_id = %id, "drain cancelled: the node stays");
                }
            }
            if let Some(cur) = t.current.filter(|c| c < n) {
                ctx.event(
                    cc,
                    EventType::Normal,
                    "ScalingUp",
                    format!("{prefix}scaling {cur} → {n} nodes"),
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
                            pool: t.label.clone(),
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
                        purpose: DrainPurpose::ScaleDown,
                    };
                    let in_force = client.request_drain(cluster, id, req).await?;
                    view.drains.insert(id.clone(), in_force);
                    started.push(id.clone());
                }
            }
            let target_n = *target;
            for id in scale_downs_of(view, &|o| o < target_n) {
                client.delete_drain(cluster, &id).await?;
                view.drains.remove(&id);
            }
            if !started.is_empty() {
                let why = if target_n == 0 && paused(cc) {
                    "pausing".to_string()
                } else {
                    format!("scaling {hold} → {target}")
                };
                ctx.event(
                    cc,
                    EventType::Normal,
                    "DrainStarted",
                    format!(
                        "{prefix}{why}: asked {} to move their clients away (timeout {}s)",
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
                        pool: t.label.clone(),
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
                    format!(
                        "{prefix}scaling {hold} → {target}: {} drained",
                        leaving.join(", ")
                    ),
                )
                .await;
            } else {
                ctx.event(
                    cc,
                    EventType::Warning,
                    "DrainTimedOut",
                    format!(
                        "{prefix}scaling {hold} → {target}: {} still had clients after {}s; removing them anyway (their clients reconnect)",
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

/// Sets a leftover StatefulSet's size (it has no builder any more, so not server-side
/// apply: a merge patch of `spec.replicas`).
pub(super) async fn resize_leftover(
    cc: &ChatCluster,
    ctx: &Context,
    name: &str,
    n: i32,
) -> Result<()> {
    let ns = cc.namespace_or_default();
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"replicas": n}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("scale StatefulSet {ns}/{name}")))?;
    Ok(())
}

/// Deletes an empty leftover StatefulSet and its PodDisruptionBudget.
pub(super) async fn delete_leftover(cc: &ChatCluster, ctx: &Context, name: &str) -> Result<()> {
    let ns = cc.namespace_or_default();
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let pdb: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let gone = |r: std::result::Result<(), kube::Error>, what: String| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube { what, source }),
    };
    gone(
        sts.delete(name, &DeleteParams::default()).await.map(|_| ()),
        format!("delete StatefulSet {ns}/{name}"),
    )?;
    gone(
        pdb.delete(name, &DeleteParams::default()).await.map(|_| ()),
        format!("delete PodDisruptionBudget {ns}/{name}"),
    )?;
    ctx.event(
        cc,
        EventType::Normal,
        "PoolRemoved",
        format!("StatefulSet {name} is no longer in the spec: drained and deleted"),
    )
    .await;
    Ok(())
}
