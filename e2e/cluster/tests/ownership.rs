//! The write path's ownership moved under load: clients send one-on-one and group messages
//! without pause while a node joins, a node drains, an owner is killed with SIGKILL and etcd
//! restarts. Clients behave as the protocol asks: on `reconnect` or a lost socket they
//! reconnect where `/v1/assign` says and resend what was not acked, with the same
//! `client_msg_id`; on `unavailable` they resend after a pause. At the end every acked
//! message is stored at its acked `seq`, every channel's `seq`s are gapless with nothing
//! twice, and every inbox is gapless and holds each of its channels' items exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parley_e2e::TestCluster;
use parley_testkit::node::{Node, User, dm};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Messages each user sends to each of its targets.
const PER_TARGET: usize = 25;
/// Sends a client keeps unacked at once.
const WINDOW: usize = 4;

/// The base URLs of the nodes alive now (clients ask one of them where to connect).
type Live = Arc<Mutex<Vec<String>>>;

/// An ack as the client saw it.
#[derive(Debug, Clone)]
struct Acked {
    channel: String,
    seq: u64,
}

/// One client: sends `PER_TARGET` messages to each target, resending across every failure,
/// until all are acked (or the deadline passes). Returns `client_msg_id → ack`.
async fn run_client(
    live: Live,
    user: User,
    targets: Vec<Value>,
    deadline: Instant,
) -> HashMap<String, Acked> {
    let name = user.username.clone();
    let sends: Vec<(String, Value)> = targets
        .iter()
        .enumerate()
        .flat_map(|(t, target)| {
            let name = name.clone();
            (0..PER_TARGET).map(move |n| {
                let cmid = format!("{name}-t{t}-{n}");
                let mut frame = target.clone();
                frame["type"] = json!("send");
                frame["client_msg_id"] = json!(cmid);
                frame["text"] = json!(format!("message {n} to target {t}"));
                (cmid, frame)
            })
        })
        .collect();
    let mut acked: HashMap<String, Acked> = HashMap::new();
    let mut next = 0;
    let http = reqwest::Client::new();
    while acked.len() < sends.len() && Instant::now() < deadline {
        let Some(mut ws) = connect(&http, &live, &user).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // What was sent and not acked goes again, first.
        let mut in_flight: Vec<usize> = Vec::new();
        let mut resend: Vec<usize> = (0..next)
            .filter(|i| !acked.contains_key(&sends[*i].0))
            .collect();
        'socket: loop {
            while in_flight.len() < WINDOW {
                let i = if let Some(i) = resend.pop() {
                    i
                } else if next < sends.len() {
                    next += 1;
                    next - 1
                } else {
                    break;
                };
                if ws
                    .send(Message::Text(sends[i].1.to_string().into()))
                    .await
                    .is_err()
                {
                    break 'socket;
                }
                in_flight.push(i);
            }
            if acked.len() == sends.len() || Instant::now() >= deadline {
                break;
            }
            let frame = match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap(),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                    break 'socket;
                }
                Ok(Some(Ok(_))) => continue,
            };
            let cmid = frame["client_msg_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let index = in_flight.iter().position(|i| sends[*i].0 == cmid);
            match frame["type"].as_str() {
                Some("ack") => {
                    if let Some(at) = index {
                        in_flight.swap_remove(at);
                    }
                    let ack = Acked {
                        channel: frame["channel"].as_str().unwrap().to_owned(),
                        seq: frame["seq"].as_u64().unwrap(),
                    };
                    if let Some(first) = acked.get(&cmid) {
                        assert_eq!(
                            (first.channel.as_str(), first.seq),
                            (ack.channel.as_str(), ack.seq),
                            "a resend of {cmid} is answered with its first ack"
                        );
                    }
                    acked.insert(cmid, ack);
                }
                Some("error") => {
                    assert_eq!(
                        frame["code"], "unavailable",
                        "only unavailability may refuse a send here: {frame}"
                    );
                    if let Some(at) = index {
                        resend.push(in_flight.swap_remove(at));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some("reconnect") => break 'socket,
                _ => {}
            }
        }
    }
    assert_eq!(
        acked.len(),
        sends.len(),
        "{} had {} of {} sends acked by the deadline",
        user.username,
        acked.len(),
        sends.len()
    );
    acked
}

/// A socket where a live node's `/v1/assign` says `user` belongs.
async fn connect(
    http: &reqwest::Client,
    live: &Live,
    user: &User,
) -> Option<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let nodes = live.lock().unwrap().clone();
    for base in nodes {
        let Ok(Ok(answer)) = tokio::time::timeout(
            Duration::from_secs(2),
            http.get(format!("{base}/v1/assign"))
                .bearer_auth(&user.token)
                .send(),
        )
        .await
        else {
            continue;
        };
        let Ok(body) = answer.json::<Value>().await else {
            continue;
        };
        let Some(ws_url) = body["ws_url"].as_str() else {
            continue;
        };
        if let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("{ws_url}?token={}", user.token)),
        )
        .await
        {
            return Some(ws);
        }
    }
    None
}

