//! Sessions: each device's session generation (a token is valid only while it carries the
//! current one) and the revocation feed every node follows to close revoked sockets.
//!
//! Revoking a device bumps `sg/{user}/{device}` and appends `rv/{ts}/{user}/{device}` in the
//! same transaction. The generation is the truth (checked on every call, through a short
//! cache); the feed only tells the other nodes promptly which sockets to close and which
//! cache entries to drop. Feed entries are pruned after [`FEED_KEEP_MS`].

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::store::records::{DeviceRecord, UserRecord, decode_u64, encode, encode_u64};
use crate::store::{KvTxn, Order, keys, prefix_end};

/// How long revocation feed entries are kept (nodes read the last 30 s of it).
pub const FEED_KEEP_MS: i64 = 10 * 60 * 1000;

/// Read a big-endian counter (0 when absent).
pub(super) async fn get_u64(txn: &mut dyn KvTxn, key: &[u8]) -> Result<u64, ApiError> {
    match txn.get(key).await? {
        Some(bytes) => Ok(decode_u64(key, &bytes)?),
        None => Ok(0),
    }
}

/// What revoking does to the device record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// Log out: the device stays listed (its cursor is kept for the next login), its push
    /// registration is dropped so that a logged-out phone gets no previews.
    LogOut,
    /// Remove the device: its record (cursor, push registration) is deleted.
    Remove,
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub key: Vec<u8>,
    pub ts: i64,
    pub user_id: String,
    pub device_id: String,
    /// The device's generation from then on; tokens and sockets with an older one are out.
    pub generation: u64,
}

/// Bump a device's generation and append to the feed, inside `txn`. Returns the new one.
pub(super) async fn bump(
    txn: &mut dyn KvTxn,
    user_id: &str,
    device_id: &str,
    now: i64,
) -> Result<u64, ApiError> {
    let key = keys::session_generation(user_id, device_id);
    let generation = get_u64(txn, &key).await? + 1;
    txn.put(&key, &encode_u64(generation));
    txn.put(
        &keys::revocation(now, user_id, device_id),
        &encode_u64(generation),
    );
    Ok(generation)
}

impl ChatStore {
    /// The current session generation of a device (0 until its first revocation).
    pub async fn session_generation(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<u64, ApiError> {
        self.read(|txn, _| {
            Box::pin(
                async move { get_u64(txn, &keys::session_generation(user_id, device_id)).await },
            )
        })
        .await
    }

    /// Revoke every token of `device_id`. `Revoke::Remove` of a device the user does not
    /// have is 404.
    pub async fn revoke_device(
        &self,
        user_id: &str,
        device_id: &str,
        how: Revoke,
        now: i64,
    ) -> Result<u64, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let key = keys::device(user_id, device_id);
                let record: Option<DeviceRecord> = get_json(txn, &key).await?;
                match (how, record) {
                    (Revoke::Remove, None) => {
                        return Err(ApiError::not_found(format!(
                            "you have no device {device_id:?}; GET /v1/devices lists yours"
                        )));
                    }
                    (Revoke::Remove, Some(_)) => {
                        txn.delete(&key);
                        txn.delete(&keys::device_seen(user_id, device_id));
                        self.seen.forget(user_id, device_id);
                    }
                    (Revoke::LogOut, Some(mut record)) => {
                        record.push = None;
                        txn.put(&key, &encode(&record));
                    }
                    (Revoke::LogOut, None) => {}
                }
                bump(txn, user_id, device_id, now).await
            })
        })
        .await
    }

    /// Set a new password hash and revoke every device of the user but `keep_device`, in one
    /// transaction. Returns the revoked devices with their new generations.
    pub async fn change_password(
        &self,
        user_id: &str,
        password_hash: &str,
        keep_device: &str,
        now: i64,
    ) -> Result<Vec<(String, u64)>, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let mut user: UserRecord = get_json(txn, &keys::user(user_id))
                    .await?
                    .ok_or_else(|| ApiError::not_found("your user no longer exists"))?;
                user.password_hash = password_hash.to_owned();
                txn.put(&keys::user(user_id), &encode(&user));
                let prefix = keys::devices_of(user_id);
                let devices = txn
                    .scan(
                        &prefix,
                        &prefix_end(&prefix),
                        super::devices::MAX_DEVICES,
                        Order::Ascending,
                    )
                    .await?;
                let mut revoked = Vec::new();
                for (key, _) in devices {
                    let device = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    if device != keep_device {
                        let generation = bump(txn, user_id, &device, now).await?;
                        revoked.push((device, generation));
                    }
                }
                Ok(revoked)
            })
        })
        .await
    }

    /// Feed entries at or after `from_ts` (at most `limit`), oldest first.
    pub async fn revocations_since(
        &self,
        from_ts: i64,
        limit: usize,
    ) -> Result<Vec<Revocation>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let start = keys::revocations_from(from_ts);
                let pairs = txn
                    .scan(
                        &start,
                        &prefix_end(keys::REVOCATIONS),
                        limit,
                        Order::Ascending,
                    )
                    .await?;
                let mut out = Vec::with_capacity(pairs.len());
                for (key, value) in pairs {
                    let Some((ts, user_id, device_id)) = keys::parse_revocation(&key) else {
                        continue;
                    };
                    let generation = decode_u64(&key, &value)?;
                    out.push(Revocation {
                        key,
                        ts,
                        user_id,
                        device_id,
                        generation,
                    });
                }
                Ok(out)
            })
        })
        .await
    }

    /// Delete up to `limit` feed entries older than `before_ts`; returns how many.
    pub async fn prune_revocations(&self, before_ts: i64, limit: usize) -> Result<usize, ApiError> {
        self.write_unsynced(|txn, _| {
            Box::pin(async move {
                let end = keys::revocations_from(before_ts);
                let old = txn
                    .scan(keys::REVOCATIONS, &end, limit, Order::Ascending)
                    .await?;
                for (key, _) in &old {
                    txn.delete(key);
                }
                Ok(old.len())
            })
        })
        .await
    }
}
