//! Messages: channel history and inbox sync. Messages are written by the write path
//! (`store::writer`): dedupe, gapless `seq`, one stored copy, an inbox pointer with a gapless
//! `inbox_id` per member.

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use std::borrow::Cow;

use crate::protocol::types::{EncodedItems, Message};
use crate::protocol::validate::Channel;
use crate::store::records::{GroupRecord, InboxEntry, MessageRecord, MessageView, WireMessage};
use crate::store::{KvTxn, Order, Pair, keys};

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

/// A sync item's pointer: its `inbox_id` and the message it points at.
struct Target<'a> {
    inbox_id: u64,
    channel: Cow<'a, str>,
    seq: u64,
}

/// The stored pairs of the messages `targets` point at, in their order. Pointers into one
/// channel whose seqs are dense are read with one range scan (a catch-up is mostly runs of
/// one channel); the rest with one `get` each.
async fn message_pairs(txn: &mut dyn KvTxn, targets: &[Target<'_>]) -> Result<Vec<Pair>, ApiError> {
    let mut found: Vec<Option<Pair>> = (0..targets.len()).map(|_| None).collect();
    // By channel, then seq: a run of one channel is in that order already (and a stable
    // sort of sorted input is one pass).
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by(|&a, &b| {
        (&targets[a].channel, targets[a].seq).cmp(&(&targets[b].channel, targets[b].seq))
    });
    for run in order.chunk_by(|&a, &b| targets[a].channel == targets[b].channel) {
        let (first, last) = (&targets[run[0]], &targets[run[run.len() - 1]]);
        let span = usize::try_from(last.seq - first.seq + 1).unwrap_or(usize::MAX);
        if run.len() < 2 || span > 2 * run.len() {
            continue;
        }
        let pairs = txn
            .scan(
                &keys::message(&first.channel, first.seq),
                &keys::message(&first.channel, last.seq + 1),
                span,
                Order::Ascending,
            )
            .await?;
        // Both are ascending by seq: one merge. An inbox points at a message once; should
        // two pointers share one, the second takes a copy.
        let mut want = run.iter().peekable();
        for pair in pairs {
            let seq = keys::trailing_number(&pair.0).unwrap_or_default();
            while want.next_if(|&&i| targets[i].seq < seq).is_some() {}
            let (mut pair, mut first) = (Some(pair), None::<usize>);
            while let Some(&i) = want.next_if(|&&i| targets[i].seq == seq) {
                found[i] = match first {
                    None => pair.take(),
                    Some(f) => found[f].clone(),
                };
                first.get_or_insert(i);
            }
        }
    }
    let mut out = Vec::with_capacity(targets.len());
    for (t, pair) in targets.iter().zip(found) {
        let pair = match pair {
            Some(pair) => Some(pair),
            None => {
                let key = keys::message(&t.channel, t.seq);
                txn.get(&key).await?.map(|value| (key, value))
            }
        };
        out.push(pair.ok_or_else(|| {
            ApiError::internal(format!(
                "inbox entry {} points at a missing message {}#{}; report this to the operator",
                t.inbox_id, t.channel, t.seq
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

    /// Inbox entries of `user_id` with `inbox_id > after`, ascending, at most `limit`,
    /// encoded for the wire straight from the stored bytes.
    pub async fn sync(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<(EncodedItems, bool), ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let start = keys::inbox(user_id, after.saturating_add(1));
                let end = crate::store::prefix_end(&keys::inbox_of(user_id));
                let pointers = txn.scan(&start, &end, limit + 1, Order::Ascending).await?;
                let mut more = pointers.len() > limit;
                let mut targets = Vec::with_capacity(pointers.len().min(limit));
                for (key, value) in pointers.iter().take(limit) {
                    let (channel, seq) = InboxEntry::decode_target(key, value)?;
                    targets.push(Target {
                        inbox_id: keys::trailing_number(key).unwrap_or_default(),
                        channel,
                        seq,
                    });
                }
                // The messages are read in chunks that double while the page stays small: a
                // catch-up of small messages takes few, large range reads, and a page of
                // 100,000-character messages stops after a few MiB as before.
                let mut pairs = Vec::with_capacity(targets.len());
                let mut bytes = 0;
                let mut chunk = 16;
                let mut rest = targets.as_slice();
                'read: while !rest.is_empty() {
                    let (now, later) = rest.split_at(chunk.min(rest.len()));
                    rest = later;
                    chunk *= 2;
                    for pair in message_pairs(txn, now).await? {
                        if bytes > PAGE_BYTES {
                            break 'read;
                        }
                        bytes += pair.1.len();
                        pairs.push(pair);
                    }
                }
                more |= pairs.len() < targets.len();
                let views = pairs
                    .iter()
                    .map(|(key, value)| MessageView::decode(key, value))
                    .collect::<Result<Vec<_>, _>>()?;
                let items: Vec<WireMessage> = targets
                    .iter()
                    .zip(&views)
                    .map(|(t, message)| WireMessage {
                        channel: &t.channel,
                        seq: t.seq,
                        inbox_id: Some(t.inbox_id),
                        message,
                    })
                    .collect();
                Ok((EncodedItems::encode(&items)?, more))
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
