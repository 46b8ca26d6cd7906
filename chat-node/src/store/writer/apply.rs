//! One operation applied to the writer's state and to the batch being built: numbers are
//! assigned from memory, the writes queued, the answer prepared (sent once the batch is
//! durable).

use std::collections::HashMap;

use super::fence::OwnershipView;
use super::op::{
    AppendOp, AppendOutcome, Member, MemberAppend, Op, Reply, SendOp, SendOutcome, WriteError,
};
use super::units::{Members, Units};
use crate::protocol::ApiError;
use crate::protocol::items::ItemAction;
use crate::protocol::types::{Ack, Message};
use crate::protocol::validate::Channel;
use crate::store::binary::encode_ack;
use crate::store::index as store_index;
use crate::store::model::{OutboxEntry, preview};
use crate::store::records::{ChannelHead, Extras, InboxEntry, MessageRecord, encode};
use crate::store::{Batch, keys};
use std::time::Instant;

/// The batch being built; sends are deduplicated within the batch too.
pub(super) struct BatchBuilder {
    pub(super) batch: Batch,
    sent: HashMap<(String, String), Ack>,
    max_ops: usize,
    /// When the batch was begun: index changes made in it are due from then.
    now: Instant,
}

impl BatchBuilder {
    pub(super) fn new(max_ops: usize, pending: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut batch = Batch::default();
        for (key, value) in pending {
            batch.put(key, value);
        }
        Self {
            batch,
            sent: HashMap::new(),
            max_ops,
            now: Instant::now(),
        }
    }

    /// Whether another operation of about `writes` writes fits (a first one always does).
    pub(super) fn fits(&self, writes: usize, max_bytes: usize) -> bool {
        self.batch.is_empty()
            || (self.batch.bytes() < max_bytes && self.batch.len() + writes <= self.max_ops)
    }

    pub(super) fn finish(self) -> Batch {
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
            // An edit, delete or reaction rewrites its target too (a delete its edits).
            let target = match send.action {
                ItemAction::Delete { .. } => 1 + super::targets::MAX_EDITS,
                ref action => usize::from(action.target().is_some()),
            };
            members + 3 + target
        }
        Op::Append(append) => append.items.iter().map(|i| 2 * i.members.len() + 1).sum(),
        Op::Group(group) => {
            let members = units
                .channels
                .peek(&Channel::Group(group.group_id.clone()).to_string())
                .map_or(super::groups::MAX_WRITES, |c| c.members.list().len() + 1);
            // The group record, the member's group index, the item, its outbox entry.
            members + 4
        }
        Op::Read(_) | Op::Block(_) => 1,
        Op::Flush => 0,
    }
}

/// Whether this node owns `unit` in `view` (always, on a single node).
pub(super) fn owns(view: Option<&dyn OwnershipView>, unit: &str) -> bool {
    view.is_none_or(|v| v.owner(unit).is_none())
}

/// Apply `op`: move the state, queue the writes, and return the answer to send once the
/// batch is durable. A refused operation writes nothing. `view` is the cluster's view
/// this round works under (`None` on a single node, which owns everything).
pub(super) fn apply(
    units: &mut Units,
    batch: &mut BatchBuilder,
    op: Op,
    view: Option<&dyn OwnershipView>,
) -> Result<Reply, WriteError> {
    match op {
        Op::Send(send) => {
            if !owns(view, &send.channel.to_string()) {
                return Err(WriteError::NotOwner);
            }
            send_message(units, batch, send, view).map(Reply::Sent)
        }
        Op::Append(append) => Ok(Reply::Appended(append_items(units, batch, append, view))),
        Op::Flush => Ok(Reply::Flushed),
        Op::Group(group) => {
            if !owns(view, &Channel::Group(group.group_id.clone()).to_string()) {
                return Err(WriteError::NotOwner);
            }
            super::groups::change(units, batch, group, view).map(Reply::Group)
        }
        Op::Read(read) => {
            if !owns(view, &read.user) {
                return Err(WriteError::NotOwner);
            }
            super::marks::read(units, batch, read).map(Reply::Read)
        }
        Op::Block(block) => {
            if !owns(
                view,
                &Channel::direct(&block.user, &block.target).to_string(),
            ) {
                return Err(WriteError::NotOwner);
            }
            super::marks::block(units, batch, block).map(Reply::Blocked)
        }
    }
}

