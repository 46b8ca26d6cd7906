//! Push notifications end to end, delivery semantics: nobody online is pushed, retries,
//! a SIGKILL with pushes due, coalescing, groups. A real `chat-node` pushes through a local
//! stand-in webhook receiver (test names say "standin"). The providers themselves (FCM,
//! APNs, signatures, gone tokens) are in push.rs.

mod push_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use parley_testkit::standin::{Recorded, StandIn};
use push_support::*;
use serde_json::json;

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
