//! The state of the units the writer owns, in memory: each channel's head and members,
//! each user's inbox head and their entry per channel. Loaded from the store on first use
//! ([`Units::prefetch`]: batched reads per round for what the round needs), then moved on by
//! the writer alone, so it never needs reloading while the writer owns the unit. Bounded:
//! the least recently used entries beyond the capacity are forgotten and reloaded when next
//! needed.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use super::op::Op;
use crate::protocol::ApiError;
use crate::protocol::types::Ack;
use crate::protocol::validate::Channel;
use crate::store::records::{
    ChannelHead, GroupRecord, InboxEntry, UserChannel, decode, decode_u64,
};
use crate::store::{Kv, Order, keys, prefix_end};

/// Who belongs to a channel.
#[derive(Debug, Clone)]
pub(super) enum Members {
    /// A one-on-one channel: its one or two users (both known to exist).
    Direct(Vec<String>),
    /// A group, as stored.
    Group(GroupRecord),
}

impl Members {
    pub(super) fn list(&self) -> &[String] {
        match self {
            Self::Direct(users) => users,
            Self::Group(group) => &group.members,
        }
    }

    /// Whether the channel's item `seq` is `user`'s first of the channel.
    pub(super) fn first_for(&self, user: &str, seq: u64) -> bool {
        seq == 1
            || match self {
                Self::Direct(_) => false,
                Self::Group(group) => group.joined.get(user).is_some_and(|j| *j + 1 == seq),
            }
    }
}

/// A channel's state.
#[derive(Debug, Clone)]
pub(super) struct ChannelState {
    pub head: ChannelHead,
    pub members: Members,
}

