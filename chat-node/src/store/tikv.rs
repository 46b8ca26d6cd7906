//! The TiKV backend: history in a TiKV cluster (reached through its PD endpoints), under
//! `/parley-store/<cluster>/`. For production: it scales out and has no etcd-sized ceiling.
//!
//! # How a transaction maps onto TiKV
//!
//! One TiKV optimistic transaction (Percolator: a start timestamp from PD, reads at it,
//! two-phase commit):
//!
//! - **Snapshot**: every read sees the transaction's start timestamp.
//! - **Writes** wait in this backend's buffer (reads see them) and go to TiKV at commit.
//! - **Conflicts**: TiKV's optimistic transactions detect write-write conflicts only. So at
//!   commit every key this transaction *read* but did not write (present or absent, by `get`
//!   or returned by a scan) is added as a lock-only mutation (`lock_keys`): prewrite then
//!   fails with a write conflict when any of them was changed by a transaction that committed
//!   after our start timestamp, exactly as for a written key. That gives serializability for
//!   point reads: the counters, dedupe keys, group records and user records the chat model
//!   reads in its write transactions.
//! - **Phantoms are not detected.** A key *inserted* into a range this transaction scanned,
//!   by a transaction that committed meanwhile, is not a conflict (TiKV has no range locks;
//!   the keys the scan returned are locked, so changes and deletes of those do conflict).
//!   The chat model needs no more: its only scan inside a write transaction counts a user's
//!   contacts against the contact cap, so two concurrent adds by the same user may overshoot
//!   the cap by one; every sequence number, inbox id and dedupe key is a point read.
//!   The conformance suite's phantom check is therefore skipped for this backend, by name.
//! - A transaction without writes commits as a no-op (nothing is locked for it).
//! - A write conflict, a lock held by a live transaction, or any error TiKV marks retryable
//!   is [`StoreError::Conflict`] (the caller retries on a fresh timestamp); anything else,
//!   including a commit whose outcome TiKV cannot tell, is [`StoreError::Unavailable`].
//! - Durability: TiKV acknowledges a commit once a raft quorum has it, so [`Kv::sync`] has
//!   nothing left to do.
//!
//! `tikv-client` can wait forever on an address that accepts TCP and never answers, whatever
//! its configured timeout, so the client's construction and every call are bounded here by
//! [`CALL_TIMEOUT`].

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use tikv_client::{CheckLevel, Config, Transaction, TransactionClient, TransactionOptions};

use super::overlay::WriteBuffer;
use super::{Kv, KvTxn, Order, Pair, StoreError};

/// Every TiKV call gives up after this long with [`StoreError::Unavailable`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer the client accepts (its default is 4 MiB): a scan of a page of large
/// messages can exceed that.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The TiKV backend. Cheap to clone.
#[derive(Clone)]
pub struct TikvKv {
    client: std::sync::Arc<TransactionClient>,
    prefix: Vec<u8>,
    /// The PD endpoints, comma-separated, for error messages.
    endpoints: String,
}

/// TLS to PD and TiKV (`--tikv-ca-file`, `--tikv-cert-file`, `--tikv-key-file`): the
/// cluster's CA, and the client certificate and key TiKV's `security` section checks.
#[derive(Debug, Clone)]
pub struct TikvSecurity {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TikvSecurity {
    /// Read each file once, so a wrong path is reported by its flag (tikv-client's own
    /// message does not say which file).
    fn check(&self) -> Result<(), StoreError> {
        for (path, flag) in [
            (&self.ca, "--tikv-ca-file"),
            (&self.cert, "--tikv-cert-file"),
            (&self.key, "--tikv-key-file"),
        ] {
            std::fs::read(path).map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot read {} ({flag}): {e}; check the path and its permissions",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }
}

impl TikvKv {
    /// Connect to the TiKV cluster whose PD answers at `pd` (`host:port`), and check that it
    /// answers. Every key is stored as `key_prefix ++ key`; the node passes
    /// `/parley-store/<cluster>/`.
    pub async fn connect(pd: &[String], key_prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with(pd, key_prefix, None).await
    }

    /// [`TikvKv::connect`], over TLS with a client certificate when `security` is given.
    pub async fn connect_with(
        pd: &[String],
        key_prefix: &str,
        security: Option<&TikvSecurity>,
    ) -> Result<Self, StoreError> {
        let names = pd.join(",");
        if pd.is_empty() {
            return Err(StoreError::Unavailable(
                "no PD endpoints given: pass --tikv-pd host:port[,host:port…]".into(),
            ));
        }
        let mut config = Config::default()
            .with_timeout(CALL_TIMEOUT)
            .with_grpc_max_decoding_message_size(MAX_RESPONSE_BYTES);
        if let Some(s) = security {
            s.check()?;
            config = config.with_security(&s.ca, &s.cert, &s.key);
        }
        let client = bounded(
            &names,
            "connect",
            TransactionClient::new_with_config(pd.to_vec(), config),
        )
        .await?
        .map_err(|e| map_error(&names, "cannot connect", e))?;
        let kv = TikvKv {
            client: std::sync::Arc::new(client),
            prefix: key_prefix.as_bytes().to_vec(),
            endpoints: names,
        };
        kv.ping().await?;
        Ok(kv)
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }

    async fn start(&self) -> Result<Transaction, StoreError> {
        // Dropping an uncommitted transaction is how the trait rolls back; an optimistic
        // transaction has written nothing to TiKV before commit, so there is nothing to undo.
        let options = TransactionOptions::new_optimistic().drop_check(CheckLevel::None);
        bounded(
            &self.endpoints,
            "begin",
            self.client.begin_with_options(options),
        )
        .await?
        .map_err(|e| map_error(&self.endpoints, "cannot begin a transaction", e))
    }
}

/// Await a TiKV call for at most [`CALL_TIMEOUT`].
async fn bounded<T>(
    endpoints: &str,
    what: &str,
    call: impl Future<Output = T>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "TiKV (PD at {endpoints}) did not answer a {what} within {}s; check that PD and TiKV are running and reachable",
                CALL_TIMEOUT.as_secs()
            ))
        })
}

