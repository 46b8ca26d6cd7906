//! Timeline items over real WebSockets and HTTP on a real node: edits, deletes, reactions,
//! replies and group events. Who may make each, what they may be about, idempotency, the
//! target's aggregate in history and sync, and gapless seqs and inbox ids across mixed
//! items.

mod common;

use common::{Client, Node, User, dm};
use serde_json::{Value, json};

fn edit(cmid: &str, channel: &str, seq: u64, text: &str) -> Value {
    json!({"type": "edit", "client_msg_id": cmid, "channel": channel, "seq": seq, "text": text})
}

fn delete(cmid: &str, channel: &str, seq: u64) -> Value {
    json!({"type": "delete", "client_msg_id": cmid, "channel": channel, "seq": seq})
}

fn react(cmid: &str, channel: &str, seq: u64, emoji: &str, remove: bool) -> Value {
    json!({"type": "react", "client_msg_id": cmid, "channel": channel, "seq": seq, "emoji": emoji, "remove": remove})
}

async fn history(node: &Node, user: &User, channel: &str) -> Vec<Value> {
    let (status, body) = node
        .call(
            "GET",
            &format!("/v1/channels/{channel}/messages?after_seq=0"),
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "history of {channel}: {body}");
    body["messages"].as_array().unwrap().clone()
}

async fn sync(node: &Node, user: &User) -> Vec<Value> {
    let (status, body) = node
        .call("GET", "/v1/sync?after=0", Some(&user.token), None)
        .await;
    assert_eq!(status, 200, "sync: {body}");
    body["items"].as_array().unwrap().clone()
}

fn assert_refused(answer: &Value, code: &str, what: &str) {
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some(code)),
        "{what}: {answer}"
    );
}

/// A live item on `client` of `kind` (absent: a plain message).
async fn live(client: &mut Client, kind: Option<&str>, what: &str) -> Value {
    client
        .until(what, |v| {
            v["type"] == "message" && v["kind"].as_str() == kind
        })
        .await
}

