//! One-on-one and group messaging over real WebSockets: acks, live delivery to every device
//! but the sending one, idempotent resends, text limits, history, sync and gapless ids.

mod common;

use std::time::Duration;

use common::{Node, dm};
use serde_json::json;

#[tokio::test]
async fn one_on_one_message_reaches_recipient_and_senders_other_device_but_not_the_sender() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let alice_laptop = node.login("alice", "laptop").await;
    let bob = node.user("bob", "phone").await;
    let mut a_phone = node.ws(&alice).await;
    let mut a_laptop = node.ws(&alice_laptop).await;
    let mut b = node.ws(&bob).await;

    let ack = a_phone.say(("to", &bob.id), "m1", "hello bob").await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["channel"], dm(&alice.id, &bob.id));
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["inbox_id"], 1);
    assert!(ack["ts"].as_i64().unwrap() > 0);

    let got = b
        .until("bob's live message", |v| v["type"] == "message")
        .await;
    assert_eq!(got["text"], "hello bob");
    assert_eq!(got["from"], alice.id);
    assert_eq!(got["from_device"], "phone");
    assert_eq!(got["client_msg_id"], "m1");
    assert_eq!(got["seq"], 1);
    assert_eq!(got["inbox_id"], 1);

    let mine = a_laptop
        .until("alice's other device's copy", |v| v["type"] == "message")
        .await;
    assert_eq!(mine["text"], "hello bob");
    assert_eq!(mine["inbox_id"], 1);

    let extra = a_phone.drain(Duration::from_millis(300)).await;
    assert!(
        extra.iter().all(|v| v["type"] != "message"),
        "the sending device must not get its own message back: {extra:?}"
    );

    // Bob answers over the channel name; seq continues, each inbox counts on.
    let ack = b
        .say(("channel", &dm(&alice.id, &bob.id)), "r1", "hi alice")
        .await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["inbox_id"].as_u64()),
        (Some(2), Some(2))
    );
    let got = a_phone
        .until("alice's live reply", |v| v["type"] == "message")
        .await;
    assert_eq!(
        (got["text"].as_str(), got["inbox_id"].as_u64()),
        (Some("hi alice"), Some(2))
    );
}

#[tokio::test]
async fn resending_a_client_msg_id_returns_the_first_ack_and_stores_nothing_new() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;

    let first = a.say(("to", &bob.id), "same", "once").await;
    b.until("the first delivery", |v| v["type"] == "message")
        .await;
    for _ in 0..3 {
        let again = a.say(("to", &bob.id), "same", "once").await;
        assert_eq!(again, first, "a resend returns the original ack");
    }
    // Over HTTP too: a full equal of WebSocket sending.
    let (status, http_ack) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&alice.token),
            Some(json!({"client_msg_id": "same", "to": bob.id, "text": "once"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(http_ack["seq"], first["seq"]);
    assert_eq!(http_ack["inbox_id"], first["inbox_id"]);

    let later = b.drain(Duration::from_millis(300)).await;
    assert!(
        later.iter().all(|v| v["type"] != "message"),
        "a duplicate is not delivered again: {later:?}"
    );
    let (_, history) = node
        .call(
            "GET",
            &format!("/v1/channels/{}/messages", dm(&alice.id, &bob.id)),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "one stored message"
    );
}

#[tokio::test]
async fn text_limit_counts_chars_not_bytes() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    let mut b = node.ws(&bob).await;

    // 100,000 four-byte chars (400,000 bytes) are accepted and delivered intact.
    let longest = "😀".repeat(100_000);
    let ack = a.say(("to", &bob.id), "max", &longest).await;
    assert_eq!(ack["type"], "ack", "100,000 chars must be accepted: {ack}");
    let got = b
        .until("the longest message", |v| v["type"] == "message")
        .await;
    assert_eq!(got["text"].as_str().unwrap().chars().count(), 100_000);

    let too_long = format!("{longest}a");
    let err = a.say(("to", &bob.id), "over", &too_long).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "too_large");
    assert_eq!(err["client_msg_id"], "over");

    let (status, body) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&alice.token),
            Some(json!({"client_msg_id": "h-over", "to": bob.id, "text": too_long})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    // The connection lives on.
    assert_eq!(
        a.say(("to", &bob.id), "after", "still here").await["type"],
        "ack"
    );
}

