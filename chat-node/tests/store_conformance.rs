//! The KV conformance suite against the embedded backend, and durability across a reopen.

use std::sync::Arc;

use chat_node::store::embedded::Embedded;
use chat_node::store::{Kv, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn Kv> = Arc::new(Embedded::open(dir.path()).unwrap());
    conformance::run_all(kv, "conformance/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_synced_commits_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = Embedded::open(dir.path()).unwrap();
        let mut tx = kv.begin().await.unwrap();
        tx.put(b"durable/a", b"kept");
        tx.commit().await.unwrap();
        kv.sync().await.unwrap();
    }
    // Give the dropped store's background task a moment to release the files.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let kv = Embedded::open(dir.path()).unwrap();
    let mut tx = kv.begin().await.unwrap();
    assert_eq!(
        tx.get(b"durable/a").await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}
