//! `spec.tls` and the etcd credentials, reconciled against the scripted Kubernetes API (the
//! test names say `against_scripted_api`); etcd is real, over TLS with
//! `--client-cert-auth`, where a test needs one.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use operator::controller::{Context, reconcile};
use operator::crd::ChatCluster;
use operator::metrics::Metrics;
use operator::pki::Ca;
use parley_testkit::{Pki, TestEtcd};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use support::api::{ScriptedApi, World, scripted_api};
use support::bounded;

const NODE_TLS: &str = "/api/v1/namespaces/chat/secrets/demo-node-tls";

fn world(cc: &ChatCluster) -> World {
    World {
        chatcluster: serde_json::to_value(cc).expect("cc json"),
        token_secret_exists: true,
        ..World::default()
    }
}

async fn run(cc: &ChatCluster, w: World) -> ScriptedApi {
    let (client, api) = scripted_api(w);
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
    bounded(30, "reconcile", reconcile(Arc::new(cc.clone()), ctx))
        .await
        .expect("reconcile succeeds");
    api
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("base64")
}

/// The URIs of `cert_pem` if it chains to `ca_pem` as a client and server certificate.
fn verified_uris(ca_pem: &[u8], cert_pem: &[u8]) -> Vec<String> {
    let ca = CertificateDer::from_pem_slice(ca_pem).unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
    let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .expect("the pod certificate chains to the cluster CA");
    }
    cert.valid_uri_names().map(str::to_owned).collect()
}

fn event_reasons(api: &ScriptedApi) -> Vec<String> {
    api.events().into_iter().map(|(_, r, _)| r).collect()
}

#[tokio::test]
async fn self_signed_creates_a_ca_and_issues_every_pod_a_certificate_against_scripted_api() {
    let cc = ChatCluster::test().with_finalizer();
    let api = run(&cc, world(&cc)).await;
    let ca_post = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.body["metadata"]["name"] == "demo-ca")
        .expect("the CA Secret is created");
    let ca_pem = b64(&ca_post.body["data"]["tls.crt"]);
    assert!(!b64(&ca_post.body["data"]["tls.key"]).is_empty());
    let node_tls = api.body_of("PATCH", NODE_TLS);
    assert_eq!(
        b64(&node_tls["data"]["ca.crt"]),
        ca_pem,
        "pods trust the CA"
    );
    for pod in ["demo-0", "demo-1", "demo-2"] {
        let cert = b64(&node_tls["data"][format!("{pod}.crt")]);
        assert_eq!(
            verified_uris(&ca_pem, &cert),
            [format!("spiffe://parley/chat.demo/node/{pod}")]
        );
        assert!(!b64(&node_tls["data"][format!("{pod}.key")]).is_empty());
    }
    let not_after: BTreeMap<String, i64> = serde_json::from_str(
        node_tls["metadata"]["annotations"]["parley.dev/not-after"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(not_after.len(), 3);
    assert!(
        not_after
            .values()
            .all(|t| (t - now() - 2160 * 3600).abs() < 60)
    );
    assert_eq!(
        event_reasons(&api),
        ["CaCreated", "CertificatesIssued"],
        "{:?}",
        api.events()
    );
    // Before the StatefulSet that mounts them.
    let lines = api.lines();
    let at = |l: &str| {
        lines
            .iter()
            .position(|x| x.starts_with("PATCH") && x.ends_with(l))
            .unwrap()
    };
    assert!(at("/secrets/demo-node-tls") < at("/statefulsets/demo"));
}

/// `<name>-node-tls` as the operator would have written it, with these expiries.
fn node_tls_secret(ca: &Ca, expiries: &[(&str, i64)]) -> (Value, BTreeMap<String, Vec<u8>>) {
    let mut data = BTreeMap::from([("ca.crt".to_string(), ca.cert_pem.clone().into_bytes())]);
    let mut not_after = BTreeMap::new();
    for (pod, until) in expiries {
        let issued = ca
            .issue(
                pod,
                &format!("spiffe://parley/chat.demo/node/{pod}"),
                &[],
                until - 2160 * 3600,
                2160,
            )
            .unwrap();
        data.insert(format!("{pod}.crt"), issued.cert_pem.into_bytes());
        data.insert(format!("{pod}.key"), issued.key_pem.into_bytes());
        not_after.insert(pod.to_string(), *until);
    }
    let encoded: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo-node-tls", "namespace": "chat",
                     "annotations": {"parley.dev/not-after": serde_json::to_string(&not_after).unwrap()}},
        "data": encoded,
    });
    (secret, data)
}

