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
use serde_json::Value;

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
    /// Each node's `--region` (`None`: the default region).
    regions: Vec<Option<String>>,
    /// Each node's data dir, kept across a restart.
    dirs: Vec<tempfile::TempDir>,
    _secret: tempfile::NamedTempFile,
}

impl TestCluster {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Start with `extra` flags for every node.
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_nodes(&[None, None, None], extra).await
    }

    /// Start one node per entry of `regions`, each with `--region <entry>`.
    pub async fn start_in_regions(regions: &[&str]) -> Self {
        let regions: Vec<Option<&str>> = regions.iter().copied().map(Some).collect();
        Self::start_nodes(&regions, &[]).await
    }

    async fn start_nodes(regions: &[Option<&str>], extra: &[&str]) -> Self {
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
            regions: Vec::new(),
            dirs: Vec::new(),
            _secret: secret,
        };
        for region in regions {
            c.spawn_node(region.map(str::to_owned));
        }
        c.wait_for_members(regions.len()).await;
        c
    }

    /// Start one more node (`n<count+1>`) and wait until every node sees it.
    pub async fn add_node(&mut self) {
        self.spawn_node(None);
        self.wait_for_members(self.nodes.len()).await;
    }

    /// The flags of a node with `id` in `region`: the cluster's, its TLS material (an etcd
    /// client certificate and a node certificate naming `id`), its region, and the extra ones.
    fn args_for(&self, id: &str, region: Option<&String>) -> Vec<String> {
        let mut args: Vec<String> = [
            "--etcd",
            self.etcd.endpoint(),
            "--cluster",
            &self.name,
            "--node-id",
            id,
            "--token-secret-file",
            self._secret.path().to_str().unwrap(),
            "--store",
            "etcd",
            "--drain-seconds",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.pki.node_flags(id));
        if let Some(region) = region {
            args.extend(["--region".to_owned(), region.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Node `index`'s flags (its id is `n<index+1>`).
    fn args(&self, index: usize) -> Vec<String> {
        self.args_for(&format!("n{}", index + 1), self.regions[index].as_ref())
    }

    /// Start a node of this cluster with `id` (not added to `nodes`): e.g. a second node
    /// with an id a live node holds.
    pub fn node_with_id(&self, id: &str) -> Node {
        let args = self.args_for(id, None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
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

    fn spawn_node(&mut self, region: Option<String>) {
        self.regions.push(region);
        self.dirs.push(tempfile::tempdir().unwrap());
        let index = self.nodes.len();
        let args = self.args(index);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes
            .push(Node::start_in(self.dirs[index].path(), &args));
    }

    /// Replace node `index` as a rolling upgrade does: stop it (SIGTERM, waiting for a clean
    /// exit) and start it again with the same id, flags and data dir. It comes back on a new
    /// port, as a replaced pod comes back on a new address.
    pub async fn restart(&mut self, index: usize) {
        let status = self.nodes[index].terminate();
        assert!(
            status.success(),
            "n{} exited with {status} on SIGTERM",
            index + 1
        );
        let args = self.args(index);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[index] = Node::start_in(self.dirs[index].path(), &args);
    }

    /// The operator's drain request for node `index` (`/parley/<cluster>/drain/n<index+1>`).
    pub async fn drain(&self, index: usize) {
        self.etcd
            .put(
                &format!("/parley/{}/drain/n{}", self.name, index + 1),
                r#"{"requested_at":0,"deadline":0}"#,
            )
            .await;
    }

    /// Cancel (or finish) the drain of node `index`.
    pub async fn undrain(&self, index: usize) {
        self.etcd
            .delete(&format!("/parley/{}/drain/n{}", self.name, index + 1))
            .await;
    }

    /// Node `index`'s registration in etcd (`None`: not registered).
    pub async fn registration(&self, index: usize) -> Option<Value> {
        let key = format!("/parley/{}/nodes/n{}", self.name, index + 1);
        self.etcd
            .keys(&key)
            .await
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| serde_json::from_str(&v).expect("a registration is JSON"))
    }

    /// Wait (bounded) until node `index`'s registration satisfies `pred`; `what` names it.
    pub async fn until_registration(
        &self,
        index: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reg = self.registration(index).await;
            if reg.as_ref().is_some_and(&pred) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "n{} did not {what} within 20 s; its registration: {reg:?}",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// `/v1/assign`'s whole answer for `user`, asked of node `via`.
    pub async fn assignment(&self, via: usize, user: &User) -> Value {
        let (status, body) = self.nodes[via]
            .call("GET", "/v1/assign", Some(&user.token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The node (index) `/v1/assign` names for `user`, asked of node `via`.
    pub async fn assigned(&self, via: usize, user: &User) -> (String, String) {
        let body = self.assignment(via, user).await;
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
