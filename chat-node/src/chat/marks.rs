//! Read markers, the channel list, and blocks.
//!
//! A read marker lives in the reader's channel index, so it is moved at the owner of the
//! reader's inbox (routed there in a cluster, like a send to its channel's owner); every
//! online device of every member then hears of it. The channel list and the members'
//! markers are read from the index in the store, on any node. A block is kept by the owner
//! of the two users' one-on-one channel, which refuses the blocked user's sends from memory.

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Chat;
use crate::cluster::rpc::{Answer, Call};
use crate::now_ms;
use crate::protocol::ApiError;
use crate::protocol::frames::{ServerFrame, Status};
use crate::protocol::types::{ChannelSummary, ReadMarker};
use crate::protocol::validate::{self, Channel};
use crate::store::index;
use crate::store::writer::{BlockOp, Counted, ReadOp, ReadOutcome, WriteError};

/// Most items read to count what a marker stopped short of the newest passes; beyond, the
/// older items it passes are taken as counted.
const COUNT_SPAN: u64 = 2_000;
/// Most channels `GET /v1/channels` lists.
const MAX_CHANNELS: usize = 10_000;
/// How often a marker is retried when the writer asks for a count (it asks at most once).
const READ_ATTEMPTS: usize = 3;

impl Chat {
    /// `user` has read `channel` up to `seq`. Returns where the marker moved, if it did
    /// (it never moves back); every member's online devices then get a `read` frame.
    pub async fn mark_read(
        &self,
        user: &str,
        channel: &str,
        seq: u64,
    ) -> Result<Option<u64>, ApiError> {
        let channel = Channel::parse(channel)?;
        let members = self.store.channel_members(user, &channel).await?;
        let name = channel.to_string();
        let mut counted = None;
        for _ in 0..READ_ATTEMPTS {
            let op = ReadOp {
                user: user.to_owned(),
                channel: name.clone(),
                seq,
                counted: counted.take(),
            };
            let call = Call::Read { op: op.clone() };
            let outcome = self
                .at_owner(
                    user,
                    call,
                    || self.read_here(op.clone()),
                    |answer| match answer {
                        Answer::Read { outcome } => Some(outcome),
                        _ => None,
                    },
                )
                .await?;
            match outcome {
                ReadOutcome::Moved { seq } => {
                    let frame = ServerFrame::Read {
                        channel: name.clone(),
                        user: user.to_owned(),
                        seq,
                    };
                    let frame = Utf8Bytes::from(frame.to_json());
                    self.links.relay(members.iter().map(String::as_str), &frame);
                    return Ok(Some(seq));
                }
                ReadOutcome::Unchanged { .. } => return Ok(None),
                ReadOutcome::NeedCount { from, to } => {
                    counted = Some(self.count_unread(user, &name, from, to).await?);
                }
            }
        }
        Err(ApiError::unavailable(
            "the read marker could not be moved; retry shortly",
        ))
    }

    /// At the owner of the reader's inbox.
    pub(crate) async fn read_here(&self, op: ReadOp) -> Result<ReadOutcome, WriteError> {
        self.writer.read(op).await
    }

    /// Which items of `channel` in `(from, to]` count as unread for `user`: plain messages
    /// and system items of their membership (items before they joined a group are not
    /// theirs).
    async fn count_unread(
        &self,
        user: &str,
        channel: &str,
        from: u64,
        to: u64,
    ) -> Result<Counted, ApiError> {
        let joined = self.store.channel_members_any(channel).await?.joined(user);
        let floor = to.saturating_sub(COUNT_SPAN);
        let start = from.max(joined).max(floor);
        let items = self.store.channel_items(channel, start + 1, to + 1).await?;
        Ok(Counted {
            from: if from.max(joined) >= floor {
                from
            } else {
                floor
            },
            to,
            seqs: items
                .into_iter()
                .filter(|(_, m)| !m.kind.is_some_and(|k| k.is_quiet()))
                .map(|(seq, _)| seq)
                .collect(),
        })
    }

