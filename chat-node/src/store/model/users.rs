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

    /// Change a user's display name and/or home region and return the updated record with
    /// the home region it had before.
    pub async fn update_user(
        &self,
        user_id: &str,
        display_name: Option<&str>,
        region: Option<&str>,
    ) -> Result<(UserRecord, String), ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let mut user: UserRecord = get_json(txn, &keys::user(user_id))
                    .await?
                    .ok_or_else(|| ApiError::not_found("your user no longer exists"))?;
                let before = user.home_region().to_owned();
                if let Some(name) = display_name {
                    user.display_name = name.to_owned();
                }
                if let Some(region) = region {
                    user.region = Some(region.to_owned());
                }
                txn.put(&keys::user(user_id), &encode(&user));
                Ok((user, before))
            })
        })
        .await
    }

    /// The home regions of those of `users` that exist, read in one transaction.
    pub async fn home_regions(&self, users: &[String]) -> Result<Vec<(String, String)>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let mut out = Vec::with_capacity(users.len());
                for id in users {
                    let user: Option<UserRecord> = get_json(txn, &keys::user(id)).await?;
                    if let Some(user) = user {
                        out.push((id.clone(), user.home_region().to_owned()));
                    }
                }
                Ok(out)
            })
        })
        .await
    }
}