#[tokio::test]
async fn group_messages_reach_every_member_and_non_members_are_refused() {
    let node = Node::start(&[]);
    let owner = node.user("owner", "d1").await;
    let m1 = node.user("member1", "d1").await;
    let m2 = node.user("member2", "d1").await;
    let outsider = node.user("outsider", "d1").await;

    let (status, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&owner.token),
            Some(json!({"name": "team", "members": [m1.id, m2.id]})),
        )
        .await;
    assert_eq!(status, 201);
    let channel = group["channel"].as_str().unwrap().to_owned();
    assert_eq!(group["owner"], owner.id);
    assert_eq!(group["members"].as_array().unwrap().len(), 3);

    let mut c_owner = node.ws(&owner).await;
    let mut c1 = node.ws(&m1).await;
    let mut c2 = node.ws(&m2).await;
    let ack = c1.say(("channel", &channel), "g1", "hello team").await;
    assert_eq!(ack["seq"], 1);
    for (name, c) in [("owner", &mut c_owner), ("member2", &mut c2)] {
        let got = c
            .until(&format!("{name}'s group message"), |v| {
                v["type"] == "message"
            })
            .await;
        assert_eq!(got["channel"], channel.as_str());
        assert_eq!(got["text"], "hello team");
    }

    let mut out = node.ws(&outsider).await;
    let err = out.say(("channel", &channel), "x1", "let me in").await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let (status, _) = node
        .call(
            "GET",
            &format!("/v1/channels/{channel}/messages"),
            Some(&outsider.token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = node
        .call(
            "GET",
            &format!("/v1/groups/{}", group["group_id"].as_str().unwrap()),
            Some(&outsider.token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    // Someone else's one-on-one channel is off limits too.
    let err = out
        .say(("channel", &dm(&owner.id, &m1.id)), "x2", "snoop")
        .await;
    assert_eq!(err["code"], "forbidden");
}

#[tokio::test]
async fn sync_on_a_brand_new_device_returns_exactly_the_missed_entries_with_gapless_ids() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let (_, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&alice.token),
            Some(json!({"name": "pair", "members": [bob.id]})),
        )
        .await;
    let channel = group["channel"].as_str().unwrap().to_owned();

    // Bob is offline; alice sends to the DM and the group, interleaved.
    let mut a = node.ws(&alice).await;
    for i in 0..30 {
        let target = if i % 3 == 0 {
            ("channel", channel.as_str())
        } else {
            ("to", bob.id.as_str())
        };
        assert_eq!(
            a.say(target, &format!("s{i}"), &format!("msg {i}")).await["type"],
            "ack"
        );
    }

    // A brand-new device of bob's syncs from 0 in pages.
    let tablet = node.login("bob", "tablet").await;
    let mut t = node.ws(&tablet).await;
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        t.send(json!({"type": "sync", "after": after, "limit": 7, "req": "page"}))
            .await;
        let page = t.until("a sync page", |v| v["type"] == "sync").await;
        assert_eq!(page["req"], "page");
        let items = page["items"].as_array().unwrap().clone();
        after = items
            .last()
            .map_or(after, |m| m["inbox_id"].as_u64().unwrap());
        all.extend(items);
        if page["more"] == false {
            break;
        }
    }
    let ids: Vec<u64> = all
        .iter()
        .map(|m| m["inbox_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=30).collect::<Vec<_>>(),
        "inbox ids are gapless from 1"
    );
    let texts: Vec<&str> = all.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("msg {i}")).collect();
    assert_eq!(texts, expected, "every missed message, once, in order");

    // Over HTTP, from the middle.
    let (status, page) = node
        .call("GET", "/v1/sync?after=25", Some(&bob.token), None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["inbox_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![26, 27, 28, 29, 30]);
    assert_eq!(page["more"], false);

    // Cursor: recorded per device, never past the head.
    t.send(json!({"type": "cursor", "inbox_id": 30})).await;
    t.send(json!({"type": "cursor", "inbox_id": 31, "req": "too-far"}))
        .await;
    let err = t.until("the cursor error", |v| v["type"] == "error").await;
    assert_eq!(
        (err["code"].as_str(), err["req"].as_str()),
        (Some("bad_request"), Some("too-far"))
    );
    let (_, devices) = node
        .call("GET", "/v1/devices", Some(&bob.token), None)
        .await;
    let tablet_row = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "tablet")
        .unwrap()
        .clone();
    assert_eq!(tablet_row["cursor"], 30);
    assert_eq!(tablet_row["online"], true);
}

#[tokio::test]
async fn history_pages_by_seq_in_both_directions() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    for i in 1..=12 {
        let (s, _) = node
            .call("POST", "/v1/messages", Some(&alice.token), Some(json!({"client_msg_id": format!("h{i}"), "to": bob.id, "text": format!("n{i}")})))
            .await;
        assert_eq!(s, 200);
    }
    let ch = dm(&alice.id, &bob.id);
    let seqs = |v: &serde_json::Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let (_, newest) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages?limit=5"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        (seqs(&newest), newest["more"].as_bool()),
        (vec![8, 9, 10, 11, 12], Some(true))
    );
    let (_, older) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages?before_seq=8&limit=5"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        (seqs(&older), older["more"].as_bool()),
        (vec![3, 4, 5, 6, 7], Some(true))
    );
    let (_, oldest) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages?before_seq=3&limit=5"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        (seqs(&oldest), oldest["more"].as_bool()),
        (vec![1, 2], Some(false))
    );
    let (_, after) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages?after_seq=10"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        (seqs(&after), after["more"].as_bool()),
        (vec![11, 12], Some(false))
    );
    let (_, window) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages?after_seq=2&before_seq=6"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(seqs(&window), vec![3, 4, 5]);
    let first = &newest["messages"][0];
    assert!(
        first.get("inbox_id").is_none(),
        "history messages carry no inbox_id"
    );
    assert_eq!(first["from"], alice.id);
    let (status, _) = node
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages?limit=0"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_sync_page_of_long_messages_stops_after_a_few_mib_and_the_next_page_goes_on() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a = node.ws(&alice).await;
    // 14 messages of 100,000 four-byte characters: 5.6 MB, more than one page holds.
    let long = "😀".repeat(100_000);
    for i in 0..14 {
        let ack = a.say(("to", &bob.id), &format!("l{i}"), &long).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let mut b = node.ws(&bob).await;
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        b.send(json!({"type": "sync", "after": after, "limit": 1000, "req": "p"}))
            .await;
        let page = b.until("a sync page", |v| v["type"] == "sync").await;
        let items = page["items"].as_array().unwrap();
        assert!(!items.is_empty(), "a page with `more` is never empty");
        after = items.last().unwrap()["inbox_id"].as_u64().unwrap();
        pages.push(items.len());
        if page["more"] == false {
            break;
        }
    }
    assert!(
        pages.len() >= 2,
        "14 long messages did not fit one page: {pages:?}"
    );
    assert!(
        pages[0] <= 11,
        "the first page stopped after about 4 MiB: {pages:?}"
    );
    assert_eq!(pages.iter().sum::<usize>(), 14);
    assert_eq!(after, 14, "every inbox id, in order");
}
