//! Per-zone node pools, autoscaling on live connections, pause and resume, and the reuse of
//! one etcd connection. The Kubernetes API is a scripted in-memory fake (tower-test behind
//! `kube::Client`; the test names say `against_scripted_api`); etcd is real, started by each
//! test from `/usr/bin/etcd`.

mod support;

use std::sync::Arc;

use kube::runtime::controller::Action;
use operator::controller::Context;
use operator::crd::{AutoscalingStatus, ChatCluster, ChatClusterStatus, PoolScaling};
use operator::metrics::Metrics;
use parley_testkit::TestEtcd;
use serde_json::Value;
use support::api::scripted_api;
use support::cluster::*;

const ZONE_A: &str = "/apis/apps/v1/namespaces/chat/statefulsets/demo-a";
const ZONE_B: &str = "/apis/apps/v1/namespaces/chat/statefulsets/demo-b";

fn env_of(sts: &Value, name: &str) -> Option<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

fn with_autoscaling_state(
    mut cc: ChatCluster,
    desired: i32,
    low_since: Option<i64>,
) -> ChatCluster {
    cc.status = Some(ChatClusterStatus {
        autoscaling: Some(AutoscalingStatus {
            pools: vec![PoolScaling {
                stateful_set: "demo".into(),
                desired_replicas: desired,
                low_since,
                low_recommendation: low_since.map(|_| 2),
            }],
            ..AutoscalingStatus::default()
        }),
        ..ChatClusterStatus::default()
    });
    cc
}

#[tokio::test]
async fn zones_get_a_statefulset_and_a_budget_each_and_report_their_connections_against_scripted_api()
 {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-a-0", 5, false).await;
    register(&etcd, "demo-a-1", 7, false).await;
    register(&etcd, "demo-b-0", 3, false).await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret")
        .zone("a", "eu", 2)
        .zone("b", "us", 1);
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset_statuses = [
        ("demo-a".to_string(), ready_status(2)),
        ("demo-b".to_string(), ready_status(1)),
    ]
    .into();
    let (res, api, ctx) = run(&cc, w).await;
    res.expect("reconcile");
    let applied: Vec<String> = api
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("PATCH") && !l.contains("chatclusters"))
        .collect();
    assert_eq!(
        applied,
        [
            // spec.tls defaults to selfSigned: every zone's pods get their certificates first
            "PATCH /api/v1/namespaces/chat/secrets/demo-node-tls",
            "PATCH /api/v1/namespaces/chat/configmaps/demo-config",
            "PATCH /api/v1/namespaces/chat/services/demo-headless",
            "PATCH /api/v1/namespaces/chat/services/demo",
            "PATCH /apis/policy/v1/namespaces/chat/poddisruptionbudgets/demo-a",
            "PATCH /apis/apps/v1/namespaces/chat/statefulsets/demo-a",
            "PATCH /apis/policy/v1/namespaces/chat/poddisruptionbudgets/demo-b",
            "PATCH /apis/apps/v1/namespaces/chat/statefulsets/demo-b",
        ]
    );
    let a = api.body_of("PATCH", ZONE_A);
    let b = api.body_of("PATCH", ZONE_B);
    assert_eq!(
        (
            a["spec"]["replicas"].as_i64(),
            b["spec"]["replicas"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(env_of(&b, "PARLEY_REGION").as_deref(), Some("us"));
    assert_eq!(env_of(&b, "PARLEY_ZONE").as_deref(), Some("b"));
    let node_tls = api.body_of("PATCH", "/secrets/demo-node-tls");
    let mut files: Vec<&str> = node_tls["data"]
        .as_object()
        .expect("node-tls data")
        .keys()
        .map(String::as_str)
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "ca.crt",
            "demo-a-0.crt",
            "demo-a-0.key",
            "demo-a-1.crt",
            "demo-a-1.key",
            "demo-b-0.crt",
            "demo-b-0.key"
        ],
        "one certificate per pod of every zone"
    );
    assert_eq!(
        env_of(&b, "PARLEY_INTERNAL_CERT_FILE").as_deref(),
        Some("/etc/parley/node-tls/$(POD_NAME).crt")
    );
    let pdb = api.body_of("PATCH", "/poddisruptionbudgets/demo-b");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["parley.dev/zone"],
        "b"
    );

    let status = api.body_of("PATCH", STATUS)["status"].clone();
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["connections"], 15);
    let zones = status["zones"].as_array().expect("status.zones");
    let row = |z: &str| {
        zones
            .iter()
            .find(|x| x["name"] == z)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        (
            row("a")["region"].as_str(),
            row("a")["replicas"].as_i64(),
            row("a")["connections"].as_i64()
        ),
        (Some("eu"), Some(2), Some(12))
    );
    assert_eq!(
        (
            row("b")["members"].as_i64(),
            row("b")["connections"].as_i64(),
            row("b")["desiredReplicas"].as_i64()
        ),
        (Some(1), Some(3), Some(1))
    );
    let metrics = ctx.metrics.encode();
    assert!(
        metrics
            .contains(r#"parley_operator_connections{namespace="chat",name="demo",zone="a"} 12"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn turning_zones_on_drains_then_deletes_the_old_statefulset_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-0", 4, false).await;
    let plain = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret")
        .replicas(1);
    let cc = plain.clone().zone("a", "eu", 1);
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset = Some(existing_sts(&plain, 1));
    let (_, api, _) = run(&cc, w.clone()).await;
    assert!(
        api.lines()
            .iter()
            .any(|l| l.ends_with("/statefulsets/demo-a")),
        "the zone is applied at once"
    );
    assert_eq!(
        drains(&etcd)
            .await
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["demo-0"],
        "the old StatefulSet's node drains first"
    );
    assert!(
        !api.lines().iter().any(|l| l.starts_with("DELETE")),
        "nothing goes before it drained"
    );
    register(&etcd, "demo-0", 0, true).await;
    let (_, api, _) = run(&cc, w).await;
    let deletes: Vec<String> = api
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("DELETE"))
        .collect();
    assert_eq!(
        deletes,
        [
            "DELETE /apis/apps/v1/namespaces/chat/statefulsets/demo",
            "DELETE /apis/policy/v1/namespaces/chat/poddisruptionbudgets/demo",
        ]
    );
    assert!(drains(&etcd).await.is_empty());
}

