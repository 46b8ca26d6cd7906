//! Binary encodings of the records the write path writes for every message: the message
//! itself, each inbox pointer, the send's dedupe record (its ack). JSON costs more to write
//! and read than the rest of a send's store work, so these are packed: a version byte, fixed
//! big-endian numbers, length-prefixed strings. The first version stored them as JSON; a
//! record whose first byte is `{` is read as such.
//!
//! ```text
//! message  1 | ts be64 | from | from_device | client_msg_id | extras | text…
//!          2 | ts be64 | from | from_device | client_msg_id | extras (be32 length) | text…
//! pointer  1 | flags u8 (1: the user sent it, 2: not unread) | seq be64 | ts be64 | channel…
//! ack      1 | seq be64 | inbox_id be64 | ts be64 | channel | client_msg_id…
//! ```
//! A string is a be16 length and its UTF-8 bytes; the last field of each runs to the end.
//! `extras` is a JSON object of the less common fields ([`super::records::Extras`]: an
//! item's kind and target, a reply's target, a message's edits, deletion and reactions);
//! a plain message has none and is written as version 1 (no bytes of extras), anything
//! else as version 2, whose longer length field holds the reactions of a whole group.

use std::borrow::Cow;

use super::StoreError;
use super::records::{InboxEntry, MessageRecord, MessageView};
use crate::protocol::types::Ack;

const V1: u8 = 1;
/// A message record with extras (a be32 length).
const V2: u8 = 2;

/// Pointer flags.
const OWN: u8 = 1;
const QUIET: u8 = 2;

fn corrupt(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    }
}

/// A reader over a record's bytes that fails naming the record.
struct Fields<'k, 'a> {
    key: &'k [u8],
    rest: &'a [u8],
}

impl<'a> Fields<'_, 'a> {
    fn u8(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| corrupt(self.key, "a record ends early"))?;
        self.rest = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        if self.rest.len() < 8 {
            return Err(corrupt(self.key, "a record ends early"));
        }
        let (n, rest) = self.rest.split_at(8);
        self.rest = rest;
        Ok(u64::from_be_bytes(n.try_into().unwrap_or_default()))
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        if self.rest.len() < 2 {
            return Err(corrupt(self.key, "a record ends early"));
        }
        let len = usize::from(u16::from_be_bytes([self.rest[0], self.rest[1]]));
        let rest = &self.rest[2..];
        if rest.len() < len {
            return Err(corrupt(self.key, "a record ends early"));
        }
        let (s, rest) = rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(s).map_err(|_| corrupt(self.key, "a string is not UTF-8"))
    }

    /// A be32-length string.
    fn long_str(&mut self) -> Result<&'a str, StoreError> {
        if self.rest.len() < 4 {
            return Err(corrupt(self.key, "a record ends early"));
        }
        let len =
            u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]) as usize;
        let rest = &self.rest[4..];
        if rest.len() < len {
            return Err(corrupt(self.key, "a record ends early"));
        }
        let (s, rest) = rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(s).map_err(|_| corrupt(self.key, "a string is not UTF-8"))
    }

    fn tail(&mut self) -> Result<&'a str, StoreError> {
        let s = std::str::from_utf8(self.rest)
            .map_err(|_| corrupt(self.key, "a string is not UTF-8"))?;
        self.rest = &[];
        Ok(s)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Ids and channel names are far below 64 KiB (validated at the edge); cut, never wrap.
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl MessageRecord {
    pub fn encode(&self) -> Vec<u8> {
        let extras = if self.extras.is_empty() {
            Vec::new()
        } else {
            super::records::encode(&self.extras)
        };
        let mut out = Vec::with_capacity(
            26 + self.from.len()
                + self.from_device.len()
                + self.client_msg_id.len()
                + extras.len()
                + self.text.len(),
        );
        out.push(if extras.is_empty() { V1 } else { V2 });
        out.extend_from_slice(&self.ts.to_be_bytes());
        put_str(&mut out, &self.from);
        put_str(&mut out, &self.from_device);
        put_str(&mut out, &self.client_msg_id);
        if extras.is_empty() {
            put_str(&mut out, "");
        } else {
            out.extend_from_slice(&(extras.len() as u32).to_be_bytes());
            out.extend_from_slice(&extras);
        }
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        MessageView::decode(key, bytes).map(MessageView::into_owned)
    }
}