    /// `GET /v1/channels`: every channel `user` belongs to that has items, newest activity
    /// first, read from the user's channel index (not the inbox).
    pub async fn channels(&self, user: &str) -> Result<Vec<ChannelSummary>, ApiError> {
        let entries = index::read_all(self.store.kv().as_ref(), user, MAX_CHANNELS).await?;
        let group_ids: Vec<String> = entries
            .iter()
            .filter_map(|(name, _)| name.strip_prefix("g:").map(str::to_owned))
            .collect();
        let groups = self.store.groups_by_id(&group_ids).await?;
        let groups: std::collections::HashMap<String, crate::store::GroupRecord> = groups
            .into_iter()
            .flatten()
            .map(|g| (g.group_id.clone(), g))
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            if entry.last_seq == 0 {
                continue;
            }
            let (kind, peer, group_id, group_name) = match Channel::parse(&name) {
                Ok(Channel::Direct(a, b)) => {
                    let peer = if a == user { b } else { a };
                    ("direct", Some(peer), None, None)
                }
                Ok(Channel::Group(id)) => {
                    // A group the user left (or was removed from) is no longer theirs.
                    let Some(group) = groups
                        .get(&id)
                        .filter(|g| g.members.iter().any(|m| m == user))
                    else {
                        continue;
                    };
                    ("group", None, Some(id), Some(group.name.clone()))
                }
                Err(_) => continue,
            };
            out.push(ChannelSummary {
                channel: name,
                kind,
                peer,
                group_id,
                name: group_name,
                last_seq: entry.last_seq,
                last_ts: entry.last_ts,
                read_seq: entry.read_seq,
                unread: entry.unread,
            });
        }
        out.sort_by(|a, b| {
            b.last_ts
                .cmp(&a.last_ts)
                .then_with(|| a.channel.cmp(&b.channel))
        });
        Ok(out)
    }

    /// `GET /v1/channels/{channel}/reads`: every member's marker (members only).
    pub async fn reads(&self, caller: &str, channel: &str) -> Result<Vec<ReadMarker>, ApiError> {
        let channel = Channel::parse(channel)?;
        let members = self.store.channel_members(caller, &channel).await?;
        let name = channel.to_string();
        let kv = self.store.kv().clone();
        let entries = futures_util::future::try_join_all(
            members
                .iter()
                .map(|m| index::read_one(kv.as_ref(), m, &name)),
        )
        .await?;
        Ok(members
            .into_iter()
            .zip(entries)
            .map(|(user, entry)| ReadMarker {
                user,
                seq: entry.read_seq,
            })
            .collect())
    }

    // --- blocks ---------------------------------------------------------------------------

    /// `user` blocks (`block`) or unblocks `target`. While blocked, `target`'s sends to the
    /// one-on-one channel and their adding `user` to groups are refused, and the two share
    /// no presence.
    pub async fn set_block(&self, user: &str, target: &str, block: bool) -> Result<(), ApiError> {
        if !validate::is_id(target) {
            return Err(ApiError::not_found(format!(
                "no user has the id {target:?}"
            )));
        }
        if target == user {
            return Err(ApiError::bad_request("you cannot block yourself"));
        }
        let shared = self.store.are_mutual(user, target).await?;
        let op = BlockOp {
            user: user.to_owned(),
            target: target.to_owned(),
            block,
            ts: now_ms(),
        };
        let unit = Channel::direct(user, target).to_string();
        let changed = self
            .at_owner(
                &unit,
                Call::Block { op: op.clone() },
                || self.block_here(op.clone()),
                |answer| match answer {
                    Answer::Blocked { changed } => Some(changed),
                    _ => None,
                },
            )
            .await?;
        if !changed {
            return Ok(());
        }
        if block && shared {
            // Presence stops either way: each stops seeing the other online.
            for (viewer, subject) in [(user, target), (target, user)] {
                let frame = ServerFrame::Presence {
                    user: subject.to_owned(),
                    status: Status::Offline,
                    last_seen: None,
                };
                self.links
                    .relay([viewer], &Utf8Bytes::from(frame.to_json()));
            }
        } else if !block && self.store.are_mutual(user, target).await? {
            self.exchange_presence(user, target).await?;
        }
        Ok(())
    }

    /// At the owner of the one-on-one channel.
    pub(crate) async fn block_here(&self, op: BlockOp) -> Result<bool, WriteError> {
        self.writer.block(op).await
    }

    /// Everyone `user` blocks.
    pub async fn blocks(&self, user: &str) -> Result<Vec<String>, ApiError> {
        self.store.blocks_of(user).await
    }
}
