//! The key layout of the chat data model. Every key starts with a short table tag; ids are
//! `[A-Za-z0-9_-]` (never `/`), channel names `dm:a:b` / `g:id`, and numbers are big-endian
//! `u64` so that a channel's messages and a user's inbox are contiguous, ordered ranges.
//!
//! ```text
//! u/{user_id}                   -> UserRecord (JSON)
//! un/{username}                 -> user_id
//! c/{owner}/{contact}           -> ContactRecord (JSON)          owner's contact list
//! b/{owner}/{blocked}           -> blocked at ts (be64)          owner blocks blocked; written
//!                                                                by the owner of their one-on-one
//!                                                                channel's writer
//! g/{group_id}                  -> GroupRecord (JSON)
//! ug/{user_id}/{group_id}       -> ""                            the groups a user is in
//! cs/{channel}                  -> last seq (be64)               written by the first version only
//! m/{channel}/{seq:be64}        -> MessageRecord (binary)        the one copy of a message
//! is/{user_id}                  -> last inbox_id (be64)          written by the first version only
//! i/{user_id}/{inbox_id:be64}   -> InboxEntry (binary)          a pointer: channel + seq
//! d/{user_id}/{client_msg_id}   -> Ack (binary)                  durable send dedupe
//! cd/{channel}/{user_id}/{client_msg_id}
//!                               -> seq (be64)                    a cluster's send dedupe while the
//!                                                                sender's inbox is another node's
//! fence/{node_id}               -> epoch (be64)                  store::writer::fence
//! uc/{user_id}/{channel}        -> UserChannel (binary)          the user's channels: last item, read marker
//! uci/{user_id}                 -> inbox_id (be64)               the index accounts for the inbox up to it
//! dv/{user_id}/{device_id}      -> DeviceRecord (JSON)           cursor, last seen, push
//! ls/{user_id}                  -> last seen ts (be64)
//! sg/{user_id}/{device_id}      -> session generation (be64)     a token is valid only
//!                                                                 with the current one
//! rv/{ts_ms:be64}/{user_id}/{device_id}
//!                               -> new generation (be64)         revocation feed: every
//!                                                                 node closes the sockets
//! gc/{user_id}                  -> groups created (be64)         --max-groups-per-user
//! po/{due_ms:be64}/{channel}/{seq:be64}
//!                               -> OutboxEntry (JSON)            push outbox: one per message
//! pq/{due_ms:be64}/{user_id}/{device_id}/{inbox_id:be64}
//!                               -> PushJob (JSON)                one device's push, to (re)try
//! ```
//!
//! The binary records are described in `store/binary.rs`, the channel index and its
//! checkpoint in `store/index.rs`. The two push tables sort by due time first, so the push worker reads what is due with one
//! range scan from the start of the table (see `store/model/push.rs` and docs/push.md).

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            key.push(b'/');
        }
        key.extend_from_slice(p);
    }
    key
}

