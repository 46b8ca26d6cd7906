//! The state of the units the writer owns, in memory: each channel's head and members,
//! each user's inbox head and their entry per channel. Loaded from the store on first use
//! ([`Units::prefetch`]: batched reads per round for what the round needs), then moved on by
//! the writer alone, so it never needs reloading while the writer owns the unit. Bounded:
//! the least recently used entries beyond the capacity are forgotten and reloaded when next
//! needed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use super::op::{GroupEdit, Op};
use crate::protocol::ApiError;
use crate::protocol::items::ItemAction;
use crate::protocol::types::Ack;
use crate::protocol::validate::Channel;
use crate::store::binary::decode_ack;
use crate::store::index::{self, UserIndex};
use crate::store::records::{
    ChannelHead, GroupRecord, MessageRecord, UserRecord, decode, decode_u64,
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
    /// A one-on-one channel's users who block the other (their sends are refused).
    pub blocked: Vec<String>,
}

/// The units' state, and what this round read for its operations.
pub(super) struct Units {
    kv: Arc<dyn Kv>,
    /// In a cluster, sends whose sender's inbox is another node's are deduplicated per
    /// channel too (`cd/`); a single node never writes those.
    clustered: bool,
    pub channels: crate::cache::Lru<String, ChannelState>,
    /// Each user's inbox head and channel index entries (`store::index`).
    pub inboxes: crate::cache::Lru<String, UserIndex>,
    /// Users with unwritten index changes, in the order they became so.
    pub unwritten: VecDeque<(Instant, String)>,
    /// This round's send dedupe records, by `(sender, client_msg_id)`.
    pub dedupe: HashMap<(String, String), Ack>,
    /// This round's per-channel dedupe records, by `(channel, sender, client_msg_id)`.
    pub channel_dedupe: HashMap<(String, String, String), u64>,
    /// This round's channels that could not be loaded, with the answer for their operations.
    pub missing: HashMap<String, ApiError>,
    /// This round's users that do not exist (a group change naming them).
    pub no_user: HashSet<String>,
    /// This round's display names of the users a group change names.
    pub names: HashMap<String, String>,
    /// This round's blocks read for group changes: `(owner, blocked)`.
    pub blocks: HashSet<(String, String)>,
    /// This round's messages that edits, deletes and reactions are about, and a deleted
    /// message's edit items, by `(channel, seq)`.
    pub targets: HashMap<(String, u64), MessageRecord>,
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
            channels: crate::cache::Lru::new(cap),
            inboxes: crate::cache::Lru::new(cap),
            unwritten: VecDeque::new(),
            dedupe: HashMap::new(),
            channel_dedupe: HashMap::new(),
            missing: HashMap::new(),
            no_user: HashSet::new(),
            names: HashMap::new(),
            blocks: HashSet::new(),
            targets: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Forget everything (after a batch that did not reach the store, or an ownership
    /// change).
    pub(super) fn clear(&mut self) {
        self.channels.clear();
        self.inboxes.clear();
        self.unwritten.clear();
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
        self.names.clear();
        self.blocks.clear();
        self.targets.clear();
        let mut reads = Reads::default();
        // Deleted messages, whose edit items are read once the messages are.
        let mut deletes: Vec<(String, u64)> = Vec::new();
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
                    if let Some(seq) = send.action.target() {
                        let name = send.channel.to_string();
                        if matches!(send.action, ItemAction::Delete { .. }) {
                            deletes.push((name.clone(), seq));
                        }
                        reads.target(name, seq);
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
                Op::Group(group) => {
                    reads.user(group.caller.clone());
                    match &group.change {
                        GroupEdit::Add { user, .. } => {
                            reads.user(user.clone());
                            reads.block(user, &group.caller);
                            // The member added gets the change's item, their first.
                            let name = Channel::Group(group.group_id.clone()).to_string();
                            inboxes.push((user.clone(), name));
                        }
                        GroupEdit::Remove { user } => reads.user(user.clone()),
                        GroupEdit::Rename { .. } => {}
                    }
                    Channel::Group(group.group_id.clone())
                }
                Op::Read(read) => {
                    inboxes.push((read.user.clone(), read.channel.clone()));
                    continue;
                }
                Op::Block(block) => Channel::direct(&block.user, &block.target),
                Op::Flush => continue,
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
                self.dedupe
                    .insert((sender, cmid), decode_ack(&key, &bytes)?);
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
            let head = channel_head(self.kv.as_ref(), &name).await?;
            let mut blocked = Vec::new();
            let members = match &channel {
                Channel::Direct(a, b) => {
                    let a_exists = values.next().flatten().is_some();
                    let b_exists = values.next().flatten().is_some();
                    if values.next().flatten().is_some() {
                        blocked.push(a.clone());
                    }
                    if values.next().flatten().is_some() {
                        blocked.push(b.clone());
                    }
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
            loaded.push((
                name,
                ChannelState {
                    head,
                    members,
                    blocked,
                },
            ));
        }
        for user in reads.users {
            match values.next().flatten() {
                Some(bytes) => {
                    let record: UserRecord = decode(&keys::user(&user), &bytes)?;
                    self.names.insert(user, record.display_name);
                }
                None => {
                    self.no_user.insert(user);
                }
            }
        }
        for (channel, seq) in reads.targets {
            if let Some(bytes) = values.next().flatten() {
                let record = MessageRecord::decode(&keys::message(&channel, seq), &bytes)?;
                self.targets.insert((channel, seq), record);
            }
        }
        for pair in reads.blocks {
            if values.next().flatten().is_some() {
                self.blocks.insert(pair);
            }
        }
        self.load_edits(deletes).await?;
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

    /// The edit items of the messages this round deletes (their text is erased too).
    async fn load_edits(&mut self, deletes: Vec<(String, u64)>) -> Result<(), ApiError> {
        let mut wanted = Vec::new();
        for (channel, seq) in deletes {
            if let Some(target) = self.targets.get(&(channel.clone(), seq)) {
                for edit in &target.extras.edits {
                    wanted.push((channel.clone(), *edit));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = wanted.iter().map(|(c, s)| keys::message(c, *s)).collect();
        let values = self.kv.get_many(&keys).await?;
        for (((channel, seq), key), value) in wanted.into_iter().zip(&keys).zip(values) {
            if let Some(bytes) = value {
                self.targets
                    .insert((channel, seq), MessageRecord::decode(key, &bytes)?);
            }
        }
        Ok(())
    }

    /// Load what memory lacks of these `(user, channel)` pairs: the users' inbox heads and
    /// indexes ([`index::load`], users run together) and their entries for the channels.
    async fn load_inboxes(&mut self, pairs: Vec<(String, String)>) -> Result<(), ApiError> {
        let mut per_user: HashMap<String, Vec<String>> = HashMap::new();
        for (user, channel) in pairs {
            let wanted = per_user.entry(user).or_default();
            if !wanted.contains(&channel) {
                wanted.push(channel);
            }
        }
        let (cold, warm): (Vec<_>, Vec<_>) = per_user
            .into_iter()
            .partition(|(user, _)| !self.inboxes.contains(user));
        let kv = self.kv.clone();
        let loaded = futures_util::future::try_join_all(
            cold.iter()
                .map(|(user, channels)| index::load(kv.as_ref(), user, channels)),
        )
        .await?;
        let now = Instant::now();
        for ((user, _), loaded) in cold.into_iter().zip(loaded) {
            if loaded.is_dirty() {
                self.unwritten.push_back((now, user.clone()));
            }
            self.keep(user, loaded);
        }
        for (user, channels) in warm {
            if let Some(index) = self.inboxes.get_mut(&user) {
                index::load_channels(self.kv.as_ref(), &user, index, &channels).await?;
            }
        }
        Ok(())
    }

    /// Keep a user's index in memory; one the memory bound pushes out is written first (in
    /// the next batch) if it has unwritten changes.
    fn keep(&mut self, user: String, index: UserIndex) {
        if let Some((evicted, mut old)) = self.inboxes.push(user, index)
            && old.is_dirty()
        {
            old.flush(&evicted, &mut self.pending);
        }
    }

    /// Queue the index writes of users whose changes are older than [`index::FLUSH_AFTER`]
    /// (all of them when `all`), at most `max` users.
    pub(super) fn flush_due(&mut self, now: Instant, all: bool, max: usize, max_writes: usize) {
        let mut flushed = 0;
        // Bounded in writes too: they ride in the round's one transaction (etcd's is bounded
        // by --max-txn-ops, and a batch over it fails whole, sends and all).
        while flushed < max && self.pending.len() < max_writes {
            let Some((since, _)) = self.unwritten.front() else {
                break;
            };
            if !all && now.duration_since(*since) < index::FLUSH_AFTER {
                break;
            }
            let Some((_, user)) = self.unwritten.pop_front() else {
                break;
            };
            // Skip a user already written (or forgotten) since.
            if let Some(index) = self.inboxes.peek_mut(&user)
                && index.is_dirty()
            {
                index.flush(&user, &mut self.pending);
                flushed += 1;
            }
        }
    }

    /// A user's index changed: remember to write it.
    pub(super) fn touched(&mut self, user: &str, channel: &str, now: Instant) {
        if let Some(index) = self.inboxes.peek_mut(user)
            && index.touched(channel, now)
        {
            self.unwritten.push_back((now, user.to_owned()));
        }
    }
}

/// A channel's newest `seq` and its time, from its last message (the channel's messages are
/// gapless, so the last key is the count).
async fn channel_head(kv: &dyn Kv, channel: &str) -> Result<ChannelHead, ApiError> {
    let prefix = keys::messages_of(channel);
    let mut txn = kv.begin().await?;
    let last = txn
        .scan(&prefix, &prefix_end(&prefix), 1, Order::Descending)
        .await?;
    Ok(match last.first() {
        Some((key, value)) => ChannelHead {
            last_seq: keys::trailing_number(key).unwrap_or(0),
            last_ts: MessageRecord::decode(key, value)?.ts,
        },
        None => ChannelHead::default(),
    })
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
/// then the users of a one-on-one channel and whether each blocks the other, or the group
/// record), then named users, the messages items are about, and blocks; answered in that
/// order.
#[derive(Default)]
struct Reads {
    dedupes: Vec<(String, String)>,
    channel_dedupes: Vec<(String, String, String)>,
    channels: Vec<(String, Channel)>,
    users: Vec<String>,
    targets: Vec<(String, u64)>,
    blocks: Vec<(String, String)>,
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
        if self.seen.insert(keys::messages_of(&name)) {
            self.channels.push((name, channel));
        }
    }

    fn user(&mut self, user: String) {
        if self.seen.insert(keys::user(&user)) {
            self.users.push(user);
        }
    }

    fn target(&mut self, channel: String, seq: u64) {
        if self.seen.insert(keys::message(&channel, seq)) {
            self.targets.push((channel, seq));
        }
    }

    /// Whether `owner` blocks `blocked`.
    fn block(&mut self, owner: &str, blocked: &str) {
        if self.seen.insert(keys::block(owner, blocked)) {
            self.blocks.push((owner.to_owned(), blocked.to_owned()));
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::with_capacity(
            self.dedupes.len()
                + self.channel_dedupes.len()
                + 4 * self.channels.len()
                + self.users.len()
                + self.targets.len()
                + self.blocks.len(),
        );
        keys.extend(self.dedupes.iter().map(|(s, c)| keys::dedupe(s, c)));
        keys.extend(
            self.channel_dedupes
                .iter()
                .map(|(ch, s, c)| keys::channel_dedupe(ch, s, c)),
        );
        for (_, channel) in &self.channels {
            match channel {
                Channel::Direct(a, b) => {
                    keys.push(keys::user(a));
                    keys.push(keys::user(b));
                    keys.push(keys::block(a, b));
                    keys.push(keys::block(b, a));
                }
                Channel::Group(group_id) => keys.push(keys::group(group_id)),
            }
        }
        keys.extend(self.users.iter().map(|u| keys::user(u)));
        keys.extend(self.targets.iter().map(|(c, s)| keys::message(c, *s)));
        keys.extend(self.blocks.iter().map(|(o, b)| keys::block(o, b)));
        keys
    }
}
