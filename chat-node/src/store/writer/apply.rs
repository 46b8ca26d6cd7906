//! One operation applied to the writer's state and to the batch being built: numbers are
//! assigned from memory, the writes queued, the answer prepared (sent once the batch is
//! durable).

use std::collections::HashMap;

use super::units::{Members, Units};
use super::{Op, Reply};
use crate::protocol::ApiError;
use crate::protocol::types::Ack;
use crate::protocol::validate::Channel;
use crate::store::model::{OutboxEntry, SendOutcome, group_full, preview};
use crate::store::records::{ChannelHead, GroupRecord, InboxEntry, MessageRecord, encode};
use crate::store::{Batch, keys};

/// A message to store, validated by the caller (text length, `client_msg_id`, channel name).
#[derive(Debug, Clone)]
pub struct SendOp {
    pub sender: String,
    pub device: String,
    pub channel: Channel,
    pub client_msg_id: String,
    pub text: String,
    pub ts: i64,
    /// When pushes are configured: when the message's push falls due (its `ts` plus the
    /// coalescing window); the batch then also writes one push outbox entry.
    pub push_due: Option<i64>,
}

/// The batch being built, and what it moved: channel heads are written once per batch,
/// at the end; sends are deduplicated within the batch too.
pub(super) struct BatchBuilder {
    batch: Batch,
    heads: HashMap<String, ChannelHead>,
    sent: HashMap<(String, String), Ack>,
    max_ops: usize,
}

impl BatchBuilder {
    pub(super) fn new(max_ops: usize) -> Self {
        Self {
            batch: Batch::default(),
            heads: HashMap::new(),
            sent: HashMap::new(),
            max_ops,
        }
    }

    /// Whether another operation of about `writes` writes fits (a first one always does).
    pub(super) fn fits(&self, writes: usize, max_bytes: usize) -> bool {
        self.batch.is_empty()
            || (self.batch.bytes() < max_bytes
                && self.batch.len() + self.heads.len() + writes <= self.max_ops)
    }

    /// The batch, with the channel heads it moved.
    pub(super) fn finish(mut self) -> Batch {
        for (channel, head) in self.heads {
            self.batch.put(keys::channel_seq(&channel), head.encode());
        }
        self.batch
    }
}

/// About how many writes `op` makes, for [`BatchBuilder::fits`].
pub(super) fn writes_of(units: &Units, op: &Op) -> usize {
    match op {
        Op::Send(send) => {
            let members = units
                .channels
                .peek(&send.channel.to_string())
                .map_or(2, |c| c.members.list().len());
            2 * members + 4
        }
        Op::AddMember { .. } | Op::RemoveMember { .. } => 2,
    }
}

/// Apply `op`: move the state, queue the writes, and return the answer to send once the
/// batch is durable. A refused operation writes nothing.
pub(super) fn apply(
    units: &mut Units,
    batch: &mut BatchBuilder,
    op: Op,
) -> Result<Reply, ApiError> {
    match op {
        Op::Send(send) => send_message(units, batch, send).map(Reply::Sent),
        Op::AddMember {
            caller,
            group_id,
            user,
            max_members,
        } => add_member(units, batch, &caller, &group_id, &user, max_members).map(Reply::Group),
        Op::RemoveMember {
            caller,
            group_id,
            user,
        } => remove_member(units, batch, &caller, &group_id, &user).map(Reply::Group),
    }
}

fn duplicate(ack: Ack) -> SendOutcome {
    SendOutcome {
        ack,
        duplicate: true,
        message: None,
        recipients: Vec::new(),
    }
}

