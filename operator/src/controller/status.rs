//! Step 4: the status the operator writes: counts, selector, and the `Ready`, `Progressing`
//! and `Degraded` conditions, each with a reason and a message that say what is happening.
//!
//! Pure: observations in, status out. A condition keeps its `lastTransitionTime` while its
//! status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{AutoscalingStatus, ChatCluster, ChatClusterStatus, ZoneStatus};
use crate::resources::selector_string;

/// Where a scale-down stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainState {
    /// No scale-down in progress.
    None,
    /// Waiting for leaving nodes: (node id, connections left), and the scale it is heading to.
    Waiting {
        /// The pool (`zone a`, `the cluster`).
        pool: String,
        from: i32,
        to: i32,
        waiting: Vec<(String, u64)>,
    },
    /// A scale-down cannot start because etcd cannot be read.
    Blocked { pool: String, from: i32, to: i32 },
}

/// What the reconcile saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Pods of the StatefulSets (their `status.replicas`).
    pub replicas: i32,
    /// Ready pods.
    pub ready_replicas: i32,
    /// Pods at the current template revision.
    pub updated_replicas: i32,
    /// The sizes the operator is heading to, summed over the pools.
    pub desired: i32,
    /// Registered nodes and their connections (`None`: etcd could not be read, with why).
    pub etcd: Result<(i32, i64), String>,
    /// Referenced Secrets (or keys in them) that do not exist, described for the user.
    pub missing_secrets: Vec<String>,
    /// The scale-down, if any (the first pool that drains).
    pub drain: DrainState,
    /// The rolling upgrade, if one is under way: what it is doing.
    pub rollout: Option<String>,
    /// `spec.replicas` is 0.
    pub paused: bool,
    /// Per zone, when the spec has zones.
    pub zones: Vec<ZoneStatus>,
    /// The autoscaler's state, when the spec has autoscaling.
    pub autoscaling: Option<AutoscalingStatus>,
}

impl Observed {
    /// What a reconcile with nothing going on sees: `n` pods, all ready and up to date.
    pub fn settled(n: i32) -> Self {
        Self {
            replicas: n,
            ready_replicas: n,
            updated_replicas: n,
            desired: n,
            etcd: Ok((n, 0)),
            missing_secrets: Vec::new(),
            drain: DrainState::None,
            rollout: None,
            paused: false,
            zones: Vec::new(),
            autoscaling: None,
        }
    }
}

