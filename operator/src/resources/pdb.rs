//! The PodDisruptionBudget of the chat pods.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{base_name, child_meta, selector_labels};
use crate::crd::ChatCluster;

/// `<name>`: at most `spec.podDisruptionBudget.maxUnavailable` chat pods may be evicted at
/// once, so a node drain of the Kubernetes kind moves clients a few nodes at a time.
pub fn pdb(cc: &ChatCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(cc, base_name(cc)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                cc.spec.pod_disruption_budget.max_unavailable,
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cc)),
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

    #[test]
    fn pdb_limits_unavailable_pods_and_selects_the_chat_pods() {
        let mut cc = ChatCluster::test();
        cc.spec.pod_disruption_budget.max_unavailable = 2;
        let pdb = pdb(&cc);
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
}