#[tokio::test]
async fn the_author_edits_anyone_reacts_and_history_shows_each_message_as_it_is_now() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    a.ready().await;
    b.ready().await;
    let ch = dm(&alice.id, &bob.id);

    let first = a.say(("to", &bob.id), "m1", "helo bob").await;
    assert_eq!(first["seq"], 1);
    live(&mut b, None, "bob's first message").await;

    // The author edits; the edit is an item of its own, delivered live like a message.
    let ack = a.acked(edit("e1", &ch, 1, "hello bob")).await;
    assert_eq!(
        (
            ack["type"].as_str(),
            ack["seq"].as_u64(),
            ack["inbox_id"].as_u64()
        ),
        (Some("ack"), Some(2), Some(2)),
        "{ack}"
    );
    let got = live(&mut b, Some("edit"), "bob's live edit").await;
    assert_eq!(
        (
            got["target_seq"].as_u64(),
            got["text"].as_str(),
            got["inbox_id"].as_u64()
        ),
        (Some(1), Some("hello bob"), Some(2))
    );
    // Sending the same edit again returns the first ack and stores nothing.
    assert_eq!(a.acked(edit("e1", &ch, 1, "hello bob")).await, ack);

    // Who may edit, and what.
    assert_refused(
        &b.acked(edit("e2", &ch, 1, "hijacked")).await,
        "forbidden",
        "bob edits alice's message",
    );
    assert_refused(
        &a.acked(edit("e3", &ch, 99, "x")).await,
        "not_found",
        "an edit of a missing seq",
    );
    assert_refused(
        &a.acked(edit("e4", &ch, 2, "x")).await,
        "bad_request",
        "an edit of an edit",
    );
    assert_refused(
        &a.acked(edit("e5", &ch, 1, "")).await,
        "bad_request",
        "an empty edit",
    );

    // Anyone in the channel reacts; reactions are listed in the order given.
    let r = b.acked(react("r1", &ch, 1, "👍", false)).await;
    assert_eq!(r["seq"], 3, "{r}");
    let got = live(&mut a, Some("reaction"), "alice's live reaction").await;
    assert_eq!(
        (
            got["target_seq"].as_u64(),
            got["text"].as_str(),
            got["from"].as_str()
        ),
        (Some(1), Some("👍"), Some(bob.id.as_str()))
    );
    assert_eq!(a.acked(react("r2", &ch, 1, "👍", false)).await["seq"], 4);
    assert_eq!(b.acked(react("r3", &ch, 1, "🎉", false)).await["seq"], 5);
    // Over HTTP: POST /v1/messages with a kind.
    let (status, r4) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&bob.token),
            Some(json!({"kind": "reaction", "client_msg_id": "r4", "channel": ch, "seq": 1, "emoji": "👍", "remove": true})),
        )
        .await;
    assert_eq!((status, r4["seq"].as_u64()), (200, Some(6)), "{r4}");
    assert_refused(
        &b.acked(react("r5", &ch, 1, "", false)).await,
        "bad_request",
        "an empty emoji",
    );
    assert_refused(
        &b.acked(react("r6", &ch, 2, "👍", false)).await,
        "bad_request",
        "a reaction to an edit",
    );

    let items = history(&node, &bob, &ch).await;
    assert_eq!(items.len(), 6, "one message and five items: {items:?}");
    let m = &items[0];
    assert_eq!(m["text"], "hello bob", "the latest text");
    assert_eq!(m["edited_at"], ack["ts"], "edited_at is the edit's time");
    assert_eq!(
        m["reactions"],
        json!({"👍": [alice.id], "🎉": [bob.id]}),
        "only the reactions in force"
    );
    assert!(m.get("kind").is_none() && m.get("deleted").is_none());
    let kinds: Vec<&str> = items[1..]
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["edit", "reaction", "reaction", "reaction", "reaction"]
    );
    assert_eq!(items[5]["remove"], true);
    // Sync shows the same aggregate, and the items in the inbox, gapless.
    let inbox = sync(&node, &alice).await;
    let ids: Vec<u64> = inbox
        .iter()
        .map(|v| v["inbox_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    assert_eq!(inbox[0]["reactions"], m["reactions"]);
}

#[tokio::test]
async fn a_delete_erases_the_text_of_the_message_and_its_edits_and_ends_its_changes() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    b.ready().await;
    let ch = dm(&alice.id, &bob.id);

    a.say(("to", &bob.id), "m1", "a secret").await;
    a.acked(edit("e1", &ch, 1, "a bigger secret")).await;
    b.acked(react("r1", &ch, 1, "😮", false)).await;
    assert_refused(
        &b.acked(delete("d0", &ch, 1)).await,
        "forbidden",
        "bob deletes alice's message in a one-on-one channel",
    );
    let ack = a.acked(delete("d1", &ch, 1)).await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(4))
    );
    let got = live(&mut b, Some("delete"), "bob's live delete").await;
    assert_eq!(
        (got["target_seq"].as_u64(), got["text"].as_str()),
        (Some(1), Some(""))
    );
    assert_eq!(a.acked(delete("d1", &ch, 1)).await, ack, "a resent delete");

    let items = history(&node, &bob, &ch).await;
    assert_eq!(items[0]["deleted"], true);
    assert_eq!(items[0]["text"], "", "the text is gone");
    assert!(items[0].get("reactions").is_none(), "{}", items[0]);
    assert!(items[0].get("edited_at").is_none(), "{}", items[0]);
    assert_eq!(items[1]["kind"], "edit");
    assert_eq!(items[1]["text"], "", "the edit's text is gone too");
    for v in sync(&node, &bob).await {
        let text = v["text"].as_str().unwrap();
        assert!(!text.contains("secret"), "nothing of the text is left: {v}");
    }
    // A deleted message takes no more changes.
    for (frame, what) in [
        (edit("e2", &ch, 1, "back"), "an edit of a deleted message"),
        (delete("d2", &ch, 1), "a second delete"),
        (
            react("r2", &ch, 1, "👍", false),
            "a reaction to a deleted message",
        ),
    ] {
        assert_refused(&a.acked(frame).await, "bad_request", what);
    }
}

