//! Provider `apns`: Apple Push Notification service with token-based auth. An ES256 provider
//! token (`kid` = key id, `iss` = team id) is cached for 50 minutes (Apple accepts one for an
//! hour and refuses new ones more often than every 20 minutes), and each push is
//! `POST {base}/3/device/{token}` over HTTP/2 with `apns-topic` and `apns-push-type: alert`.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{Notification, Outcome, Provider, PushError};
use crate::protocol::types::PushProvider;

/// What to escape in a path segment: everything but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How long one provider token is used.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// What APNs needs besides the key.
#[derive(Debug, Clone)]
pub struct ApnsSettings {
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id.
    pub topic: String,
    pub base_url: String,
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: i64,
}

/// The APNs provider.
pub struct Apns {
    settings: ApnsSettings,
    key: EncodingKey,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    /// Read the `.p8` key at `path`.
    pub fn from_file(
        path: &Path,
        settings: ApnsSettings,
        timeout: Duration,
    ) -> Result<Self, PushError> {
        let pem = std::fs::read(path).map_err(|e| {
            PushError(format!(
                "cannot read --push-apns-key {}: {e}",
                path.display()
            ))
        })?;
        Self::new(&pem, settings, timeout)
    }

    pub fn new(pem: &[u8], settings: ApnsSettings, timeout: Duration) -> Result<Self, PushError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|e| {
            PushError(format!(
                "--push-apns-key is not an EC P-256 key in PKCS#8 PEM (an AuthKey_XXXX.p8 from Apple) ({e})"
            ))
        })?;
        let mut settings = settings;
        settings.base_url = settings.base_url.trim_end_matches('/').to_owned();
        Ok(Self {
            settings,
            key,
            // APNs speaks only HTTP/2: over TLS it is negotiated, over plain http (a local
            // test server) it is assumed.
            http: super::http_client(timeout, true)?,
            token: Mutex::new(None),
        })
    }

    async fn provider_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.settings.key_id.clone());
        let claims = ProviderClaims {
            iss: &self.settings.team_id,
            iat: crate::now_ms() / 1000,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::Drop(format!("cannot sign the APNs provider token: {e}")))?;
        *cached = Some((token.clone(), Instant::now() + TOKEN_LIFETIME));
        Ok(token)
    }

    /// The JSON payload: the alert, the badge (unread count), and Parley's fields.
    fn body(n: &Notification) -> Value {
        json!({
            "aps": {
                "alert": {"title": super::title(n), "body": n.preview},
                "badge": n.unread,
                "sound": "default",
                "thread-id": n.channel,
            },
            "parley": {
                "user_id": n.user_id, "device_id": n.device_id, "channel": n.channel,
                "seq": n.seq, "inbox_id": n.inbox_id, "from": n.from, "ts": n.ts,
                "count": n.count, "unread": n.unread,
            },
        })
    }
}

#[async_trait]
impl Provider for Apns {
    fn kind(&self) -> PushProvider {
        PushProvider::Apns
    }

    async fn send(&self, n: &Notification) -> Outcome {
        let jwt = match self.provider_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        // Device tokens are hex; anything else is escaped so it stays one path segment.
        let token: String =
            percent_encoding::utf8_percent_encode(&n.token, PATH_SEGMENT).to_string();
        let url = format!("{}/3/device/{token}", self.settings.base_url);
        let response = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", &self.settings.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .json(&Self::body(n))
            .send()
            .await;
        let r = match response {
            Ok(r) => r,
            Err(e) => return super::network_error(&e),
        };
        let status = r.status();
        let body = r.bytes().await.unwrap_or_default();
        let detail = super::snippet(&body);
        let reason: String = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                Outcome::Gone(format!("HTTP {}: {detail}", status.as_u16()))
            }
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                *self.token.lock().await = None;
                Outcome::Retry(format!("HTTP 403: {detail}"))
            }
            _ => super::classify(status, &detail),
        }
    }
}
