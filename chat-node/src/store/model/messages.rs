//! Messages: channel history and inbox sync. Messages are written by the write path
//! (`store::writer`): dedupe, gapless `seq`, one stored copy, an inbox pointer with a gapless
//! `inbox_id` per member.

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::protocol::types::Message;
use crate::protocol::validate::Channel;
use crate::store::records::{GroupRecord, InboxEntry, MessageRecord};
use crate::store::{KvTxn, Order, keys};

/// Who belongs to a channel now, and when the members who joined a group later joined.
#[derive(Debug, Clone, Default)]
pub struct ChannelMembers {
    list: Vec<String>,
    joined: std::collections::BTreeMap<String, u64>,
}

impl ChannelMembers {
    pub fn list(&self) -> &[String] {
        &self.list
    }

    /// The channel's newest `seq` when `user` joined (0: from the start).
    pub fn joined(&self, user: &str) -> u64 {
        self.joined.get(user).copied().unwrap_or(0)
    }
}

/// A page of history or sync stops growing past this many bytes of stored messages (after
/// at least one), so one answer stays a few MiB even when every message is 100,000 chars.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The members of `channel`, checking that `caller` is one of them.
pub(super) async fn members(
    txn: &mut dyn KvTxn,
    caller: &str,
    channel: &Channel,
) -> Result<Vec<String>, ApiError> {
    match channel {
        Channel::Direct(a, b) => {
            if caller != a && caller != b {
                return Err(ApiError::forbidden(
                    "you are not a member of this one-on-one channel",
                ));
            }
            let other = if caller == a { b } else { a };
            if txn.get(&keys::user(other)).await?.is_none() {
                return Err(ApiError::not_found(format!("no user has the id {other:?}")));
            }
            Ok(if a == b {
                vec![a.clone()]
            } else {
                vec![a.clone(), b.clone()]
            })
        }
        Channel::Group(group_id) => {
            let group: GroupRecord = get_json(txn, &keys::group(group_id))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no group has the id {group_id:?}")))?;
            if !group.members.iter().any(|m| m == caller) {
                return Err(ApiError::forbidden("you are not a member of this group"));
            }
            Ok(group.members)
        }
    }
}

/// The messages `entries` point at, in order. Pointers into one channel whose seqs are
/// dense are read with one range scan (a catch-up is mostly runs of one channel); the rest
/// one by one.
async fn read_messages(
    txn: &mut dyn KvTxn,
    entries: &[(u64, InboxEntry)],
) -> Result<Vec<MessageRecord>, ApiError> {
    let mut ranges: std::collections::HashMap<&str, (u64, u64, usize)> =
        std::collections::HashMap::new();
    for (_, e) in entries {
        let r = ranges
            .entry(e.channel.as_str())
            .or_insert((e.seq, e.seq, 0));
        r.0 = r.0.min(e.seq);
        r.1 = r.1.max(e.seq);
        r.2 += 1;
    }
    let mut found: std::collections::HashMap<(&str, u64), MessageRecord> =
        std::collections::HashMap::new();
    for (channel, (lo, hi, count)) in ranges {
        let span = (hi - lo + 1) as usize;
        if count > 1 && span <= 2 * count {
            let pairs = txn
                .scan(
                    &keys::message(channel, lo),
                    &keys::message(channel, hi + 1),
                    span,
                    Order::Ascending,
                )
                .await?;
            for (key, value) in pairs {
                let seq = keys::trailing_number(&key).unwrap_or_default();
                found.insert((channel, seq), MessageRecord::decode(&key, &value)?);
            }
        }
    }
    let mut out = Vec::with_capacity(entries.len());
    for (inbox_id, e) in entries {
        let record = match found.remove(&(e.channel.as_str(), e.seq)) {
            Some(r) => Some(r),
            None => {
                let key = keys::message(&e.channel, e.seq);
                match txn.get(&key).await? {
                    Some(bytes) => Some(MessageRecord::decode(&key, &bytes)?),
                    None => None,
                }
            }
        };
        out.push(record.ok_or_else(|| {
            ApiError::internal(format!(
                "inbox entry {inbox_id} points at a missing message {}#{}; report this to the operator",
                e.channel, e.seq
            ))
        })?);
    }
    Ok(out)
}

impl ChatStore {
    /// The members of `channel`; 403 unless `caller` is one.
    pub async fn channel_members(
        &self,
        caller: &str,
        channel: &Channel,
    ) -> Result<Vec<String>, ApiError> {
        self.read(|txn, _| Box::pin(async move { members(txn, caller, channel).await }))
            .await
    }

    /// Who belongs to `channel` now, and since when (for the write path's second stage; no
    /// caller to check).
    pub async fn channel_members_any(&self, channel: &str) -> Result<ChannelMembers, ApiError> {
        let channel = Channel::parse(channel)?;
        self.read(|txn, _| {
            let channel = &channel;
            Box::pin(async move {
                Ok(match channel {
                    Channel::Direct(a, b) if a == b => ChannelMembers {
                        list: vec![a.clone()],
                        joined: Default::default(),
                    },
                    Channel::Direct(a, b) => ChannelMembers {
                        list: vec![a.clone(), b.clone()],
                        joined: Default::default(),
                    },
                    Channel::Group(group_id) => {
                        let group: GroupRecord = get_json(txn, &keys::group(group_id))
                            .await?
                            .ok_or_else(|| {
                                ApiError::not_found(format!("no group has the id {group_id:?}"))
                            })?;
                        ChannelMembers {
                            list: group.members,
                            joined: group.joined,
                        }
                    }
                })
            })
        })
        .await
    }

