//! The write buffer of a remote backend's transaction ([`etcd`](super::etcd),
//! [`tikv`](super::tikv)): puts and deletes wait here until commit, and reads see them laid
//! over the server's snapshot (read-your-writes).
//!
//! A limited scan asks the server for `limit + deletes` pairs ([`WriteBuffer::fetch_limit`]):
//! at most `deletes` of them can be hidden by this transaction's own deletes, so at least
//! `limit` server pairs survive, all at or before the last one fetched; the merged first
//! `limit` are therefore exact even though the server was not read to the end of the range.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Order, Pair};

/// Buffered writes, by key: `Some(value)` for a put, `None` for a delete.
#[derive(Debug, Default)]
pub(crate) struct WriteBuffer {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl WriteBuffer {
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    /// `Some(Some(v))`: this transaction put `v`; `Some(None)`: it deleted the key; `None`:
    /// it did not touch the key (read the snapshot).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|v| v.as_deref())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.writes.contains_key(key)
    }

    /// Every buffered write in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.writes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    fn in_range<'a>(
        &'a self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> {
        // `start < end` is checked by the caller; BTreeMap::range panics otherwise.
        self.writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
    }

    /// How many pairs to ask the server for so that `limit` survive this transaction's
    /// deletes in `[start, end)`.
    pub(crate) fn fetch_limit(&self, start: &[u8], end: &[u8], limit: usize) -> usize {
        let deletes = self
            .in_range(start, end)
            .filter(|(_, v)| v.is_none())
            .count();
        limit.saturating_add(deletes)
    }

    /// Lay the buffered writes in `[start, end)` over `remote` (the server's pairs of that
    /// range, fetched with [`WriteBuffer::fetch_limit`]) and return the first `limit` in
    /// `order`. Requires `start < end`.
    pub(crate) fn merge(
        &self,
        start: &[u8],
        end: &[u8],
        remote: Vec<Pair>,
        limit: usize,
        order: Order,
    ) -> Vec<Pair> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = remote.into_iter().collect();
        for (key, value) in self.in_range(start, end) {
            match value {
                Some(v) => merged.insert(key.clone(), v.clone()),
                None => merged.remove(key),
            };
        }
        match order {
            Order::Ascending => merged.into_iter().take(limit).collect(),
            Order::Descending => merged.into_iter().rev().take(limit).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str) -> Pair {
        (k.as_bytes().to_vec(), b"remote".to_vec())
    }

    #[test]
    fn own_writes_override_and_deletes_hide_remote_pairs() {
        let mut buf = WriteBuffer::default();
        buf.put(b"b", b"mine");
        buf.delete(b"c");
        buf.put(b"z", b"outside");
        assert_eq!(buf.fetch_limit(b"a", b"y", 2), 3, "one delete in range");
        let remote = vec![pair("a"), pair("c"), pair("d")];
        let got = buf.merge(b"a", b"y", remote, 2, Order::Ascending);
        assert_eq!(
            got,
            vec![pair("a"), (b"b".to_vec(), b"mine".to_vec())],
            "the delete hides c, the put adds b, z is out of range"
        );
        let remote = vec![pair("d"), pair("c"), pair("a")];
        let got = buf.merge(b"a", b"y", remote, 2, Order::Descending);
        assert_eq!(got, vec![pair("d"), (b"b".to_vec(), b"mine".to_vec())]);
        assert_eq!(buf.get(b"c"), Some(None));
        assert_eq!(buf.get(b"q"), None);
    }
}
