//! The operator's `/healthz` and `/metrics` HTTP server, over a real loopback socket.

mod support;

use std::sync::Arc;

use operator::metrics::{Metrics, serve};
use support::bounded;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    // The server starts in a task: retry the connection for a bounded time.
    let mut stream = bounded(10, "the metrics server to accept connections", async {
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    bounded(10, "the HTTP answer", stream.read_to_string(&mut out))
        .await
        .expect("read");
    out
}

#[tokio::test]
async fn healthz_and_metrics_are_served() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let metrics = Arc::new(Metrics::default());
    metrics.leader.set(1);
    drop(metrics.reconcile_started());
    let server = tokio::spawn(serve(addr, metrics.clone()));
    let health = get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    let text = get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert!(text.contains("parley_operator_leader 1"), "{text}");
    assert!(
        text.contains("parley_operator_reconciles_total 1"),
        "{text}"
    );
    let missing = get(addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    server.abort();
}
