//! Revocation across a real three-node cluster (etcd store, etcd membership): a token
//! revoked through any node is refused by every node within 2 s, and the sockets opened
//! with it (on the user's node, wherever that is) are closed with 1008 within 2 s.

use std::time::{Duration, Instant};

use parley_e2e::TestCluster;
use parley_testkit::node::{Client, User};
use serde_json::json;

/// Wait (at most 2 s from `since`) until every node refuses `token` with 401.
async fn refused_everywhere(c: &TestCluster, token: &str, since: Instant, what: &str) {
    for (i, node) in c.nodes.iter().enumerate() {
        loop {
            let (status, _) = node.call("GET", "/v1/users/me", Some(token), None).await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200, "{what}: node n{} answered {status}", i + 1);
            assert!(
                since.elapsed() < Duration::from_secs(2),
                "{what}: node n{} still accepted the token after 2 s",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The socket is closed with 1008 within 2 s of `since`.
async fn closed_in_time(client: &mut Client, since: Instant, what: &str) {
    let left = Duration::from_secs(2).saturating_sub(since.elapsed());
    let code = tokio::time::timeout(left + Duration::from_millis(100), client.closed_with())
        .await
        .unwrap_or_else(|_| panic!("{what}: the socket was not closed within 2 s"));
    assert_eq!(code, 1008, "{what}");
}

/// Index of a node other than `user`'s own.
async fn another_node(c: &TestCluster, user: &User) -> usize {
    let home = c.index(&c.assigned(0, user).await.0);
    (home + 1) % c.nodes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_device_removal_and_password_change_revoke_on_every_node_within_2_s() {
    let c = TestCluster::start().await;
    let phone = c.nodes[0].user("revoked", "phone").await;
    let laptop = c.nodes[1].login("revoked", "laptop").await;
    let tablet = c.nodes[2].login("revoked", "tablet").await;
    let mut phone_socket = c.connect(&phone).await;
    phone_socket.ready().await;
    let mut laptop_socket = c.connect(&laptop).await;
    laptop_socket.ready().await;
    // Every node has the generations cached as valid before the revocations.
    for node in &c.nodes {
        for u in [&phone, &laptop, &tablet] {
            assert_eq!(
                node.call("GET", "/v1/users/me", Some(&u.token), None)
                    .await
                    .0,
                200
            );
        }
    }

    // Log out, through a node that does not hold the socket.
    let via = another_node(&c, &phone).await;
    let since = Instant::now();
    let (status, _) = c.nodes[via]
        .call("DELETE", "/v1/sessions/current", Some(&phone.token), None)
        .await;
    assert_eq!(status, 204);
    refused_everywhere(&c, &phone.token, since, "logout").await;
    closed_in_time(&mut phone_socket, since, "logout").await;

    // Remove the laptop, from the tablet, through another node again.
    let via = another_node(&c, &laptop).await;
    let since = Instant::now();
    let (status, _) = c.nodes[via]
        .call("DELETE", "/v1/devices/laptop", Some(&tablet.token), None)
        .await;
    assert_eq!(status, 204);
    refused_everywhere(&c, &laptop.token, since, "device removal").await;
    closed_in_time(&mut laptop_socket, since, "device removal").await;

    // Change the password from the tablet: the phone's new login is revoked, the tablet
    // keeps its session.
    let phone = c.nodes[0].login("revoked", "phone").await;
    let mut phone_socket = c.connect(&phone).await;
    phone_socket.ready().await;
    let via = another_node(&c, &phone).await;
    let since = Instant::now();
    let (status, _) = c.nodes[via]
        .call(
            "PUT",
            "/v1/users/me/password",
            Some(&tablet.token),
            Some(json!({"password": "password-revoked", "new_password": "a new password"})),
        )
        .await;
    assert_eq!(status, 204);
    refused_everywhere(&c, &phone.token, since, "password change").await;
    closed_in_time(&mut phone_socket, since, "password change").await;
    for node in &c.nodes {
        assert_eq!(
            node.call("GET", "/v1/users/me", Some(&tablet.token), None)
                .await
                .0,
            200,
            "the caller's own session stays"
        );
    }
}
