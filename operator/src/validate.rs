//! Step 1 of the pipeline: what the schema cannot refuse at admission.
//!
//! The CRD schema already enforces minimums, enums and CEL rules; this repeats the ones
//! `render` needs (it has no API server) and adds what schema rules cannot say well, such as
//! the lengths of the names derived from the ChatCluster's name.

use crate::crd::{ChatCluster, StorageBackend};

/// Longest ChatCluster name: `<name>-headless` must be a DNS label (63 characters), and pod
/// names `<name>-<ordinal>` must leave room for the ordinal.
pub const MAX_NAME_LEN: usize = 63 - "-headless".len();

/// A spec the operator cannot act on. The message lists every problem and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ChatCluster spec: {}", .problems.join("; "))]
pub struct InvalidSpec {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Checks a ChatCluster, returning every problem at once (not only the first).
pub fn validate(cc: &ChatCluster) -> Result<(), InvalidSpec> {
    let mut problems = Vec::new();
    let name = cc.name_or_empty();
    if name.is_empty() {
        problems.push("metadata.name is missing".to_string());
    } else if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name {name:?} is {} characters; at most {MAX_NAME_LEN} fit the derived Service and pod names",
            name.len()
        ));
    }
    let spec = &cc.spec;
    if spec.replicas < 0 {
        problems.push(format!(
            "spec.replicas is {}; it must be at least 0 (0 pauses the cluster)",
            spec.replicas
        ));
    }
    if spec.image.trim().is_empty() {
        problems.push("spec.image is empty; give the chat node image, e.g. registry.example.com/parley/chat-node:0.1.0".into());
    }
    if spec.etcd.endpoints.is_empty() {
        problems.push("spec.etcd.endpoints is empty; the nodes need etcd for membership".into());
    }
    for ep in &spec.etcd.endpoints {
        if !is_url(ep) {
            problems.push(format!(
                "spec.etcd.endpoints entry {ep:?} is not an http:// or https:// URL"
            ));
        }
    }
    match spec.storage.backend {
        StorageBackend::Embedded if spec.replicas > 1 => problems.push(format!(
            "spec.storage.backend embedded keeps history on one pod's disk, so spec.replicas must be 1 (it is {}; 0 pauses); use tikv or etcd for more nodes",
            spec.replicas
        )),
        StorageBackend::Embedded if spec.zones.is_some() || spec.autoscaling.is_some() => {
            problems.push("spec.storage.backend embedded runs one node: spec.zones and spec.autoscaling need tikv or etcd".into())
        }
        StorageBackend::Tikv => match &spec.storage.tikv {
            Some(t) if !t.pd_endpoints.is_empty() => {
                for ep in &t.pd_endpoints {
                    if !is_url(ep) {
                        problems.push(format!("spec.storage.tikv.pdEndpoints entry {ep:?} is not an http:// or https:// URL"));
                    }
                }
            }
            _ => problems.push("spec.storage.backend tikv needs spec.storage.tikv.pdEndpoints".into()),
        },
        _ => {}
    }
    if !(1..=65535).contains(&spec.service.port) {
        problems.push(format!(
            "spec.service.port {} is not a port (1-65535)",
            spec.service.port
        ));
    }
    let l = &spec.limits;
    // The chat node's own ranges (chat-node's `Config::validate`): a value it refuses would
    // crash-loop every pod, so it is refused here (and by the schema) first.
    for (field, value, min, max) in [
        ("maxGroupMembers", l.max_group_members, 2, 10_000),
        ("maxMessageChars", l.max_message_chars, 1, 10_000_000),
        (
            "heartbeatTimeoutSeconds",
            l.heartbeat_timeout_seconds,
            1,
            3_600,
        ),
        ("connectionsPerNode", l.connections_per_node, 1, 1_000_000),
    ] {
        if !(min..=max).contains(&value) {
            problems.push(format!(
                "spec.limits.{field} is {value}; it must be between {min} and {max}"
            ));
        }
    }
    if let Some(push) = &spec.push {
        match (&push.webhook_url, &push.secret_ref) {
            (Some(url), _) if !is_url(url) => problems.push(format!(
                "spec.push.webhookUrl {url:?} is not an http:// or https:// URL"
            )),
            (Some(_), None) => problems.push(
                "spec.push.webhookUrl needs spec.push.secretRef (the HMAC key that signs pushes)"
                    .into(),
            ),
            _ => {}
        }
    }
    if !(0..=3600).contains(&spec.drain.timeout_seconds) {
        problems.push(format!(
            "spec.drain.timeoutSeconds {} must be between 0 and 3600",
            spec.drain.timeout_seconds
        ));
    }
    zones(cc, &mut problems);
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < 1 || a.max_replicas < 1 {
            problems.push("spec.autoscaling.minReplicas and maxReplicas must be at least 1 (pause with spec.replicas: 0)".into());
        }
        if a.min_replicas > a.max_replicas {
            problems.push(format!(
                "spec.autoscaling.minReplicas {} is above maxReplicas {}",
                a.min_replicas, a.max_replicas
            ));
        }
        if a.target_connections_per_node < 1 {
            problems.push("spec.autoscaling.targetConnectionsPerNode must be at least 1".into());
        }
        if a.scale_down_stabilization_seconds < 0 {
            problems
                .push("spec.autoscaling.scaleDownStabilizationSeconds must not be negative".into());
        }
    }
    if spec.pod_disruption_budget.max_unavailable < 0 {
        problems.push("spec.podDisruptionBudget.maxUnavailable must not be negative".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec { problems })
    }
}

