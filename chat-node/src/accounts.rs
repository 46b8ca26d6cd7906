//! Accounts: sign-up, login (a device per login), profiles (and home regions) and devices.

use std::sync::Arc;

use async_trait::async_trait;

use crate::auth::{Claims, TokenKeys, password};
use crate::cluster::placement::HomeDirectory;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::presence::Presence;
use crate::protocol::types::{
    Device, Login, Profile, ProfilePatch, PushRegistration, Session, SignUp,
};
use crate::protocol::{ApiError, validate};
use crate::sessions::Sessions;
use crate::store::{ChatStore, UserRecord};

/// The accounts service.
pub struct Accounts {
    store: ChatStore,
    tokens: TokenKeys,
    presence: Arc<Presence>,
    limiters: Arc<Limiters>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    /// The home region of users who sign up here without choosing one: this node's.
    default_region: String,
}

fn wrong_password() -> ApiError {
    ApiError::unauthorized(
        "the username or password is wrong; check both, or sign up with POST /v1/users",
    )
}

/// A fresh random id: 16 lowercase hex digits (64 bits), valid in paths and channel names.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

impl Accounts {
    pub fn new(
        store: ChatStore,
        tokens: TokenKeys,
        presence: Arc<Presence>,
        limiters: Arc<Limiters>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
        default_region: String,
    ) -> Self {
        Self {
            store,
            tokens,
            presence,
            limiters,
            sessions,
            metrics,
            default_region,
        }
    }

    /// A token's signature and expiry, then its session generation: 401 if any fails.
    pub async fn authenticate(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.tokens.verify(token)?;
        self.sessions.check(&claims).await?;
        Ok(claims)
    }

    /// Check `password` against `username`'s, through the failed-login limit: while the
    /// username is blocked every attempt is 429, right or wrong.
    async fn check_password(
        &self,
        username: &str,
        password: String,
    ) -> Result<UserRecord, ApiError> {
        self.limiters.login_blocked(username)?;
        let user = self.store.user_by_name(username).await?;
        let phc = user.as_ref().map(|u| u.password_hash.clone());
        let right = password::verify(password, phc).await.inspect_err(|e| {
            if e.retry_after.is_some() {
                self.metrics.password_queue_full.inc();
            }
        })?;
        match user {
            Some(user) if right => Ok(user),
            _ => {
                self.limiters.login_failed(username);
                Err(wrong_password())
            }
        }
    }

    /// `PUT /v1/users/me/password`: with the current password right, set the new one and
    /// revoke every other session of the user.
    pub async fn change_password(
        &self,
        me: &Claims,
        current: String,
        new_password: String,
    ) -> Result<(), ApiError> {
        validate::password(&new_password)?;
        let user = self
            .store
            .user(&me.sub)
            .await?
            .ok_or_else(|| ApiError::not_found("your user no longer exists"))?;
        self.check_password(&user.username, current)
            .await
            .map_err(|e| {
                if e.code == crate::protocol::ErrorCode::Unauthorized {
                    ApiError::unauthorized("the current password is wrong; nothing was changed")
                } else {
                    e
                }
            })?;
        let hash = password::hash(new_password).await.inspect_err(|e| {
            if e.retry_after.is_some() {
                self.metrics.password_queue_full.inc();
            }
        })?;
        let revoked = self
            .store
            .change_password(&me.sub, &hash, &me.dev, now_ms())
            .await?;
        for (device, generation) in &revoked {
            self.sessions.apply(&me.sub, device, *generation);
        }
        tracing::info!(user_id = %me.sub, revoked = revoked.len(), "password changed");
        Ok(())
    }

    pub fn tokens(&self) -> &TokenKeys {
        &self.tokens
    }