/// Whether `e` means "another transaction got there first": retry on a fresh timestamp.
fn is_conflict(e: &tikv_client::Error) -> bool {
    use tikv_client::Error as E;
    match e {
        E::KeyError(k) => k.conflict.is_some() || !k.retryable.is_empty() || k.locked.is_some(),
        E::ResolveLockError(_) => true,
        E::ExtractedErrors(all) | E::MultipleKeyErrors(all) => all.iter().any(is_conflict),
        E::PessimisticLockError { inner, .. } => is_conflict(inner),
        _ => false,
    }
}

fn map_error(endpoints: &str, what: &str, e: tikv_client::Error) -> StoreError {
    if is_conflict(&e) {
        return StoreError::Conflict;
    }
    match e {
        tikv_client::Error::UndeterminedError(inner) => StoreError::Unavailable(format!(
            "{what} (TiKV, PD at {endpoints}): the commit's outcome is unknown ({inner}); \
             it may or may not have been applied"
        )),
        e => StoreError::Unavailable(format!("{what} (TiKV, PD at {endpoints}): {e}")),
    }
}

#[async_trait]
impl Kv for TikvKv {
    async fn begin(&self) -> Result<Box<dyn KvTxn>, StoreError> {
        Ok(Box::new(TikvTxn {
            txn: self.start().await?,
            db: self.clone(),
            reads: HashSet::new(),
            writes: WriteBuffer::default(),
        }))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // An acknowledged TiKV commit is already on a raft quorum's disks.
        Ok(())
    }

    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut txn = self.begin().await?;
        txn.get_many(keys).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A timestamp from PD and a read from TiKV: both halves answer.
        let mut txn = self.start().await?;
        let key = self.full(b"\0ping");
        bounded(&self.endpoints, "ping", txn.get(key))
            .await?
            .map(|_| ())
            .map_err(|e| map_error(&self.endpoints, "ping failed", e))
    }

    fn name(&self) -> &'static str {
        "tikv"
    }
}

struct TikvTxn {
    txn: Transaction,
    db: TikvKv,
    /// Full keys read (present or absent): locked at commit unless written.
    reads: HashSet<Vec<u8>>,
    /// Buffered writes (keys without the prefix).
    writes: WriteBuffer,
}