#[tokio::test]
async fn in_a_group_the_owner_deletes_any_message_members_react_and_outsiders_cannot() {
    let node = Node::start(&[]);
    let owner = node.user("owner", "d").await;
    let member = node.user("member", "d").await;
    let other = node.user("other", "d").await;
    let outsider = node.user("outsider", "d").await;
    let (s, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&owner.token),
            Some(json!({"name": "crew", "members": [member.id, other.id]})),
        )
        .await;
    assert_eq!(s, 201);
    let ch = group["channel"].as_str().unwrap().to_owned();
    let mut o = node.ws(&owner).await;
    let mut m = node.ws(&member).await;
    let mut x = node.ws(&other).await;
    let mut out = node.ws(&outsider).await;

    assert_eq!(m.say(("channel", &ch), "m1", "one").await["seq"], 1);
    assert_eq!(x.say(("channel", &ch), "m2", "two").await["seq"], 2);
    assert_refused(
        &x.acked(delete("d1", &ch, 1)).await,
        "forbidden",
        "a member deletes another's message",
    );
    assert_refused(
        &out.acked(react("r0", &ch, 1, "👍", false)).await,
        "forbidden",
        "an outsider reacts",
    );
    assert_eq!(x.acked(react("r1", &ch, 1, "👍", false)).await["seq"], 3);
    assert_eq!(
        o.acked(delete("d2", &ch, 1)).await["seq"],
        4,
        "the owner deletes"
    );
    assert_eq!(m.acked(delete("d3", &ch, 2)).await["code"], "forbidden");
    assert_eq!(
        x.acked(delete("d4", &ch, 2)).await["seq"],
        5,
        "the author deletes"
    );
    let items = history(&node, &member, &ch).await;
    assert_eq!(
        (items[0]["deleted"].as_bool(), items[1]["deleted"].as_bool()),
        (Some(true), Some(true))
    );
}

#[tokio::test]
async fn a_reply_names_a_message_of_the_channel() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    b.ready().await;
    let ch = dm(&alice.id, &bob.id);
    a.say(("to", &bob.id), "m1", "lunch?").await;
    let ack = b
        .acked(json!({"type": "send", "client_msg_id": "re1", "channel": ch, "text": "yes", "reply_to": 1}))
        .await;
    assert_eq!(ack["seq"], 2, "{ack}");
    let got = live(&mut a, None, "alice's reply").await;
    assert_eq!(
        (got["reply_to"].as_u64(), got["text"].as_str()),
        (Some(1), Some("yes"))
    );
    for reply_to in [0, 3, 99] {
        let answer = b
            .acked(json!({"type": "send", "client_msg_id": format!("bad{reply_to}"), "to": alice.id, "text": "?", "reply_to": reply_to}))
            .await;
        assert_refused(&answer, "bad_request", "a reply to a seq the channel lacks");
    }
    let (status, body) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&alice.token),
            Some(json!({"client_msg_id": "re2", "to": bob.id, "text": "great", "reply_to": 2})),
        )
        .await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(3)), "{body}");
    let items = history(&node, &alice, &ch).await;
    assert_eq!(
        items
            .iter()
            .map(|v| v["reply_to"].as_u64())
            .collect::<Vec<_>>(),
        [None, Some(1), Some(2)]
    );
}

