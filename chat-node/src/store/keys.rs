//! The key layout of the chat data model. Every key starts with a short table tag; ids are
//! `[A-Za-z0-9_-]` (never `/`), channel names `dm:a:b` / `g:id`, and numbers are big-endian
//! `u64` so that a channel's messages and a user's inbox are contiguous, ordered ranges.
//!
//! ```text
//! u/{user_id}                   -> UserRecord (JSON)
//! un/{username}                 -> user_id
//! c/{owner}/{contact}           -> ContactRecord (JSON)          owner's contact list
//! g/{group_id}                  -> GroupRecord (JSON)
//! ug/{user_id}/{group_id}       -> ""                            the groups a user is in
//! cs/{channel}                  -> last seq (be64)
//! m/{channel}/{seq:be64}        -> MessageRecord (JSON)          the one copy of a message
//! is/{user_id}                  -> last inbox_id (be64)
//! i/{user_id}/{inbox_id:be64}   -> InboxEntry (JSON)            a pointer: channel + seq
//! d/{user_id}/{client_msg_id}   -> Ack (JSON)                    durable send dedupe
//! dv/{user_id}/{device_id}      -> DeviceRecord (JSON)           cursor, last seen, push
//! ls/{user_id}                  -> last seen ts (be64)
//! ```

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
pub fn group(group_id: &str) -> Vec<u8> {
    join(&[b"g", group_id.as_bytes()])
}
pub fn user_group(user_id: &str, group_id: &str) -> Vec<u8> {
    join(&[b"ug", user_id.as_bytes(), group_id.as_bytes()])
}
pub fn groups_of(user_id: &str) -> Vec<u8> {
    join(&[b"ug", user_id.as_bytes(), b""])
}
pub fn channel_seq(channel: &str) -> Vec<u8> {
    join(&[b"cs", channel.as_bytes()])
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
pub fn dedupe(user_id: &str, client_msg_id: &str) -> Vec<u8> {
    join(&[b"d", user_id.as_bytes(), client_msg_id.as_bytes()])
}
pub fn device(user_id: &str, device_id: &str) -> Vec<u8> {
    join(&[b"dv", user_id.as_bytes(), device_id.as_bytes()])
}
pub fn devices_of(user_id: &str) -> Vec<u8> {
    join(&[b"dv", user_id.as_bytes(), b""])
}
pub fn last_seen(user_id: &str) -> Vec<u8> {
    join(&[b"ls", user_id.as_bytes()])
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
}
