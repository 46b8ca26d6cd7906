//! Home regions on one real node (PROTOCOL.md, "Placement: home regions"): the region a
//! sign-up gets, where the user object shows it and where it does not, changing it, the
//! region in `/v1/assign`, and user records written before regions existed. The placement
//! across nodes and regions is tested with real processes in e2e/cluster.

mod common;

use chat_node::store::embedded::Embedded;
use chat_node::store::{Kv, keys};
use common::Node;
use serde_json::{Value, json};

async fn sign_up(node: &Node, body: Value) -> (u16, Value) {
    node.call("POST", "/v1/users", None, Some(body)).await
}

#[tokio::test]
async fn a_sign_up_gets_the_given_region_else_the_nodes_and_only_its_owner_sees_it() {
    let node = Node::start(&["--region", "eu-west"]);
    let (s, plain) = sign_up(
        &node,
        json!({"username": "plain", "password": "password-plain"}),
    )
    .await;
    assert_eq!(
        (s, plain["region"].as_str()),
        (201, Some("eu-west")),
        "{plain}"
    );
    let (s, chosen) = sign_up(
        &node,
        json!({"username": "chosen", "password": "password-chosen", "region": "us-east"}),
    )
    .await;
    assert_eq!(
        (s, chosen["region"].as_str()),
        (201, Some("us-east")),
        "{chosen}"
    );
    let (s, bad) = sign_up(
        &node,
        json!({"username": "bad", "password": "password-bad", "region": "Mars Base"}),
    )
    .await;
    assert_eq!(
        (s, bad["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("region"),
        "{bad}"
    );

    let user = node.login("chosen", "phone").await;
    let (_, me) = node
        .call("GET", "/v1/users/me", Some(&user.token), None)
        .await;
    assert_eq!(me["region"], "us-east", "{me}");
    let other = node.login("plain", "phone").await;
    for path in [
        format!("/v1/users/{}", user.id),
        "/v1/users?username=chosen".to_string(),
    ] {
        let (s, public) = node.call("GET", &path, Some(&other.token), None).await;
        assert_eq!(s, 200, "{public}");
        assert!(
            public.get("region").is_none(),
            "a public profile shows no home region: {public}"
        );
    }

    // The only node is the answer whatever the home, and says its own region.
    let (s, assigned) = node
        .call("GET", "/v1/assign", Some(&user.token), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(assigned["region"], "eu-west", "{assigned}");
    assert_eq!(assigned["ws_url"], format!("ws://{}/v1/ws", node.addr));
}

#[tokio::test]
async fn patch_changes_the_home_region_and_the_display_name() {
    let node = Node::start(&[]);
    let user = node.user("mover", "phone").await;
    let (_, me) = node
        .call("GET", "/v1/users/me", Some(&user.token), None)
        .await;
    assert_eq!(
        me["region"], "default",
        "a node without --region is in `default`"
    );
    let (s, me) = node
        .call(
            "PATCH",
            "/v1/users/me",
            Some(&user.token),
            Some(json!({"region": "ap-south"})),
        )
        .await;
    assert_eq!((s, me["region"].as_str()), (200, Some("ap-south")), "{me}");
    assert_eq!(me["display_name"], "mover", "untouched");
    let (s, me) = node
        .call(
            "PATCH",
            "/v1/users/me",
            Some(&user.token),
            Some(json!({"display_name": "Mover"})),
        )
        .await;
    assert_eq!(
        (s, me["display_name"].as_str(), me["region"].as_str()),
        (200, Some("Mover"), Some("ap-south"))
    );
    for (body, what) in [
        (json!({}), r#"needs "display_name" or "region""#),
        (json!({"region": ""}), "not a region name"),
    ] {
        let (s, e) = node
            .call("PATCH", "/v1/users/me", Some(&user.token), Some(body))
            .await;
        assert_eq!(s, 400, "{e}");
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "{message}");
    }
    // The socket of the only node stays: there is nowhere else to go.
    let mut client = node.ws(&user).await;
    client.ready().await;
}

#[tokio::test]
async fn a_user_record_from_before_regions_is_in_the_default_region() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let mut node = Node::start_in(dir.path(), &["--region", "eu"]);
        let user = node.user("veteran", "phone").await;
        assert!(node.terminate().success());
        user.id
    };
    // Rewrite the record as an older version wrote it: no "region". On a runtime of its own,
    // whose end closes the store (and releases its lock) before the node opens it again.
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let kv = Embedded::open(&path).expect("open the embedded store");
            let mut txn = kv.begin().await.unwrap();
            let key = keys::user(&id);
            let bytes = txn.get(&key).await.unwrap().expect("the record");
            let mut record: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(record["region"], "eu", "new records carry their region");
            record.as_object_mut().unwrap().remove("region");
            txn.put(&key, record.to_string().as_bytes());
            txn.commit().await.unwrap();
            kv.sync().await.unwrap();
        });
    })
    .join()
    .expect("rewriting the record");
    let node = Node::start_in(dir.path(), &["--region", "eu"]);
    let user = node.login("veteran", "phone").await;
    let (_, me) = node
        .call("GET", "/v1/users/me", Some(&user.token), None)
        .await;
    assert_eq!(
        me["region"], "default",
        "old records are in the default region: {me}"
    );
    let (s, _) = node
        .call("GET", "/v1/assign", Some(&user.token), None)
        .await;
    assert_eq!(s, 200);
    let mut client = node.ws(&user).await;
    client.ready().await;
}
