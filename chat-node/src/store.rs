//! Storage: one small ordered, transactional key-value trait ([`Kv`]), its backends, and the
//! chat data model written once on top of it ([`ChatStore`]).
//!
//! The trait is the only door to storage. A backend is a thin adapter that passes the shared
//! [`conformance`] suite: ordered byte keys, range scans, and optimistic transactions whose
//! commit fails with [`StoreError::Conflict`] when another transaction changed what this one
//! read (the caller retries). [`Kv::sync`] makes everything committed before it durable; the
//! embedded backend uses it for group commit, so many concurrent sends share one fsync.
//!
//! # Layout
//!
//! | module | role |
//! | --- | --- |
//! | [`embedded`] | fjall in the data dir: one node, nothing else to run |
//! | [`etcd`] | the cluster's etcd: small clusters and tests (size-limited) |
//! | [`tikv`] | a TiKV cluster through PD: production history |
//! | `overlay` | the write buffer the remote backends lay over their snapshot reads |
//! | [`writer`] | the write path: one writer per node, many sends per durable batch |
//! | [`conformance`] | the checks every backend passes |
//! | [`keys`], `records`, `binary`, `model` | the chat data model's key layout, values (the hot ones packed) and operations |
//! | [`index`] | each user's channel index, written behind the inbox |

mod binary;
pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod index;
pub mod keys;
mod model;
mod overlay;
pub mod records;
pub mod tikv;
pub mod writer;

pub use model::{
    ChatStore, OutboxEntry, PREVIEW_CHARS, PushJob, PushNotification, REVOCATION_FEED_KEEP_MS,
    Revocation, Revoke, preview,
};
pub use records::{DeviceRecord, GroupRecord, UserChannel, UserRecord};
pub use writer::SendOutcome;

use async_trait::async_trait;

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another transaction committed a change to something this one read: retry it.
    #[error("transaction conflict")]
    Conflict,
    /// The store cannot be reached or failed to read or write; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store can no longer be written (the embedded engine refuses writes after a failed
    /// fsync): the node fails `/readyz` and exits non-zero to be restarted.
    #[error("store poisoned: {0}")]
    Poisoned(String),
    /// A stored value could not be decoded: a bug or a corrupted store.
    #[error("corrupt value under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// One key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Blind writes applied together by [`Kv::apply`]: the write path's unit of commit (many
/// sends in one batch, one commit, one fsync). In order; a later write to a key wins.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    bytes: usize,
}

impl Batch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push((key, None));
    }

    /// Writes queued (puts and deletes).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The value the batch last wrote under `key`: `Some(None)` for a delete, `None` when
    /// the batch does not write it. A linear search from the end, for the rare operation
    /// that reads what an earlier one of its batch wrote (an edit of a message sent in the
    /// same batch).
    pub fn latest(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// The writes in order: `Some(value)` for a put, `None` for a delete.
    pub fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.ops.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
}

/// A condition [`Kv::apply`] checks atomically with its batch: `key` holds exactly
/// `expected` (`None`: the key is absent). The write path's fence: a writer applies its
/// batches under a guard on its fence key, so a writer whose ownership was taken over (the
/// key changed) writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// An ordered key-value store with optimistic transactions.
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// Start a transaction that sees a consistent snapshot.
    async fn begin(&self) -> Result<Box<dyn KvTxn>, StoreError>;

    /// Start a read-only transaction on a consistent snapshot: what [`ChatStore`]'s reads
    /// use. Backends whose transactions track reads for conflict checks give a cheaper one
    /// (the embedded store: no read set, no commit lock); a write into it fails its commit.
    /// Default: [`Kv::begin`].
    ///
    /// [`ChatStore`]: model::ChatStore
    async fn snapshot(&self) -> Result<Box<dyn KvTxn>, StoreError> {
        self.begin().await
    }

    /// Return once everything committed before this call is durable (survives a crash of
    /// the process and of the machine). Backends whose commits are already durable return
    /// at once; the embedded one batches concurrent callers into one fsync.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Read many keys at the latest committed state, in one round trip where the backend
    /// allows (a group's records, a contact list): the answer is in the order of `keys`.
    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Apply `batch` atomically, if `guard` (when given) holds; a guard that does not hold is
    /// [`StoreError::Conflict`] and nothing is written. Like a commit, the writes are
    /// visible at once and durable after [`Kv::sync`]. The write path's single writer uses
    /// this instead of a transaction: it owns the keys it writes, so it has nothing to
    /// detect conflicts on.
    ///
    /// The default is one transaction that reads the guard key (so a concurrent change of
    /// it conflicts) and writes the batch.
    async fn apply(&self, batch: &Batch, guard: Option<&Guard>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.begin().await?;
        if let Some(guard) = guard
            && txn.get(&guard.key).await? != guard.expected
        {
            return Err(StoreError::Conflict);
        }
        for (key, value) in batch.ops() {
            match value {
                Some(v) => txn.put(key, v),
                None => txn.delete(key),
            }
        }
        txn.commit().await
    }

    /// Most writes one [`Kv::apply`] may carry (etcd's `--max-txn-ops`); the write path
    /// bounds its batches by it.
    fn max_batch_ops(&self) -> usize {
        usize::MAX
    }

    /// The node stops: leave the store quick to open again (the embedded store writes its
    /// memory tables out, so the next start replays no journal). Default: nothing to do.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Check that the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The backend's name, for logs and metrics.
    fn name(&self) -> &'static str;
}

/// A transaction: reads see the snapshot plus this transaction's own writes; writes are
/// buffered until [`KvTxn::commit`]. Dropping it without commit rolls it back.
#[async_trait]
pub trait KvTxn: Send {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// [`KvTxn::get`] of many keys, in one round trip where the backend allows; the answer
    /// is in the order of `keys`. Every key counts as read (for conflicts).
    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Up to `limit` pairs with `start <= key < end`, in `order`.
    async fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Pair>, StoreError>;

    fn put(&mut self, key: &[u8], value: &[u8]);

    fn delete(&mut self, key: &[u8]);

    /// Apply the writes atomically, or fail with [`StoreError::Conflict`] if a key or range
    /// this transaction read was changed by a transaction that committed since it began.
    /// Committed data is visible to later transactions; it is durable after [`Kv::sync`].
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// The exclusive end of the range of keys that start with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key above the prefix.
    vec![0xff; prefix.len() + 1]
}
