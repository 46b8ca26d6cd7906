//! Weighted rendezvous (highest random weight) hashing: every node that knows the same
//! members picks the same owner for a key, with no lookup and no coordination, and a
//! membership change moves only the keys of the nodes that came or went.
//!
//! Each member scores `-weight / ln(h)`, where `h` is a stable hash of (key, member) mapped
//! into (0, 1); the highest score wins (Schindelhauer and Schomaker's weighted variant: a
//! member's share of keys is its weight over the total). The hash is XXH3 of the member id
//! seeded with XXH3 of the key (fixed seed), so every build and every architecture agrees.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed so that nodes of different builds agree on every owner.
const SEED: u64 = 0x7061_726c_6579_0001;

/// The score of `member` (with `weight` > 0) for a key whose hash is `key_hash`.
fn score(key_hash: u64, member: &str, weight: u64) -> f64 {
    let h = xxh3_64_with_seed(member.as_bytes(), key_hash);
    // The top 53 bits as a float strictly inside (0, 1).
    let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(1) as f64) / unit.ln()
}

/// A key hashed once, ready to score members against (several pools of members can be
/// scored for one key without hashing it again: see `placement`).
#[derive(Debug, Clone, Copy)]
pub struct Key(u64);

impl Key {
    pub fn new(key: &str) -> Self {
        Self(xxh3_64_with_seed(key.as_bytes(), SEED))
    }

    /// The score of `member` with `weight` for this key: the highest score owns the key.
    pub fn score(self, member: &str, weight: u64) -> f64 {
        score(self.0, member, weight)
    }
}

/// The best of several `(id, score)`: the highest score, ties (practically impossible) to
/// the smaller id, so the choice is total.
pub fn better<'a>(best: Option<(&'a str, f64)>, id: &'a str, s: f64) -> Option<(&'a str, f64)> {
    match best {
        Some((bid, bs)) if bs > s || (bs == s && bid < id) => Some((bid, bs)),
        _ => Some((id, s)),
    }
}

/// The id of the member that owns `key`, among `(id, weight)` pairs; `None` if empty.
/// Ties (practically impossible) go to the smaller id, so the choice is total.
pub fn owner<'a>(key: &str, members: impl IntoIterator<Item = (&'a str, u64)>) -> Option<&'a str> {
    // The key is hashed once; each member's hash is seeded with it (no buffer to build).
    let key = Key::new(key);
    let mut best: Option<(&str, f64)> = None;
    for (id, weight) in members {
        best = better(best, id, key.score(id, weight));
    }
    best.map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shares(members: &[(&str, u64)], keys: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for k in 0..keys {
            let key = format!("user-{k}");
            let o = owner(&key, members.iter().copied()).unwrap();
            *counts.entry(o.to_owned()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn the_owner_does_not_depend_on_member_order() {
        let a = [("n1", 10), ("n2", 10), ("n3", 10)];
        let b = [("n3", 10), ("n1", 10), ("n2", 10)];
        for k in 0..1000 {
            let key = format!("u{k}");
            assert_eq!(
                owner(&key, a.iter().copied()),
                owner(&key, b.iter().copied())
            );
        }
    }

    #[test]
    fn shares_follow_weights() {
        let counts = shares(&[("n1", 1000), ("n2", 1000), ("n3", 2000)], 40_000);
        let share = |n: &str| counts[n] as f64 / 40_000.0;
        assert!((share("n1") - 0.25).abs() < 0.02, "{counts:?}");
        assert!((share("n2") - 0.25).abs() < 0.02, "{counts:?}");
        assert!((share("n3") - 0.50).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let three = [("n1", 10), ("n2", 10), ("n3", 10)];
        let two = [("n1", 10), ("n2", 10)];
        for k in 0..5000 {
            let key = format!("u{k}");
            let before = owner(&key, three.iter().copied()).unwrap();
            let after = owner(&key, two.iter().copied()).unwrap();
            if before != "n3" {
                assert_eq!(before, after, "{key} moved though its node stayed");
            }
        }
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner("u", std::iter::empty()), None);
    }
}
