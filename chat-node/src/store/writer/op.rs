//! What the writer is asked to do, and what it answers.

use crate::protocol::ApiError;
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
    /// `caller` adds `user` to the group (a member may add; adding a member is a no-op).
    AddMember {
        caller: String,
        group_id: String,
        user: String,
        max_members: usize,
    },
    /// The owner removes `user`, or a member leaves (`caller == user`).
    RemoveMember {
        caller: String,
        group_id: String,
        user: String,
    },
    /// Write every user's channel index now (the node stops: the next start replays no
    /// inbox).
    Flush,
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
    Group(GroupRecord),
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
