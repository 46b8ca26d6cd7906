//! # Parley end-to-end tests
//!
//! The tests in `tests/` start real processes: an etcd (from the system's `etcd-server`
//! package) and several `chat-node` binaries, and drive them with real WebSocket and HTTP
//! clients. This library holds the cluster fixture they share; the single-process pieces
//! (etcd, one node, clients, the throwaway CA) come from `parley-testkit`.
//!
//! Everything runs with TLS, as a production cluster does: etcd has its own server
//! certificate and `--client-cert-auth`, every node has an etcd client certificate and a
//! node certificate naming it, and the nodes' links are mutual TLS.

use std::time::Duration;

use parley_testkit::node::{Client, Node, User};
use parley_testkit::{Pki, TestEtcd};

/// A real etcd and three (or more) real chat nodes sharing it (`--store etcd`), ids `n1`, `n2`, ….
pub struct TestCluster {
    /// The cluster's throwaway CA (etcd's, the nodes' and the clients' certificates).
    pub pki: Pki,
    pub etcd: TestEtcd,
    pub nodes: Vec<Node>,
    /// The `--cluster` name (its etcd keys live under `/parley/<name>/`).
    pub name: String,
    /// Flags every node gets beyond the cluster's own.
    extra: Vec<String>,
    _secret: tempfile::NamedTempFile,
}

impl TestCluster {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Start with `extra` flags for every node.
    pub async fn start_with(extra: &[&str]) -> Self {
        let name = format!("t{}", std::process::id());
        let pki = Pki::new(&name);
        let etcd = TestEtcd::start_tls(&pki).await;
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef\n").unwrap();
        let mut c = Self {
            pki,
            etcd,
            nodes: Vec::new(),
            name,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _secret: secret,
        };
        for _ in 0..3 {
            c.spawn_node();
        }
        c.wait_for_members(3).await;
        c
    }

    /// Start one more node (`n<count+1>`) and wait until every node sees it.
    pub async fn add_node(&mut self) {
        self.spawn_node();
        self.wait_for_members(self.nodes.len()).await;
    }

    fn spawn_node(&mut self) {
        let id = format!("n{}", self.nodes.len() + 1);
        let node = self.node_with_id(&id);
        self.nodes.push(node);
    }

    /// Start a node of this cluster with `id` (not added to `nodes`): e.g. a second node
    /// with an id a live node holds.
    pub fn node_with_id(&self, id: &str) -> Node {
        let secret = self._secret.path().to_str().unwrap();
        let tls = self.pki.node_flags(id);
        let mut args: Vec<&str> = vec![
            "--etcd",
            self.etcd.endpoint(),
            "--cluster",
            &self.name,
            "--node-id",
            id,
            "--token-secret-file",
            secret,
            "--store",
            "etcd",
            "--drain-seconds",
            "2",
        ];
        args.extend(tls.iter().map(String::as_str));
        args.extend(self.extra.iter().map(String::as_str));
        Node::start(&args)
    }

    /// `/readyz`'s status on node `i`.
    pub async fn readyz(&self, i: usize) -> u16 {
        self.nodes[i]
            .http
            .get(self.nodes[i].url("/readyz"))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// Wait until every live node sees `n` members.
    pub async fn wait_for_members(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for node in &self.nodes {
                let text = node
                    .http
                    .get(node.url("/metrics"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                all &= text.contains(&format!("parley_cluster_members {n}"));
            }
            if all {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes did not all see {n} members within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric (without labels) on node `i`, 0 when absent.
    pub async fn metric(&self, i: usize, name: &str) -> i64 {
        let text = self.nodes[i]
            .http
            .get(self.nodes[i].url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Wait (at most 30 s) until node `i` reports `name` = `value`.
    pub async fn wait_metric(&self, i: usize, name: &str, value: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.metric(i, name).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i}: {name} stayed {now}, not {value}, for 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node (index) `/v1/assign` names for `user`, asked of node `via`.
    pub async fn assigned(&self, via: usize, user: &User) -> (String, String) {
        let (status, body) = self.nodes[via]
            .call("GET", "/v1/assign", Some(&user.token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["node_id"].as_str().unwrap().to_owned(),
            body["ws_url"].as_str().unwrap().to_owned(),
        )
    }

    pub fn index(&self, node_id: &str) -> usize {
        node_id[1..].parse::<usize>().unwrap() - 1
    }

    /// Sign up users until one lands on each wanted node index (distinct names).
    pub async fn users_on(&self, prefix: &str, wanted: &[usize]) -> Vec<User> {
        let mut out: Vec<Option<User>> = vec![None; wanted.len()];
        for k in 0..200 {
            let u = self.nodes[0].user(&format!("{prefix}{k}"), "phone").await;
            let at = self.index(&self.assigned(0, &u).await.0);
            if let Some(slot) = wanted
                .iter()
                .zip(out.iter_mut())
                .find(|(w, o)| **w == at && o.is_none())
                .map(|(_, o)| o)
            {
                *slot = Some(u);
            }
            if out.iter().all(Option::is_some) {
                return out.into_iter().map(Option::unwrap).collect();
            }
        }
        panic!("could not place users on nodes {wanted:?}");
    }

    /// Connect `user` where `/v1/assign` says.
    pub async fn connect(&self, user: &User) -> Client {
        let (_, ws_url) = self.assigned(0, user).await;
        Client::connect(&format!("{ws_url}?token={}", user.token)).await
    }
}