fn ca_secret(ca: &Ca) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "demo-ca", "namespace": "chat"},
           "data": {"tls.crt": ByteString(ca.cert_pem.clone().into_bytes()),
                    "tls.key": ByteString(ca.key_pem.clone().into_bytes())}})
}

#[tokio::test]
async fn self_signed_renews_only_the_certificate_that_is_due_against_scripted_api() {
    let cc = ChatCluster::test().with_finalizer();
    let ca = Ca::generate("chat.demo", now() - 3600).unwrap();
    let fresh = now() + 2000 * 3600;
    let due = now() + 3600; // an hour left of 90 days: well inside the last third
    let (secret, before) = node_tls_secret(
        &ca,
        &[("demo-0", fresh), ("demo-1", due), ("demo-2", fresh)],
    );
    let mut w = world(&cc);
    w.secrets = vec![ca_secret(&ca), secret];
    let api = run(&cc, w).await;
    assert!(
        !api.lines().iter().any(|l| l.starts_with("POST")),
        "the CA is kept: {:?}",
        api.lines()
    );
    let after = api.body_of("PATCH", NODE_TLS);
    for pod in ["demo-0", "demo-2"] {
        assert_eq!(
            b64(&after["data"][format!("{pod}.crt")]),
            before[&format!("{pod}.crt")],
            "{pod} is not due and keeps its certificate"
        );
    }
    let renewed = b64(&after["data"]["demo-1.crt"]);
    assert_ne!(renewed, before["demo-1.crt"], "demo-1 was due");
    assert_eq!(
        verified_uris(ca.cert_pem.as_bytes(), &renewed),
        ["spiffe://parley/chat.demo/node/demo-1"]
    );
    let (_, reason, note) = api.events().into_iter().next().expect("an event");
    assert_eq!(reason, "CertificatesIssued");
    assert!(
        note.contains("demo-1") && !note.contains("demo-0"),
        "{note}"
    );

    // Settled: every certificate fresh, nothing is written.
    let (settled, _) = node_tls_secret(
        &ca,
        &[("demo-0", fresh), ("demo-1", fresh), ("demo-2", fresh)],
    );
    let mut w = world(&cc);
    w.secrets = vec![ca_secret(&ca), settled];
    let api = run(&cc, w).await;
    assert!(
        !api.lines()
            .iter()
            .any(|l| l.ends_with("/secrets/demo-node-tls") && l.starts_with("PATCH")),
        "{:?}",
        api.lines()
    );
}

#[tokio::test]
async fn cert_manager_applies_a_certificate_per_pod_and_copies_what_it_issued_against_scripted_api()
{
    let cc = ChatCluster::test()
        .with_finalizer()
        .cert_manager("parley-nodes");
    let mut w = world(&cc);
    w.secrets = vec![json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo-node-tls-0", "namespace": "chat"},
        "data": {"tls.crt": ByteString(b"CERT0".to_vec()), "tls.key": ByteString(b"KEY0".to_vec()),
                 "ca.crt": ByteString(b"CA".to_vec())}})];
    let api = run(&cc, w).await;
    for pod in ["demo-0", "demo-1", "demo-2"] {
        let cert = api.body_of(
            "PATCH",
            &format!("/apis/cert-manager.io/v1/namespaces/chat/certificates/{pod}"),
        );
        assert_eq!(cert["kind"], "Certificate");
        assert_eq!(
            cert["spec"]["uris"][0],
            format!("spiffe://parley/chat.demo/node/{pod}")
        );
        assert_eq!(cert["spec"]["issuerRef"]["name"], "parley-nodes");
    }
    assert!(
        !api.lines().iter().any(|l| l.ends_with("/secrets/demo-ca")),
        "no operator CA with cert-manager"
    );
    let node_tls = api.body_of("PATCH", NODE_TLS);
    assert_eq!(b64(&node_tls["data"]["demo-0.crt"]), b"CERT0");
    assert_eq!(b64(&node_tls["data"]["ca.crt"]), b"CA");
    assert!(
        node_tls["data"].get("demo-1.crt").is_none(),
        "not issued by cert-manager yet: not invented"
    );
}

