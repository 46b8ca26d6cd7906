//! Limits against abuse (PROTOCOL.md, second wave), each against a real node with real
//! clients: a limited user is refused with 429 / `rate_limited` while others are served.

mod common;

use std::time::{Duration, Instant};

use common::{Node, dm};
use parley_testkit::bounded;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whole seconds from a 429's `Retry-After`.
fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_user_is_limited_while_another_is_served() {
    let node = Node::start(&["--max-sends-per-second", "2", "--send-burst", "10"]);
    let flood = node.user("flood", "phone").await;
    let calm = node.user("calm", "phone").await;
    let mut fc = node.ws(&flood).await;
    fc.ready().await;
    for i in 0..60 {
        fc.send(json!({"type": "send", "to": calm.id, "client_msg_id": format!("f{i}"), "text": "x", "req": format!("r{i}")}))
            .await;
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < 60 {
        let v = fc.next().await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(
                    v["client_msg_id"].is_string() && v["req"].is_string(),
                    "{v}"
                );
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        (10..=14).contains(&acked),
        "a burst of 10 (plus what refilled) is acked: {acked}"
    );
    assert_eq!(acked + limited, 60);

    // Over HTTP too, the same allowance: 429 with Retry-After, nothing stored.
    let r = node
        .http
        .post(node.url("/v1/messages"))
        .bearer_auth(&flood.token)
        .json(&json!({"to": calm.id, "client_msg_id": "http-1", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Meanwhile another user is answered as usual, on both edges.
    let mut cc = node.ws(&calm).await;
    for i in 0..5 {
        let ack = cc.say(("to", &flood.id), &format!("c{i}"), "hi").await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let (status, _) = node
        .call(
            "POST",
            "/v1/messages",
            Some(&calm.token),
            Some(json!({"to": flood.id, "client_msg_id": "c-http", "text": "hi"})),
        )
        .await;
    assert_eq!(status, 200);

    // The flooder's socket stayed open; what was refused was not stored.
    fc.send(json!({"type": "sync", "after": 0, "limit": 1000, "req": "still-open"}))
        .await;
    fc.until("the flooder's socket still answers", |v| {
        v["req"] == "still-open"
    })
    .await;
    let (status, page) = node
        .call(
            "GET",
            &format!(
                "/v1/channels/{}/messages?limit=1000",
                dm(&flood.id, &calm.id)
            ),
            Some(&calm.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let from_flood = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["from"] == flood.id.as_str())
        .count();
    assert_eq!(from_flood, acked, "only acked sends are stored");
    let metrics = node
        .http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("parley_rate_limited_total{limit=\"sends\"}"),
        "the refusals are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seventeenth_socket_of_a_user_is_refused_before_the_upgrade() {
    let node = Node::start(&[]);
    let u = node.user("many", "phone").await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut c = node.ws(&u).await;
        c.ready().await;
        open.push(c);
    }
    let url = format!("ws://{}/v1/ws?token={}", node.addr, u.token);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(e) => panic!("expected an HTTP 429 before the upgrade, got {e}"),
        Ok(_) => panic!("the 17th socket was accepted"),
    }
    // Another user is not affected; a closed socket frees its place.
    let other = node.user("other", "phone").await;
    node.ws(&other).await.ready().await;
    let mut first = open.remove(0);
    first.ws.close(None).await.unwrap();
    let _ = first.drain(Duration::from_millis(100)).await;
    bounded(10, "a place freed by a closed socket", async {
        loop {
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
                return ws;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Read until the server closes the connection; the bytes it sent first.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_requests_are_closed_within_the_timeouts_while_others_are_answered() {
    let node = Node::start(&[
        "--header-timeout-secs",
        "1",
        "--body-timeout-secs",
        "2",
        "--idle-timeout-secs",
        "3",
    ]);
    // 200 connections with half a head each, and one with half a body.
    let started = Instant::now();
    let mut heads = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&node.addr).await.unwrap();
        s.write_all(b"POST /v1/users HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        heads.push(s);
    }
    let mut body = TcpStream::connect(&node.addr).await.unwrap();
    body.write_all(
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
    )
    .await
    .unwrap();

    // Normal requests are answered meanwhile.
    let u = node.user("normal", "phone").await;
    let (status, _) = node.call("GET", "/v1/users/me", Some(&u.token), None).await;
    assert_eq!(status, 200);

    for (i, s) in heads.iter_mut().enumerate() {
        bounded(5, &format!("half-sent head {i} closed"), read_to_close(s)).await;
    }
    let heads_closed = started.elapsed();
    assert!(
        heads_closed < Duration::from_secs(6),
        "heads closed after ~1 s: {heads_closed:?}"
    );
    let answer = bounded(6, "half-sent body closed", read_to_close(&mut body)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // An idle keep-alive connection lives past the head timeout, and is closed after the
    // idle one.
    let mut idle = TcpStream::connect(&node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let answered = Instant::now();
    let _ = bounded(8, "idle connection closed", read_to_close(&mut idle)).await;
    let idled = answered.elapsed();
    assert!(
        idled >= Duration::from_millis(2_500) && idled < Duration::from_secs(6),
        "idle keep-alive closed after ~3 s, not at the 1 s head timeout: {idled:?}"
    );
    let metrics = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every half-sent head is counted; the harness's own pooled connections may add one
    // (a keep-alive connection caught between requests on a loaded machine).
    let header_timeouts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("parley_http_timeouts_total{phase=\"header\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no header timeouts counted: {metrics}"));
    assert!(
        (200..=202).contains(&header_timeouts),
        "200 half-sent heads, {header_timeouts} header timeouts counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_request_of_100000_members_is_refused_in_well_under_a_second() {
    let node = Node::start(&[]);
    let owner = node.user("owner", "phone").await;
    for members in [
        (0..100_000).map(|i| format!("u{i}")).collect::<Vec<_>>(),
        vec!["same".to_owned(); 100_000],
    ] {
        let started = Instant::now();
        let (status, body) = node
            .call(
                "POST",
                "/v1/groups",
                Some(&owner.token),
                Some(json!({"name": "big", "members": members})),
            )
            .await;
        let took = started.elapsed();
        assert!(status == 422 || status == 400, "{status} {body}");
        assert!(took < Duration::from_millis(900), "refused in {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_block_a_username_even_for_the_right_password() {
    let node = Node::start(&["--max-failed-logins", "3"]);
    node.user("victim", "phone").await;
    node.user("bystander", "phone").await;
    let login = |username: &str, password: &str| {
        node.http
            .post(node.url("/v1/sessions"))
            .json(&json!({"username": username, "password": password}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            login("victim", "wrong-password").await.unwrap().status(),
            401
        );
    }
    let r = login("victim", "password-victim").await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "the right password is refused while limited"
    );
    assert!(retry_after(&r) > 60, "the window is minutes long");
    let r = login("bystander", "password-bystander").await.unwrap();
    assert_eq!(r.status(), 200, "other usernames log in as usual");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_and_sign_ups_are_limited_per_client_address() {
    let node = Node::start(&[
        "--max-logins-per-address",
        "3",
        "--trusted-proxies",
        "127.0.0.0/8",
    ]);
    let sign_up = |name: String, forwarded: &'static str| {
        node.http
            .post(node.url("/v1/users"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"username": name, "password": "long enough"}))
            .send()
    };
    for i in 0..3 {
        assert_eq!(
            sign_up(format!("aaa{i}"), "203.0.113.1")
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let r = sign_up("aaa3".into(), "203.0.113.1").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    // Behind the trusted proxy, another client address has its own allowance.
    assert_eq!(
        sign_up("bbb0".into(), "198.51.100.7, 127.0.0.1")
            .await
            .unwrap()
            .status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_per_user_and_devices_per_user_are_bounded() {
    let node = Node::start(&["--max-groups-per-user", "2", "--max-devices-per-user", "2"]);
    let u = node.user("maker", "d1").await;
    for _ in 0..2 {
        let (status, _) = node
            .call(
                "POST",
                "/v1/groups",
                Some(&u.token),
                Some(json!({"name": "g", "members": []})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (status, body) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&u.token),
            Some(json!({"name": "g", "members": []})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("group_limit"))
    );

    // d1 (longest unused), d2, then d3: d1 is removed and its token revoked.
    let d2 = node.login("maker", "d2").await;
    let mut c2 = node.ws(&d2).await;
    c2.ready().await;
    let d3 = node.login("maker", "d3").await;
    let (status, _) = node.call("GET", "/v1/users/me", Some(&u.token), None).await;
    assert_eq!(status, 401, "the evicted device's token is refused");
    let (status, devices) = node.call("GET", "/v1/devices", Some(&d3.token), None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&"d1"), "{ids:?}");
}
