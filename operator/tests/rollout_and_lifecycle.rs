//! Rolling upgrades, the finalizer's time bound and running out of cluster. The Kubernetes
//! API is a scripted in-memory fake (tower-test behind `kube::Client`; the test names say
//! `against_scripted_api`); etcd is real, started by each test from `/usr/bin/etcd`.

mod support;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use operator::controller::{Context, Error, RunConfig, RunError};
use operator::crd::ChatCluster;
use operator::metrics::Metrics;
use parley_testkit::TestEtcd;
use serde_json::Value;
use support::api::{World, scripted_api};
use support::bounded;
use support::cluster::*;

fn pods_at(revisions: &[(&str, &str)]) -> Vec<Value> {
    revisions
        .iter()
        .map(|(name, rev)| pod(name, "demo", rev, true))
        .collect()
}

fn deleted_pods(api: &support::api::ScriptedApi) -> Vec<String> {
    api.lines()
        .into_iter()
        .filter(|l| l.starts_with("DELETE /api/v1/namespaces/chat/pods/"))
        .map(|l| l.rsplit('/').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_rolling_upgrade_drains_each_pod_before_it_is_replaced_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    for n in 0..3 {
        register(&etcd, &format!("demo-{n}"), 5, false).await;
    }
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .token_secret("parley-token", "secret");
    // The image changed: the StatefulSet's update revision is new, no pod has it yet.
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "secret")];
    let mut revisions = vec![
        ("demo-0", "demo-old"),
        ("demo-1", "demo-old"),
        ("demo-2", "demo-old"),
    ];
    let set_world = |w: &mut World, revisions: &[(&str, &str)]| {
        let updated = revisions.iter().filter(|(_, r)| *r == "demo-new").count() as i32;
        w.statefulset = Some(existing_pool_sts(&cc, 0, 3, rolling_status(3, updated)));
        w.statefulset_status = Some(rolling_status(3, updated));
        w.pods = pods_at(revisions);
    };
    set_world(&mut w, &revisions);
    let mut replaced = Vec::new();
    for victim in ["demo-2", "demo-1", "demo-0"] {
        // 1. The next pod is asked to drain; nothing is deleted while it holds clients.
        let (res, api, ctx) = run(&cc, w.clone()).await;
        assert_eq!(res.expect("reconcile"), Action::requeue(ctx.drain_poll));
        assert!(
            deleted_pods(&api).is_empty(),
            "{victim}: a pod went before draining"
        );
        let d = drains(&etcd).await;
        assert_eq!(d.len(), 1, "one pod at a time: {d:?}");
        assert_eq!(
            (d[0].0.as_str(), d[0].1["purpose"].as_str()),
            (victim, Some("replace"))
        );
        let (_, reason, message) = condition(&api.body_of("PATCH", STATUS), "Progressing");
        assert_eq!(reason, "RollingOut");
        assert!(message.contains(&format!("draining {victim}")), "{message}");
        let (_, api, _) = run(&cc, w.clone()).await;
        assert!(
            deleted_pods(&api).is_empty(),
            "{victim} still has 5 connections: it stays"
        );

        // 2. The node moved its clients away: now its pod is deleted, and only it.
        register(&etcd, victim, 0, true).await;
        let (_, api, _) = run(&cc, w.clone()).await;
        assert_eq!(deleted_pods(&api), [victim], "the drained pod is replaced");
        assert!(
            api.events()
                .iter()
                .any(|(_, r, n)| r == "ReplacingPod" && n.contains(victim))
        );
        replaced.push(victim);

        // 3. The StatefulSet controller brings it back on the new template; the new process
        // registers anew (the old registration went with its lease).
        unregister(&etcd, victim).await;
        if let Some(r) = revisions.iter_mut().find(|(n, _)| *n == victim) {
            r.1 = "demo-new";
        }
        set_world(&mut w, &revisions);
        register(&etcd, victim, 0, true).await;
    }
    // The last replacement registered: its drain request goes and nothing else happens.
    let (res, api, ctx) = run(&cc, w.clone()).await;
    assert_eq!(res.expect("reconcile"), Action::requeue(ctx.resync));
    assert!(
        drains(&etcd).await.is_empty(),
        "every drain request is gone"
    );
    assert!(deleted_pods(&api).is_empty());
    assert_eq!(replaced, ["demo-2", "demo-1", "demo-0"]);
    assert!(
        api.events()
            .iter()
            .any(|(_, r, n)| r == "PodReplaced" && n.contains("demo-0")),
        "{:?}",
        api.events()
    );
}

