//! Fixtures of the reconcile tests: ChatCluster worlds for the scripted API, StatefulSets as
//! the API server returns them, node registrations in the real etcd, and readers of the
//! requests made.

use std::sync::Arc;

use super::api::{ScriptedApi, World, scripted_api};
use super::bounded;
use kube::runtime::controller::Action;
use operator::controller::{Context, Error, reconcile};
use operator::crd::ChatCluster;
use operator::metrics::Metrics;
use parley_testkit::TestEtcd;
use serde_json::{Value, json};

pub const STS: &str = "/apis/apps/v1/namespaces/chat/statefulsets/demo";
pub const STATUS: &str = "/apis/parley.dev/v1alpha1/namespaces/chat/chatclusters/demo/status";

pub fn world(cc: &ChatCluster) -> World {
    World {
        chatcluster: serde_json::to_value(cc).expect("cc json"),
        ..World::default()
    }
}

/// A StatefulSet as the API server would return it: built for `cc` at `replicas`, all ready.
pub fn existing_sts(cc: &ChatCluster, replicas: i32) -> Value {
    let pool = &operator::pools::pools(cc)[0];
    let mut v = serde_json::to_value(operator::resources::statefulset(
        cc, pool, replicas, "old-hash",
    ))
    .expect("json");
    v["status"] = ready_status(replicas);
    v
}

pub fn secret(name: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "chat"}, "data": {key: "a2V5"}})
}

pub fn ready_status(n: i32) -> Value {
    json!({"replicas": n, "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n})
}

pub async fn run(cc: &ChatCluster, w: World) -> (Result<Action, Error>, ScriptedApi, Arc<Context>) {
    let (client, api) = scripted_api(w);
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
    let res = bounded(
        30,
        "reconcile to finish",
        reconcile(Arc::new(cc.clone()), ctx.clone()),
    )
    .await;
    (res, api, ctx)
}

pub async fn register(etcd: &TestEtcd, node: &str, connections: u64, draining: bool) {
    let v = json!({"node_id": node, "advertise_url": format!("http://{node}.demo-headless.chat.svc:8080"),
                   "ws_url": format!("ws://{node}.demo-headless.chat.svc:8080/v1/ws"), "zone": "z1",
                   "capacity": 10000, "connections": connections, "draining": draining});
    etcd.put(&format!("/parley/chat.demo/nodes/{node}"), &v.to_string())
        .await;
}

pub fn condition(status_patch: &Value, type_: &str) -> (String, String, String) {
    let c = status_patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status_patch:#}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

pub fn event_reasons(api: &ScriptedApi) -> Vec<String> {
    api.events()
        .into_iter()
        .map(|(_, reason, _)| reason)
        .collect()
}

/// The StatefulSet of `cc`'s pool `pool` (0 without zones) as the API server returns it, at
/// `replicas`, with `status`.
pub fn existing_pool_sts(cc: &ChatCluster, pool: usize, replicas: i32, status: Value) -> Value {
    let pool = &operator::pools::pools(cc)[pool];
    let mut v = serde_json::to_value(operator::resources::statefulset(
        cc, pool, replicas, "old-hash",
    ))
    .expect("json");
    v["status"] = status;
    v
}

/// A StatefulSet status in the middle of an update: `updated` of `n` pods on the new
/// revision `demo-new` (the others on `demo-old`), all ready.
pub fn rolling_status(n: i32, updated: i32) -> Value {
    json!({"replicas": n, "readyReplicas": n, "updatedReplicas": updated, "availableReplicas": n,
           "currentRevision": "demo-old", "updateRevision": "demo-new"})
}

/// A chat pod of StatefulSet `sts` at template revision `revision`.
pub fn pod(name: &str, sts: &str, revision: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "chat",
                        "labels": {"controller-revision-hash": revision,
                                   "app.kubernetes.io/name": "parley", "app.kubernetes.io/instance": "demo"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts,
                                             "uid": "0000-sts", "controller": true}]},
           "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// Removes a node's registration (its lease ended: the process stopped).
pub async fn unregister(etcd: &TestEtcd, node: &str) {
    etcd.delete(&format!("/parley/chat.demo/nodes/{node}"))
        .await;
}

/// The drain requests in etcd: node id → the request's JSON.
pub async fn drains(etcd: &TestEtcd) -> Vec<(String, Value)> {
    etcd.keys("/parley/chat.demo/drain/")
        .await
        .into_iter()
        .map(|(k, v)| {
            (
                k.trim_start_matches("/parley/chat.demo/drain/").to_string(),
                serde_json::from_str(&v).expect("a drain request is JSON"),
            )
        })
        .collect()
}

/// Runs one reconcile against `api`'s client with an existing context (so that what the
/// context keeps, such as the etcd connection, carries over).
pub async fn run_with(cc: &ChatCluster, ctx: &Arc<Context>) -> Result<Action, Error> {
    bounded(
        30,
        "reconcile to finish",
        reconcile(Arc::new(cc.clone()), ctx.clone()),
    )
    .await
}
