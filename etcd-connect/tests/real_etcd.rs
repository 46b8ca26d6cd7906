//! `EtcdConnect` against a real etcd over TLS with `--client-cert-auth` (the test kit's
//! throwaway CA), with etcd's user + password auth switched on.

use std::time::Duration;

use etcd_client::{ConnectOptions, Permission};
use parley_etcd_connect::{ConnectError, EtcdConnect, EtcdUser};
use parley_testkit::{Pki, TestEtcd, bounded};

const WAIT: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_user_and_password_over_tls_gets_in_a_wrong_password_does_not() {
    let pki = Pki::new("auth");
    let etcd = TestEtcd::start_tls(&pki).await;
    // A root user (etcd needs one to enable auth) and `parley`, who may use /parley/ only.
    let mut admin = etcd.client().await;
    bounded(10, "set up etcd auth", async {
        admin.user_add("root", "root-pw", None).await.unwrap();
        admin.user_grant_role("root", "root").await.unwrap();
        admin.role_add("parley-rw").await.unwrap();
        admin
            .role_grant_permission(
                "parley-rw",
                Permission::read_write("/parley/").with_prefix(),
            )
            .await
            .unwrap();
        admin.user_add("parley", "s3cret", None).await.unwrap();
        admin.user_grant_role("parley", "parley-rw").await.unwrap();
        admin.auth_enable().await.unwrap();
    })
    .await;

    let client = pki.client("parley-node");
    let mut connect: EtcdConnect = pki.etcd_connect(&[etcd.endpoint().to_owned()], &client);
    connect.user = Some(EtcdUser {
        name: "parley".into(),
        password: "s3cret".into(),
    });
    assert!(!connect.is_plain_text());
    let mut c = connect
        .connect(ConnectOptions::new(), WAIT)
        .await
        .expect("the user gets in over TLS");
    bounded(10, "put under /parley/", c.put("/parley/x", "1", None))
        .await
        .expect("granted prefix");
    let denied = bounded(10, "put outside /parley/", c.put("/elsewhere", "1", None)).await;
    assert!(
        denied.is_err(),
        "the user's role, not the certificate, decides"
    );

    connect.user = Some(EtcdUser {
        name: "parley".into(),
        password: "wrong".into(),
    });
    match connect.connect(ConnectOptions::new(), WAIT).await {
        Err(e @ ConnectError::Etcd(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("--etcd-password-file"),
                "says what to check: {text}"
            );
        }
        Err(e) => panic!("expected etcd's refusal, got {e}"),
        Ok(_) => panic!("a wrong password got in"),
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_of_the_ca_is_refused_by_client_cert_auth() {
    let pki = Pki::new("cca");
    let etcd = TestEtcd::start_tls(&pki).await;
    let foreign = Pki::named("cca", "someone else's CA");
    let stray = foreign.client("intruder");
    let mut connect = pki.etcd_connect(&[etcd.endpoint().to_owned()], &stray);
    let refused = async {
        let mut c = connect.connect(ConnectOptions::new(), WAIT).await?;
        c.get("/parley/", None).await.map_err(ConnectError::Etcd)
    };
    assert!(
        refused.await.is_err(),
        "another CA's client certificate gets nothing"
    );
    connect.tls.as_mut().unwrap().client = None;
    let no_cert = async {
        let mut c = connect.connect(ConnectOptions::new(), WAIT).await?;
        c.get("/parley/", None).await.map_err(ConnectError::Etcd)
    };
    assert!(no_cert.await.is_err(), "no client certificate gets nothing");
}
