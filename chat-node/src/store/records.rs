//! The values stored under the keys of [`super::keys`], as JSON.

use std::borrow::Cow;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;
use crate::protocol::timeline::{ItemKind, Reactions, SystemEvent};
use crate::protocol::types::{Group, Message, Profile, PushRegistration};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    pub created_at: i64,
    /// The user's home region (PROTOCOL.md, "Placement"). Records written before regions
    /// existed have none: their home is the default region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl UserRecord {
    /// The home region, the default one for records that have none.
    pub fn home_region(&self) -> &str {
        self.region
            .as_deref()
            .unwrap_or(parley_cluster_contract::DEFAULT_REGION)
    }

    /// The public profile, as other users see it (no home region: where someone's data
    /// lives is theirs to know).
    pub fn profile(&self) -> Profile {
        Profile {
            user_id: self.user_id.clone(),
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            region: None,
        }
    }

    /// The user's own profile (sign-up answer, `/v1/users/me`), with the home region.
    pub fn own_profile(&self) -> Profile {
        Profile {
            region: Some(self.home_region().to_owned()),
            ..self.profile()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContactRecord {
    pub added_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group_id: String,
    pub name: String,
    pub owner: String,
    /// In joining order; the owner first at creation.
    pub members: Vec<String>,
    pub created_at: i64,
    /// Members who joined after the group was created, with the channel's newest `seq` when
    /// they joined: items up to it are not theirs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub joined: std::collections::BTreeMap<String, u64>,
}

impl GroupRecord {
    pub fn channel(&self) -> String {
        format!("g:{}", self.group_id)
    }
    pub fn to_wire(&self) -> Group {
        Group {
            group_id: self.group_id.clone(),
            channel: self.channel(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            members: self.members.clone(),
        }
    }
}

/// One timeline item, stored once per channel. A plain message's current state (edits,
/// deletion, reactions) is kept with it, rewritten in the batch of the item that changed
/// it, so history and sync read it as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessageRecord {
    pub from: String,
    pub from_device: String,
    pub client_msg_id: String,
    pub text: String,
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Extras::is_empty")]
    pub extras: Extras,
}

/// The less common fields of an item (`store::binary`: a JSON object, absent for a plain
/// message nobody edited or reacted to).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ItemKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<SystemEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Reactions::is_empty")]
    pub reactions: Reactions,
    /// The seqs of this message's edit items: a delete erases their text too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<u64>,
}

impl Extras {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl MessageRecord {
    pub fn into_wire(self, channel: &str, seq: u64, inbox_id: Option<u64>) -> Message {
        let x = self.extras;
        Message {
            channel: channel.to_owned(),
            seq,
            from: self.from,
            from_device: self.from_device,
            client_msg_id: self.client_msg_id,
            text: self.text,
            ts: self.ts,
            kind: x.kind,
            target_seq: x.target_seq,
            reply_to: x.reply_to,
            remove: x.remove,
            event: x.event,
            edited_at: x.edited_at,
            deleted: x.deleted,
            reactions: x.reactions,
            inbox_id,
        }
    }

    /// Whether it is a plain message (not an edit, delete, reaction or system item).
    pub fn is_plain(&self) -> bool {
        self.extras.kind.is_none()
    }
}

/// A stored message read in place: its strings borrow the stored bytes (`store::binary`;
/// the first version's JSON records are read into owned strings). A page of sync is encoded
/// from these straight to JSON ([`WireMessage`]), without an owned [`Message`] per item.
#[derive(Debug)]
pub struct MessageView<'a> {
    pub from: Cow<'a, str>,
    pub from_device: Cow<'a, str>,
    pub client_msg_id: Cow<'a, str>,
    pub text: Cow<'a, str>,
    pub ts: i64,
    pub extras: Extras,
}

impl MessageView<'_> {
    pub fn into_owned(self) -> MessageRecord {
        MessageRecord {
            from: self.from.into_owned(),
            from_device: self.from_device.into_owned(),
            client_msg_id: self.client_msg_id.into_owned(),
            text: self.text.into_owned(),
            ts: self.ts,
            extras: self.extras,
        }
    }
}

impl From<MessageRecord> for MessageView<'_> {
    fn from(r: MessageRecord) -> Self {
        Self {
            from: Cow::Owned(r.from),
            from_device: Cow::Owned(r.from_device),
            client_msg_id: Cow::Owned(r.client_msg_id),
            text: Cow::Owned(r.text),
            ts: r.ts,
            extras: r.extras,
        }
    }
}

/// A [`MessageView`] as the wire's [`Message`]: the same JSON, field for field, as
/// `into_wire` of the owned record (a test holds the two together).
pub struct WireMessage<'a> {
    pub channel: &'a str,
    pub seq: u64,
    pub inbox_id: Option<u64>,
    pub message: &'a MessageView<'a>,
}

