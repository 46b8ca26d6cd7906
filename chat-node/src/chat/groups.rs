//! Groups: creation (no timeline item; every initial member's online devices get a `group`
//! frame), members added, removed or leaving, and renames. A change runs at the group
//! channel's owner, whose writer adds its `system` item to the timeline; the owner then
//! hands the item to every member's inbox (the second stage) and delivers it live, like a
//! message, before it answers.

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Chat;
use crate::accounts::new_id;
use crate::cluster::rpc::{Answer, Call};
use crate::now_ms;
use crate::protocol::ApiError;
use crate::protocol::frames::ServerFrame;
use crate::protocol::timeline::SystemAction;
use crate::protocol::types::Group;
use crate::protocol::validate::{self, Channel};
use crate::store::writer::{AppendItem, GroupEdit, GroupOp, WriteError};
use crate::store::{GroupRecord, preview};

impl Chat {
    pub async fn create_group(
        &self,
        owner: &str,
        name: &str,
        members: Vec<String>,
    ) -> Result<Group, ApiError> {
        validate::group_name(name)?;
        // Dedupe with a set and stop at the size limit: a body of 100,000 ids costs one
        // pass over what was read, never a comparison of every id with every other.
        let max = self.limits.max_group_members;
        let mut seen = std::collections::HashSet::with_capacity(members.len().min(max + 1));
        seen.insert(owner.to_owned());
        let mut all = vec![owner.to_owned()];
        for m in members {
            if !validate::is_id(&m) {
                return Err(ApiError::bad_request(format!(
                    "member {m:?} is not a user id"
                )));
            }
            if seen.insert(m.clone()) {
                all.push(m);
                if all.len() > max {
                    return Err(ApiError::group_full(max));
                }
            }
        }
        let group = GroupRecord {
            group_id: new_id(),
            name: name.to_owned(),
            owner: owner.to_owned(),
            members: all,
            created_at: now_ms(),
            joined: Default::default(),
        };
        self.store
            .create_group(
                &group,
                self.limits.max_group_members,
                self.limits.max_groups_per_user,
            )
            .await?;
        let group = group.to_wire();
        // No timeline item: the members' devices hear of the group at once instead.
        let frame = Utf8Bytes::from(
            ServerFrame::Group {
                group: group.clone(),
            }
            .to_json(),
        );
        self.links
            .relay(group.members.iter().map(String::as_str), &frame);
        Ok(group)
    }

    pub async fn groups(&self, user_id: &str) -> Result<Vec<Group>, ApiError> {
        Ok(self
            .store
            .groups_of(user_id)
            .await?
            .iter()
            .map(GroupRecord::to_wire)
            .collect())
    }

    pub async fn group(&self, caller: &str, group_id: &str) -> Result<Group, ApiError> {
        let not_found = || ApiError::not_found(format!("no group has the id {group_id:?}"));
        if !validate::is_id(group_id) {
            return Err(not_found());
        }
        let group = self.store.group(group_id).await?.ok_or_else(not_found)?;
        if !group.members.iter().any(|m| m == caller) {
            return Err(ApiError::forbidden("only members can see a group"));
        }
        Ok(group.to_wire())
    }

    pub async fn add_member(
        &self,
        caller: &str,
        device: &str,
        group_id: &str,
        user_id: &str,
    ) -> Result<Group, ApiError> {
        group_and_user_ids(group_id, user_id)?;
        let change = GroupEdit::Add {
            user: user_id.to_owned(),
            max_members: self.limits.max_group_members,
        };
        let group = self
            .route_group_change(self.group_op(caller, device, group_id, change))
            .await?;
        Ok(group.to_wire())
    }

    pub async fn remove_member(
        &self,
        caller: &str,
        device: &str,
        group_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        group_and_user_ids(group_id, user_id)?;
        let change = GroupEdit::Remove {
            user: user_id.to_owned(),
        };
        self.route_group_change(self.group_op(caller, device, group_id, change))
            .await
            .map(|_| ())
    }

    /// `PATCH /v1/groups/{group_id}`: the owner renames the group.
    pub async fn rename_group(
        &self,
        caller: &str,
        device: &str,
        group_id: &str,
        name: &str,
    ) -> Result<Group, ApiError> {
        if !validate::is_id(group_id) {
            return Err(ApiError::not_found(format!(
                "no group has the id {group_id:?}"
            )));
        }
        validate::group_name(name)?;
        let change = GroupEdit::Rename {
            name: name.to_owned(),
        };
        let group = self
            .route_group_change(self.group_op(caller, device, group_id, change))
            .await?;
        Ok(group.to_wire())
    }

    fn group_op(&self, caller: &str, device: &str, group_id: &str, change: GroupEdit) -> GroupOp {
        let ts = now_ms();
        GroupOp {
            caller: caller.to_owned(),
            device: device.to_owned(),
            group_id: group_id.to_owned(),
            change,
            ts,
            push_due: self.push.as_ref().map(|p| p.due_at(ts)),
        }
    }

    /// Run a group change at the group's owner, here or over a link.
    async fn route_group_change(&self, op: GroupOp) -> Result<GroupRecord, ApiError> {
        let unit = Channel::Group(op.group_id.clone()).to_string();
        let call = Call::Group { change: op.clone() };
        self.at_owner(
            &unit,
            call,
            || self.group_change_here(op.clone()),
            |answer| match answer {
                Answer::Group { group } => Some(group),
                _ => None,
            },
        )
        .await
    }

    /// A group change at the group's owner: the writer stores it with its system item,
    /// then the item goes to the inboxes of members other nodes own and live to every
    /// member's online devices. Answered once the item is in every inbox.
    pub(crate) async fn group_change_here(&self, op: GroupOp) -> Result<GroupRecord, WriteError> {
        let push_due = op.push_due;
        let outcome = self.writer.group_change(op).await?;
        let Some(item) = outcome.item else {
            return Ok(outcome.group);
        };
        let Some(message) = item.message else {
            return Ok(outcome.group);
        };
        // A system item pushes only the member it concerns (added or removed).
        let concerns = message.event.as_ref().and_then(|e| match e.action {
            SystemAction::MemberAdded | SystemAction::MemberRemoved => e.user.clone(),
            SystemAction::MemberLeft | SystemAction::Renamed => None,
        });
        if !item.remote.is_empty() {
            let mut append = AppendItem::of(&message, item.remote);
            if let (Some(due), Some(user)) = (push_due, concerns) {
                append.push = Some((due, preview(&message.text)));
                append.push_only = Some(user);
            }
            self.second_stage(&item.ack.channel, append, message.clone())
                .await?;
        }
        self.deliver(message, item.recipients);
        if let Some(push) = &self.push {
            push.wake();
        }
        Ok(outcome.group)
    }
}

/// Ids from a path that cannot name anything are "not found", like unknown ones.
fn group_and_user_ids(group_id: &str, user_id: &str) -> Result<(), ApiError> {
    if !validate::is_id(group_id) {
        return Err(ApiError::not_found(format!(
            "no group has the id {group_id:?}"
        )));
    }
    if !validate::is_id(user_id) {
        return Err(ApiError::not_found(format!(
            "no user has the id {user_id:?}"
        )));
    }
    Ok(())
}
