//! Sending: a message (and a group change) runs at its channel's owner, whose writer
//! assigns the `seq`, stores it and appends it to the inboxes the owner owns, all in one
//! batch; the inboxes of members other nodes own are the **second stage**: the owner hands
//! the item to each of their owners ([`Call::Append`]), which append it in `seq` order and
//! deliver it to their users' devices. The ack waits for every member's inbox: acked means
//! in every inbox, durably.
//!
//! On a single node the channel and every inbox are this node's: one batch does it all.
//!
//! An owner's inbox that missed earlier items of the channel (a node died between the two
//! stages, a link failed, ownership moved) says where it stands ([`MemberAppend::Gap`]);
//! the channel's owner then hands it the missing items first, read from the store. So every
//! inbox takes a channel's items in order, gapless and once, whatever failed in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Chat;
use crate::cluster::rpc::{Answer, Call};
use crate::now_ms;
use crate::protocol::ApiError;
use crate::protocol::frames::{SendRequest, SendTarget};
use crate::protocol::items::{self, ItemAction};
use crate::protocol::types::{Ack, Message};
use crate::protocol::validate::{self, Channel};
use crate::store::preview;
use crate::store::writer::{
    AppendItem, AppendOp, AppendOutcome, Member, MemberAppend, SendOp, WriteError,
};

/// How long the second stage keeps trying to reach every member's inbox before the send is
/// answered `unavailable` (the client retries with the same `client_msg_id`): past a dead
/// node's lease too.
const FANOUT_DEADLINE: Duration = Duration::from_secs(15);
/// About the most writes one append call carries (a member's pointer and index entry per
/// item): well inside one etcd transaction (`--max-txn-ops` 1024, less the index writes the
/// writer adds). A repair of hundreds of items for a node's 30 members of a group took one
/// call of thousands of writes, which etcd refused every time: the group never recovered.
const APPEND_WRITES: usize = 480;
/// Most missing items handed to one inbox in one go.
const REPAIR_ITEMS: u64 = 1_000;

impl Chat {
    /// Store a timeline item (a message, or an edit, delete or reaction: `req.action`)
    /// durably in every member's inbox, then deliver it live to every online device of
    /// every member but the sending device. A resent `client_msg_id` returns the first ack.
    pub async fn send(
        &self,
        sender: &str,
        device: &str,
        req: SendRequest,
    ) -> Result<Ack, ApiError> {
        let started = Instant::now();
        validate::client_msg_id(&req.client_msg_id)?;
        match &req.action {
            ItemAction::Message | ItemAction::Reply { .. } | ItemAction::Edit { .. } => {
                validate::text(&req.text, self.limits.max_message_chars)?
            }
            ItemAction::Delete { .. } => {}
            ItemAction::React { .. } => items::emoji(&req.text)?,
        }
        let channel = match &req.target {
            SendTarget::User(to) => {
                if !validate::is_id(to) {
                    return Err(ApiError::not_found(format!("no user has the id {to:?}")));
                }
                Channel::direct(sender, to)
            }
            SendTarget::Channel(name) => Channel::parse(name)?,
        };
        let ts = now_ms();
        let op = SendOp {
            sender: sender.to_owned(),
            device: device.to_owned(),
            channel,
            client_msg_id: req.client_msg_id,
            text: req.text,
            ts,
            // Edits, deletes and reactions do not push.
            push_due: self
                .push
                .as_ref()
                .filter(|_| req.action.target().is_none())
                .map(|p| p.due_at(ts)),
            action: req.action,
        };
        let ack = self.route_send(op).await?;
        if let Some(push) = &self.push {
            push.wake();
        }
        self.metrics
            .send_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(ack)
    }

    /// Run `op` at its channel's owner, here or over a link, following ownership while it
    /// moves.
    async fn route_send(&self, op: SendOp) -> Result<Ack, ApiError> {
        let unit = op.channel.to_string();
        let call = Call::Sequence { op: op.clone() };
        self.at_owner(
            &unit,
            call,
            || self.sequence_here(op.clone()),
            |answer| match answer {
                Answer::Acked { ack } => Some(ack),
                _ => None,
            },
        )
        .await
    }