impl<'a> MessageView<'a> {
    /// Read a message record in place (its strings borrow `bytes`).
    pub fn decode(key: &[u8], bytes: &'a [u8]) -> Result<Self, StoreError> {
        match bytes.first() {
            Some(b'{') => super::records::decode::<MessageRecord>(key, bytes).map(Self::from),
            Some(&version) if version == V1 || version == V2 => {
                let mut f = Fields {
                    key,
                    rest: &bytes[1..],
                };
                let ts = f.u64()? as i64;
                let from = Cow::Borrowed(f.str()?);
                let from_device = Cow::Borrowed(f.str()?);
                let client_msg_id = Cow::Borrowed(f.str()?);
                let extras = if version == V1 {
                    f.str()?
                } else {
                    f.long_str()?
                };
                let extras = if extras.is_empty() {
                    super::records::Extras::default()
                } else {
                    super::records::decode(key, extras.as_bytes())?
                };
                let text = Cow::Borrowed(f.tail()?);
                Ok(Self {
                    from,
                    from_device,
                    client_msg_id,
                    text,
                    ts,
                    extras,
                })
            }
            _ => Err(corrupt(key, "not a message record")),
        }
    }
}

impl InboxEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.channel.len());
        out.push(V1);
        out.push(if self.own { OWN } else { 0 } | if self.quiet { QUIET } else { 0 });
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(self.channel.as_bytes());
        out
    }

    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let (channel, seq, ts, flags) = pointer_fields(key, bytes)?;
        Ok(Self {
            channel: channel.into_owned(),
            seq,
            ts,
            own: flags & OWN != 0,
            quiet: flags & QUIET != 0,
        })
    }

    /// Only the channel and seq a pointer points at, the channel borrowed from `bytes`.
    pub fn decode_target<'a>(
        key: &[u8],
        bytes: &'a [u8],
    ) -> Result<(Cow<'a, str>, u64), StoreError> {
        pointer_fields(key, bytes).map(|(channel, seq, _, _)| (channel, seq))
    }
}

/// A pointer's channel, seq, time and flags.
fn pointer_fields<'a>(
    key: &[u8],
    bytes: &'a [u8],
) -> Result<(Cow<'a, str>, u64, i64, u8), StoreError> {
    match bytes.first() {
        // The first version's pointer: channel and seq only. Its items count as read.
        Some(b'{') => {
            #[derive(serde::Deserialize)]
            struct Old {
                channel: String,
                seq: u64,
            }
            let old: Old = super::records::decode(key, bytes)?;
            Ok((Cow::Owned(old.channel), old.seq, 0, OWN))
        }
        Some(&V1) => {
            let mut f = Fields {
                key,
                rest: &bytes[1..],
            };
            let flags = f.u8()?;
            let seq = f.u64()?;
            let ts = f.u64()? as i64;
            Ok((Cow::Borrowed(f.tail()?), seq, ts, flags))
        }
        _ => Err(corrupt(key, "not an inbox pointer")),
    }
}

/// A send's dedupe record: its ack.
pub fn encode_ack(ack: &Ack) -> Vec<u8> {
    let mut out = Vec::with_capacity(27 + ack.channel.len() + ack.client_msg_id.len());
    out.push(V1);
    out.extend_from_slice(&ack.seq.to_be_bytes());
    out.extend_from_slice(&ack.inbox_id.to_be_bytes());
    out.extend_from_slice(&ack.ts.to_be_bytes());
    put_str(&mut out, &ack.channel);
    out.extend_from_slice(ack.client_msg_id.as_bytes());
    out
}

