//! Items about another message of the channel: an edit, a delete, a reaction. The channel's
//! owner checks who may make it and what it may be about, and rewrites the target's
//! aggregate (latest text and `edited_at`, deletion, reactions in force) in the same batch as
//! the item, so that history and sync read each message as it is now without folding items
//! at read time. A delete erases the text from storage: the message's, and its edits'.

use std::collections::HashMap;

use super::apply::BatchBuilder;
use super::units::Members;
use crate::protocol::ApiError;
use crate::protocol::items::ItemAction;
use crate::protocol::timeline::ItemKind;
use crate::store::keys;
use crate::store::records::{Extras, MessageRecord};

/// Most times one message may be edited (each edit is kept as an item, and a delete erases
/// them all).
pub const MAX_EDITS: usize = 100;
/// Most different emojis one user may have in force on one message.
pub const MAX_REACTIONS_PER_USER: usize = 20;

/// Where the item goes.
pub(super) struct Target<'a> {
    pub channel: &'a str,
    pub members: &'a Members,
    /// The channel's newest seq before the item.
    pub last_seq: u64,
    pub sender: &'a str,
    /// The seq the item takes.
    pub item_seq: u64,
    pub ts: i64,
}

/// The message `seq` of `channel` as this batch has it: what the round read (kept up to
/// date by the items of the batch that changed it), else what an earlier send of the batch
/// wrote.
fn current(
    targets: &HashMap<(String, u64), MessageRecord>,
    batch: &BatchBuilder,
    channel: &str,
    seq: u64,
) -> Result<Option<MessageRecord>, ApiError> {
    if let Some(record) = targets.get(&(channel.to_owned(), seq)) {
        return Ok(Some(record.clone()));
    }
    let key = keys::message(channel, seq);
    match batch.batch.latest(&key) {
        Some(Some(bytes)) => Ok(Some(MessageRecord::decode(&key, bytes)?)),
        _ => Ok(None),
    }
}

/// Check the item `action` (with `text`: the new text or the emoji) against its target,
/// write the target's new state into the batch, and return the item's own extras. A refused
/// item writes nothing.
pub(super) fn apply(
    targets: &mut HashMap<(String, u64), MessageRecord>,
    batch: &mut BatchBuilder,
    at: Target<'_>,
    action: &ItemAction,
    text: &str,
) -> Result<Extras, ApiError> {
    let (kind, seq) = match action {
        ItemAction::Edit { seq } => (ItemKind::Edit, *seq),
        ItemAction::Delete { seq } => (ItemKind::Delete, *seq),
        ItemAction::React { seq, .. } => (ItemKind::Reaction, *seq),
        ItemAction::Message | ItemAction::Reply { .. } => return Ok(Extras::default()),
    };
    let what = match kind {
        ItemKind::Edit => "edited",
        ItemKind::Delete => "deleted",
        _ => "reacted to",
    };
    if seq == 0 || seq > at.last_seq {
        return Err(ApiError::not_found(format!(
            "there is no message {seq} in {} (its newest is {})",
            at.channel, at.last_seq
        )));
    }
    let mut target = current(targets, batch, at.channel, seq)?.ok_or_else(|| {
        ApiError::internal(format!(
            "{}#{seq} was not loaded; retry, and report this to the operator if it persists",
            at.channel
        ))
    })?;
    if !target.is_plain() {
        return Err(ApiError::bad_request(format!(
            "message {seq} is an {} item; only plain messages can be {what}",
            match target.extras.kind {
                Some(ItemKind::Edit) => "edit",
                Some(ItemKind::Delete) => "delete",
                Some(ItemKind::Reaction) => "reaction",
                _ => "system",
            }
        )));
    }
    if target.extras.deleted {
        return Err(ApiError::bad_request(format!(
            "message {seq} was deleted; it cannot be {what}"
        )));
    }
    let mut item = Extras {
        kind: Some(kind),
        target_seq: Some(seq),
        ..Extras::default()
    };
    match action {
        ItemAction::Edit { .. } => {
            if target.from != at.sender {
                return Err(ApiError::forbidden(
                    "only the author of a message can edit it",
                ));
            }
            if target.extras.edits.len() >= MAX_EDITS {
                return Err(ApiError::bad_request(format!(
                    "message {seq} was edited {MAX_EDITS} times, the most allowed; send a new message instead"
                )));
            }
            target.text = text.to_owned();
            target.extras.edited_at = Some(at.ts);
            target.extras.edits.push(at.item_seq);
        }
        ItemAction::Delete { .. } => {
            let owner = match at.members {
                Members::Group(group) => group.owner == at.sender,
                Members::Direct(_) => false,
            };
            if target.from != at.sender && !owner {
                return Err(ApiError::forbidden(
                    "only the author of a message (or a group's owner) can delete it",
                ));
            }
            // The text goes from storage: the message's and every edit's.
            for edit in std::mem::take(&mut target.extras.edits) {
                if let Some(mut record) = current(targets, batch, at.channel, edit)? {
                    record.text.clear();
                    batch
                        .batch
                        .put(keys::message(at.channel, edit), record.encode());
                    targets.insert((at.channel.to_owned(), edit), record);
                } else {
                    tracing::warn!(channel = %at.channel, seq = edit, "an edit of a deleted message was not loaded; its text stays");
                }
            }
            target.text.clear();
            target.extras.deleted = true;
            target.extras.edited_at = None;
            target.extras.reactions = Default::default();
        }
        ItemAction::React { remove, .. } => {
            if *remove {
                target.extras.reactions.remove(text, at.sender);
                item.remove = true;
            } else if !target.extras.reactions.has(text, at.sender) {
                if target.extras.reactions.given_by(at.sender) >= MAX_REACTIONS_PER_USER {
                    return Err(ApiError::bad_request(format!(
                        "you have {MAX_REACTIONS_PER_USER} reactions on message {seq}, the most allowed; take one back first"
                    )));
                }
                target.extras.reactions.add(text, at.sender);
            }
        }
        ItemAction::Message | ItemAction::Reply { .. } => {}
    }
    batch
        .batch
        .put(keys::message(at.channel, seq), target.encode());
    targets.insert((at.channel.to_owned(), seq), target);
    Ok(item)
}
