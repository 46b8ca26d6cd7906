//! Conformance of the write path's calls: [`Kv::apply`] (atomic blind batches under an
//! optional guard) and the batched reads ([`Kv::get_many`], [`KvTxn::get_many`]).

use super::{commit, k};
use crate::store::{Batch, Guard, Kv, Order, StoreError, prefix_end};

/// Run every check of this file.
pub async fn run(kv: &dyn Kv, p: &str) {
    a_batch_applies_atomically_and_at_once(kv, p).await;
    a_later_write_in_a_batch_wins(kv, p).await;
    a_guard_that_holds_lets_the_batch_through(kv, p).await;
    a_guard_that_fails_writes_nothing(kv, p).await;
    batched_reads_answer_in_order(kv, p).await;
    a_batched_read_in_a_transaction_counts_as_read(kv, p).await;
}

pub async fn a_batch_applies_atomically_and_at_once(kv: &dyn Kv, p: &str) {
    let mut batch = Batch::default();
    for n in 0..300 {
        batch.put(k(p, &format!("batch/a/{n:03}")), vec![b'v'; 100]);
    }
    batch.delete(k(p, "batch/a/never"));
    assert_eq!(batch.len(), 301);
    kv.apply(&batch, None)
        .await
        .expect("an unguarded batch applies");
    let base = k(p, "batch/a/");
    let mut tx = kv.begin().await.unwrap();
    let all = tx
        .scan(&base, &prefix_end(&base), 1000, Order::Ascending)
        .await
        .unwrap();
    assert_eq!(all.len(), 300, "every put of the batch is visible at once");
    kv.sync()
        .await
        .expect("sync after a batch must succeed on a healthy store");
}

pub async fn a_later_write_in_a_batch_wins(kv: &dyn Kv, p: &str) {
    let (a, b) = (k(p, "batch/last/a"), k(p, "batch/last/b"));
    let mut batch = Batch::default();
    batch.put(a.clone(), b"first".to_vec());
    batch.put(a.clone(), b"second".to_vec());
    batch.put(b.clone(), b"there".to_vec());
    batch.delete(b.clone());
    kv.apply(&batch, None).await.expect("the batch applies");
    let got = kv.get_many(&[a, b]).await.unwrap();
    assert_eq!(
        got,
        vec![Some(b"second".to_vec()), None],
        "within a batch the later write of a key wins"
    );
}

pub async fn a_guard_that_holds_lets_the_batch_through(kv: &dyn Kv, p: &str) {
    let fence = k(p, "batch/fence/held");
    let out = k(p, "batch/fence/held-out");
    let absent = Guard {
        key: fence.clone(),
        expected: None,
    };
    let mut batch = Batch::default();
    batch.put(out.clone(), b"1".to_vec());
    kv.apply(&batch, Some(&absent))
        .await
        .expect("a guard expecting an absent key holds while the key is absent");
    commit(kv, &[(&fence, Some(b"epoch-7"))]).await;
    let present = Guard {
        key: fence.clone(),
        expected: Some(b"epoch-7".to_vec()),
    };
    let mut batch = Batch::default();
    batch.put(out.clone(), b"2".to_vec());
    kv.apply(&batch, Some(&present))
        .await
        .expect("a guard expecting the key's value holds");
    assert_eq!(
        kv.get_many(std::slice::from_ref(&out)).await.unwrap(),
        vec![Some(b"2".to_vec())]
    );
}

pub async fn a_guard_that_fails_writes_nothing(kv: &dyn Kv, p: &str) {
    let fence = k(p, "batch/fence/lost");
    let out = k(p, "batch/fence/lost-out");
    commit(kv, &[(&fence, Some(b"epoch-8"))]).await;
    for expected in [None, Some(b"epoch-7".to_vec())] {
        let guard = Guard {
            key: fence.clone(),
            expected,
        };
        let mut batch = Batch::default();
        batch.put(out.clone(), b"stale writer".to_vec());
        let result = kv.apply(&batch, Some(&guard)).await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "a guard that does not hold is a conflict, got {result:?}"
        );
    }
    assert_eq!(
        kv.get_many(std::slice::from_ref(&out)).await.unwrap(),
        vec![None],
        "a batch whose guard failed wrote nothing"
    );
}

pub async fn batched_reads_answer_in_order(kv: &dyn Kv, p: &str) {
    let keys: Vec<Vec<u8>> = (0..150).map(|n| k(p, &format!("many/{n:03}"))).collect();
    let mut batch = Batch::default();
    for (n, key) in keys.iter().enumerate().filter(|(n, _)| n % 3 != 0) {
        batch.put(key.clone(), n.to_string().into_bytes());
    }
    kv.apply(&batch, None).await.unwrap();
    let want: Vec<Option<Vec<u8>>> = (0..150)
        .map(|n| (n % 3 != 0).then(|| n.to_string().into_bytes()))
        .collect();
    assert_eq!(
        kv.get_many(&keys).await.unwrap(),
        want,
        "Kv::get_many answers every key in order, absent ones as None"
    );
    let mut tx = kv.begin().await.unwrap();
    tx.put(&keys[0], b"own");
    let mut want_tx = want.clone();
    want_tx[0] = Some(b"own".to_vec());
    assert_eq!(
        tx.get_many(&keys).await.unwrap(),
        want_tx,
        "KvTxn::get_many sees the snapshot and the transaction's own writes"
    );
}

pub async fn a_batched_read_in_a_transaction_counts_as_read(kv: &dyn Kv, p: &str) {
    let (a, b) = (k(p, "manyrw/a"), k(p, "manyrw/b"));
    commit(kv, &[(&a, Some(b"1"))]).await;
    let mut tx = kv.begin().await.unwrap();
    tx.get_many(&[a.clone(), b.clone()]).await.unwrap();
    tx.put(&k(p, "manyrw/out"), b"x");
    // Another writer creates the key the batched read saw absent.
    commit(kv, &[(&b, Some(b"2"))]).await;
    assert!(
        matches!(tx.commit().await, Err(StoreError::Conflict)),
        "a key read by get_many and changed since is a conflict"
    );
}
