//! Cluster mode end to end: a real etcd and three real `chat-node` processes sharing it
//! for membership and history (`--store etcd`), driven by real WebSocket clients over TCP.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parley_e2e::TestCluster;
use parley_testkit::node::{Client, User, dm};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_spread_over_nodes_and_every_node_agrees_where() {
    let c = TestCluster::start().await;
    let mut placed = HashSet::new();
    for k in 0..12 {
        let u = c.nodes[k % 3].user(&format!("spread{k}"), "phone").await;
        let answers = [
            c.assigned(0, &u).await,
            c.assigned(1, &u).await,
            c.assigned(2, &u).await,
        ];
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "nodes disagree on {}: {answers:?}",
            u.username
        );
        placed.insert(answers[0].0.clone());
    }
    assert!(placed.len() >= 2, "12 users all landed on {placed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_on_the_wrong_node_is_told_where_to_go() {
    let c = TestCluster::start().await;
    let u = &c.users_on("wrong", &[0]).await[0];
    let mut client =
        Client::connect(&format!("ws://{}/v1/ws?token={}", c.nodes[1].addr, u.token)).await;
    let frame = client.next().await;
    assert_eq!(frame["type"], "reconnect", "{frame}");
    assert_eq!(frame["ws_url"], format!("ws://{}/v1/ws", c.nodes[0].addr));
    assert_eq!(client.closed_with().await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_presence_and_typing_cross_nodes_live() {
    let c = TestCluster::start().await;
    let users = c.users_on("cross", &[0, 1, 2]).await;
    let (a, b, d) = (&users[0], &users[1], &users[2]);
    c.nodes[2].befriend(a, b).await;

    let mut ca = c.connect(a).await;
    let mut cb = c.connect(b).await;
    // a hears b come online from b's node.
    ca.until("b online at a", |v| {
        v["type"] == "presence" && v["user"] == b.id.as_str() && v["status"] == "online"
    })
    .await;

    // A one-on-one message from node 1 to node 2.
    let ack = ca.say(("to", &b.id), "dm-1", "hello across nodes").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = cb
        .until("the DM at b", |v| {
            v["type"] == "message" && v["client_msg_id"] == "dm-1"
        })
        .await;
    assert_eq!(m["text"], "hello across nodes");
    assert_eq!(m["channel"], dm(&a.id, &b.id));

    // A group message reaches members on all three nodes.
    let (status, group) = c.nodes[1]
        .call(
            "POST",
            "/v1/groups",
            Some(&a.token),
            Some(json!({"name": "three nodes", "members": [b.id, d.id]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let channel = format!("g:{}", group["group_id"].as_str().unwrap());
    let mut cd = c.connect(d).await;
    cd.ready().await;
    let ack = cb.say(("channel", &channel), "g-1", "hi all").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for (who, client) in [("a", &mut ca), ("d", &mut cd)] {
        let m = client
            .until(&format!("the group message at {who}"), |v| {
                v["type"] == "message" && v["client_msg_id"] == "g-1"
            })
            .await;
        assert_eq!(m["channel"], channel.as_str());
        assert!(m["inbox_id"].as_u64().unwrap() >= 1);
    }

    // Typing crosses too.
    cd.send(json!({"type": "typing", "channel": channel})).await;
    ca.until("d typing at a", |v| {
        v["type"] == "typing" && v["user"] == d.id.as_str()
    })
    .await;

    // b leaves: a hears it from b's node.
    drop(cb);
    ca.until("b offline at a", |v| {
        v["type"] == "presence" && v["user"] == b.id.as_str() && v["status"] == "offline"
    })
    .await;
    // The contact list, asked of a third node, says who is online where.
    let (_, contacts) = c.nodes[2]
        .call("GET", "/v1/contacts", Some(&b.token), None)
        .await;
    let entry = contacts["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["user_id"] == a.id.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(entry["status"], "online", "{contacts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_moves_its_users_and_empties() {
    let c = TestCluster::start().await;
    let users = c.users_on("drain", &[0, 0, 1]).await;
    let watcher = &users[2];
    c.nodes[1].befriend(&users[0], watcher).await;
    let mut cw = c.connect(watcher).await;
    let mut on_first: Vec<Client> = Vec::new();
    for u in &users[..2] {
        on_first.push(c.connect(u).await);
    }
    cw.until("the first user online", |v| {
        v["type"] == "presence" && v["user"] == users[0].id.as_str() && v["status"] == "online"
    })
    .await;
    // The watcher's connect-time snapshot and the user's announcement may both say
    // "online" when the two connect at once: settle before the drain.
    cw.drain(Duration::from_millis(500)).await;
    // The operator's drain request.
    let mut etcd = c.etcd.client().await;
    etcd.put(
        format!("/parley/{}/drain/n1", c.name),
        r#"{"requested_at":0,"deadline":0}"#,
        None,
    )
    .await
    .unwrap();
    let mut moved = Vec::new();
    for (client, u) in on_first.iter_mut().zip(&users) {
        let frame = client
            .until("a reconnect frame", |v| v["type"] == "reconnect")
            .await;
        let url = frame["ws_url"].as_str().unwrap().to_owned();
        moved.push(Client::connect(&format!("{url}?token={}", u.token)).await);
        assert!(
            !url.contains(&c.nodes[0].addr),
            "moved to the draining node itself: {frame}"
        );
        // The other nodes learn of the drain from etcd within moments.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let (node, ws_url) = c.assigned(2, u).await;
            if node != "n1" {
                assert_eq!(url, ws_url);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "n3 still assigns {} to n1",
                u.username
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Its registration reports draining and no connections left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = etcd
            .get(format!("/parley/{}/nodes/n1", c.name), None)
            .await
            .unwrap();
        let reg: Value = serde_json::from_slice(r.kvs()[0].value()).unwrap();
        if reg["draining"] == true && reg["connections"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 still reports {reg}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The move was not an offline: the watcher heard nothing of the moved user.
    let heard: Vec<Value> = cw
        .drain(Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|v| v["type"] == "presence" && v["user"] == users[0].id.as_str())
        .collect();
    assert!(
        heard.is_empty(),
        "a move showed up as presence changes: {heard:?}"
    );
    drop(moved);
}

/// Ask `/v1/assign` of a live node until it names a live node, then connect there.
async fn reconnect_after_failure(
    c: &TestCluster,
    via: usize,
    user: &User,
    dead: &str,
) -> (String, Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (node, ws_url) = c.assigned(via, user).await;
        if node != dead {
            return (
                node,
                Client::connect(&format!("{ws_url}?token={}", user.token)).await,
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/v1/assign still names the dead node {dead} for {} after 20 s",
            user.username
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pipeline `n` sends to `to` without waiting for their acks.
async fn send_many(client: &mut Client, to: &str, prefix: &str, n: usize) {
    for i in 0..n {
        client
            .send(json!({"type": "send", "to": to, "client_msg_id": format!("{prefix}-{i}"), "text": format!("{prefix} {i}")}))
            .await;
    }
}

/// Everything in `user`'s inbox, by paging `sync` from 0.
async fn sync_all(client: &mut Client) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m["inbox_id"].as_u64().unwrap());
        client
            .send(json!({"type": "sync", "after": after, "limit": 500, "req": "s"}))
            .await;
        let page = client
            .until("a sync page", |v| v["type"] == "sync" && v["req"] == "s")
            .await;
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        if page["more"] != true {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_flow_loses_no_acked_message() {
    let mut c = TestCluster::start().await;
    let users = c.users_on("kill", &[0, 0, 1, 2]).await;
    let (victim, quiet, sender, watcher) = (&users[0], &users[1], &users[2], &users[3]);
    c.nodes[1].befriend(watcher, quiet).await;
    let mut cv = c.connect(victim).await;
    let mut cq = c.connect(quiet).await;
    let mut cs = c.connect(sender).await;
    let mut cw = c.connect(watcher).await;
    cw.until("quiet online", |v| {
        v["type"] == "presence" && v["user"] == quiet.id.as_str() && v["status"] == "online"
    })
    .await;
    cq.until("watcher online", |v| {
        v["type"] == "presence" && v["user"] == watcher.id.as_str()
    })
    .await;

    // Messages flow both ways through the victim's node; each side keeps 8 sends in flight.
    let mut acked: Vec<(String, u64)> = Vec::new(); // (client_msg_id, seq)
    send_many(&mut cs, &victim.id, "s", 40).await;
    send_many(&mut cv, &sender.id, "v", 40).await;
    // Collect the sender's acks (all 40: its node lives) and the victim's acks until the kill.
    let mut victim_acks = 0;
    while victim_acks < 20 {
        let v = cv.next().await;
        if v["type"] == "ack" {
            acked.push((
                v["client_msg_id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            ));
            victim_acks += 1;
        }
    }
    c.nodes[0].kill();
    // Whatever else the victim's socket still delivered before the kill counts as acked.
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(
        Duration::from_millis(200),
        futures_util::StreamExt::next(&mut cv.ws),
    )
    .await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                acked.push((
                    v["client_msg_id"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                ));
            }
        }
    }
    // A send to the victim waits for its inbox to get a new owner (the dead node's lease
    // expires within 10 s): acked means in every member's inbox.
    let mut sender_acks = 0;
    while sender_acks < 40 {
        let v = cs
            .until_within(Duration::from_secs(25), "the sender's acks", |v| {
                v["type"] == "ack" || v["type"] == "error"
            })
            .await;
        assert_eq!(v["type"], "ack", "a send on a live node failed: {v}");
        acked.push((
            v["client_msg_id"].as_str().unwrap().to_owned(),
            v["seq"].as_u64().unwrap(),
        ));
        sender_acks += 1;
    }
    drop(cq);

    // The victim lands on a live node and gets back everything that was acked.
    let (node, mut cv) = reconnect_after_failure(&c, 1, victim, "n1").await;
    assert_ne!(node, "n1");
    let items = sync_all(&mut cv).await;
    let ids: Vec<u64> = items
        .iter()
        .map(|m| m["inbox_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "inbox ids are gapless"
    );
    let stored: HashMap<String, u64> = items
        .iter()
        .map(|m| {
            (
                m["client_msg_id"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    for (cmid, seq) in &acked {
        assert_eq!(
            stored.get(cmid),
            Some(seq),
            "acked message {cmid} (seq {seq}) is missing after the kill"
        );
    }
    let seqs: HashSet<u64> = stored.values().copied().collect();
    assert_eq!(seqs.len(), stored.len(), "no message twice");

    // The quiet user, who never came back, turns offline for the watcher.
    cw.until("quiet offline after its node died", |v| {
        v["type"] == "presence" && v["user"] == quiet.id.as_str() && v["status"] == "offline"
    })
    .await;
    let _ = &mut c;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_on_three_nodes_get_gapless_seqs() {
    let c = TestCluster::start().await;
    let users = c.users_on("seq", &[0, 1, 2]).await;
    let (status, group) = c.nodes[0]
        .call(
            "POST",
            "/v1/groups",
            Some(&users[0].token),
            Some(json!({"name": "hot", "members": [users[1].id, users[2].id]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let channel = format!("g:{}", group["group_id"].as_str().unwrap());
    let mut clients = Vec::new();
    for u in &users {
        clients.push(c.connect(u).await);
    }
    // Every sender pipelines 30 sends into the same channel at once, from its own node.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let channel = channel.clone();
            tokio::spawn(async move {
                for k in 0..30 {
                    client
                        .send(json!({"type": "send", "channel": channel, "client_msg_id": format!("c{i}-{k}"), "text": format!("{i}/{k}")}))
                        .await;
                }
                let mut seqs = Vec::new();
                while seqs.len() < 30 {
                    let v = client
                        .until("an ack", |v| v["type"] == "ack" || v["type"] == "error")
                        .await;
                    assert_eq!(v["type"], "ack", "{v}");
                    seqs.push(v["seq"].as_u64().unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=90).collect::<Vec<u64>>(),
        "seqs are gapless and unique across nodes"
    );
    let (_, history) = c.nodes[2]
        .call(
            "GET",
            &format!("/v1/channels/{channel}/messages?after_seq=0&limit=100"),
            Some(&users[2].token),
            None,
        )
        .await;
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(90),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joining_takes_over_its_users_gently() {
    let mut c = TestCluster::start().await;
    let mut clients = Vec::new();
    let mut users = Vec::new();
    for k in 0..40 {
        let u = c.nodes[k % 3].user(&format!("join{k}"), "phone").await;
        clients.push(c.connect(&u).await);
        users.push(u);
    }
    c.add_node().await;
    // Users whose node is now n4 are told to move there; the others stay where they are.
    let mut moved = 0;
    for (client, u) in clients.iter_mut().zip(&users) {
        let (node, ws_url) = c.assigned(3, u).await;
        if node == "n4" {
            let frame = client
                .until("a move to the new node", |v| v["type"] == "reconnect")
                .await;
            assert_eq!(frame["reason"], "moved", "{frame}");
            assert_eq!(frame["ws_url"], ws_url.as_str());
            moved += 1;
        } else {
            let quiet = client.drain(Duration::from_millis(100)).await;
            assert!(
                quiet.iter().all(|v| v["type"] != "reconnect"),
                "{} stays on {node} but was moved: {quiet:?}",
                u.username
            );
        }
    }
    assert!(
        moved >= 1,
        "rendezvous gives a fourth node about a quarter of 40 users"
    );
}
