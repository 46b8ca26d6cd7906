//! Each user's channel index: per channel the newest item the user's inbox holds, the read
//! marker and the unread items (`uc/{user}/{channel}`). The channel list reads it (not the
//! inbox), and the write path knows from it where each inbox stands in each channel.
//!
//! It is written behind the inbox, not with every append: the inbox's owner keeps a user's
//! entries in memory and writes the changed ones at most about once a second
//! ([`FLUSH_AFTER`]), together with a checkpoint (`uci/{user}`: the newest `inbox_id` the
//! written entries account for). Whatever came after the checkpoint is in the inbox itself,
//! so reading the index is: the entries, then the inbox after the checkpoint laid over them
//! ([`replay`]). A crash loses nothing; a group message costs one inbox pointer per member,
//! not two writes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::records::{InboxEntry, UserChannel, decode_u64};
use super::{Kv, Order, keys, prefix_end};
use crate::protocol::ApiError;

/// How long an index change waits before it is written (with the others of that user).
pub const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// Pointers read at a time while replaying an inbox.
const REPLAY_PAGE: usize = 1_000;

/// A user's inbox as its owner holds it: the head and the index entries it has loaded or
/// changed, and which are not written yet.
#[derive(Debug, Default)]
pub struct UserIndex {
    pub head: u64,
    pub channels: HashMap<String, UserChannel>,
    dirty: HashSet<String>,
    dirty_since: Option<Instant>,
}

impl UserIndex {
    /// The entry for `channel` (loaded or created by [`UserIndex::ensure`] first).
    pub fn entry(&mut self, channel: &str) -> Option<&mut UserChannel> {
        self.channels.get_mut(channel)
    }

    /// Note that `channel`'s entry changed; returns true when this is the first unwritten
    /// change (the user is due a write [`FLUSH_AFTER`] from now).
    pub fn touched(&mut self, channel: &str, now: Instant) -> bool {
        if !self.dirty.contains(channel) {
            self.dirty.insert(channel.to_owned());
        }
        if self.dirty_since.is_none() {
            self.dirty_since = Some(now);
            return true;
        }
        false
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty_since.is_some()
    }

    /// Since when it has unwritten changes.
    pub fn dirty_since(&self) -> Option<Instant> {
        self.dirty_since
    }

    /// The writes that bring the stored index up to date: the changed entries and the
    /// checkpoint. Afterwards nothing is unwritten.
    pub fn flush(&mut self, user: &str, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for channel in self.dirty.drain() {
            if let Some(entry) = self.channels.get(&channel) {
                out.push((keys::user_channel(user, &channel), entry.encode()));
            }
        }
        out.push((keys::user_indexed(user), self.head.to_be_bytes().to_vec()));
        self.dirty_since = None;
    }
}

/// Lay one inbox pointer over the entries (a replay, or an append).
pub fn apply(entry: &mut UserChannel, pointer: &InboxEntry) {
    if pointer.seq <= entry.last_seq {
        return;
    }
    entry.last_seq = pointer.seq;
    entry.last_ts = entry.last_ts.max(pointer.ts);
    if pointer.own {
        // Sending to a channel moves the sender's read marker to what they sent.
        entry.read_seq = pointer.seq;
        entry.unread = 0;
    } else if pointer.seq > entry.read_seq && !pointer.quiet {
        // Edits, deletes and reactions are not unread (`quiet`).
        entry.unread += 1;
    }
}

/// Load `user`'s index as far as the store has it: the checkpoint, the inbox head, the
/// entries of `channels` and of every channel the inbox took items of after the checkpoint,
/// with those items laid over them. Entries the replay changed are marked unwritten.
pub async fn load(kv: &dyn Kv, user: &str, channels: &[String]) -> Result<UserIndex, ApiError> {
    let checkpoint = match kv
        .get_many(&[keys::user_indexed(user)])
        .await?
        .pop()
        .flatten()
    {
        // An empty checkpoint (written by an early version) covers nothing.
        Some(bytes) if bytes.len() == 8 => decode_u64(&keys::user_indexed(user), &bytes)?,
        _ => 0,
    };
    let head = super::writer::inbox_head(kv, user).await?;
    let tail = if head > checkpoint {
        replay(kv, user, checkpoint).await?
    } else {
        Vec::new()
    };
    let mut wanted: Vec<String> = channels.to_vec();
    for pointer in &tail {
        if !wanted.contains(&pointer.channel) {
            wanted.push(pointer.channel.clone());
        }
    }
    let keys: Vec<Vec<u8>> = wanted.iter().map(|c| keys::user_channel(user, c)).collect();
    let values = kv.get_many(&keys).await?;
    let mut index = UserIndex {
        head,
        ..UserIndex::default()
    };
    for ((channel, key), value) in wanted.into_iter().zip(&keys).zip(values) {
        let entry = match value {
            Some(bytes) => UserChannel::decode(key, &bytes)?,
            None => UserChannel::default(),
        };
        index.channels.insert(channel, entry);
    }
    let now = Instant::now();
    for pointer in &tail {
        if let Some(entry) = index.channels.get_mut(&pointer.channel) {
            apply(entry, pointer);
        }
        index.touched(&pointer.channel, now);
    }
    if !tail.is_empty() {
        tracing::debug!(user_id = %user, items = tail.len(), "replayed an inbox after its index checkpoint");
    }
    Ok(index)
}

