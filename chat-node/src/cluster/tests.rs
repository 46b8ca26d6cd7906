//! Unit tests of the cluster view: assignment, draining, regions.
use super::*;

#[test]
fn ws_url_follows_advertise_url_then_host_then_listen() {
    let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let c = Cluster::single("n1".into(), Some("https://chat.example.com/".into()), any);
    assert_eq!(c.ws_url(Some("x")), "wss://chat.example.com/v1/ws");
    let c = Cluster::single("n1".into(), None, any);
    assert_eq!(c.ws_url(Some("10.0.0.5:8080")), "ws://10.0.0.5:8080/v1/ws");
    let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let c = Cluster::single("n1".into(), None, lo);
    assert_eq!(
        c.assign("u", "default", Some("localhost:9000")).ws_url,
        "ws://127.0.0.1:9000/v1/ws"
    );
}

fn member(id: &str, draining: bool) -> Member {
    Member {
        node_id: id.into(),
        advertise_url: format!("http://{id}"),
        ws_url: format!("ws://{id}/v1/ws"),
        capacity: 10,
        draining,
        ..Member::default()
    }
}

fn node(id: &str) -> Cluster {
    Cluster::new(settings(id))
}

#[test]
fn every_node_assigns_a_user_to_the_same_node() {
    let ids = ["a", "b", "c"];
    let nodes: Vec<Cluster> = ids.iter().map(|id| node(id)).collect();
    for n in &nodes {
        n.set_peers(
            ids.iter()
                .map(|id| (id.to_string(), member(id, false)))
                .collect(),
        );
    }
    for k in 0..300 {
        let user = format!("user{k}");
        let answers: Vec<String> = nodes
            .iter()
            .map(|n| n.assign(&user, "default", None).node_id)
            .collect();
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{user}: {answers:?}"
        );
    }
}

#[test]
fn draining_members_take_no_users_unless_all_drain() {
    let n = node("a");
    n.set_peers([("b".to_string(), member("b", true))].into());
    for k in 0..50 {
        assert_eq!(n.owner(&format!("u{k}")), Owner::Here);
    }
    n.set_draining(true);
    n.set_peers([("b".to_string(), member("b", false))].into());
    for k in 0..50 {
        assert!(matches!(n.owner(&format!("u{k}")), Owner::Peer(m) if m.node_id == "b"));
    }
    n.set_peers([("b".to_string(), member("b", true))].into());
    let owners: std::collections::HashSet<bool> =
        (0..50).map(|k| n.is_here(&format!("u{k}"))).collect();
    assert_eq!(
        owners.len(),
        2,
        "with every node draining, users still spread over all"
    );
}

fn in_region(id: &str, region: &str) -> Cluster {
    Cluster::new(Settings {
        region: region.into(),
        ..settings(id)
    })
}

fn settings(id: &str) -> Settings {
    Settings {
        node_id: id.into(),
        cluster: "c".into(),
        advertise_url: Some(format!("http://{id}")),
        listen: "127.0.0.1:1".parse().unwrap(),
        capacity: 10,
        zone: None,
        region: "default".into(),
        clustered: true,
        internal_url: Some(format!("https://{id}:8081")),
        client_tls: false,
        require_proof: false,
    }
}

fn regional(id: &str, region: &str) -> (String, Member) {
    (
        id.to_string(),
        Member {
            region: region.into(),
            ..member(id, false)
        },
    )
}

#[test]
fn with_regions_every_node_agrees_and_unknown_homes_reach_every_region() {
    let ids = [("e1", "eu"), ("e2", "eu"), ("u1", "us")];
    let nodes: Vec<Cluster> = ids.iter().map(|(id, r)| in_region(id, r)).collect();
    for n in &nodes {
        n.set_peers(ids.iter().map(|(id, r)| regional(id, r)).collect());
    }
    for k in 0..100 {
        let user = format!("user{k}");
        let home = if k % 2 == 0 { "eu" } else { "us" };
        let answers: Vec<NodeAddress> = nodes.iter().map(|n| n.assign(&user, home, None)).collect();
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{user}: {answers:?}"
        );
        assert_eq!(answers[0].region, home, "{user} left its home region");
    }
    // e1 never saw u7's record: a delivery for u7 goes to both regions' owners.
    let (local, remote) = nodes[0].partition(["u7"]);
    let targets = local.len() + remote.len();
    assert_eq!(targets, 2, "one per region: {local:?} {remote:?}");
    // Once the home is known, one node.
    nodes[0].learn_home("u7", "us");
    let (local, remote) = nodes[0].partition(["u7"]);
    assert!(local.is_empty());
    assert_eq!(remote.keys().collect::<Vec<_>>(), ["u1"]);
    // A home change is remembered and queued for the rebalancer.
    nodes[0].home_changed("u7", "eu");
    assert_eq!(nodes[0].take_moves(), ["u7"]);
    assert!(
        matches!(nodes[0].owner("u7"), Owner::Here)
            || matches!(nodes[0].owner("u7"), Owner::Peer(m) if m.region == "eu"),
        "u7 now belongs in eu"
    );
}

#[test]
fn keys_that_are_not_users_ignore_regions() {
    let a = in_region("e1", "eu");
    a.set_peers([regional("u1", "us")].into());
    let owners: std::collections::HashSet<bool> =
        (0..100).map(|k| a.owns_key(&format!("g:{k}"))).collect();
    assert_eq!(owners.len(), 2, "channels spread over both regions' nodes");
}

#[test]
fn a_one_on_one_channel_is_owned_where_one_of_its_users_inboxes_is() {
    let ids = ["a", "b", "c", "d", "e"];
    let n = node("a");
    let peers: HashMap<String, Member> = ids
        .iter()
        .map(|id| (id.to_string(), member(id, false)))
        .collect();
    n.set_owners(peers, false, 1, 1);
    let view = n.owners();
    let mut both_local = 0;
    for k in 0..300 {
        let (u, v) = (format!("u{k}"), format!("v{k}"));
        let (ou, ov) = (view.owner(&u), view.owner(&v));
        let channel = crate::protocol::validate::Channel::direct(&u, &v).to_string();
        let oc = view.owner(&channel);
        assert!(
            oc == ou || oc == ov,
            "{channel}: owned by {oc:?}, inboxes at {ou:?} and {ov:?}"
        );
        both_local += usize::from(ou == ov);
    }
    assert!(both_local > 0, "some pairs share a node");
}
