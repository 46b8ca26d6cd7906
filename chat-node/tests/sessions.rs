//! Sessions (PROTOCOL.md, second wave): logout, device removal and password change revoke
//! tokens at once and close the sockets opened with them (1008).

mod common;

use common::Node;
use parley_testkit::bounded;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logging_out_revokes_the_token_and_closes_its_sockets() {
    let node = Node::start(&[]);
    let u = node.user("leaver", "phone").await;
    let laptop = node.login("leaver", "laptop").await;
    let mut phone_socket = node.ws(&u).await;
    phone_socket.ready().await;
    let mut laptop_socket = node.ws(&laptop).await;
    laptop_socket.ready().await;

    let (status, _) = node
        .call("DELETE", "/v1/sessions/current", Some(&u.token), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = node.call("GET", "/v1/users/me", Some(&u.token), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        bounded(2, "the phone's socket closed", phone_socket.closed_with()).await,
        1008
    );
    // The other device is untouched.
    let (status, _) = node
        .call("GET", "/v1/users/me", Some(&laptop.token), None)
        .await;
    assert_eq!(status, 200);
    laptop_socket
        .send(json!({"type": "sync", "after": 0, "req": "alive"}))
        .await;
    laptop_socket
        .until("the laptop still served", |v| v["req"] == "alive")
        .await;
    // A revoked token cannot open a socket; logging in again works.
    let url = format!("ws://{}/v1/ws?token={}", node.addr, u.token);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a revoked token opened a socket: {:?}", other.map(|_| ())),
    }
    let again = node.login("leaver", "phone").await;
    let (status, _) = node
        .call("GET", "/v1/users/me", Some(&again.token), None)
        .await;
    assert_eq!(status, 200, "a new login of the same device works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_device_revokes_it_and_drops_it_from_the_list() {
    let node = Node::start(&[]);
    let phone = node.user("owner", "phone").await;
    let laptop = node.login("owner", "laptop").await;
    let mut phone_socket = node.ws(&phone).await;
    phone_socket.ready().await;
    let (status, _) = node
        .call(
            "PUT",
            "/v1/devices/phone/push",
            Some(&phone.token),
            Some(json!({"provider": "webhook", "token": "t"})),
        )
        .await;
    assert_eq!(status, 204);

    let (status, _) = node
        .call("DELETE", "/v1/devices/phone", Some(&laptop.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        bounded(
            2,
            "the removed device's socket closed",
            phone_socket.closed_with()
        )
        .await,
        1008
    );
    let (status, _) = node
        .call("GET", "/v1/users/me", Some(&phone.token), None)
        .await;
    assert_eq!(status, 401);
    let (_, devices) = node
        .call("GET", "/v1/devices", Some(&laptop.token), None)
        .await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["laptop"]);
    let (status, body) = node
        .call("DELETE", "/v1/devices/phone", Some(&laptop.token), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = node
        .call("DELETE", "/v1/devices/no%2Fsuch", Some(&laptop.token), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changing_the_password_revokes_every_other_session() {
    let node = Node::start(&[]);
    let me = node.user("changer", "phone").await;
    let other = node.login("changer", "tablet").await;
    let mut other_socket = node.ws(&other).await;
    other_socket.ready().await;

    let (status, body) = node
        .call(
            "PUT",
            "/v1/users/me/password",
            Some(&me.token),
            Some(json!({"password": "not the password", "new_password": "a brand new one"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = node
        .call("GET", "/v1/users/me", Some(&other.token), None)
        .await;
    assert_eq!(status, 200, "a wrong current password changes nothing");

    let (status, _) = node
        .call(
            "PUT",
            "/v1/users/me/password",
            Some(&me.token),
            Some(json!({"password": "password-changer", "new_password": "a brand new one"})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        bounded(
            2,
            "the other session's socket closed",
            other_socket.closed_with()
        )
        .await,
        1008
    );
    let (status, _) = node
        .call("GET", "/v1/users/me", Some(&other.token), None)
        .await;
    assert_eq!(status, 401, "every other session is revoked");
    let (status, _) = node
        .call("GET", "/v1/users/me", Some(&me.token), None)
        .await;
    assert_eq!(status, 200, "the caller's own session stays");
    let old = node
        .http
        .post(node.url("/v1/sessions"))
        .json(&json!({"username": "changer", "password": "password-changer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let new = node
        .http
        .post(node.url("/v1/sessions"))
        .json(&json!({"username": "changer", "password": "a brand new one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 200);
}
