//! Placement (PROTOCOL.md, "Placement: home regions"): which node a user belongs on.
//!
//! Every user has a **home region**. A user's node is chosen by weighted rendezvous hashing
//! (weight = capacity, [`super::rendezvous`]) over the first of these pools that is not
//! empty:
//! 1. the live, non-draining members of the user's home region;
//! 2. the live, non-draining members of every region (the fallback: the home region has no
//!    node that takes users, or no node at all);
//! 3. every live member, draining or not (every node drains: a pause or a full shutdown).
//!
//! The fallback is deliberately capacity-weighted over *all* regions rather than "the
//! nearest region with room": nodes know no distances, and "room" (capacity minus live
//! connections) moves every second and is published with hysteresis, so two nodes would
//! disagree on it; the pools above depend only on the membership, so every node that sees
//! the same members answers the same. Bigger nodes still take more users (the weight).
//!
//! A node learns homes from the user record (at socket open and in `/v1/assign`, which read
//! it) and keeps them in [`Homes`], a bounded LRU cache. Only a cluster whose taking members span
//! more than one region needs homes at all ([`Pool::needs_homes`]); in a single-region
//! cluster placement is exactly the rendezvous over the members, with no look-up. Where a
//! home is unknown (a recipient this node never saw), routing sends to every node that could
//! hold the user ([`Pool::possible_owners`], one per region), which is right whatever the
//! home, and asks [`Homes`] to learn it in the background ([`learn`]).

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rendezvous::{Key, better};

/// A member as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub id: String,
    /// Capacity: the member's share of users is its weight over the pool's total.
    pub weight: u64,
    pub region: String,
    pub draining: bool,
}

/// The members that placement chooses from (this node included), built once per membership
/// change and shared by every routing decision until the next.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    seats: Vec<Seat>,
    /// Distinct regions of the non-draining seats.
    taker_regions: Vec<String>,
}

impl Pool {
    pub fn new(mut seats: Vec<Seat>) -> Self {
        // A stable order, so that ties and multi-owner answers never depend on map order.
        seats.sort_by(|a, b| a.id.cmp(&b.id));
        let mut taker_regions: Vec<String> = seats
            .iter()
            .filter(|s| !s.draining)
            .map(|s| s.region.clone())
            .collect();
        taker_regions.sort();
        taker_regions.dedup();
        Self {
            seats,
            taker_regions,
        }
    }

    pub fn seats(&self) -> &[Seat] {
        &self.seats
    }

    /// Whether a user's home region can change their node: the members that take users span
    /// more than one region. When they do not, every home gives the same answer.
    pub fn needs_homes(&self) -> bool {
        self.taker_regions.len() > 1
    }

    /// The regions that have members taking users.
    pub fn regions(&self) -> &[String] {
        &self.taker_regions
    }

    /// The node of `user`, whose home region is `home`: rendezvous over the non-draining
    /// members of `home`, else over every non-draining member, else over all.
    pub fn owner(&self, user: &str, home: &str) -> Option<&str> {
        let key = Key::new(user);
        let (mut in_home, mut takers, mut any) = (None, None, None);
        for s in &self.seats {
            let score = key.score(&s.id, s.weight);
            any = better(any, &s.id, score);
            if !s.draining {
                takers = better(takers, &s.id, score);
                if s.region == home {
                    in_home = better(in_home, &s.id, score);
                }
            }
        }
        in_home.or(takers).or(any).map(|(id, _)| id)
    }

    /// The node that owns `key`, something other than a user (a channel's push work):
    /// rendezvous over every non-draining member, whatever its region, else over all.
    pub fn owner_of_key(&self, key: &str) -> Option<&str> {
        let key = Key::new(key);
        let (mut takers, mut any) = (None, None);
        for s in &self.seats {
            let score = key.score(&s.id, s.weight);
            any = better(any, &s.id, score);
            if !s.draining {
                takers = better(takers, &s.id, score);
            }
        }
        takers.or(any).map(|(id, _)| id)
    }

