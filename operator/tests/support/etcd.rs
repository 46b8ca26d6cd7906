//! A real etcd for the tests, started from the system's `etcd` binary on free loopback
//! ports in a temporary directory, and killed when dropped.
//!
//! No etcd on the machine is a loud failure naming the package to install, never a pass.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestEtcd {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
}

fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PARLEY_ETCD_BIN") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "etcd NOT FOUND (looked at $PARLEY_ETCD_BIN, /usr/bin/etcd, /usr/local/bin/etcd): this test needs a real etcd \
         and cannot pass without one. Install it: `apt-get install -y etcd-server` (Debian/Ubuntu)."
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("addr")
        .port()
}

impl TestEtcd {
    /// Starts etcd and waits (at most 20 s) until it answers.
    pub async fn start() -> Self {
        let bin = etcd_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(&bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let etcd = TestEtcd {
            child,
            dir,
            endpoint: client,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(2),
                etcd_client::Client::connect([&etcd.endpoint], None),
            )
            .await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), c.get("/ready-probe", None)).await
            {
                return etcd;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default();
                panic!(
                    "etcd at {} did not answer within 20s; its log:\n{log}",
                    etcd.endpoint
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of this etcd.
    pub async fn client(&self) -> etcd_client::Client {
        crate::support::bounded(
            10,
            "connecting to the test etcd",
            etcd_client::Client::connect([&self.endpoint], None),
        )
        .await
        .expect("connect to the test etcd")
    }

    /// Every key under `prefix`, with its value as a string.
    pub async fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.client().await;
        let resp = crate::support::bounded(
            10,
            "etcd get",
            c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())),
        )
        .await
        .expect("etcd get");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }

    /// Writes a key.
    pub async fn put(&self, key: &str, value: &str) {
        let mut c = self.client().await;
        crate::support::bounded(10, "etcd put", c.put(key, value, None))
            .await
            .expect("etcd put");
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
