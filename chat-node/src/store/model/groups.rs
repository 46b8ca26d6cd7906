//! Groups: a named member list (at most the configured size, the creator included) and the
//! index of each user's groups. Created here (a user who blocks the creator cannot be among
//! the members); members are added and removed, and groups renamed, by the write path
//! (`store::writer`), which owns a group's record once it exists.

use super::{ChatStore, get_json};
use crate::protocol::{ApiError, ErrorCode};
use crate::store::records::{GroupRecord, encode};
use crate::store::{Order, keys, prefix_end};

/// Most groups listed for one user.
pub const MAX_GROUPS_PER_USER: usize = 10_000;

pub(crate) fn group_full(max: usize) -> ApiError {
    ApiError::group_full(max)
}

impl ChatStore {
    /// Create a group owned by `group.owner` with `group.members` (owner first, no
    /// duplicates, every member an existing user).
    /// `max_groups` (0: no limit) bounds the groups the owner has created: past it, 422
    /// `group_limit`.
    pub async fn create_group(
        &self,
        group: &GroupRecord,
        max_members: usize,
        max_groups: u64,
    ) -> Result<(), ApiError> {
        if group.members.len() > max_members {
            return Err(group_full(max_members));
        }
        self.write(|txn, _| {
            Box::pin(async move {
                let created_key = keys::groups_created(&group.owner);
                let created = super::sessions::get_u64(txn, &created_key).await?;
                if max_groups > 0 && created >= max_groups {
                    return Err(ApiError::new(
                        ErrorCode::GroupLimit,
                        format!(
                            "you have created {created} groups, the most one user may create (--max-groups-per-user {max_groups}); ask the operator to raise the limit"
                        ),
                    ));
                }
                txn.put(&created_key, &crate::store::records::encode_u64(created + 1));
                for member in &group.members {
                    if txn.get(&keys::user(member)).await?.is_none() {
                        return Err(ApiError::bad_request(format!(
                            "member {member:?} is not a user id"
                        )));
                    }
                    if *member != group.owner
                        && txn
                            .get(&keys::block(member, &group.owner))
                            .await?
                            .is_some()
                    {
                        return Err(ApiError::forbidden(format!(
                            "user {member:?} does not accept being added to groups by you; nothing was created"
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

    /// The records of these groups (in one round trip where the backend allows), in order.
    pub async fn groups_by_id(&self, ids: &[String]) -> Result<Vec<Option<GroupRecord>>, ApiError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::group(id)).collect();
        let values = self.kv().get_many(&keys).await?;
        let mut out = Vec::with_capacity(values.len());
        for (key, value) in keys.iter().zip(values) {
            out.push(match value {
                Some(bytes) => Some(crate::store::records::decode(key, &bytes)?),
                None => None,
            });
        }
        Ok(out)
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
}
