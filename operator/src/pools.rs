//! Node pools: the StatefulSets of a ChatCluster.
//!
//! Without `spec.zones` there is one pool, the StatefulSet `<name>` in the default region,
//! exactly as before zones existed. With zones there is one pool per zone: the StatefulSet
//! `<name>-<zone>`, its pods labelled `parley.dev/zone: <zone>` and started with `--zone`
//! and `--region`, its own PodDisruptionBudget, its own scheduling.
//!
//! A pool's size comes from, in order: a pause (`spec.replicas: 0` empties every pool), the
//! autoscaler (when `spec.autoscaling` is set), the zone's `replicas`, `spec.replicas`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};

use crate::crd::ChatCluster;

/// Label of a zoned pool's pods (and part of its selector).
pub const ZONE_LABEL: &str = "parley.dev/zone";

/// One StatefulSet of chat nodes, as the spec describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// Name of the StatefulSet and its PodDisruptionBudget; pods are `<name>-<ordinal>`.
    pub name: String,
    /// The zone (zoned pools only).
    pub zone: Option<String>,
    /// The nodes' `--region` (zoned pools only; otherwise the nodes' default).
    pub region: Option<String>,
    /// The size the spec gives, before pause and autoscaling.
    pub spec_replicas: i32,
    /// Scheduling of this pool's pods.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity of this pool's pods.
    pub affinity: Option<Affinity>,
    /// Tolerations of this pool's pods.
    pub tolerations: Option<Vec<Toleration>>,
}

/// The pools the spec asks for, in spec order.
pub fn pools(cc: &ChatCluster) -> Vec<Pool> {
    let spec = &cc.spec;
    match &spec.zones {
        None => vec![Pool {
            name: cc.name_or_empty(),
            zone: None,
            region: None,
            spec_replicas: spec.replicas,
            node_selector: spec.node_selector.clone(),
            affinity: spec.affinity.clone(),
            tolerations: spec.tolerations.clone(),
        }],
        Some(zones) => zones
            .iter()
            .map(|z| Pool {
                name: format!("{}-{}", cc.name_or_empty(), z.name),
                zone: Some(z.name.clone()),
                region: Some(z.region.clone()),
                spec_replicas: z.replicas,
                node_selector: z
                    .node_selector
                    .clone()
                    .or_else(|| spec.node_selector.clone()),
                affinity: z.affinity.clone().or_else(|| spec.affinity.clone()),
                tolerations: z.tolerations.clone().or_else(|| spec.tolerations.clone()),
            })
            .collect(),
    }
}

/// Whether the cluster is paused (`spec.replicas: 0`).
pub fn paused(cc: &ChatCluster) -> bool {
    cc.spec.replicas == 0
}

impl Pool {
    /// Pod name (and so node id) of an ordinal.
    pub fn pod_name(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// The ordinal of `node_id` if it is one of this pool's pods (`<name>-<digits>`).
    pub fn ordinal_of(&self, node_id: &str) -> Option<i32> {
        node_id
            .strip_prefix(&self.name)
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
    }

    /// The size a pool starts at, with no autoscaler state: 0 when paused; with
    /// autoscaling, the spec's size clamped to `[minReplicas, maxReplicas]`; else the spec's.
    pub fn initial_replicas(&self, cc: &ChatCluster) -> i32 {
        if paused(cc) {
            return 0;
        }
        match &cc.spec.autoscaling {
            Some(a) => self
                .spec_replicas
                .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
            None => self.spec_replicas,
        }
    }

    /// The labels that select this pool's pods: the cluster's, plus the zone for a zoned
    /// pool (a StatefulSet selector is immutable, so the unzoned pool keeps the cluster's).
    pub fn selector_labels(&self, cc: &ChatCluster) -> BTreeMap<String, String> {
        let mut labels = crate::resources::selector_labels(cc);
        if let Some(zone) = &self.zone {
            labels.insert(ZONE_LABEL.into(), zone.clone());
        }
        labels
    }

    /// What the pool is called in events and status: its zone, else the cluster.
    pub fn label(&self) -> String {
        match &self.zone {
            Some(z) => format!("zone {z}"),
            None => "the cluster".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pool_without_zones_and_one_per_zone_with_them() {
        let cc = ChatCluster::test().replicas(4);
        let p = pools(&cc);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].name.as_str(), p[0].spec_replicas), ("demo", 4));
        assert_eq!(p[0].pod_name(2), "demo-2");
        let zoned = ChatCluster::test().zone("a", "eu", 2).zone("b", "us", 3);
        let p = pools(&zoned);
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["demo-a", "demo-b"]);
        assert_eq!(p[1].region.as_deref(), Some("us"));
        assert_eq!(p[1].selector_labels(&zoned)[ZONE_LABEL], "b");
        assert_eq!(p[0].ordinal_of("demo-a-7"), Some(7));
        assert_eq!(p[0].ordinal_of("demo-ab-7"), None);
        assert_eq!(p[0].ordinal_of("demo-a-"), None);
        assert_eq!(
            pools(&cc)[0].ordinal_of("demo-a-0"),
            None,
            "a zone's pod is not the unzoned pool's"
        );
    }

    #[test]
    fn pause_and_autoscaling_set_the_starting_size() {
        let cc = ChatCluster::test().replicas(0);
        assert_eq!(pools(&cc)[0].initial_replicas(&cc), 0);
        let cc = ChatCluster::test().replicas(20).autoscaling(2, 8, 1000, 60);
        assert_eq!(pools(&cc)[0].initial_replicas(&cc), 8);
        let cc = ChatCluster::test().replicas(1).autoscaling(2, 8, 1000, 60);
        assert_eq!(pools(&cc)[0].initial_replicas(&cc), 2);
    }
}
