//! The push flags (each with its `PARLEY_*` twin), their checks, and building the providers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::apns::{Apns, ApnsSettings};
use super::fcm::Fcm;
use super::webhook::Webhook;
use super::{Provider, PushError, Schedule};

/// How offline devices are pushed. No provider flags: no pushes (and no outbox writes).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PushConfig {
    /// Where offline pushes go (provider `webhook`): an http(s) URL that takes a signed POST.
    #[arg(long, env = "PARLEY_PUSH_WEBHOOK")]
    pub push_webhook: Option<String>,

    /// A file holding the HMAC key that signs pushes (one trailing newline ignored).
    #[arg(long, env = "PARLEY_PUSH_SECRET_FILE")]
    pub push_secret_file: Option<PathBuf>,

    /// A Firebase service-account JSON file (`client_email`, `private_key`, `token_uri`,
    /// `project_id`): enables provider `fcm` (FCM HTTP v1).
    #[arg(long, env = "PARLEY_PUSH_FCM_CREDENTIALS")]
    pub push_fcm_credentials: Option<PathBuf>,

    /// FCM's base URL (change it only to point at a test server).
    #[arg(
        long,
        env = "PARLEY_PUSH_FCM_URL",
        default_value = "https://fcm.googleapis.com"
    )]
    pub push_fcm_url: String,

    /// An APNs auth key file (`AuthKey_XXXX.p8`, an EC P-256 PKCS#8 key): enables provider
    /// `apns`; needs --push-apns-key-id, --push-apns-team-id and --push-apns-topic.
    #[arg(long, env = "PARLEY_PUSH_APNS_KEY")]
    pub push_apns_key: Option<PathBuf>,

    /// The APNs key's id (the `kid` of the provider token).
    #[arg(long, env = "PARLEY_PUSH_APNS_KEY_ID")]
    pub push_apns_key_id: Option<String>,

    /// The Apple developer team id (the `iss` of the provider token).
    #[arg(long, env = "PARLEY_PUSH_APNS_TEAM_ID")]
    pub push_apns_team_id: Option<String>,

    /// The app's bundle id, sent as `apns-topic`.
    #[arg(long, env = "PARLEY_PUSH_APNS_TOPIC")]
    pub push_apns_topic: Option<String>,

    /// APNs' base URL: `https://api.sandbox.push.apple.com` for development builds of the
    /// app; an `http://` URL speaks HTTP/2 without TLS (test servers only).
    #[arg(
        long,
        env = "PARLEY_PUSH_APNS_URL",
        default_value = "https://api.push.apple.com"
    )]
    pub push_apns_url: String,

    /// Milliseconds a message waits before its push goes out, so that a burst of messages
    /// becomes one push carrying a count.
    #[arg(long, env = "PARLEY_PUSH_COALESCE_MS", default_value_t = 1000)]
    pub push_coalesce_ms: u64,

    /// Milliseconds within which the first retry of a failed push comes; each later retry
    /// waits about twice as long as the one before (with jitter). At most 1000.
    #[arg(long, env = "PARLEY_PUSH_RETRY_BASE_MS", default_value_t = 1000)]
    pub push_retry_base_ms: u64,

    /// Tries of one push (the first included) before it is given up. At least 5.
    #[arg(long, env = "PARLEY_PUSH_MAX_ATTEMPTS", default_value_t = 8)]
    pub push_max_attempts: u32,

    /// Milliseconds one request to a push provider may take before it counts as a timeout
    /// (and is retried).
    #[arg(long, env = "PARLEY_PUSH_TIMEOUT_MS", default_value_t = 10_000)]
    pub push_timeout_ms: u64,
}

fn http_url(flag: &str, url: &str) -> Result<(), PushError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(PushError(format!(
            "{flag} must be an http:// or https:// URL, not {url:?}"
        )))
    }
}