#[tokio::test]
async fn a_rolling_upgrade_waits_for_the_replacement_to_be_ready_against_scripted_api() {
    let etcd = TestEtcd::start().await;
    register(&etcd, "demo-0", 5, false).await;
    register(&etcd, "demo-1", 0, false).await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .etcd(&[etcd.endpoint()])
        .replicas(2)
        .token_secret("parley-token", "secret");
    let mut w = world(&cc);
    w.secrets = vec![secret("parley-token", "secret")];
    w.statefulset = Some(existing_pool_sts(&cc, 0, 2, rolling_status(2, 1)));
    w.statefulset_status = Some(rolling_status(2, 1));
    w.pods = vec![
        pod("demo-0", "demo", "demo-old", true),
        pod("demo-1", "demo", "demo-new", false),
    ];
    let (_, api, _) = run(&cc, w.clone()).await;
    assert!(
        drains(&etcd).await.is_empty(),
        "demo-0 waits while demo-1 is not ready"
    );
    let (_, reason, message) = condition(&api.body_of("PATCH", STATUS), "Progressing");
    assert_eq!(reason, "RollingOut");
    assert!(message.contains("waiting for demo-1"), "{message}");
}

#[tokio::test]
async fn the_finalizer_gives_up_on_an_unreachable_etcd_after_its_time_bound_against_scripted_api() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let unreachable = format!("http://127.0.0.1:{port}");
    // Deleted just now: etcd is retried (the deletion waits).
    let mut fresh = ChatCluster::test()
        .with_finalizer()
        .deleting()
        .etcd(&[&unreachable]);
    fresh.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let (res, api, _) = run(&fresh, world(&fresh)).await;
    let err = res.expect_err("etcd is down: the cleanup fails and is retried");
    assert!(matches!(err.inner(), Error::Etcd(_)), "{err}");
    assert!(
        api.lines().is_empty(),
        "the finalizer stays: {:?}",
        api.lines()
    );

    // Deleted longer ago than the bound: it gives up, says so, and lets the object go.
    let old = ChatCluster::test()
        .with_finalizer()
        .deleting()
        .etcd(&[&unreachable]);
    let (client, api) = scripted_api(world(&old));
    let mut ctx = Context::new(client, Arc::new(Metrics::default()));
    ctx.finalizer_timeout = std::time::Duration::from_secs(60);
    let ctx = Arc::new(ctx);
    assert_eq!(
        run_with(&old, &ctx).await.expect("cleanup gives up"),
        Action::await_change()
    );
    assert_eq!(
        api.lines(),
        ["PATCH /apis/parley.dev/v1alpha1/namespaces/chat/chatclusters/demo"]
    );
    let patch = api.body_of("PATCH", "/chatclusters/demo").to_string();
    assert!(
        patch.contains("/metadata/finalizers/0"),
        "finalizer removed: {patch}"
    );
    let events = api.events();
    let (type_, _, note) = events
        .iter()
        .find(|(_, r, _)| r == "EtcdCleanupAbandoned")
        .unwrap_or_else(|| panic!("no EtcdCleanupAbandoned event: {events:?}"));
    assert_eq!(type_, "Warning");
    assert!(
        note.contains("etcdctl del --prefix /parley/chat.demo/") && note.contains("for 60s"),
        "says what is left and how to remove it: {note}"
    );
}

#[tokio::test]
async fn running_out_of_cluster_without_the_lease_namespace_says_so_against_scripted_api() {
    let (client, _api) = scripted_api(World {
        lease_namespace_missing: true,
        ..World::default()
    });
    let result = bounded(
        10,
        "run to stop on the missing namespace",
        operator::controller::run(
            client,
            RunConfig {
                metrics_addr: "127.0.0.1:0".parse().expect("addr"),
                lease_namespace: "parley-system".into(),
                lease_name: "chat-operator".into(),
                identity: "dev-laptop".into(),
                watch_namespace: None,
            },
        ),
    )
    .await;
    let err = result.expect_err("a missing namespace stops the operator");
    assert!(matches!(err, RunError::Lease(_)), "{err}");
    let message = err.to_string();
    for hint in [
        "\"parley-system\" does not exist",
        "kubectl create namespace parley-system",
        "--lease-namespace",
    ] {
        assert!(message.contains(hint), "missing {hint:?} in: {message}");
    }
}
