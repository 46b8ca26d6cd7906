//! Reconcile tests. The Kubernetes API is a scripted in-memory fake (tower-test behind
//! `kube::Client`; the test names say `against_scripted_api`); etcd is real, started by each
//! test from `/usr/bin/etcd` (missing etcd fails the test loudly).

mod support;

use std::sync::Arc;

use kube::runtime::controller::Action;
use operator::controller::{Context, Error, error_policy, reconcile};
use operator::crd::{ChatCluster, TlsMode};
use operator::metrics::Metrics;
use parley_testkit::TestEtcd;
use serde_json::Value;
use support::api::{World, scripted_api};
use support::bounded;
use support::cluster::*;

#[tokio::test]
async fn first_reconcile_only_adds_the_finalizer_against_scripted_api() {
    let cc = ChatCluster::test();
    let (res, api, _) = run(&cc, world(&cc)).await;
    assert_eq!(res.expect("reconcile"), Action::await_change());
    assert_eq!(
        api.lines(),
        ["PATCH /apis/parley.dev/v1alpha1/namespaces/chat/chatclusters/demo"]
    );
    let patch = api.body_of("PATCH", "/chatclusters/demo").to_string();
    assert!(
        patch.contains("parley.dev/etcd-cleanup"),
        "JSON patch adds the finalizer: {patch}"
    );
}

#[tokio::test]
async fn create_applies_every_child_with_server_side_apply_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()]);
    let (res, api, _) = run(&cc, world(&cc)).await;
    assert_eq!(
        res.expect("reconcile"),
        Action::requeue(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        api.lines(),
        [
            "GET /api/v1/namespaces/chat/secrets/demo-token",
            "POST /api/v1/namespaces/chat/secrets",
            "GET /apis/apps/v1/namespaces/chat/statefulsets",
            // spec.tls defaults to selfSigned: the CA is created, the pods' certificates issued
            "GET /api/v1/namespaces/chat/secrets/demo-ca",
            "POST /api/v1/namespaces/chat/secrets",
            "GET /api/v1/namespaces/chat/secrets/demo-node-tls",
            "PATCH /api/v1/namespaces/chat/secrets/demo-node-tls",
            "PATCH /api/v1/namespaces/chat/configmaps/demo-config",
            "PATCH /api/v1/namespaces/chat/services/demo-headless",
            "PATCH /api/v1/namespaces/chat/services/demo",
            "PATCH /apis/policy/v1/namespaces/chat/poddisruptionbudgets/demo",
            "PATCH /apis/apps/v1/namespaces/chat/statefulsets/demo",
            "PATCH /apis/parley.dev/v1alpha1/namespaces/chat/chatclusters/demo/status",
        ]
    );
    // Server-side apply, one field manager, forced.
    for r in api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.contains("chatclusters"))
    {
        assert!(
            r.query.contains("fieldManager=chat-operator"),
            "{} query {}",
            r.path,
            r.query
        );
        assert!(
            r.query.contains("force=true"),
            "{} query {}",
            r.path,
            r.query
        );
        assert_eq!(
            r.body["metadata"]["ownerReferences"][0]["kind"], "ChatCluster",
            "{} is owned",
            r.path
        );
    }
    let secret = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.body["metadata"]["name"] == "demo-token")
        .expect("the token Secret is created")
        .body;
    let key = secret["data"]["secret"]
        .as_str()
        .expect("generated key (base64)");
    assert_eq!(key.len(), 88, "32 random bytes, hex, base64-encoded");
    let sts = api.body_of("PATCH", STS);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/parley/chat-node:0.1.0"
    );
    let status = api.body_of("PATCH", STATUS);
    assert_eq!(
        status["status"]["selector"],
        "app.kubernetes.io/instance=demo,app.kubernetes.io/name=parley"
    );
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(condition(&status, "Ready").0, "False");
    assert_eq!(condition(&status, "Degraded").0, "False");
    assert_eq!(condition(&status, "Progressing").1, "ScalingUp");
    assert_eq!(
        event_reasons(&api),
        ["TokenSecretCreated", "CaCreated", "CertificatesIssued"]
    );
}

