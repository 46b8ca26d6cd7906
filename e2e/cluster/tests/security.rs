//! An outsider fails: the cluster of `TestCluster` (real etcd with `--client-cert-auth`,
//! three real nodes with mutual TLS) against someone who can reach its ports, or write to
//! its etcd, without a node certificate of the cluster's CA.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use parley_e2e::TestCluster;
use parley_testkit::node::chat_node_bin;
use parley_testkit::pki::{CertFiles, Pki};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncReadExt;

/// A client of the internal listener presenting `cert` and trusting `ca` (PEM).
fn tls_client(ca_pem: &str, cert: Option<&CertFiles>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some(c) = cert {
        let pem = format!("{}{}", c.cert_pem(), c.key_pem());
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn batch_to(user: &str, from: &str) -> Value {
    json!({"from": from, "events": [{"type": "frame", "to": [user], "frame": "{\"type\":\"injected\"}"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_listener_refuses_plain_http_other_cas_and_forged_senders() {
    let c = TestCluster::start().await;
    let internal = c.nodes[0]
        .internal
        .clone()
        .expect("n1 has an internal listener");
    let url = format!("https://{internal}/internal/v1/link");
    let u = &c.users_on("victim", &[0]).await[0];
    let mut victim = c.connect(u).await;
    victim.ready().await;

    // Plain HTTP to the TLS port: no HTTP answer at all.
    let plain = reqwest::Client::new()
        .post(url.replace("https://", "http://"))
        .json(&batch_to(&u.id, "n2"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    // TLS without a client certificate, and with a certificate of another CA.
    let none = tls_client(&c.pki.ca_pem(), None)
        .post(&url)
        .json(&batch_to(&u.id, "n2"))
        .send()
        .await;
    assert!(
        none.is_err(),
        "no client certificate got an answer: {none:?}"
    );
    let foreign = Pki::named(&c.name, "an outsider's CA");
    let stray = foreign.node("n2");
    let other = tls_client(&c.pki.ca_pem(), Some(&stray))
        .post(&url)
        .json(&batch_to(&u.id, "n2"))
        .send()
        .await;
    assert!(
        other.is_err(),
        "another CA's certificate got an answer: {other:?}"
    );
    // A real node's certificate (n3) cannot speak for another node (n2).
    let n3 = c
        .pki
        .node_as("n3-again", &parley_testkit::pki::node_uri(&c.name, "n3"));
    let forged = tls_client(&c.pki.ca_pem(), Some(&n3))
        .post(&url)
        .json(&batch_to(&u.id, "n2"))
        .send()
        .await
        .expect("n3's certificate is accepted at the handshake");
    assert_eq!(forged.status(), 403, "a batch from n2 over n3's connection");
    assert!(
        victim
            .drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|f| f["type"] != "injected"),
        "nothing refused reached the victim"
    );
    // The same batch, honestly from n3, is delivered: the refusals above were not for
    // some other reason.
    let honest = tls_client(&c.pki.ca_pem(), Some(&n3))
        .post(&url)
        .json(&batch_to(&u.id, "n3"))
        .send()
        .await
        .unwrap();
    assert_eq!(honest.status(), 204);
    victim
        .until("the frame a real node sent", |f| f["type"] == "injected")
        .await;
    let refused = c.metric(0, "parley_tls_handshakes_refused_total").await;
    assert!(refused >= 3, "n1 counted {refused} refused handshakes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_port_serves_no_internal_route_and_the_old_link_key_is_dead() {
    let c = TestCluster::start().await;
    let u = &c.users_on("old", &[0]).await[0];
    let mut victim = c.connect(u).await;
    victim.ready().await;
    // The key every node used to accept: HMAC-SHA256(token secret, "parley node link v1").
    let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(b"parley node link v1");
    let old_key = hex::encode(mac.finalize().into_bytes());
    for path in [
        "/internal/v1/link",
        "/internal/v1/status",
        "/internal/v1/identity",
    ] {
        let r = c.nodes[0]
            .http
            .post(c.nodes[0].url(path))
            .bearer_auth(&old_key)
            .json(&batch_to(&u.id, "n2"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the client port");
    }
    // The old key over TLS to the internal listener, without a node certificate: refused
    // at the handshake, before the key is even read.
    let internal = c.nodes[0].internal.clone().unwrap();
    let r = tls_client(&c.pki.ca_pem(), None)
        .post(format!("https://{internal}/internal/v1/link"))
        .bearer_auth(&old_key)
        .json(&batch_to(&u.id, "n2"))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        victim
            .drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|f| f["type"] != "injected"),
        "the old key injected a frame"
    );
}

/// A TLS server that presents `cert` and records whatever it decrypts.
async fn impostor(cert: &CertFiles) -> (String, Arc<Mutex<Vec<u8>>>) {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_registered_in_etcd_without_its_certificate_gets_no_users_and_no_traffic() {
    let c = TestCluster::start().await;
    // Two impostors anyone with etcd write access could register, each with a huge weight
    // so that rendezvous would hand them nearly every user: "n8" serves a real node
    // certificate of the cluster's CA, but n2's (a stolen or borrowed one); "n9" has no
    // internal listener at all.
    let stolen = c
        .pki
        .node_as("n2-stolen", &parley_testkit::pki::node_uri(&c.name, "n2"));
    let (n8_at, n8_seen) = impostor(&stolen).await;
    for (id, internal) in [("n8", format!("https://{n8_at}")), ("n9", String::new())] {
        let record = json!({
            "node_id": id,
            "advertise_url": format!("http://{n8_at}"),
            "ws_url": format!("ws://{n8_at}/v1/ws"),
            "internal_url": internal,
            "capacity": 1_000_000_000u64,
            "connections": 0,
            "draining": false,
        });
        c.etcd
            .put(
                &format!("/parley/{}/nodes/{id}", c.name),
                &record.to_string(),
            )
            .await;
    }
    for i in 0..3 {
        c.wait_metric(i, "parley_cluster_unproved_members", 2).await;
    }
    c.wait_for_members(3).await;
    let mut users = Vec::new();
    for k in 0..30 {
        let u = c.nodes[k % 3].user(&format!("forged{k}"), "phone").await;
        for via in 0..3 {
            let (node, url) = c.assigned(via, &u).await;
            assert!(
                ["n1", "n2", "n3"].contains(&node.as_str()) && !url.contains(&n8_at),
                "node {via} assigned {} to {node} at {url}",
                u.username
            );
        }
        users.push(u);
    }
    // Traffic that would fan out to every member: messages, presence, typing. (Whether a
    // send is acked here depends on the write path's ownership view, which still counts
    // unproved records (see the report of issue 13): what is checked is that nothing
    // reaches the impostor.)
    let (a, b) = (&users[0], &users[1]);
    c.nodes[0].befriend(a, b).await;
    let mut ca = c.connect(a).await;
    let mut cb = c.connect(b).await;
    cb.ready().await;
    ca.ready().await;
    for k in 0..5 {
        ca.send(
            json!({"type": "send", "to": b.id, "client_msg_id": format!("m{k}"), "text": "hello"}),
        )
        .await;
    }
    let channel = parley_testkit::node::dm(&a.id, &b.id);
    ca.send(json!({"type": "typing", "channel": channel})).await;
    cb.until("a's typing, relayed between the real nodes", |v| {
        v["type"] == "typing" && v["user"] == a.id.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        n8_seen.lock().unwrap().is_empty(),
        "the impostor decrypted traffic: {:?}",
        String::from_utf8_lossy(&n8_seen.lock().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_certificate_names_another_node_does_not_start() {
    let c = TestCluster::start().await;
    let mut flags = c.pki.node_flags("n2");
    // Keep n2's certificate but claim to be n4.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    flags.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            c.etcd.endpoint(),
            "--cluster",
            &c.name,
            "--node-id",
            "n4",
            "--store",
            "etcd",
            "--token-secret-file",
            secret.path().to_str().unwrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(chat_node_bin())
            .args(&flags)
            .output(),
    )
    .await
    .expect("chat-node with another node's certificate did not exit within 30 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains(&format!("spiffe://parley/{}/node/n4", c.name)),
        "the error names the identity it needs: {stderr}"
    );
    c.wait_for_members(3).await;
}