#[tokio::test]
async fn autoscaling_scales_up_at_once_from_live_connections_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    for (n, c) in [(0, 10_400), (1, 10_400), (2, 10_400)] {
        register(&etcd, &format!("demo-{n}"), c, false).await;
    }
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret")
        .autoscaling(1, 10, 8_000, 300);
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset = Some(existing_sts(&cc, 3));
    let (res, api, ctx) = run(&cc, w).await;
    assert_eq!(res.expect("reconcile"), Action::requeue(ctx.autoscale_poll));
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        4,
        "up at once"
    );
    let events = api.events();
    assert!(
        events.iter().any(|(_, r, n)| r == "Autoscaling"
            && n == "scaling 3→4: 31,200 connections, target 8,000 per node"),
        "{events:?}"
    );
    let status = api.body_of("PATCH", STATUS)["status"].clone();
    assert_eq!(status["autoscaling"]["pools"][0]["desiredReplicas"], 4);
    assert_eq!(
        status["autoscaling"]["lastDecision"],
        "scaling 3→4: 31,200 connections, target 8,000 per node"
    );
    assert!(drains(&etcd).await.is_empty(), "a scale-up drains nothing");
    // The pod the autoscaler adds has its certificate before its StatefulSet grows.
    let node_tls = api.body_of("PATCH", "/secrets/demo-node-tls");
    assert!(
        node_tls["data"]["demo-3.crt"].is_string(),
        "no certificate for the new pod demo-3: {node_tls:#}"
    );
    let lines = api.lines();
    let at = |suffix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with("PATCH") && l.ends_with(suffix))
            .unwrap_or_else(|| panic!("no PATCH of {suffix} in {lines:#?}"))
    };
    assert!(at("/secrets/demo-node-tls") < at("/statefulsets/demo"));
}