impl Serialize for WireMessage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (m, x) = (self.message, &self.message.extras);
        let mut o = s.serialize_struct("Message", 16)?;
        o.serialize_field("channel", self.channel)?;
        o.serialize_field("seq", &self.seq)?;
        o.serialize_field("from", &m.from)?;
        o.serialize_field("from_device", &m.from_device)?;
        o.serialize_field("client_msg_id", &m.client_msg_id)?;
        o.serialize_field("text", &m.text)?;
        o.serialize_field("ts", &m.ts)?;
        if let Some(kind) = &x.kind {
            o.serialize_field("kind", kind)?;
        }
        if let Some(seq) = &x.target_seq {
            o.serialize_field("target_seq", seq)?;
        }
        if let Some(seq) = &x.reply_to {
            o.serialize_field("reply_to", seq)?;
        }
        if x.remove {
            o.serialize_field("remove", &true)?;
        }
        if let Some(event) = &x.event {
            o.serialize_field("event", event)?;
        }
        if let Some(at) = &x.edited_at {
            o.serialize_field("edited_at", at)?;
        }
        if x.deleted {
            o.serialize_field("deleted", &true)?;
        }
        if !x.reactions.is_empty() {
            o.serialize_field("reactions", &x.reactions)?;
        }
        if let Some(id) = &self.inbox_id {
            o.serialize_field("inbox_id", id)?;
        }
        o.end()
    }
}

/// An inbox entry: a pointer to a channel's item, not a copy (encoded in `store::binary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub channel: String,
    pub seq: u64,
    /// The item's time (0 in the first version's pointers).
    pub ts: i64,
    /// The inbox's user sent the item (it moves their read marker, it is not unread).
    pub own: bool,
    /// The item does not count as unread (an edit, delete or reaction).
    pub quiet: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    /// The largest inbox_id the device says it holds.
    pub cursor: u64,
    pub last_seen: Option<i64>,
    pub push: Option<PushRegistration>,
    pub created_at: i64,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

pub fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn decode_u64(key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: format!("expected 8 bytes, found {}", bytes.len()),
        })
}

/// A channel's head as the write path holds it: its newest `seq` and that item's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelHead {
    pub last_seq: u64,
    pub last_ts: i64,
}

/// A user's entry for one channel (`uc/{user}/{channel}`): the newest item of the channel
/// the user's inbox holds, the user's read marker, and the items after the marker. Written
/// behind the inbox (`store::index`). Binary: four be64 numbers in this order (later
/// versions may append more).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserChannel {
    /// The channel's newest item in the user's inbox.
    pub last_seq: u64,
    pub last_ts: i64,
    /// Everything up to here is read.
    pub read_seq: u64,
    /// Items after `read_seq`.
    pub unread: u64,
}

impl UserChannel {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        for n in [
            self.last_seq,
            self.last_ts as u64,
            self.read_seq,
            self.unread,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let number = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        match (number(0), number(1), number(2), number(3)) {
            (Some(last_seq), Some(last_ts), Some(read_seq), Some(unread)) => Ok(Self {
                last_seq,
                last_ts: last_ts as i64,
                read_seq,
                unread,
            }),
            _ => Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: format!(
                    "a user's channel entry is at least 32 bytes, found {}",
                    bytes.len()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_channels_round_trip() {
        let entry = UserChannel {
            last_seq: 9,
            last_ts: 1_700_000_000_123,
            read_seq: 7,
            unread: 2,
        };
        assert_eq!(
            UserChannel::decode(b"uc/a/b", &entry.encode()).unwrap(),
            entry
        );
        assert!(UserChannel::decode(b"uc/a/b", &[0; 31]).is_err());
    }

    #[test]
    fn a_wire_view_encodes_as_the_owned_message() {
        use crate::protocol::timeline::SystemAction;
        let plain = MessageRecord {
            from: "u1".into(),
            from_device: "phone".into(),
            client_msg_id: "c-1".into(),
            text: "h\u{e9}llo \"quoted\" \\ \n".into(),
            ts: 1_700_000_000_000,
            extras: Extras::default(),
        };
        let mut reactions = Reactions::default();
        reactions.add("\u{1f44d}", "u2");
        let full = MessageRecord {
            extras: Extras {
                kind: Some(ItemKind::Edit),
                target_seq: Some(3),
                reply_to: Some(2),
                remove: true,
                event: Some(SystemEvent {
                    action: SystemAction::MemberAdded,
                    user: Some("u3".into()),
                    name: None,
                }),
                edited_at: Some(9),
                deleted: true,
                reactions,
                edits: vec![4],
            },
            ..plain.clone()
        };
        for record in [plain, full] {
            for inbox_id in [None, Some(12)] {
                let view = MessageView::from(record.clone());
                let wire = WireMessage {
                    channel: "g:x",
                    seq: 7,
                    inbox_id,
                    message: &view,
                };
                assert_eq!(
                    serde_json::to_string(&wire).unwrap(),
                    serde_json::to_string(&record.clone().into_wire("g:x", 7, inbox_id)).unwrap()
                );
            }
        }
    }
}