#[async_trait]
impl KvTxn for TikvTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(own) = self.writes.get(key) {
            return Ok(own.map(<[u8]>::to_vec));
        }
        let full = self.db.full(key);
        let value = bounded(&self.db.endpoints, "read", self.txn.get(full.clone()))
            .await?
            .map_err(|e| map_error(&self.db.endpoints, "read failed", e))?;
        self.reads.insert(full);
        Ok(value)
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // Keys this transaction wrote are answered from its buffer; the rest in one
        // batched read at the start timestamp.
        let remote: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| self.writes.get(k).is_none())
            .map(|k| self.db.full(k))
            .collect();
        let endpoints = self.db.endpoints.clone();
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = if remote.is_empty() {
            Default::default()
        } else {
            bounded(&endpoints, "read", self.txn.batch_get(remote.clone()))
                .await?
                .map_err(|e| map_error(&endpoints, "read failed", e))?
                .map(|pair| {
                    let (key, value): (tikv_client::Key, tikv_client::Value) = pair.into();
                    (key.into(), value)
                })
                .collect()
        };
        self.reads.extend(remote);
        Ok(keys
            .iter()
            .map(|k| match self.writes.get(k) {
                Some(own) => own.map(<[u8]>::to_vec),
                None => found.get(&self.db.full(k)).cloned(),
            })
            .collect())
    }

    async fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Pair>, StoreError> {
        if limit == 0 || start >= end {
            return Ok(Vec::new());
        }
        let fetch = u32::try_from(self.writes.fetch_limit(start, end, limit)).unwrap_or(u32::MAX);
        let range = self.db.full(start)..self.db.full(end);
        let endpoints = self.db.endpoints.clone();
        let pairs: Vec<tikv_client::KvPair> = match order {
            Order::Ascending => bounded(&endpoints, "scan", self.txn.scan(range, fetch))
                .await?
                .map(Iterator::collect),
            Order::Descending => bounded(&endpoints, "scan", self.txn.scan_reverse(range, fetch))
                .await?
                .map(Iterator::collect),
        }
        .map_err(|e| map_error(&endpoints, "scan failed", e))?;
        let n = self.db.prefix.len();
        let mut remote = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let (key, value): (tikv_client::Key, tikv_client::Value) = pair.into();
            let key: Vec<u8> = key.into();
            let short = key[n..].to_vec();
            self.reads.insert(key);
            remote.push((short, value));
        }
        Ok(self.writes.merge(start, end, remote, limit, order))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.delete(key);
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let TikvTxn {
            mut txn,
            db,
            reads,
            writes,
        } = *self;
        if writes.is_empty() {
            return Ok(());
        }
        let endpoints = db.endpoints.as_str();
        let failed = |e| map_error(endpoints, "commit failed", e);
        // Buffer the writes first (the first becomes the primary key), then lock what was
        // only read, so that a concurrent change of it conflicts.
        for (key, value) in writes.iter() {
            match value {
                Some(v) => txn.put(db.full(key), v.to_vec()).await,
                None => txn.delete(db.full(key)).await,
            }
            .map_err(failed)?;
        }
        let n = db.prefix.len();
        let read_only: Vec<Vec<u8>> = reads
            .into_iter()
            .filter(|full| !writes.contains(&full[n..]))
            .collect();
        if !read_only.is_empty() {
            txn.lock_keys(read_only).await.map_err(failed)?;
        }
        match bounded(endpoints, "commit", txn.commit()).await? {
            Ok(_) => Ok(()),
            Err(e) => {
                let undetermined = matches!(e, tikv_client::Error::UndeterminedError(_));
                if !undetermined {
                    // Release whatever prewrite locked before it failed, so that others need
                    // not wait for the locks' TTL. Best effort: TiKV resolves them anyway.
                    let _ = bounded(endpoints, "rollback", txn.rollback()).await;
                }
                Err(failed(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tikv_errors_map_to_conflict_or_unavailable() {
        let conflict = tikv_client::Error::KeyError(Box::new(tikv_client::ProtoKeyError {
            conflict: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map_error("pd:2379", "commit failed", conflict),
            StoreError::Conflict
        ));
        let nested = tikv_client::Error::MultipleKeyErrors(vec![tikv_client::Error::KeyError(
            Box::new(tikv_client::ProtoKeyError {
                retryable: "write conflict".into(),
                ..Default::default()
            }),
        )]);
        assert!(matches!(
            map_error("pd:2379", "commit failed", nested),
            StoreError::Conflict
        ));
        match map_error(
            "pd:2379",
            "commit failed",
            tikv_client::Error::StringError("connection refused".into()),
        ) {
            StoreError::Unavailable(m) => {
                assert!(m.contains("pd:2379"), "the message names PD: {m}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn connecting_to_a_refused_port_is_unavailable_and_names_the_endpoint() {
        // A port nothing listens on: bind one, note it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pd = format!("127.0.0.1:{port}");
        match TikvKv::connect(std::slice::from_ref(&pd), "/t/").await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains(&pd), "names {pd}: {m}"),
            Err(e) => panic!("expected Unavailable, got {e:?}"),
            Ok(_) => panic!("connected to {pd}, where nothing listens"),
        }
    }

    #[tokio::test]
    async fn a_pd_that_accepts_but_never_answers_times_out() {
        // Accepts TCP, never speaks: tikv-client alone would wait forever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pd = listener.local_addr().unwrap().to_string();
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        match TikvKv::connect(std::slice::from_ref(&pd), "/t/").await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains(&pd), "names {pd}: {m}"),
            Err(e) => panic!("expected Unavailable, got {e:?}"),
            Ok(_) => panic!("connected to a PD that never answers"),
        }
    }
}
