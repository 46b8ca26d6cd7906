//! What the push tests share: the stand-in providers' flags, the test-only keys, signature
//! checks, registrations and metrics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use parley_testkit::node::{Node, User};
use parley_testkit::standin::{Recorded, StandIn};
use serde_json::{Value, json};
use sha2::Sha256;

pub const SECRET: &str = "test-only-push-secret-0123456789";
pub const FCM_PROJECT: &str = "parley-test";
pub const FCM_EMAIL: &str = "pusher@parley-test.iam.gserviceaccount.com";
pub const APNS_KEY_ID: &str = "TESTKEY123";
pub const APNS_TEAM: &str = "TESTTEAM42";
pub const APNS_TOPIC: &str = "dev.parley.test";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The webhook secret in a file (with the trailing newline the flag ignores).
pub fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("push-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

pub fn webhook_args(dir: &Path, hook: &StandIn) -> Vec<String> {
    vec![
        "--push-webhook".into(),
        format!("{}/hook", hook.url()),
        "--push-secret-file".into(),
        secret_file(dir).display().to_string(),
    ]
}

pub fn start(dir: &Path, args: &[String]) -> Node {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start_in(dir, &args)
}

pub fn verify_signature(r: &Recorded) {
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

pub async fn register(node: &Node, user: &User, device: &str, provider: &str, token: &str) {
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
pub async fn metric(node: &Node, sample: &str) -> f64 {
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
pub async fn wait_metric(node: &Node, sample: &str, want: f64) {
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
pub async fn send(node: &Node, from: &User, to: &str, cmid: &str, text: &str) -> Value {
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

/// Flags for all three providers pointing at the stand-ins: the webhook, FCM (a
/// service-account file in `dir` naming the stand-in's token endpoint) and APNs.
pub fn all_providers_args(
    dir: &Path,
    hook: &StandIn,
    fcm: &StandIn,
    apns: &StandIn,
    coalesce_ms: u32,
) -> Vec<String> {
    let credentials = dir.join("fcm.json");
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
    let mut args = webhook_args(dir, hook);
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
            &coalesce_ms.to_string(),
        ]
        .map(String::from),
    );
    args
}
