//! The push outbox and push jobs: what the push worker (`crate::push`) owes offline devices,
//! kept in the store so a crash or restart loses nothing that was due.
//!
//! - `po/{due_ms}/{channel}/{seq}` -> [`OutboxEntry`]: written by the send transaction itself
//!   (one per message, not per recipient), due `coalescing window` after the message.
//! - `pq/{due_ms}/{user}/{device}/{inbox_id}` -> [`PushJob`]: one notification for one device,
//!   written when the worker expands due outbox entries (in the same transaction that deletes
//!   them) and rewritten with a later due time and a higher attempt count on each retry.
//!
//! Both tables sort by due time, so "what is due" is one range scan from the table's start.

use serde::{Deserialize, Serialize};

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::protocol::types::PushProvider;
use crate::store::records::{DeviceRecord, decode, encode};
use crate::store::{Order, keys};

/// Most characters of a message's text carried in a push (PROTOCOL.md guarantee 5).
pub const PREVIEW_CHARS: usize = 200;

/// The first [`PREVIEW_CHARS`] characters (Unicode scalar values) of `text`.
pub fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}

/// One message that may need pushing: written in the send transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub channel: String,
    pub seq: u64,
    pub from: String,
    /// At most [`PREVIEW_CHARS`] characters of the text.
    pub preview: String,
    pub ts: i64,
    /// Every member but the sender, with the `inbox_id` the message took in their inbox.
    pub recipients: Vec<(String, u64)>,
}

/// One push to one device: the webhook body of PROTOCOL.md guarantee 5 plus `count` and
/// `unread`. Field order is the documented order of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushNotification {
    pub user_id: String,
    pub device_id: String,
    pub provider: PushProvider,
    pub token: String,
    /// The newest message this push covers.
    pub channel: String,
    pub seq: u64,
    pub inbox_id: u64,
    pub from: String,
    pub preview: String,
    pub ts: i64,
    /// How many messages this one push stands for (a coalesced burst), at least 1.
    pub count: u64,
    /// The device's unread inbox entries: the user's inbox head minus the device's cursor.
    pub unread: u64,
}

/// A push to send or to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    pub notification: PushNotification,
    /// Tries made so far (0 before the first).
    pub attempt: u32,
}

impl PushJob {
    /// Its key when due at `due_ms`.
    pub fn key(&self, due_ms: i64) -> Vec<u8> {
        let n = &self.notification;
        keys::push_job(due_ms, &n.user_id, &n.device_id, n.inbox_id)
    }
}

/// Up to `limit` pairs of `table` (`po/` or `pq/`) due at or before `now`, from `from`
/// (inclusive; the table's start when `None`).
async fn due<T: serde::de::DeserializeOwned>(
    store: &ChatStore,
    table: &'static [u8],
    from: Option<&[u8]>,
    now: i64,
    limit: usize,
) -> Result<Vec<(Vec<u8>, T)>, ApiError> {
    store
        .read(|txn, _| {
            Box::pin(async move {
                let start = from.unwrap_or(table);
                let end = keys::due_end(table, now);
                let pairs = txn.scan(start, &end, limit, Order::Ascending).await?;
                pairs
                    .into_iter()
                    .map(|(k, v)| {
                        let value = decode(&k, &v)?;
                        Ok((k, value))
                    })
                    .collect()
            })
        })
        .await
}

impl ChatStore {
    /// Outbox entries due at or before `now`, oldest first, starting at key `from`.
    pub async fn push_outbox_due(
        &self,
        from: Option<&[u8]>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, OutboxEntry)>, ApiError> {
        due(self, keys::PUSH_OUTBOX, from, now, limit).await
    }

    /// Push jobs due at or before `now`, oldest first, starting at key `from`.
    pub async fn push_jobs_due(
        &self,
        from: Option<&[u8]>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, PushJob)>, ApiError> {
        due(self, keys::PUSH_JOBS, from, now, limit).await
    }

