//! Devices: one per login, with its sync cursor, last-seen time and push registration; and
//! each user's last-seen time.

use std::collections::HashMap;

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::protocol::types::PushRegistration;
use crate::store::records::{DeviceRecord, decode, decode_u64, encode};
use crate::store::{KvTxn, Order, keys, prefix_end};

/// Most devices listed for one user.
pub const MAX_DEVICES: usize = 1_000;

impl ChatStore {
    /// Record a login of `device_id` (created on first login). When the login would make
    /// more than `max_devices` devices (0: no limit), the user's longest-unused device is
    /// removed and its tokens revoked in the same transaction; it is returned with its new
    /// session generation.
    pub async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now: i64,
        max_devices: usize,
    ) -> Result<Option<(String, u64)>, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let key = keys::device(user_id, device_id);
                if txn.get(&key).await?.is_some() {
                    return Ok(None);
                }
                let mut evicted = None;
                if max_devices > 0 {
                    let prefix = keys::devices_of(user_id);
                    let pairs = txn
                        .scan(&prefix, &prefix_end(&prefix), MAX_DEVICES, Order::Ascending)
                        .await?;
                    if pairs.len() >= max_devices {
                        let times = device_times(txn, user_id).await?;
                        let mut oldest: Option<(i64, DeviceRecord)> = None;
                        for (k, v) in &pairs {
                            let d: DeviceRecord = decode(k, v)?;
                            let seen = self.device_seen(user_id, &d, &times);
                            let used = seen.unwrap_or(d.created_at).max(d.created_at);
                            if oldest.as_ref().is_none_or(|(t, _)| used < *t) {
                                oldest = Some((used, d));
                            }
                        }
                        if let Some((_, d)) = oldest {
                            txn.delete(&keys::device(user_id, &d.device_id));
                            txn.delete(&keys::device_seen(user_id, &d.device_id));
                            self.seen.forget(user_id, &d.device_id);
                            let generation =
                                super::sessions::bump(txn, user_id, &d.device_id, now).await?;
                            evicted = Some((d.device_id, generation));
                        }
                    }
                }
                let record = DeviceRecord {
                    device_id: device_id.to_owned(),
                    created_at: now,
                    ..Default::default()
                };
                txn.put(&key, &encode(&record));
                // A time a late flush wrote after an earlier removal of this device id.
                txn.delete(&keys::device_seen(user_id, device_id));
                Ok(evicted)
            })
        })
        .await
    }

    /// Move a device's cursor forward (never back).
    pub async fn set_cursor(
        &self,
        user_id: &str,
        device_id: &str,
        cursor: u64,
    ) -> Result<(), ApiError> {
        self.update_device(user_id, device_id, |d| d.cursor = d.cursor.max(cursor))
            .await
    }

    pub async fn set_push(
        &self,
        user_id: &str,
        device_id: &str,
        push: PushRegistration,
    ) -> Result<(), ApiError> {
        self.update_device(user_id, device_id, move |d| d.push = Some(push.clone()))
            .await
    }

    async fn update_device(
        &self,
        user_id: &str,
        device_id: &str,
        change: impl Fn(&mut DeviceRecord) + Send + Sync,
    ) -> Result<(), ApiError> {
        let change = &change;
        self.write(|txn, _| {
            Box::pin(async move {
                let key = keys::device(user_id, device_id);
                let mut record: DeviceRecord =
                    get_json(txn, &key).await?.unwrap_or_else(|| DeviceRecord {
                        device_id: device_id.to_owned(),
                        ..Default::default()
                    });
                change(&mut record);
                txn.put(&key, &encode(&record));
                Ok(())
            })
        })
        .await
    }

    /// `user_id`'s devices, each with its latest last-seen time (pending ones included).
    pub async fn devices(&self, user_id: &str) -> Result<Vec<DeviceRecord>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let prefix = keys::devices_of(user_id);
                let pairs = txn
                    .scan(&prefix, &prefix_end(&prefix), MAX_DEVICES, Order::Ascending)
                    .await?;
                let times = device_times(txn, user_id).await?;
                pairs
                    .iter()
                    .map(|(k, v)| {
                        let mut d: DeviceRecord = decode(k, v)?;
                        d.last_seen = self.device_seen(user_id, &d, &times);
                        Ok(d)
                    })
                    .collect()
            })
        })
        .await
    }

    /// A device's last-seen time: the latest of its record's (written by versions before
    /// `dl/`), its `dl/` key's (`times`, from [`device_times`]) and the pending one.
    fn device_seen(
        &self,
        user_id: &str,
        device: &DeviceRecord,
        times: &HashMap<String, i64>,
    ) -> Option<i64> {
        device
            .last_seen
            .max(times.get(&device.device_id).copied())
            .max(self.seen.device(user_id, &device.device_id))
    }

    /// When `user_id` was last active on any device: stored, or recorded here and not yet
    /// flushed ([`super::seen`]), whichever is later; once a disconnect's time is pending,
    /// that time (the flush writes it over what is stored).
    pub async fn last_seen(&self, user_id: &str) -> Result<Option<i64>, ApiError> {
        // A socket that just closed recorded a time the flush writes blindly: no read (the
        // offline announcement of a storm's 10,000 disconnects read 10,000 keys for it).
        if let Some(at) = self.seen.user_if_definitive(user_id) {
            return Ok(Some(at));
        }
        let stored = self
            .read(|txn, _| {
                Box::pin(async move {
                    let key = keys::last_seen(user_id);
                    match txn.get(&key).await? {
                        Some(v) => Ok(Some(decode_u64(&key, &v)? as i64)),
                        None => Ok(None),
                    }
                })
            })
            .await?;
        Ok(stored.max(self.seen.user(user_id)))
    }
}

/// The `dl/` times of `user_id`'s devices, by device id.
async fn device_times(
    txn: &mut dyn KvTxn,
    user_id: &str,
) -> Result<HashMap<String, i64>, ApiError> {
    let prefix = keys::devices_seen_of(user_id);
    let pairs = txn
        .scan(&prefix, &prefix_end(&prefix), MAX_DEVICES, Order::Ascending)
        .await?;
    pairs
        .iter()
        .map(|(k, v)| {
            let device = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            Ok((device, decode_u64(k, v)? as i64))
        })
        .collect()
}
