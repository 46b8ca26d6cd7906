//! Groups: a named member list (at most the configured size, the creator included) and the
//! index of each user's groups.

use super::{ChatStore, get_json};
use crate::protocol::{ApiError, ErrorCode};
use crate::store::records::{GroupRecord, encode};
use crate::store::{KvTxn, Order, keys, prefix_end};

/// Most groups listed for one user.
pub const MAX_GROUPS_PER_USER: usize = 10_000;

fn group_full(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::GroupFull,
        format!("a group has at most {max} members (its owner included); remove a member first"),
    )
}

async fn load(txn: &mut dyn KvTxn, group_id: &str) -> Result<GroupRecord, ApiError> {
    get_json(txn, &keys::group(group_id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group has the id {group_id:?}")))
}

impl ChatStore {
    /// Create a group owned by `group.owner` with `group.members` (owner first, no
    /// duplicates, every member an existing user).
    pub async fn create_group(
        &self,
        group: &GroupRecord,
        max_members: usize,
    ) -> Result<(), ApiError> {
        if group.members.len() > max_members {
            return Err(group_full(max_members));
        }
        self.write(|txn, _| {
            Box::pin(async move {
                for member in &group.members {
                    if txn.get(&keys::user(member)).await?.is_none() {
                        return Err(ApiError::bad_request(format!(
                            "member {member:?} is not a user id"
                        )));
                    }
                }
                if txn.get(&keys::group(&group.group_id)).await?.is_some() {
                    return Err(ApiError::internal("a generated group id collided; retry"));
                }
                txn.put(&keys::group(&group.group_id), &encode(group));
                for member in &group.members {
                    txn.put(&keys::user_group(member, &group.group_id), b"");
                }
                Ok(())
            })
        })
        .await
    }

    pub async fn group(&self, group_id: &str) -> Result<Option<GroupRecord>, ApiError> {
        self.read(|txn, _| Box::pin(async move { get_json(txn, &keys::group(group_id)).await }))
            .await
    }

    /// The groups `user_id` is a member of.
    pub async fn groups_of(&self, user_id: &str) -> Result<Vec<GroupRecord>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let prefix = keys::groups_of(user_id);
                let pairs = txn
                    .scan(
                        &prefix,
                        &prefix_end(&prefix),
                        MAX_GROUPS_PER_USER,
                        Order::Ascending,
                    )
                    .await?;
                let mut groups = Vec::with_capacity(pairs.len());
                for (key, _) in pairs {
                    let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    if let Some(g) = get_json::<GroupRecord>(txn, &keys::group(&id)).await? {
                        groups.push(g);
                    }
                }
                Ok(groups)
            })
        })
        .await
    }

    /// `caller` (a member) adds `user_id`; adding a current member changes nothing.
    pub async fn add_member(
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
    pub async fn remove_member(
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
