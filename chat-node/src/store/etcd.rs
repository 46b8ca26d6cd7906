//! The etcd backend: history in the cluster's etcd, under `/parley-store/<cluster>/`.
//! Nothing more to run than the etcd a cluster already has, which makes it right for small
//! clusters and tests; etcd's size limits (below) make it wrong for long-term history at scale.
//!
//! # How a transaction maps onto etcd
//!
//! etcd keeps every key's `mod_revision` (the revision of its last change) and answers reads
//! at an old revision, so an optimistic transaction is a snapshot plus a checked commit:
//!
//! - **Snapshot**: the first read notes the store's revision; every later read asks for that
//!   revision (`GetOptions::with_revision`). A transaction that never reads has no snapshot.
//! - **Read set**: every key read, and every key a scan returned, with its `mod_revision`
//!   (0 for an absent key). Every scanned range, cut at the last key returned when the limit
//!   cut the scan short (a key beyond the cut does not change what was read).
//! - **Commit**: one etcd `Txn`: `If` every read key still has the `mod_revision` seen (so a
//!   change or delete conflicts) and no key in a scanned range has `mod_revision >
//!   snapshot` (so an insert, a phantom, conflicts), `Then` the buffered puts and deletes.
//!   A failed `If` is [`StoreError::Conflict`]. A transaction without writes commits as a
//!   no-op. This is serializable: the transaction takes effect at the commit revision, and
//!   everything it read was unchanged from its snapshot up to then.
//! - A snapshot older than etcd's compaction is [`StoreError::Conflict`] too: retrying starts
//!   on a fresh snapshot.
//! - Durability: etcd acknowledges a `Txn` once a quorum has it in its raft log on disk, so
//!   [`Kv::sync`] has nothing left to do.
//!
//! Descending scans: etcd sorts in descending order by reading the *whole* range and then
//! cutting it, which for "the newest 50 of a channel of a million" would read a million. So a
//! descending scan reads back from the end in growing windows (the first sized to `limit`
//! by reading the keys' trailing bytes as a number, which is exact for the chat model's
//! gapless big-endian sequence numbers), each window a bounded sort.
//!
//! # etcd's limits, and the flags Parley needs
//!
//! - `--max-txn-ops` (default 128) bounds the compares and the writes of one `Txn`. A send to
//!   a group of 100 members reads ~103 keys and writes ~204, so run etcd with
//!   `--max-txn-ops 1024` (enough for groups of ~500). A `Txn` over the limit fails with
//!   [`StoreError::Unavailable`] naming the flag. Compares count: one per key read, including
//!   each key a scan returned (a deleted key is invisible to a range compare, so each needs
//!   its own), so a write transaction that scans thousands of keys needs a larger limit.
//! - `--max-request-bytes` (default 1.5 MiB) bounds one request: a message of 100,000
//!   characters can be 400 KB of UTF-8 and is stored once, plus ~100 bytes per member; run
//!   etcd with `--max-request-bytes 4194304`.
//! - `--quota-backend-bytes` (default 2 GiB, at most 8 GiB) bounds the whole database,
//!   history included; past it etcd refuses every write (the `NOSPACE` alarm) until it is
//!   compacted and defragmented. Run `--auto-compaction-mode revision
//!   --auto-compaction-retention 10000` (or periodic) so old revisions do not fill it.
//!   See `docs/storage.md` for how many messages fit.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};

use parley_etcd_connect::EtcdConnect;

use super::overlay::WriteBuffer;

mod txn;
use super::{Batch, Guard, Kv, KvTxn, StoreError};
use txn::EtcdTxn;

/// Every etcd call gives up after this long with [`StoreError::Unavailable`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer the client accepts (tonic's default is 4 MiB); scans fetch in pages of
/// [`PAGE_KEYS`] so a page of large messages stays well below it.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Keys per read request of a scan, and per transaction of a batched read.
const PAGE_KEYS: usize = 64;

/// Operations of one write transaction the write path may use: etcd's `--max-txn-ops`, which
/// Parley asks operators to set to 1024 (docs/storage.md), less room for the guard.
pub const MAX_TXN_OPS: usize = 1000;

/// The etcd backend. Cheap to clone.
#[derive(Clone)]
pub struct EtcdKv {
    kv: KvClient,
    prefix: Vec<u8>,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
}

impl EtcdKv {
    /// Connect to etcd at `endpoints` (`host:port` or `http://host:port`) and check that it
    /// answers. Every key is stored as `key_prefix ++ key`; the node passes
    /// `/parley-store/<cluster>/`.
    pub async fn connect(endpoints: &[String], key_prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with(&EtcdConnect::plain(endpoints.iter().cloned()), key_prefix).await
    }

    /// [`EtcdKv::connect`] with TLS and credentials (`--etcd-ca-file` and the others).
    pub async fn connect_with(etcd: &EtcdConnect, key_prefix: &str) -> Result<Self, StoreError> {
        let names = etcd.describe();
        etcd.validate()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let options = etcd.options(
            ConnectOptions::new()
                .with_connect_timeout(CALL_TIMEOUT)
                .with_timeout(CALL_TIMEOUT)
                .with_keep_alive(Duration::from_secs(10), CALL_TIMEOUT),
        );
        let client = bounded(
            &names,
            "connect",
            Client::connect(etcd.urls(), Some(options)),
        )
        .await?
        .map_err(|e| unavailable(&names, "cannot connect", e))?;
        let kv = EtcdKv {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
            prefix: key_prefix.as_bytes().to_vec(),
            endpoints: names,
        };
        kv.ping().await?;
        Ok(kv)
    }
}

