//! Accounts, profiles, contacts, groups and membership over the HTTP API of a real node.

mod common;

use common::Node;
use serde_json::json;

#[tokio::test]
async fn sign_up_login_and_profiles() {
    let node = Node::start(&[]);
    let (s, body) = node
        .call("POST", "/v1/users", None, Some(json!({"username": "carol", "password": "password-carol", "display_name": "Carol C"})))
        .await;
    assert_eq!(s, 201);
    assert_eq!(body["username"], "carol");
    assert_eq!(body["display_name"], "Carol C");
    let id = body["user_id"].as_str().unwrap().to_owned();

    let (s, body) = node
        .call(
            "POST",
            "/v1/users",
            None,
            Some(json!({"username": "carol", "password": "another-pass"})),
        )
        .await;
    assert_eq!((s, body["error"]["code"].as_str()), (409, Some("conflict")));
    for bad in [
        json!({"username": "Ca", "password": "password-x"}),
        json!({"username": "dave", "password": "short"}),
    ] {
        let (s, body) = node.call("POST", "/v1/users", None, Some(bad)).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some("bad_request"))
        );
    }

    let (s, body) = node
        .call(
            "POST",
            "/v1/sessions",
            None,
            Some(json!({"username": "carol", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, body) = node
        .call(
            "POST",
            "/v1/sessions",
            None,
            Some(json!({"username": "nobody", "password": "whatever1"})),
        )
        .await;
    assert_eq!(
        s, 401,
        "unknown users get the same answer as wrong passwords: {body}"
    );
    let (s, session) = node
        .call(
            "POST",
            "/v1/sessions",
            None,
            Some(json!({"username": "carol", "password": "password-carol"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(session["user_id"], id.as_str());
    assert!(
        session["device_id"].as_str().unwrap().len() > 2,
        "a device id is chosen when absent"
    );
    assert!(session["expires_at"].as_i64().unwrap() > 0);
    let token = session["token"].as_str().unwrap();

    let (s, me) = node.call("GET", "/v1/users/me", Some(token), None).await;
    assert_eq!((s, me["user_id"].as_str()), (200, Some(id.as_str())));
    let (s, me) = node
        .call(
            "PATCH",
            "/v1/users/me",
            Some(token),
            Some(json!({"display_name": "Caro"})),
        )
        .await;
    assert_eq!((s, me["display_name"].as_str()), (200, Some("Caro")));
    let (s, other) = node
        .call("GET", &format!("/v1/users/{id}"), Some(token), None)
        .await;
    assert_eq!((s, other["display_name"].as_str()), (200, Some("Caro")));
    assert!(other.get("password_hash").is_none());
    let (s, found) = node
        .call("GET", "/v1/users?username=carol", Some(token), None)
        .await;
    assert_eq!((s, found["user_id"].as_str()), (200, Some(id.as_str())));
    assert_eq!(
        node.call("GET", "/v1/users?username=ghost", Some(token), None)
            .await
            .0,
        404
    );
    assert_eq!(
        node.call("GET", "/v1/users/0000000000000000", Some(token), None)
            .await
            .0,
        404
    );
    assert_eq!(node.call("GET", "/v1/users/me", None, None).await.0, 401);
}

#[tokio::test]
async fn contacts_are_one_way_until_mutual() {
    let node = Node::start(&[]);
    let a = node.user("anna", "d").await;
    let b = node.user("ben", "d").await;
    assert_eq!(
        node.call(
            "PUT",
            &format!("/v1/contacts/{}", b.id),
            Some(&a.token),
            None
        )
        .await
        .0,
        204
    );
    let (_, list) = node.call("GET", "/v1/contacts", Some(&a.token), None).await;
    let c = &list["contacts"][0];
    assert_eq!(
        (
            c["user_id"].as_str(),
            c["username"].as_str(),
            c["mutual"].as_bool()
        ),
        (Some(b.id.as_str()), Some("ben"), Some(false))
    );
    assert!(c["status"].is_null(), "no status for a one-way contact");
    assert_eq!(
        node.call(
            "PUT",
            &format!("/v1/contacts/{}", a.id),
            Some(&b.token),
            None
        )
        .await
        .0,
        204
    );
    let (_, list) = node.call("GET", "/v1/contacts", Some(&a.token), None).await;
    assert_eq!(list["contacts"][0]["mutual"], true);
    assert_eq!(list["contacts"][0]["status"], "offline");
    assert_eq!(
        node.call("PUT", "/v1/contacts/ffffffffffffffff", Some(&a.token), None)
            .await
            .0,
        404
    );
    assert_eq!(
        node.call(
            "DELETE",
            &format!("/v1/contacts/{}", b.id),
            Some(&a.token),
            None
        )
        .await
        .0,
        204
    );
    let (_, list) = node.call("GET", "/v1/contacts", Some(&a.token), None).await;
    assert!(list["contacts"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_group_holds_at_most_100_members_and_membership_changes_follow_the_rules() {
    let node = Node::start(&[]);
    let owner = node.user("owner", "d").await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let r = node
            .http
            .post(node.url("/v1/users"))
            .json(&json!({"username": format!("member{i:03}"), "password": format!("password-member{i:03}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["user_id"].as_str().unwrap().to_owned());
    }
    // 1 owner + 100 members = 101: refused at creation.
    let (s, body) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&owner.token),
            Some(json!({"name": "big", "members": ids})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("group_full"))
    );

    // 1 + 99 = 100: accepted; the 101st is refused.
    let (s, group) = node
        .call(
            "POST",
            "/v1/groups",
            Some(&owner.token),
            Some(json!({"name": "big", "members": ids[..99]})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(group["members"].as_array().unwrap().len(), 100);
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let (s, body) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&owner.token),
            Some(json!({"user_id": ids[99]})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("group_full"))
    );

    // A member leaves, making room; a non-member cannot add anyone.
    let m0 = node.login("member000", "d").await;
    assert_eq!(
        node.call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", m0.id),
            Some(&m0.token),
            None
        )
        .await
        .0,
        204
    );
    let (s, _) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&m0.token),
            Some(json!({"user_id": ids[99]})),
        )
        .await;
    assert_eq!(s, 403, "a former member cannot add members");
    let (s, group) = node
        .call(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&owner.token),
            Some(json!({"user_id": ids[99]})),
        )
        .await;
    assert_eq!((s, group["members"].as_array().unwrap().len()), (200, 100));

    // Only the owner removes others.
    let m1 = node.login("member001", "d").await;
    let (s, _) = node
        .call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", ids[2]),
            Some(&m1.token),
            None,
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        node.call(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", ids[2]),
            Some(&owner.token),
            None
        )
        .await
        .0,
        204
    );

    let (_, mine) = node.call("GET", "/v1/groups", Some(&m1.token), None).await;
    assert_eq!(mine["groups"][0]["group_id"], gid.as_str());
    let (_, theirs) = node.call("GET", "/v1/groups", Some(&m0.token), None).await;
    assert!(
        theirs["groups"].as_array().unwrap().is_empty(),
        "a member who left no longer lists the group"
    );
    let (s, _) = node
        .call(
            "GET",
            &format!("/v1/channels/g:{gid}/messages"),
            Some(&m0.token),
            None,
        )
        .await;
    assert_eq!(s, 403, "a member who left cannot read the history");
}