impl PushConfig {
    /// Check ranges and combinations, naming the flag to fix.
    pub fn validate(&self) -> Result<(), PushError> {
        let bad = |m: &str| Err(PushError(m.to_owned()));
        if self.push_webhook.is_some() != self.push_secret_file.is_some() {
            return bad("--push-webhook and --push-secret-file go together: give both or neither");
        }
        if let Some(url) = &self.push_webhook {
            http_url("--push-webhook", url)?;
        }
        http_url("--push-fcm-url", &self.push_fcm_url)?;
        http_url("--push-apns-url", &self.push_apns_url)?;
        let apns = [
            ("--push-apns-key-id", self.push_apns_key_id.is_some()),
            ("--push-apns-team-id", self.push_apns_team_id.is_some()),
            ("--push-apns-topic", self.push_apns_topic.is_some()),
        ];
        if self.push_apns_key.is_some() {
            if let Some((flag, _)) = apns.iter().find(|(_, given)| !given) {
                return Err(PushError(format!(
                    "--push-apns-key needs {flag} too (APNs wants the key id, the team id and the app's bundle id as topic)"
                )));
            }
        } else if let Some((flag, _)) = apns.iter().find(|(_, given)| *given) {
            return Err(PushError(format!(
                "{flag} is given but --push-apns-key is not: give the .p8 key file, or drop {flag}"
            )));
        }
        if self.push_coalesce_ms > 60_000 {
            return bad("--push-coalesce-ms must be at most 60000 (a minute)");
        }
        if !(1..=1000).contains(&self.push_retry_base_ms) {
            return bad(
                "--push-retry-base-ms must be between 1 and 1000: the first retry comes within a second",
            );
        }
        if !(5..=100).contains(&self.push_max_attempts) {
            return bad("--push-max-attempts must be between 5 and 100");
        }
        if !(100..=120_000).contains(&self.push_timeout_ms) {
            return bad("--push-timeout-ms must be between 100 and 120000");
        }
        Ok(())
    }

    /// Whether any provider is configured.
    pub fn enabled(&self) -> bool {
        self.push_webhook.is_some()
            || self.push_fcm_credentials.is_some()
            || self.push_apns_key.is_some()
    }

    /// The coalescing and retry timing.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            coalesce: Duration::from_millis(self.push_coalesce_ms),
            retry_base: Duration::from_millis(self.push_retry_base_ms),
            max_attempts: self.push_max_attempts,
            retry_cap: Duration::from_secs(300),
        }
    }

    /// Build the configured providers, reading their key files.
    pub fn providers(&self) -> Result<Vec<Arc<dyn Provider>>, PushError> {
        self.validate()?;
        let timeout = Duration::from_millis(self.push_timeout_ms);
        let mut out: Vec<Arc<dyn Provider>> = Vec::new();
        if let (Some(url), Some(secret)) = (&self.push_webhook, &self.push_secret_file) {
            let key = crate::auth::read_secret_file(secret)
                .map_err(|e| PushError(format!("--push-secret-file: {e}")))?;
            out.push(Arc::new(Webhook::new(url.clone(), key, timeout)?));
        }
        if let Some(path) = &self.push_fcm_credentials {
            out.push(Arc::new(Fcm::from_file(path, &self.push_fcm_url, timeout)?));
        }
        if let (Some(key), Some(key_id), Some(team_id), Some(topic)) = (
            &self.push_apns_key,
            &self.push_apns_key_id,
            &self.push_apns_team_id,
            &self.push_apns_topic,
        ) {
            out.push(Arc::new(Apns::from_file(
                key,
                ApnsSettings {
                    key_id: key_id.clone(),
                    team_id: team_id.clone(),
                    topic: topic.clone(),
                    base_url: self.push_apns_url.clone(),
                },
                timeout,
            )?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PushConfig {
        PushConfig {
            push_fcm_url: "https://fcm.googleapis.com".into(),
            push_apns_url: "https://api.push.apple.com".into(),
            push_coalesce_ms: 1000,
            push_retry_base_ms: 1000,
            push_max_attempts: 8,
            push_timeout_ms: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn incomplete_provider_settings_name_the_missing_flag() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.push_apns_key = Some("k.p8".into());
        c.push_apns_key_id = Some("KEY".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--push-apns-team-id"), "{e}");
        let mut c = config();
        c.push_apns_topic = Some("app".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--push-apns-key")
        );
        let mut c = config();
        c.push_webhook = Some("http://x".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--push-secret-file")
        );
        let mut c = config();
        c.push_retry_base_ms = 5000;
        assert!(c.validate().is_err());
        let mut c = config();
        c.push_max_attempts = 3;
        assert!(c.validate().is_err());
    }
}
