//! Presence between mutual contacts, typing, heartbeat timeout, devices, push registration,
//! assignment and the operational endpoints, on a real node.

mod common;

use std::time::Duration;

use common::{Node, dm};
use serde_json::json;

#[tokio::test]
async fn presence_flows_between_mutual_contacts_only() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let eve = node.user("eve", "phone").await;
    node.befriend(&alice, &bob).await;
    // eve follows alice one way: she must hear nothing.
    assert_eq!(
        node.call(
            "PUT",
            &format!("/v1/contacts/{}", alice.id),
            Some(&eve.token),
            None
        )
        .await
        .0,
        204
    );

    let mut a = node.ws(&alice).await;
    let first = a
        .until("alice's snapshot of bob", |v| v["type"] == "presence")
        .await;
    assert_eq!(
        (first["user"].as_str(), first["status"].as_str()),
        (Some(bob.id.as_str()), Some("offline"))
    );
    assert!(first["last_seen"].is_null(), "bob was never online");

    let mut e = node.ws(&eve).await;
    let mut b = node.ws(&bob).await;
    let online = a
        .until("bob online", |v| {
            v["type"] == "presence" && v["user"] == bob.id
        })
        .await;
    assert_eq!(online["status"], "online");
    assert!(online["last_seen"].as_i64().unwrap() > 0);
    let snapshot = b
        .until("bob's snapshot of alice", |v| v["type"] == "presence")
        .await;
    assert_eq!(
        (snapshot["user"].as_str(), snapshot["status"].as_str()),
        (Some(alice.id.as_str()), Some("online"))
    );

    // A second device of bob changes nothing; closing one of two changes nothing.
    let bob2 = node.login("bob", "laptop").await;
    let mut b2 = node.ws(&bob2).await;
    b2.until("bob2's snapshot", |v| v["type"] == "presence")
        .await;
    drop(b2);
    let quiet = a.drain(Duration::from_millis(400)).await;
    assert!(
        quiet.iter().all(|v| v["type"] != "presence"),
        "no change, no presence frame: {quiet:?}"
    );

    // The last socket closes: offline, once, with a last_seen.
    drop(b);
    let offline = a
        .until("bob offline", |v| {
            v["type"] == "presence" && v["user"] == bob.id
        })
        .await;
    assert_eq!(offline["status"], "offline");
    assert!(offline["last_seen"].as_i64().unwrap() > 0);
    let after = a.drain(Duration::from_millis(400)).await;
    assert!(
        after.iter().all(|v| v["type"] != "presence"),
        "contacts hear of each change once: {after:?}"
    );

    let (_, contacts) = node
        .call("GET", "/v1/contacts", Some(&alice.token), None)
        .await;
    assert_eq!(contacts["contacts"][0]["status"], "offline");
    assert!(contacts["contacts"][0]["last_seen"].as_i64().unwrap() > 0);

    let heard = e.drain(Duration::from_millis(200)).await;
    assert!(
        heard.iter().all(|v| v["type"] != "presence"),
        "one-way contacts get no presence: {heard:?}"
    );
}

#[tokio::test]
async fn a_silent_device_goes_offline_after_the_heartbeat_timeout() {
    let node = Node::start(&["--heartbeat-timeout", "2"]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    node.befriend(&alice, &bob).await;
    let mut a = node.ws(&alice).await;
    a.until("snapshot", |v| v["type"] == "presence").await;
    let mut b = node.ws(&bob).await;
    a.until("bob online", |v| {
        v["type"] == "presence" && v["status"] == "online"
    })
    .await;

    // alice keeps heartbeating; bob says nothing and is cut.
    let keep_alive = async {
        for _ in 0..8 {
            a.send(json!({"type": "heartbeat"})).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        a
    };
    let (mut a, code) = tokio::join!(keep_alive, b.closed_with());
    assert_eq!(code, 1000, "heartbeat timeout closes normally");
    let offline = a
        .until("bob offline after the timeout", |v| {
            v["type"] == "presence" && v["user"] == bob.id
        })
        .await;
    assert_eq!(offline["status"], "offline");
}

#[tokio::test]
async fn typing_is_relayed_to_the_other_members_online() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    b.ready().await;
    let channel = dm(&alice.id, &bob.id);
    a.send(json!({"type": "typing", "channel": channel})).await;
    let t = b.until("typing", |v| v["type"] == "typing").await;
    assert_eq!(
        (t["channel"].as_str(), t["user"].as_str()),
        (Some(channel.as_str()), Some(alice.id.as_str()))
    );
    let own = a.drain(Duration::from_millis(200)).await;
    assert!(
        own.iter().all(|v| v["type"] != "typing"),
        "the typist does not hear themself"
    );
    let carol = node.user("carol", "phone").await;
    let mut c = node.ws(&carol).await;
    c.send(json!({"type": "typing", "channel": channel, "req": "t"}))
        .await;
    let err = c.until("typing refused", |v| v["type"] == "error").await;
    assert_eq!(
        (err["code"].as_str(), err["req"].as_str()),
        (Some("forbidden"), Some("t"))
    );
}

#[tokio::test]
async fn devices_push_registration_assign_and_health_endpoints() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let _laptop = node.login("alice", "laptop").await;
    let _a = node.ws(&alice).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, devices) = node
        .call("GET", "/v1/devices", Some(&alice.token), None)
        .await;
    assert_eq!(s, 200);
    let rows = devices["devices"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let phone = rows.iter().find(|d| d["device_id"] == "phone").unwrap();
    let laptop = rows.iter().find(|d| d["device_id"] == "laptop").unwrap();
    assert_eq!(
        (phone["online"].as_bool(), laptop["online"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(phone["cursor"], 0);

    let reg = json!({"provider": "webhook", "token": "tok-123"});
    assert_eq!(
        node.call(
            "PUT",
            "/v1/devices/laptop/push",
            Some(&alice.token),
            Some(reg.clone())
        )
        .await
        .0,
        204
    );
    assert_eq!(
        node.call(
            "PUT",
            "/v1/devices/nope/push",
            Some(&alice.token),
            Some(reg)
        )
        .await
        .0,
        404
    );
    let bad = json!({"provider": "carrier-pigeon", "token": "x"});
    assert_eq!(
        node.call(
            "PUT",
            "/v1/devices/laptop/push",
            Some(&alice.token),
            Some(bad)
        )
        .await
        .0,
        400
    );

    let (s, assign) = node
        .call("GET", "/v1/assign", Some(&alice.token), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(assign["ws_url"], format!("ws://{}/v1/ws", node.addr));
    assert!(!assign["node_id"].as_str().unwrap().is_empty());

    let page = node.http.get(node.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "the web client is served at /");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(node.call("GET", "/nothing-here", None, None).await.0, 404);
    assert_eq!(node.call("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(node.call("GET", "/readyz", None, None).await.0, 200);
    let metrics = node
        .http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "parley_connections",
        "parley_messages_sent_total",
        "parley_messages_delivered_total",
        "parley_send_latency_seconds",
        "parley_store_errors_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
}