/// The units' state, and what this round read for its operations.
pub(super) struct Units {
    kv: Arc<dyn Kv>,
    /// In a cluster, sends whose sender's inbox is another node's are deduplicated per
    /// channel too (`cd/`); a single node never writes those.
    clustered: bool,
    pub channels: LruCache<String, ChannelState>,
    /// Each user's newest `inbox_id`.
    pub inboxes: LruCache<String, u64>,
    /// Users' entries in their channel index, by their `uc/{user}/{channel}` key.
    pub user_channels: LruCache<Vec<u8>, UserChannel>,
    /// This round's send dedupe records, by `(sender, client_msg_id)`.
    pub dedupe: HashMap<(String, String), Ack>,
    /// This round's per-channel dedupe records, by `(channel, sender, client_msg_id)`.
    pub channel_dedupe: HashMap<(String, String, String), u64>,
    /// This round's channels that could not be loaded, with the answer for their operations.
    pub missing: HashMap<String, ApiError>,
    /// This round's users that do not exist (a group change naming them).
    pub no_user: HashSet<String>,
    /// Writes the next batch carries for the state loaded (a user's channel index built
    /// for an inbox from before the index existed).
    pub pending: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Units {
    pub(super) fn new(kv: Arc<dyn Kv>, capacity: usize, clustered: bool) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            kv,
            clustered,
            channels: LruCache::new(cap),
            inboxes: LruCache::new(cap),
            user_channels: LruCache::new(cap),
            dedupe: HashMap::new(),
            channel_dedupe: HashMap::new(),
            missing: HashMap::new(),
            no_user: HashSet::new(),
            pending: Vec::new(),
        }
    }

    /// Forget everything (after a batch that did not reach the store, or an ownership
    /// change).
    pub(super) fn clear(&mut self) {
        self.channels.clear();
        self.inboxes.clear();
        self.user_channels.clear();
    }

    /// Load what the operations of a round need and the memory lacks: their channels,
    /// members' inbox heads and channel entries, dedupe records and the users a group
    /// change names. Batched reads, and one reverse scan per unknown inbox.
    pub(super) async fn prefetch<'a>(
        &mut self,
        ops: impl Iterator<Item = &'a Op>,
    ) -> Result<(), ApiError> {
        self.dedupe.clear();
        self.channel_dedupe.clear();
        self.missing.clear();
        self.no_user.clear();
        let mut reads = Reads::default();
        // (user, channel) pairs whose inbox head and channel entry the round needs.
        let mut inboxes: Vec<(String, String)> = Vec::new();
        let mut round: Vec<String> = Vec::new();
        for op in ops {
            let channel = match op {
                Op::Send(send) => {
                    reads.dedupe(&send.sender, &send.client_msg_id);
                    if self.clustered {
                        reads.channel_dedupe(
                            send.channel.to_string(),
                            &send.sender,
                            &send.client_msg_id,
                        );
                    }
                    send.channel.clone()
                }
                Op::Append(append) => {
                    for item in &append.items {
                        if item.members.iter().any(|m| m.user == item.from) {
                            reads.dedupe(&item.from, &item.client_msg_id);
                        }
                        for m in &item.members {
                            inboxes.push((m.user.clone(), append.channel.clone()));
                        }
                    }
                    continue;
                }
                Op::AddMember { group_id, user, .. } => {
                    reads.user(user.clone());
                    Channel::Group(group_id.clone())
                }
                Op::RemoveMember { group_id, .. } => Channel::Group(group_id.clone()),
            };
            let name = channel.to_string();
            if !self.channels.contains(&name) {
                reads.channel(name.clone(), channel);
            }
            round.push(name);
        }
        let values = self.kv.get_many(&reads.keys()).await?;
        let mut values = values.into_iter();
        for (sender, cmid) in reads.dedupes {
            let key = keys::dedupe(&sender, &cmid);
            if let Some(bytes) = values.next().flatten() {
                self.dedupe.insert((sender, cmid), decode(&key, &bytes)?);
            }
        }
        for (channel, sender, cmid) in reads.channel_dedupes {
            let key = keys::channel_dedupe(&channel, &sender, &cmid);
            if let Some(bytes) = values.next().flatten() {
                self.channel_dedupe
                    .insert((channel, sender, cmid), decode_u64(&key, &bytes)?);
            }
        }
        let mut loaded = Vec::new();
        for (name, channel) in reads.channels {
            let head = match values.next().flatten() {
                Some(bytes) => ChannelHead::decode(&keys::channel_seq(&name), &bytes)?,
                None => ChannelHead::default(),
            };
            let members = match &channel {
                Channel::Direct(a, b) => {
                    let a_exists = values.next().flatten().is_some();
                    let b_exists = values.next().flatten().is_some();
                    match (a_exists, b_exists) {
                        (true, true) if a == b => Members::Direct(vec![a.clone()]),
                        (true, true) => Members::Direct(vec![a.clone(), b.clone()]),
                        (false, _) => {
                            self.missing.insert(name, no_such_user(a));
                            continue;
                        }
                        (_, false) => {
                            self.missing.insert(name, no_such_user(b));
                            continue;
                        }
                    }
                }
                Channel::Group(group_id) => match values.next().flatten() {
                    Some(bytes) => Members::Group(decode(&keys::group(group_id), &bytes)?),
                    None => {
                        self.missing.insert(
                            name,
                            ApiError::not_found(format!("no group has the id {group_id:?}")),
                        );
                        continue;
                    }
                },
            };
            loaded.push((name, ChannelState { head, members }));
        }
        for user in reads.users {
            if values.next().flatten().is_none() {
                self.no_user.insert(user);
            }
        }
        for (name, state) in loaded {
            self.channels.put(name, state);
        }
        for name in &round {
            if let Some(state) = self.channels.peek(name) {
                for member in state.members.list() {
                    inboxes.push((member.clone(), name.clone()));
                }
            }
        }
        self.load_inboxes(inboxes).await
    }

    /// Load what memory lacks of these `(user, channel)` pairs: the users' inbox heads (one
    /// reverse scan each, run together) and their entries for the channels (one batched
    /// read).
    async fn load_inboxes(&mut self, pairs: Vec<(String, String)>) -> Result<(), ApiError> {
        let mut wanted: Vec<String> = Vec::new();
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut seen_users = HashSet::new();
        let mut seen_entries = HashSet::new();
        for (user, channel) in pairs {
            let key = keys::user_channel(&user, &channel);
            if !self.user_channels.contains(&key) && seen_entries.insert(key.clone()) {
                entries.push(key);
            }
            if !self.inboxes.contains(&user) && seen_users.insert(user.clone()) {
                wanted.push(user);
            }
        }
        let values = self.kv.get_many(&entries).await?;
        for (key, value) in entries.into_iter().zip(values) {
            let entry = match value {
                Some(bytes) => UserChannel::decode(&key, &bytes)?,
                None => UserChannel::default(),
            };
            self.user_channels.put(key, entry);
        }
        let heads = futures_util::future::try_join_all(
            wanted.iter().map(|user| inbox_head(self.kv.as_ref(), user)),
        )
        .await?;
        let markers: Vec<Vec<u8>> = wanted.iter().map(|u| keys::user_indexed(u)).collect();
        let marked = self.kv.get_many(&markers).await?;
        for ((user, head), marker) in wanted.into_iter().zip(heads).zip(marked) {
            if marker.is_none() {
                if head > 0 {
                    self.index_old_inbox(&user).await?;
                }
                self.pending.push((keys::user_indexed(&user), Vec::new()));
            }
            self.inboxes.put(user, head);
        }
        Ok(())
    }

    /// `user`'s inbox holds entries from before the channel index existed: build their
    /// entry per channel from the inbox itself (once per user; everything there counts as
    /// read), so that the write path knows which items the inbox holds.
    async fn index_old_inbox(&mut self, user: &str) -> Result<(), ApiError> {
        let prefix = keys::inbox_of(user);
        let end = prefix_end(&prefix);
        let mut start = prefix.clone();
        let mut last: HashMap<String, u64> = HashMap::new();
        loop {
            let mut txn = self.kv.begin().await?;
            let page = txn.scan(&start, &end, 1000, Order::Ascending).await?;
            for (key, value) in &page {
                let entry: InboxEntry = decode(key, value)?;
                let seq = last.entry(entry.channel).or_insert(0);
                *seq = (*seq).max(entry.seq);
            }
            match page.last() {
                Some((key, _)) if page.len() == 1000 => {
                    start = key.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
        tracing::info!(user_id = %user, channels = last.len(), "indexed an inbox from before the channel index");
        for (channel, seq) in last {
            let key = keys::user_channel(user, &channel);
            let entry = UserChannel {
                last_seq: seq,
                last_ts: 0,
                read_seq: seq,
                unread: 0,
            };
            match self.user_channels.get_mut(&key) {
                Some(known) if known.last_seq >= seq => continue,
                Some(known) => *known = entry,
                None => {
                    self.user_channels.put(key.clone(), entry);
                }
            }
            self.pending.push((key, entry.encode()));
        }
        Ok(())
    }
}

/// The newest `inbox_id` of `user` in the store (0 when the inbox is empty): the last key of
/// their inbox range.
pub(crate) async fn inbox_head(kv: &dyn Kv, user: &str) -> Result<u64, ApiError> {
    let prefix = keys::inbox_of(user);
    let mut txn = kv.begin().await?;
    let last = txn
        .scan(&prefix, &prefix_end(&prefix), 1, Order::Descending)
        .await?;
    Ok(last
        .first()
        .and_then(|(key, _)| keys::trailing_number(key))
        .unwrap_or(0))
}

fn no_such_user(user: &str) -> ApiError {
    ApiError::not_found(format!("no user has the id {user:?}"))
}

/// What one prefetch reads: dedupe records, per-channel dedupe records, then channels (head,
/// then the users of a one-on-one channel or the group record), then named users; answered
/// in that order.
#[derive(Default)]
struct Reads {
    dedupes: Vec<(String, String)>,
    channel_dedupes: Vec<(String, String, String)>,
    channels: Vec<(String, Channel)>,
    users: Vec<String>,
    seen: HashSet<Vec<u8>>,
}

impl Reads {
    fn dedupe(&mut self, sender: &str, cmid: &str) {
        if self.seen.insert(keys::dedupe(sender, cmid)) {
            self.dedupes.push((sender.to_owned(), cmid.to_owned()));
        }
    }

    fn channel_dedupe(&mut self, channel: String, sender: &str, cmid: &str) {
        if self
            .seen
            .insert(keys::channel_dedupe(&channel, sender, cmid))
        {
            self.channel_dedupes
                .push((channel, sender.to_owned(), cmid.to_owned()));
        }
    }

    fn channel(&mut self, name: String, channel: Channel) {
        if self.seen.insert(keys::channel_seq(&name)) {
            self.channels.push((name, channel));
        }
    }

    fn user(&mut self, user: String) {
        if self.seen.insert(keys::user(&user)) {
            self.users.push(user);
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::with_capacity(
            self.dedupes.len()
                + self.channel_dedupes.len()
                + 3 * self.channels.len()
                + self.users.len(),
        );
        keys.extend(self.dedupes.iter().map(|(s, c)| keys::dedupe(s, c)));
        keys.extend(
            self.channel_dedupes
                .iter()
                .map(|(ch, s, c)| keys::channel_dedupe(ch, s, c)),
        );
        for (name, channel) in &self.channels {
            keys.push(keys::channel_seq(name));
            match channel {
                Channel::Direct(a, b) => {
                    keys.push(keys::user(a));
                    keys.push(keys::user(b));
                }
                Channel::Group(group_id) => keys.push(keys::group(group_id)),
            }
        }
        keys.extend(self.users.iter().map(|u| keys::user(u)));
        keys
    }
}