#[tokio::test]
async fn autoscaling_scales_down_slowly_and_only_after_draining_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    for n in 0..5 {
        register(&etcd, &format!("demo-{n}"), 1_800, false).await;
    }
    let base = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret")
        .replicas(5)
        .autoscaling(1, 10, 8_000, 300)
        .drain_timeout(600);
    let mut w = world(&base);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset = Some(existing_sts(&base, 5));

    // 9,000 connections want 2 nodes; the window starts, 5 stay.
    let cc = with_autoscaling_state(base.clone(), 5, None);
    let (_, api, _) = run(&cc, w.clone()).await;
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        5,
        "down waits"
    );
    let state = api.body_of("PATCH", STATUS)["status"]["autoscaling"]["pools"][0].clone();
    assert!(state["lowSince"].as_i64().is_some(), "{state}");
    assert!(drains(&etcd).await.is_empty());

    // The window is over: the decision is 5→2, but the leaving nodes drain first.
    let long_ago = operator::drain::now_ms() - 301_000;
    let cc = with_autoscaling_state(base.clone(), 5, Some(long_ago));
    let (_, api, _) = run(&cc, w.clone()).await;
    assert!(
        api.events()
            .iter()
            .any(|(_, r, n)| r == "Autoscaling" && n.starts_with("scaling 5→2: 9,000 connections")),
        "{:?}",
        api.events()
    );
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        5,
        "no pod goes before it drained"
    );
    let leaving: Vec<String> = drains(&etcd).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(leaving, ["demo-2", "demo-3", "demo-4"]);
    let decided = api.body_of("PATCH", STATUS)["status"].clone();
    assert_eq!(decided["autoscaling"]["pools"][0]["desiredReplicas"], 2);

    // The next reconcile reads the decision back from status; once drained, 2 remain.
    let mut cc = base.clone();
    cc.status = Some(serde_json::from_value(decided).expect("status round-trips"));
    for n in 2..5 {
        register(&etcd, &format!("demo-{n}"), 0, true).await;
    }
    let (_, api, _) = run(&cc, w).await;
    assert_eq!(api.body_of("PATCH", STS)["spec"]["replicas"], 2);
    assert!(drains(&etcd).await.is_empty());
}

#[tokio::test]
async fn replicas_zero_pauses_by_draining_everything_and_scaling_back_resumes_against_scripted_api()
{
    let etcd = TestEtcd::start().await;
    for n in 0..3 {
        register(&etcd, &format!("demo-{n}"), 2, false).await;
    }
    let running = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret");
    let paused = running.clone().replicas(0);
    let mut w = world(&paused);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset = Some(existing_sts(&running, 3));

    let (_, api, _) = run(&paused, w.clone()).await;
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        3,
        "held until drained"
    );
    assert_eq!(drains(&etcd).await.len(), 3, "every node drains");
    assert!(
        api.events().iter().any(|(_, r, n)| r == "DrainStarted"
            && n.starts_with("pausing: asked demo-0, demo-1, demo-2")),
        "{:?}",
        api.events()
    );
    for n in 0..3 {
        register(&etcd, &format!("demo-{n}"), 0, true).await;
    }
    let (_, api, _) = run(&paused, w.clone()).await;
    assert_eq!(api.body_of("PATCH", STS)["spec"]["replicas"], 0, "paused");
    assert!(drains(&etcd).await.is_empty());

    // Paused: the pods are gone, history stays (nothing deletes the store or its keys).
    for n in 0..3 {
        unregister(&etcd, &format!("demo-{n}")).await;
    }
    w.statefulset = Some(existing_sts(&running, 0));
    w.statefulset_status = Some(ready_status(0));
    let (_, api, _) = run(&paused, w.clone()).await;
    let status = api.body_of("PATCH", STATUS);
    assert_eq!(condition(&status, "Ready").1, "Paused");
    assert_eq!(condition(&status, "Progressing").1, "Paused");
    assert!(!api.lines().iter().any(|l| l.starts_with("DELETE")));

    // Resume.
    let (_, api, _) = run(&running, w).await;
    assert_eq!(api.body_of("PATCH", STS)["spec"]["replicas"], 3);
    assert!(api.events().iter().any(|(_, r, _)| r == "ScalingUp"));
}

#[tokio::test]
async fn one_etcd_connection_serves_every_reconcile_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-0", 1, false).await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret");
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset = Some(existing_sts(&cc, 3));
    let (client, _api) = scripted_api(w);
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
    for _ in 0..3 {
        run_with(&cc, &ctx).await.expect("reconcile");
    }
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("parley_operator_etcd_connects_total 1\n"),
        "three reconciles, one connection: {metrics}"
    );
}
