//! The HTTP side of the protocol that the benchmark needs: sign-up, login, `/v1/assign`,
//! groups, the caller's profile. Calls rotate over the given node URLs; errors carry the
//! node's status and message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

/// Password every benchmark user gets (the protocol wants at least 8 characters).
pub fn password_for(username: &str) -> String {
    format!("bench-password-{username}")
}

/// A logged-in device: what a client needs to open sockets.
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

/// An HTTP client for one node or a cluster.
#[derive(Clone)]
pub struct Api {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl Api {
    /// A client over `urls` (base URLs such as `http://127.0.0.1:8080`).
    pub fn new(urls: &[String]) -> Result<Self> {
        if urls.is_empty() {
            bail!("give at least one node with --url http://HOST:PORT");
        }
        let urls = urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            urls: Arc::new(urls),
            next: Arc::new(AtomicUsize::new(0)),
            http,
        })
    }

    /// The first node's URL: the key of the user cache.
    pub fn first_url(&self) -> &str {
        &self.urls[0]
    }

    /// All node URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    fn url(&self, path: &str) -> String {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        format!("{}{}", self.urls[i], path)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let url = self.url(path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: is the node running?"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Sign up `username`; an existing username (409) is fine, the login decides.
    pub async fn sign_up(&self, username: &str) -> Result<()> {
        let body = json!({"username": username, "password": password_for(username)});
        let (status, v) = self
            .call(reqwest::Method::POST, "/v1/users", None, Some(body))
            .await?;
        match status {
            201 | 409 => Ok(()),
            _ => bail!("sign-up of {username} failed: {status} {v}"),
        }
    }

    /// Log `username` in as `device_id`.
    pub async fn log_in(&self, username: &str, device_id: &str) -> Result<User> {
        let body = json!({"username": username, "password": password_for(username), "device_id": device_id});
        let (status, v) = self
            .call(reqwest::Method::POST, "/v1/sessions", None, Some(body))
            .await?;
        if status != 200 {
            bail!("login of {username} failed: {status} {v}");
        }
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("login answer lacks {k}: {v}"))
        };
        Ok(User {
            username: username.to_owned(),
            user_id: field("user_id")?,
            device_id: field("device_id")?,
            token: field("token")?,
        })
    }

    /// Whether `token` is still accepted (the node's data dir may have been wiped).
    pub async fn token_works(&self, token: &str) -> Result<bool> {
        let (status, _) = self
            .call(reqwest::Method::GET, "/v1/users/me", Some(token), None)
            .await?;
        Ok(status == 200)
    }

    /// Where `token`'s user should open its WebSocket (`ws_url`, without the token).
    pub async fn assign(&self, token: &str) -> Result<String> {
        let (status, v) = self
            .call(reqwest::Method::GET, "/v1/assign", Some(token), None)
            .await?;
        if status != 200 {
            bail!("GET /v1/assign failed: {status} {v}");
        }
        v["ws_url"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("/v1/assign answer lacks ws_url: {v}"))
    }

    /// Create a group owned by `owner` with `members` (the owner not among them); returns
    /// its channel.
    pub async fn create_group(&self, owner: &User, name: &str, members: &[&str]) -> Result<String> {
        let body = json!({"name": name, "members": members});
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/groups",
                Some(&owner.token),
                Some(body),
            )
            .await?;
        if status != 201 {
            bail!("creating group {name} failed: {status} {v}");
        }
        v["channel"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("group answer lacks channel: {v}"))
    }

    /// The node's `/metrics` text from `base` (empty when unreachable).
    pub async fn metrics(&self, base: &str) -> String {
        match self.http.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}
