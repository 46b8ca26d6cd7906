//! A measurement, not a check of speed: commits per second of the etcd backend on a real
//! local etcd, for `docs/scaling.md`. Ignored by default; run it by hand, in release:
//!
//! ```text
//! cargo test --release -p chat-node --test etcd_throughput -- --ignored --nocapture
//! ```
//!
//! It asserts only that every commit it counted landed exactly once; the rates are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_node::store::etcd::EtcdKv;
use chat_node::store::{Kv, KvTxn, StoreError};
use parley_testkit::TestEtcd;

const RUN: Duration = Duration::from_secs(5);

fn counter(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |b| {
        u64::from_be_bytes(b.try_into().expect("an 8-byte counter"))
    })
}

/// Read-modify-write of one counter.
async fn rmw(tx: &mut dyn KvTxn, writer: usize, shared: bool) -> Result<(), StoreError> {
    let key = if shared {
        b"rmw/shared".to_vec()
    } else {
        format!("rmw/{writer}").into_bytes()
    };
    let n = counter(tx.get(&key).await?);
    tx.put(&key, &(n + 1).to_be_bytes());
    Ok(())
}

/// What a one-to-one send does: the dedupe key (absent), the channel counter, a ~250-byte
/// message, each member's inbox counter and pointer, and the dedupe record.
async fn send(tx: &mut dyn KvTxn, writer: usize, shared: bool) -> Result<(), StoreError> {
    let channel = if shared {
        "dm:a:b".to_owned()
    } else {
        format!("dm:a{writer}:b{writer}")
    };
    let dedupe = format!("d/{channel}/{}", rand::random::<u64>()).into_bytes();
    assert!(tx.get(&dedupe).await?.is_none());
    let cs = format!("cs/{channel}").into_bytes();
    let seq = counter(tx.get(&cs).await?) + 1;
    tx.put(&cs, &seq.to_be_bytes());
    let mut m = format!("m/{channel}/").into_bytes();
    m.extend_from_slice(&seq.to_be_bytes());
    tx.put(&m, &[b'x'; 250]);
    for member in ["a", "b"] {
        let is = format!("is/{channel}{member}").into_bytes();
        let id = counter(tx.get(&is).await?) + 1;
        tx.put(&is, &id.to_be_bytes());
        let mut i = format!("i/{channel}{member}/").into_bytes();
        i.extend_from_slice(&id.to_be_bytes());
        tx.put(
            &i,
            format!("{{\"channel\":\"{channel}\",\"seq\":{seq}}}").as_bytes(),
        );
    }
    tx.put(&dedupe, &[b'a'; 120]);
    Ok(())
}

#[derive(Clone, Copy)]
enum Shape {
    Rmw,
    Send,
}

/// Run `writers` tasks for [`RUN`], each committing `shape` transactions in a retry loop.
/// Returns (commits, conflicts).
async fn measure(kv: Arc<dyn Kv>, shape: Shape, writers: usize, shared: bool) -> (u64, u64) {
    let deadline = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let (mut commits, mut conflicts) = (0u64, 0u64);
            while Instant::now() < deadline {
                let mut tx = kv.begin().await.unwrap();
                match shape {
                    Shape::Rmw => rmw(tx.as_mut(), writer, shared).await.unwrap(),
                    Shape::Send => send(tx.as_mut(), writer, shared).await.unwrap(),
                }
                match tx.commit().await {
                    Ok(()) => commits += 1,
                    Err(StoreError::Conflict) => conflicts += 1,
                    Err(e) => panic!("commit failed: {e}"),
                }
            }
            (commits, conflicts)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (c, x) = t.await.unwrap();
        total.0 += c;
        total.1 += x;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release with --ignored --nocapture"]
async fn etcd_backend_commit_rates() {
    let etcd = TestEtcd::start().await;
    for (name, shape) in [("rmw", Shape::Rmw), ("send", Shape::Send)] {
        for (writers, shared) in [(1, false), (16, false), (16, true)] {
            let prefix = format!("/bench/{name}-{writers}-{shared}/");
            let kv: Arc<dyn Kv> = Arc::new(
                EtcdKv::connect(&[etcd.endpoint().to_owned()], &prefix)
                    .await
                    .unwrap(),
            );
            let (commits, conflicts) = measure(kv.clone(), shape, writers, shared).await;
            println!(
                "etcd {name:>4}: {writers:>2} writers on {:<9}: {:>6.0} commits/s ({conflicts} conflicts)",
                if shared { "one key" } else { "own keys" },
                commits as f64 / RUN.as_secs_f64(),
            );
            // Every commit counted landed once: the counters add up.
            let mut tx = kv.begin().await.unwrap();
            let mut landed = 0;
            let keys: Vec<Vec<u8>> = match (shape, shared) {
                (Shape::Rmw, true) => vec![b"rmw/shared".to_vec()],
                (Shape::Rmw, false) => (0..writers)
                    .map(|w| format!("rmw/{w}").into_bytes())
                    .collect(),
                (Shape::Send, true) => vec![b"cs/dm:a:b".to_vec()],
                (Shape::Send, false) => (0..writers)
                    .map(|w| format!("cs/dm:a{w}:b{w}").into_bytes())
                    .collect(),
            };
            for key in keys {
                landed += counter(tx.get(&key).await.unwrap());
            }
            assert_eq!(landed, commits, "every counted commit landed exactly once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand in release with --ignored --nocapture"]
async fn etcd_bytes_per_one_to_one_message() {
    let etcd = TestEtcd::start().await;
    let mut client = etcd.client().await;
    let size = |status: etcd_client::StatusResponse| status.db_size();
    let before = size(client.status().await.unwrap());
    let kv: Arc<dyn Kv> = Arc::new(
        EtcdKv::connect(&[etcd.endpoint().to_owned()], "/parley-store/size/")
            .await
            .unwrap(),
    );
    let (commits, _) = measure(kv, Shape::Send, 16, false).await;
    // Drop old revisions (the counters' history) and give the space back, as a compacted,
    // defragmented etcd would hold it.
    let rev = client
        .put("/size-probe", "", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    client.defragment().await.unwrap();
    let after = size(client.status().await.unwrap());
    assert!(commits > 0 && after > before);
    println!(
        "etcd: {commits} one-to-one sends (250-byte text) took {} bytes after compaction and defrag: {:.0} bytes per message",
        after - before,
        (after - before) as f64 / commits as f64
    );
}
