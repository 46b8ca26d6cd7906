//! Users: sign-up with unique usernames, profiles, look-ups.

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::store::keys;
use crate::store::records::{UserRecord, encode};

impl ChatStore {
    /// Store a new user; 409 `conflict` if the username is taken.
    pub async fn create_user(&self, user: &UserRecord) -> Result<(), ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                if txn.get(&keys::username(&user.username)).await?.is_some() {
                    return Err(ApiError::conflict(format!(
                        "the username {:?} is taken; choose another",
                        user.username
                    )));
                }
                if txn.get(&keys::user(&user.user_id)).await?.is_some() {
                    return Err(ApiError::internal(
                        "a generated user id collided; retry the sign-up",
                    ));
                }
                txn.put(&keys::username(&user.username), user.user_id.as_bytes());
                txn.put(&keys::user(&user.user_id), &encode(user));
                Ok(())
            })
        })
        .await
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, ApiError> {
        self.read(|txn, _| Box::pin(async move { get_json(txn, &keys::user(user_id)).await }))
            .await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                match txn.get(&keys::username(username)).await? {
                    Some(id) => get_json(txn, &keys::user(&String::from_utf8_lossy(&id))).await,
                    None => Ok(None),
                }
            })
        })
        .await
    }

    /// Change a user's display name and return the updated record.
    pub async fn set_display_name(
        &self,
        user_id: &str,
        display_name: &str,
    ) -> Result<UserRecord, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let mut user: UserRecord = get_json(txn, &keys::user(user_id))
                    .await?
                    .ok_or_else(|| ApiError::not_found("your user no longer exists"))?;
                user.display_name = display_name.to_owned();
                txn.put(&keys::user(user_id), &encode(&user));
                Ok(user)
            })
        })
        .await
    }
}
