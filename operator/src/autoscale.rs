//! The autoscaler's decision, pure: live connections in, a pool size out.
//!
//! `recommendation = clamp(ceil(connections / targetConnectionsPerNode), min, max)`.
//! Up at once: a recommendation above the current size is applied by this reconcile (the
//! StatefulSet grows, new nodes take users as they register). Down slowly: a recommendation
//! below the current size starts a window of `scaleDownStabilizationSeconds`; the pool
//! shrinks only when the window is over, to the highest recommendation seen in it, and a
//! recommendation at or above the current size in between ends the window. A shrink then
//! drains the leaving nodes before their pods go (as any scale-down).
//!
//! The state (current size, window start, highest recommendation) lives in
//! `status.autoscaling`, so the decision survives an operator restart.

use crate::crd::{AutoscalingSpec, PoolScaling};

/// A change of a pool's size, for events and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub from: i32,
    pub to: i32,
    pub connections: i64,
    pub target: i64,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scaling {}→{}: {} connections, target {} per node",
            self.from,
            self.to,
            thousands(self.connections),
            thousands(self.target)
        )
    }
}

/// `31200` → `31,200`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The size `connections` call for.
pub fn recommend(connections: i64, spec: &AutoscalingSpec) -> i32 {
    let target = spec.target_connections_per_node.max(1);
    let connections = connections.max(0);
    let nodes = connections / target + i64::from(connections % target != 0);
    let nodes = i32::try_from(nodes).unwrap_or(i32::MAX);
    nodes.clamp(spec.min_replicas, spec.max_replicas.max(spec.min_replicas))
}

/// One pool's next state: its size, its autoscaling state, and the decision if it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub desired: i32,
    pub state: PoolScaling,
    pub decision: Option<Decision>,
}

/// Decides a pool's size from its live `connections` (`None`: etcd could not be read, so
/// nothing changes). `state` is the pool's last state (`None`: the autoscaler never ran
/// for it; it starts from `start`). `now_ms` is milliseconds since the epoch.
pub fn decide(
    stateful_set: &str,
    state: Option<&PoolScaling>,
    start: i32,
    connections: Option<i64>,
    spec: &AutoscalingSpec,
    now_ms: i64,
) -> Step {
    let current = state.map_or(start, |s| s.desired_replicas);
    let keep = |s: Option<&PoolScaling>| Step {
        desired: current,
        state: s.cloned().unwrap_or_else(|| PoolScaling {
            stateful_set: stateful_set.to_owned(),
            desired_replicas: current,
            low_since: None,
            low_recommendation: None,
        }),
        decision: None,
    };
    let Some(connections) = connections else {
        return keep(state);
    };
    let rec = recommend(connections, spec);
    let fresh = |desired: i32, low_since, low_recommendation| PoolScaling {
        stateful_set: stateful_set.to_owned(),
        desired_replicas: desired,
        low_since,
        low_recommendation,
    };
    let decision = |to: i32| Decision {
        from: current,
        to,
        connections,
        target: spec.target_connections_per_node,
    };
    if rec > current {
        return Step {
            desired: rec,
            state: fresh(rec, None, None),
            decision: Some(decision(rec)),
        };
    }
    if rec == current {
        return Step {
            desired: current,
            state: fresh(current, None, None),
            decision: None,
        };
    }
    // Lower: wait out the window, remembering the highest recommendation in it.
    let since = state.and_then(|s| s.low_since).unwrap_or(now_ms);
    let highest = state
        .and_then(|s| s.low_recommendation)
        .map_or(rec, |h| h.max(rec));
    if now_ms - since >= spec.scale_down_stabilization_seconds * 1000 {
        return Step {
            desired: highest,
            state: fresh(highest, None, None),
            decision: Some(decision(highest)),
        };
    }
    Step {
        desired: current,
        state: fresh(current, Some(since), Some(highest)),
        decision: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 10,
            target_connections_per_node: 8_000,
            scale_down_stabilization_seconds: 300,
        }
    }

    #[test]
    fn recommendations_are_the_ceiling_within_bounds() {
        assert_eq!(recommend(0, &spec()), 2, "never below minReplicas");
        assert_eq!(recommend(16_000, &spec()), 2);
        assert_eq!(recommend(16_001, &spec()), 3);
        assert_eq!(recommend(31_200, &spec()), 4);
        assert_eq!(
            recommend(10_000_000, &spec()),
            10,
            "never above maxReplicas"
        );
        assert_eq!(thousands(31_200), "31,200");
        assert_eq!(thousands(8_000), "8,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn autoscaling_scales_up_at_once() {
        let step = decide("demo", None, 3, Some(31_200), &spec(), 0);
        assert_eq!(step.desired, 4);
        assert_eq!(
            step.decision.map(|d| d.to_string()).as_deref(),
            Some("scaling 3→4: 31,200 connections, target 8,000 per node")
        );
        let step = decide("demo", Some(&step.state), 3, Some(70_000), &spec(), 1_000);
        assert_eq!((step.desired, step.state.low_since), (9, None));
    }

    #[test]
    fn autoscaling_scales_down_only_after_the_stabilization_window() {
        let at5 = PoolScaling {
            stateful_set: "demo".into(),
            desired_replicas: 5,
            low_since: None,
            low_recommendation: None,
        };
        // Load falls: the window starts, the size holds.
        let s1 = decide("demo", Some(&at5), 3, Some(9_000), &spec(), 1_000_000);
        assert_eq!((s1.desired, s1.decision.clone()), (5, None));
        assert_eq!(s1.state.low_since, Some(1_000_000));
        // A brief rise inside the window raises what it will shrink to.
        let s2 = decide("demo", Some(&s1.state), 3, Some(20_000), &spec(), 1_100_000);
        assert_eq!((s2.desired, s2.state.low_recommendation), (5, Some(3)));
        let s3 = decide("demo", Some(&s2.state), 3, Some(9_000), &spec(), 1_299_999);
        assert_eq!(
            (s3.desired, s3.decision.clone()),
            (5, None),
            "299.999 s: still waiting"
        );
        let s4 = decide("demo", Some(&s3.state), 3, Some(9_000), &spec(), 1_300_000);
        assert_eq!(s4.desired, 3, "to the highest recommendation of the window");
        assert_eq!(s4.decision.map(|d| (d.from, d.to)), Some((5, 3)));
        assert_eq!(s4.state.low_since, None);
        // Load back at the current size ends the window.
        let s = decide("demo", Some(&s1.state), 3, Some(40_000), &spec(), 1_200_000);
        assert_eq!((s.desired, s.state.low_since), (5, None));
    }

    #[test]
    fn without_etcd_nothing_moves() {
        let step = decide("demo", None, 3, None, &spec(), 0);
        assert_eq!((step.desired, step.decision), (3, None));
    }
}
