//! Contacts: a one-way list per user; presence flows only between mutual contacts of whom
//! neither blocks the other. Blocks (`b/{owner}/{blocked}`) are written by the write path
//! (`store::writer`, at the owner of the two users' one-on-one channel) and read here.

use super::{ChatStore, get_json};
use crate::protocol::ApiError;
use crate::store::records::{ContactRecord, UserRecord, decode_u64, encode};
use crate::store::{KvTxn, Order, keys, prefix_end};

/// Most contacts a user may have (bounds every contact scan).
pub const MAX_CONTACTS: usize = 10_000;
/// Most blocks listed for one user (bounds the block scan).
pub const MAX_BLOCKS: usize = 10_000;

/// A contact as the owner sees it.
#[derive(Debug, Clone)]
pub struct ContactView {
    pub user: UserRecord,
    pub mutual: bool,
    pub last_seen: Option<i64>,
    /// The owner blocks this contact.
    pub blocked: bool,
    /// One of the two blocks the other: no presence either way.
    pub hidden: bool,
}

impl ChatStore {
    /// Add `contact` to `owner`'s list (idempotent); 404 if no such user.
    pub async fn add_contact(&self, owner: &str, contact: &str, now: i64) -> Result<(), ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                if txn.get(&keys::user(contact)).await?.is_none() {
                    return Err(ApiError::not_found(format!("no user has the id {contact:?}")));
                }
                if txn.get(&keys::contact(owner, contact)).await?.is_none() {
                    let prefix = keys::contacts_of(owner);
                    let existing = txn.scan(&prefix, &prefix_end(&prefix), MAX_CONTACTS, Order::Ascending).await?;
                    if existing.len() >= MAX_CONTACTS {
                        return Err(ApiError::bad_request(format!(
                            "you already have {MAX_CONTACTS} contacts, the most allowed; remove some first"
                        )));
                    }
                    txn.put(&keys::contact(owner, contact), &encode(&ContactRecord { added_at: now }));
                }
                Ok(())
            })
        })
        .await
    }

    /// Remove `contact` from `owner`'s list (idempotent).
    pub async fn remove_contact(&self, owner: &str, contact: &str) -> Result<(), ApiError> {
        self.write(|txn, _| {
            Box::pin(async move {
                txn.delete(&keys::contact(owner, contact));
                Ok(())
            })
        })
        .await
    }

    /// Whether `a` and `b` share presence: `a` has `b`, `b` has `a`, and neither blocks
    /// the other.
    pub async fn are_mutual(&self, a: &str, b: &str) -> Result<bool, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                Ok(txn.get(&keys::contact(a, b)).await?.is_some()
                    && txn.get(&keys::contact(b, a)).await?.is_some()
                    && txn.get(&keys::block(a, b)).await?.is_none()
                    && txn.get(&keys::block(b, a)).await?.is_none())
            })
        })
        .await
    }

    /// The ids of `owner`'s mutual contacts who share presence with them (neither blocks
    /// the other).
    pub async fn mutual_contacts(&self, owner: &str) -> Result<Vec<String>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let blocks = block_ids(txn, owner).await?;
                let mut mutual = Vec::new();
                for id in contact_ids(txn, owner).await? {
                    if !blocks.contains(&id)
                        && txn.get(&keys::contact(&id, owner)).await?.is_some()
                        && txn.get(&keys::block(&id, owner)).await?.is_none()
                    {
                        mutual.push(id);
                    }
                }
                Ok(mutual)
            })
        })
        .await
    }

    /// Everyone `owner` blocks, in id order.
    pub async fn blocks_of(&self, owner: &str) -> Result<Vec<String>, ApiError> {
        self.read(|txn, _| Box::pin(async move { block_ids(txn, owner).await }))
            .await
    }

    /// Whether `owner` blocks `other`.
    pub async fn blocks(&self, owner: &str, other: &str) -> Result<bool, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move { Ok(txn.get(&keys::block(owner, other)).await?.is_some()) })
        })
        .await
    }

    /// `owner`'s contacts with their profiles, mutuality and last-seen time (pending included).
    pub async fn contacts(&self, owner: &str) -> Result<Vec<ContactView>, ApiError> {
        self.read(|txn, _| {
            Box::pin(async move {
                let blocks = block_ids(txn, owner).await?;
                let mut out = Vec::new();
                for id in contact_ids(txn, owner).await? {
                    let Some(user) = get_json::<UserRecord>(txn, &keys::user(&id)).await? else {
                        continue;
                    };
                    let mutual = txn.get(&keys::contact(&id, owner)).await?.is_some();
                    let key = keys::last_seen(&id);
                    let stored = match txn.get(&key).await? {
                        Some(v) => Some(decode_u64(&key, &v)? as i64),
                        None => None,
                    };
                    let last_seen = stored.max(self.seen.user(&id));
                    let blocked = blocks.contains(&id);
                    let hidden = blocked || txn.get(&keys::block(&id, owner)).await?.is_some();
                    out.push(ContactView {
                        user,
                        mutual,
                        last_seen,
                        blocked,
                        hidden,
                    });
                }
                Ok(out)
            })
        })
        .await
    }
}

async fn contact_ids(txn: &mut dyn KvTxn, owner: &str) -> Result<Vec<String>, ApiError> {
    let prefix = keys::contacts_of(owner);
    let pairs = txn
        .scan(
            &prefix,
            &prefix_end(&prefix),
            MAX_CONTACTS,
            Order::Ascending,
        )
        .await?;
    Ok(pairs
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}

async fn block_ids(txn: &mut dyn KvTxn, owner: &str) -> Result<Vec<String>, ApiError> {
    let prefix = keys::blocks_of(owner);
    let pairs = txn
        .scan(&prefix, &prefix_end(&prefix), MAX_BLOCKS, Order::Ascending)
        .await?;
    Ok(pairs
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}