    /// At the channel's owner: write the message (and the inboxes this node owns), hand it
    /// to the other members' owners, deliver it here, and return the ack once it is in
    /// every inbox.
    pub(crate) async fn sequence_here(&self, op: SendOp) -> Result<Ack, WriteError> {
        let push_due = op.push_due;
        let outcome = self.writer.send(op).await?;
        if outcome.duplicate && !outcome.redrive {
            self.metrics.duplicate_sends.inc();
            return Ok(outcome.ack);
        }
        let mut ack = outcome.ack;
        if outcome.redrive {
            // Stored before; its second stage may not have finished: hand it to every
            // member's inbox again (those that hold it say so), which gives the ack.
            self.metrics.duplicate_sends.inc();
            let (item, message) = self.stored_item(&ack.channel, ack.seq).await?;
            ack.ts = item.ts;
            let members = self.store.channel_members_any(&ack.channel).await?;
            let first = |user: &str| item.seq == 1 || members.joined(user) + 1 == item.seq;
            let item = AppendItem {
                members: members
                    .list()
                    .iter()
                    .map(|user| Member {
                        user: user.clone(),
                        first: first(user),
                    })
                    .collect(),
                ..item
            };
            let inbox_id = self.second_stage(&ack.channel, item, message).await?;
            ack.inbox_id = inbox_id.unwrap_or(ack.inbox_id);
            return Ok(ack);
        }
        self.metrics.messages_sent.inc();
        let Some(message) = outcome.message else {
            return Ok(ack);
        };
        if !outcome.remote.is_empty() {
            let mut item = AppendItem::of(&message, outcome.remote);
            if message.kind.is_none() {
                item.push = push_due.map(|due| (due, preview(&message.text)));
            }
            if let Some(inbox_id) = self
                .second_stage(&ack.channel, item, message.clone())
                .await?
            {
                ack.inbox_id = inbox_id;
            }
        }
        self.deliver(message, outcome.recipients);
        Ok(ack)
    }