/// Load the entries of more channels into an index loaded before.
pub async fn load_channels(
    kv: &dyn Kv,
    user: &str,
    index: &mut UserIndex,
    channels: &[String],
) -> Result<(), ApiError> {
    let missing: Vec<&String> = channels
        .iter()
        .filter(|c| !index.channels.contains_key(*c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let keys: Vec<Vec<u8>> = missing
        .iter()
        .map(|c| keys::user_channel(user, c))
        .collect();
    let values = kv.get_many(&keys).await?;
    for ((channel, key), value) in missing.into_iter().zip(&keys).zip(values) {
        let entry = match value {
            Some(bytes) => UserChannel::decode(key, &bytes)?,
            None => UserChannel::default(),
        };
        index.channels.insert(channel.clone(), entry);
    }
    Ok(())
}

/// Every channel entry of `user` (at most `max`) as the store has it: the written
/// entries, with the inbox after the checkpoint laid over them. Read-only: for the channel
/// list, on any node.
pub async fn read_all(
    kv: &dyn Kv,
    user: &str,
    max: usize,
) -> Result<Vec<(String, UserChannel)>, ApiError> {
    let mut index = load(kv, user, &[]).await?;
    let prefix = keys::user_channels_of(user);
    let mut txn = kv.begin().await?;
    let pairs = txn
        .scan(&prefix, &prefix_end(&prefix), max, Order::Ascending)
        .await?;
    for (key, value) in pairs {
        let channel = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        if let std::collections::hash_map::Entry::Vacant(slot) = index.channels.entry(channel) {
            slot.insert(UserChannel::decode(&key, &value)?);
        }
    }
    Ok(index.channels.into_iter().collect())
}

/// `user`'s entry for `channel` as the store has it (all zero when the user's inbox holds
/// nothing of it).
pub async fn read_one(kv: &dyn Kv, user: &str, channel: &str) -> Result<UserChannel, ApiError> {
    let mut index = load(kv, user, &[channel.to_owned()]).await?;
    Ok(index.channels.remove(channel).unwrap_or_default())
}

/// The pointers of `user`'s inbox after `after`, in order.
async fn replay(kv: &dyn Kv, user: &str, after: u64) -> Result<Vec<InboxEntry>, ApiError> {
    let prefix = keys::inbox_of(user);
    let end = prefix_end(&prefix);
    let mut start = keys::inbox(user, after + 1);
    let mut out = Vec::new();
    loop {
        let mut txn = kv.begin().await?;
        let page = txn
            .scan(&start, &end, REPLAY_PAGE, Order::Ascending)
            .await?;
        for (key, value) in &page {
            out.push(InboxEntry::decode(key, value)?);
        }
        match page.last() {
            Some((key, _)) if page.len() == REPLAY_PAGE => {
                start = key.clone();
                start.push(0);
            }
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(seq: u64, own: bool) -> InboxEntry {
        InboxEntry {
            channel: "dm:a:b".into(),
            seq,
            ts: seq as i64 * 10,
            own,
            quiet: false,
        }
    }

    #[test]
    fn pointers_move_the_entry_and_the_senders_own_reset_the_unread() {
        let mut e = UserChannel::default();
        apply(&mut e, &pointer(1, false));
        apply(&mut e, &pointer(2, false));
        assert_eq!((e.last_seq, e.unread, e.read_seq), (2, 2, 0));
        apply(&mut e, &pointer(2, false));
        assert_eq!(e.unread, 2, "a pointer seen before changes nothing");
        apply(&mut e, &pointer(3, true));
        assert_eq!((e.last_seq, e.unread, e.read_seq, e.last_ts), (3, 0, 3, 30));
        apply(
            &mut e,
            &InboxEntry {
                quiet: true,
                ..pointer(4, false)
            },
        );
        assert_eq!((e.last_seq, e.unread), (4, 0), "a reaction is not unread");
        apply(&mut e, &pointer(5, false));
        assert_eq!((e.last_seq, e.unread), (5, 1));
    }
}
