//! Read markers and unread counts on a real node with real clients: the `read` frame and
//! `POST /v1/channels/{channel}/read`, markers that never move back and survive a crash
//! once answered, `read` frames to every member's devices, `GET /v1/channels` (newest
//! activity first, unread counts that ignore edits and reactions) and
//! `GET /v1/channels/{channel}/reads`.

mod common;

use std::time::Duration;

use common::{Node, User, dm};
use serde_json::{Value, json};

async fn channels(node: &Node, user: &User) -> Vec<Value> {
    let (status, body) = node
        .call("GET", "/v1/channels", Some(&user.token), None)
        .await;
    assert_eq!(status, 200, "channels: {body}");
    body["channels"].as_array().unwrap().clone()
}

async fn entry(node: &Node, user: &User, channel: &str) -> Value {
    channels(node, user)
        .await
        .into_iter()
        .find(|c| c["channel"] == channel)
        .unwrap_or_else(|| panic!("{channel} is not in the channel list"))
}

async fn reads(node: &Node, user: &User, channel: &str) -> Vec<(String, u64)> {
    let (status, body) = node
        .call(
            "GET",
            &format!("/v1/channels/{channel}/reads"),
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "reads: {body}");
    let mut out: Vec<(String, u64)> = body["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn markers_move_forward_only_are_announced_and_unread_counts_ignore_edits_and_reactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_in(dir.path(), &[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let bob_laptop = node.login("bob", "laptop").await;
    let ch = dm(&alice.id, &bob.id);
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    let mut b2 = node.ws(&bob_laptop).await;
    for c in [&mut a, &mut b, &mut b2] {
        c.ready().await;
    }

    for i in 1..=3 {
        a.say(("to", &bob.id), &format!("m{i}"), &format!("message {i}"))
            .await;
    }
    let e = entry(&node, &bob, &ch).await;
    assert_eq!(
        e,
        json!({"channel": ch, "kind": "direct", "peer": alice.id, "last_seq": 3, "last_ts": e["last_ts"], "read_seq": 0, "unread": 3})
    );
    // The sender's own messages move their marker; they are never unread.
    let mine = entry(&node, &alice, &ch).await;
    assert_eq!(
        (mine["read_seq"].as_u64(), mine["unread"].as_u64()),
        (Some(3), Some(0))
    );

    // Edits and reactions are items (last_seq moves) but not unread.
    a.acked(
        json!({"type": "edit", "client_msg_id": "e1", "channel": ch, "seq": 1, "text": "first"}),
    )
    .await;
    a.acked(
        json!({"type": "react", "client_msg_id": "r1", "channel": ch, "seq": 2, "emoji": "👍"}),
    )
    .await;
    let e = entry(&node, &bob, &ch).await;
    assert_eq!(
        (e["last_seq"].as_u64(), e["unread"].as_u64()),
        (Some(5), Some(3)),
        "{e}"
    );

    // Bob reads up to 2: every device of every member hears it (his other one too), and
    // what is left unread is message 3 (the edit and the reaction do not count).
    b.send(json!({"type": "read", "channel": ch, "seq": 2, "req": "r"}))
        .await;
    for (client, who) in [
        (&mut a, "alice"),
        (&mut b2, "bob's laptop"),
        (&mut b, "bob's phone"),
    ] {
        let frame = client
            .until(&format!("{who}'s read frame"), |v| v["type"] == "read")
            .await;
        assert_eq!(
            frame,
            json!({"type": "read", "channel": ch, "user": bob.id, "seq": 2})
        );
    }
    let e = entry(&node, &bob, &ch).await;
    assert_eq!(
        (e["read_seq"].as_u64(), e["unread"].as_u64()),
        (Some(2), Some(1)),
        "{e}"
    );

    // A smaller seq is ignored and announces nothing.
    let (status, _) = node
        .call(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(&bob.token),
            Some(json!({"seq": 1})),
        )
        .await;
    assert_eq!(status, 204);
    let quiet = a.drain(Duration::from_millis(300)).await;
    assert!(
        quiet.iter().all(|v| v["type"] != "read"),
        "a marker that did not move is not announced: {quiet:?}"
    );
    assert_eq!(
        reads(&node, &bob, &ch).await,
        sorted(vec![(alice.id.clone(), 5), (bob.id.clone(), 2)])
    );

    // A seq past the newest is taken as the newest.
    let (status, _) = node
        .call(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(&bob.token),
            Some(json!({"seq": 999})),
        )
        .await;
    assert_eq!(status, 204);
    let frame = a
        .until("alice's second read frame", |v| v["type"] == "read")
        .await;
    assert_eq!(frame["seq"], 5);
    let e = entry(&node, &bob, &ch).await;
    assert_eq!(
        (e["read_seq"].as_u64(), e["unread"].as_u64()),
        (Some(5), Some(0))
    );

    // Acked means durable: a crash right after keeps the marker.
    node.kill();
    let node = Node::start_in(dir.path(), &[]);
    let bob = node.login("bob", "phone").await;
    let e = entry(&node, &bob, &ch).await;
    assert_eq!(
        (
            e["read_seq"].as_u64(),
            e["unread"].as_u64(),
            e["last_seq"].as_u64()
        ),
        (Some(5), Some(0), Some(5))
    );
}

fn sorted(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
    v.sort();
    v
}

#[tokio::test]
async fn the_channel_list_puts_the_newest_activity_first_and_counts_system_items() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let carol = node.user("carol", "phone").await;
    let mut a = node.ws(&alice).await;
    a.say(("to", &bob.id), "m1", "hi bob").await;
    let (_, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&alice.token),
            Some(json!({"name": "team", "members": [bob.id]})),
        )
        .await;
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let gch = group["channel"].as_str().unwrap().to_owned();
    assert!(
        channels(&node, &bob)
            .await
            .iter()
            .all(|c| c["channel"] != gch.as_str()),
        "a group without items is not listed"
    );
    // Make sure the group's item is later than the message.
    tokio::time::sleep(Duration::from_millis(5)).await;
    a.say(("channel", &gch), "g1", "hello team").await;
    let list = channels(&node, &bob).await;
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0]["channel"],
        gch.as_str(),
        "newest activity first: {list:?}"
    );
    assert_eq!(
        (
            list[0]["kind"].as_str(),
            list[0]["group_id"].as_str(),
            list[0]["name"].as_str()
        ),
        (Some("group"), Some(gid.as_str()), Some("team"))
    );
    assert!(list[0].get("peer").is_none());
    assert_eq!(list[1]["kind"], "direct");

    // Carol is added: the system item is her first, and it counts as unread.
    node.call(
        "POST",
        &format!("/v1/groups/{gid}/members"),
        Some(&alice.token),
        Some(json!({"user_id": carol.id})),
    )
    .await;
    let e = entry(&node, &carol, &gch).await;
    assert_eq!(
        (
            e["last_seq"].as_u64(),
            e["unread"].as_u64(),
            e["read_seq"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    // Bob has one unread message and the system item.
    assert_eq!(entry(&node, &bob, &gch).await["unread"], 2);
    // A rename shows in the list.
    node.call(
        "PATCH",
        &format!("/v1/groups/{gid}"),
        Some(&alice.token),
        Some(json!({"name": "crew"})),
    )
    .await;
    assert_eq!(entry(&node, &carol, &gch).await["name"], "crew");
    // Bob leaves: the group is no longer his to list.
    node.call(
        "DELETE",
        &format!("/v1/groups/{gid}/members/{}", bob.id),
        Some(&bob.token),
        None,
    )
    .await;
    assert!(
        channels(&node, &bob)
            .await
            .iter()
            .all(|c| c["channel"] != gch.as_str())
    );
    let marks = reads(&node, &carol, &gch).await;
    assert_eq!(marks.len(), 2, "the members now: {marks:?}");
}

#[tokio::test]
async fn only_members_read_and_a_marker_short_of_the_newest_leaves_the_rest_unread() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let eve = node.user("eve", "phone").await;
    let ch = dm(&alice.id, &bob.id);
    let mut a = node.ws(&alice).await;
    for i in 1..=6 {
        a.say(("to", &bob.id), &format!("m{i}"), "x").await;
        // A reaction after each message: unread counts skip them.
        a.acked(json!({"type": "react", "client_msg_id": format!("r{i}"), "channel": ch, "seq": 2 * i - 1, "emoji": "👀"}))
            .await;
    }
    let (status, body) = node
        .call(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(&eve.token),
            Some(json!({"seq": 1})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let mut e = node.ws(&eve).await;
    e.send(json!({"type": "read", "channel": ch, "seq": 1, "req": "x"}))
        .await;
    let err = e.until("eve's error", |v| v["type"] == "error").await;
    assert_eq!(
        (err["code"].as_str(), err["req"].as_str()),
        (Some("forbidden"), Some("x"))
    );
    let (status, _) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/reads"),
            Some(&eve.token),
            None,
        )
        .await;
    assert_eq!(status, 403);

    assert_eq!(entry(&node, &bob, &ch).await["unread"], 6);
    for (seq, unread) in [(3, 4), (4, 4), (8, 2), (11, 0)] {
        let (status, _) = node
            .call(
                "POST",
                &format!("/v1/channels/{ch}/read"),
                Some(&bob.token),
                Some(json!({"seq": seq})),
            )
            .await;
        assert_eq!(status, 204);
        let got = entry(&node, &bob, &ch).await;
        assert_eq!(
            (got["read_seq"].as_u64(), got["unread"].as_u64()),
            (Some(seq), Some(unread)),
            "read up to {seq}: {got}"
        );
    }
}
