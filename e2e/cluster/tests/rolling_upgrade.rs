//! A rolling upgrade without Kubernetes: a real etcd and three real `chat-node` processes;
//! each node in turn is drained first (the operator's drain key, as `chat-operator` writes
//! it before it replaces a pod), then replaced by restarting the process with the same node
//! id and data dir, then let back in (the drain key deleted once the new process
//! registered). Clients stay connected throughout, following `reconnect` as the protocol
//! says, while a sender keeps sending; at the end every acked message reached its recipient
//! (live or through `sync`), inbox ids are gapless, and each client reconnected exactly twice
//! for the whole upgrade: once away when its node drained, once back when it returned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use parley_e2e::TestCluster;
use parley_testkit::node::{Client, User};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The nodes' base URLs, updated as nodes are replaced (they come back on new ports).
type Bases = Arc<Mutex<Vec<String>>>;

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// inbox_id → client_msg_id of every message received, live or synced.
    items: BTreeMap<u64, String>,
    /// The reasons of the `reconnect` frames received.
    reconnects: Vec<String>,
    /// Sockets that ended without a `reconnect` first.
    drops: usize,
    /// Where the client is connected now.
    at: String,
}

/// Ask any live node where `user` belongs.
async fn assign(http: &reqwest::Client, bases: &Bases, user: &User) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = bases.lock().unwrap().clone();
        for base in list {
            if let Ok(r) = http
                .get(format!("{base}/v1/assign"))
                .bearer_auth(&user.token)
                .send()
                .await
                && r.status() == 200
                && let Ok(v) = r.json::<Value>().await
            {
                return v["ws_url"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node answered /v1/assign for {} within 20 s",
            user.username
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client as the protocol asks it to behave: connect where `/v1/assign` (or the last
/// `reconnect`) says, `sync` from the largest inbox id it holds, take live messages, and on
/// `reconnect` go where it points.
async fn roam(user: User, bases: Bases, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let mut next: Option<String> = None;
    while !stop.is_cancelled() {
        let url = match next.take() {
            Some(url) => url,
            None => assign(&http, &bases, &user).await,
        };
        let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(format!("{url}?token={}", user.token)),
        )
        .await
        else {
            // The node is on its way down or not up yet: ask again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut client = Client { ws };
        seen.lock().unwrap().at = url.clone();
        // Its `cur_max_message_id`: everything up to the first gap is held.
        let after = {
            let s = seen.lock().unwrap();
            let mut held = 0;
            while s.items.contains_key(&(held + 1)) {
                held += 1;
            }
            held
        };
        client
            .send(json!({"type": "sync", "after": after, "limit": 1000, "req": "catch-up"}))
            .await;
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                m = client.ws.next() => m,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    seen.lock().unwrap().drops += 1;
                    break;
                }
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut s = seen.lock().unwrap();
            match v["type"].as_str() {
                Some("message") => {
                    s.items.insert(
                        v["inbox_id"].as_u64().unwrap(),
                        v["client_msg_id"].as_str().unwrap().to_owned(),
                    );
                }
                Some("sync") => {
                    for m in v["items"].as_array().unwrap() {
                        s.items.insert(
                            m["inbox_id"].as_u64().unwrap(),
                            m["client_msg_id"].as_str().unwrap().to_owned(),
                        );
                    }
                }
                Some("reconnect") => {
                    s.reconnects
                        .push(v["reason"].as_str().unwrap_or_default().to_owned());
                    next = v["ws_url"].as_str().map(str::to_owned);
                    drop(s);
                    // The server closes after `reconnect`; we go at once.
                    break;
                }
                _ => {}
            }
        }
    }
}

/// Send DMs from `sender` to `to` round-robin over HTTP until `stop`, each retried on
/// another node (same `client_msg_id`, so a retry is never a second message) until acked.
/// Returns the acked `(recipient, client_msg_id)`.
async fn send_throughout(
    sender: User,
    to: Vec<User>,
    bases: Bases,
    stop: CancellationToken,
) -> Vec<(String, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut acked = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for n in 0.. {
        tokio::select! {
            () = stop.cancelled() => return acked,
            _ = tick.tick() => {}
        }
        let recipient = &to[n % to.len()];
        let cmid = format!("roll-{n}");
        let body =
            json!({"to": recipient.id, "client_msg_id": cmid, "text": format!("message {n}")});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        'retry: loop {
            let list = bases.lock().unwrap().clone();
            for base in list.iter().cycle().skip(n).take(list.len()) {
                if let Ok(r) = http
                    .post(format!("{base}/v1/messages"))
                    .bearer_auth(&sender.token)
                    .json(&body)
                    .send()
                    .await
                    && r.status() == 200
                {
                    acked.push((recipient.id.clone(), cmid.clone()));
                    break 'retry;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{cmid} was not acked by any node within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    acked
}

/// Wait (bounded) until every client is connected where `/v1/assign` says.
async fn until_settled(c: &TestCluster, users: &[User], seen: &[Arc<Mutex<Seen>>], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut misplaced = Vec::new();
        for (u, s) in users.iter().zip(seen) {
            let (_, want) = c.assigned(0, u).await;
            if s.lock().unwrap().at != want {
                misplaced.push(u.username.clone());
            }
        }
        if misplaced.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {misplaced:?} not on their assigned node after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_drains_each_node_first_and_clients_lose_nothing() {
    let mut c = TestCluster::start().await;
    let bases: Bases = Arc::new(Mutex::new(c.nodes.iter().map(|n| n.base.clone()).collect()));
    let mut users = Vec::new();
    for k in 0..6 {
        users.push(c.nodes[k % 3].user(&format!("roamer{k}"), "phone").await);
    }
    let sender = c.nodes[0].user("sender", "phone").await;
    let on: HashSet<String> = {
        let mut on = HashSet::new();
        for u in &users {
            on.insert(c.assigned(0, u).await.0);
        }
        on
    };
    assert!(on.len() >= 2, "6 users all on {on:?}");

    let stop = CancellationToken::new();
    let seen: Vec<Arc<Mutex<Seen>>> = users.iter().map(|_| Arc::default()).collect();
    let roamers: Vec<_> = users
        .iter()
        .zip(&seen)
        .map(|(u, s)| tokio::spawn(roam(u.clone(), bases.clone(), s.clone(), stop.clone())))
        .collect();
    until_settled(&c, &users, &seen, "before the upgrade").await;
    let sending = CancellationToken::new();
    let sends = tokio::spawn(send_throughout(
        sender,
        users.clone(),
        bases.clone(),
        sending.clone(),
    ));

    for i in 0..3 {
        // 1. drain: the node moves its clients to the others and empties.
        c.drain(i).await;
        c.until_registration(i, "drain to zero connections", |r| {
            r["draining"] == true && r["connections"] == 0
        })
        .await;
        // 2. replace: SIGTERM, then the same id and data dir start again.
        c.restart(i).await;
        bases.lock().unwrap()[i] = c.nodes[i].base.clone();
        c.wait_for_members(3).await;
        // 3. the new process registered: its drain request goes, and its users come back.
        c.undrain(i).await;
        c.until_registration(i, "take users again", |r| r["draining"] == false)
            .await;
        until_settled(&c, &users, &seen, &format!("after replacing n{}", i + 1)).await;
    }

    sending.cancel();
    let acked = sends.await.unwrap();
    assert!(
        acked.len() >= 20,
        "only {} sends during the upgrade",
        acked.len()
    );
    let mut wanted: HashMap<&str, Vec<&str>> = HashMap::new();
    for (to, cmid) in &acked {
        wanted.entry(to.as_str()).or_default().push(cmid);
    }
    // Every acked message reaches its recipient (the last ones may still be on the way).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (u, s) in users.iter().zip(&seen) {
        let want = wanted.remove(u.id.as_str()).unwrap_or_default();
        loop {
            let missing: Vec<&str> = {
                let got: HashSet<String> = s.lock().unwrap().items.values().cloned().collect();
                want.iter().copied().filter(|m| !got.contains(*m)).collect()
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never got acked messages {missing:?}",
                u.username
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    for r in roamers {
        r.await.unwrap();
    }
    for (u, s) in users.iter().zip(&seen) {
        let s = s.lock().unwrap();
        let ids: Vec<u64> = s.items.keys().copied().collect();
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "{}'s inbox ids are gapless",
            u.username
        );
        assert_eq!(
            s.drops, 0,
            "{}'s socket ended without a reconnect",
            u.username
        );
        assert_eq!(
            s.reconnects,
            ["moved", "moved"],
            "{} reconnects once away from its draining node and once back",
            u.username
        );
    }
}