fn duplicate(ack: Ack, redrive: bool) -> SendOutcome {
    SendOutcome {
        ack,
        duplicate: true,
        message: None,
        recipients: Vec::new(),
        remote: Vec::new(),
        redrive,
    }
}

/// Append item `seq` of `channel` to `member`'s inbox: the pointer, and (in memory, written
/// behind: `store::index`) their channel entry. Returns the `inbox_id` it took.
fn append_one(
    units: &mut Units,
    batch: &mut BatchBuilder,
    member: &str,
    pointer: &InboxEntry,
) -> Result<u64, ApiError> {
    let index = units
        .inboxes
        .get_mut(member)
        .ok_or_else(|| ApiError::internal(format!("the inbox of {member} was not loaded")))?;
    index.head += 1;
    let inbox_id = index.head;
    batch
        .batch
        .put(keys::inbox(member, inbox_id), pointer.encode());
    let entry = index.entry(&pointer.channel).ok_or_else(|| {
        ApiError::internal(format!("the channel entry of {member} was not loaded"))
    })?;
    store_index::apply(entry, pointer);
    units.touched(member, &pointer.channel, batch.now);
    Ok(inbox_id)
}

/// [`append_one`] with the pointer marked as the member's own or not.
fn append_as(
    units: &mut Units,
    batch: &mut BatchBuilder,
    member: &str,
    pointer: &mut InboxEntry,
    own: bool,
) -> Result<u64, ApiError> {
    pointer.own = own;
    append_one(units, batch, member, pointer)
}

/// Where a member's inbox stands for a channel before one of its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continuity {
    /// It holds the channel's previous item (or owes nothing before this one): append.
    Ready,
    /// It holds this item already.
    Held,
    /// It holds the channel only up to `last`: earlier items come first.
    Gap { last: u64 },
}

fn continuity(units: &Units, member: &str, channel: &str, seq: u64, first: bool) -> Continuity {
    let last = units
        .inboxes
        .peek(member)
        .and_then(|index| index.channels.get(channel))
        .map_or(0, |e| e.last_seq);
    if last >= seq {
        Continuity::Held
    } else if first || last + 1 == seq {
        Continuity::Ready
    } else {
        Continuity::Gap { last }
    }
}

