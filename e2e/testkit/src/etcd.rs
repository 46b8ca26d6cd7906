//! A real etcd for tests: the system's `etcd` binary on free loopback ports in a temporary
//! directory, with the flags Parley needs; stopped, restarted and killed on demand.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parley_etcd_connect::EtcdConnect;

use crate::pki::{CertFiles, Pki};
use crate::{PARLEY_ETCD_FLAGS, bounded};

/// A real etcd on loopback. Dropping it kills the process and deletes its data.
pub struct TestEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    peer_port: u16,
    endpoint: String,
    extra: Vec<String>,
    /// How clients reach it (TLS and a client certificate for [`TestEtcd::start_tls`]).
    connect: EtcdConnect,
    /// TLS flags of etcd itself.
    tls_flags: Vec<String>,
}

fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PARLEY_ETCD_BIN") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
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
    /// Starts etcd with [`PARLEY_ETCD_FLAGS`] and waits (at most 20 s) until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts etcd with [`PARLEY_ETCD_FLAGS`] followed by `extra` flags (a later flag wins,
    /// e.g. `["--max-txn-ops", "128"]` for etcd's default).
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_inner(extra, None).await
    }

    /// Starts etcd over TLS with its own server certificate from `pki` and
    /// `--client-cert-auth`: every client must present a certificate of `pki`'s CA
    /// ([`Pki::client`]). [`TestEtcd::connect`] says how (the test kit's own client uses
    /// the certificate `test-admin`).
    pub async fn start_tls(pki: &Pki) -> Self {
        Self::start_inner(&[], Some(pki)).await
    }

    async fn start_inner(extra: &[&str], pki: Option<&Pki>) -> Self {
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let (connect, tls_flags) = match pki {
            None => (EtcdConnect::plain([endpoint.clone()]), Vec::new()),
            Some(pki) => {
                let server: CertFiles = pki.etcd_server();
                let admin = pki.client("test-admin");
                let flags = [
                    "--cert-file",
                    &server.cert.display().to_string(),
                    "--key-file",
                    &server.key.display().to_string(),
                    "--trusted-ca-file",
                    &pki.ca_file.display().to_string(),
                    "--client-cert-auth",
                ]
                .map(str::to_owned)
                .to_vec();
                (
                    pki.etcd_connect(std::slice::from_ref(&endpoint), &admin),
                    flags,
                )
            }
        };
        let mut etcd = TestEtcd {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            peer_port,
            endpoint,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            connect,
            tls_flags,
        };
        etcd.spawn().await;
        etcd
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS): what a client connects to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How the test kit's own client reaches this etcd (TLS and its certificate, if any).
    pub fn connect(&self) -> &EtcdConnect {
        &self.connect
    }

    /// The data directory (kept across [`TestEtcd::stop`] and [`TestEtcd::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's log so far (stderr of every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s), keeping its data directory and ports
    /// for [`TestEtcd::restart`]. Stopping a stopped etcd does nothing.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let terminated = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while terminated && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts etcd again on the same ports and data directory (stopping it first if it
    /// runs), and waits until it answers. Its keys survive.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let bin = etcd_binary();
        let client = self.endpoint.clone();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(&bin)
            .args(["--name", "t", "--data-dir"])
            .arg(self.data_dir())
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
            .args(PARLEY_ETCD_FLAGS)
            .args(&self.tls_flags)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self
                .connect
                .connect(etcd_client::ConnectOptions::new(), Duration::from_secs(2))
                .await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), c.get("/ready-probe", None)).await
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "etcd at {} exited at start ({status}); its log:\n{}",
                    self.endpoint,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd at {} did not answer within 20s; its log:\n{}",
                    self.endpoint,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of this etcd.
    pub async fn client(&self) -> etcd_client::Client {
        bounded(
            10,
            "connecting to the test etcd",
            self.connect
                .connect(etcd_client::ConnectOptions::new(), Duration::from_secs(8)),
        )
        .await
        .expect("connect to the test etcd")
    }

    /// Every key under `prefix`, with its value as a string.
    pub async fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.client().await;
        let resp = bounded(
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
        bounded(10, "etcd put", c.put(key, value, None))
            .await
            .expect("etcd put");
    }

    /// Deletes a key.
    pub async fn delete(&self, key: &str) {
        let mut c = self.client().await;
        bounded(10, "etcd delete", c.delete(key, None))
            .await
            .expect("etcd delete");
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn etcd_keeps_its_keys_across_stop_and_restart() {
        let mut etcd = TestEtcd::start().await;
        etcd.put("/kit/a", "1").await;
        let endpoint = etcd.endpoint().to_owned();
        etcd.stop().await;
        assert!(!etcd.is_running());
        assert!(
            tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(endpoint.trim_start_matches("http://"))
            )
            .await
            .map_or(true, |r| r.is_err()),
            "a stopped etcd does not accept connections"
        );
        etcd.restart().await;
        assert_eq!(etcd.endpoint(), endpoint, "same endpoint after restart");
        assert_eq!(
            etcd.keys("/kit/").await,
            vec![("/kit/a".to_owned(), "1".to_owned())],
            "data survives a restart"
        );
    }
}