    /// Every node `user` can be on whatever their home: the owner within each region that
    /// has takers (a home without takers falls back to the best of these), or the owner over
    /// all when every member drains. Distinct, at most one per region.
    pub fn possible_owners(&self, user: &str) -> Vec<&str> {
        let key = Key::new(user);
        let mut per_region: Vec<Option<(&str, f64)>> = vec![None; self.taker_regions.len()];
        let mut any = None;
        for s in &self.seats {
            let score = key.score(&s.id, s.weight);
            any = better(any, &s.id, score);
            if !s.draining
                && let Ok(i) = self.taker_regions.binary_search(&s.region)
            {
                per_region[i] = better(per_region[i], &s.id, score);
            }
        }
        let owners: Vec<&str> = per_region.into_iter().flatten().map(|(id, _)| id).collect();
        if owners.is_empty() {
            any.map(|(id, _)| id).into_iter().collect()
        } else {
            owners
        }
    }
}

/// Where a node reads users' home regions from (the user records; wired at start-up, so
/// that the cluster layer does not depend on the store).
#[async_trait]
pub trait HomeDirectory: Send + Sync + 'static {
    /// The home region of each of `users` that exists (records without one: the default
    /// region). Users that do not exist are left out.
    async fn homes(&self, users: &[String]) -> Result<Vec<(String, String)>, String>;
}

/// Homes a node keeps (least recently used go first).
const CAPACITY: usize = 131_072;
/// A home learned longer ago than this is not trusted: routing treats it as unknown (and so
/// reaches every possible node) until it is learned again. This bounds how long a node that
/// missed a region change routes that user's deliveries to the old region.
pub const HOME_TTL: Duration = Duration::from_secs(300);
/// Homes waiting to be learned in the background; past this, requests are dropped (the
/// routing stays right, only wider).
const MAX_WANTED: usize = 16_384;

struct Entry {
    region: Arc<str>,
    learned: Instant,
}

struct Known {
    homes: crate::cache::Lru<String, Entry>,
    /// Users asked of the learner and not answered yet.
    wanted: HashSet<String>,
}

/// A bounded cache of users' home regions: at most [`CAPACITY`] users, least recently used
/// first out, each entry trusted for [`HOME_TTL`] and refreshed in the background when used
/// in its second half.
pub struct Homes {
    state: Mutex<Known>,
    /// Users whose home routing needed but did not know.
    wanted_tx: mpsc::Sender<String>,
    wanted_rx: Mutex<Option<mpsc::Receiver<String>>>,
    ttl: Duration,
}

impl Default for Homes {
    fn default() -> Self {
        Self::new(HOME_TTL)
    }
}