/// The status for a valid spec.
pub fn status(cc: &ChatCluster, seen: &Observed, now: Timestamp) -> ChatClusterStatus {
    let old = cc.status.clone().unwrap_or_default();
    let desired = seen.desired;
    let generation = cc.metadata.generation;
    let (members, connections) = match &seen.etcd {
        Ok(v) => *v,
        Err(_) => (old.members, old.connections),
    };
    let mut conditions = old.conditions.clone();
    let degraded = match &seen.etcd {
        Err(e) => (
            "True",
            "EtcdUnavailable",
            format!("cannot read membership from etcd: {e}"),
        ),
        Ok(_) if !seen.missing_secrets.is_empty() => (
            "True",
            "SecretMissing",
            format!(
                "{}: pods cannot start until it exists",
                seen.missing_secrets.join("; ")
            ),
        ),
        Ok(_) => (
            "False",
            "AsExpected",
            "spec is valid and etcd is reachable".to_string(),
        ),
    };
    set(&mut conditions, "Degraded", degraded, generation, now);
    let pool_prefix = |pool: &str| {
        if pool.starts_with("zone ") {
            format!("{pool}: ")
        } else {
            String::new()
        }
    };
    let progressing = match &seen.drain {
        DrainState::Waiting {
            pool,
            from,
            to,
            waiting,
        } => (
            "True",
            "Draining",
            format!(
                "{}scaling {from} → {to}: waiting for {} to move their clients ({})",
                pool_prefix(pool),
                waiting
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                waiting
                    .iter()
                    .map(|(id, c)| format!("{id}: {c} connections"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        DrainState::Blocked { pool, from, to } => (
            "True",
            "DrainBlocked",
            format!(
                "{}scaling {from} → {to} waits: the leaving nodes cannot be drained while etcd is unreachable",
                pool_prefix(pool)
            ),
        ),
        DrainState::None if seen.paused && seen.replicas == 0 => (
            "False",
            "Paused",
            "spec.replicas is 0: every node drained and stopped; history is kept, scale up to resume".to_string(),
        ),
        DrainState::None if seen.replicas < desired => (
            "True",
            "ScalingUp",
            format!("{} of {desired} pods exist", seen.replicas),
        ),
        DrainState::None if seen.rollout.is_some() => (
            "True",
            "RollingOut",
            format!(
                "replacing outdated pods one at a time, each drained first: {} ({} of {} up to date)",
                seen.rollout.clone().unwrap_or_default(),
                seen.updated_replicas,
                seen.replicas
            ),
        ),
        DrainState::None
            if seen.updated_replicas < seen.replicas || seen.ready_replicas < desired =>
        {
            (
                "True",
                "RollingOut",
                format!(
                    "{} of {desired} pods ready, {} updated",
                    seen.ready_replicas, seen.updated_replicas
                ),
            )
        }
        DrainState::None => (
            "False",
            "Stable",
            format!("{desired} pods ready and up to date"),
        ),
    };
    set(&mut conditions, "Progressing", progressing, generation, now);
    let ready = if seen.paused {
        (
            "False",
            "Paused",
            "spec.replicas is 0: the cluster is paused (history kept); scale up to resume"
                .to_string(),
        )
    } else if seen.ready_replicas >= desired && seen.etcd.is_ok() {
        (
            "True",
            "AllNodesReady",
            format!(
                "{} of {desired} nodes ready, {members} registered in etcd",
                seen.ready_replicas
            ),
        )
    } else {
        (
            "False",
            "NodesNotReady",
            format!(
                "{} of {desired} nodes ready, {members} registered in etcd",
                seen.ready_replicas
            ),
        )
    };
    set(&mut conditions, "Ready", ready, generation, now);
    ChatClusterStatus {
        replicas: seen.replicas,
        ready_replicas: seen.ready_replicas,
        members,
        connections,
        selector: selector_string(cc),
        observed_generation: generation,
        conditions,
        zones: seen.zones.clone(),
        autoscaling: seen.autoscaling.clone(),
    }
}

/// The status for an invalid spec: `Degraded` with reason `InvalidSpec`, counts kept.
pub fn invalid_status(cc: &ChatCluster, message: &str, now: Timestamp) -> ChatClusterStatus {
    let old = cc.status.clone().unwrap_or_default();
    let generation = cc.metadata.generation;
    let mut conditions = old.conditions.clone();
    set(
        &mut conditions,
        "Degraded",
        ("True", "InvalidSpec", message.to_string()),
        generation,
        now,
    );
    set(
        &mut conditions,
        "Ready",
        (
            "False",
            "InvalidSpec",
            "the spec is invalid; see Degraded".into(),
        ),
        generation,
        now,
    );
    set(
        &mut conditions,
        "Progressing",
        (
            "False",
            "InvalidSpec",
            "nothing is applied until the spec is fixed".into(),
        ),
        generation,
        now,
    );
    ChatClusterStatus {
        selector: selector_string(cc),
        observed_generation: generation,
        conditions,
        ..old
    }
}

/// Sets a condition, keeping `lastTransitionTime` when its status is unchanged.
fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: Option<i64>,
    now: Timestamp,
) {
    let existing = conditions.iter().position(|c| c.type_ == type_);
    let transition = match existing {
        Some(i) if conditions[i].status == status => conditions[i].last_transition_time.clone(),
        _ => Time(now),
    };
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    };
    match existing {
        Some(i) => conditions[i] = c,
        None => conditions.push(c),
    }
}

/// The condition of a type, if set.
pub fn condition<'a>(status: &'a ChatClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ready: i32) -> Observed {
        Observed {
            ready_replicas: ready,
            desired: 3,
            etcd: Ok((ready, 42)),
            ..Observed::settled(3)
        }
    }

    #[test]
    fn status_is_ready_when_every_node_is_and_keeps_transition_times() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(100).unwrap_or(t0);
        let mut cc = ChatCluster::test();
        let s = status(&cc, &seen(3), t0);
        assert_eq!(
            (s.replicas, s.ready_replicas, s.members, s.connections),
            (3, 3, 3, 42)
        );
        assert_eq!(
            s.selector,
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=parley"
        );
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(
            condition(&s, "Ready").map(|c| c.status.as_str()),
            Some("True")
        );
        assert_eq!(
            condition(&s, "Progressing").map(|c| c.reason.as_str()),
            Some("Stable")
        );
        assert_eq!(
            condition(&s, "Degraded").map(|c| c.status.as_str()),
            Some("False")
        );
        cc.status = Some(s);
        let again = status(&cc, &seen(3), t1);
        assert_eq!(
            condition(&again, "Ready").map(|c| c.last_transition_time.0),
            Some(t0),
            "unchanged status keeps its time"
        );
        let down = status(&cc, &seen(2), t1);
        let ready = condition(&down, "Ready")
            .cloned()
            .unwrap_or_else(|| panic!("Ready missing"));
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.last_transition_time.0
            ),
            ("False", "NodesNotReady", t1)
        );
        assert_eq!(
            condition(&down, "Progressing").map(|c| c.reason.as_str()),
            Some("RollingOut")
        );
    }

    #[test]
    fn status_reports_draining_and_unreachable_etcd() {
        let cc = ChatCluster::test().replicas(2);
        let mut s = seen(3);
        s.desired = 2;
        s.drain = DrainState::Waiting {
            pool: "the cluster".into(),
            from: 3,
            to: 2,
            waiting: vec![("demo-2".into(), 5)],
        };
        let st = status(&cc, &s, Timestamp::UNIX_EPOCH);
        let p = condition(&st, "Progressing")
            .cloned()
            .unwrap_or_else(|| panic!("Progressing missing"));
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "Draining"));
        assert!(p.message.contains("demo-2: 5 connections"), "{}", p.message);
        s.etcd = Err("connection refused".into());
        let st = status(&cc, &s, Timestamp::UNIX_EPOCH);
        let d = condition(&st, "Degraded")
            .cloned()
            .unwrap_or_else(|| panic!("Degraded missing"));
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "EtcdUnavailable")
        );
        assert!(d.message.contains("connection refused"));
    }

    #[test]
    fn a_paused_cluster_says_so_and_zones_are_reported() {
        let cc = ChatCluster::test().replicas(0);
        let mut s = Observed::settled(0);
        s.paused = true;
        s.zones = vec![ZoneStatus {
            name: "a".into(),
            region: "eu".into(),
            ..ZoneStatus::default()
        }];
        let st = status(&cc, &s, Timestamp::UNIX_EPOCH);
        for type_ in ["Ready", "Progressing"] {
            let c = condition(&st, type_)
                .cloned()
                .unwrap_or_else(|| panic!("{type_} missing"));
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Paused"));
        }
        assert_eq!(st.zones.len(), 1);
    }
}
