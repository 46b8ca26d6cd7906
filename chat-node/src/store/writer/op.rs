//! What the writer is asked to do, and what it answers.

use crate::protocol::ApiError;
use crate::protocol::items::ItemAction;
use crate::protocol::types::{Ack, Message};
use crate::protocol::validate::Channel;
use crate::store::records::GroupRecord;

/// A message to store, validated by the caller (text length, `client_msg_id`, channel name).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SendOp {
    pub sender: String,
    pub device: String,
    pub channel: Channel,
    pub client_msg_id: String,
    pub text: String,
    pub ts: i64,
    /// When pushes are configured: when the message's push falls due (its `ts` plus the
    /// coalescing window); the batch then also writes one push outbox entry.
    pub push_due: Option<i64>,
    /// What the item does: a plain message (the default), a reply, or an edit, delete or
    /// reaction of another message of the channel, whose aggregate the batch rewrites.
    #[serde(default)]
    pub action: ItemAction,
}

/// Items of one channel for the inboxes of users this node owns (a cluster's second stage:
/// the channel's owner sequenced them; the users' owners append them).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppendOp {
    pub channel: String,
    /// In `seq` order.
    pub items: Vec<AppendItem>,
}

/// One item of a channel to append.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendItem {
    pub seq: u64,
    pub ts: i64,
    /// Its sender: when the sender is among `members`, their dedupe record (the ack) is
    /// written with their append.
    pub from: String,
    pub client_msg_id: String,
    pub members: Vec<Member>,
    /// When pushes are configured and the item is new: when its push falls due, and its
    /// preview; the members appended (but its sender) get a push outbox entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<(i64, String)>,
    /// Only this member is pushed (a system item pushes the member it concerns only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_only: Option<String>,
    /// It does not count as unread (an edit, delete or reaction).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet: bool,
    /// The server made it (a system item): no sender's dedupe record is written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
}

impl AppendItem {
    /// The item for `message` (a stored item of the channel), to `members`, not pushed.
    pub fn of(message: &Message, members: Vec<Member>) -> Self {
        Self {
            seq: message.seq,
            ts: message.ts,
            from: message.from.clone(),
            client_msg_id: message.client_msg_id.clone(),
            members,
            push: None,
            push_only: None,
            quiet: message.kind.is_some_and(|k| k.is_quiet()),
            system: message.kind == Some(crate::protocol::timeline::ItemKind::System),
        }
    }
}

/// A member an item goes to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub user: String,
    /// The item is the member's first of the channel (a one-on-one channel's first message,
    /// the first item after the member joined a group): no earlier item is owed to them.
    #[serde(default)]
    pub first: bool,
}

/// What the writer is asked to do.
#[derive(Debug)]
pub enum Op {
    /// Store a message (its channel is this node's).
    Send(SendOp),
    /// Append a channel's items to inboxes this node owns.
    Append(AppendOp),
    /// A change of a group (its channel is this node's), with its system item.
    Group(GroupOp),
    /// Move a user's read marker (their inbox is this node's).
    Read(ReadOp),
    /// Block or unblock a user (their one-on-one channel is this node's).
    Block(BlockOp),
    /// Write every user's channel index now (the node stops: the next start replays no
    /// inbox).
    Flush,
}

/// A change of a group, made by `caller` (from `device`); each but a no-op adds a system
/// item to the group's timeline, stamped `ts`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupOp {
    pub caller: String,
    #[serde(default)]
    pub device: String,
    pub group_id: String,
    pub change: GroupEdit,
    #[serde(default)]
    pub ts: i64,
    /// When pushes are configured: when the item's push (to the member it concerns) falls
    /// due.
    #[serde(default)]
    pub push_due: Option<i64>,
}

/// What a [`GroupOp`] changes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum GroupEdit {
    /// Add `user` (a member may add; adding a member is a no-op, and adds no item).
    Add { user: String, max_members: usize },
    /// The owner removes `user`, or a member leaves (`caller == user`).
    Remove { user: String },
    /// The owner renames the group.
    Rename { name: String },
}

