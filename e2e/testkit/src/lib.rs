//! # Parley test kit
//!
//! Dev-only fixtures shared by the workspace's tests. Real over fake: a [`TestEtcd`] is the
//! system's own `etcd` binary, started on free loopback ports in a temporary directory with
//! the flags Parley needs ([`PARLEY_ETCD_FLAGS`]), and killed when dropped.
//!
//! # Layout
//!
//! | item | role |
//! | --- | --- |
//! | [`etcd`] ([`TestEtcd`]) | start, stop, restart a real etcd; read and write its keys |
//! | [`node`] | a real `chat-node` process, its HTTP API, and real WebSocket clients |
//! | [`pki`] ([`Pki`]) | a throwaway CA (rcgen): node, etcd server and client certificates as PEM files |
//! | [`standin`] | a recording HTTP/1.1 + h2c server standing in for push providers (FCM, APNs and webhooks cannot be reached here) |
//! | [`bounded`] | await with a timeout that fails the test naming what did not happen |
//!
//! No etcd on the machine is a loud failure naming the package to install, never a pass.

pub mod etcd;
pub mod node;
pub mod pki;
pub mod standin;

pub use etcd::TestEtcd;
pub use pki::Pki;

use std::future::Future;
use std::time::Duration;

/// The etcd flags Parley needs beyond the defaults (see `docs/storage.md`): a send to a
/// group of 100 members is a transaction of ~300 operations (default limit 128), a message
/// of 100,000 characters can be 400 KB (default request limit 1.5 MiB), a 4 GiB backend
/// quota (default 2 GiB), and compaction so that long test runs do not grow without end.
pub const PARLEY_ETCD_FLAGS: &[&str] = &[
    "--max-txn-ops",
    "1024",
    "--max-request-bytes",
    "4194304",
    "--quota-backend-bytes",
    "4294967296",
    "--auto-compaction-mode",
    "revision",
    "--auto-compaction-retention",
    "10000",
];

/// Awaits `fut` for at most `secs`, failing the test with `what` if it does not finish.
pub async fn bounded<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}