fn send_message(
    units: &mut Units,
    batch: &mut BatchBuilder,
    send: SendOp,
    view: Option<&dyn OwnershipView>,
) -> Result<SendOutcome, WriteError> {
    // In a cluster, the sender's ack may exist while other members' inboxes (other nodes')
    // still lack the message: a resend hands it to them again (`redrive`).
    let clustered = view.is_some();
    let dedupe_key = (send.sender, send.client_msg_id);
    if let Some(ack) = batch.sent.get(&dedupe_key) {
        return Ok(duplicate(ack.clone(), clustered));
    }
    if let Some(ack) = units.dedupe.get(&dedupe_key) {
        return Ok(duplicate(ack.clone(), clustered));
    }
    let (sender, client_msg_id) = dedupe_key;
    let name = send.channel.to_string();
    if let Some(seq) =
        units
            .channel_dedupe
            .get(&(name.clone(), sender.clone(), client_msg_id.clone()))
    {
        // Stored before, but the sender's inbox (another node's) has no ack for it yet.
        let ack = Ack {
            client_msg_id,
            channel: name,
            seq: *seq,
            inbox_id: 0,
            ts: send.ts,
        };
        return Ok(duplicate(ack, true));
    }
    if let Some(e) = units.missing.get(&name) {
        return Err(e.clone().into());
    }
    let channel = units
        .channels
        .get_mut(&name)
        .ok_or_else(|| ApiError::internal(format!("channel {name} was not loaded")))?;
    if !channel.members.list().contains(&sender) {
        return Err(ApiError::forbidden(match channel.members {
            Members::Direct(_) => "you are not a member of this one-on-one channel",
            Members::Group(_) => "you are not a member of this group",
        })
        .into());
    }
    // A user blocked by the other of a one-on-one channel adds nothing to it (but may take
    // their own messages back).
    if !channel.blocked.is_empty()
        && channel.blocked.iter().any(|b| *b != sender)
        && !matches!(send.action, ItemAction::Delete { .. })
    {
        return Err(ApiError::forbidden(
            "this user does not accept messages from you; nothing was sent",
        )
        .into());
    }
    let seq = channel.head.last_seq + 1;
    let mut extras = Extras::default();
    match &send.action {
        ItemAction::Message => {}
        ItemAction::Reply { reply_to } => {
            if *reply_to == 0 || *reply_to >= seq {
                return Err(ApiError::bad_request(format!(
                    "reply_to {reply_to} is not a message of {name} (its newest is {})",
                    seq - 1
                ))
                .into());
            }
            extras.reply_to = Some(*reply_to);
        }
        action => {
            extras = super::targets::apply(
                &mut units.targets,
                batch,
                super::targets::Target {
                    channel: &name,
                    members: &channel.members,
                    last_seq: seq - 1,
                    sender: &sender,
                    item_seq: seq,
                    ts: send.ts,
                },
                action,
                &send.text,
            )?;
        }
    }
    channel.head = ChannelHead {
        last_seq: seq,
        last_ts: send.ts,
    };
    let members = channel.members.clone();
    // Edits, deletes and reactions do not push.
    let push_due = send.push_due.filter(|_| send.action.target().is_none());
    let record = MessageRecord {
        from: sender.clone(),
        from_device: send.device,
        client_msg_id,
        text: send.text,
        ts: send.ts,
        extras,
    };
    let placed = put_item(
        units,
        batch,
        &name,
        seq,
        record,
        &members,
        push_due.map(|due| (due, None)),
        view,
    )?;
    let ack = Ack {
        client_msg_id: placed.message.client_msg_id.clone(),
        channel: name.clone(),
        seq,
        inbox_id: placed.sender_inbox_id,
        ts: send.ts,
    };
    if placed.sender_inbox_id > 0 {
        batch
            .batch
            .put(keys::dedupe(&sender, &ack.client_msg_id), encode_ack(&ack));
    } else {
        // The sender's inbox is another node's: that node writes the ack with its append;
        // until then a resend finds the message here.
        batch.batch.put(
            keys::channel_dedupe(&name, &sender, &ack.client_msg_id),
            seq.to_be_bytes().to_vec(),
        );
    }
    batch
        .sent
        .insert((sender, ack.client_msg_id.clone()), ack.clone());
    Ok(SendOutcome {
        ack,
        duplicate: false,
        message: Some(placed.message),
        recipients: placed.recipients,
        remote: placed.remote,
        redrive: false,
    })
}

/// Where a new item went.
pub(super) struct Placed {
    /// As clients see it (without `inbox_id`).
    pub message: Message,
    /// Members whose inboxes this batch appended, with the `inbox_id` each took.
    pub recipients: Vec<(String, u64)>,
    /// Members whose inboxes are other nodes' (or owe earlier items first).
    pub remote: Vec<Member>,
    /// The `inbox_id` it took in its sender's inbox (0: not appended here).
    pub sender_inbox_id: u64,
}

/// Write item `seq` of channel `name` (its `seq` taken already) and append it to the
/// inboxes of `members` this node owns and that are ready for it; with `push` (due, and
/// the one member it concerns, if only one), a push outbox entry for the members appended
/// but its sender.
#[allow(clippy::too_many_arguments)]
pub(super) fn put_item(
    units: &mut Units,
    batch: &mut BatchBuilder,
    name: &str,
    seq: u64,
    record: MessageRecord,
    members: &Members,
    push: Option<(i64, Option<&str>)>,
    view: Option<&dyn OwnershipView>,
) -> Result<Placed, ApiError> {
    batch.batch.put(keys::message(name, seq), record.encode());
    let sender = record.from.as_str();
    let mut pointer = InboxEntry {
        channel: name.to_owned(),
        seq,
        ts: record.ts,
        own: false,
        quiet: record.extras.kind.is_some_and(|k| k.is_quiet()),
    };
    let mut recipients = Vec::with_capacity(members.list().len());
    let mut remote = Vec::new();
    let mut sender_inbox_id = 0;
    for member in members.list() {
        let first = members.first_for(member, seq);
        // Members whose inbox is another node's, or that owe earlier items of the channel
        // (a cluster only), go to the second stage.
        let ready = view.is_none()
            || (owns(view, member)
                && continuity(units, member, name, seq, first) == Continuity::Ready);
        if !ready {
            remote.push(Member {
                user: member.clone(),
                first,
            });
            continue;
        }
        let is_sender = member == sender;
        pointer.own = is_sender;
        let inbox_id = append_one(units, batch, member, &pointer)?;
        if is_sender {
            sender_inbox_id = inbox_id;
        }
        recipients.push((member.clone(), inbox_id));
    }
    if let Some((due, only)) = push {
        let others: Vec<(String, u64)> = recipients
            .iter()
            .filter(|(member, _)| member != sender && only.is_none_or(|o| o == member))
            .cloned()
            .collect();
        if !others.is_empty() {
            let entry = OutboxEntry {
                channel: name.to_owned(),
                seq,
                from: sender.to_owned(),
                preview: preview(&record.text),
                ts: record.ts,
                recipients: others,
            };
            batch
                .batch
                .put(keys::push_outbox(due, name, seq), encode(&entry));
        }
    }
    Ok(Placed {
        message: record.into_wire(name, seq, None),
        recipients,
        remote,
        sender_inbox_id,
    })
}

