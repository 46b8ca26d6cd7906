//! Test harness: a real `chat-node` process on a free port with its own data dir, an HTTP
//! client, and real WebSocket clients over TCP. Every wait is bounded and fails naming
//! what did not happen.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub const WAIT: Duration = Duration::from_secs(10);

/// The `chat-node` binary under test: `$PARLEY_NODE_BIN`, else the one cargo built beside
/// the running test (`target/<profile>/chat-node`; `cargo test --workspace` builds it).
pub fn chat_node_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PARLEY_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join("chat-node");
    assert!(
        bin.exists(),
        "chat-node NOT BUILT: {} is missing; run the tests with `cargo test --workspace` (which builds it) or `cargo build -p chat-node` first",
        bin.display()
    );
    bin
}

/// A running node process. Killed (SIGKILL) when dropped.
pub struct Node {
    pub child: Child,
    pub base: String,
    pub addr: String,
    /// The internal (node-to-node) listener's `host:port`, in cluster mode.
    pub internal: Option<String>,
    /// The lines the node logged up to `listening on` (start-up warnings among them).
    pub startup: Vec<String>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
    pub log: mpsc::Receiver<String>,
}

impl Node {
    /// Start a node on a fresh data dir.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut node = Self::start_in(&dir, extra);
        node._tmp = Some(tmp);
        node
    }

    /// Start a node on `data_dir` (kept by the caller, e.g. across a restart).
    ///
    /// Tests send fast and sign up many users from one address, so the harness turns two
    /// limits against abuse off explicitly (through their variables, so a test's own flag
    /// wins): the per-user send rate (`--max-sends-per-second 0`) and logins per address
    /// (`--max-logins-per-address 0`). The tests of those limits pass their flags.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(chat_node_bin())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("PARLEY_MAX_SENDS_PER_SECOND", "0")
            .env("PARLEY_MAX_LOGINS_PER_ADDRESS", "0")
            .env(
                "RUST_LOG",
                std::env::var("PARLEY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chat-node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut internal = None;
        let mut startup = Vec::new();
        let (scheme, addr) = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chat-node did not log `listening on` within 30 s"));
            startup.push(line.clone());
            if let Some(at) = line.find("internal listener on ") {
                let rest = &line[at + "internal listener on ".len()..];
                let url = rest.split_whitespace().next().expect("internal address");
                internal = url.split_once("://").map(|(_, a)| a.to_owned());
            }
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                let url = rest.split_whitespace().next().expect("address");
                if let Some((scheme, addr)) = url.split_once("://") {
                    break (scheme.to_owned(), addr.to_owned());
                }
            }
        };
        Self {
            child,
            base: format!("{scheme}://{addr}"),
            addr,
            internal,
            startup,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            http: reqwest::Client::new(),
            log: rx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sign up `username` (password `password-<username>`) and log in as `device`.
    pub async fn user(&self, username: &str, device: &str) -> User {
        self.sign_up(
            json!({"username": username, "password": format!("password-{username}")}),
            device,
        )
        .await
    }

    /// [`Node::user`] with the home region `region` (PROTOCOL.md, "Placement").
    pub async fn user_in(&self, username: &str, device: &str, region: &str) -> User {
        self.sign_up(
            json!({"username": username, "password": format!("password-{username}"), "region": region}),
            device,
        )
        .await
    }

    async fn sign_up(&self, body: Value, device: &str) -> User {
        let username = body["username"].as_str().unwrap_or_default().to_owned();
        let r = self
            .http
            .post(self.url("/v1/users"))
            .json(&body)
            .send()
            .await
            .expect("sign up");
        assert_eq!(
            r.status(),
            201,
            "sign up {username}: {}",
            r.text().await.unwrap_or_default()
        );
        self.login(&username, device).await
    }

    pub async fn login(&self, username: &str, device: &str) -> User {
        let r = self
            .http
            .post(self.url("/v1/sessions"))
            .json(&json!({"username": username, "password": format!("password-{username}"), "device_id": device}))
            .send()
            .await
            .expect("log in");
        assert_eq!(r.status(), 200, "log in {username}");
        let v: Value = r.json().await.unwrap();
        User {
            id: v["user_id"].as_str().unwrap().to_owned(),
            token: v["token"].as_str().unwrap().to_owned(),
            device: v["device_id"].as_str().unwrap().to_owned(),
            username: username.to_owned(),
        }
    }

    /// An authorised request; returns (status, JSON body or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("http request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn ws(&self, user: &User) -> Client {
        Client::connect(&format!("ws://{}/v1/ws?token={}", self.addr, user.token)).await
    }

    /// Make `a` and `b` mutual contacts.
    pub async fn befriend(&self, a: &User, b: &User) {
        assert_eq!(
            self.call(
                "PUT",
                &format!("/v1/contacts/{}", b.id),
                Some(&a.token),
                None
            )
            .await
            .0,
            204
        );
        assert_eq!(
            self.call(
                "PUT",
                &format!("/v1/contacts/{}", a.id),
                Some(&b.token),
                None
            )
            .await
            .0,
            204
        );
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chat-node did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub token: String,
    pub device: String,
    pub username: String,
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, connect_async(url))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect");
        Self { ws }
    }

    /// Wait until the node has registered this socket: the upgrade is answered before the
    /// session registers it, and a frame's answer comes only after. Deliveries, typing and
    /// presence reach the socket from then on.
    pub async fn ready(&mut self) {
        self.send(json!({"type": "sync", "after": 0, "limit": 1, "req": "ready"}))
            .await;
        self.until("the session's first answer", |v| v["req"] == "ready")
            .await;
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send raw frame");
    }

    /// The next text frame as JSON; panics on timeout or close.
    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT).await
    }

    /// [`Client::next`] with its own bound.
    pub async fn next_within(&mut self, wait: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("no frame arrived within the wait")
                .expect("socket closed while waiting for a frame")
                .expect("socket error while waiting for a frame");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t).expect("server frames are JSON");
                }
                Message::Close(c) => panic!("socket closed while waiting for a frame: {c:?}"),
                _ => {}
            }
        }
    }

    /// Skip frames until one matches `pred`; `what` names it in the failure.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.until_within(WAIT, what, pred).await
    }

    /// [`Client::until`] with its own bound (e.g. across a node's failover).
    pub async fn until_within(
        &mut self,
        wait: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = tokio::time::timeout(left, self.next_within(left))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// Frames of `type` arriving within `quiet` (used to show that nothing more comes).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(quiet, self.ws.next()).await {
            if let Message::Text(t) = msg {
                out.push(serde_json::from_str(&t).unwrap());
            }
        }
        out
    }

    /// Send a text message and wait for its ack.
    pub async fn say(&mut self, target: (&str, &str), cmid: &str, text: &str) -> Value {
        self.send(json!({"type": "send", target.0: target.1, "client_msg_id": cmid, "text": text}))
            .await;
        self.until(&format!("the ack of {cmid}"), |v| {
            (v["type"] == "ack" || v["type"] == "error") && v["client_msg_id"] == cmid
        })
        .await
    }

    /// Send a frame answered with an `ack` (`send`, `edit`, `delete`, `react`) and wait for
    /// its ack or error (matched by `client_msg_id`).
    pub async fn acked(&mut self, frame: Value) -> Value {
        let cmid = frame["client_msg_id"].clone();
        self.send(frame).await;
        self.until(&format!("the ack of {cmid}"), |v| {
            (v["type"] == "ack" || v["type"] == "error") && v["client_msg_id"] == cmid
        })
        .await
    }

    /// Wait for the close frame; returns its code.
    pub async fn closed_with(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close within the wait");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) | None => panic!("closed without a close code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error before the close frame: {e}"),
            }
        }
    }
}

pub fn dm(a: &str, b: &str) -> String {
    if a <= b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}
