//! Limits against abuse (PROTOCOL.md, second wave): the keyed rate limiters and counters
//! that both edges (HTTP and WebSocket) ask before they do work for a caller.
//!
//! One [`Limiters`] lives in the `AppState`. Every check is a call here, so that a limit is
//! enforced in one place whichever edge a request came through:
//! - [`Limiters::check_send`]: sends per user (and, later, edits, deletes and reactions);
//! - [`Limiters::check_login_address`]: logins and sign-ups per client address;
//! - [`Limiters::login_blocked`] / [`Limiters::login_failed`]: failed logins per username;
//! - [`Limiters::open_socket`]: open WebSockets per user, as a permit held by the session.
//!
//! Rates are `governor` token buckets (GCRA), keyed. Their state is bounded: a sweep every
//! [`SWEEP_EVERY`] drops the keys whose bucket is full again (`retain_recent`), so memory
//! follows the users active in the last few seconds to minutes, not every user ever seen.

pub mod config;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

pub use config::LimitsConfig;

use crate::metrics::Metrics;
use crate::protocol::{ApiError, ErrorCode};

/// How often idle limiter keys are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The window of `--max-failed-logins`.
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Most usernames held as blocked at once; past it the oldest blocks are dropped first
/// (a guesser spreading over more usernames than this still meets the per-address limit).
const MAX_BLOCKED: usize = 100_000;

/// The `limit` label of `parley_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Sends,
    FailedLogins,
    LoginsPerAddress,
    SocketsPerUser,
    GroupsPerUser,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sends => "sends",
            Self::FailedLogins => "failed_logins",
            Self::LoginsPerAddress => "logins_per_address",
            Self::SocketsPerUser => "sockets_per_user",
            Self::GroupsPerUser => "groups_per_user",
        }
    }
}

/// 429 `rate_limited` with a `Retry-After` of `wait` rounded up to whole seconds (at least 1).
pub fn rate_limited(message: impl Into<String>, wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(ErrorCode::RateLimited, message).with_retry_after(secs.max(1))
}

/// A keyed token bucket, or nothing when its limit is off.
struct Bucket<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(quota: Option<Quota>) -> Self {
        Self {
            limiter: quota.map(RateLimiter::keyed),
        }
    }

    /// Take one cell for `key`; `Err(wait)` when none is left.
    fn take(&self, key: &K) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The node's limiters. Cheap to share behind the `AppState`'s `Arc`.
pub struct Limiters {
    config: LimitsConfig,
    metrics: Arc<Metrics>,
    /// Keyed by a 64-bit hash of the user id ([`key`]): a send allocates nothing here.
    sends: Bucket<u64>,
    addresses: Bucket<IpAddr>,
    /// Failed logins per username (hashed): one cell per failure.
    failures: Bucket<u64>,
    /// Usernames whose failures ran out, and until when they are refused.
    blocked: Mutex<HashMap<String, Instant>>,
    /// Open sockets per user on this node.
    sockets: Mutex<HashMap<String, usize>>,
}

/// The limiter key of a user id or username: 64 bits of xxh3 (a collision would only share
/// one allowance between two names, at odds of one in 2^64).
fn key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

