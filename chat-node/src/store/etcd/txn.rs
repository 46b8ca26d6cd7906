//! An optimistic transaction on etcd: a snapshot revision, a read set and scanned ranges,
//! checked and written in one `Txn` at commit (the module docs of [`super`] say how).

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

use super::super::overlay::WriteBuffer;
use super::super::{KvTxn, Order, Pair, StoreError};
use super::{EtcdKv, PAGE_KEYS, bounded, map_error};

pub(super) struct EtcdTxn {
    pub(super) db: EtcdKv,
    /// The revision every read sees, fixed by the first read.
    pub(super) snapshot: Option<i64>,
    /// Full key -> its `mod_revision` at the snapshot (0: absent).
    pub(super) reads: std::collections::HashMap<Vec<u8>, i64>,
    /// Scanned ranges `[start, end)` (full keys): no key in them may change after the snapshot.
    pub(super) ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Buffered writes (keys without the prefix).
    pub(super) writes: WriteBuffer,
}

impl EtcdTxn {
    /// One bounded range read at the snapshot (fixing it on the first read).
    async fn range(
        &mut self,
        key: Vec<u8>,
        options: GetOptions,
    ) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
        let options = match self.snapshot {
            Some(rev) => options.with_revision(rev),
            None => options,
        };
        let mut kv = self.db.kv.clone();
        let mut resp = bounded(&self.db.endpoints, "read", kv.get(key, Some(options)))
            .await?
            .map_err(|e| map_error(&self.db.endpoints, "read failed", e))?;
        if self.snapshot.is_none() {
            let rev = resp.header().map(|h| h.revision()).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "etcd at {} answered a read without a revision",
                    self.db.endpoints
                ))
            })?;
            self.snapshot = Some(rev);
        }
        let kvs = resp.take_kvs();
        for kv in &kvs {
            self.reads
                .entry(kv.key().to_vec())
                .or_insert(kv.mod_revision());
        }
        Ok(kvs)
    }

    /// Up to `limit` pairs of `[start, end)` (full keys), ascending, reading pages of
    /// [`PAGE_KEYS`]. Returns the pairs (full keys).
    async fn fetch_ascending(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let mut out: Vec<Pair> = Vec::new();
        let mut cursor = start.to_vec();
        while out.len() < limit {
            let page = (limit - out.len()).min(PAGE_KEYS);
            let kvs = self
                .range(
                    cursor.clone(),
                    GetOptions::new()
                        .with_range(end.to_vec())
                        .with_limit(page as i64),
                )
                .await?;
            let got = kvs.len();
            out.extend(kvs.into_iter().map(|kv| kv.into_key_value()));
            if got < page {
                break;
            }
            // The next page starts just after the last key.
            cursor = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
            cursor.push(0);
        }
        Ok(out)
    }

    /// Up to `limit` pairs of `[start, end)` (full keys), descending, reading back from
    /// `end` in growing windows (see the module doc).
    async fn fetch_descending(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let mut out: Vec<Pair> = Vec::new();
        let mut upper = end.to_vec();
        let mut width = limit as u128;
        while out.len() < limit {
            let lower = window_start(start, &upper, width);
            // Within a window etcd sorts everything it holds; pages bound the answer.
            let page = (limit - out.len()).min(PAGE_KEYS);
            let kvs = self
                .range(
                    lower.clone(),
                    GetOptions::new()
                        .with_range(upper.clone())
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(page as i64),
                )
                .await?;
            let got = kvs.len();
            out.extend(kvs.into_iter().map(|kv| kv.into_key_value()));
            if got == page {
                // More may remain in this window: continue below the last key.
                upper = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
                continue;
            }
            if lower.as_slice() <= start {
                break;
            }
            upper = lower;
            width = width.saturating_mul(16).max(1);
        }
        Ok(out)
    }

    fn strip(&self, pairs: Vec<Pair>) -> Vec<Pair> {
        let n = self.db.prefix.len();
        pairs
            .into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect()
    }
}

/// The start of a window of about `width` keys below `upper` and not below `start`: the
/// bytes after the common prefix of `start` and `upper` read as a big-endian number (at most
/// 16 bytes), minus `width`. Correctness does not depend on the estimate: every key below
/// the window is below every key in it.
fn window_start(start: &[u8], upper: &[u8], width: u128) -> Vec<u8> {
    let common = start.iter().zip(upper).take_while(|(a, b)| a == b).count();
    let n = (start.len().max(upper.len()) - common).min(16);
    if n == 0 {
        return start.to_vec();
    }
    let number = |key: &[u8]| {
        let mut bytes = [0u8; 16];
        for (i, b) in key[common..].iter().take(n).enumerate() {
            bytes[16 - n + i] = *b;
        }
        u128::from_be_bytes(bytes)
    };
    let (lo, hi) = (number(start), number(upper));
    let target = hi.saturating_sub(width.max(1));
    if target <= lo {
        return start.to_vec();
    }
    let mut key = upper[..common].to_vec();
    key.extend_from_slice(&target.to_be_bytes()[16 - n..]);
    key
}

