//! The conformance suite every [`Kv`] backend must pass. Each check panics with a message
//! naming the broken property. Backends' tests call [`run_all`] with a fresh key prefix
//! (so a shared server such as etcd can host several runs).

use std::sync::Arc;

use super::{Kv, Order, StoreError, prefix_end};

fn k(prefix: &str, key: &str) -> Vec<u8> {
    format!("{prefix}{key}").into_bytes()
}

/// Run every check against `kv`, using only keys under `prefix`.
pub async fn run_all(kv: Arc<dyn Kv>, prefix: &str) {
    put_get_delete(kv.as_ref(), prefix).await;
    scans_are_ordered_bounded_and_limited(kv.as_ref(), prefix).await;
    reads_see_own_writes(kv.as_ref(), prefix).await;
    snapshot_isolation(kv.as_ref(), prefix).await;
    write_write_conflict_is_detected(kv.as_ref(), prefix).await;
    read_write_conflict_is_detected(kv.as_ref(), prefix).await;
    range_conflict_is_detected(kv.as_ref(), prefix).await;
    rollback_on_drop(kv.as_ref(), prefix).await;
    concurrent_counter_is_gapless(kv.clone(), prefix).await;
    kv.sync()
        .await
        .expect("sync must succeed on a healthy store");
    kv.ping()
        .await
        .expect("ping must succeed on a healthy store");
}

async fn commit(kv: &dyn Kv, writes: &[(&[u8], Option<&[u8]>)]) {
    let mut tx = kv.begin().await.expect("begin");
    for (key, value) in writes {
        match value {
            Some(v) => tx.put(key, v),
            None => tx.delete(key),
        }
    }
    tx.commit()
        .await
        .expect("an uncontended commit must succeed");
}

pub async fn put_get_delete(kv: &dyn Kv, p: &str) {
    let key = k(p, "pgd/a");
    commit(kv, &[(&key, Some(b"1"))]).await;
    let mut tx = kv.begin().await.unwrap();
    assert_eq!(
        tx.get(&key).await.unwrap().as_deref(),
        Some(&b"1"[..]),
        "a committed put is visible"
    );
    drop(tx);
    commit(kv, &[(&key, Some(b"2"))]).await;
    let mut tx = kv.begin().await.unwrap();
    assert_eq!(
        tx.get(&key).await.unwrap().as_deref(),
        Some(&b"2"[..]),
        "a second put overwrites"
    );
    drop(tx);
    commit(kv, &[(&key, None)]).await;
    let mut tx = kv.begin().await.unwrap();
    assert_eq!(
        tx.get(&key).await.unwrap(),
        None,
        "a committed delete removes the key"
    );
    // Binary values round-trip exactly.
    let bin: Vec<u8> = (0..=255u8).collect();
    tx.put(&key, &bin);
    tx.commit().await.unwrap();
    let mut tx = kv.begin().await.unwrap();
    assert_eq!(
        tx.get(&key).await.unwrap(),
        Some(bin),
        "binary values round-trip"
    );
}

pub async fn scans_are_ordered_bounded_and_limited(kv: &dyn Kv, p: &str) {
    let base = k(p, "scan/");
    let mut tx = kv.begin().await.unwrap();
    // Big-endian numbers sort numerically; insert out of order.
    for n in [300u64, 2, 1, 256, 70_000] {
        let mut key = base.clone();
        key.extend_from_slice(&n.to_be_bytes());
        tx.put(&key, n.to_string().as_bytes());
    }
    tx.put(&k(p, "scan0"), b"outside: after the prefix");
    tx.put(&k(p, "sca"), b"outside: before the prefix");
    tx.commit().await.unwrap();

    let end = prefix_end(&base);
    let mut tx = kv.begin().await.unwrap();
    let all = tx.scan(&base, &end, 100, Order::Ascending).await.unwrap();
    let values: Vec<_> = all
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(
        values,
        ["1", "2", "256", "300", "70000"],
        "ascending scan in key order, prefix only"
    );
    let desc = tx.scan(&base, &end, 2, Order::Descending).await.unwrap();
    let values: Vec<_> = desc
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(
        values,
        ["70000", "300"],
        "descending scan from the end, limited"
    );
    let mut start = base.clone();
    start.extend_from_slice(&2u64.to_be_bytes());
    let mut stop = base.clone();
    stop.extend_from_slice(&300u64.to_be_bytes());
    let mid = tx.scan(&start, &stop, 100, Order::Ascending).await.unwrap();
    let values: Vec<_> = mid
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(values, ["2", "256"], "start is inclusive, end exclusive");
    assert!(
        tx.scan(&base, &end, 0, Order::Ascending)
            .await
            .unwrap()
            .is_empty(),
        "limit 0 returns nothing"
    );
}