/// Longest StatefulSet name: its pods get a `controller-revision-hash` label of
/// `<statefulset>-<10 characters>`, and labels are at most 63 characters.
pub const MAX_STATEFULSET_NAME_LEN: usize = 52;

fn zones(cc: &ChatCluster, problems: &mut Vec<String>) {
    let Some(zones) = &cc.spec.zones else { return };
    if zones.is_empty() {
        problems.push("spec.zones is empty; list at least one zone, or leave it out".into());
    }
    let name = cc.name_or_empty();
    let mut seen = std::collections::BTreeSet::new();
    for z in zones {
        if !seen.insert(z.name.as_str()) {
            problems.push(format!("spec.zones has the zone {:?} twice", z.name));
        }
        if !parley_cluster_contract::is_valid_name(&z.name) {
            problems.push(format!(
                "spec.zones name {:?} is not a DNS label (a-z, 0-9 and '-', starting and ending with a letter or digit)",
                z.name
            ));
        }
        if !parley_cluster_contract::is_valid_name(&z.region) {
            problems.push(format!(
                "spec.zones {:?} region {:?} is not a DNS label (a-z, 0-9 and '-', starting and ending with a letter or digit)",
                z.name, z.region
            ));
        }
        let sts = name.len() + 1 + z.name.len();
        if sts > MAX_STATEFULSET_NAME_LEN {
            problems.push(format!(
                "the zone {:?} makes the StatefulSet name {name}-{} {sts} characters long; at most {MAX_STATEFULSET_NAME_LEN} fit: shorten the zone or the ChatCluster name",
                z.name, z.name
            ));
        }
        if z.replicas < 0 {
            problems.push(format!(
                "spec.zones {:?} replicas must not be negative",
                z.name
            ));
        }
    }
}

fn is_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_fixture_and_its_variants_are_valid() {
        assert_eq!(validate(&ChatCluster::test()), Ok(()));
        assert_eq!(
            validate(&ChatCluster::test().tikv(&["http://pd:2379"])),
            Ok(())
        );
        assert_eq!(
            validate(&ChatCluster::test().replicas(1).embedded("1Gi", None)),
            Ok(())
        );
        assert_eq!(
            validate(&ChatCluster::test().replicas(0)),
            Ok(()),
            "0 pauses"
        );
        assert_eq!(
            validate(
                &ChatCluster::test()
                    .zone("a", "eu", 2)
                    .zone("b", "us", 0)
                    .autoscaling(1, 10, 8000, 300)
            ),
            Ok(())
        );
    }

    #[test]
    fn zones_and_autoscaling_are_checked() {
        let cc = ChatCluster::test()
            .zone("a", "eu", 1)
            .zone("a", "Eu West", 1)
            .zone(&"z".repeat(50), "eu", 1)
            .autoscaling(5, 2, 8000, 300);
        let all = validate(&cc)
            .err()
            .map(|e| e.problems.join("\n"))
            .unwrap_or_default();
        for expected in [
            "the zone \"a\" twice",
            "region \"Eu West\" is not a DNS label",
            "at most 52 fit",
            "minReplicas 5 is above maxReplicas 2",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let embedded = ChatCluster::test()
            .replicas(1)
            .embedded("1Gi", None)
            .zone("a", "eu", 1);
        assert!(validate(&embedded).is_err_and(|e| e.to_string().contains("need tikv or etcd")));
    }

    #[test]
    fn validate_lists_every_problem_with_what_to_fix() {
        let mut cc = ChatCluster::test()
            .replicas(3)
            .embedded("1Gi", None)
            .etcd(&["etcd:2379"]);
        cc.spec.image = " ".into();
        cc.spec.limits.max_group_members = 1;
        cc.spec.push = Some(crate::crd::PushSpec {
            webhook_url: Some("https://push".into()),
            secret_ref: None,
        });
        cc.metadata.name = Some("x".repeat(60));
        let problems = validate(&cc).err().map(|e| e.problems).unwrap_or_default();
        let all = problems.join("\n");
        for expected in [
            "at most 54 fit",
            "spec.image is empty",
            "\"etcd:2379\" is not an http:// or https:// URL",
            "replicas must be 1 (it is 3; 0 pauses)",
            "spec.limits.maxGroupMembers is 1; it must be between 2 and 10000",
            "webhookUrl needs spec.push.secretRef",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 6, "{all}");
        let mut big = ChatCluster::test();
        big.spec.limits.max_group_members = 10_001;
        assert!(
            validate(&big).is_err_and(|e| e.to_string().contains("between 2 and 10000")),
            "a group size the chat node refuses is refused here"
        );
        let tikv = ChatCluster::test().tikv(&[]);
        assert!(validate(&tikv).is_err_and(|e| {
            e.to_string()
                .contains("needs spec.storage.tikv.pdEndpoints")
        }));
    }
}