#[async_trait]
impl KvTxn for EtcdTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(own) = self.writes.get(key) {
            return Ok(own.map(<[u8]>::to_vec));
        }
        let full = self.db.full(key);
        let kvs = self.range(full.clone(), GetOptions::new()).await?;
        // An absent key is recorded too: creating it later is a conflict.
        self.reads.entry(full).or_insert(0);
        Ok(kvs.into_iter().next().map(|kv| kv.into_key_value().1))
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut found: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
        let remote: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| self.writes.get(k).is_none())
            .map(|k| self.db.full(k))
            .collect();
        for page in remote.chunks(PAGE_KEYS) {
            // One transaction of reads per page, at the snapshot (the first read fixes it).
            let options = || match self.snapshot {
                Some(rev) => GetOptions::new().with_revision(rev),
                None => GetOptions::new(),
            };
            let ops: Vec<TxnOp> = page
                .iter()
                .map(|key| TxnOp::get(key.clone(), Some(options())))
                .collect();
            let mut kv = self.db.kv.clone();
            let resp = bounded(&self.db.endpoints, "read", kv.txn(Txn::new().and_then(ops)))
                .await?
                .map_err(|e| map_error(&self.db.endpoints, "read failed", e))?;
            if self.snapshot.is_none() {
                self.snapshot = resp.header().map(|h| h.revision());
            }
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(mut get) = op {
                    for kv in get.take_kvs() {
                        self.reads
                            .entry(kv.key().to_vec())
                            .or_insert(kv.mod_revision());
                        let (k, v) = kv.into_key_value();
                        found.insert(k, v);
                    }
                }
            }
            // An absent key is recorded too: creating it later is a conflict.
            for key in page {
                self.reads.entry(key.clone()).or_insert(0);
            }
        }
        Ok(keys
            .iter()
            .map(|k| match self.writes.get(k) {
                Some(own) => own.map(<[u8]>::to_vec),
                None => found.get(&self.db.full(k)).cloned(),
            })
            .collect())
    }

    async fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Pair>, StoreError> {
        if limit == 0 || start >= end {
            return Ok(Vec::new());
        }
        let fetch = self.writes.fetch_limit(start, end, limit);
        let (full_start, full_end) = (self.db.full(start), self.db.full(end));
        let remote = match order {
            Order::Ascending => self.fetch_ascending(&full_start, &full_end, fetch).await?,
            Order::Descending => self.fetch_descending(&full_start, &full_end, fetch).await?,
        };
        let remote = self.strip(remote);
        let out = self.writes.merge(start, end, remote, limit, order);
        // The range read: all of it, or up to the last key returned when the limit cut it.
        let covered = match (out.len() == limit, order, out.last()) {
            (true, Order::Ascending, Some((last, _))) => {
                let mut stop = self.db.full(last);
                stop.push(0);
                (full_start, stop)
            }
            (true, Order::Descending, Some((last, _))) => (self.db.full(last), full_end),
            _ => (full_start, full_end),
        };
        self.ranges.push(covered);
        Ok(out)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.delete(key);
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let mut compares: Vec<Compare> = self
            .reads
            .iter()
            .map(|(key, rev)| Compare::mod_revision(key.clone(), CompareOp::Equal, *rev))
            .collect();
        if let Some(snapshot) = self.snapshot {
            // A range compare holds when every key in the range passes (and when none exists).
            compares.extend(self.ranges.iter().map(|(start, end)| {
                Compare::mod_revision(start.clone(), CompareOp::Less, snapshot + 1)
                    .with_range(end.clone())
            }));
        }
        let ops: Vec<TxnOp> = self
            .writes
            .iter()
            .map(|(key, value)| match value {
                Some(v) => TxnOp::put(self.db.full(key), v.to_vec(), None),
                None => TxnOp::delete(self.db.full(key), None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let mut kv = self.db.kv.clone();
        let resp = bounded(&self.db.endpoints, "commit", kv.txn(txn))
            .await?
            .map_err(|e| map_error(&self.db.endpoints, "commit failed", e))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::window_start;

    fn seq_key(n: u64) -> Vec<u8> {
        let mut k = b"/p/m/dm:a:b/".to_vec();
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    #[test]
    fn a_window_over_gapless_sequence_numbers_holds_exactly_width_keys() {
        assert_eq!(
            window_start(&seq_key(1), &seq_key(1001), 50),
            seq_key(951),
            "keys 951..=1000 are the newest 50"
        );
        assert_eq!(
            window_start(&seq_key(1), &seq_key(20), 50),
            seq_key(1),
            "never below start"
        );
        assert_eq!(window_start(b"abc", b"abc", 5), b"abc".to_vec());
        let w = window_start(b"a", b"b", 1);
        assert!(w.as_slice() >= &b"a"[..] && w.as_slice() < &b"b"[..]);
    }
}
