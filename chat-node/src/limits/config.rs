//! The flags of PROTOCOL.md's "Limits against abuse" (each also a `PARLEY_*` variable; `0`
//! turns a limit off). docs/operations.md says how to tune each.

use std::time::Duration;

use clap::Args;
use ipnet::IpNet;

/// Limits against abuse: rates, counts and HTTP timeouts.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Sends per user per second, sustained (all devices, WebSocket and HTTP together).
    #[arg(long, env = "PARLEY_MAX_SENDS_PER_SECOND", default_value_t = 20)]
    pub max_sends_per_second: u32,

    /// Sends a user may make at once above the sustained rate.
    #[arg(long, env = "PARLEY_SEND_BURST", default_value_t = 100)]
    pub send_burst: u32,

    /// Failed logins per username in 15 minutes; past it every login of that username
    /// (even with the right password) gets 429 until the window allows again.
    #[arg(long, env = "PARLEY_MAX_FAILED_LOGINS", default_value_t = 10)]
    pub max_failed_logins: u32,

    /// Logins and sign-ups per client address per minute.
    #[arg(long, env = "PARLEY_MAX_LOGINS_PER_ADDRESS", default_value_t = 60)]
    pub max_logins_per_address: u32,

    /// Proxies (comma-separated CIDRs) whose first `X-Forwarded-For` hop is taken as the
    /// client address.
    #[arg(long, env = "PARLEY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,

    /// Open WebSockets per user on this node (all of a user's sockets land on one node).
    #[arg(long, env = "PARLEY_MAX_SOCKETS_PER_USER", default_value_t = 16)]
    pub max_sockets_per_user: usize,

    /// Seconds a connection has to send a request head (its first, or the rest of one it
    /// started).
    #[arg(long, env = "PARLEY_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a request has to send its whole body.
    #[arg(long, env = "PARLEY_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,

    /// Seconds an idle keep-alive connection is kept open between requests.
    #[arg(long, env = "PARLEY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Groups one user may create.
    #[arg(long, env = "PARLEY_MAX_GROUPS_PER_USER", default_value_t = 1_000)]
    pub max_groups_per_user: u64,

    /// Devices per user; a login that would pass it removes the longest-unused device.
    #[arg(long, env = "PARLEY_MAX_DEVICES_PER_USER", default_value_t = 100)]
    pub max_devices_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sends_per_second: 20,
            send_burst: 100,
            max_failed_logins: 10,
            max_logins_per_address: 60,
            trusted_proxies: Vec::new(),
            max_sockets_per_user: 16,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_groups_per_user: 1_000,
            max_devices_per_user: 100,
        }
    }
}

/// `secs` as a timeout, `None` when 0 (off).
fn timeout(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl LimitsConfig {
    pub fn header_timeout(&self) -> Option<Duration> {
        timeout(self.header_timeout_secs)
    }
    pub fn body_timeout(&self) -> Option<Duration> {
        timeout(self.body_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Option<Duration> {
        timeout(self.idle_timeout_secs)
    }

    /// What clap cannot check.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_sends_per_second > 0 && self.send_burst == 0 {
            return Err(
                "--send-burst must be at least 1 while --max-sends-per-second is on".into(),
            );
        }
        if self.max_devices_per_user == 1 {
            // Allowed, but a second login evicts the first: say so at start-up.
            tracing::warn!(
                "--max-devices-per-user 1: every login logs the user's previous device out"
            );
        }
        Ok(())
    }
}
