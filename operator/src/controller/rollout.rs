//! The rolling upgrade's API calls: read the pods, then carry out [`crate::rollout::plan`]
//! (drain requests in etcd, pod deletions, events).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::{Context, Error, Result};
use crate::crd::ChatCluster;
use crate::drain::{self, DrainPurpose, DrainRequest, Etcd, EtcdView};
use crate::pools::Pool;
use crate::resources::selector_string;
use crate::rollout::{self, PodState, Step};

/// Whether a pool's StatefulSet has pods on an older template (or a replacement is under
/// way): only then are the pods read.
fn rolling(existing: &BTreeMap<String, StatefulSet>, pools: &[Pool], view: &EtcdView) -> bool {
    let outdated = pools.iter().filter_map(|p| existing.get(&p.name)).any(|s| {
        let st = s.status.clone().unwrap_or_default();
        st.update_revision.is_some() && st.updated_replicas.unwrap_or(0) < st.replicas
    });
    outdated
        || view
            .drains
            .values()
            .any(|d| d.purpose == DrainPurpose::Replace)
}

fn pod_state(pod: &Pod) -> Option<PodState> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet")?;
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Some(PodState {
        name: pod.metadata.name.clone()?,
        pool: owner.name.clone(),
        revision: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("controller-revision-hash").cloned()),
        ready,
        deleting: pod.metadata.deletion_timestamp.is_some(),
    })
}

/// One reconcile's share of the rolling upgrade. Returns what it is doing, for status
/// (`None`: nothing to roll).
pub(super) async fn step(
    cc: &ChatCluster,
    ctx: &Context,
    cluster: &str,
    etcd: &mut std::result::Result<(Etcd, EtcdView), drain::Error>,
    existing: &BTreeMap<String, StatefulSet>,
    pools: &[Pool],
) -> Result<Option<String>> {
    // Without etcd no pod can be drained, so none is replaced.
    let Ok((client, view)) = etcd else {
        return Ok(None);
    };
    if !rolling(existing, pools, view) {
        return Ok(None);
    }
    let update_revision: BTreeMap<String, String> = pools
        .iter()
        .filter_map(|p| {
            let rev = existing
                .get(&p.name)?
                .status
                .as_ref()?
                .update_revision
                .clone()?;
            Some((p.name.clone(), rev))
        })
        .collect();
    let ns = cc.namespace_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = api
        .list(&ListParams::default().labels(&selector_string(cc)))
        .await
        .map_err(Error::kube(format!("list Pods in {ns}")))?;
    let pods: Vec<PodState> = listed.items.iter().filter_map(pod_state).collect();
    let now = drain::now_ms();
    let mut doing = None;
    for step in rollout::plan(&pods, &update_revision, view, now) {
        match step {
            Step::Idle => {}
            Step::Finish(id) => {
                client.delete_drain(cluster, &id).await?;
                view.drains.remove(&id);
                info!(node_id = %id, "rolling upgrade: replacement registered");
                ctx.event(
                    cc,
                    EventType::Normal,
                    "PodReplaced",
                    format!("rolling upgrade: {id} runs the new template and takes users again"),
                )
                .await;
            }
            Step::StartDrain(id) => {
                let req = DrainRequest {
                    requested_at: now,
                    deadline: now + cc.spec.drain.timeout_seconds * 1000,
                    purpose: DrainPurpose::Replace,
                };
                let in_force = client.request_drain(cluster, &id, req).await?;
                view.drains.insert(id.clone(), in_force);
                ctx.event(
                    cc,
                    EventType::Normal,
                    "DrainStarted",
                    format!(
                        "rolling upgrade: asked {id} to move its clients away before its pod is replaced (timeout {}s)",
                        cc.spec.drain.timeout_seconds
                    ),
                )
                .await;
                doing = Some(format!("draining {id} before replacing it"));
            }
            Step::Draining(id, connections) => {
                doing = Some(format!(
                    "draining {id} ({connections} connections left) before replacing it"
                ));
            }
            Step::Replace(id, timed_out) => {
                match api.delete(&id, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(source) => {
                        return Err(Error::Kube {
                            what: format!("delete Pod {ns}/{id}"),
                            source,
                        });
                    }
                }
                if timed_out {
                    ctx.event(
                        cc,
                        EventType::Warning,
                        "DrainTimedOut",
                        format!(
                            "rolling upgrade: {id} still had clients after {}s; replacing it anyway (its clients reconnect)",
                            cc.spec.drain.timeout_seconds
                        ),
                    )
                    .await;
                } else {
                    ctx.event(
                        cc,
                        EventType::Normal,
                        "ReplacingPod",
                        format!("rolling upgrade: {id} drained; deleting its pod so that it comes back on the new template"),
                    )
                    .await;
                }
                doing = Some(format!("replacing {id}"));
            }
            Step::Waiting(id) => {
                doing = Some(format!(
                    "waiting for {id} to come back ready on the new template"
                ));
            }
        }
    }
    Ok(doing)
}
