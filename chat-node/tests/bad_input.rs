//! Hostile and malformed input: each answered as documented, the node still serving.

mod common;

use common::Node;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn still_serves(node: &Node) {
    let u = node.login("alice", "check").await;
    let mut c = node.ws(&u).await;
    c.send(json!({"type": "sync", "after": 0, "req": "alive"}))
        .await;
    let page = c.until("a sync answer", |v| v["type"] == "sync").await;
    assert_eq!(
        page["req"], "alive",
        "the node still serves after bad input"
    );
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_lives_on() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let mut c = node.ws(&alice).await;
    let cases = [
        ("not json at all".to_owned(), None),
        ("[1,2,3]".to_owned(), None),
        ("{}".to_owned(), None),
        (r#"{"type": 7}"#.to_owned(), None),
        (r#"{"type": "teleport", "req": "r1"}"#.to_owned(), Some("r1")),
        (r#"{"type": "send", "req": "r2", "client_msg_id": 5, "to": "x", "text": "hi"}"#.to_owned(), Some("r2")),
        (r#"{"type": "send", "req": "r3", "client_msg_id": "c", "text": "no target"}"#.to_owned(), Some("r3")),
        (r#"{"type": "send", "req": "r4", "client_msg_id": "c", "to": "a", "channel": "b", "text": "both"}"#.to_owned(), Some("r4")),
        (r#"{"type": "send", "req": "r5", "client_msg_id": "", "to": "x", "text": "empty id"}"#.to_owned(), Some("r5")),
        (format!(r#"{{"type": "send", "req": "r6", "client_msg_id": "{}", "to": "x", "text": "long id"}}"#, "i".repeat(65)), Some("r6")),
        (r#"{"type": "send", "req": "r7", "client_msg_id": "c7", "channel": "not-a-channel", "text": "x"}"#.to_owned(), Some("r7")),
        (r#"{"type": "send", "req": "r8", "client_msg_id": "c8", "to": "u", "text": ""}"#.to_owned(), Some("r8")),
        (r#"{"type": "sync", "req": "r9", "after": "yesterday"}"#.to_owned(), Some("r9")),
        (r#"{"type": "sync", "req": "r10", "after": -5}"#.to_owned(), Some("r10")),
        (r#"{"type": "sync", "req": "r11", "limit": 0}"#.to_owned(), Some("r11")),
        (r#"{"type": "cursor", "req": "r12"}"#.to_owned(), Some("r12")),
        (r#"{"type": "typing", "req": "r13"}"#.to_owned(), Some("r13")),
        (r#"{"type": "send", "req": 13}"#.to_owned(), None),
    ];
    for (text, req) in cases {
        c.send_raw(Message::Text(text.clone().into())).await;
        let err = c
            .until(&format!("an error for {text:?}"), |v| v["type"] == "error")
            .await;
        assert_eq!(err["code"], "bad_request", "{text:?} -> {err}");
        assert!(!err["message"].as_str().unwrap().is_empty());
        assert_eq!(
            err["req"].as_str(),
            req,
            "the error carries the frame's req: {text:?}"
        );
    }
    let err = {
        c.send(json!({"type": "send", "client_msg_id": "keep-me", "to": 42, "text": "x"}))
            .await;
        c.until("error with client_msg_id", |v| v["type"] == "error")
            .await
    };
    assert_eq!(
        err["client_msg_id"], "keep-me",
        "the error carries the frame's client_msg_id"
    );
    still_serves(&node).await;
}

#[tokio::test]
async fn binary_invalid_utf8_and_oversize_frames_close_with_their_codes() {
    let node = Node::start(&["--max-message-chars", "10"]);
    let alice = node.user("alice", "phone").await;

    let mut c = node.ws(&alice).await;
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.closed_with().await, 1003, "binary frames close with 1003");

    let mut c = node.ws(&alice).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await;
    assert_eq!(
        c.closed_with().await,
        1007,
        "invalid UTF-8 closes with 1007"
    );

    // Limit: 12 x 10 chars + 64 KiB.
    let mut c = node.ws(&alice).await;
    let big = format!(
        r#"{{"type":"heartbeat","pad":"{}"}}"#,
        "x".repeat(12 * 10 + 64 * 1024)
    );
    c.send_raw(Message::Text(big.into())).await;
    assert_eq!(
        c.closed_with().await,
        1009,
        "an oversize frame closes with 1009"
    );

    // Just under the limit is fine (the frame is parsed; the text is then too long).
    let mut c = node.ws(&alice).await;
    let ok = format!(
        r#"{{"type":"heartbeat","pad":"{}"}}"#,
        "x".repeat(60 * 1024)
    );
    c.send_raw(Message::Text(ok.into())).await;
    c.send(json!({"type": "send", "client_msg_id": "c", "to": alice.id, "text": "eleven char"}))
        .await;
    let err = c.until("too_large", |v| v["type"] == "error").await;
    assert_eq!(err["code"], "too_large");
    still_serves(&node).await;
}

#[tokio::test]
async fn malformed_and_oversized_http_bodies_and_unknown_routes() {
    let node = Node::start(&["--max-message-chars", "10"]);
    let alice = node.user("alice", "phone").await;
    let post = |path: &str, body: Vec<u8>| {
        node.http
            .post(node.url(path))
            .bearer_auth(&alice.token)
            .header("content-type", "application/json")
            .body(body)
    };
    for body in [
        &b"{not json"[..],
        b"",
        b"[]",
        br#"{"username": 5}"#,
        b"\xff\xfe",
    ] {
        let r = post("/v1/users", body.to_vec()).send().await.unwrap();
        assert_eq!(r.status(), 400, "body {body:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let r = post(
        "/v1/messages",
        br#"{"client_msg_id": "c", "to": "x"}"#.to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    let huge = vec![b'a'; 200 * 1024];
    let r = post("/v1/messages", huge.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413, "a declared oversize body");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_large");
    // Chunked, no Content-Length: still cut at the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        huge.chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let r = node
        .http
        .post(node.url("/v1/messages"))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a chunked oversize body");

    let (s, v) = node
        .call("GET", "/v1/nowhere", Some(&alice.token), None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = node.call("DELETE", "/v1/sessions", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (s, _) = node
        .call("GET", "/v1/sync?after=banana", Some(&alice.token), None)
        .await;
    assert_eq!(s, 400);
    let (s, _) = node
        .call(
            "GET",
            "/v1/channels/%2F..%2Fetc/messages",
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 400);
    still_serves(&node).await;
}

#[tokio::test]
async fn forged_and_missing_tokens_are_refused() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let forger = chat_node::auth::TokenKeys::new(b"a secret that is not the node's one");
    let (forged, _) = forger
        .issue(&alice.id, "phone", 0, chat_node::now_ms())
        .unwrap();
    let mut tampered = alice.token.clone();
    tampered.pop();
    tampered.push(if alice.token.ends_with('A') { 'B' } else { 'A' });
    for token in [forged.as_str(), tampered.as_str(), "garbage", ""] {
        let (s, v) = node.call("GET", "/v1/users/me", Some(token), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "token {token:?}"
        );
        let url = format!("ws://{}/v1/ws?token={token}", node.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!(
                "a bad token must get HTTP 401 before the upgrade, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let (s, _) = node.call("GET", "/v1/contacts", None, None).await;
    assert_eq!(s, 401);
    still_serves(&node).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_as_a_slow_consumer() {
    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let bob = node.user("bob", "phone").await;
    let mut sender = node.ws(&alice).await;
    let mut stalled = node.ws(&bob).await;
    // ~400 KB per message; 60 of them overflow the kernel's buffers and the node's budget.
    let text = "😀".repeat(100_000);
    for i in 0..60 {
        sender.send(json!({"type": "send", "client_msg_id": format!("m{i}"), "to": bob.id, "text": text})).await;
    }
    sender
        .until("the last ack", |v| {
            v["type"] == "ack" && v["client_msg_id"] == "m59"
        })
        .await;
    assert_eq!(
        stalled.closed_with().await,
        1008,
        "a slow consumer is closed with 1008"
    );
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
        metrics.contains("parley_slow_consumers_total 1"),
        "{metrics}"
    );
    still_serves(&node).await;
}

/// What schemathesis (scripts/schemathesis.sh) found against docs/openapi.yaml, each kept
/// fixed: a repeated query parameter was read as its first value; 405s had no `Allow`
/// header; the probes answered any method; a `null` display name is taken as absent (as
/// the document now says).
#[tokio::test]
async fn schema_testing_findings_stay_fixed() {
    let node = Node::start(&[]);
    let u = node.user("schemer", "phone").await;
    let (status, body) = node
        .call("GET", "/v1/sync?limit=&limit=%C2%AA", Some(&u.token), None)
        .await;
    assert_eq!(status, 400, "a repeated query parameter is refused: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 times")
    );

    for (method, path, allow) in [
        ("DELETE", "/v1/messages", "POST"),
        ("TRACE", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("PUT", "/v1/sessions/current", "DELETE"),
    ] {
        let r = node
            .http
            .request(method.parse().unwrap(), node.url(path))
            .bearer_auth(&u.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
    let r = node.http.head(node.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "HEAD is a probe method too");

    let (status, body) = node
        .call(
            "POST",
            "/v1/users",
            None,
            Some(json!({"username": "nullname", "password": "long enough", "display_name": null})),
        )
        .await;
    assert_eq!(
        (status, body["display_name"].as_str()),
        (201, Some("nullname"))
    );
}

/// The gateway's own WebSocket codec, over TCP: a ping is answered with its payload, a text
/// message split into fragments (with a ping between them) is one message, a client's close
/// code is echoed, and an unmasked client frame is a protocol error (1002).
#[tokio::test]
async fn fragments_pings_and_closes_follow_rfc_6455() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let node = Node::start(&[]);
    let alice = node.user("alice", "phone").await;
    let mut c = node.ws(&alice).await;

    c.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong within 10 s");
    assert_eq!(
        &pong[..],
        b"are you there",
        "the pong carries the ping's payload"
    );

    let whole = br#"{"type":"sync","after":0,"req":"fragmented"}"#;
    let (head, tail) = whole.split_at(10);
    let parts = [
        Frame::message(head.to_vec(), OpCode::Data(Data::Text), false),
        Frame::ping(b"between".to_vec()),
        Frame::message(tail.to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for part in parts {
        c.send_raw(Message::Frame(part)).await;
    }
    let page = c
        .until("the fragmented sync's answer", |v| v["type"] == "sync")
        .await;
    assert_eq!(page["req"], "fragmented");

    c.ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4000.into(),
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    assert_eq!(
        c.closed_with().await,
        4000,
        "the client's close code is echoed"
    );

    // By hand: tungstenite masks every client frame.
    let addr = node.addr.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /v1/ws?token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        alice.token
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut got),
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "upgraded: {text}");
    let frames = &got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    let close = frames
        .windows(2)
        .position(|w| w[0] == 0x88)
        .map(|i| &frames[i..])
        .expect("a close frame");
    assert_eq!(
        u16::from_be_bytes([close[2], close[3]]),
        1002,
        "an unmasked client frame closes with 1002"
    );
    still_serves(&node).await;
}
