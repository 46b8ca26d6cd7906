//! Pushes of timeline items, through a local stand-in for the webhook receiver (the test's
//! name says "standin"): edits and reactions do not push, a deleted message's text is never
//! pushed, and a system item pushes only the member it concerns.

mod common;
mod push_support;

use common::dm;
use parley_testkit::standin::{Recorded, StandIn};
use push_support::*;
use serde_json::{Value, json};

fn bodies(recorded: &[Recorded]) -> Vec<Value> {
    recorded.iter().map(Recorded::json).collect()
}

fn with_coalesce(mut args: Vec<String>, ms: u32) -> Vec<String> {
    args.extend(["--push-coalesce-ms".to_owned(), ms.to_string()]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_reactions_do_not_push_and_system_items_push_whom_they_concern_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let args = with_coalesce(webhook_args(dir.path(), &hook), 50);
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let carol = node.user("carol", "phone").await;
    register(&node, &bob, "phone", "webhook", "bob-token").await;
    register(&node, &carol, "phone", "webhook", "carol-token").await;
    let ch = dm(&alice.id, &bob.id);

    send(&node, &alice, &bob.id, "m1", "hello").await;
    hook.wait_for("bob's push of m1", |r| r.len() == 1).await;
    for body in [
        json!({"kind": "edit", "client_msg_id": "e1", "channel": ch, "seq": 1, "text": "hello!"}),
        json!({"kind": "reaction", "client_msg_id": "r1", "channel": ch, "seq": 1, "emoji": "👋"}),
    ] {
        let (status, ack) = node
            .call("POST", "/v1/messages", Some(&alice.token), Some(body))
            .await;
        assert_eq!(status, 200, "{ack}");
    }
    // A message after them: its push stands for it alone (the edit and the reaction wrote
    // no push), and is the next one.
    let ack = send(&node, &alice, &bob.id, "m2", "still there?").await;
    let pushes = hook.wait_for("bob's push of m2", |r| r.len() >= 2).await;
    let b = bodies(&pushes);
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(
        (b[1]["seq"].as_u64(), b[1]["count"].as_u64()),
        (ack["seq"].as_u64(), Some(1)),
        "{}",
        b[1]
    );
    assert_eq!(b[1]["preview"], "still there?");

    // A group change pushes only the member it concerns.
    let (_, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&alice.token),
            Some(json!({"name": "g", "members": [bob.id]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let (status, _) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&alice.token),
            Some(json!({"user_id": carol.id})),
        )
        .await;
    assert_eq!(status, 200);
    let pushes = hook
        .wait_for("carol's push of member_added", |r| r.len() >= 3)
        .await;
    let b = bodies(&pushes);
    assert_eq!(b[2]["user_id"], carol.id, "{b:?}");
    assert_eq!(b[2]["channel"], format!("g:{gid}"));
    assert!(
        b[2]["preview"].as_str().unwrap().contains("added"),
        "{}",
        b[2]
    );
    // A message to the group then pushes both, bob's standing for the message alone.
    let (status, ack) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&alice.token),
            Some(json!({"client_msg_id": "g1", "channel": format!("g:{gid}"), "text": "welcome"})),
        )
        .await;
    assert_eq!(status, 200);
    let pushes = hook
        .wait_for("the pushes of the group message", |r| r.len() >= 5)
        .await;
    let b = bodies(&pushes);
    assert_eq!(b.len(), 5, "no push for bob of the system item: {b:?}");
    for push in &b[3..] {
        assert_eq!(
            (push["seq"].as_u64(), push["count"].as_u64()),
            (ack["seq"].as_u64(), Some(1)),
            "{push}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_before_its_push_goes_out_is_pushed_without_its_text_standin_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    // A window long enough that the delete lands before the push is due.
    let args = with_coalesce(webhook_args(dir.path(), &hook), 3_000);
    let node = start(&dir.path().join("data"), &args);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    register(&node, &bob, "phone", "webhook", "bob-token").await;
    let ch = dm(&alice.id, &bob.id);
    send(&node, &alice, &bob.id, "m1", "the launch code is 1234").await;
    let (status, ack) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&alice.token),
            Some(json!({"kind": "delete", "client_msg_id": "d1", "channel": ch, "seq": 1})),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    let pushes = hook.wait_for("bob's push", |r| !r.is_empty()).await;
    let body = pushes[0].json();
    assert_eq!(body["seq"], 1);
    assert_eq!(
        body["preview"], "",
        "a deleted message's text is never pushed: {body}"
    );
    assert!(!String::from_utf8_lossy(&pushes[0].body).contains("1234"));
}