impl Homes {
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, CAPACITY)
    }

    fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        let (wanted_tx, wanted_rx) = mpsc::channel(MAX_WANTED);
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            state: Mutex::new(Known {
                homes: crate::cache::Lru::new(capacity),
                wanted: HashSet::new(),
            }),
            wanted_tx,
            wanted_rx: Mutex::new(Some(wanted_rx)),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember `user`'s home region (read from their record, or told by the node that
    /// changed it).
    pub fn learn(&self, user: &str, region: &str) {
        let mut k = self.lock();
        k.wanted.remove(user);
        k.homes.put(
            user.to_owned(),
            Entry {
                region: region.into(),
                learned: Instant::now(),
            },
        );
    }

    /// The trusted home regions of `users`, in order, under one lock (`None`: unknown or too
    /// old; the learner is asked for those, and for homes about to grow old).
    pub fn get_many<'u>(&self, users: impl IntoIterator<Item = &'u str>) -> Vec<Option<Arc<str>>> {
        let mut k = self.lock();
        let mut out = Vec::new();
        let mut ask = Vec::new();
        for user in users {
            match k
                .homes
                .get(user)
                .map(|e| (e.region.clone(), e.learned.elapsed()))
            {
                Some((region, age)) => {
                    if age >= self.ttl / 2 {
                        ask.push(user);
                    }
                    out.push((age < self.ttl).then_some(region));
                }
                None => {
                    ask.push(user);
                    out.push(None);
                }
            }
        }
        for user in ask {
            if k.wanted.len() < MAX_WANTED
                && !k.wanted.contains(user)
                && self.wanted_tx.try_send(user.to_owned()).is_ok()
            {
                k.wanted.insert(user.to_owned());
            }
        }
        out
    }

    /// The trusted home region of one user.
    pub fn get(&self, user: &str) -> Option<Arc<str>> {
        self.get_many([user]).pop().flatten()
    }

    /// A batch asked of the learner was not answered: let routing ask again.
    fn unwant(&self, users: &[String]) {
        let mut k = self.lock();
        for u in users {
            k.wanted.remove(u);
        }
    }

    /// The learner's queue (taken once, by [`learn`]).
    fn take_wanted(&self) -> Option<mpsc::Receiver<String>> {
        self.wanted_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Users looked up per batch in the background.
const LEARN_BATCH: usize = 256;
/// Bound on one background look-up.
const LEARN_TIMEOUT: Duration = Duration::from_secs(5);

/// Look up, in batches, the homes that routing asked for, until shutdown. Users the
/// directory does not know (no such user) are remembered in the default region, so that
/// nobody asks again for them soon; a failed look-up is retried when routing asks again.
pub async fn learn(
    homes: Arc<Homes>,
    directory: Arc<dyn HomeDirectory>,
    shutdown: CancellationToken,
) {
    let Some(mut wanted) = homes.take_wanted() else {
        return;
    };
    let mut batch = Vec::with_capacity(LEARN_BATCH);
    loop {
        tokio::select! {
            n = wanted.recv_many(&mut batch, LEARN_BATCH) => if n == 0 { return },
            () = shutdown.cancelled() => return,
        }
        match tokio::time::timeout(LEARN_TIMEOUT, directory.homes(&batch)).await {
            Ok(Ok(found)) => {
                let mut known: HashSet<&str> = HashSet::with_capacity(found.len());
                for (user, region) in &found {
                    homes.learn(user, region);
                    known.insert(user);
                }
                for user in batch.iter().filter(|u| !known.contains(u.as_str())) {
                    homes.learn(user, parley_cluster_contract::DEFAULT_REGION);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(users = batch.len(), error = %e, "could not look up home regions; routing reaches every region meanwhile");
                homes.unwant(&batch);
            }
            Err(_) => {
                tracing::warn!(
                    users = batch.len(),
                    "looking up home regions took over {LEARN_TIMEOUT:?}; routing reaches every region meanwhile"
                );
                homes.unwant(&batch);
            }
        }
        batch.clear();
    }
}

/// Users whose home region changed, for the rebalancer to move (bounded: past this, a moved
/// user is corrected at their next socket open instead).
const MAX_PENDING_MOVES: usize = 65_536;
/// Bound on looking up the homes of this node's own users before a rebalance.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The home-region side of [`super::Cluster`]: what this node knows of users' homes, and the
/// users whose home changed, waiting for the rebalancer.
impl super::Cluster {
    /// Where homes are read when they must be known now (the user records).
    pub fn set_directory(&self, directory: Arc<dyn HomeDirectory>) {
        let _ = self.directory.set(directory);
    }

    /// The home cache, for the background learner ([`learn`]).
    pub fn homes(&self) -> &Arc<Homes> {
        &self.homes
    }

    /// Remember `user`'s home region, read from their record.
    pub fn learn_home(&self, user: &str, region: &str) {
        self.homes.learn(user, region);
    }

    /// `user`'s home region changed (here, or on the node that took the change): remember
    /// it, and have the rebalancer move their sockets here if they now belong elsewhere.
    pub fn home_changed(&self, user: &str, region: &str) {
        self.homes.learn(user, region);
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        if moves.len() < MAX_PENDING_MOVES {
            moves.insert(user.to_owned());
        }
        drop(moves);
        self.moved.notify_one();
    }

    /// Wait until a user's home changed; then [`super::Cluster::take_moves`].
    pub async fn home_moves(&self) {
        self.moved.notified().await;
    }

    /// The users whose home changed since the last call.
    pub fn take_moves(&self) -> Vec<String> {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves.drain().collect()
    }

    /// Look up, now, the homes of those of `users` this node does not know (the rebalancer
    /// does it for the users it holds before deciding who moves). Bounded; a failure leaves
    /// them unknown.
    pub async fn locate(&self, users: &[String]) {
        if !self.view().pool.needs_homes() {
            return;
        }
        let Some(directory) = self.directory.get() else {
            return;
        };
        let known = self.homes.get_many(users.iter().map(String::as_str));
        let unknown: Vec<String> = users
            .iter()
            .zip(known)
            .filter(|(_, h)| h.is_none())
            .map(|(u, _)| u.clone())
            .collect();
        if unknown.is_empty() {
            return;
        }
        match tokio::time::timeout(LOCATE_TIMEOUT, directory.homes(&unknown)).await {
            Ok(Ok(found)) => {
                for (user, region) in found {
                    self.homes.learn(&user, &region);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(users = unknown.len(), error = %e, "could not look up home regions")
            }
            Err(_) => tracing::warn!(users = unknown.len(), "looking up home regions timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(id: &str, region: &str, draining: bool) -> Seat {
        Seat {
            id: id.into(),
            weight: 10,
            region: region.into(),
            draining,
        }
    }

    fn two_regions() -> Pool {
        Pool::new(vec![
            seat("eu1", "eu", false),
            seat("eu2", "eu", false),
            seat("us1", "us", false),
            seat("us2", "us", false),
        ])
    }

    #[test]
    fn users_spread_over_the_nodes_of_their_home_region_only() {
        let pool = two_regions();
        assert!(pool.needs_homes());
        let mut used = HashSet::new();
        for k in 0..400 {
            let user = format!("u{k}");
            let eu = pool.owner(&user, "eu").unwrap_or_default();
            let us = pool.owner(&user, "us").unwrap_or_default();
            assert!(eu.starts_with("eu"), "{user} homed in eu landed on {eu}");
            assert!(us.starts_with("us"), "{user} homed in us landed on {us}");
            used.insert(eu);
            used.insert(us);
        }
        assert_eq!(
            used.len(),
            4,
            "every node of each region takes users: {used:?}"
        );
    }

    #[test]
    fn a_home_without_live_takers_falls_back_to_every_region_then_to_all() {
        let pool = Pool::new(vec![
            seat("eu1", "eu", false),
            seat("us1", "us", true),
            seat("us2", "us", true),
        ]);
        assert!(!pool.needs_homes(), "only eu takes users");
        for k in 0..50 {
            let user = format!("u{k}");
            assert_eq!(pool.owner(&user, "us"), Some("eu1"), "us drains: fallback");
            assert_eq!(pool.owner(&user, "mars"), Some("eu1"), "no such region");
        }
        let all_draining = Pool::new(vec![seat("a", "eu", true), seat("b", "us", true)]);
        let owners: HashSet<&str> = (0..50)
            .map(|k| {
                all_draining
                    .owner(&format!("u{k}"), "eu")
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            owners.len(),
            2,
            "with every node draining, users spread over all"
        );
    }

    #[test]
    fn the_fallback_is_the_same_rendezvous_as_a_cluster_without_regions() {
        // Old users (home "default") in a cluster whose nodes all got regions are placed
        // exactly as before regions existed: nothing moves at the upgrade.
        let pool = two_regions();
        for k in 0..200 {
            let user = format!("u{k}");
            let before = super::super::rendezvous::owner(
                &user,
                pool.seats().iter().map(|s| (s.id.as_str(), s.weight)),
            );
            assert_eq!(pool.owner(&user, "default"), before);
            assert_eq!(pool.owner_of_key(&user), before);
        }
    }

    #[test]
    fn possible_owners_cover_every_home() {
        let pool = two_regions();
        for k in 0..200 {
            let user = format!("u{k}");
            let possible = pool.possible_owners(&user);
            assert_eq!(possible.len(), 2);
            for home in ["eu", "us", "default"] {
                let owner = pool.owner(&user, home).unwrap_or_default();
                assert!(
                    possible.contains(&owner),
                    "{user}@{home}: {owner} not in {possible:?}"
                );
            }
        }
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_members_are_listed_in() {
        let a = two_regions();
        let mut seats = a.seats().to_vec();
        seats.reverse();
        let b = Pool::new(seats);
        for k in 0..200 {
            let user = format!("u{k}");
            assert_eq!(a.owner(&user, "eu"), b.owner(&user, "eu"));
            assert_eq!(a.possible_owners(&user), b.possible_owners(&user));
        }
    }

    #[tokio::test]
    async fn homes_are_bounded_expire_and_ask_the_learner() {
        let homes = Homes::with_capacity(Duration::from_millis(200), 100);
        assert_eq!(homes.get("a"), None);
        let mut wanted = homes
            .take_wanted()
            .unwrap_or_else(|| panic!("queue taken twice"));
        assert_eq!(
            wanted.try_recv().ok().as_deref(),
            Some("a"),
            "an unknown home is asked for"
        );
        assert_eq!(homes.get("a"), None);
        assert!(wanted.try_recv().is_err(), "asked once until answered");
        homes.learn("a", "eu");
        assert_eq!(homes.get("a").as_deref(), Some("eu"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(homes.get("a"), None, "too old to trust");
        for k in 0..1000 {
            homes.learn(&format!("u{k}"), "us");
        }
        assert_eq!(homes.lock().homes.len(), 100, "bounded");
        assert_eq!(homes.get("u999").as_deref(), Some("us"), "the newest stay");
    }
}
