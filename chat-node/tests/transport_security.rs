//! Transport security of one node, with real processes and real TLS: client-facing TLS
//! (`--tls-cert-file`), a cluster node that refuses plain text unless `--insecure-cluster`,
//! and TiKV's client certificate presented to a TLS stand-in for PD (no TiKV can run here;
//! the test's name says so). The cluster-wide checks (mTLS links, forged members) are in
//! e2e/cluster/tests/security.rs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_node::store::StoreError;
use chat_node::store::tikv::{TikvKv, TikvSecurity};
use futures_util::{SinkExt, StreamExt};
use parley_testkit::node::{Node, chat_node_bin};
use parley_testkit::{Pki, TestEtcd};
use rcgen::SanType;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn roots(pki: &Pki) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

#[tokio::test]
async fn a_node_with_a_certificate_serves_https_and_wss_and_assigns_wss_urls() {
    let pki = Pki::new("solo");
    let cert = pki.issue(
        "client-tls",
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ],
    );
    let node = Node::start(&[
        "--tls-cert-file",
        cert.cert.to_str().unwrap(),
        "--tls-key-file",
        cert.key.to_str().unwrap(),
    ]);
    assert!(node.base.starts_with("https://"), "{}", node.base);
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = |p: &str| format!("https://{}{p}", node.addr);
    let r = https
        .post(url("/v1/users"))
        .json(&json!({"username": "tls1", "password": "password-tls1"}))
        .send()
        .await
        .expect("HTTPS to the client port");
    assert_eq!(r.status(), 201);
    let login: Value = https
        .post(url("/v1/sessions"))
        .json(&json!({"username": "tls1", "password": "password-tls1", "device_id": "d"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    let assign: Value = https
        .get(url("/v1/assign"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(assign["ws_url"], format!("wss://{}/v1/ws", node.addr));
    assert!(
        reqwest::get(format!("http://{}/healthz", node.addr))
            .await
            .is_err(),
        "plain HTTP on the TLS client port gets no answer"
    );

    // A real WebSocket over TLS.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(&pki))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the client port");
    let ws_url = format!("wss://{}/v1/ws?token={token}", node.addr);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(ws_url, tls),
    )
    .await
    .expect("WebSocket upgrade in time")
    .expect("WebSocket over TLS");
    ws.send(Message::Text(
        json!({"type": "sync", "after": 0, "limit": 1, "req": "r1"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["req"] == "r1" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("an answer over wss");
    assert_eq!(answer["req"], "r1");
}

async fn exits_with(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(chat_node_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("chat-node exits within 30 s")
    .expect("chat-node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_cluster_node_refuses_plain_text_and_says_what_to_add() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef\n").unwrap();
    let (ok, text) = exits_with(&[
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        "http://127.0.0.1:1",
        "--token-secret-file",
        secret.path().to_str().unwrap(),
    ])
    .await;
    assert!(!ok, "started in plain text: {text}");
    for flag in [
        "--insecure-cluster",
        "--internal-cert-file",
        "--etcd-ca-file",
    ] {
        assert!(text.contains(flag), "names {flag}: {text}");
    }
}

#[tokio::test]
async fn an_insecure_cluster_node_runs_but_says_so_loudly() {
    let etcd = TestEtcd::start().await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef\n").unwrap();
    let node = Node::start(&[
        "--etcd",
        etcd.endpoint(),
        "--cluster",
        "insecure",
        "--node-id",
        "i1",
        "--token-secret-file",
        secret.path().to_str().unwrap(),
        "--insecure-cluster",
    ]);
    let internal = node.internal.clone().expect("an internal listener");
    // Plain HTTP on its own port; still 404 on the client port.
    let r = reqwest::get(format!("http://{internal}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = node
        .http
        .post(node.url("/internal/v1/status"))
        .json(&json!({"users": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Each plain-text part was logged loudly before `listening on`.
    let warnings: Vec<&String> = node
        .startup
        .iter()
        .filter(|l| l.contains("INSECURE CLUSTER"))
        .collect();
    assert_eq!(warnings.len(), 2, "links and etcd: {:#?}", node.startup);
    assert!(warnings.iter().any(|l| l.contains("mutual TLS")));
    assert!(warnings.iter().any(|l| l.contains("etcd")));
}

/// A TLS server standing in for PD: it requires a client certificate of `pki`'s CA and
/// counts the handshakes that presented one (it speaks no gRPC after that).
async fn pd_standin(pki: &Pki) -> (String, Arc<AtomicUsize>) {
    let server_cert = pki.etcd_server();
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&server_cert.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&server_cert.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(pki)),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let verified = Arc::new(AtomicUsize::new(0));
    let count = verified.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            if let Ok(tls) = acceptor.accept(stream).await
                && tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty())
            {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (addr, verified)
}

#[tokio::test]
async fn tikv_presents_its_client_certificate_over_tls_to_a_pd_standin() {
    let pki = Pki::new("t");
    let (pd, verified) = pd_standin(&pki).await;
    let client = pki.client("parley-node");
    let security = TikvSecurity {
        ca: pki.ca_file.clone(),
        cert: client.cert.clone(),
        key: client.key.clone(),
    };
    match TikvKv::connect_with(std::slice::from_ref(&pd), "/t/", Some(&security)).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains(&pd), "names {pd}: {m}"),
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("a stand-in that speaks no gRPC cannot be a PD"),
    }
    assert!(
        verified.load(Ordering::SeqCst) >= 1,
        "tikv-client completed a TLS handshake with its client certificate"
    );
    let missing = TikvSecurity {
        key: pki.dir().join("missing.key"),
        ..security
    };
    match TikvKv::connect_with(std::slice::from_ref(&pd), "/t/", Some(&missing)).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("--tikv-key-file"), "{m}"),
        other => panic!(
            "expected the missing key named, got {other:?}",
            other = other.is_ok()
        ),
    }
}