/// The second stage: append a channel's items to inboxes this node owns, in order, each
/// member only when their inbox holds the channel's previous item (or the item is their
/// first): so an inbox takes a channel's items in `seq` order, gapless, and never twice.
fn append_items(
    units: &mut Units,
    batch: &mut BatchBuilder,
    append: AppendOp,
    view: Option<&dyn OwnershipView>,
) -> AppendOutcome {
    let mut outcome = AppendOutcome::default();
    for item in &append.items {
        let mut pointer = InboxEntry {
            channel: append.channel.clone(),
            seq: item.seq,
            ts: item.ts,
            own: false,
            quiet: item.quiet,
        };
        let mut results = Vec::with_capacity(item.members.len());
        for member in &item.members {
            let user = member.user.as_str();
            let is_sender = user == item.from;
            let result = if !owns(view, user) {
                MemberAppend::NotOwner
            } else {
                match continuity(units, user, &append.channel, item.seq, member.first) {
                    Continuity::Ready => {
                        match append_as(units, batch, user, &mut pointer, is_sender) {
                            Ok(inbox_id) => {
                                if is_sender && !item.system {
                                    let ack = Ack {
                                        client_msg_id: item.client_msg_id.clone(),
                                        channel: append.channel.clone(),
                                        seq: item.seq,
                                        inbox_id,
                                        ts: item.ts,
                                    };
                                    batch.batch.put(
                                        keys::dedupe(user, &item.client_msg_id),
                                        encode_ack(&ack),
                                    );
                                    batch
                                        .sent
                                        .insert((user.to_owned(), item.client_msg_id.clone()), ack);
                                }
                                MemberAppend::Appended { inbox_id }
                            }
                            Err(e) => {
                                tracing::error!(error = %e.message, "append failed");
                                MemberAppend::NotOwner
                            }
                        }
                    }
                    Continuity::Held => MemberAppend::Duplicate {
                        inbox_id: is_sender
                            .then(|| {
                                let key = (user.to_owned(), item.client_msg_id.clone());
                                batch
                                    .sent
                                    .get(&key)
                                    .or_else(|| units.dedupe.get(&key))
                                    .map(|ack| ack.inbox_id)
                            })
                            .flatten(),
                    },
                    Continuity::Gap { last } => MemberAppend::Gap { last },
                }
            };
            results.push((member.user.clone(), result));
        }
        if let Some((due, preview)) = &item.push {
            let recipients: Vec<(String, u64)> = results
                .iter()
                .filter(|(user, _)| *user != item.from)
                .filter(|(user, _)| item.push_only.as_ref().is_none_or(|o| o == user))
                .filter_map(|(user, r)| match r {
                    MemberAppend::Appended { inbox_id } => Some((user.clone(), *inbox_id)),
                    _ => None,
                })
                .collect();
            if let Some((first, _)) = recipients.first() {
                let key = keys::push_outbox_part(*due, &append.channel, item.seq, first);
                let entry = OutboxEntry {
                    channel: append.channel.clone(),
                    seq: item.seq,
                    from: item.from.clone(),
                    preview: preview.clone(),
                    ts: item.ts,
                    recipients,
                };
                batch.batch.put(key, encode(&entry));
            }
        }
        outcome.items.push(results);
    }
    outcome
}