pub async fn reads_see_own_writes(kv: &dyn Kv, p: &str) {
    let key = k(p, "own/a");
    let mut tx = kv.begin().await.unwrap();
    tx.put(&key, b"mine");
    assert_eq!(
        tx.get(&key).await.unwrap().as_deref(),
        Some(&b"mine"[..]),
        "a transaction reads its own put"
    );
    let base = k(p, "own/");
    let seen = tx
        .scan(&base, &prefix_end(&base), 10, Order::Ascending)
        .await
        .unwrap();
    assert_eq!(seen.len(), 1, "a transaction's scan includes its own put");
    tx.delete(&key);
    assert_eq!(
        tx.get(&key).await.unwrap(),
        None,
        "a transaction reads its own delete"
    );
    drop(tx);
}

pub async fn snapshot_isolation(kv: &dyn Kv, p: &str) {
    let key = k(p, "snap/a");
    commit(kv, &[(&key, Some(b"old"))]).await;
    let mut reader = kv.begin().await.unwrap();
    assert_eq!(
        reader.get(&key).await.unwrap().as_deref(),
        Some(&b"old"[..])
    );
    commit(kv, &[(&key, Some(b"new"))]).await;
    assert_eq!(
        reader.get(&key).await.unwrap().as_deref(),
        Some(&b"old"[..]),
        "a transaction keeps reading its snapshot after another commits"
    );
}

pub async fn write_write_conflict_is_detected(kv: &dyn Kv, p: &str) {
    let key = k(p, "ww/counter");
    commit(kv, &[(&key, Some(b"0"))]).await;
    let mut a = kv.begin().await.unwrap();
    let mut b = kv.begin().await.unwrap();
    let va = a.get(&key).await.unwrap();
    let vb = b.get(&key).await.unwrap();
    assert_eq!(va, vb);
    a.put(&key, b"1");
    b.put(&key, b"1");
    a.commit().await.expect("the first committer wins");
    assert!(
        matches!(b.commit().await, Err(StoreError::Conflict)),
        "a lost update must be refused with Conflict"
    );
}

pub async fn read_write_conflict_is_detected(kv: &dyn Kv, p: &str) {
    let x = k(p, "rw/x");
    let y = k(p, "rw/y");
    commit(kv, &[(&x, Some(b"0")), (&y, Some(b"0"))]).await;
    let mut a = kv.begin().await.unwrap();
    a.get(&x).await.unwrap();
    a.put(&y, b"from-a");
    commit(kv, &[(&x, Some(b"changed"))]).await;
    assert!(
        matches!(a.commit().await, Err(StoreError::Conflict)),
        "a write based on a read that changed since must be refused"
    );
}

pub async fn range_conflict_is_detected(kv: &dyn Kv, p: &str) {
    let base = k(p, "range/");
    let mut a = kv.begin().await.unwrap();
    let seen = a
        .scan(&base, &prefix_end(&base), 10, Order::Ascending)
        .await
        .unwrap();
    assert!(seen.is_empty());
    a.put(&k(p, "range-summary"), b"empty");
    commit(kv, &[(&k(p, "range/new"), Some(b"1"))]).await;
    assert!(
        matches!(a.commit().await, Err(StoreError::Conflict)),
        "an insert into a scanned range must conflict (no phantoms)"
    );
}

pub async fn rollback_on_drop(kv: &dyn Kv, p: &str) {
    let key = k(p, "rollback/a");
    let mut tx = kv.begin().await.unwrap();
    tx.put(&key, b"never");
    drop(tx);
    let mut tx = kv.begin().await.unwrap();
    assert_eq!(
        tx.get(&key).await.unwrap(),
        None,
        "a dropped transaction writes nothing"
    );
}

/// Many tasks increment one counter and append under it, retrying on conflict: the result
/// must be gapless and exact, as message sequence numbers need.
pub async fn concurrent_counter_is_gapless(kv: Arc<dyn Kv>, p: &str) {
    let counter = k(p, "gapless/n");
    let tasks = 8;
    let per_task = 25;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let kv = kv.clone();
        let counter = counter.clone();
        let base = k(p, "gapless/item/");
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < 10_000, "a counter increment never committed");
                    let mut tx = kv.begin().await.unwrap();
                    let n = tx
                        .get(&counter)
                        .await
                        .unwrap()
                        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                    tx.put(&counter, &(n + 1).to_be_bytes());
                    let mut item = base.clone();
                    item.extend_from_slice(&(n + 1).to_be_bytes());
                    tx.put(&item, b"x");
                    match tx.commit().await {
                        Ok(()) => break,
                        Err(StoreError::Conflict) => tokio::task::yield_now().await,
                        Err(e) => panic!("commit failed: {e}"),
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut tx = kv.begin().await.unwrap();
    let n = u64::from_be_bytes(tx.get(&counter).await.unwrap().unwrap().try_into().unwrap());
    assert_eq!(
        n,
        (tasks * per_task) as u64,
        "every increment counted exactly once"
    );
    let base = k(p, "gapless/item/");
    let items = tx
        .scan(&base, &prefix_end(&base), 10_000, Order::Ascending)
        .await
        .unwrap();
    let seqs: Vec<u64> = items
        .iter()
        .map(|(key, _)| u64::from_be_bytes(key[base.len()..].try_into().unwrap()))
        .collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "sequence numbers are gapless"
    );
}