    /// The second stage of one item: append it to the inboxes of `item.members` at their
    /// owners (here included), handing missing earlier items first where an inbox lacks
    /// them. Returns the `inbox_id` the item took in its sender's inbox, when the sender is
    /// among the members.
    pub(super) async fn second_stage(
        &self,
        channel: &str,
        item: AppendItem,
        message: Message,
    ) -> Result<Option<u64>, WriteError> {
        let deadline = Instant::now() + FANOUT_DEADLINE;
        let (seq, from) = (item.seq, item.from.clone());
        // Per member: the items still to append, in order (the item, after any repairs).
        let mut todo: HashMap<String, Vec<(AppendItem, Message)>> = HashMap::new();
        for member in &item.members {
            let single = AppendItem {
                members: vec![member.clone()],
                ..item.clone()
            };
            todo.insert(member.user.clone(), vec![(single, message.clone())]);
        }
        let mut sender_inbox = None;
        let mut pause = Duration::from_millis(20);
        while !todo.is_empty() {
            let view = self.links.cluster().owners();
            let mut per_node: HashMap<Option<String>, Vec<String>> = HashMap::new();
            for user in todo.keys() {
                per_node
                    .entry(view.owner(user).map(str::to_owned))
                    .or_default()
                    .push(user.clone());
            }
            let calls = per_node.into_iter().map(|(node, users)| {
                let (op, messages) = merge(channel, &todo, &users);
                async move {
                    let answer = match &node {
                        None => match self.append_here(op, messages).await {
                            Ok(outcome) => Ok(Answer::Appended { outcome }),
                            Err(e) => Err(format!("{e:?}")),
                        },
                        Some(node) => {
                            self.links
                                .rpc()
                                .call(node, &Call::Append { op, messages })
                                .await
                        }
                    };
                    (users, answer)
                }
            });
            let mut progress = false;
            // Per user, the first gap an answer reported (later items of theirs repeat it).
            let mut gaps: HashMap<String, u64> = HashMap::new();
            for (users, answer) in futures_util::future::join_all(calls).await {
                let outcome = match answer {
                    Ok(Answer::Appended { outcome }) => outcome,
                    Ok(Answer::Refused { error }) => return Err(WriteError::Api(error)),
                    Ok(other) => {
                        tracing::debug!(?other, "an append was answered with something else");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, ?users, "an append did not reach its inbox owner");
                        continue;
                    }
                };
                for results in outcome.items {
                    for (user, result) in results {
                        let Some(items) = todo.get_mut(&user) else {
                            continue;
                        };
                        match result {
                            MemberAppend::Appended { inbox_id }
                            | MemberAppend::Duplicate {
                                inbox_id: Some(inbox_id),
                            } => {
                                let done = items.first().map(|(i, _)| i.seq);
                                if done == Some(seq) && user == from {
                                    sender_inbox = Some(inbox_id);
                                }
                                pop_through(&mut todo, &user, done);
                                progress = true;
                            }
                            MemberAppend::Duplicate { inbox_id: None } => {
                                let done = items.first().map(|(i, _)| i.seq);
                                pop_through(&mut todo, &user, done);
                                progress = true;
                            }
                            MemberAppend::Gap { last } => {
                                gaps.entry(user).or_insert(last);
                            }
                            MemberAppend::NotOwner => {}
                        }
                    }
                }
            }
            if !gaps.is_empty() {
                self.repair(channel, &mut todo, gaps).await?;
                progress = true;
            }
            if todo.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(WriteError::Api(ApiError::unavailable(format!(
                    "the message is stored as {channel}#{seq} but could not reach every member's inbox in time; retry the send with the same client_msg_id"
                ))));
            }
            if !progress {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
            }
        }
        Ok(sender_inbox)
    }

    /// Each user of `gaps` holds `channel` only up to their `last`: queue the items after it
    /// before what is queued for them. The missing items are read from the store once for
    /// all of them (at most [`REPAIR_ITEMS`] from the lowest), not once per member: a node's
    /// 30 members of a busy group repaired one by one read the same items 30 times per send,
    /// which saturated etcd and kept the cluster from recovering after an overload.
    async fn repair(
        &self,
        channel: &str,
        todo: &mut HashMap<String, Vec<(AppendItem, Message)>>,
        gaps: HashMap<String, u64>,
    ) -> Result<(), WriteError> {
        let members = self.store.channel_members_any(channel).await?;
        // Per user: (from, next): the first missing seq and the first queued one.
        let mut owed = Vec::new();
        for (user, last) in gaps {
            let Some(items) = todo.get_mut(&user) else {
                continue;
            };
            let Some(next) = items.first().map(|(i, _)| i.seq) else {
                continue;
            };
            let joined = members.joined(&user);
            let from = last.max(joined) + 1;
            if from >= next {
                // Nothing is owed before the item: the member joined after `last`.
                if let Some((item, _)) = items.first_mut() {
                    item.members[0].first = true;
                }
                continue;
            }
            owed.push((user, last, joined, from, next));
        }
        let Some(lo) = owed.iter().map(|o| o.3).min() else {
            return Ok(());
        };
        let hi = owed
            .iter()
            .map(|o| o.4)
            .max()
            .unwrap_or(lo)
            .min(lo + REPAIR_ITEMS);
        let read: Vec<(u64, Message)> = self.store.channel_items(channel, lo, hi).await?;
        for (user, last, joined, from, next) in owed {
            // What this user lacks within what was read; the rest (if any) is asked for
            // again by the next gap its inbox reports.
            let to = next.min(from + REPAIR_ITEMS);
            let owed = |seq: u64, message: &Message| {
                let member = Member {
                    user: user.clone(),
                    first: seq == from && joined >= last,
                };
                (AppendItem::of(message, vec![member]), message.clone())
            };
            let mut missing: Vec<(AppendItem, Message)> = read
                .iter()
                .filter(|(seq, _)| (from..to).contains(seq))
                .map(|(seq, message)| owed(*seq, message))
                .collect();
            if missing.is_empty() {
                // Not among what was read (far behind the others): read its own.
                for (seq, message) in self.store.channel_items(channel, from, to).await? {
                    missing.push(owed(seq, &message));
                }
            }
            if let Some(items) = todo.get_mut(&user) {
                missing.append(items);
                *items = missing;
            }
        }
        Ok(())
    }

    /// A stored item of `channel`, as the second stage hands it on.
    async fn stored_item(
        &self,
        channel: &str,
        seq: u64,
    ) -> Result<(AppendItem, Message), WriteError> {
        let mut found = self.store.channel_items(channel, seq, seq + 1).await?;
        let (_, message) = found.pop().ok_or_else(|| {
            WriteError::Api(ApiError::internal(format!(
                "{channel}#{seq} is missing from the store; report this to the operator"
            )))
        })?;
        Ok((AppendItem::of(&message, Vec::new()), message))
    }

    /// At the owner of some members' inboxes: append the items, then deliver what was
    /// appended to those members' devices.
    pub(crate) async fn append_here(
        &self,
        op: AppendOp,
        messages: Vec<Message>,
    ) -> Result<AppendOutcome, WriteError> {
        let outcome = self.writer.append(op).await?;
        for (results, message) in outcome.items.iter().zip(messages) {
            let recipients: Vec<(String, u64)> = results
                .iter()
                .filter_map(|(user, r)| match r {
                    MemberAppend::Appended { inbox_id } => Some((user.clone(), *inbox_id)),
                    _ => None,
                })
                .collect();
            if !recipients.is_empty() {
                self.deliver(message, recipients);
            }
        }
        Ok(outcome)
    }

    /// Answer a call from another node.
    pub async fn answer(&self, call: Call) -> Answer {
        let result = match call {
            Call::Sequence { op } => self
                .sequence_here(op)
                .await
                .map(|ack| Answer::Acked { ack }),
            Call::Append { op, messages } => self
                .append_here(op, messages)
                .await
                .map(|outcome| Answer::Appended { outcome }),
            Call::Group { change } => self
                .group_change_here(change)
                .await
                .map(|group| Answer::Group { group }),
            Call::Read { op } => self
                .read_here(op)
                .await
                .map(|outcome| Answer::Read { outcome }),
            Call::Block { op } => self
                .block_here(op)
                .await
                .map(|changed| Answer::Blocked { changed }),
        };
        match result {
            Ok(answer) => answer,
            Err(WriteError::NotOwner) => Answer::NotOwner,
            Err(WriteError::Api(error)) => Answer::Refused { error },
        }
    }
}

