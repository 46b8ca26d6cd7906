//! Read markers (at the owner of the reader's inbox, whose channel index holds them) and
//! blocks (at the owner of the two users' one-on-one channel, which refuses the blocked
//! user's sends from memory).
//!
//! A marker never moves back, and a `seq` past the newest item the user's inbox holds of the
//! channel is taken as that item. A marker moved is written at once with the batch (the
//! user's channel entry), so it is durable when answered, unlike the rest of the index,
//! which is written behind the inbox. The entry's `unread` counts the plain messages and
//! system items after the marker: a marker moved to the newest item leaves none; one that
//! stops short needs to know which items it passes count ([`ReadOutcome::NeedCount`]), which
//! the caller reads from the channel outside the writer and hands back ([`Counted`]).

use super::apply::BatchBuilder;
use super::op::{BlockOp, Counted, ReadOp, ReadOutcome, WriteError};
use super::units::Units;
use crate::protocol::ApiError;
use crate::protocol::validate::Channel;
use crate::store::keys;

/// Move `op.user`'s marker of `op.channel`.
pub(super) fn read(
    units: &mut Units,
    batch: &mut BatchBuilder,
    op: ReadOp,
) -> Result<ReadOutcome, WriteError> {
    let index = units
        .inboxes
        .get_mut(&op.user)
        .ok_or_else(|| ApiError::internal(format!("the inbox of {} was not loaded", op.user)))?;
    let entry = index.entry(&op.channel).ok_or_else(|| {
        ApiError::internal(format!("the channel entry of {} was not loaded", op.user))
    })?;
    let read = entry.read_seq;
    let seq = op.seq.min(entry.last_seq);
    if seq <= read {
        return Ok(ReadOutcome::Unchanged { seq: read });
    }
    if seq < entry.last_seq {
        let Some(counted) = &op.counted else {
            return Ok(ReadOutcome::NeedCount {
                from: read,
                to: seq,
            });
        };
        entry.unread = entry.unread.saturating_sub(passed(counted, read, seq));
    } else {
        entry.unread = 0;
    }
    entry.read_seq = seq;
    let value = entry.encode();
    batch
        .batch
        .put(keys::user_channel(&op.user, &op.channel), value);
    Ok(ReadOutcome::Moved { seq })
}

/// How many counted items a marker passes moving from `read` to `seq`: those `counted`
/// names, and every item of `(read, seq]` it does not cover (taken as counted).
fn passed(counted: &Counted, read: u64, seq: u64) -> u64 {
    let known = counted
        .seqs
        .iter()
        .filter(|s| **s > read && **s <= seq)
        .count() as u64;
    let uncovered_before = counted.from.min(seq).saturating_sub(read);
    let uncovered_after = seq.saturating_sub(counted.to.max(read));
    known + uncovered_before + uncovered_after
}

/// `op.user` blocks (or unblocks) `op.target`; returns whether that changed anything.
pub(super) fn block(
    units: &mut Units,
    batch: &mut BatchBuilder,
    op: BlockOp,
) -> Result<bool, WriteError> {
    let name = Channel::direct(&op.user, &op.target).to_string();
    if let Some(e) = units.missing.get(&name) {
        return Err(e.clone().into());
    }
    let state = units
        .channels
        .get_mut(&name)
        .ok_or_else(|| ApiError::internal(format!("channel {name} was not loaded")))?;
    let blocks = state.blocked.contains(&op.user);
    if blocks == op.block {
        return Ok(false);
    }
    let key = keys::block(&op.user, &op.target);
    if op.block {
        state.blocked.push(op.user);
        batch.batch.put(key, op.ts.to_be_bytes().to_vec());
    } else {
        state.blocked.retain(|u| *u != op.user);
        batch.batch.delete(key);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_passes_the_counted_items_and_takes_the_uncovered_as_counted() {
        let c = Counted {
            from: 10,
            to: 20,
            seqs: vec![12, 15, 19],
        };
        assert_eq!(passed(&c, 10, 15), 2);
        assert_eq!(passed(&c, 12, 19), 2);
        assert_eq!(passed(&c, 8, 12), 2 + 1, "9 and 10 are not covered");
        assert_eq!(passed(&c, 15, 22), 1 + 2, "21 and 22 are not covered");
    }
}