#[tokio::test]
async fn spec_change_reapplies_children_and_reports_ready_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    for n in 0..3 {
        register(&etcd, &format!("demo-{n}"), 10 + n, false).await;
    }
    let old = ChatCluster::test()
        .tls_mode(TlsMode::Disabled) // about scaling and Secrets; spec.tls has its own tests
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret");
    let mut cc = old.clone().generation(2);
    cc.spec.limits.max_group_members = 50;
    cc.spec.image = "registry.example.com/parley/chat-node:0.2.0".into();
    let mut w = world(&cc);
    w.statefulset = Some(existing_sts(&old, 3));
    w.statefulset_status = Some(ready_status(3));
    w.secrets = vec![secret("parley-token", "secret")];
    let (res, api, _) = run(&cc, w).await;
    res.expect("reconcile");
    let secret_calls: Vec<_> = api
        .lines()
        .into_iter()
        .filter(|l| l.contains("/secrets"))
        .collect();
    assert_eq!(
        secret_calls,
        ["GET /api/v1/namespaces/chat/secrets/parley-token"],
        "a referenced Secret is only read, never written"
    );
    let cm = api.body_of("PATCH", "/configmaps/demo-config");
    assert_eq!(cm["data"]["PARLEY_MAX_GROUP_MEMBERS"], "50");
    let sts = api.body_of("PATCH", STS);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/parley/chat-node:0.2.0"
    );
    let hash = sts["spec"]["template"]["metadata"]["annotations"]["parley.dev/config-hash"]
        .as_str()
        .unwrap_or_default();
    assert_ne!(hash, "old-hash", "a config change rolls the pods");
    let status = api.body_of("PATCH", STATUS);
    assert_eq!(status["status"]["observedGeneration"], 2);
    assert_eq!(status["status"]["readyReplicas"], 3);
    assert_eq!(status["status"]["members"], 3, "members read from etcd");
    assert_eq!(
        status["status"]["connections"], 33,
        "10 + 11 + 12 connections read from etcd"
    );
    assert_eq!(condition(&status, "Ready").0, "True");
    assert_eq!(condition(&status, "Progressing").1, "Stable");
}

#[tokio::test]
async fn missing_referenced_secret_is_reported_as_degraded_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    let cc = ChatCluster::test()
        .tls_mode(TlsMode::Disabled) // about scaling and Secrets; spec.tls has its own tests
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret")
        .push("https://push.example.com/hook", "parley-push", "hmac");
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "other-key")];
    let (res, api, _) = run(&cc, w).await;
    res.expect("a missing Secret is a condition, not a failed reconcile");
    assert!(
        api.lines()
            .iter()
            .any(|l| l.ends_with("/statefulsets/demo") && l.starts_with("PATCH")),
        "children still applied"
    );
    let (st, reason, message) = condition(&api.body_of("PATCH", STATUS), "Degraded");
    assert_eq!((st.as_str(), reason.as_str()), ("True", "SecretMissing"));
    assert!(
        message
            .contains("Secret chat/parley-token (spec.auth.tokenSecretRef) has no key \"secret\""),
        "{message}"
    );
    assert!(
        message.contains("Secret chat/parley-push (spec.push.secretRef) not found"),
        "{message}"
    );
    assert_eq!(event_reasons(&api), ["SecretMissing"]);
}

#[tokio::test]
async fn scale_up_is_immediate_and_cancels_stale_drains_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    // A drain left over from a scale-down that was undone before it finished.
    etcd.put(
        "/parley/chat.demo/drain/demo-2",
        r#"{"requested_at":1,"deadline":2}"#,
    )
    .await;
    let cc = ChatCluster::test()
        .tls_mode(TlsMode::Disabled) // about scaling and Secrets; spec.tls has its own tests
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .replicas(5);
    let mut w = world(&cc);
    w.token_secret_exists = true;
    w.statefulset = Some(existing_sts(&cc, 3));
    w.statefulset_status = Some(ready_status(3));
    let (res, api, _) = run(&cc, w).await;
    res.expect("reconcile");
    assert!(
        !api.lines().iter().any(|l| l.starts_with("POST")),
        "the existing token Secret is kept"
    );
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        5,
        "scale-up applies at once"
    );
    assert!(
        etcd.keys("/parley/chat.demo/drain/").await.is_empty(),
        "stale drain request cancelled"
    );
    assert_eq!(event_reasons(&api), ["ScalingUp"]);
    let (st, reason, message) = condition(&api.body_of("PATCH", STATUS), "Progressing");
    assert_eq!(
        (st.as_str(), reason.as_str(), message.as_str()),
        ("True", "ScalingUp", "3 of 5 pods exist")
    );
}

