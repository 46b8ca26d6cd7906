//! Test support: a scripted in-memory Kubernetes API (tower-test behind `kube::Client`, as
//! kube-rs's controller-rs does) and a real etcd started from `/usr/bin/etcd`.

#![allow(dead_code)]

pub mod api;
pub mod etcd;

use std::future::Future;
use std::time::Duration;

/// Awaits `fut` for at most `secs`, failing the test with `what` if it does not finish.
pub async fn bounded<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}
