//! A least-recently-used cache bounded in entries, whose memory grows with what it holds.
//!
//! Written over `lru::LruCache` (which does the LRU bookkeeping) because its bounded
//! constructor allocates the hash table for every entry it may ever hold, and entries land
//! at random places in it: a cache sized for 200,000 users makes one page resident per entry
//! until all of it is, megabytes for the first few thousand users, which showed up as memory
//! per idle socket (docs/benchmarks.md, "Idle sockets"). This one starts empty, grows like
//! any map, and evicts the least recently used entry itself once full.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::ops::{Deref, DerefMut};

use lru::LruCache;

pub struct Lru<K: Hash + Eq, V> {
    inner: LruCache<K, V>,
    cap: NonZeroUsize,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    pub fn new(cap: NonZeroUsize) -> Self {
        Self {
            inner: LruCache::unbounded(),
            cap,
        }
    }

    /// Insert or update; returns the old value of `key`, if any (as `LruCache::put`).
    pub fn put(&mut self, key: K, value: V) -> Option<V> {
        self.make_room(&key);
        self.inner.put(key, value)
    }

    /// Insert or update; returns the old entry of `key`, or the entry evicted to make room
    /// (as `LruCache::push`).
    pub fn push(&mut self, key: K, value: V) -> Option<(K, V)> {
        let evicted = self.make_room(&key);
        self.inner.push(key, value).or(evicted)
    }

    fn make_room(&mut self, key: &K) -> Option<(K, V)> {
        if self.inner.len() >= self.cap.get() && !self.inner.contains(key) {
            self.inner.pop_lru()
        } else {
            None
        }
    }
}

impl<K: Hash + Eq, V> Deref for Lru<K, V> {
    type Target = LruCache<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<K: Hash + Eq, V> DerefMut for Lru<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_once_full() {
        let mut c = Lru::new(NonZeroUsize::new(2).unwrap());
        assert_eq!(c.push("a", 1), None);
        assert_eq!(c.push("b", 2), None);
        c.get(&"a");
        assert_eq!(
            c.push("c", 3),
            Some(("b", 2)),
            "b was the least recently used"
        );
        assert_eq!(
            c.push("a", 10),
            Some(("a", 1)),
            "an update returns the old entry"
        );
        assert_eq!(c.put("d", 4), None);
        assert_eq!(c.len(), 2);
        assert!(c.contains(&"a") && c.contains(&"d"));
    }
}
