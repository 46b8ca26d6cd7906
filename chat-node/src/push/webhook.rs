//! Provider `webhook`: an HTTP POST of the notification as JSON to one configured URL,
//! signed `X-Parley-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Notification, Outcome, Provider, PushError};
use crate::protocol::types::PushProvider;

/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Parley-Signature";

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `key`, as the header carries it.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook provider.
pub struct Webhook {
    url: String,
    key: Vec<u8>,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(url: String, key: Vec<u8>, timeout: Duration) -> Result<Self, PushError> {
        Ok(Self {
            url,
            key,
            http: super::http_client(timeout, false)?,
        })
    }
}

#[async_trait]
impl Provider for Webhook {
    fn kind(&self) -> PushProvider {
        PushProvider::Webhook
    }

    async fn send(&self, n: &Notification) -> Outcome {
        let body = match serde_json::to_vec(n) {
            Ok(b) => b,
            Err(e) => return Outcome::Drop(format!("cannot encode the body: {e}")),
        };
        let sig = signature(&self.key, &body);
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .body(body)
            .send()
            .await;
        match response {
            Err(e) => super::network_error(&e),
            Ok(r) => {
                let status = r.status();
                let detail = r
                    .bytes()
                    .await
                    .map(|b| super::snippet(&b))
                    .unwrap_or_default();
                if status == reqwest::StatusCode::GONE {
                    Outcome::Gone(format!("HTTP 410: {detail}"))
                } else {
                    super::classify(status, &detail)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_sha256_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
