//! [`ChatStore`]: the chat data model (users, contacts, groups, messages, inboxes, devices)
//! written once over the [`Kv`] trait, so every backend gets the same behaviour.
//!
//! Every operation runs in one transaction, retried on conflict; operations that write wait
//! for [`Kv::sync`] before they return, so "returned" means "durable". Messages and group
//! membership changes are the write path's ([`super::writer`]): one writer, many per commit. The model speaks the
//! wire's error vocabulary ([`ApiError`]) because its refusals (`group_full`, `forbidden`,
//! `conflict`) are exactly the contract's.

mod contacts;
mod devices;
mod groups;
mod messages;
mod push;
mod seen;
mod sessions;
mod users;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub(crate) use groups::group_full;
pub use push::{OutboxEntry, PREVIEW_CHARS, PushJob, PushNotification, preview};
pub use sessions::{FEED_KEEP_MS as REVOCATION_FEED_KEEP_MS, Revocation, Revoke};

use super::{Kv, KvTxn, StoreError};
use crate::protocol::{ApiError, ErrorCode};

/// How often a conflicting transaction is retried before the caller gets `unavailable`.
const MAX_ATTEMPTS: u32 = 200;

/// The chat data model over a [`Kv`] backend. Cheap to clone.
#[derive(Clone)]
pub struct ChatStore {
    kv: Arc<dyn Kv>,
    /// Last-seen times recorded and not yet written ([`seen`]).
    seen: Arc<seen::Seen>,
    /// Counts store failures for `/metrics`; set by the server.
    on_error: Arc<dyn Fn() + Send + Sync>,
    /// Counts commits that conflicted and were retried; set by the server.
    on_conflict: Arc<dyn Fn() + Send + Sync>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::unavailable(
                "the store is too contended to commit this change right now; nothing was written, retry shortly",
            ),
            StoreError::Unavailable(reason) => ApiError::unavailable(format!(
                "the store cannot be reached ({reason}); nothing was written, retry shortly"
            )),
            StoreError::Poisoned(reason) => ApiError::unavailable(format!(
                "the store refuses writes ({reason}); the node is restarting, retry on another"
            )),
            StoreError::Corrupt { key, reason } => ApiError::internal(format!(
                "a stored value is unreadable (key {key}: {reason}); report this to the operator"
            )),
        }
    }
}

/// The body of a transaction: borrows the transaction for the duration of one attempt.
type TxnBody<'a, T> = BoxFuture<'a, Result<T, ApiError>>;

/// A marker argument whose type implies `'c: 'a`: it lets a transaction body (valid for any
/// attempt's borrow `'a`) capture the caller's borrowed arguments (lifetime `'c`).
type Scope<'a, 'c> = &'a &'c ();

impl ChatStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            seen: Arc::default(),
            on_error: Arc::new(|| {}),
            on_conflict: Arc::new(|| {}),
        }
    }

    /// Call `hook` on every store failure (for the `store_errors` metric).
    pub fn with_error_hook(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_error = Arc::new(hook);
        self
    }

    /// Call `hook` on every conflicting commit that is retried (the `store_conflicts` metric).
    pub fn with_conflict_hook(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_conflict = Arc::new(hook);
        self
    }

    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// Run `body` in a transaction, commit, and wait until the commit is durable. A conflict
    /// reruns `body` on a fresh snapshot, with a short, growing, jittered pause.
    pub(crate) async fn write<'c, T, F>(&self, body: F) -> Result<T, ApiError>
    where
        F: for<'a> Fn(&'a mut dyn KvTxn, Scope<'a, 'c>) -> TxnBody<'a, T>,
    {
        let value = self.write_unsynced(body).await?;
        self.kv.sync().await.map_err(|e| self.failed(e))?;
        Ok(value)
    }

    /// [`ChatStore::write`] without waiting for durability: for bookkeeping whose loss in a
    /// machine crash costs nothing (a last-seen time a few seconds old), so that it never waits
    /// for an fsync. The commit is still atomic and visible at once, and survives a crash of
    /// the process; the next durable write (or the group commit) makes it durable.
    pub(crate) async fn write_unsynced<'c, T, F>(&self, body: F) -> Result<T, ApiError>
    where
        F: for<'a> Fn(&'a mut dyn KvTxn, Scope<'a, 'c>) -> TxnBody<'a, T>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut txn = self.kv.begin().await?;
                let value = body(txn.as_mut(), &&()).await?;
                txn.commit().await.map_err(Retry::from)?;
                Ok::<T, Retry>(value)
            }
            .await;
            match result {
                Ok(value) => return Ok(value),
                Err(Retry::Conflict) if attempt < MAX_ATTEMPTS => {
                    (self.on_conflict)();
                    let pause = 50 * u64::from(attempt.min(20)) + rand::random_range(0..100);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                }
                Err(Retry::Conflict) => return Err(self.failed(StoreError::Conflict)),
                Err(Retry::Store(e)) => return Err(self.failed(e)),
                Err(Retry::Refused(e)) => {
                    if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) {
                        (self.on_error)();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Run a read-only `body` on a snapshot.
    pub(crate) async fn read<'c, T, F>(&self, body: F) -> Result<T, ApiError>
    where
        F: for<'a> Fn(&'a mut dyn KvTxn, Scope<'a, 'c>) -> TxnBody<'a, T>,
    {
        let mut txn = self.kv.snapshot().await.map_err(|e| self.failed(e))?;
        body(txn.as_mut(), &&()).await
    }

    fn failed(&self, e: StoreError) -> ApiError {
        (self.on_error)();
        tracing::warn!(error = %e, "store operation failed");
        e.into()
    }
}

/// Why an attempt ended without a commit.
enum Retry {
    Conflict,
    Store(StoreError),
    Refused(ApiError),
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            e => Self::Store(e),
        }
    }
}

impl From<ApiError> for Retry {
    fn from(e: ApiError) -> Self {
        Self::Refused(e)
    }
}

/// Read and decode a JSON record.
async fn get_json<T: serde::de::DeserializeOwned>(
    txn: &mut dyn KvTxn,
    key: &[u8],
) -> Result<Option<T>, ApiError> {
    match txn.get(key).await? {
        Some(bytes) => Ok(Some(super::records::decode(key, &bytes)?)),
        None => Ok(None),
    }
}
