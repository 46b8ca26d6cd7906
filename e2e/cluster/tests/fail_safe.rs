//! Fail safe, against a real etcd and real nodes: a node cut off from etcd steps down once
//! its lease may have expired (its clients are told to reconnect, `/readyz` fails) and
//! serves again once registered; a second node started with a node id a live node holds is
//! refused registration.

use std::time::{Duration, Instant};

use parley_e2e::TestCluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_loses_etcd_steps_down_until_it_has_registered_again() {
    let mut c = TestCluster::start().await;
    let users = c.users_on("outage", &[0, 1]).await;
    let (a, b) = (&users[0], &users[1]);
    let mut ca = c.connect(a).await;
    let mut cb = c.connect(b).await;
    let ack = ca.say(("to", &b.id), "before", "before the outage").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    cb.until("the first DM", |v| v["client_msg_id"] == "before")
        .await;

    c.etcd.stop().await;
    let stopped = Instant::now();
    // Within the lease's TTL (10 s) every node steps down: its clients get `reconnect`
    // (reason stepped_down) and a 1001 close, and /readyz fails.
    for (who, client) in [("a", &mut ca), ("b", &mut cb)] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // Heartbeats keep the socket alive meanwhile: only the step-down may end it.
            client.send(json!({"type": "heartbeat"})).await;
            let frames = client.drain(Duration::from_millis(500)).await;
            if let Some(f) = frames.iter().find(|f| f["type"] == "reconnect") {
                assert_eq!(f["reason"], "stepped_down", "{who}: {f}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{who} was not told to reconnect within 15 s of losing etcd"
            );
        }
    }
    let stepped_down = stopped.elapsed();
    assert!(
        stepped_down >= Duration::from_secs(3),
        "a short blip does not step a node down: it stepped down after {stepped_down:?}"
    );
    for i in 0..3 {
        assert_eq!(c.readyz(i).await, 503, "n{} reports not ready", i + 1);
    }

    c.etcd.restart().await;
    c.wait_for_members(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..3 {
        while c.readyz(i).await != 200 {
            assert!(
                Instant::now() < deadline,
                "n{} did not become ready again",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Clients that reconnect carry messages across nodes again.
    let mut ca = c.connect(a).await;
    let mut cb = c.connect(b).await;
    cb.ready().await;
    let ack = ca.say(("to", &b.id), "after", "after the outage").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    cb.until("the DM after the outage", |v| v["client_msg_id"] == "after")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_id_a_live_node_holds_is_refused() {
    let c = TestCluster::start().await;
    let intruder = c.node_with_id("n1");
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        if let Ok(line) = intruder.log.recv_timeout(Duration::from_millis(200))
            && line.contains("another live node holds this node id")
        {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "the second n1 did not log that its node id is held"
        );
    };
    assert!(refused.contains("n1"), "{refused}");
    let ready = intruder
        .http
        .get(intruder.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "the refused node is not ready");
    // The first n1 keeps its registration and its users.
    assert_eq!(c.readyz(0).await, 200);
    c.wait_for_members(3).await;
    let u = c.nodes[1].user("stays", "phone").await;
    let mut client = c.connect(&u).await;
    client.ready().await;
}
