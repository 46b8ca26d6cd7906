//! Timeline items, read markers and blocks across the nodes of a real cluster (a real etcd,
//! three real `chat-node` processes, real WebSocket clients): an edit made on one node seen
//! live on another, a read marker moved on one node announced on another and listed by a
//! third, a member added learning of the group on their own node, a block kept by whichever
//! node owns the one-on-one channel.

use parley_e2e::TestCluster;
use parley_testkit::node::dm;
use serde_json::{Value, json};

fn ids(items: &[Value], field: &str) -> Vec<u64> {
    items.iter().map(|v| v[field].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_reactions_and_read_markers_cross_nodes_live() {
    let c = TestCluster::start().await;
    let users = c.users_on("tl", &[0, 1, 2]).await;
    let (a, b, d) = (&users[0], &users[1], &users[2]);
    let ch = dm(&a.id, &b.id);
    let mut ca = c.connect(a).await;
    let mut cb = c.connect(b).await;
    ca.ready().await;
    cb.ready().await;

    // A message and its edit on node 1, seen live on node 2.
    assert_eq!(ca.say(("to", &b.id), "m1", "helo").await["seq"], 1);
    let ack = ca
        .acked(json!({"type": "edit", "client_msg_id": "e1", "channel": ch, "seq": 1, "text": "hello"}))
        .await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(2)),
        "{ack}"
    );
    let edit = cb
        .until("the edit at b", |v| {
            v["type"] == "message" && v["kind"] == "edit"
        })
        .await;
    assert_eq!(
        (edit["target_seq"].as_u64(), edit["text"].as_str()),
        (Some(1), Some("hello"))
    );
    assert_eq!(edit["inbox_id"], 2);

    // A reaction over HTTP on node 3, seen live on node 1.
    let (status, r) = c.nodes[2]
        .call("POST", "/v1/messages", Some(&b.token), Some(json!({"kind": "reaction", "client_msg_id": "r1", "channel": ch, "seq": 1, "emoji": "👍"})))
        .await;
    assert_eq!((status, r["seq"].as_u64()), (200, Some(3)), "{r}");
    ca.until("the reaction at a", |v| {
        v["type"] == "message" && v["kind"] == "reaction"
    })
    .await;
    // Refusals come back from whichever node owns the channel.
    let refused = cb
        .acked(
            json!({"type": "edit", "client_msg_id": "e2", "channel": ch, "seq": 1, "text": "mine"}),
        )
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // History asked of the third node: the aggregate, written with the items.
    let (_, history) = c.nodes[2]
        .call(
            "GET",
            &format!("/v1/channels/{ch}/messages"),
            Some(&a.token),
            None,
        )
        .await;
    let m = &history["messages"][0];
    assert_eq!(
        (m["text"].as_str(), m["edited_at"].as_i64()),
        (Some("hello"), ack["ts"].as_i64())
    );
    assert_eq!(m["reactions"], json!({"👍": [b.id]}));

    // b reads on node 2; a hears it on node 1; the marker is listed by node 3. (b's own
    // reaction moved b's marker to 3 already: a writes once more.)
    assert_eq!(ca.say(("to", &b.id), "m2", "and now?").await["seq"], 4);
    cb.until("m2 at b", |v| v["type"] == "message" && v["seq"] == 4)
        .await;
    cb.send(json!({"type": "read", "channel": ch, "seq": 4}))
        .await;
    let read = ca.until("b's read at a", |v| v["type"] == "read").await;
    assert_eq!(
        read,
        json!({"type": "read", "channel": ch, "user": b.id, "seq": 4})
    );
    let (_, list) = c.nodes[2]
        .call("GET", "/v1/channels", Some(&b.token), None)
        .await;
    let entry = &list["channels"][0];
    assert_eq!(
        (
            entry["channel"].as_str(),
            entry["read_seq"].as_u64(),
            entry["unread"].as_u64()
        ),
        (Some(ch.as_str()), Some(4), Some(0)),
        "{list}"
    );
    let (_, reads) = c.nodes[0]
        .call(
            "GET",
            &format!("/v1/channels/{ch}/reads"),
            Some(&a.token),
            None,
        )
        .await;
    let marks: Vec<(String, u64)> = reads["reads"]
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
    assert!(
        marks.contains(&(b.id.clone(), 4)) && marks.contains(&(a.id.clone(), 4)),
        "{marks:?}"
    );
    // Over HTTP on node 1 for a user of node 2: never back.
    let (status, _) = c.nodes[0]
        .call(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(&b.token),
            Some(json!({"seq": 1})),
        )
        .await;
    assert_eq!(status, 204);
    let (_, list) = c.nodes[1]
        .call("GET", "/v1/channels", Some(&b.token), None)
        .await;
    assert_eq!(list["channels"][0]["read_seq"], 4);

    // A group made on node 1; d (node 3) is added later and learns of it from their first
    // item, live on their node.
    let (status, group) = c.nodes[0]
        .call(
            "POST",
            "/v1/groups",
            Some(&a.token),
            Some(json!({"name": "three", "members": [b.id]})),
        )
        .await;
    assert_eq!(status, 201);
    let frame = cb.until("b's group frame", |v| v["type"] == "group").await;
    assert_eq!(frame["group"]["group_id"], group["group_id"]);
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let gch = format!("g:{gid}");
    let mut cd = c.connect(d).await;
    cd.ready().await;
    assert_eq!(cb.say(("channel", &gch), "g1", "before d").await["seq"], 1);
    let (status, _) = c.nodes[1]
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&b.token),
            Some(json!({"user_id": d.id})),
        )
        .await;
    assert_eq!(status, 200);
    let added = cd
        .until("d's member_added", |v| {
            v["type"] == "message" && v["kind"] == "system"
        })
        .await;
    assert_eq!(
        added["event"],
        json!({"action": "member_added", "user": d.id})
    );
    assert_eq!(
        (added["seq"].as_u64(), added["inbox_id"].as_u64()),
        (Some(2), Some(1))
    );
    let (status, renamed) = c.nodes[2]
        .call(
            "PATCH",
            &format!("/v1/groups/{gid}"),
            Some(&a.token),
            Some(json!({"name": "trio"})),
        )
        .await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("trio")));
    cd.until("d's renamed", |v| {
        v["type"] == "message" && v["event"]["action"] == "renamed"
    })
    .await;

    // Every inbox gapless across the mixed items.
    for (user, want) in [(a, 7), (b, 7), (d, 2)] {
        let (_, sync) = c.nodes[2]
            .call("GET", "/v1/sync?after=0", Some(&user.token), None)
            .await;
        let items = sync["items"].as_array().unwrap();
        assert_eq!(
            ids(items, "inbox_id"),
            (1..=want).collect::<Vec<_>>(),
            "{}: {items:?}",
            user.username
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_made_on_one_node_is_kept_by_the_channels_owner() {
    let c = TestCluster::start().await;
    let users = c.users_on("bl", &[0, 1, 2]).await;
    let (a, b, d) = (&users[0], &users[1], &users[2]);
    let mut ca = c.connect(a).await;
    let mut cb = c.connect(b).await;
    cb.ready().await;
    assert_eq!(ca.say(("to", &b.id), "m1", "hi").await["type"], "ack");
    // b blocks a, asked of the third node.
    let (status, _) = c.nodes[2]
        .call("PUT", &format!("/v1/blocks/{}", a.id), Some(&b.token), None)
        .await;
    assert_eq!(status, 204);
    let refused = ca.say(("to", &b.id), "m2", "hello?").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // a cannot add b to a group, on any node.
    let (status, _) = c.nodes[1]
        .call(
            "POST",
            "/v1/groups",
            Some(&a.token),
            Some(json!({"name": "x", "members": [b.id, d.id]})),
        )
        .await;
    assert_eq!(status, 403);
    let (_, blocks) = c.nodes[0]
        .call("GET", "/v1/blocks", Some(&b.token), None)
        .await;
    assert_eq!(blocks, json!({"blocks": [a.id]}));
    let (status, _) = c.nodes[0]
        .call(
            "DELETE",
            &format!("/v1/blocks/{}", a.id),
            Some(&b.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(ca.say(("to", &b.id), "m3", "again").await["seq"], 2);
}
