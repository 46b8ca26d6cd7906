//! Fencing: in a cluster, every counter has one owner node at a time, and a node that lost a
//! unit must never write it again, even if it does not know yet (a stale view, a pause, an
//! etcd partition).
//!
//! Ownership is computed from the membership view (rendezvous hashing, like users), and
//! every view change that moves ownership has an **epoch**: the etcd revision of the change.
//! Each node has a fence key in the store (`fence/{node_id}`, the lowest epoch that node may
//! still write under), and applies every batch under a [`Guard`] that its fence key holds
//! the value it read. A node that adopts a new epoch first raises every other node's fence
//! to that epoch (one transaction), then reads its own, and only then loads state and
//! writes. So a node still working under an older view finds its guard broken at its next
//! batch and writes nothing; and the adopting node loads state after the fence, so it sees
//! everything the old owner committed before it.
//!
//! A node whose own fence was raised past its epoch has an older view than someone else:
//! it answers its operations `unavailable` until its view has caught up, then adopts the
//! fence's epoch (never a higher one of its own, so two nodes cannot raise each other's
//! fences for ever).

use std::sync::Arc;

use crate::protocol::ApiError;
use crate::store::records::{decode_u64, encode_u64};
use crate::store::{Guard, Kv, Order, StoreError, prefix_end};

/// `fence/`: every node's fence.
const FENCES: &[u8] = b"fence/";

/// `fence/{node_id}`.
pub fn fence_key(node_id: &str) -> Vec<u8> {
    let mut key = FENCES.to_vec();
    key.extend_from_slice(node_id.as_bytes());
    key
}

/// Who owns what, as the cluster's membership view says (implemented by `cluster`).
pub trait Ownership: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;
    /// The current view, as one consistent snapshot.
    fn current(&self) -> Arc<dyn OwnershipView>;
}

/// One snapshot of the membership view, as ownership needs it.
pub trait OwnershipView: Send + Sync {
    /// The view's epoch: the etcd revision of the last change that moved ownership.
    fn epoch(&self) -> u64;
    /// The etcd revision the view is current at: every change up to it is in the view.
    fn revision(&self) -> u64;
    /// The node that owns `unit` (a channel name or a user id); `None`: this node.
    fn owner(&self, unit: &str) -> Option<&str>;
    /// The other nodes of the view.
    fn peers(&self) -> Vec<String>;
}

/// A node's standing to write: the view epoch it adopted, the epoch it writes under (the
/// view's, or a newer one another node fenced it at once this node's view caught up with
/// it), and the guard its batches carry.
#[derive(Debug, Clone)]
pub(super) struct Standing {
    pub view_epoch: u64,
    pub epoch: u64,
    pub guard: Guard,
}

/// Adopt `view`: raise the fence of every other node (the view's peers and every node that
/// ever had a fence) to at least its epoch, make sure this node has one, and read it back.
/// A fence of this node's past the view's epoch is taken as the epoch when the view is
/// current up to it (another node adopted a listing at that revision), else this node's
/// view is behind: `Err(fence)`.
pub(super) async fn adopt(
    kv: &dyn Kv,
    node_id: &str,
    view: &dyn OwnershipView,
) -> Result<Result<Standing, u64>, ApiError> {
    let me = fence_key(node_id);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut txn = kv.begin().await?;
        let mut fences = txn
            .scan(FENCES, &prefix_end(FENCES), 100_000, Order::Ascending)
            .await?;
        for peer in view.peers() {
            let key = fence_key(&peer);
            if !fences.iter().any(|(k, _)| *k == key) {
                fences.push((key, encode_u64(0).to_vec()));
            }
        }
        let mine = fences
            .iter()
            .find(|(k, _)| *k == me)
            .map(|(k, v)| decode_u64(k, v))
            .transpose()?;
        let mut epoch = view.epoch();
        if let Some(mine) = mine
            && mine > epoch
        {
            if mine > view.revision() {
                return Ok(Err(mine));
            }
            // Never a higher epoch of this node's own: nodes cannot raise each other for ever.
            epoch = mine;
        }
        for (key, value) in &fences {
            if *key == me {
                continue;
            }
            let current = decode_u64(key, value)?;
            if current < epoch {
                txn.put(key, &encode_u64(epoch));
            }
        }
        let own = mine.unwrap_or(0).max(epoch);
        if mine != Some(own) {
            txn.put(&me, &encode_u64(own));
        }
        match txn.commit().await {
            Ok(()) => {
                return Ok(Ok(Standing {
                    view_epoch: view.epoch(),
                    epoch,
                    guard: Guard {
                        key: me,
                        expected: Some(encode_u64(own).to_vec()),
                    },
                }));
            }
            // Two nodes adopting at once: read the fences again.
            Err(StoreError::Conflict) if attempt < 20 => {
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// This node's fence as the store holds it now.
pub(super) async fn read_own(kv: &dyn Kv, node_id: &str) -> Result<u64, ApiError> {
    let key = fence_key(node_id);
    match kv
        .get_many(std::slice::from_ref(&key))
        .await?
        .pop()
        .flatten()
    {
        Some(bytes) => Ok(decode_u64(&key, &bytes)?),
        None => Ok(0),
    }
}

/// Shared handle on the ownership view.
pub type SharedOwnership = Arc<dyn Ownership>;