#[tokio::test]
async fn scale_down_drains_leaving_nodes_before_shrinking_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-0", 4, false).await;
    register(&etcd, "demo-1", 4, false).await;
    register(&etcd, "demo-2", 7, false).await;
    register(&etcd, "demo-3", 0, false).await;
    let cc = ChatCluster::test()
        .tls_mode(TlsMode::Disabled) // about scaling and Secrets; spec.tls has its own tests
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .replicas(2)
        .drain_timeout(600);
    let mut w = world(&cc);
    w.token_secret_exists = true;
    w.statefulset = Some(existing_sts(&cc, 4));

    // 1st reconcile: drain requests written, StatefulSet held at 4.
    let before = operator::drain::now_ms();
    let (res, api, ctx) = run(&cc, w.clone()).await;
    assert_eq!(
        res.expect("reconcile"),
        Action::requeue(ctx.drain_poll),
        "re-checks the drain soon"
    );
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        4,
        "no pod goes before it is drained"
    );
    let drains = etcd.keys("/parley/chat.demo/drain/").await;
    let ids: Vec<_> = drains.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        ids,
        [
            "/parley/chat.demo/drain/demo-2",
            "/parley/chat.demo/drain/demo-3"
        ]
    );
    let req: Value = serde_json::from_str(&drains[0].1).expect("drain value is JSON");
    let requested_at = req["requested_at"].as_i64().expect("requested_at");
    assert!(requested_at >= before);
    assert_eq!(
        req["deadline"].as_i64(),
        Some(requested_at + 600_000),
        "deadline = requested_at + timeout"
    );
    let status = api.body_of("PATCH", STATUS);
    let (st, reason, message) = condition(&status, "Progressing");
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Draining"));
    assert!(message.contains("demo-2: 7 connections"), "{message}");
    assert_eq!(status["status"]["connections"], 15);
    assert_eq!(event_reasons(&api), ["DrainStarted"]);

    // 2nd reconcile while demo-2 still has clients: the same deadline, still held.
    let (_, api, _) = run(&cc, w.clone()).await;
    assert_eq!(api.body_of("PATCH", STS)["spec"]["replicas"], 4);
    assert_eq!(
        etcd.keys("/parley/chat.demo/drain/").await,
        drains,
        "a re-reconcile never moves the deadline"
    );
    assert!(
        event_reasons(&api).is_empty(),
        "no second DrainStarted: {:?}",
        api.events()
    );

    // The node side: demo-2 saw its drain key and moved its clients away.
    register(&etcd, "demo-2", 0, true).await;
    let (res, api, _) = run(&cc, w).await;
    res.expect("reconcile");
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        2,
        "drained: the StatefulSet shrinks"
    );
    assert!(
        etcd.keys("/parley/chat.demo/drain/").await.is_empty(),
        "drain keys of removed ordinals deleted"
    );
    assert_eq!(event_reasons(&api), ["ScaledDown"]);
}

#[tokio::test]
async fn scale_down_shrinks_anyway_when_the_drain_timeout_passes_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-2", 9, false).await;
    let cc = ChatCluster::test()
        .tls_mode(TlsMode::Disabled) // about scaling and Secrets; spec.tls has its own tests
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .replicas(2)
        .drain_timeout(0);
    let mut w = world(&cc);
    w.token_secret_exists = true;
    w.statefulset = Some(existing_sts(&cc, 3));
    let (res, api, _) = run(&cc, w).await;
    res.expect("reconcile");
    assert_eq!(api.body_of("PATCH", STS)["spec"]["replicas"], 2);
    let events = api.events();
    let timed_out = events
        .iter()
        .find(|(_, r, _)| r == "DrainTimedOut")
        .expect("a DrainTimedOut event");
    assert_eq!(timed_out.0, "Warning");
    assert!(timed_out.2.contains("demo-2"), "{}", timed_out.2);
    assert!(etcd.keys("/parley/chat.demo/drain/").await.is_empty());
}

