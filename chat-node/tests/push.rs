//! Push notifications end to end: a real `chat-node` process pushes offline devices through
//! local stand-ins for the webhook receiver, FCM (token endpoint and `messages:send`) and
//! APNs (HTTP/2 over h2c on a loopback port), since the real FCM and APNs cannot be reached
//! here; test names say "standin" for that. Keys under tests/fixtures/ are test-only.

mod common;
mod push_support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::dm;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parley_testkit::standin::{Recorded, StandIn};
use push_support::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_each_get_one_authorised_push_standin_webhook_fcm_apns() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let fcm = StandIn::start(|r| {
        if r.path == "/token" {
            (200, json!({"access_token": "test-access-token-1", "expires_in": 3600, "token_type": "Bearer"}).to_string())
        } else if r.header("authorization") == Some("Bearer test-access-token-1") {
            (200, json!({"name": format!("projects/{FCM_PROJECT}/messages/1")}).to_string())
        } else {
            (401, json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}).to_string())
        }
    })
    .await;
    let apns = StandIn::start(|_| (200, String::new())).await;
    let args = all_providers_args(dir.path(), &hook, &fcm, &apns, 100);
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "laptop").await;
    node.login("bob", "tablet").await;
    node.login("bob", "phone").await;
    node.login("bob", "desk").await; // no push registration: never pushed
    register(&node, &bob, "laptop", "webhook", "hook-token").await;
    register(&node, &bob, "tablet", "fcm", "fcm-token").await;
    register(&node, &bob, "phone", "apns", "apns-token/+x").await;

    let text: String = "Hé! ".repeat(80); // 320 chars, more than 200 bytes apart
    let ack = send(&node, &alice, &bob.id, "m1", &text).await;
    let want_preview: String = text.chars().take(200).collect();

    // The webhook: the documented body, signed.
    let hooks = hook.wait_for("the webhook push", |r| !r.is_empty()).await;
    let r = &hooks[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
    verify_signature(r);
    let body = r.json();
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "user_id",
        "device_id",
        "provider",
        "token",
        "channel",
        "seq",
        "inbox_id",
        "from",
        "preview",
        "ts",
    ] {
        assert!(keys.contains(k), "the webhook body has {k}: {body}");
    }
    assert_eq!(body["user_id"], bob.id);
    assert_eq!(body["device_id"], "laptop");
    assert_eq!(body["provider"], "webhook");
    assert_eq!(body["token"], "hook-token");
    assert_eq!(body["channel"], dm(&alice.id, &bob.id));
    assert_eq!(body["seq"], ack["seq"]);
    assert_eq!(body["inbox_id"], 1);
    assert_eq!(body["from"], alice.id);
    assert_eq!(body["preview"], want_preview.as_str());
    assert_eq!(body["ts"], ack["ts"]);
    assert_eq!(
        (body["count"].as_u64(), body["unread"].as_u64()),
        (Some(1), Some(1))
    );

    // FCM: a service-account JWT exchanged for an access token, then messages:send with it.
    let fcm_seen = fcm
        .wait_for("the FCM send", |r| {
            r.iter().any(|r| r.path.contains("messages:send"))
        })
        .await;
    let token_req = fcm_seen
        .iter()
        .find(|r| r.path == "/token")
        .expect("a token request");
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&token_req.body)
        .into_owned()
        .collect();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[format!("{}/token", fcm.url())]);
    v.set_issuer(&[FCM_EMAIL]);
    let pem = std::fs::read(fixture("test-only-fcm-rsa.pub.pem")).unwrap();
    let claims = jsonwebtoken::decode::<Value>(
        &form["assertion"],
        &DecodingKey::from_rsa_pem(&pem).unwrap(),
        &v,
    )
    .expect("the assertion is signed by the service account's key")
    .claims;
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    let sends: Vec<&Recorded> = fcm_seen
        .iter()
        .filter(|r| r.path.contains("messages:send"))
        .collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(
        sends[0].path,
        format!("/v1/projects/{FCM_PROJECT}/messages:send")
    );
    assert_eq!(
        sends[0].header("authorization"),
        Some("Bearer test-access-token-1")
    );
    let m = &sends[0].json()["message"];
    assert_eq!(m["token"], "fcm-token");
    assert_eq!(m["notification"]["body"], want_preview.as_str());
    assert_eq!(m["data"]["inbox_id"], "1");
    assert_eq!(m["data"]["channel"], dm(&alice.id, &bob.id));

    // APNs: HTTP/2, an ES256 provider token, the topic and push type headers.
    let apns_seen = apns.wait_for("the APNs push", |r| !r.is_empty()).await;
    let r = &apns_seen[0];
    assert_eq!(
        r.version,
        http::Version::HTTP_2,
        "APNs is spoken over HTTP/2"
    );
    assert_eq!(r.path, "/3/device/apns-token%2F%2Bx");
    assert_eq!(r.header("apns-topic"), Some(APNS_TOPIC));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    let jwt = r
        .header("authorization")
        .and_then(|a| a.strip_prefix("bearer "))
        .expect("authorization: bearer <provider token>");
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::ES256, Some(APNS_KEY_ID))
    );
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[APNS_TEAM]);
    v.set_required_spec_claims(&["iss"]);
    v.validate_exp = false;
    let pem = std::fs::read(fixture("test-only-apns.pub.pem")).unwrap();
    jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_ec_pem(&pem).unwrap(), &v)
        .expect("the provider token is signed by the APNs key");
    let payload = r.json();
    assert_eq!(payload["aps"]["alert"]["body"], want_preview.as_str());
    assert_eq!(payload["aps"]["badge"], 1);
    assert_eq!(payload["parley"]["inbox_id"], 1);

    // Exactly one each: once the outbox is empty, nothing more arrives.
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
    for p in ["webhook", "fcm", "apns"] {
        wait_metric(
            &node,
            &format!("parley_push_sent_total{{provider=\"{p}\"}}"),
            1.0,
        )
        .await;
    }
    assert_eq!(hook.requests().len(), 1);
    assert_eq!(fcm.to("/v1/").len(), 1);
    assert_eq!(apns.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_tokens_remove_the_registration_standin_fcm_apns_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let fcm = StandIn::start(|r| {
        if r.path == "/token" {
            (200, json!({"access_token": "t", "expires_in": 3600}).to_string())
        } else {
            (404, json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}).to_string())
        }
    })
    .await;
    let apns = StandIn::start(|_| {
        (
            410,
            json!({"reason": "Unregistered", "timestamp": 1}).to_string(),
        )
    })
    .await;
    let args = all_providers_args(dir.path(), &hook, &fcm, &apns, 50);
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "laptop").await;
    node.login("bob", "tablet").await;
    node.login("bob", "phone").await;
    register(&node, &bob, "laptop", "webhook", "hook-token").await;
    register(&node, &bob, "tablet", "fcm", "stale-fcm").await;
    register(&node, &bob, "phone", "apns", "stale-apns").await;

    send(&node, &alice, &bob.id, "m1", "one").await;
    // The registrations vanish from the device list.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = node
            .call("GET", "/v1/devices", Some(&bob.token), None)
            .await;
        let push_of = |d: &str| {
            v["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["device_id"] == d)
                .unwrap()["push"]
                .clone()
        };
        if push_of("tablet").is_null() && push_of("phone").is_null() {
            assert_eq!(
                push_of("laptop"),
                json!({"provider": "webhook", "token": "hook-token"})
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gone registrations were not removed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_metric(&node, "parley_push_dropped_total{provider=\"fcm\"}", 1.0).await;
    wait_metric(&node, "parley_push_dropped_total{provider=\"apns\"}", 1.0).await;

    // The next message reaches only the device still registered.
    send(&node, &alice, &bob.id, "m2", "two").await;
    hook.wait_for("the second webhook push", |r| r.len() == 2)
        .await;
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
    assert_eq!(fcm.to("/v1/").len(), 1, "no FCM send after UNREGISTERED");
    assert_eq!(apns.requests().len(), 1, "no APNs send after 410");
}

#[test]
fn an_incomplete_apns_setup_stops_the_node_naming_the_missing_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-node"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--push-apns-key")
        .arg(fixture("test-only-apns-AuthKey.p8"))
        .args([
            "--push-apns-key-id",
            APNS_KEY_ID,
            "--push-apns-team-id",
            APNS_TEAM,
        ])
        .output()
        .expect("run chat-node");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--push-apns-topic"), "{stderr}");
}
