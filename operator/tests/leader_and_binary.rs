//! Leader election against a scripted in-memory API, and the chat-operator binary's
//! behaviour with no cluster.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use operator::leader::{LeaderConfig, try_acquire};
use serde_json::json;
use support::api::{World, scripted_api};
use support::bounded;

#[tokio::test]
async fn leader_creates_the_lease_when_none_exists_against_scripted_api() {
    let (client, api) = scripted_api(World::default());
    let leases: Api<Lease> = Api::namespaced(client, "parley-system");
    let cfg = LeaderConfig::new("parley-system", "chat-operator", "chat-operator-abc");
    // The scripted API answers 404 to the GET and echoes the POST.
    let won = bounded(10, "leader election round", try_acquire(&leases, &cfg)).await;
    let lines = api.lines();
    assert_eq!(
        lines[0],
        "GET /apis/coordination.k8s.io/v1/namespaces/parley-system/leases/chat-operator"
    );
    assert_eq!(
        lines[1],
        "POST /apis/coordination.k8s.io/v1/namespaces/parley-system/leases"
    );
    let body = api.body_of("POST", "/leases");
    assert_eq!(body["spec"]["holderIdentity"], json!("chat-operator-abc"));
    assert_eq!(body["spec"]["leaseDurationSeconds"], json!(15));
    assert!(
        won.expect("election round"),
        "creating the Lease makes us leader"
    );
}

#[test]
fn chat_operator_run_without_a_cluster_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .arg("run")
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .env("OPERATOR_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .expect("chat-operator runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting to the Kubernetes API"),
        "stderr: {err}"
    );
}