/// Await an etcd call for at most [`CALL_TIMEOUT`].
async fn bounded<T>(
    endpoints: &str,
    what: &str,
    call: impl Future<Output = T>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "etcd at {endpoints} did not answer a {what} within {}s; check that it is running and reachable",
                CALL_TIMEOUT.as_secs()
            ))
        })
}

fn unavailable(endpoints: &str, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what} (etcd at {endpoints}): {e}"))
}

/// Map an etcd error: a compacted snapshot is a conflict (retry on a fresh one), the size
/// limits name the flag to raise, the rest is unavailability.
fn map_error(endpoints: &str, what: &str, e: etcd_client::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("required revision has been compacted") {
        StoreError::Conflict
    } else if text.contains("too many operations in txn request") {
        StoreError::Unavailable(format!(
            "{what} (etcd at {endpoints}): the transaction has more operations than etcd's \
             --max-txn-ops allows; run etcd with --max-txn-ops 1024 (etcd said: {text})"
        ))
    } else if text.contains("request is too large") || text.contains("larger than max") {
        StoreError::Unavailable(format!(
            "{what} (etcd at {endpoints}): the transaction is larger than etcd's \
             --max-request-bytes allows; run etcd with --max-request-bytes 4194304 (etcd said: {text})"
        ))
    } else if text.contains("database space exceeded") {
        StoreError::Unavailable(format!(
            "{what} (etcd at {endpoints}): etcd is full (--quota-backend-bytes reached, NOSPACE alarm); \
             compact and defragment it and disarm the alarm, raise the quota (at most 8 GiB), \
             or move history to TiKV (etcd said: {text})"
        ))
    } else {
        unavailable(endpoints, what, text)
    }
}

#[async_trait]
impl Kv for EtcdKv {
    async fn begin(&self) -> Result<Box<dyn KvTxn>, StoreError> {
        Ok(Box::new(EtcdTxn {
            db: self.clone(),
            snapshot: None,
            reads: Default::default(),
            ranges: Vec::new(),
            writes: WriteBuffer::default(),
        }))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // An acknowledged etcd write is already on a quorum's disks.
        Ok(())
    }

    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // One transaction of reads per page of keys (a transaction is one round trip and
        // one consistent revision); the pages go out together.
        let pages = keys.chunks(PAGE_KEYS).map(|page| {
            let ops: Vec<TxnOp> = page
                .iter()
                .map(|key| TxnOp::get(self.full(key), None))
                .collect();
            let mut kv = self.kv.clone();
            async move {
                let resp = bounded(&self.endpoints, "read", kv.txn(Txn::new().and_then(ops)))
                    .await?
                    .map_err(|e| map_error(&self.endpoints, "read failed", e))?;
                Ok::<_, StoreError>(
                    resp.op_responses()
                        .into_iter()
                        .map(|op| match op {
                            TxnOpResponse::Get(mut get) => get
                                .take_kvs()
                                .into_iter()
                                .next()
                                .map(|kv| kv.into_key_value().1),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )
            }
        });
        let mut out = Vec::with_capacity(keys.len());
        for page in futures_util::future::try_join_all(pages).await? {
            out.extend(page);
        }
        Ok(out)
    }

    async fn apply(&self, batch: &Batch, guard: Option<&Guard>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // etcd refuses a transaction that writes one key twice: the last write wins.
        let mut last: std::collections::HashMap<&[u8], Option<&[u8]>> =
            std::collections::HashMap::with_capacity(batch.len());
        for (key, value) in batch.ops() {
            last.insert(key, value);
        }
        let ops: Vec<TxnOp> = last
            .into_iter()
            .map(|(key, value)| match value {
                Some(v) => TxnOp::put(self.full(key), v.to_vec(), None),
                None => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let compares: Vec<Compare> = match guard {
            None => Vec::new(),
            Some(Guard {
                key,
                expected: None,
            }) => vec![Compare::create_revision(
                self.full(key),
                CompareOp::Equal,
                0,
            )],
            Some(Guard {
                key,
                expected: Some(value),
            }) => vec![Compare::value(
                self.full(key),
                CompareOp::Equal,
                value.clone(),
            )],
        };
        let txn = Txn::new().when(compares).and_then(ops);
        let mut kv = self.kv.clone();
        let resp = bounded(&self.endpoints, "write", kv.txn(txn))
            .await?
            .map_err(|e| map_error(&self.endpoints, "write failed", e))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    fn max_batch_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut kv = self.kv.clone();
        let key = self.full(b"\0ping");
        bounded(
            &self.endpoints,
            "ping",
            kv.get(key, Some(GetOptions::new().with_count_only())),
        )
        .await?
        .map(|_| ())
        .map_err(|e| map_error(&self.endpoints, "ping failed", e))
    }

    fn name(&self) -> &'static str {
        "etcd"
    }
}

impl EtcdKv {
    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }
}