fn nonzero(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

impl Limiters {
    pub fn new(config: LimitsConfig, metrics: Arc<Metrics>) -> Self {
        let sends = nonzero(config.max_sends_per_second).map(|rate| {
            Quota::per_second(rate).allow_burst(nonzero(config.send_burst).unwrap_or(rate))
        });
        let addresses = nonzero(config.max_logins_per_address).map(Quota::per_minute);
        // N failures in the window: a bucket of N-1 cells refilled one per window/N; the
        // failure that finds it empty is the N-th, and blocks the username.
        let failures = nonzero(config.max_failed_logins).and_then(|n| {
            let period = FAILED_LOGIN_WINDOW / n.get();
            let burst = nonzero(n.get() - 1)?;
            Quota::with_period(period).map(|q| q.allow_burst(burst))
        });
        Self {
            sends: Bucket::new(sends),
            addresses: Bucket::new(addresses),
            failures: Bucket::new(failures),
            blocked: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            config,
            metrics,
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    fn refused(&self, limit: Limit) {
        self.metrics.rate_limited(limit.as_str());
    }

    /// One send (or edit, delete, reaction) by `user_id`, from any device and either edge.
    pub fn check_send(&self, user_id: &str) -> Result<(), ApiError> {
        self.sends.take(&key(user_id)).map_err(|wait| {
            self.refused(Limit::Sends);
            rate_limited(
                format!(
                    "too many sends: at most {} per second (bursts of {}); nothing was stored, retry after the Retry-After seconds",
                    self.config.max_sends_per_second, self.config.send_burst
                ),
                wait,
            )
        })
    }

    /// One login or sign-up from `address`.
    pub fn check_login_address(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(address) = address else {
            return Ok(());
        };
        self.addresses.take(&address).map_err(|wait| {
            self.refused(Limit::LoginsPerAddress);
            rate_limited(
                format!(
                    "too many logins and sign-ups from {address}: at most {} a minute; retry later",
                    self.config.max_logins_per_address
                ),
                wait,
            )
        })
    }

    /// 429 while `username` is blocked for failed logins: asked before the password is
    /// checked, so that a right guess is refused like a wrong one.
    pub fn login_blocked(&self, username: &str) -> Result<(), ApiError> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let Some(until) = blocked.get(username).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            blocked.remove(username);
            return Ok(());
        }
        drop(blocked);
        self.refused(Limit::FailedLogins);
        Err(self.blocked_error(until - now))
    }

    fn blocked_error(&self, wait: Duration) -> ApiError {
        rate_limited(
            format!(
                "too many failed logins for this username (at most {} in 15 minutes); wait and retry, or reset the password",
                self.config.max_failed_logins
            ),
            wait,
        )
    }

    /// Count a failed login of `username`; the one that uses up the allowance blocks the
    /// username until the window allows another.
    pub fn login_failed(&self, username: &str) {
        if self.config.max_failed_logins == 0 {
            return;
        }
        let wait = if self.config.max_failed_logins == 1 {
            Some(FAILED_LOGIN_WINDOW)
        } else {
            self.failures.take(&key(username)).err()
        };
        if let Some(wait) = wait {
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
                if blocked.len() >= MAX_BLOCKED
                    && let Some(oldest) = blocked
                        .iter()
                        .min_by_key(|(_, until)| **until)
                        .map(|(k, _)| k.clone())
                {
                    blocked.remove(&oldest);
                }
            }
            blocked.insert(username.to_owned(), Instant::now() + wait);
            tracing::warn!(
                username,
                "failed logins exhausted: the username is blocked for {wait:?}"
            );
        }
    }

    /// A permit for one more open WebSocket of `user_id`; dropping it frees the place.
    pub fn open_socket(self: &Arc<Self>, user_id: &str) -> Result<SocketPermit, ApiError> {
        let max = self.config.max_sockets_per_user;
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let open = sockets.entry(user_id.to_owned()).or_insert(0);
        if max > 0 && *open >= max {
            drop(sockets);
            self.refused(Limit::SocketsPerUser);
            return Err(rate_limited(
                format!(
                    "you have {max} open WebSockets, the most a user may have; close one first"
                ),
                Duration::from_secs(1),
            ));
        }
        *open += 1;
        Ok(SocketPermit {
            limiters: self.clone(),
            user_id: user_id.to_owned(),
        })
    }

    /// Count a group refused by `--max-groups-per-user` (the store decides).
    pub fn group_refused(&self) {
        self.refused(Limit::GroupsPerUser);
    }

    /// Drop idle keys and expired blocks (memory stays bounded).
    pub fn sweep(&self) {
        self.sends.sweep();
        self.addresses.sweep();
        self.failures.sweep();
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }

    /// Keys held across the limiters (for tests and debugging).
    pub fn tracked_keys(&self) -> usize {
        self.sends.len()
            + self.addresses.len()
            + self.failures.len()
            + self.blocked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sweep every [`SWEEP_EVERY`] until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                () = stop.cancelled() => return,
            }
        }
    }

    /// The client's address: the TCP peer, or the first `X-Forwarded-For` hop when the peer
    /// is one of `--trusted-proxies`.
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self
            .config
            .trusted_proxies
            .iter()
            .any(|p| p.contains(&peer))
        {
            return Some(peer);
        }
        headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
            .or(Some(peer))
    }
}

/// One open WebSocket's place in its user's allowance.
pub struct SocketPermit {
    limiters: Arc<Limiters>,
    user_id: String,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut sockets = self
            .limiters
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = sockets.get_mut(&self.user_id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                sockets.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiters(change: impl FnOnce(&mut LimitsConfig)) -> Arc<Limiters> {
        let mut config = LimitsConfig::default();
        change(&mut config);
        Arc::new(Limiters::new(config, Arc::new(Metrics::new())))
    }

    #[test]
    fn sends_are_limited_per_user_and_zero_turns_it_off() {
        let l = limiters(|c| {
            c.max_sends_per_second = 1;
            c.send_burst = 3;
        });
        for _ in 0..3 {
            l.check_send("a").unwrap();
        }
        let e = l.check_send("a").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after.is_some_and(|s| s >= 1), "{e:?}");
        l.check_send("b").expect("another user is not limited");
        let off = limiters(|c| c.max_sends_per_second = 0);
        for _ in 0..10_000 {
            off.check_send("a").unwrap();
        }
    }

    #[test]
    fn the_tenth_failure_blocks_even_a_right_password() {
        let l = limiters(|_| {});
        for i in 0..10 {
            l.login_blocked("alice")
                .unwrap_or_else(|e| panic!("attempt {i} refused early: {e:?}"));
            l.login_failed("alice");
        }
        let e = l.login_blocked("alice").unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after.unwrap() > 60, "{e:?}");
        l.login_blocked("bob")
            .expect("other usernames are not blocked");
    }

    #[test]
    fn socket_permits_are_counted_and_given_back() {
        let l = limiters(|c| c.max_sockets_per_user = 2);
        let a = l.open_socket("u").unwrap();
        let _b = l.open_socket("u").unwrap();
        assert!(l.open_socket("u").is_err());
        drop(a);
        let _c = l.open_socket("u").expect("a closed socket frees its place");
        assert!(l.open_socket("v").is_ok());
    }

    #[test]
    fn idle_keys_are_swept() {
        let l = limiters(|c| {
            c.max_sends_per_second = 1_000;
            c.send_burst = 1;
        });
        for i in 0..1_000 {
            l.check_send(&format!("user{i}")).unwrap();
        }
        assert!(l.tracked_keys() >= 1_000);
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert_eq!(l.tracked_keys(), 0, "full buckets are forgotten");
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let l = limiters(|c| c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let proxy: IpAddr = "10.2.3.4".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            l.client_address(Some(proxy), &h),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(l.client_address(Some(stranger), &h), Some(stranger));
    }
}
