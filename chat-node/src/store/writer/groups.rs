//! Group changes at the group channel's owner: a member added, removed or leaving, a rename.
//! Each (but a no-op) rewrites the group record and adds a `system` item to the group's
//! timeline in the same batch: it takes the channel's next `seq` and every member's next
//! `inbox_id`, like a message. The member added gets it as their first item of the channel
//! (their devices learn of the group from it); a member removed, or leaving, as their last.

use super::apply::{BatchBuilder, put_item};
use super::fence::OwnershipView;
use super::op::{GroupEdit, GroupOp, GroupOutcome, SendOutcome, WriteError};
use super::units::{Members, Units};
use crate::protocol::ApiError;
use crate::protocol::timeline::{ItemKind, SystemAction, SystemEvent};
use crate::protocol::types::Ack;
use crate::protocol::validate::Channel;
use crate::store::keys;
use crate::store::model::group_full;
use crate::store::records::{ChannelHead, Extras, GroupRecord, MessageRecord, encode};

/// Writes a change of a group not in memory is taken to make (its members are not known
/// before the round loads it): the largest group's.
pub(super) const MAX_WRITES: usize = 104;

/// Apply a group change. Adding a member who is one already, or renaming to the same name,
/// changes nothing and adds no item.
pub(super) fn change(
    units: &mut Units,
    batch: &mut BatchBuilder,
    op: GroupOp,
    view: Option<&dyn OwnershipView>,
) -> Result<GroupOutcome, WriteError> {
    let name = Channel::Group(op.group_id.clone()).to_string();
    if let Some(e) = units.missing.get(&name) {
        return Err(e.clone().into());
    }
    let display = |user: &str| {
        units
            .names
            .get(user)
            .cloned()
            .unwrap_or_else(|| user.to_owned())
    };
    let caller_name = display(&op.caller);
    let added_name = match &op.change {
        GroupEdit::Add { user, .. } | GroupEdit::Remove { user } => display(user),
        GroupEdit::Rename { .. } => String::new(),
    };
    let missing_user = match &op.change {
        GroupEdit::Add { user, .. } => units.no_user.contains(user),
        _ => false,
    };
    let blocked = match &op.change {
        GroupEdit::Add { user, .. } => units.blocks.contains(&(user.clone(), op.caller.clone())),
        _ => false,
    };
    let state = units
        .channels
        .get_mut(&name)
        .ok_or_else(|| ApiError::internal(format!("group {} was not loaded", op.group_id)))?;
    let last_seq = state.head.last_seq;
    let Members::Group(group) = &mut state.members else {
        return Err(ApiError::internal(format!(
            "group {} loaded as a one-on-one channel",
            op.group_id
        ))
        .into());
    };
    let caller = op.caller.as_str();
    if !group.members.iter().any(|m| m == caller) {
        return Err(ApiError::forbidden(match op.change {
            GroupEdit::Add { .. } => "only members of a group can add members to it",
            _ => "you are not a member of this group",
        })
        .into());
    }
    let unchanged = |group: &GroupRecord| GroupOutcome {
        group: group.clone(),
        item: None,
    };
    // The item's members (those before a removal: the member removed gets it too), its
    // event, its sentence and whom it pushes.
    let (members, event, text, push_to) = match &op.change {
        GroupEdit::Add { user, max_members } => {
            if group.members.iter().any(|m| m == user) {
                return Ok(unchanged(group));
            }
            if missing_user {
                return Err(ApiError::not_found(format!("no user has the id {user:?}")).into());
            }
            if blocked {
                return Err(ApiError::forbidden(
                    "this user does not accept being added to groups by you",
                )
                .into());
            }
            if group.members.len() >= *max_members {
                return Err(group_full(*max_members).into());
            }
            group.members.push(user.clone());
            group.joined.insert(user.clone(), last_seq);
            batch
                .batch
                .put(keys::user_group(user, &op.group_id), Vec::new());
            (
                Members::Group(group.clone()),
                event(SystemAction::MemberAdded, Some(user), None),
                format!("{caller_name} added {added_name}"),
                Some(user.clone()),
            )
        }
        GroupEdit::Remove { user } => {
            if caller != user && caller != group.owner {
                return Err(
                    ApiError::forbidden("only the group's owner can remove other members").into(),
                );
            }
            if !group.members.iter().any(|m| m == user) {
                return Err(
                    ApiError::not_found(format!("{user:?} is not a member of this group")).into(),
                );
            }
            let before = Members::Group(group.clone());
            group.members.retain(|m| m != user);
            group.joined.remove(user);
            if group.owner == *user
                && let Some(next) = group.members.first()
            {
                group.owner = next.clone();
            }
            batch.batch.delete(keys::user_group(user, &op.group_id));
            if caller == user {
                (
                    before,
                    event(SystemAction::MemberLeft, Some(user), None),
                    format!("{caller_name} left"),
                    None,
                )
            } else {
                (
                    before,
                    event(SystemAction::MemberRemoved, Some(user), None),
                    format!("{caller_name} removed {added_name}"),
                    Some(user.clone()),
                )
            }
        }
        GroupEdit::Rename { name } => {
            if caller != group.owner {
                return Err(ApiError::forbidden("only the group's owner can rename it").into());
            }
            if group.name == *name {
                return Ok(unchanged(group));
            }
            group.name = name.clone();
            (
                Members::Group(group.clone()),
                event(SystemAction::Renamed, None, Some(name)),
                format!("{caller_name} renamed the group to \u{201c}{name}\u{201d}"),
                None,
            )
        }
    };
    let group = group.clone();
    batch
        .batch
        .put(keys::group(&group.group_id), encode(&group));
    let seq = last_seq + 1;
    state.head = ChannelHead {
        last_seq: seq,
        last_ts: op.ts,
    };
    let record = MessageRecord {
        from: op.caller.clone(),
        from_device: op.device,
        client_msg_id: format!("system:{seq}"),
        text,
        ts: op.ts,
        extras: Extras {
            kind: Some(ItemKind::System),
            event: Some(event),
            ..Extras::default()
        },
    };
    let push = match (op.push_due, &push_to) {
        (Some(due), Some(user)) => Some((due, Some(user.as_str()))),
        _ => None,
    };
    let placed = put_item(units, batch, &name, seq, record, &members, push, view)?;
    let ack = Ack {
        client_msg_id: placed.message.client_msg_id.clone(),
        channel: name,
        seq,
        inbox_id: placed.sender_inbox_id,
        ts: op.ts,
    };
    Ok(GroupOutcome {
        group,
        item: Some(SendOutcome {
            ack,
            duplicate: false,
            message: Some(placed.message),
            recipients: placed.recipients,
            remote: placed.remote,
            redrive: false,
        }),
    })
}

fn event(action: SystemAction, user: Option<&String>, name: Option<&String>) -> SystemEvent {
    SystemEvent {
        action,
        user: user.cloned(),
        name: name.cloned(),
    }
}