/// The append call for `users`: their queued items, merged by `seq`, each with the members
/// of `users` it is for.
fn merge(
    channel: &str,
    todo: &HashMap<String, Vec<(AppendItem, Message)>>,
    users: &[String],
) -> (AppendOp, Vec<Message>) {
    let mut by_seq: std::collections::BTreeMap<u64, (AppendItem, Message)> = Default::default();
    for user in users {
        for (item, message) in todo.get(user).into_iter().flatten() {
            by_seq
                .entry(item.seq)
                .and_modify(|(merged, _)| merged.members.extend(item.members.iter().cloned()))
                .or_insert_with(|| (item.clone(), message.clone()));
        }
    }
    // One call is one writer operation and so one store transaction (etcd's is bounded by
    // --max-txn-ops): take items in seq order while they fit, at least one. Cutting at a seq
    // keeps each member's items in order; the rest stays queued for the next round.
    let mut writes = 0;
    let mut taken = Vec::new();
    for (_, (item, message)) in by_seq {
        let cost = 2 * item.members.len() + 1;
        if !taken.is_empty() && writes + cost > APPEND_WRITES {
            break;
        }
        writes += cost;
        taken.push((item, message));
    }
    let (items, messages) = taken.into_iter().unzip();
    (
        AppendOp {
            channel: channel.to_owned(),
            items,
        },
        messages,
    )
}

/// `user`'s queued items up to and including `seq` are in their inbox.
fn pop_through(
    todo: &mut HashMap<String, Vec<(AppendItem, Message)>>,
    user: &str,
    seq: Option<u64>,
) {
    let Some(seq) = seq else { return };
    if let Some(items) = todo.get_mut(user) {
        items.retain(|(i, _)| i.seq > seq);
        if items.is_empty() {
            todo.remove(user);
        }
    }
}
