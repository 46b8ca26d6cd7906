//! Acked means durable: a node killed with SIGKILL mid-stream keeps every acked message,
//! with gapless seqs and inbox ids and idempotent resends after restart. SIGTERM drains.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{Client, Node, dm};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pipelined_sends_loses_no_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_in(dir.path(), &[]);
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
    let group_channel = group["channel"].as_str().unwrap().to_owned();
    let dm_channel = dm(&alice.id, &bob.id);

    // Pipeline 600 sends without waiting; kill the node once 150 acks are in.
    let c = node.ws(&alice).await;
    let total = 600;
    let frames: Vec<Message> = (0..total)
        .map(|i| {
            let target = if i % 2 == 0 { json!({"to": bob.id}) } else { json!({"channel": group_channel}) };
            let mut f = json!({"type": "send", "client_msg_id": format!("c{i}"), "text": format!("text {i}")});
            f.as_object_mut().unwrap().extend(target.as_object().unwrap().clone());
            Message::Text(f.to_string().into())
        })
        .collect();
    let (mut sink, mut stream) = c.ws.split();
    let writer = tokio::spawn(async move {
        use futures_util::SinkExt;
        for f in frames {
            if sink.send(f).await.is_err() {
                break;
            }
        }
    });
    let mut acks: HashMap<String, Value> = HashMap::new();
    while acks.len() < 150 {
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("acks stopped arriving")
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                acks.insert(v["client_msg_id"].as_str().unwrap().to_owned(), v);
            }
        }
    }
    node.kill();
    // Acks that were already on the wire count too.
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(200), stream.next()).await
    {
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                acks.insert(v["client_msg_id"].as_str().unwrap().to_owned(), v);
            }
        }
    }
    writer.abort();
    assert!(acks.len() >= 150);

    let node = Node::start_in(dir.path(), &[]);
    // Every acked message is in its channel at its acked seq.
    let mut by_channel: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for ch in [&dm_channel, &group_channel] {
        let mut after = 0;
        loop {
            let (s, page) = node
                .call(
                    "GET",
                    &format!("/v1/channels/{ch}/messages?after_seq={after}&limit=1000"),
                    Some(&alice.token),
                    None,
                )
                .await;
            assert_eq!(s, 200);
            for m in page["messages"].as_array().unwrap() {
                let seq = m["seq"].as_u64().unwrap();
                by_channel
                    .entry(ch.clone())
                    .or_default()
                    .insert(seq, m["client_msg_id"].as_str().unwrap().to_owned());
                after = seq;
            }
            if page["more"] == false {
                break;
            }
        }
    }
    for (cmid, ack) in &acks {
        let ch = ack["channel"].as_str().unwrap();
        let seq = ack["seq"].as_u64().unwrap();
        assert_eq!(
            by_channel
                .get(ch)
                .and_then(|m| m.get(&seq))
                .map(String::as_str),
            Some(cmid.as_str()),
            "acked {cmid} must be at {ch}#{seq} after the crash"
        );
    }
    for (ch, seqs) in &by_channel {
        let got: Vec<u64> = seqs.keys().copied().collect();
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "seqs of {ch} are gapless"
        );
    }

    // Both inboxes are gapless, and alice's holds every acked message at its acked inbox_id.
    for user in [&alice, &bob] {
        let (_, page) = node
            .call(
                "GET",
                "/v1/sync?after=0&limit=1000",
                Some(&user.token),
                None,
            )
            .await;
        let items = page["items"].as_array().unwrap();
        let ids: Vec<u64> = items
            .iter()
            .map(|m| m["inbox_id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "{}'s inbox ids are gapless",
            user.username
        );
        if user.id == alice.id {
            let stored: HashMap<u64, &str> = items
                .iter()
                .map(|m| {
                    (
                        m["inbox_id"].as_u64().unwrap(),
                        m["client_msg_id"].as_str().unwrap(),
                    )
                })
                .collect();
            for (cmid, ack) in &acks {
                assert_eq!(
                    stored.get(&ack["inbox_id"].as_u64().unwrap()),
                    Some(&cmid.as_str())
                );
            }
        }
    }

    // Resending every client_msg_id returns the original acks and stores no duplicate.
    let mut c = node.ws(&alice).await;
    for i in 0..total {
        let cmid = format!("c{i}");
        let target = if i % 2 == 0 {
            ("to", bob.id.as_str())
        } else {
            ("channel", group_channel.as_str())
        };
        let again = c.say(target, &cmid, &format!("text {i}")).await;
        assert_eq!(again["type"], "ack");
        if let Some(first) = acks.get(&cmid) {
            assert_eq!(&again, first, "resend of {cmid} returns its original ack");
        }
    }
    let mut seen = HashMap::new();
    for ch in [&dm_channel, &group_channel] {
        let (_, page) = node
            .call(
                "GET",
                &format!("/v1/channels/{ch}/messages?after_seq=0&limit=1000"),
                Some(&alice.token),
                None,
            )
            .await;
        for m in page["messages"].as_array().unwrap() {
            *seen
                .entry(m["client_msg_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), total, "every client_msg_id is stored");
    assert!(
        seen.values().all(|&n| n == 1),
        "no client_msg_id is stored twice"
    );
}

#[tokio::test]
async fn sigterm_sends_reconnect_finishes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_in(dir.path(), &["--drain-seconds", "1"]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut a: Client = node.ws(&alice).await;
    let ack = a.say(("to", &bob.id), "before-term", "kept").await;
    assert_eq!(ack["type"], "ack");

    let status = tokio::task::spawn_blocking(move || {
        let status = node.terminate();
        (node, status)
    });
    let reconnect = a
        .until("the reconnect frame", |v| v["type"] == "reconnect")
        .await;
    assert_eq!(reconnect["reason"], "draining");
    assert_eq!(a.closed_with().await, 1001);
    let (node, status) = status.await.unwrap();
    assert!(
        status.success(),
        "chat-node exits 0 on SIGTERM, got {status:?}"
    );
    drop(node);

    let node = Node::start_in(dir.path(), &[]);
    let (_, page) = node
        .call("GET", "/v1/sync?after=0", Some(&bob.token), None)
        .await;
    assert_eq!(page["items"][0]["client_msg_id"], "before-term");
    // Last-seen times are written behind the sockets (coalesced); what the session recorded
    // is in the store after a clean restart.
    let (_, devices) = node
        .call("GET", "/v1/devices", Some(&alice.token), None)
        .await;
    assert!(
        devices["devices"][0]["last_seen"].as_i64().is_some(),
        "the last session's last-seen time survives a clean restart: {devices}"
    );
}
