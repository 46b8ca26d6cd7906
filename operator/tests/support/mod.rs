//! Test support: a scripted in-memory Kubernetes API (tower-test behind `kube::Client`, as
//! kube-rs's controller-rs does). The real etcd comes from the shared `parley-testkit`.

#![allow(dead_code)]

pub mod api;
pub mod cluster;

pub use parley_testkit::bounded;
