//! The pool of benchmark users of one node (or cluster), created concurrently and cached in
//! a JSON file keyed by the first node URL. Sign-up and login each run argon2id on the
//! node, deliberately slow, so a rerun against the same data dir reuses the cached tokens;
//! a cache whose tokens the node no longer accepts (its data dir was wiped) is dropped.
//!
//! Scenarios share the pool: each takes users `0..n`, so `idle` with 10,000 sockets and
//! `storm` with 10,000 clients cost one set-up between them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use crate::api::{Api, User};

/// The device name every pooled user logs in with.
pub const DEVICE: &str = "bench";

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    pools: BTreeMap<String, Pool>,
}

/// Users and groups made on one node (or cluster).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Pool {
    /// Part of every username, unique per pool, so a fresh pool never collides with users
    /// left on a node whose cache was lost.
    tag: String,
    users: Vec<User>,
    /// "members=100" → the channels of groups 0, 1, …, group g holding users
    /// `g*members .. (g+1)*members`.
    groups: BTreeMap<String, Vec<String>>,
}

fn load(path: &Path) -> CacheFile {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn save(path: &Path, file: &CacheFile) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(file)?)
        .with_context(|| format!("writing the user cache {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("replacing the user cache {}", path.display()))
}

/// A pool still valid on the node, or an empty one.
async fn current_pool(api: &Api, file: &mut CacheFile) -> Result<Pool> {
    let key = api.first_url().to_owned();
    if let Some(pool) = file.pools.get(&key)
        && let Some(first) = pool.users.first()
    {
        if api.token_works(&first.token).await? {
            return Ok(pool.clone());
        }
        eprintln!(
            "user cache: the node does not accept the cached tokens (fresh data dir?); making new users"
        );
    }
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            & 0xff_ffff
    );
    let pool = Pool {
        tag,
        ..Pool::default()
    };
    file.pools.insert(key, pool.clone());
    Ok(pool)
}

/// Users `0..n` of the pool, creating (sign-up + login, `concurrency` at once) what is
/// missing and caching it in `path`; also returns how many it had to create.
pub async fn ensure(
    api: &Api,
    path: &Path,
    n: usize,
    concurrency: usize,
) -> Result<(Vec<User>, usize)> {
    let mut file = load(path);
    let mut pool = current_pool(api, &mut file).await?;
    let created = n.saturating_sub(pool.users.len());
    if pool.users.len() < n {
        let missing = n - pool.users.len();
        eprintln!(
            "setup: creating {missing} users ({concurrency} at once; each is two argon2id hashes on the node)"
        );
        let started = Instant::now();
        // In chunks, so a long set-up that fails part-way keeps what it made.
        while pool.users.len() < n {
            let from = pool.users.len();
            let to = n.min(from + 1000);
            let made: Vec<User> = stream::iter(from..to)
                .map(|i| {
                    let api = api.clone();
                    let name = format!("b{}-{i}", pool.tag);
                    async move {
                        api.sign_up(&name).await?;
                        api.log_in(&name, DEVICE).await
                    }
                })
                .buffered(concurrency.max(1))
                .try_collect()
                .await?;
            pool.users.extend(made);
            file.pools.insert(api.first_url().to_owned(), pool.clone());
            save(path, &file)?;
            eprintln!(
                "setup: {}/{n} users after {:.0} s",
                pool.users.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok((pool.users[..n].to_vec(), created))
}

/// The channels of `groups` groups of `members` users each (group g = pool users
/// `g*members .. (g+1)*members`, created by its first member), creating what is missing.
pub async fn ensure_groups(
    api: &Api,
    path: &Path,
    users: &[User],
    groups: usize,
    members: usize,
) -> Result<Vec<String>> {
    let mut file = load(path);
    let key = api.first_url().to_owned();
    let mut pool = file.pools.get(&key).cloned().unwrap_or_default();
    let gkey = format!("members={members}");
    let mut channels = pool.groups.get(&gkey).cloned().unwrap_or_default();
    while channels.len() < groups {
        let g = channels.len();
        let chunk = &users[g * members..(g + 1) * members];
        let others: Vec<&str> = chunk[1..].iter().map(|u| u.user_id.as_str()).collect();
        let channel = api
            .create_group(&chunk[0], &format!("bench-{members}-{g}"), &others)
            .await?;
        channels.push(channel);
    }
    pool.groups.insert(gkey, channels.clone());
    file.pools.insert(key, pool);
    save(path, &file)?;
    Ok(channels[..groups].to_vec())
}