fn with_number(prefix: Vec<u8>, n: u64) -> Vec<u8> {
    let mut key = prefix;
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub fn user(user_id: &str) -> Vec<u8> {
    join(&[b"u", user_id.as_bytes()])
}
pub fn username(name: &str) -> Vec<u8> {
    join(&[b"un", name.as_bytes()])
}
pub fn contact(owner: &str, contact: &str) -> Vec<u8> {
    join(&[b"c", owner.as_bytes(), contact.as_bytes()])
}
/// `c/{owner}/`: all of owner's contacts.
pub fn contacts_of(owner: &str) -> Vec<u8> {
    join(&[b"c", owner.as_bytes(), b""])
}
pub fn block(owner: &str, blocked: &str) -> Vec<u8> {
    join(&[b"b", owner.as_bytes(), blocked.as_bytes()])
}
/// `b/{owner}/`: everyone owner blocks.
pub fn blocks_of(owner: &str) -> Vec<u8> {
    join(&[b"b", owner.as_bytes(), b""])
}
pub fn group(group_id: &str) -> Vec<u8> {
    join(&[b"g", group_id.as_bytes()])
}
pub fn user_group(user_id: &str, group_id: &str) -> Vec<u8> {
    join(&[b"ug", user_id.as_bytes(), group_id.as_bytes()])
}
pub fn groups_of(user_id: &str) -> Vec<u8> {
    join(&[b"ug", user_id.as_bytes(), b""])
}
/// `m/{channel}/`: the prefix of a channel's messages.
pub fn messages_of(channel: &str) -> Vec<u8> {
    join(&[b"m", channel.as_bytes(), b""])
}
pub fn message(channel: &str, seq: u64) -> Vec<u8> {
    with_number(messages_of(channel), seq)
}
pub fn inbox_seq(user_id: &str) -> Vec<u8> {
    join(&[b"is", user_id.as_bytes()])
}
/// `i/{user_id}/`: the prefix of a user's inbox.
pub fn inbox_of(user_id: &str) -> Vec<u8> {
    join(&[b"i", user_id.as_bytes(), b""])
}
pub fn inbox(user_id: &str, inbox_id: u64) -> Vec<u8> {
    with_number(inbox_of(user_id), inbox_id)
}
/// `uc/{user_id}/{channel}`: the user's entry in their channel index.
pub fn user_channel(user_id: &str, channel: &str) -> Vec<u8> {
    join(&[b"uc", user_id.as_bytes(), channel.as_bytes()])
}
/// `uci/{user_id}`: present once the user's channel index covers their whole inbox.
pub fn user_indexed(user_id: &str) -> Vec<u8> {
    join(&[b"uci", user_id.as_bytes()])
}
/// `uc/{user_id}/`: the user's channel index.
pub fn user_channels_of(user_id: &str) -> Vec<u8> {
    join(&[b"uc", user_id.as_bytes(), b""])
}
pub fn dedupe(user_id: &str, client_msg_id: &str) -> Vec<u8> {
    join(&[b"d", user_id.as_bytes(), client_msg_id.as_bytes()])
}
pub fn channel_dedupe(channel: &str, user_id: &str, client_msg_id: &str) -> Vec<u8> {
    join(&[
        b"cd",
        channel.as_bytes(),
        user_id.as_bytes(),
        client_msg_id.as_bytes(),
    ])
}
pub fn device(user_id: &str, device_id: &str) -> Vec<u8> {
    join(&[b"dv", user_id.as_bytes(), device_id.as_bytes()])
}
pub fn devices_of(user_id: &str) -> Vec<u8> {
    join(&[b"dv", user_id.as_bytes(), b""])
}
/// A device's last-seen time, apart from its record so that it is written without reading
/// the record (`store/model/seen.rs`).
pub fn device_seen(user_id: &str, device_id: &str) -> Vec<u8> {
    join(&[b"dl", user_id.as_bytes(), device_id.as_bytes()])
}
pub fn devices_seen_of(user_id: &str) -> Vec<u8> {
    join(&[b"dl", user_id.as_bytes(), b""])
}
pub fn last_seen(user_id: &str) -> Vec<u8> {
    join(&[b"ls", user_id.as_bytes()])
}

pub fn session_generation(user_id: &str, device_id: &str) -> Vec<u8> {
    join(&[b"sg", user_id.as_bytes(), device_id.as_bytes()])
}
pub fn groups_created(user_id: &str) -> Vec<u8> {
    join(&[b"gc", user_id.as_bytes()])
}
/// `rv/`: the revocation feed, ordered by time.
pub const REVOCATIONS: &[u8] = b"rv/";
/// The first key of the revocation feed at or after `ts_ms`.
pub fn revocations_from(ts_ms: i64) -> Vec<u8> {
    with_number(REVOCATIONS.to_vec(), ts_ms.max(0) as u64)
}
pub fn revocation(ts_ms: i64, user_id: &str, device_id: &str) -> Vec<u8> {
    let mut key = revocations_from(ts_ms);
    key.push(b'/');
    key.extend_from_slice(&join(&[user_id.as_bytes(), device_id.as_bytes()]));
    key
}
/// The time, user and device of a revocation key.
pub fn parse_revocation(key: &[u8]) -> Option<(i64, String, String)> {
    let ts = u64::from_be_bytes(key.get(3..11)?.try_into().ok()?) as i64;
    let rest = std::str::from_utf8(key.get(12..)?).ok()?;
    let (user, device) = rest.split_once('/')?;
    Some((ts, user.to_owned(), device.to_owned()))
}

/// `po/`: the push outbox, ordered by due time.
pub const PUSH_OUTBOX: &[u8] = b"po/";
/// `pq/`: the per-device push jobs, ordered by due time.
pub const PUSH_JOBS: &[u8] = b"pq/";

fn due_prefix(table: &[u8], due_ms: i64) -> Vec<u8> {
    with_number(table.to_vec(), due_ms.max(0) as u64)
}
/// The first key of `table` (`po/` or `pq/`) that is due after `due_ms`: scanning
/// `[table, due_end(table, now))` yields everything due at or before `now`.
pub fn due_end(table: &[u8], due_ms: i64) -> Vec<u8> {
    due_prefix(table, due_ms.saturating_add(1))
}
pub fn push_outbox(due_ms: i64, channel: &str, seq: u64) -> Vec<u8> {
    let mut key = due_prefix(PUSH_OUTBOX, due_ms);
    key.push(b'/');
    key.extend_from_slice(&with_number(join(&[channel.as_bytes(), b""]), seq));
    key
}
/// A push outbox entry written by the node that appended a channel's item to some members'
/// inboxes (a cluster's second stage): `po/{due}/{channel}/{seq}/{first recipient}`, so the
/// entries of one item from several nodes do not overwrite each other.
pub fn push_outbox_part(due_ms: i64, channel: &str, seq: u64, first_recipient: &str) -> Vec<u8> {
    let mut key = push_outbox(due_ms, channel, seq);
    key.push(b'/');
    key.extend_from_slice(first_recipient.as_bytes());
    key
}
pub fn push_job(due_ms: i64, user_id: &str, device_id: &str, inbox_id: u64) -> Vec<u8> {
    let mut key = due_prefix(PUSH_JOBS, due_ms);
    key.push(b'/');
    key.extend_from_slice(&with_number(
        join(&[user_id.as_bytes(), device_id.as_bytes(), b""]),
        inbox_id,
    ));
    key
}
/// The due time of a `po/` or `pq/` key.
pub fn due_of(key: &[u8]) -> Option<i64> {
    let bytes = key.get(3..11)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?) as i64)
}