fn send_message(
    units: &mut Units,
    batch: &mut BatchBuilder,
    send: SendOp,
) -> Result<SendOutcome, ApiError> {
    let dedupe_key = (send.sender, send.client_msg_id);
    if let Some(ack) = batch.sent.get(&dedupe_key) {
        return Ok(duplicate(ack.clone()));
    }
    if let Some(ack) = units.dedupe.get(&dedupe_key) {
        return Ok(duplicate(ack.clone()));
    }
    let (sender, client_msg_id) = dedupe_key;
    let name = send.channel.to_string();
    if let Some(e) = units.missing.get(&name) {
        return Err(e.clone());
    }
    let channel = units
        .channels
        .get_mut(&name)
        .ok_or_else(|| ApiError::internal(format!("channel {name} was not loaded")))?;
    if !channel.members.list().contains(&sender) {
        return Err(ApiError::forbidden(match channel.members {
            Members::Direct(_) => "you are not a member of this one-on-one channel",
            Members::Group(_) => "you are not a member of this group",
        }));
    }
    let seq = channel.head.last_seq + 1;
    channel.head = ChannelHead {
        last_seq: seq,
        last_ts: send.ts,
    };
    batch.heads.insert(name.clone(), channel.head);

    let record = MessageRecord {
        from: sender.clone(),
        from_device: send.device,
        client_msg_id,
        text: send.text,
        ts: send.ts,
    };
    batch.batch.put(keys::message(&name, seq), encode(&record));
    let pointer = encode(&InboxEntry {
        channel: name.clone(),
        seq,
    });
    let members = channel.members.list();
    let mut recipients = Vec::with_capacity(members.len());
    let mut sender_inbox_id = 0;
    for member in members {
        let head = units
            .inboxes
            .get_mut(member)
            .ok_or_else(|| ApiError::internal(format!("the inbox of {member} was not loaded")))?;
        *head += 1;
        batch.batch.put(keys::inbox(member, *head), pointer.clone());
        let entry_key = keys::user_channel(member, &name);
        let entry = units.user_channels.get_mut(&entry_key).ok_or_else(|| {
            ApiError::internal(format!("the channel entry of {member} was not loaded"))
        })?;
        entry.last_seq = seq;
        entry.last_ts = send.ts;
        if *member == sender {
            // Sending to a channel moves the sender's read marker to what they sent.
            entry.read_seq = seq;
            entry.unread = 0;
            sender_inbox_id = *head;
        } else {
            entry.unread += 1;
        }
        batch.batch.put(entry_key, entry.encode());
        recipients.push((member.clone(), *head));
    }
    if let Some(due) = send.push_due {
        let others: Vec<(String, u64)> = recipients
            .iter()
            .filter(|(member, _)| *member != sender)
            .cloned()
            .collect();
        if !others.is_empty() {
            let entry = OutboxEntry {
                channel: name.clone(),
                seq,
                from: sender.clone(),
                preview: preview(&record.text),
                ts: send.ts,
                recipients: others,
            };
            batch
                .batch
                .put(keys::push_outbox(due, &name, seq), encode(&entry));
        }
    }
    let ack = Ack {
        client_msg_id: record.client_msg_id.clone(),
        channel: name.clone(),
        seq,
        inbox_id: sender_inbox_id,
        ts: send.ts,
    };
    batch
        .batch
        .put(keys::dedupe(&sender, &ack.client_msg_id), encode(&ack));
    batch
        .sent
        .insert((sender, ack.client_msg_id.clone()), ack.clone());
    let message = record.into_wire(&name, seq, None);
    Ok(SendOutcome {
        ack,
        duplicate: false,
        message: Some(message),
        recipients,
    })
}

/// The group `group_id` as this round loaded it.
fn group<'u>(units: &'u mut Units, group_id: &str) -> Result<&'u mut GroupRecord, ApiError> {
    let name = Channel::Group(group_id.to_owned()).to_string();
    if let Some(e) = units.missing.get(&name) {
        return Err(e.clone());
    }
    match units.channels.get_mut(&name).map(|c| &mut c.members) {
        Some(Members::Group(group)) => Ok(group),
        _ => Err(ApiError::internal(format!(
            "group {group_id} was not loaded"
        ))),
    }
}

fn write_group(batch: &mut BatchBuilder, group: &GroupRecord) {
    batch.batch.put(keys::group(&group.group_id), encode(group));
}

fn add_member(
    units: &mut Units,
    batch: &mut BatchBuilder,
    caller: &str,
    group_id: &str,
    user: &str,
    max_members: usize,
) -> Result<GroupRecord, ApiError> {
    let missing_user = units.no_user.contains(user);
    let group = group(units, group_id)?;
    if !group.members.iter().any(|m| m == caller) {
        return Err(ApiError::forbidden(
            "only members of a group can add members to it",
        ));
    }
    if group.members.iter().any(|m| m == user) {
        return Ok(group.clone());
    }
    if missing_user {
        return Err(ApiError::not_found(format!("no user has the id {user:?}")));
    }
    if group.members.len() >= max_members {
        return Err(group_full(max_members));
    }
    group.members.push(user.to_owned());
    let group = group.clone();
    write_group(batch, &group);
    batch
        .batch
        .put(keys::user_group(user, group_id), Vec::new());
    Ok(group)
}

fn remove_member(
    units: &mut Units,
    batch: &mut BatchBuilder,
    caller: &str,
    group_id: &str,
    user: &str,
) -> Result<GroupRecord, ApiError> {
    let group = group(units, group_id)?;
    if !group.members.iter().any(|m| m == caller) {
        return Err(ApiError::forbidden("you are not a member of this group"));
    }
    if caller != user && caller != group.owner {
        return Err(ApiError::forbidden(
            "only the group's owner can remove other members",
        ));
    }
    if !group.members.iter().any(|m| m == user) {
        return Err(ApiError::not_found(format!(
            "{user:?} is not a member of this group"
        )));
    }
    group.members.retain(|m| m != user);
    if group.owner == user
        && let Some(next) = group.members.first()
    {
        group.owner = next.clone();
    }
    let group = group.clone();
    write_group(batch, &group);
    batch.batch.delete(keys::user_group(user, group_id));
    Ok(group)
}
