//! Provider `fcm`: Firebase Cloud Messaging HTTP v1. A service account's RS256 JWT is
//! exchanged at its `token_uri` for an OAuth access token (cached until a minute before it
//! expires), then `POST {base}/v1/projects/{project_id}/messages:send`.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Notification, Outcome, Provider, PushError};
use crate::protocol::types::PushProvider;

/// The OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a service-account JSON file that FCM needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
    pub project_id: String,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

/// The FCM provider.
pub struct Fcm {
    account: ServiceAccount,
    key: EncodingKey,
    send_url: String,
    http: reqwest::Client,
    /// The access token and when to stop using it.
    token: Mutex<Option<(String, Instant)>>,
}

impl Fcm {
    /// Read the service-account file at `path`; `base_url` is FCM's (or a test server's).
    pub fn from_file(path: &Path, base_url: &str, timeout: Duration) -> Result<Self, PushError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PushError(format!(
                "cannot read --push-fcm-credentials {}: {e}",
                path.display()
            ))
        })?;
        let account: ServiceAccount = serde_json::from_str(&text).map_err(|e| {
            PushError(format!(
                "--push-fcm-credentials {} is not a service-account JSON file with client_email, private_key, token_uri and project_id ({e}); download one from the Firebase console (Project settings, Service accounts)",
                path.display()
            ))
        })?;
        Self::new(account, base_url, timeout)
    }

    pub fn new(
        account: ServiceAccount,
        base_url: &str,
        timeout: Duration,
    ) -> Result<Self, PushError> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
            PushError(format!(
                "the private_key of the FCM service account is not an RSA PEM key ({e})"
            ))
        })?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            base_url.trim_end_matches('/'),
            account.project_id
        );
        Ok(Self {
            account,
            key,
            send_url,
            http: super::http_client(timeout, false)?,
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a fresh one from `token_uri`.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let now = crate::now_ms() / 1000;
        let claims = AssertionClaims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| Outcome::Drop(format!("cannot sign the FCM token request: {e}")))?;
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let r = self
            .http
            .post(&self.account.token_uri)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| super::network_error(&e))?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| super::network_error(&e))?;
        if !status.is_success() {
            // A refused token request is a credentials problem; retrying lets an operator
            // fix it without losing the push, and the tries are bounded.
            tracing::error!(
                status = status.as_u16(),
                body = %super::snippet(&body),
                "FCM refused the service-account token request; check --push-fcm-credentials"
            );
            return Err(Outcome::Retry(format!(
                "the FCM token request got HTTP {}",
                status.as_u16()
            )));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Outcome::Retry(format!("the FCM token answer is not an access token: {e}"))
        })?;
        let keep = Duration::from_secs(answer.expires_in.saturating_sub(60));
        *cached = Some((answer.access_token.clone(), Instant::now() + keep));
        Ok(answer.access_token)
    }

    /// The `messages:send` body.
    fn body(n: &Notification) -> Value {
        let data = json!({
            "user_id": n.user_id, "device_id": n.device_id, "channel": n.channel,
            "seq": n.seq.to_string(), "inbox_id": n.inbox_id.to_string(), "from": n.from,
            "preview": n.preview, "ts": n.ts.to_string(), "count": n.count.to_string(),
            "unread": n.unread.to_string(),
        });
        json!({"message": {
            "token": n.token,
            "notification": {"title": super::title(n), "body": n.preview},
            "data": data,
            "android": {"collapse_key": n.channel},
        }})
    }
}

/// What an FCM error answer says about the token.
fn error_outcome(status: reqwest::StatusCode, body: &[u8]) -> Outcome {
    let detail = super::snippet(body);
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &v["error"];
    let codes: Vec<&str> = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["errorCode"].as_str())
        .chain(error["status"].as_str())
        .collect();
    let message = error["message"].as_str().unwrap_or("").to_ascii_lowercase();
    let code = status.as_u16();
    if codes.contains(&"UNREGISTERED") || codes.contains(&"SENDER_ID_MISMATCH") {
        return Outcome::Gone(format!("HTTP {code}: {detail}"));
    }
    if code == 400 && codes.contains(&"INVALID_ARGUMENT") && message.contains("token") {
        return Outcome::Gone(format!("HTTP {code}: {detail}"));
    }
    super::classify(status, &detail)
}

#[async_trait]
impl Provider for Fcm {
    fn kind(&self) -> PushProvider {
        PushProvider::Fcm
    }

    async fn send(&self, n: &Notification) -> Outcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let response = self
            .http
            .post(&self.send_url)
            .bearer_auth(token)
            .json(&Self::body(n))
            .send()
            .await;
        let r = match response {
            Ok(r) => r,
            Err(e) => return super::network_error(&e),
        };
        let status = r.status();
        let body = r.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Outcome::Delivered;
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // The access token was revoked or expired early: fetch a new one next time.
            *self.token.lock().await = None;
            return Outcome::Retry(format!(
                "HTTP 401 (access token refused): {}",
                super::snippet(&body)
            ));
        }
        error_outcome(status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_and_bad_tokens_are_gone_other_refusals_dropped() {
        let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","message":"Requested entity was not found.","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(matches!(
            error_outcome(reqwest::StatusCode::NOT_FOUND, unregistered),
            Outcome::Gone(_)
        ));
        let bad_token = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"The registration token is not a valid FCM registration token"}}"#;
        assert!(matches!(
            error_outcome(reqwest::StatusCode::BAD_REQUEST, bad_token),
            Outcome::Gone(_)
        ));
        let bad_payload = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"Invalid JSON payload"}}"#;
        assert!(matches!(
            error_outcome(reqwest::StatusCode::BAD_REQUEST, bad_payload),
            Outcome::Drop(_)
        ));
        assert!(matches!(
            error_outcome(reqwest::StatusCode::SERVICE_UNAVAILABLE, b""),
            Outcome::Retry(_)
        ));
    }
}