fn etcd_client_secret(pki: &Pki) -> Value {
    etcd_client_secret_of(pki, "chat-operator")
}

/// `etcd-client` holding the CA and a client certificate named `common_name`.
fn etcd_client_secret_of(pki: &Pki, common_name: &str) -> Value {
    let client = pki.client(common_name);
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "etcd-client", "namespace": "chat"},
           "data": {"ca.crt": ByteString(pki.ca_pem().into_bytes()),
                    "tls.crt": ByteString(client.cert_pem().into_bytes()),
                    "tls.key": ByteString(client.key_pem().into_bytes())}})
}

#[tokio::test]
async fn the_operator_reaches_a_tls_etcd_with_the_client_certificate_the_spec_names_against_scripted_api()
 {
    let pki = Pki::new("chat.demo");
    let etcd = TestEtcd::start_tls(&pki).await;
    let node = json!({"node_id": "demo-0", "advertise_url": "http://a", "ws_url": "ws://a/v1/ws",
                      "capacity": 10, "connections": 7, "draining": false});
    etcd.put("/parley/chat.demo/nodes/demo-0", &node.to_string())
        .await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .tls_mode(operator::crd::TlsMode::Disabled)
        .etcd(&[etcd.endpoint()])
        .etcd_secrets("etcd-client", None);
    let mut w = world(&cc);
    w.secrets = vec![etcd_client_secret(&pki)];
    let api = run(&cc, w).await;
    let status = api.body_of("PATCH", "/chatclusters/demo/status");
    assert_eq!(status["status"]["members"], 1, "{status:#}");
    assert_eq!(status["status"]["connections"], 7);

    // Without the Secret the operator cannot get in: etcd refuses a client without a
    // certificate, and the status says which Secret is missing.
    let api = run(&cc, world(&cc)).await;
    let status = api
        .body_of("PATCH", "/chatclusters/demo/status")
        .to_string();
    assert!(status.contains("etcd-client"), "{status}");
}

#[tokio::test]
async fn the_etcd_connection_is_kept_while_its_secret_is_unchanged_and_redialled_when_rotated_against_scripted_api()
 {
    let pki = Pki::new("chat.demo");
    let etcd = TestEtcd::start_tls(&pki).await;
    let node = json!({"node_id": "demo-0", "advertise_url": "http://a", "ws_url": "ws://a/v1/ws",
                      "capacity": 10, "connections": 3, "draining": false});
    etcd.put("/parley/chat.demo/nodes/demo-0", &node.to_string())
        .await;
    let cc = ChatCluster::test()
        .with_finalizer()
        .tls_mode(operator::crd::TlsMode::Disabled)
        .etcd(&[etcd.endpoint()])
        .etcd_secrets("etcd-client", None);
    let mut w = world(&cc);
    w.secrets = vec![etcd_client_secret_of(&pki, "operator-a")];
    let (client, api) = scripted_api(w);
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
    let reconcile_once = || {
        bounded(
            30,
            "reconcile",
            reconcile(Arc::new(cc.clone()), ctx.clone()),
        )
    };
    let connects = |ctx: &Context| {
        let text = ctx.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("parley_operator_etcd_connects_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no etcd_connects_total in {text}"))
    };
    for _ in 0..2 {
        reconcile_once().await.expect("reconcile");
    }
    assert_eq!(connects(&ctx), 1, "two reconciles, one connection");

    // The client certificate is rotated (cert-manager renewed it): a new connection with the
    // new certificate, which etcd accepts.
    api.world.lock().expect("world").secrets = vec![etcd_client_secret_of(&pki, "operator-b")];
    reconcile_once().await.expect("reconcile after rotation");
    assert_eq!(connects(&ctx), 2, "the rotated certificate is dialled anew");
    let status = api.body_of("PATCH", "/chatclusters/demo/status");
    assert_eq!(status["status"]["connections"], 3, "{status:#}");
    reconcile_once().await.expect("reconcile");
    assert_eq!(connects(&ctx), 2, "and then kept");
}