    /// The earliest due time of any outbox entry or push job, if there is any.
    pub async fn push_next_due(&self) -> Result<Option<i64>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let mut next: Option<i64> = None;
                for table in [keys::PUSH_OUTBOX, keys::PUSH_JOBS] {
                    let end = crate::store::prefix_end(table);
                    if let Some((key, _)) = txn
                        .scan(table, &end, 1, Order::Ascending)
                        .await?
                        .into_iter()
                        .next()
                    {
                        let due = keys::due_of(&key).unwrap_or(0);
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
                Ok(next)
            })
        })
        .await
    }

    /// Outbox entries and push jobs, counted up to `cap` each (for the depth gauge).
    pub async fn push_depth(&self, cap: usize) -> Result<u64, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let mut depth = 0;
                for table in [keys::PUSH_OUTBOX, keys::PUSH_JOBS] {
                    let end = crate::store::prefix_end(table);
                    depth += txn.scan(table, &end, cap, Order::Ascending).await?.len() as u64;
                }
                Ok(depth)
            })
        })
        .await
    }

    /// In one transaction: delete the outbox entries under `entries` and write `jobs`, due at
    /// `now`. Returns false (and writes nothing) when an entry is already gone: someone else
    /// expanded it, so the caller should read the outbox again.
    pub async fn push_expand(
        &self,
        entries: &[Vec<u8>],
        jobs: &[PushJob],
        now: i64,
    ) -> Result<bool, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                for key in entries {
                    if txn.get(key).await?.is_none() {
                        return Ok(false);
                    }
                }
                for key in entries {
                    txn.delete(key);
                }
                for job in jobs {
                    txn.put(&job.key(now), &encode(job));
                }
                Ok(true)
            })
        })
        .await
    }

    /// A job is finished (delivered or given up): forget it.
    pub async fn push_job_done(&self, key: &[u8]) -> Result<(), ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                txn.delete(key);
                Ok(())
            })
        })
        .await
    }

    /// Move a job from `key` to its retry at `due_ms` (with its new attempt count).
    pub async fn push_job_retry(
        &self,
        key: &[u8],
        job: &PushJob,
        due_ms: i64,
    ) -> Result<(), ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                txn.delete(key);
                txn.put(&job.key(due_ms), &encode(job));
                Ok(())
            })
        })
        .await
    }

    /// The provider said `token` no longer reaches `device_id`: drop the device's push
    /// registration, unless the device has registered another token since.
    pub async fn push_registration_gone(
        &self,
        user_id: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool, ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                let key = keys::device(user_id, device_id);
                let Some(mut record) = get_json::<DeviceRecord>(txn, &key).await? else {
                    return Ok(false);
                };
                if record.push.as_ref().is_none_or(|p| p.token != token) {
                    return Ok(false);
                }
                record.push = None;
                txn.put(&key, &encode(&record));
                Ok(true)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::PushRegistration;
    use crate::protocol::validate::Channel;
    use crate::store::embedded::Embedded;
    use crate::store::records::UserRecord;
    use crate::store::writer::{SendOp, Writer, WriterConfig};

    fn user(id: &str) -> UserRecord {
        UserRecord {
            user_id: id.into(),
            username: format!("name-{id}"),
            display_name: id.into(),
            password_hash: String::new(),
            created_at: 0,
            region: None,
        }
    }

    fn job(n: u64) -> PushJob {
        PushJob {
            notification: PushNotification {
                user_id: "b".into(),
                device_id: "phone".into(),
                provider: PushProvider::Webhook,
                token: "tok".into(),
                channel: "dm:a:b".into(),
                seq: n,
                inbox_id: n,
                from: "a".into(),
                preview: "hi".into(),
                ts: 0,
                count: 1,
                unread: n,
            },
            attempt: 0,
        }
    }

    #[tokio::test]
    async fn the_send_writes_one_outbox_entry_that_expands_retries_and_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChatStore::new(std::sync::Arc::new(Embedded::open(dir.path()).unwrap()));
        let writer = Writer::spawn(
            store.kv().clone(),
            WriterConfig::default(),
            Default::default(),
        );
        for id in ["a", "b"] {
            store.create_user(&user(id)).await.unwrap();
        }
        let channel = Channel::direct("a", "b");
        let text = "x".repeat(500);
        let new = |cmid: &'static str, push_due| SendOp {
            sender: "a".into(),
            device: "phone".into(),
            channel: channel.clone(),
            client_msg_id: cmid.into(),
            text: text.clone(),
            ts: 1_000,
            push_due,
            action: Default::default(),
        };
        writer.send(new("no-push", None)).await.unwrap();
        assert_eq!(
            store.push_depth(100).await.unwrap(),
            0,
            "no providers: no outbox"
        );
        writer.send(new("push", Some(2_000))).await.unwrap();
        assert_eq!(store.push_next_due().await.unwrap(), Some(2_000));
        assert!(
            store
                .push_outbox_due(None, 1_999, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let due = store.push_outbox_due(None, 2_000, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let (key, entry) = &due[0];
        assert_eq!((entry.seq, entry.from.as_str()), (2, "a"));
        assert_eq!(
            entry.recipients,
            vec![("b".to_owned(), 2)],
            "the sender is not a recipient"
        );
        assert_eq!(entry.preview.chars().count(), PREVIEW_CHARS);

        assert!(
            store
                .push_expand(std::slice::from_ref(key), &[job(2)], 2_000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .push_expand(std::slice::from_ref(key), &[job(2)], 2_000)
                .await
                .unwrap(),
            "an entry expands once"
        );
        let jobs = store.push_jobs_due(None, 2_000, 10).await.unwrap();
        assert_eq!(jobs.len(), 1);
        let mut retry = jobs[0].1.clone();
        retry.attempt = 1;
        store
            .push_job_retry(&jobs[0].0, &retry, 3_000)
            .await
            .unwrap();
        assert!(
            store
                .push_jobs_due(None, 2_999, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = store.push_jobs_due(None, 3_000, 10).await.unwrap();
        assert_eq!(again[0].1.attempt, 1);
        store.push_job_done(&again[0].0).await.unwrap();
        assert_eq!(store.push_depth(100).await.unwrap(), 0);
        assert_eq!(store.push_next_due().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_gone_token_clears_only_the_registration_that_still_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChatStore::new(std::sync::Arc::new(Embedded::open(dir.path()).unwrap()));
        store.touch_device("b", "phone", 0, 0).await.unwrap();
        let reg = |token: &str| PushRegistration {
            provider: PushProvider::Fcm,
            token: token.into(),
        };
        store.set_push("b", "phone", reg("new")).await.unwrap();
        assert!(
            !store
                .push_registration_gone("b", "phone", "old")
                .await
                .unwrap()
        );
        assert!(store.devices("b").await.unwrap()[0].push.is_some());
        assert!(
            store
                .push_registration_gone("b", "phone", "new")
                .await
                .unwrap()
        );
        assert!(store.devices("b").await.unwrap()[0].push.is_none());
    }

    #[test]
    fn preview_counts_characters_not_bytes() {
        let text = "é".repeat(300);
        let p = preview(&text);
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
        assert_eq!(preview("short"), "short");
    }
}