/// `user` has read `channel` up to `seq`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadOp {
    pub user: String,
    pub channel: String,
    pub seq: u64,
    /// Which items of the channel count as unread for the user in `(from, to]`, when the
    /// writer asked ([`ReadOutcome::NeedCount`]): a marker moved short of the newest item
    /// leaves the counted items after it unread.
    #[serde(default)]
    pub counted: Option<Counted>,
}

/// The items of a channel in `(from, to]` that count as unread (plain messages and system
/// items the user's inbox holds).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counted {
    pub from: u64,
    pub to: u64,
    pub seqs: Vec<u64>,
}

/// What became of a read marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReadOutcome {
    /// The marker moved to `seq` (durably).
    Moved { seq: u64 },
    /// It stays at `seq` (it never moves back).
    Unchanged { seq: u64 },
    /// The marker would stop short of the newest item: say which items in `(from, to]`
    /// count (a [`Counted`]) and ask again. Nothing was written.
    NeedCount { from: u64, to: u64 },
}

/// `user` blocks (or unblocks) `target`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlockOp {
    pub user: String,
    pub target: String,
    pub block: bool,
    pub ts: i64,
}

/// What a group change did: the group as it is now and its system item (none for a no-op).
#[derive(Debug, Clone)]
pub struct GroupOutcome {
    pub group: GroupRecord,
    pub item: Option<SendOutcome>,
}

/// What a send did.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The ack: the original one when the send was a duplicate. In a cluster, while the
    /// sender's inbox is another node's, its `inbox_id` is 0 until that node appended it.
    pub ack: Ack,
    /// True when `(sender, client_msg_id)` was seen before: nothing new was stored.
    pub duplicate: bool,
    /// The stored message (without `inbox_id`); absent for duplicates.
    pub message: Option<Message>,
    /// Members whose inboxes this batch appended, with the `inbox_id` each took.
    pub recipients: Vec<(String, u64)>,
    /// Members whose inboxes other nodes own (or that owe earlier items first): the
    /// caller hands the message to their owners.
    pub remote: Vec<Member>,
    /// A duplicate of a message whose second stage may not have finished (the sender's
    /// inbox is another node's): the caller hands it to every member's owner again.
    pub redrive: bool,
}

/// What became of one member of an appended item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum MemberAppend {
    /// Appended with this `inbox_id`.
    Appended { inbox_id: u64 },
    /// The inbox already held it; for the item's sender, the `inbox_id` it took.
    Duplicate { inbox_id: Option<u64> },
    /// The inbox lacks earlier items: it holds the channel up to `last`; send from there.
    Gap { last: u64 },
    /// This node does not own the member's inbox (any more).
    NotOwner,
}

/// Per item of an [`AppendOp`], per member, in order.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AppendOutcome {
    pub items: Vec<Vec<(String, MemberAppend)>>,
}

/// What an operation did, once it is durable.
#[derive(Debug)]
pub enum Reply {
    Sent(SendOutcome),
    Appended(AppendOutcome),
    Group(GroupOutcome),
    Read(ReadOutcome),
    /// Whether a block changed anything.
    Blocked(bool),
    Flushed,
}

/// Why an operation was not done.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// Refused or failed, as a client sees it.
    Api(ApiError),
    /// This node does not own the operation's channel: the caller routes it to the owner.
    NotOwner,
}

impl From<ApiError> for WriteError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::store::StoreError> for WriteError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl WriteError {
    /// As a client sees it: ownership moving is a reason to retry.
    pub fn into_api(self) -> ApiError {
        match self {
            Self::Api(e) => e,
            Self::NotOwner => ApiError::unavailable(
                "this channel's owner is changing (the cluster's membership moved); nothing was written, retry shortly",
            ),
        }
    }
}
