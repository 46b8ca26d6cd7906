//! Blocking on a real node with real clients: in the one-on-one channel, in groups (adding
//! is refused, messages flow as before), and in presence (not shared either way).

mod common;

use std::time::Duration;

use common::{Client, Node, User, dm};
use serde_json::json;

async fn block(node: &Node, user: &User, target: &str, method: &str) -> u16 {
    node.call(
        method,
        &format!("/v1/blocks/{target}"),
        Some(&user.token),
        None,
    )
    .await
    .0
}

async fn presence_of(client: &mut Client, user: &str, status: &str) {
    client
        .until(&format!("presence {status} of {user}"), |v| {
            v["type"] == "presence" && v["user"] == user && v["status"] == status
        })
        .await;
}

#[tokio::test]
async fn a_blocked_user_cannot_write_to_the_blocker_or_add_them_to_groups() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let carol = node.user("carol", "phone").await;
    let ch = dm(&alice.id, &bob.id);
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    a.ready().await;
    assert_eq!(b.say(("to", &alice.id), "before", "hi").await["seq"], 1);
    let (_, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&bob.token),
            Some(json!({"name": "g", "members": [carol.id]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap().to_owned();

    assert_eq!(block(&node, &alice, &bob.id, "PUT").await, 204);
    assert_eq!(
        block(&node, &alice, &bob.id, "PUT").await,
        204,
        "blocking twice is fine"
    );
    let (_, list) = node
        .call("GET", "/v1/blocks", Some(&alice.token), None)
        .await;
    assert_eq!(list, json!({"blocks": [bob.id]}));
    let (_, list) = node.call("GET", "/v1/blocks", Some(&bob.token), None).await;
    assert_eq!(list, json!({"blocks": []}), "bob blocks no one");

    // Bob's sends in the one-on-one channel are refused, over WebSocket and HTTP.
    let refused = b.say(("to", &alice.id), "after", "hello?").await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    assert_eq!(refused["client_msg_id"], "after");
    let (status, _) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&bob.token),
            Some(json!({"client_msg_id": "h", "channel": ch, "text": "x"})),
        )
        .await;
    assert_eq!(status, 403);
    let react = b
        .acked(
            json!({"type": "react", "client_msg_id": "r", "channel": ch, "seq": 1, "emoji": "👍"}),
        )
        .await;
    assert_eq!(react["code"], "forbidden");
    // Alice still writes to bob, and bob may still take his own messages back.
    assert_eq!(a.say(("to", &bob.id), "a1", "bye").await["seq"], 2);
    b.until("alice's message", |v| {
        v["type"] == "message" && v["seq"] == 2
    })
    .await;
    let delete = b
        .acked(json!({"type": "delete", "client_msg_id": "d", "channel": ch, "seq": 1}))
        .await;
    assert_eq!(delete["type"], "ack", "{delete}");

    // Bob cannot bring alice into a group, new or old; others can.
    let (status, body) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&bob.token),
            Some(json!({"name": "trap", "members": [alice.id]})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&bob.token),
            Some(json!({"user_id": alice.id})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&carol.token),
            Some(json!({"user_id": alice.id})),
        )
        .await;
    assert_eq!(status, 200, "carol adds alice");
    // In a group they share, messages flow as before.
    let gch = format!("g:{gid}");
    let ack = b.say(("channel", &gch), "g1", "hi all").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    a.until("bob's group message", |v| {
        v["type"] == "message" && v["client_msg_id"] == "g1"
    })
    .await;

    // Unblocked, bob writes again.
    assert_eq!(block(&node, &alice, &bob.id, "DELETE").await, 204);
    assert_eq!(
        b.say(("to", &alice.id), "again", "sorry").await["type"],
        "ack"
    );
    let (_, list) = node
        .call("GET", "/v1/blocks", Some(&alice.token), None)
        .await;
    assert_eq!(list, json!({"blocks": []}));

    // Bad targets.
    assert_eq!(block(&node, &alice, &alice.id, "PUT").await, 400);
    assert_eq!(block(&node, &alice, "nobody", "PUT").await, 404);
}

#[tokio::test]
async fn presence_is_not_shared_either_way_while_one_blocks_the_other() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    node.befriend(&alice, &bob).await;
    let mut a = node.ws(&alice).await;
    presence_of(&mut a, &bob.id, "offline").await;
    let mut b = node.ws(&bob).await;
    presence_of(&mut b, &alice.id, "online").await;
    presence_of(&mut a, &bob.id, "online").await;

    // Bob blocks alice: each stops seeing the other.
    assert_eq!(block(&node, &bob, &alice.id, "PUT").await, 204);
    presence_of(&mut a, &bob.id, "offline").await;
    presence_of(&mut b, &alice.id, "offline").await;
    for user in [&alice, &bob] {
        let (_, contacts) = node
            .call("GET", "/v1/contacts", Some(&user.token), None)
            .await;
        let c = &contacts["contacts"][0];
        assert_eq!(
            (c["status"].clone(), c["last_seen"].clone()),
            (json!(null), json!(null)),
            "{c}"
        );
        assert_eq!(c["mutual"], true);
        assert_eq!(c["blocked"], user.id == bob.id, "{c}");
    }
    // Coming and going tells the other nothing; a new socket hears nothing of the other.
    drop(a);
    let mut a = node.ws(&alice).await;
    let seen = b.drain(Duration::from_millis(300)).await;
    assert!(seen.iter().all(|v| v["type"] != "presence"), "{seen:?}");
    let seen = a.drain(Duration::from_millis(300)).await;
    assert!(seen.iter().all(|v| v["type"] != "presence"), "{seen:?}");

    // Unblocked: presence flows again.
    assert_eq!(block(&node, &bob, &alice.id, "DELETE").await, 204);
    presence_of(&mut a, &bob.id, "online").await;
    presence_of(&mut b, &alice.id, "online").await;
}