/// The number at the end of a `m/…/{seq}` or `i/…/{id}` key.
pub fn trailing_number(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_and_prefixes_do_not_overlap() {
        assert!(message("dm:a:b", 2) < message("dm:a:b", 256));
        assert!(message("dm:a:b", 1).starts_with(&messages_of("dm:a:b")));
        assert!(!message("dm:a:bc", 1).starts_with(&messages_of("dm:a:b")));
        assert_eq!(trailing_number(&inbox("u1", 42)), Some(42));
    }

    #[test]
    fn revocation_keys_sort_by_time_and_parse_back() {
        let early = revocation(1_000, "u1", "phone");
        let late = revocation(2_000, "u0", "a.b-c");
        assert!(early < late && late >= revocations_from(2_000));
        assert_eq!(
            parse_revocation(&late),
            Some((2_000, "u0".into(), "a.b-c".into()))
        );
        assert_eq!(parse_revocation(b"rv/short"), None);
    }

    #[test]
    fn push_keys_sort_by_due_time_and_carry_it() {
        let early = push_outbox(1_000, "dm:b:c", 9);
        let late = push_outbox(256_000, "dm:a:b", 1);
        assert!(early < late);
        assert!(late < due_end(PUSH_OUTBOX, 256_000));
        assert!(late >= due_end(PUSH_OUTBOX, 255_999));
        assert_eq!(due_of(&late), Some(256_000));
        assert_eq!(trailing_number(&early), Some(9));
        let job = push_job(5, "u1", "phone", 7);
        assert!(job.starts_with(PUSH_JOBS));
        assert_eq!((due_of(&job), trailing_number(&job)), (Some(5), Some(7)));
    }
}
