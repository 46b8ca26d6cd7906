//! Push notifications end to end: a real `chat-node` process pushes offline devices through
//! local stand-ins for the webhook receiver, FCM (token endpoint and `messages:send`) and
//! APNs (HTTP/2 over h2c on a loopback port), since the real FCM and APNs cannot be reached
//! here; test names say "standin" for that. Keys under tests/fixtures/ are test-only.

mod common;
use parley_testkit::standin;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Node, User, dm};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::Sha256;
use standin::{Recorded, StandIn};

const SECRET: &str = "test-only-push-secret-0123456789";
const FCM_PROJECT: &str = "parley-test";
const FCM_EMAIL: &str = "pusher@parley-test.iam.gserviceaccount.com";
const APNS_KEY_ID: &str = "TESTKEY123";
const APNS_TEAM: &str = "TESTTEAM42";
const APNS_TOPIC: &str = "dev.parley.test";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The webhook secret in a file (with the trailing newline the flag ignores).
fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("push-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

fn webhook_args(dir: &Path, hook: &StandIn) -> Vec<String> {
    vec![
        "--push-webhook".into(),
        format!("{}/hook", hook.url()),
        "--push-secret-file".into(),
        secret_file(dir).display().to_string(),
    ]
}

fn start(dir: &Path, args: &[String]) -> Node {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start_in(dir, &args)
}

fn verify_signature(r: &Recorded) {
    let header = r
        .header("x-parley-signature")
        .expect("the webhook carries X-Parley-Signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        header, want,
        "the signature is the HMAC-SHA256 of the exact body"
    );
}

async fn register(node: &Node, user: &User, device: &str, provider: &str, token: &str) {
    let (status, body) = node
        .call(
            "PUT",
            &format!("/v1/devices/{device}/push"),
            Some(&user.token),
            Some(json!({"provider": provider, "token": token})),
        )
        .await;
    assert_eq!(status, 204, "register {device} for {provider}: {body}");
}

/// A sample's value on `/metrics` (0 when absent).
async fn metric(node: &Node, sample: &str) -> f64 {
    let text = node
        .http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Wait (at most 30 s) until the sample reaches `want`.
async fn wait_metric(node: &Node, sample: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = metric(node, sample).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {sample} = {want} (it is {got})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send over HTTP (a full equal of the WebSocket) and return the ack.
async fn send(node: &Node, from: &User, to: &str, cmid: &str, text: &str) -> Value {
    let (status, ack) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&from.token),
            Some(json!({"to": to, "client_msg_id": cmid, "text": text})),
        )
        .await;
    assert_eq!(status, 200, "send {cmid}: {ack}");
    ack
}

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
    let credentials = dir.path().join("fcm.json");
    std::fs::write(
        &credentials,
        json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "client_email": FCM_EMAIL,
            "private_key": std::fs::read_to_string(fixture("test-only-fcm-rsa.key.pem")).unwrap(),
            "token_uri": format!("{}/token", fcm.url()),
        })
        .to_string(),
    )
    .unwrap();
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(
        [
            "--push-fcm-credentials",
            &credentials.display().to_string(),
            "--push-fcm-url",
            &fcm.url(),
            "--push-apns-key",
            &fixture("test-only-apns-AuthKey.p8").display().to_string(),
            "--push-apns-key-id",
            APNS_KEY_ID,
            "--push-apns-team-id",
            APNS_TEAM,
            "--push-apns-topic",
            APNS_TOPIC,
            "--push-apns-url",
            &apns.url(),
            "--push-coalesce-ms",
            "100",
        ]
        .map(String::from),
    );
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
async fn an_online_recipient_gets_no_push_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(["--push-coalesce-ms", "100"].map(String::from));
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let carol = node.user("carol", "phone").await;
    node.login("bob", "laptop").await;
    // Bob's laptop has a registration, but his phone is online: no push to any of his devices.
    register(&node, &bob, "laptop", "webhook", "bob-laptop").await;
    register(&node, &carol, "phone", "webhook", "carol-phone").await;
    let mut bob_ws = node.ws(&bob).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    send(&node, &alice, &bob.id, "to-bob", "are you there?").await;
    bob_ws
        .until("bob's live message", |v| v["type"] == "message")
        .await;
    send(&node, &alice, &carol.id, "to-carol", "and you?").await;

    // Carol's push is due after bob's entry, so once it arrives bob's was decided.
    hook.wait_for("carol's push", |r| {
        r.iter().any(|r| r.json()["user_id"] == carol.id)
    })
    .await;
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
    let seen: Vec<Recorded> = hook.requests();
    assert!(
        seen.iter().all(|r| r.json()["user_id"] != bob.id),
        "bob is online and must get no push: {:?}",
        seen.iter().map(|r| r.json()).collect::<Vec<_>>()
    );
    assert_eq!(seen.len(), 1);
    verify_signature(&seen[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_twice_then_200_is_delivered_exactly_once_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let hook = StandIn::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            (503, "busy".into())
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(["--push-coalesce-ms", "50", "--push-retry-base-ms", "50"].map(String::from));
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    register(&node, &bob, "phone", "webhook", "bob-phone").await;
    send(&node, &alice, &bob.id, "m1", "retry me").await;

    let seen = hook.wait_for("three tries", |r| r.len() >= 3).await;
    assert_eq!(
        seen.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503, 200]
    );
    for r in &seen {
        verify_signature(r);
        assert_eq!(r.body, seen[0].body, "every try carries the same push");
    }
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
    wait_metric(&node, "parley_push_sent_total{provider=\"webhook\"}", 1.0).await;
    assert_eq!(
        metric(&node, "parley_push_retried_total{provider=\"webhook\"}").await,
        2.0
    );
    assert_eq!(
        metric(&node, "parley_push_dropped_total{provider=\"webhook\"}").await,
        0.0
    );
    assert_eq!(hook.requests().len(), 3, "delivered once, not again");
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
    let credentials = dir.path().join("fcm.json");
    std::fs::write(
        &credentials,
        json!({"project_id": FCM_PROJECT, "client_email": FCM_EMAIL,
            "private_key": std::fs::read_to_string(fixture("test-only-fcm-rsa.key.pem")).unwrap(),
            "token_uri": format!("{}/token", fcm.url())})
        .to_string(),
    )
    .unwrap();
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(
        [
            "--push-fcm-credentials",
            &credentials.display().to_string(),
            "--push-fcm-url",
            &fcm.url(),
            "--push-apns-key",
            &fixture("test-only-apns-AuthKey.p8").display().to_string(),
            "--push-apns-key-id",
            APNS_KEY_ID,
            "--push-apns-team-id",
            APNS_TEAM,
            "--push-apns-topic",
            APNS_TOPIC,
            "--push-apns-url",
            &apns.url(),
            "--push-coalesce-ms",
            "50",
        ]
        .map(String::from),
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_due_at_a_sigkill_are_delivered_after_restart_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let status = Arc::new(AtomicU16::new(503));
    let s = status.clone();
    let hook = StandIn::start(move |_| (s.load(Ordering::SeqCst), "{}".into())).await;
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(["--push-coalesce-ms", "300"].map(String::from));
    let data = dir.path().join("data");
    let mut node = start(&data, &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    register(&node, &bob, "phone", "webhook", "bob-phone").await;

    // m1 is due and failing (a retry job in the store); m2 is acked just before the kill.
    send(&node, &alice, &bob.id, "m1", "first").await;
    hook.wait_for("a failed try of m1", |r| !r.is_empty()).await;
    send(&node, &alice, &bob.id, "m2", "second").await;
    node.kill();
    status.store(200, Ordering::SeqCst);

    let node = start(&data, &args);
    let delivered = |r: &[Recorded]| -> BTreeSet<u64> {
        r.iter()
            .filter(|r| r.status == 200)
            .map(|r| r.json()["seq"].as_u64().unwrap())
            .collect()
    };
    let seen = hook
        .wait_for("m1 and m2 delivered after the restart", |r| {
            delivered(r).is_superset(&BTreeSet::from([1, 2]))
        })
        .await;
    for r in &seen {
        verify_signature(r);
        assert_eq!(r.json()["user_id"], bob.id);
    }
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_20_to_an_offline_user_coalesces_into_a_few_pushes_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(["--push-coalesce-ms", "2000"].map(String::from));
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    register(&node, &bob, "phone", "webhook", "bob-phone").await;

    // Twenty sends pipelined on one socket, then their acks.
    let mut ws = node.ws(&alice).await;
    for i in 0..20 {
        ws.send(json!({"type": "send", "to": bob.id, "client_msg_id": format!("b{i}"), "text": format!("burst {i}")}))
            .await;
    }
    let mut acks = 0;
    while acks < 20 {
        if ws.next().await["type"] == "ack" {
            acks += 1;
        }
    }
    let counted = |r: &[Recorded]| {
        r.iter()
            .map(|r| r.json()["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    let seen = hook
        .wait_for("pushes covering all 20 messages", |r| counted(r) >= 20)
        .await;
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
    let seen = if seen.len() < hook.requests().len() {
        hook.requests()
    } else {
        seen
    };
    assert_eq!(
        counted(&seen),
        20,
        "each message is counted in exactly one push"
    );
    assert!(
        seen.len() <= 4,
        "20 messages within the coalescing window make a few pushes, not {}",
        seen.len()
    );
    let last = seen
        .iter()
        .max_by_key(|r| r.json()["inbox_id"].as_u64())
        .unwrap()
        .json();
    assert_eq!(last["inbox_id"], 20);
    assert_eq!(
        last["unread"], 20,
        "unread is the inbox head minus the device's cursor (0)"
    );
    assert_eq!(last["preview"], "burst 19", "the newest message's preview");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_pushes_each_offline_member_once_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let mut args = webhook_args(dir.path(), &hook);
    args.extend(["--push-coalesce-ms", "100"].map(String::from));
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let carol = node.user("carol", "phone").await;
    let dave = node.user("dave", "phone").await;
    for u in [&alice, &bob, &carol, &dave] {
        register(
            &node,
            u,
            "phone",
            "webhook",
            &format!("{}-phone", u.username),
        )
        .await;
    }
    let (status, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&alice.token),
            Some(json!({"name": "team", "members": [bob.id, carol.id, dave.id]})),
        )
        .await;
    assert_eq!(status, 201);
    let mut dave_ws = node.ws(&dave).await; // online: not pushed
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&alice.token),
            Some(json!({"channel": group["channel"], "client_msg_id": "g1", "text": "hi team"})),
        )
        .await;
    assert_eq!(status, 200);
    dave_ws
        .until("dave's live message", |v| v["type"] == "message")
        .await;
    hook.wait_for("bob's and carol's pushes", |r| r.len() >= 2)
        .await;
    wait_metric(&node, "parley_push_outbox_depth", 0.0).await;
    let mut users: Vec<String> = hook
        .requests()
        .iter()
        .map(|r| {
            verify_signature(r);
            assert_eq!(r.json()["channel"], group["channel"]);
            r.json()["user_id"].as_str().unwrap().to_owned()
        })
        .collect();
    users.sort();
    let mut want = vec![bob.id.clone(), carol.id.clone()];
    want.sort();
    assert_eq!(
        users, want,
        "each offline member once; not the sender, not online dave"
    );
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
