//! The timeline mix of the `mixed` scenario: besides sends, a socket edits its own latest
//! message, reacts to (and takes back reactions on) the latest message it received, and
//! moves its read marker to the newest item it saw. Which one each due operation is comes
//! from a fixed sequence (the counter times the golden ratio), so two runs offer the same
//! mix. An edit or reaction whose target is not known yet is sent as a message instead.
//!
//! Edits, reactions and sends are acked and delivered like messages; a `read` has no answer
//! (its `read` frames, to every member's devices, are counted apart).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::json;

use crate::ws;

/// Reaction emojis, cycled; each is given and then taken back.
const EMOJIS: [&str; 5] = ["👍", "❤️", "😂", "🎉", "😮"];
/// The node refuses more edits of one message than this; the mix sends a message instead.
const MAX_EDITS: u64 = 90;

/// The shares of the offered operations, in percent (the rest are sends).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    pub edit_pct: u8,
    pub react_pct: u8,
    pub read_pct: u8,
}

/// What one due operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Send,
    Edit(u64),
    React {
        seq: u64,
        emoji: &'static str,
        remove: bool,
    },
    Read(u64),
}

/// What a socket knows of its channel, shared by its reader (which learns) and its writer
/// (which picks targets). 0: nothing yet.
#[derive(Debug, Default)]
pub struct Seen {
    /// The seq of this socket's latest acked message (a plain send).
    pub own: AtomicU64,
    /// Edits made of `own`.
    pub own_edits: AtomicU64,
    /// The seq of the latest message received from the peer.
    pub peer: AtomicU64,
    /// The newest seq seen in the channel.
    pub newest: AtomicU64,
}

impl Seen {
    /// An ack arrived for `cmid` (which carries its kind, [`cmid`]) at `seq`.
    pub fn acked(&self, cmid: &str, seq: u64) {
        if cmid.starts_with('m') && seq > self.own.load(Relaxed) {
            self.own.store(seq, Relaxed);
            self.own_edits.store(0, Relaxed);
        }
        self.newest.fetch_max(seq, Relaxed);
    }

    /// A `message` frame arrived: `plain` when it has no `kind`.
    pub fn received(&self, seq: u64, plain: bool) {
        if plain {
            self.peer.fetch_max(seq, Relaxed);
        }
        self.newest.fetch_max(seq, Relaxed);
    }
}

/// The operation for the socket's `n`-th due send.
pub fn pick(mix: &Mix, n: u64, seen: &Seen) -> Op {
    let roll = ((n as f64 * 0.618_033_988_75).fract() * 100.0) as u8;
    let (edit, react, read) = (mix.edit_pct, mix.react_pct, mix.read_pct);
    if roll < edit {
        let own = seen.own.load(Relaxed);
        if own > 0 && seen.own_edits.fetch_add(1, Relaxed) < MAX_EDITS {
            return Op::Edit(own);
        }
    } else if roll < edit.saturating_add(react) {
        let peer = seen.peer.load(Relaxed);
        if peer > 0 {
            let emoji = EMOJIS[(n % EMOJIS.len() as u64) as usize];
            let remove = (n / EMOJIS.len() as u64) % 2 == 1;
            return Op::React {
                seq: peer,
                emoji,
                remove,
            };
        }
    } else if roll < edit.saturating_add(react).saturating_add(read) {
        let newest = seen.newest.load(Relaxed);
        if newest > 0 {
            return Op::Read(newest);
        }
    }
    Op::Send
}

/// A `client_msg_id` that says what it is (`m` message, `e` edit, `r` reaction) and carries
/// its send time ([`ws::stamped_cmid`]).
pub fn cmid(op: &Op, conn: usize, n: u64, ns: u64) -> String {
    let kind = match op {
        Op::Edit(_) => 'e',
        Op::React { .. } => 'r',
        Op::Send | Op::Read(_) => 'm',
    };
    format!("{kind}{}", ws::stamped_cmid(conn, n, ns))
}

/// The frame of an operation other than a send, to `channel`.
pub fn frame(op: &Op, channel: &str, cmid: &str, text: &str) -> Option<String> {
    Some(match *op {
        Op::Send => return None,
        Op::Edit(seq) => {
            json!({"type": "edit", "client_msg_id": cmid, "channel": channel, "seq": seq, "text": text})
        }
        Op::React { seq, emoji, remove } => {
            json!({"type": "react", "client_msg_id": cmid, "channel": channel, "seq": seq, "emoji": emoji, "remove": remove})
        }
        Op::Read(seq) => json!({"type": "read", "channel": channel, "seq": seq}),
    }
    .to_string())
}

/// The one-on-one channel of two users.
pub fn dm(a: &str, b: &str) -> String {
    if a <= b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_its_shares_once_targets_are_known() {
        let mix = Mix {
            edit_pct: 10,
            react_pct: 20,
            read_pct: 20,
        };
        let seen = Seen::default();
        assert!(
            (0..100).all(|n| pick(&mix, n, &seen) == Op::Send),
            "no target yet: sends"
        );
        seen.acked("m1.2.3", 4);
        seen.received(5, true);
        let ops: Vec<Op> = (0..1000).map(|n| pick(&mix, n, &seen)).collect();
        let count = |f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
        assert!((80..=120).contains(&count(|o| matches!(o, Op::Edit(4)))));
        assert!((180..=220).contains(&count(|o| matches!(o, Op::React { seq: 5, .. }))));
        assert!((180..=220).contains(&count(|o| matches!(o, Op::Read(5)))));
        assert!(cmid(&Op::Edit(4), 1, 2, 3).starts_with('e'));
        assert_eq!(ws::read_cmid_stamp(&cmid(&Op::Edit(4), 1, 2, 77)), Some(77));
    }
}