pub fn decode_ack(key: &[u8], bytes: &[u8]) -> Result<Ack, StoreError> {
    match bytes.first() {
        Some(b'{') => super::records::decode(key, bytes),
        Some(&V1) => {
            let mut f = Fields {
                key,
                rest: &bytes[1..],
            };
            let seq = f.u64()?;
            let inbox_id = f.u64()?;
            let ts = f.u64()? as i64;
            let channel = f.str()?.to_owned();
            let client_msg_id = f.tail()?.to_owned();
            Ok(Ack {
                client_msg_id,
                channel,
                seq,
                inbox_id,
                ts,
            })
        }
        _ => Err(corrupt(key, "not a dedupe record")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_the_first_versions_json_still_reads() {
        let m = MessageRecord {
            from: "u1".into(),
            from_device: "phone".into(),
            client_msg_id: "c-1".into(),
            text: "héllo {\"x\"}".into(),
            ts: 1_700_000_000_000,
            extras: Default::default(),
        };
        assert_eq!(m.encode()[0], V1, "a plain message is written as before");
        let back = MessageRecord::decode(b"m/x", &m.encode()).unwrap();
        assert_eq!(
            (
                back.from,
                back.from_device,
                back.client_msg_id,
                back.text,
                back.ts
            ),
            (
                m.from.clone(),
                m.from_device.clone(),
                m.client_msg_id.clone(),
                m.text.clone(),
                m.ts
            )
        );
        let json = br#"{"from":"a","from_device":"d","client_msg_id":"c","text":"t","ts":5}"#;
        assert_eq!(MessageRecord::decode(b"m/x", json).unwrap().text, "t");

        let p = InboxEntry {
            channel: "dm:a:b".into(),
            seq: 9,
            ts: 77,
            own: true,
            quiet: true,
        };
        let back = InboxEntry::decode(b"i/x", &p.encode()).unwrap();
        assert_eq!(back, p);
        let plain = InboxEntry { quiet: false, ..p };
        assert_eq!(
            plain.encode()[1],
            OWN,
            "a plain pointer's flags are as before"
        );
        let old = InboxEntry::decode(b"i/x", br#"{"channel":"g:x","seq":3}"#).unwrap();
        assert_eq!((old.channel.as_str(), old.seq, old.ts), ("g:x", 3, 0));

        let ack = Ack {
            client_msg_id: "c-9".into(),
            channel: "g:x".into(),
            seq: 4,
            inbox_id: 12,
            ts: 99,
        };
        assert_eq!(decode_ack(b"d/x", &encode_ack(&ack)).unwrap(), ack);
        let json = serde_json::to_vec(&ack).unwrap();
        assert_eq!(decode_ack(b"d/x", &json).unwrap(), ack);
        assert!(MessageRecord::decode(b"m/x", &[1, 0, 0]).is_err());
    }

    #[test]
    fn extras_of_any_size_round_trip() {
        use crate::protocol::timeline::{ItemKind, Reactions};
        let mut reactions = Reactions::default();
        for i in 0..4_000 {
            reactions.add(&format!("e{}", i % 40), &format!("user-{i:0>20}"));
        }
        let m = MessageRecord {
            from: "u1".into(),
            from_device: "d".into(),
            client_msg_id: "c".into(),
            text: "edited".into(),
            ts: 5,
            extras: super::super::records::Extras {
                kind: None,
                reply_to: Some(2),
                edited_at: Some(9),
                reactions,
                edits: vec![4, 7],
                ..Default::default()
            },
        };
        let bytes = m.encode();
        assert_eq!(bytes[0], V2);
        assert!(
            bytes.len() > 64 * 1024,
            "larger than a be16 length could hold"
        );
        let back = MessageRecord::decode(b"m/x", &bytes).unwrap();
        assert_eq!(back.extras, m.extras);
        assert_eq!(back.text, "edited");
        let reaction = MessageRecord {
            extras: super::super::records::Extras {
                kind: Some(ItemKind::Reaction),
                target_seq: Some(1),
                remove: true,
                ..Default::default()
            },
            ..m
        };
        let back = MessageRecord::decode(b"m/x", &reaction.encode()).unwrap();
        assert_eq!(back.extras, reaction.extras);
        assert!(!back.is_plain());
    }
}