#[tokio::test]
async fn group_changes_are_system_items_and_a_new_member_learns_of_the_group_from_the_first() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let carol = node.user("carol", "phone").await;
    let mut b = node.ws(&bob).await;
    let mut c = node.ws(&carol).await;
    b.ready().await;
    c.ready().await;

    // Creating a group adds no item; the initial members' devices get a group frame.
    let (s, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&alice.token),
            Some(json!({"name": "trip", "members": [bob.id]})),
        )
        .await;
    assert_eq!(s, 201);
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let ch = group["channel"].as_str().unwrap().to_owned();
    let frame = b.until("bob's group frame", |v| v["type"] == "group").await;
    assert_eq!(frame["group"], group);
    assert!(history(&node, &alice, &ch).await.is_empty());
    let mut a = node.ws(&alice).await;
    assert_eq!(
        a.say(("channel", &ch), "m1", "hi").await["seq"],
        1,
        "the first message is seq 1"
    );

    // Carol is added: the item is her first of the channel, and reaches her at once.
    let (s, _) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&alice.token),
            Some(json!({"user_id": carol.id})),
        )
        .await;
    assert_eq!(s, 200);
    let added = live(&mut c, Some("system"), "carol's member_added").await;
    assert_eq!(added["channel"], ch.as_str());
    assert_eq!(added["seq"], 2);
    assert_eq!(added["inbox_id"], 1, "her first item");
    assert_eq!(added["from"], alice.id);
    assert_eq!(
        added["event"],
        json!({"action": "member_added", "user": carol.id})
    );
    assert!(added["text"].as_str().unwrap().contains("added"), "{added}");
    live(&mut b, Some("system"), "bob's member_added").await;
    // Adding a member again changes nothing and adds no item.
    let (s, _) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&bob.token),
            Some(json!({"user_id": carol.id})),
        )
        .await;
    assert_eq!(s, 200);

    // Renaming: the owner only.
    let (s, _) = node
        .call(
            "PATCH",
            &format!("/v1/groups/{gid}"),
            Some(&bob.token),
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, renamed) = node
        .call(
            "PATCH",
            &format!("/v1/groups/{gid}"),
            Some(&alice.token),
            Some(json!({"name": "summer trip"})),
        )
        .await;
    assert_eq!((s, renamed["name"].as_str()), (200, Some("summer trip")));
    let item = live(&mut c, Some("system"), "carol's renamed").await;
    assert_eq!(
        (item["seq"].as_u64(), item["event"]["action"].as_str()),
        (Some(3), Some("renamed"))
    );
    assert_eq!(item["event"]["name"], "summer trip");

    // Bob is removed: member_removed is his last item of the channel.
    let (s, _) = node
        .call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", bob.id),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let removed = b
        .until("bob's member_removed", |v| {
            v["type"] == "message" && v["event"]["action"] == "member_removed"
        })
        .await;
    assert_eq!(
        removed["event"],
        json!({"action": "member_removed", "user": bob.id})
    );
    assert_eq!(a.say(("channel", &ch), "m2", "after bob").await["seq"], 5);
    let bobs = sync(&node, &bob).await;
    assert_eq!(
        bobs.last().unwrap()["seq"],
        4,
        "member_removed is bob's last: {bobs:?}"
    );
    // Carol leaves.
    let (s, _) = node
        .call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", carol.id),
            Some(&carol.token),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let items = history(&node, &alice, &ch).await;
    let actions: Vec<Option<&str>> = items
        .iter()
        .map(|v| v["event"]["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            None,
            Some("member_added"),
            Some("renamed"),
            Some("member_removed"),
            None,
            Some("member_left")
        ]
    );
    let seqs: Vec<u64> = items.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=6).collect::<Vec<_>>(),
        "gapless across mixed items"
    );
    // Carol's inbox: gapless from 1, her items only.
    let carols = sync(&node, &carol).await;
    assert_eq!(
        carols
            .iter()
            .map(|v| (v["inbox_id"].as_u64().unwrap(), v["seq"].as_u64().unwrap()))
            .collect::<Vec<_>>(),
        [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    );
}

#[tokio::test]
async fn seqs_and_inbox_ids_stay_gapless_across_mixed_items_from_many_clients() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let (_, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&alice.token),
            Some(json!({"name": "g", "members": [bob.id]})),
        )
        .await;
    let ch = group["channel"].as_str().unwrap().to_owned();
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;
    // Alice alone: each message and a reaction to it, pipelined (the reaction may land in
    // the very batch that stores its target).
    for i in 0..10u64 {
        a.send(json!({"type": "send", "client_msg_id": format!("a{i}"), "channel": ch, "text": format!("a{i}")})).await;
        a.send(react(&format!("ra{i}"), &ch, 2 * i + 1, "❤", false))
            .await;
    }
    for _ in 0..20 {
        let v = a
            .until("alice's acks", |v| {
                v["type"] == "ack" || v["type"] == "error"
            })
            .await;
        assert_eq!(v["type"], "ack", "{v}");
    }
    // Both at once: messages and reactions to the messages above.
    for i in 0..10u64 {
        a.send(
            json!({"type": "send", "client_msg_id": format!("x{i}"), "channel": ch, "text": "x"}),
        )
        .await;
        b.send(
            json!({"type": "send", "client_msg_id": format!("y{i}"), "channel": ch, "text": "y"}),
        )
        .await;
        a.send(react(&format!("rx{i}"), &ch, 2 * i + 1, "👍", false))
            .await;
        b.send(react(&format!("ry{i}"), &ch, 2 * i + 1, "🔥", false))
            .await;
    }
    for client in [&mut a, &mut b] {
        for _ in 0..20 {
            let v = client
                .until("the acks", |v| v["type"] == "ack" || v["type"] == "error")
                .await;
            assert_eq!(v["type"], "ack", "{v}");
        }
    }
    let items = history(&node, &alice, &ch).await;
    assert_eq!(items.len(), 60);
    let seqs: Vec<u64> = items.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    for i in 0..10 {
        assert_eq!(
            items[2 * i]["reactions"],
            json!({"❤": [alice.id], "👍": [alice.id], "🔥": [bob.id]}),
            "every reaction landed on its target"
        );
    }
    for user in [&alice, &bob] {
        let inbox = sync(&node, user).await;
        let ids: Vec<u64> = inbox
            .iter()
            .map(|v| v["inbox_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (1..=60).collect::<Vec<_>>());
    }
}