    pub async fn sign_up(&self, body: SignUp) -> Result<Profile, ApiError> {
        validate::username(&body.username)?;
        validate::password(&body.password)?;
        let display_name = body.display_name.unwrap_or_else(|| body.username.clone());
        validate::display_name(&display_name)?;
        let region = body.region.unwrap_or_else(|| self.default_region.clone());
        check_region(&region)?;
        if self.store.user_by_name(&body.username).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "the username {:?} is taken; choose another",
                body.username
            )));
        }
        let password_hash = password::hash(body.password).await.inspect_err(|e| {
            if e.retry_after.is_some() {
                self.metrics.password_queue_full.inc();
            }
        })?;
        let user = UserRecord {
            user_id: new_id(),
            username: body.username,
            display_name,
            password_hash,
            created_at: now_ms(),
            region: Some(region),
        };
        self.store.create_user(&user).await?;
        tracing::info!(user_id = %user.user_id, username = %user.username, region = %user.home_region(), "signed up");
        Ok(user.own_profile())
    }

    pub async fn log_in(&self, body: Login) -> Result<Session, ApiError> {
        let device_id = match body.device_id {
            Some(d) => {
                validate::device_id(&d)?;
                d
            }
            None => format!("d-{}", new_id()),
        };
        let user = self.check_password(&body.username, body.password).await?;
        let now = now_ms();
        let evicted = self
            .store
            .touch_device(
                &user.user_id,
                &device_id,
                now,
                self.limiters.config().max_devices_per_user,
            )
            .await?;
        if let Some((device, generation)) = evicted {
            self.metrics.devices_evicted.inc();
            self.sessions.apply(&user.user_id, &device, generation);
            tracing::info!(user_id = %user.user_id, device_id = %device, "device limit reached: removed the longest-unused device");
        }
        // From the store, not the cache: a token issued now must carry the generation in force.
        let generation = self
            .store
            .session_generation(&user.user_id, &device_id)
            .await?;
        let (token, expires_at) = self
            .tokens
            .issue(&user.user_id, &device_id, generation, now)?;
        Ok(Session {
            token,
            user_id: user.user_id,
            device_id,
            expires_at,
        })
    }

    pub async fn profile(&self, user_id: &str) -> Result<Profile, ApiError> {
        let not_found = || ApiError::not_found(format!("no user has the id {user_id:?}"));
        if !validate::is_id(user_id) {
            return Err(not_found());
        }
        self.store
            .user(user_id)
            .await?
            .map(|u| u.profile())
            .ok_or_else(not_found)
    }

    pub async fn profile_by_name(&self, username: &str) -> Result<Profile, ApiError> {
        self.store
            .user_by_name(username)
            .await?
            .map(|u| u.profile())
            .ok_or_else(|| ApiError::not_found(format!("no user has the username {username:?}")))
    }

    /// The caller's own profile, with their home region.
    pub async fn own_profile(&self, user_id: &str) -> Result<Profile, ApiError> {
        self.store
            .user(user_id)
            .await?
            .map(|u| u.own_profile())
            .ok_or_else(|| ApiError::not_found("your user no longer exists"))
    }

    /// `PATCH /v1/users/me`: the new own profile, and the new home region when it changed
    /// (the caller then moves the user's sockets).
    pub async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
    ) -> Result<(Profile, Option<String>), ApiError> {
        if patch.display_name.is_none() && patch.region.is_none() {
            return Err(ApiError::bad_request(
                "PATCH /v1/users/me needs \"display_name\" or \"region\" (or both)",
            ));
        }
        if let Some(name) = &patch.display_name {
            validate::display_name(name)?;
        }
        if let Some(region) = &patch.region {
            check_region(region)?;
        }
        let (user, before) = self
            .store
            .update_user(
                user_id,
                patch.display_name.as_deref(),
                patch.region.as_deref(),
            )
            .await?;
        let moved = (user.home_region() != before).then(|| user.home_region().to_owned());
        if let Some(region) = &moved {
            tracing::info!(user_id, from = %before, to = %region, "home region changed");
        }
        Ok((user.own_profile(), moved))
    }

    /// The user's home region, read from their record (the default region for records
    /// written before regions existed). 404 if the user is gone.
    pub async fn home_region(&self, user_id: &str) -> Result<String, ApiError> {
        self.store
            .user(user_id)
            .await?
            .map(|u| u.home_region().to_owned())
            .ok_or_else(|| ApiError::unauthorized("your user no longer exists; sign up again"))
    }

    pub async fn devices(&self, user_id: &str) -> Result<Vec<Device>, ApiError> {
        let online = self.presence.online_devices(user_id).await;
        Ok(self
            .store
            .devices(user_id)
            .await?
            .into_iter()
            .map(|d| Device {
                online: online.contains(&d.device_id),
                device_id: d.device_id,
                cursor: d.cursor,
                last_seen: d.last_seen,
                push: d.push,
            })
            .collect())
    }

    pub async fn set_push(
        &self,
        user_id: &str,
        device_id: &str,
        push: PushRegistration,
    ) -> Result<(), ApiError> {
        validate::device_id(device_id)?;
        if push.token.is_empty() || push.token.len() > 4096 {
            return Err(ApiError::bad_request("push token must be 1 to 4096 bytes"));
        }
        let known = self
            .store
            .devices(user_id)
            .await?
            .iter()
            .any(|d| d.device_id == device_id);
        if !known {
            return Err(ApiError::not_found(format!(
                "you have no device {device_id:?}; log in with that device_id first"
            )));
        }
        self.store.set_push(user_id, device_id, push).await
    }
}

/// A region name the API accepts: a DNS label, like the nodes' `--region`.
fn check_region(region: &str) -> Result<(), ApiError> {
    if parley_cluster_contract::is_valid_name(region) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "region {region:?} is not a region name: use 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit (the regions of this cluster are those its nodes run in, e.g. \"eu-west\")"
        )))
    }
}

/// The user records as the cluster's [`HomeDirectory`]: where a node looks up the home
/// regions of users it routes to.
pub struct UserHomes(pub ChatStore);

#[async_trait]
impl HomeDirectory for UserHomes {
    async fn homes(&self, users: &[String]) -> Result<Vec<(String, String)>, String> {
        self.0.home_regions(users).await.map_err(|e| e.message)
    }
}