#[tokio::test]
async fn scale_down_holds_when_etcd_is_unreachable_against_scripted_api() {
    // A port nothing listens on: etcd refuses at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[&format!("http://127.0.0.1:{port}")])
        .replicas(2);
    let mut w = world(&cc);
    w.token_secret_exists = true;
    w.statefulset = Some(existing_sts(&cc, 3));
    let (res, api, _) = run(&cc, w).await;
    res.expect("an unreachable etcd is a condition, not a failed reconcile");
    assert_eq!(
        api.body_of("PATCH", STS)["spec"]["replicas"],
        3,
        "never shrinks without draining"
    );
    let status = api.body_of("PATCH", STATUS);
    let (st, reason, message) = condition(&status, "Degraded");
    assert_eq!((st.as_str(), reason.as_str()), ("True", "EtcdUnavailable"));
    assert!(
        message.contains(&port.to_string()),
        "names the endpoint: {message}"
    );
    assert_eq!(condition(&status, "Progressing").1, "DrainBlocked");
}

#[tokio::test]
async fn invalid_spec_sets_degraded_and_applies_nothing_against_scripted_api() {
    let cc = ChatCluster::test()
        .with_finalizer()
        .embedded("10Gi", None)
        .replicas(3);
    let (res, api, ctx) = run(&cc, world(&cc)).await;
    let err = res.expect_err("an invalid spec fails the reconcile");
    assert!(matches!(err.inner(), Error::InvalidSpec(_)), "{err}");
    assert_eq!(
        error_policy(Arc::new(cc.clone()), &err, ctx),
        Action::await_change(),
        "no retry loop: wait for a change"
    );
    assert_eq!(
        api.lines(),
        ["PATCH /apis/parley.dev/v1alpha1/namespaces/chat/chatclusters/demo/status"]
    );
    let status = api.body_of("PATCH", STATUS);
    let (st, reason, message) = condition(&status, "Degraded");
    assert_eq!((st.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains("replicas must be 1"),
        "says what to fix: {message}"
    );
    assert_eq!(condition(&status, "Ready").0, "False");
    let events = api.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "InvalidSpec")
    );
}

#[tokio::test]
async fn transient_failures_back_off_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()]);
    let (client, api) = scripted_api(World {
        fail_with: Some(503),
        ..World::default()
    });
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
    let cc = Arc::new(cc);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let err = bounded(30, "reconcile", reconcile(cc.clone(), ctx.clone()))
            .await
            .expect_err("the API fails");
        assert!(matches!(err.inner(), Error::Kube { .. }), "{err}");
        delays.push(error_policy(cc.clone(), &err, ctx.clone()));
    }
    let secs = |s| Action::requeue(std::time::Duration::from_secs(s));
    assert_eq!(delays, [secs(5), secs(10), secs(20)]);
    assert_eq!(
        api.lines().len(),
        3,
        "each attempt stops at the first failed call: {:#?}",
        api.lines()
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("parley_operator_reconcile_failures_total{error=\"kube\"} 3")
    );
}

#[tokio::test]
async fn delete_clears_the_clusters_etcd_keys_then_the_finalizer_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-0", 1, false).await;
    etcd.put(
        "/parley/chat.demo/drain/demo-0",
        r#"{"requested_at":1,"deadline":2}"#,
    )
    .await;
    etcd.put("/parley/chat.demo2/nodes/demo2-0", "{}").await;
    etcd.put("/parley/other.demo/nodes/demo-0", "{}").await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .deleting()
        .etcd(&[etcd.endpoint()]);
    let (res, api, _) = run(&cc, world(&cc)).await;
    assert_eq!(res.expect("cleanup"), Action::await_change());
    assert!(
        etcd.keys("/parley/chat.demo/").await.is_empty(),
        "the cluster's keys are gone"
    );
    let left: Vec<_> = etcd
        .keys("/parley/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        left,
        [
            "/parley/chat.demo2/nodes/demo2-0",
            "/parley/other.demo/nodes/demo-0"
        ],
        "other clusters untouched"
    );
    assert_eq!(
        api.lines(),
        ["PATCH /apis/parley.dev/v1alpha1/namespaces/chat/chatclusters/demo"]
    );
    let patch = api.body_of("PATCH", "/chatclusters/demo").to_string();
    assert!(
        patch.contains("remove") && patch.contains("/metadata/finalizers/0"),
        "finalizer removed: {patch}"
    );
    assert_eq!(event_reasons(&api), ["EtcdKeysCleared"]);
}
