//! Push notifications in a cluster: every node's worker sees the shared outbox, but exactly
//! one node (the channel's rendezvous owner) sends each push, and only when the recipient is
//! online on no node. The webhook is a local stand-in (the test's name says so).

use std::time::Duration;

use parley_e2e::TestCluster;
use parley_testkit::standin::StandIn;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_user_gets_each_push_once_from_a_three_node_cluster_standin_webhook() {
    let hook = StandIn::start(|_| (200, "{}".into())).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "webhook-secret-0123456789\n").unwrap();
    let url = format!("{}/push", hook.url());
    let c = TestCluster::start_with(&[
        "--push-webhook",
        &url,
        "--push-secret-file",
        secret.path().to_str().unwrap(),
        "--push-coalesce-ms",
        "200",
    ])
    .await;
    let users = c.users_on("push", &[0, 1, 2]).await;
    let (sender, offline, online) = (&users[0], &users[1], &users[2]);
    for u in [offline, online] {
        let (status, body) = c.nodes[2]
            .call(
                "PUT",
                &format!("/v1/devices/{}/push", u.device),
                Some(&u.token),
                Some(json!({"provider": "webhook", "token": format!("tok-{}", u.username)})),
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }
    let mut cs = c.connect(sender).await;
    let mut co = c.connect(online).await;
    co.ready().await;
    let (status, group) = c.nodes[0]
        .call(
            "POST",
            "/v1/groups",
            Some(&sender.token),
            Some(json!({"name": "pushy", "members": [offline.id, online.id]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let channel = format!("g:{}", group["group_id"].as_str().unwrap());
    for k in 0..3 {
        let ack = cs
            .say(
                ("channel", &channel),
                &format!("p{k}"),
                &format!("push {k}"),
            )
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    let counted = |reqs: &[parley_testkit::standin::Recorded]| {
        reqs.iter()
            .map(|r| r.json()["count"].as_u64().unwrap_or(1))
            .sum::<u64>()
    };
    hook.wait_for("pushes for all three messages", |reqs| counted(reqs) >= 3)
        .await;
    // Give any duplicate (a second node doing the same work) time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reqs = hook.requests();
    assert_eq!(
        counted(&reqs),
        3,
        "each message is pushed once: {:?}",
        reqs.iter().map(|r| r.json()).collect::<Vec<Value>>()
    );
    for r in &reqs {
        let body = r.json();
        assert_eq!(
            body["user_id"],
            offline.id.as_str(),
            "only the offline member is pushed: {body}"
        );
        assert_eq!(body["token"], format!("tok-{}", offline.username));
        assert_eq!(body["channel"], channel.as_str());
    }
}
