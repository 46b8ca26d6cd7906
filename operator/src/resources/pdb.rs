//! The PodDisruptionBudget of the chat pods.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::child_meta;
use crate::crd::ChatCluster;
use crate::pools::Pool;

/// One per pool, named like its StatefulSet: at most `spec.podDisruptionBudget.maxUnavailable`
/// of the pool's pods may be evicted at once, so a node drain of the Kubernetes kind moves
/// clients a few nodes at a time, and per zone (two overlapping budgets would block
/// evictions altogether).
pub fn pdb(cc: &ChatCluster, pool: &Pool) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(cc, pool.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                cc.spec.pod_disruption_budget.max_unavailable,
            )),
            selector: Some(LabelSelector {
                match_labels: Some(pool.selector_labels(cc)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::pools;
    use crate::resources::selector_labels;

    #[test]
    fn pdb_limits_unavailable_pods_and_selects_the_chat_pods() {
        let mut cc = ChatCluster::test();
        cc.spec.pod_disruption_budget.max_unavailable = 2;
        let pdb = pdb(&cc, &pools(&cc)[0]);
        assert_eq!(pdb.metadata.name.as_deref(), Some("demo"));
        assert_eq!(pdb.metadata.namespace.as_deref(), Some("chat"));
        let owner = pdb.metadata.owner_references.unwrap_or_default();
        assert_eq!(owner.len(), 1);
        assert_eq!(owner[0].kind, "ChatCluster");
        assert_eq!(owner[0].controller, Some(true));
        let spec = pdb.spec.unwrap_or_default();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(2)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(selector_labels(&cc))
        );
    }

    #[test]
    fn each_zone_has_its_own_budget_over_its_own_pods() {
        let cc = ChatCluster::test().zone("a", "eu", 2).zone("b", "eu", 2);
        let budgets: Vec<_> = pools(&cc).iter().map(|p| pdb(&cc, p)).collect();
        let names: Vec<_> = budgets
            .iter()
            .map(|b| b.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["demo-a", "demo-b"]);
        let zone_of = |b: &PodDisruptionBudget| {
            b.spec
                .clone()
                .and_then(|s| s.selector)
                .and_then(|s| s.match_labels)
                .and_then(|l| l.get(crate::pools::ZONE_LABEL).cloned())
        };
        assert_eq!(zone_of(&budgets[0]).as_deref(), Some("a"));
        assert_eq!(zone_of(&budgets[1]).as_deref(), Some("b"));
    }
}