    /// The items of `channel` with `from <= seq < to`, in order.
    pub async fn channel_items(
        &self,
        channel: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Message)>, ApiError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.read(|txn, _| {
            Box::pin(async move {
                let pairs = txn
                    .scan(
                        &keys::message(channel, from),
                        &keys::message(channel, to),
                        (to - from) as usize,
                        Order::Ascending,
                    )
                    .await?;
                let mut out = Vec::with_capacity(pairs.len());
                for (key, value) in pairs {
                    let seq = keys::trailing_number(&key).unwrap_or_default();
                    let record = MessageRecord::decode(&key, &value)?;
                    out.push((seq, record.into_wire(channel, seq, None)));
                }
                Ok(out)
            })
        })
        .await
    }

    /// A page of `channel`'s history, ascending by `seq`: after `after_seq` (oldest first)
    /// or, without it, the newest below `before_seq`. `more` says whether messages exist
    /// beyond the page in the direction of paging.
    pub async fn history(
        &self,
        caller: &str,
        channel: &Channel,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), ApiError> {
        let name = channel.to_string();
        let name = name.as_str();
        self.read(|txn, _| {
            Box::pin(async move {
                members(txn, caller, channel).await?;
                // Sequence numbers are gapless: the last message's is the count.
                let prefix = keys::messages_of(name);
                let last = txn
                    .scan(
                        &prefix,
                        &crate::store::prefix_end(&prefix),
                        1,
                        Order::Descending,
                    )
                    .await?
                    .first()
                    .and_then(|(key, _)| keys::trailing_number(key))
                    .unwrap_or(0);
                // Sequence numbers are gapless: the window is [lo, hi].
                let hi = before_seq.map_or(last, |b| b.saturating_sub(1).min(last));
                let lo = after_seq.map_or(1, |a| a.saturating_add(1));
                if lo > hi {
                    return Ok((Vec::new(), false));
                }
                let order = if after_seq.is_some() {
                    Order::Ascending
                } else {
                    Order::Descending
                };
                let pairs = txn
                    .scan(
                        &keys::message(name, lo),
                        &keys::message(name, hi + 1),
                        limit,
                        order,
                    )
                    .await?;
                let mut messages = Vec::with_capacity(pairs.len());
                let mut bytes = 0;
                for (key, value) in pairs {
                    if !messages.is_empty() && bytes + value.len() > PAGE_BYTES {
                        break;
                    }
                    bytes += value.len();
                    let seq = keys::trailing_number(&key).unwrap_or_default();
                    let record = MessageRecord::decode(&key, &value)?;
                    messages.push(record.into_wire(name, seq, None));
                }
                let more = match order {
                    Order::Ascending => messages.last().is_some_and(|m| m.seq < hi),
                    Order::Descending => {
                        messages.reverse();
                        messages.first().is_some_and(|m| m.seq > lo)
                    }
                };
                Ok((messages, more))
            })
        })
        .await
    }

    /// Inbox entries of `user_id` with `inbox_id > after`, ascending, at most `limit`.
    pub async fn sync(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let start = keys::inbox(user_id, after.saturating_add(1));
                let end = crate::store::prefix_end(&keys::inbox_of(user_id));
                let pairs = txn.scan(&start, &end, limit + 1, Order::Ascending).await?;
                let mut more = pairs.len() > limit;
                let mut entries = Vec::with_capacity(pairs.len().min(limit));
                for (key, value) in pairs.into_iter().take(limit) {
                    let inbox_id = keys::trailing_number(&key).unwrap_or_default();
                    entries.push((inbox_id, InboxEntry::decode(&key, &value)?));
                }
                // The messages are read in chunks that double while the page stays small: a
                // catch-up of small messages takes few, large range reads, and a page of
                // 100,000-character messages stops after a few MiB as before.
                let mut items = Vec::with_capacity(entries.len());
                let mut bytes = 0;
                let mut chunk = 16;
                let mut rest = entries.as_slice();
                while !rest.is_empty() {
                    if bytes > PAGE_BYTES {
                        more = true;
                        break;
                    }
                    let (now, later) = rest.split_at(chunk.min(rest.len()));
                    rest = later;
                    chunk *= 2;
                    let records = read_messages(txn, now).await?;
                    for ((inbox_id, entry), record) in now.iter().zip(records) {
                        if bytes > PAGE_BYTES {
                            more = true;
                            break;
                        }
                        bytes += record.text.len();
                        items.push(record.into_wire(&entry.channel, entry.seq, Some(*inbox_id)));
                    }
                }
                Ok((items, more))
            })
        })
        .await
    }

    /// The push preview of each of these messages as they are now (an edited message's
    /// latest text, nothing of a deleted one), in one round trip where the backend allows;
    /// `None` for a message not found.
    pub async fn previews_now(
        &self,
        messages: &[(String, u64)],
    ) -> Result<Vec<Option<String>>, ApiError> {
        let keys: Vec<Vec<u8>> = messages
            .iter()
            .map(|(channel, seq)| keys::message(channel, *seq))
            .collect();
        let values = self.kv().get_many(&keys).await?;
        let mut out = Vec::with_capacity(values.len());
        for (key, value) in keys.iter().zip(values) {
            out.push(match value {
                Some(bytes) => {
                    let record = MessageRecord::decode(key, &bytes)?;
                    Some(if record.extras.deleted {
                        String::new()
                    } else {
                        super::preview(&record.text)
                    })
                }
                None => None,
            });
        }
        Ok(out)
    }

    /// The largest `inbox_id` of `user_id` (0 when the inbox is empty).
    pub async fn inbox_head(&self, user_id: &str) -> Result<u64, ApiError> {
        crate::store::writer::inbox_head(self.kv().as_ref(), user_id).await
    }
}