/// Every page of `channel`'s history.
async fn history(node: &Node, user: &User, channel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = node
            .call(
                "GET",
                &format!("/v1/channels/{channel}/messages?after_seq={after}&limit=1000"),
                Some(&user.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["messages"].as_array().unwrap().clone();
        after = items.last().map_or(after, |m| m["seq"].as_u64().unwrap());
        out.extend(items);
        if page["more"] != true {
            return out;
        }
    }
}

/// Every inbox entry of `user`.
async fn inbox(node: &Node, user: &User) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = node
            .call(
                "GET",
                &format!("/v1/sync?after={after}&limit=1000"),
                Some(&user.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        after = items
            .last()
            .map_or(after, |m| m["inbox_id"].as_u64().unwrap());
        out.extend(items);
        if page["more"] != true {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ownership_moves_under_load_and_every_acked_message_stays() {
    let mut c = TestCluster::start().await;
    // Eight users in four pairs, all in one group: each sends to its partner and the group.
    let mut users = Vec::new();
    for k in 0..8 {
        users.push(c.nodes[k % 3].user(&format!("own{k}"), "phone").await);
    }
    let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
    let (status, group) = c.nodes[0]
        .call(
            "POST",
            "/v1/groups",
            Some(&users[0].token),
            Some(json!({"name": "everyone", "members": ids[1..]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group_channel = group["channel"].as_str().unwrap().to_owned();

    let live: Live = Arc::new(Mutex::new(
        c.nodes
            .iter()
            .map(|n| n.url(""))
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect(),
    ));
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut clients = Vec::new();
    for (k, user) in users.iter().enumerate() {
        let partner = &users[k ^ 1];
        let targets = vec![json!({"to": partner.id}), json!({"channel": group_channel})];
        clients.push(tokio::spawn(run_client(
            live.clone(),
            user.clone(),
            targets,
            deadline,
        )));
    }

    // Ownership moves while they send: a node joins, a node drains, an owner dies, etcd
    // restarts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.add_node().await;
    live.lock()
        .unwrap()
        .push(c.nodes[3].url("").trim_end_matches('/').to_owned());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.etcd
        .put(
            &format!("/parley/{}/drain/n2", c.name),
            r#"{"requested_at":0,"deadline":0}"#,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[2].kill();
    live.lock()
        .unwrap()
        .retain(|u| *u != c.nodes[2].url("").trim_end_matches('/'));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    c.etcd.restart().await;

    let mut acked: HashMap<(String, String), Acked> = HashMap::new(); // (sender, cmid)
    for (user, client) in users.iter().zip(clients) {
        for (cmid, ack) in client.await.expect("a client task panicked") {
            acked.insert((user.id.clone(), cmid), ack);
        }
    }

    // Check what the store holds, through a live node.
    let reader = &c.nodes[0];
    let mut channels: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for k in (0..users.len()).step_by(2) {
        let channel = dm(&users[k].id, &users[k + 1].id);
        channels.insert(channel.clone(), history(reader, &users[k], &channel).await);
    }
    channels.insert(
        group_channel.clone(),
        history(reader, &users[0], &group_channel).await,
    );
    for (channel, items) in &channels {
        let seqs: Vec<u64> = items.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{channel}: seqs are gapless"
        );
        let keys: HashSet<(String, String)> = items
            .iter()
            .map(|m| {
                (
                    m["from"].as_str().unwrap().to_owned(),
                    m["client_msg_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(keys.len(), items.len(), "{channel}: no message twice");
    }
    for ((sender, cmid), ack) in &acked {
        let stored = channels[&ack.channel]
            .iter()
            .find(|m| m["from"] == sender.as_str() && m["client_msg_id"] == cmid.as_str())
            .unwrap_or_else(|| panic!("acked {cmid} is missing from {}", ack.channel));
        assert_eq!(
            stored["seq"].as_u64(),
            Some(ack.seq),
            "acked {cmid} is stored at its acked seq"
        );
    }
    let expected = users.len() * 2 * PER_TARGET;
    assert_eq!(acked.len(), expected, "every send was acked once");
    for (k, user) in users.iter().enumerate() {
        let items = inbox(reader, user).await;
        let ids: Vec<u64> = items
            .iter()
            .map(|m| m["inbox_id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "{}: inbox ids are gapless",
            user.username
        );
        let mine: HashSet<(String, u64)> = items
            .iter()
            .map(|m| {
                (
                    m["channel"].as_str().unwrap().to_owned(),
                    m["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(mine.len(), items.len(), "{}: no item twice", user.username);
        let partner = &users[k ^ 1];
        for channel in [dm(&user.id, &partner.id), group_channel.clone()] {
            for item in &channels[&channel] {
                let seq = item["seq"].as_u64().unwrap();
                assert!(
                    mine.contains(&(channel.clone(), seq)),
                    "{}: {channel}#{seq} is missing from the inbox",
                    user.username
                );
            }
        }
    }
}
