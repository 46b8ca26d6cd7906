//! The JSON bodies of the HTTP API and the message object shared with the frames.

use serde::{Deserialize, Serialize};

use super::timeline::{ItemKind, Reactions, SystemEvent};

/// A message as clients see it. `inbox_id` is present wherever the message comes from the
/// caller's inbox (sync, live delivery) and absent in channel history. A timeline item
/// (PROTOCOL.md, "Timeline items") is a message with a `kind`; a plain message carries its
/// current state (`edited_at`, `deleted`, `reactions`) when it has any. Fields a message
/// does not have are left out, so a plain message looks exactly as in the first version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub channel: String,
    pub seq: u64,
    pub from: String,
    pub from_device: String,
    pub client_msg_id: String,
    pub text: String,
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<ItemKind>,
    /// The message an edit, delete or reaction is about.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_seq: Option<u64>,
    /// The message this one answers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reply_to: Option<u64>,
    /// A reaction taken back.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub remove: bool,
    /// A system item's group change.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event: Option<SystemEvent>,
    /// When the text was last edited.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub edited_at: Option<i64>,
    /// Taken back by its author (or a group's owner): its text is gone.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub deleted: bool,
    /// The reactions in force.
    #[serde(skip_serializing_if = "Reactions::is_empty", default)]
    pub reactions: Reactions,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inbox_id: Option<u64>,
}

/// The acknowledgement of a durably stored message (the `ack` frame and the answer of
/// `POST /v1/messages`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub client_msg_id: String,
    pub channel: String,
    pub seq: u64,
    pub inbox_id: u64,
    pub ts: i64,
}

#[derive(Debug, Deserialize)]
pub struct SignUp {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The home region; absent: the region of the node that takes the sign-up.
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Login {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub device_id: Option<String>,
}

/// `PUT /v1/users/me/password`.
#[derive(Debug, Deserialize)]
pub struct PasswordChange {
    pub password: String,
    pub new_password: String,
}

#[derive(Debug, Serialize)]
pub struct Session {
    pub token: String,
    pub user_id: String,
    pub device_id: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    /// The home region: in the user's own profile only (sign-up answer, `/v1/users/me`),
    /// never in the public one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `PATCH /v1/users/me`: any of the fields, at least one.
#[derive(Debug, Deserialize)]
pub struct ProfilePatch {
    #[serde(default)]
    pub display_name: Option<String>,
    /// A new home region: the user's sockets move to a node of it.
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Contact {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub mutual: bool,
    /// `online`/`offline` for mutual contacts (neither blocking the other), null otherwise.
    pub status: Option<&'static str>,
    pub last_seen: Option<i64>,
    /// The caller blocks this contact (an extension: the contract's fields are unchanged).
    pub blocked: bool,
}

#[derive(Debug, Serialize)]
pub struct Contacts {
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Deserialize)]
pub struct NewGroup {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

/// `PATCH /v1/groups/{group_id}`.
#[derive(Debug, Deserialize)]
pub struct GroupPatch {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct NewMember {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub group_id: String,
    pub channel: String,
    pub name: String,
    pub owner: String,
    pub members: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Groups {
    pub groups: Vec<Group>,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub messages: Vec<Message>,
    pub more: bool,
}

/// One entry of `GET /v1/channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSummary {
    pub channel: String,
    /// `direct` or `group`.
    pub kind: &'static str,
    /// A one-on-one channel's other user (the caller, in the channel with oneself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// A group's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub last_seq: u64,
    pub last_ts: i64,
    pub read_seq: u64,
    pub unread: u64,
}

#[derive(Debug, Serialize)]
pub struct Channels {
    pub channels: Vec<ChannelSummary>,
}

/// One member's read marker (`GET /v1/channels/{channel}/reads`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadMarker {
    pub user: String,
    pub seq: u64,
}

#[derive(Debug, Serialize)]
pub struct Reads {
    pub reads: Vec<ReadMarker>,
}

/// `POST /v1/channels/{channel}/read`.
#[derive(Debug, Deserialize)]
pub struct ReadBody {
    pub seq: u64,
}

#[derive(Debug, Serialize)]
pub struct Blocks {
    pub blocks: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SyncPage {
    pub items: EncodedItems,
    pub more: bool,
}

/// Items already encoded as a JSON array of [`Message`]s, serialised as that array: a sync
/// page is encoded once, straight from the store's bytes, and the frame or the HTTP answer
/// that carries it copies the array in.
#[derive(Debug, Clone)]
pub struct EncodedItems(Box<serde_json::value::RawValue>);

impl EncodedItems {
    /// Encode `items` (anything that serialises as a sequence of messages).
    pub fn encode<T: Serialize + ?Sized>(items: &T) -> Result<Self, super::ApiError> {
        serde_json::value::to_raw_value(items)
            .map(Self)
            .map_err(|e| super::ApiError::internal(format!("encoding the items failed: {e}")))
    }

    /// The JSON array.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The items decoded again (for tests and tools: the node itself only sends them on).
    pub fn decode(&self) -> Result<Vec<Message>, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl Serialize for EncodedItems {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[derive(Debug, Serialize)]
pub struct Device {
    pub device_id: String,
    pub online: bool,
    pub cursor: u64,
    pub last_seen: Option<i64>,
    /// Where this device is pushed while offline (null: nowhere). Cleared by the server when
    /// the provider says the token is gone.
    pub push: Option<PushRegistration>,
}

#[derive(Debug, Serialize)]
pub struct Devices {
    pub devices: Vec<Device>,
}

/// Where to push a device while it is offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    pub provider: PushProvider,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushProvider {
    Webhook,
    Fcm,
    Apns,
}

#[derive(Debug, Serialize)]
pub struct Assignment {
    pub node_id: String,
    pub ws_url: String,
    /// The chosen node's region (the user's home region, unless it has no node that takes
    /// users and the fallback chose another).
    pub region: String,
}
