//! Real handshakes over loopback: a throwaway CA (the test kit's rcgen PKI), the internal
//! listener's config served by [`crate::listener::serve`], and the per-peer clients.

use std::sync::Arc;

use parley_testkit::pki::{Pki, node_uri as kit_uri};
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::reply::Reply;

use super::*;
use crate::listener::{TlsListener, serve};

fn files(pki: &Pki, stem: &str) -> TransportFiles {
    let f = pki.node(stem);
    TransportFiles {
        cert: f.cert,
        key: f.key,
        ca: pki.ca_file.clone(),
    }
}

#[test]
fn the_identity_uri_is_the_one_the_kit_issues() {
    assert_eq!(node_uri("c.x", "n1"), kit_uri("c.x", "n1"));
}

#[test]
fn a_node_certificate_must_name_this_node_and_chain_to_the_ca() {
    let pki = Pki::new("c");
    let n2 = files(&pki, "n2");
    let err = Transport::mutual_tls("c", "n1", &n2)
        .err()
        .expect("n2's cert for n1");
    let text = err.to_string();
    assert!(
        matches!(err, TransportError::WrongIdentity { .. })
            && text.contains("spiffe://parley/c/node/n1"),
        "{text}"
    );
    let other_cluster = Transport::mutual_tls("d", "n2", &n2)
        .err()
        .expect("cluster c's cert for d");
    assert!(matches!(
        other_cluster,
        TransportError::WrongIdentity { .. }
    ));
    let foreign = Pki::named("c", "someone else's CA");
    let mut stray = files(&foreign, "n1");
    stray.ca = pki.ca_file.clone();
    let err = Transport::mutual_tls("c", "n1", &stray)
        .err()
        .expect("foreign cert");
    assert!(matches!(err, TransportError::NotSignedByCa { .. }), "{err}");
    let ok = Transport::mutual_tls("c", "n1", &files(&pki, "n1")).expect("own cert");
    assert!(ok.is_secure() && ok.scheme() == "https");
}

/// Serve "who are you" on n1's internal listener config; returns the URL and a stop token.
async fn who_am_i_server(transport: Arc<Transport>) -> (String, CancellationToken, Counter) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", tcp.local_addr().unwrap());
    let stop = CancellationToken::new();
    let refused = Counter::default();
    let routes = warp::ext::optional::<PeerNode>().and_then(|p: Option<PeerNode>| async move {
        let who = p.map_or_else(|| "nobody".to_owned(), |p| p.0);
        Ok::<_, warp::Rejection>(who.into_response())
    });
    tokio::spawn(serve(
        TlsListener {
            tcp,
            config: transport.server_config().expect("mutual TLS"),
            identify: Some(transport),
            refused: refused.clone(),
            name: "internal",
            guard: None,
        },
        routes,
        stop.clone(),
    ));
    (url, stop, refused)
}

#[tokio::test]
async fn links_reach_only_the_node_they_expect_and_the_listener_takes_only_cluster_nodes() {
    let pki = Pki::new("c");
    let n1 = Arc::new(Transport::mutual_tls("c", "n1", &files(&pki, "n1")).unwrap());
    let n2 = Transport::mutual_tls("c", "n2", &files(&pki, "n2")).unwrap();
    let (url, stop, refused) = who_am_i_server(n1).await;

    let answer = n2
        .client("n1")
        .get(&url)
        .send()
        .await
        .expect("n2 reaches n1");
    assert_eq!(
        answer.text().await.unwrap(),
        "n2",
        "n1 sees the caller's proved id"
    );

    let wrong = n2.client("n3").get(&url).send().await;
    assert!(
        wrong.is_err(),
        "a client expecting n3 refuses n1's certificate"
    );

    let foreign = Pki::named("c", "foreign CA");
    let mut stray_files = files(&foreign, "n2");
    stray_files.ca = pki.ca_file.clone();
    // An outsider with a certificate of another CA (built by hand: mutual_tls would refuse it).
    let stray = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(
                format!(
                    "{}{}",
                    std::fs::read_to_string(&stray_files.cert).unwrap(),
                    std::fs::read_to_string(&stray_files.key).unwrap()
                )
                .as_bytes(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    assert!(
        stray.get(&url).send().await.is_err(),
        "another CA's client is refused"
    );

    let no_cert = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(
        no_cert.get(&url).send().await.is_err(),
        "no client certificate: refused"
    );
    let plain = reqwest::get(url.replace("https://", "http://")).await;
    assert!(
        plain.is_err(),
        "plain HTTP on the internal listener gets no answer"
    );

    let other_cluster = Transport::mutual_tls("d", "n2", &{
        let f = pki.node_as("d-n2", &node_uri("d", "n2"));
        TransportFiles {
            cert: f.cert,
            key: f.key,
            ca: pki.ca_file.clone(),
        }
    })
    .unwrap();
    assert!(
        other_cluster.client("n1").get(&url).send().await.is_err(),
        "a node of another cluster under the same CA is refused"
    );
    assert!(
        refused.get() >= 4,
        "refusals are counted: {}",
        refused.get()
    );
    stop.cancel();
}

#[tokio::test]
async fn a_renewed_certificate_is_presented_without_a_restart() {
    let pki = Pki::new("c");
    let n1_files = files(&pki, "n1");
    let n1 = Arc::new(Transport::mutual_tls("c", "n1", &n1_files).unwrap());
    let n2 = Transport::mutual_tls("c", "n2", &files(&pki, "n2")).unwrap();
    let (url, stop, _) = who_am_i_server(n1.clone()).await;
    assert!(n2.client("n1").get(&url).send().await.is_ok());
    let before = n1.mtls.as_ref().unwrap().identity.generation();
    pki.node("n1"); // reissued in place: a rotation
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // A fresh client (a new connection) sees the handshake with the renewed certificate.
        let fresh = Transport::mutual_tls("c", "n2", &files(&pki, "n2")).unwrap();
        assert!(fresh.client("n1").get(&url).send().await.is_ok());
        if n1.mtls.as_ref().unwrap().identity.generation() > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n1 did not reload its renewed certificate within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    stop.cancel();
}
