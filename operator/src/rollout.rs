//! Rolling upgrades without losing a socket's messages, pure: what to do next.
//!
//! The StatefulSets use the `OnDelete` update strategy, so a new pod template (image,
//! settings) replaces no pod by itself. The operator replaces outdated pods one at a time
//! across the whole cluster:
//! 1. pick the next outdated pod (one that serves nobody first, then from the zone with the
//!    most outdated pods, so zones take turns, highest ordinal first) and write its drain
//!    request (purpose `replace`);
//! 2. wait until its node drained (no connections, or its registration is gone, or the drain
//!    timeout passed), then delete the pod: the StatefulSet controller creates it again from
//!    the new template, with the same name, so the same node id;
//! 3. once the new pod is up to date and its node registered anew (its registration is newer
//!    than the drain request: the old process's registration went with its lease), delete the
//!    drain request: the node takes users again, and its users come back;
//! 4. the next pod starts only when every up-to-date pod is ready.
//!
//! Nothing rolls while a scale-down is draining.

use std::collections::BTreeMap;

use crate::drain::{DrainPurpose, EtcdView};

/// A pod as the rollout sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    /// The pod's name, which is its node id.
    pub name: String,
    /// Its StatefulSet (pool).
    pub pool: String,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
    /// Whether it passes its readiness probe.
    pub ready: bool,
    /// Whether it is being deleted.
    pub deleting: bool,
}

/// What the rollout does this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every pod is up to date.
    Idle,
    /// Ask this node to drain before its pod is replaced.
    StartDrain(String),
    /// This node is draining: waiting for its clients to move (connections left).
    Draining(String, u64),
    /// This node drained (or its drain timed out, `true`): delete its pod now.
    Replace(String, bool),
    /// This node's replacement is waiting to come up (up to date, ready and registered).
    Waiting(String),
    /// This node's replacement registered: delete its drain request, then go on.
    Finish(String),
}

/// The next step(s): at most one `Finish` followed by one other step. `update_revision`
/// maps each StatefulSet to the revision its pods should have; `now_ms` decides timeouts.
pub fn plan(
    pods: &[PodState],
    update_revision: &BTreeMap<String, String>,
    view: &EtcdView,
    now_ms: i64,
) -> Vec<Step> {
    let up_to_date = |p: &PodState| {
        update_revision
            .get(&p.pool)
            .is_some_and(|r| p.revision.as_deref() == Some(r.as_str()))
    };
    let mut steps = Vec::new();
    let replacing: Vec<&String> = view
        .drains
        .iter()
        .filter(|(_, d)| d.purpose == DrainPurpose::Replace)
        .map(|(id, _)| id)
        .collect();
    let mut finished = Vec::new();
    for id in replacing {
        let pod = pods.iter().find(|p| &p.name == id);
        match pod {
            Some(p) if !p.deleting && up_to_date(p) && view.registered_since_drain(id) => {
                steps.push(Step::Finish(id.clone()));
                finished.push(id.clone());
            }
            Some(p) if !p.deleting && up_to_date(p) => return vec![Step::Waiting(id.clone())],
            Some(p) if !p.deleting => {
                let connections = view.nodes.get(id).map_or(0, |n| n.connections);
                let timed_out = view.drains.get(id).is_some_and(|d| now_ms >= d.deadline);
                return if connections == 0 || timed_out {
                    vec![Step::Replace(id.clone(), timed_out && connections > 0)]
                } else {
                    vec![Step::Draining(id.clone(), connections)]
                };
            }
            // Deleted, or on its way out: the StatefulSet controller brings it back.
            _ => return vec![Step::Waiting(id.clone())],
        }
    }
    // A replacement that is not ready yet holds the next one back.
    if let Some(p) = pods
        .iter()
        .find(|p| up_to_date(p) && (!p.ready || p.deleting))
    {
        steps.push(Step::Waiting(p.name.clone()));
        return steps;
    }
    let outdated: Vec<&PodState> = pods
        .iter()
        .filter(|p| !up_to_date(p) && !p.deleting && update_revision.contains_key(&p.pool))
        .filter(|p| !finished.contains(&p.name))
        .collect();
    if outdated.is_empty() {
        if steps.is_empty() {
            steps.push(Step::Idle);
        }
        return steps;
    }
    let next = outdated
        .iter()
        .find(|p| !p.ready)
        .copied()
        .unwrap_or_else(|| {
            let mut per_pool: BTreeMap<&str, usize> = BTreeMap::new();
            for p in &outdated {
                *per_pool.entry(p.pool.as_str()).or_default() += 1;
            }
            // The zone with the most outdated pods (the first by name on a tie)...
            let pool = per_pool
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(p, _)| *p)
                .unwrap_or_default();
            // ... and its highest ordinal, as the StatefulSet controller would.
            outdated
                .iter()
                .filter(|p| p.pool == pool)
                .max_by_key(|p| ordinal(&p.name))
                .copied()
                .unwrap_or(outdated[0])
        });
    steps.push(Step::StartDrain(next.name.clone()));
    steps
}

