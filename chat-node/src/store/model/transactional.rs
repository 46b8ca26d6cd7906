//! The first version's write path, kept for cluster mode until counters have owner nodes
//! there: every send is one optimistic transaction that reads and bumps the channel's `seq`
//! and every member's inbox counter (`is/`), retried on conflict; group changes likewise.
//! Correct with many nodes writing one store, but slow (docs/benchmarks.md). A single node
//! uses the write path of `store::writer` instead.

use super::groups::group_full;
use super::messages::members;
use super::push::{OutboxEntry, preview};
use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::protocol::types::Ack;
use crate::store::records::{
    GroupRecord, InboxEntry, MessageRecord, decode, decode_u64, encode, encode_u64,
};
use crate::store::writer::SendOp;
use crate::store::{KvTxn, SendOutcome, keys};

/// Read a big-endian counter (0 when absent).
async fn get_u64(txn: &mut dyn KvTxn, key: &[u8]) -> Result<u64, ApiError> {
    match txn.get(key).await? {
        Some(bytes) => Ok(decode_u64(key, &bytes)?),
        None => Ok(0),
    }
}

async fn load(txn: &mut dyn KvTxn, group_id: &str) -> Result<GroupRecord, ApiError> {
    get_json(txn, &keys::group(group_id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group has the id {group_id:?}")))
}

impl ChatStore {
    /// Store a message in one transaction and return once it is durable.
    pub async fn send_transactional(&self, new: &SendOp) -> Result<SendOutcome, ApiError> {
        let channel_name = new.channel.to_string();
        let channel_name = channel_name.as_str();
        self.write(|txn, _| {
            Box::pin(async move {
                let dedupe_key = keys::dedupe(&new.sender, &new.client_msg_id);
                if let Some(bytes) = txn.get(&dedupe_key).await? {
                    let ack: Ack = decode(&dedupe_key, &bytes)?;
                    return Ok(SendOutcome {
                        ack,
                        duplicate: true,
                        message: None,
                        recipients: Vec::new(),
                    });
                }
                let members = members(txn, &new.sender, &new.channel).await?;

                let seq_key = keys::channel_seq(channel_name);
                let seq = get_u64(txn, &seq_key).await? + 1;
                txn.put(&seq_key, &encode_u64(seq));
                let record = MessageRecord {
                    from: new.sender.clone(),
                    from_device: new.device.clone(),
                    client_msg_id: new.client_msg_id.clone(),
                    text: new.text.clone(),
                    ts: new.ts,
                };
                txn.put(&keys::message(channel_name, seq), &encode(&record));

                let pointer = encode(&InboxEntry {
                    channel: channel_name.to_owned(),
                    seq,
                });
                let mut recipients = Vec::with_capacity(members.len());
                let mut sender_inbox_id = 0;
                for member in members {
                    let counter = keys::inbox_seq(&member);
                    let inbox_id = get_u64(txn, &counter).await? + 1;
                    txn.put(&counter, &encode_u64(inbox_id));
                    txn.put(&keys::inbox(&member, inbox_id), &pointer);
                    if member == new.sender {
                        sender_inbox_id = inbox_id;
                    }
                    recipients.push((member, inbox_id));
                }
                if let Some(due) = new.push_due {
                    let others: Vec<(String, u64)> = recipients
                        .iter()
                        .filter(|(member, _)| *member != new.sender)
                        .cloned()
                        .collect();
                    if !others.is_empty() {
                        let entry = OutboxEntry {
                            channel: channel_name.to_owned(),
                            seq,
                            from: new.sender.clone(),
                            preview: preview(&new.text),
                            ts: new.ts,
                            recipients: others,
                        };
                        txn.put(&keys::push_outbox(due, channel_name, seq), &encode(&entry));
                    }
                }
                let ack = Ack {
                    client_msg_id: new.client_msg_id.clone(),
                    channel: channel_name.to_owned(),
                    seq,
                    inbox_id: sender_inbox_id,
                    ts: new.ts,
                };
                txn.put(&dedupe_key, &encode(&ack));
                Ok(SendOutcome {
                    ack,
                    duplicate: false,
                    message: Some(record.into_wire(channel_name, seq, None)),
                    recipients,
                })
            })
        })
        .await
    }

    /// `caller` (a member) adds `user_id`; adding a current member changes nothing.
    pub async fn add_member_transactional(
        &self,
        caller: &str,
        group_id: &str,
        user_id: &str,
        max_members: usize,
    ) -> Result<GroupRecord, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let mut group = load(txn, group_id).await?;
                if !group.members.iter().any(|m| m == caller) {
                    return Err(ApiError::forbidden(
                        "only members of a group can add members to it",
                    ));
                }
                if group.members.iter().any(|m| m == user_id) {
                    return Ok(group);
                }
                if txn.get(&keys::user(user_id)).await?.is_none() {
                    return Err(ApiError::not_found(format!(
                        "no user has the id {user_id:?}"
                    )));
                }
                if group.members.len() >= max_members {
                    return Err(group_full(max_members));
                }
                group.members.push(user_id.to_owned());
                txn.put(&keys::group(group_id), &encode(&group));
                txn.put(&keys::user_group(user_id, group_id), b"");
                Ok(group)
            })
        })
        .await
    }

    /// The owner removes `user_id`, or a member leaves (`caller == user_id`). When the owner
    /// leaves, the longest-standing remaining member becomes the owner.
    pub async fn remove_member_transactional(
        &self,
        caller: &str,
        group_id: &str,
        user_id: &str,
    ) -> Result<GroupRecord, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let mut group = load(txn, group_id).await?;
                let caller_is_member = group.members.iter().any(|m| m == caller);
                if !caller_is_member {
                    return Err(ApiError::forbidden("you are not a member of this group"));
                }
                if caller != user_id && caller != group.owner {
                    return Err(ApiError::forbidden(
                        "only the group's owner can remove other members",
                    ));
                }
                if !group.members.iter().any(|m| m == user_id) {
                    return Err(ApiError::not_found(format!(
                        "{user_id:?} is not a member of this group"
                    )));
                }
                group.members.retain(|m| m != user_id);
                if group.owner == user_id
                    && let Some(next) = group.members.first()
                {
                    group.owner = next.clone();
                }
                txn.put(&keys::group(group_id), &encode(&group));
                txn.delete(&keys::user_group(user_id, group_id));
                Ok(group)
            })
        })
        .await
    }
}