fn ordinal(pod: &str) -> i64 {
    pod.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::{DrainRequest, NodeRegistration};

    fn pod(name: &str, pool: &str, rev: &str) -> PodState {
        PodState {
            name: name.into(),
            pool: pool.into(),
            revision: Some(rev.into()),
            ready: true,
            deleting: false,
        }
    }

    fn revs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn view(nodes: &[(&str, u64, i64)], drains: &[(&str, i64, i64)]) -> EtcdView {
        let mut v = EtcdView::default();
        for (id, connections, created) in nodes {
            v.nodes.insert(
                id.to_string(),
                NodeRegistration {
                    node_id: id.to_string(),
                    connections: *connections,
                    ..Default::default()
                },
            );
            v.node_created.insert(id.to_string(), *created);
        }
        for (id, deadline, created) in drains {
            v.drains.insert(
                id.to_string(),
                DrainRequest {
                    requested_at: 0,
                    deadline: *deadline,
                    purpose: DrainPurpose::Replace,
                },
            );
            v.drain_created.insert(id.to_string(), *created);
        }
        v
    }

    #[test]
    fn one_pod_at_a_time_each_drained_before_it_is_deleted() {
        let r = revs(&[("demo", "new")]);
        let pods = vec![pod("demo-0", "demo", "old"), pod("demo-1", "demo", "old")];
        let v = view(&[("demo-0", 5, 1), ("demo-1", 5, 1)], &[]);
        assert_eq!(plan(&pods, &r, &v, 0), [Step::StartDrain("demo-1".into())]);
        let v = view(&[("demo-0", 5, 1), ("demo-1", 5, 1)], &[("demo-1", 100, 2)]);
        assert_eq!(plan(&pods, &r, &v, 0), [Step::Draining("demo-1".into(), 5)]);
        let v = view(&[("demo-0", 5, 1), ("demo-1", 0, 1)], &[("demo-1", 100, 2)]);
        assert_eq!(
            plan(&pods, &r, &v, 0),
            [Step::Replace("demo-1".into(), false)]
        );
        let v2 = view(&[("demo-0", 5, 1), ("demo-1", 5, 1)], &[("demo-1", 100, 2)]);
        assert_eq!(
            plan(&pods, &r, &v2, 100),
            [Step::Replace("demo-1".into(), true)],
            "the drain timed out"
        );
        // Replaced: up to date but not registered again yet, then registered.
        let pods = vec![pod("demo-0", "demo", "old"), pod("demo-1", "demo", "new")];
        assert_eq!(plan(&pods, &r, &v, 0), [Step::Waiting("demo-1".into())]);
        let v = view(&[("demo-0", 5, 1), ("demo-1", 0, 3)], &[("demo-1", 100, 2)]);
        assert_eq!(
            plan(&pods, &r, &v, 0),
            [
                Step::Finish("demo-1".into()),
                Step::StartDrain("demo-0".into())
            ]
        );
        let mut unready = pods.clone();
        unready[1].ready = false;
        let v = view(&[("demo-0", 5, 1), ("demo-1", 0, 3)], &[]);
        assert_eq!(
            plan(&unready, &r, &v, 0),
            [Step::Waiting("demo-1".into())],
            "the next waits for the replacement to be ready"
        );
        let done = vec![pod("demo-0", "demo", "new"), pod("demo-1", "demo", "new")];
        assert_eq!(plan(&done, &r, &v, 0), [Step::Idle]);
    }

    #[test]
    fn zones_take_turns_and_pods_that_serve_nobody_go_first() {
        let r = revs(&[("demo-a", "a2"), ("demo-b", "b2")]);
        let mut pods = vec![
            pod("demo-a-0", "demo-a", "a1"),
            pod("demo-a-1", "demo-a", "a1"),
            pod("demo-b-0", "demo-b", "b1"),
        ];
        let v = EtcdView::default();
        assert_eq!(
            plan(&pods, &r, &v, 0),
            [Step::StartDrain("demo-a-1".into())]
        );
        pods[1].revision = Some("a2".into());
        assert_eq!(
            plan(&pods, &r, &v, 0),
            [Step::StartDrain("demo-a-0".into())],
            "a tie goes to the first zone by name"
        );
        pods.push(pod("demo-b-1", "demo-b", "b1"));
        assert_eq!(
            plan(&pods, &r, &v, 0),
            [Step::StartDrain("demo-b-1".into())]
        );
        pods[0].ready = false;
        assert_eq!(
            plan(&pods, &r, &v, 0),
            [Step::StartDrain("demo-a-0".into())]
        );
    }
}
