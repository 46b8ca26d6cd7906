//! The chat service: contacts, groups, sending with live delivery, history, sync, cursors
//! and typing. Everything a client can do, whether it arrived over HTTP or a WebSocket.
//!
//! # Layout
//!
//! | module | role |
//! | --- | --- |
//! | `sending` | timeline items (messages, edits, deletes, reactions) at their channel's owner, and the cluster's second stage |
//! | `groups` | groups: creation, members and renames (with their system items) |
//! | `marks` | read markers, the channel list, and blocks |
//! | `route` | running a writer operation at the node that owns its unit |

mod groups;
mod marks;
mod route;
mod sending;

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::link::{Event, Links};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::presence::Presence;
use crate::protocol::frames::{MessageFrame, ServerFrame};
use crate::protocol::types::{Contact, EncodedItems, Message};
use crate::protocol::validate::{self, Channel};
use crate::protocol::{ApiError, Limits};
use crate::push::Push;
use crate::store::ChatStore;
use crate::store::writer::Writer;

/// The chat service.
pub struct Chat {
    store: ChatStore,
    /// The write path: this node's writer, for the units it owns.
    writer: Writer,
    hub: Arc<Hub>,
    links: Arc<Links>,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Push notifications; when set, each send also writes a push outbox entry.
    push: Option<Arc<Push>>,
}

impl Chat {
    pub fn new(
        store: ChatStore,
        writer: Writer,
        hub: Arc<Hub>,
        links: Arc<Links>,
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            writer,
            hub,
            links,
            presence,
            metrics,
            limits,
            push: None,
        }
    }

    /// Notify offline recipients through `push` (none: no pushes).
    pub fn with_push(mut self, push: Option<Arc<Push>>) -> Self {
        self.push = push;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Write every user's channel index out (the node stops).
    pub async fn flush(&self) {
        if let Err(e) = self.writer.flush().await {
            tracing::warn!(error = ?e, "could not write the channel indexes out; the next start replays the inboxes");
        }
    }

    // --- contacts -------------------------------------------------------------------------

    pub async fn add_contact(&self, owner: &str, contact: &str) -> Result<(), ApiError> {
        if !validate::is_id(contact) {
            return Err(ApiError::not_found(format!(
                "no user has the id {contact:?}"
            )));
        }
        if contact == owner {
            return Err(ApiError::bad_request(
                "you cannot add yourself as a contact",
            ));
        }
        let was_mutual = self.store.are_mutual(owner, contact).await?;
        self.store.add_contact(owner, contact, now_ms()).await?;
        if !was_mutual && self.store.are_mutual(owner, contact).await? {
            self.exchange_presence(owner, contact).await?;
        }
        Ok(())
    }

    pub async fn remove_contact(&self, owner: &str, contact: &str) -> Result<(), ApiError> {
        if !validate::is_id(contact) {
            return Err(ApiError::not_found(format!(
                "no user has the id {contact:?}"
            )));
        }
        self.store.remove_contact(owner, contact).await
    }

    /// Two users just became mutual contacts: each online one hears the other's status.
    async fn exchange_presence(&self, a: &str, b: &str) -> Result<(), ApiError> {
        for (viewer, subject) in [(a, b), (b, a)] {
            let (status, last_seen) = self.presence.status(subject).await?;
            let frame = ServerFrame::Presence {
                user: subject.to_owned(),
                status,
                last_seen,
            };
            self.links
                .relay([viewer], &Utf8Bytes::from(frame.to_json()));
        }
        Ok(())
    }

    pub async fn contacts(&self, owner: &str) -> Result<Vec<Contact>, ApiError> {
        let contacts = self.store.contacts(owner).await?;
        let mutual: Vec<String> = contacts
            .iter()
            .filter(|c| c.mutual && !c.hidden)
            .map(|c| c.user.user_id.clone())
            .collect();
        // Who is online comes from their nodes; an offline contact's last activity is
        // already in the contact record.
        let online = self.presence.online_map(&mutual).await;
        let mut out = Vec::new();
        for c in contacts {
            let (status, last_seen) = if !c.mutual || c.hidden {
                (None, None)
            } else if let Some((ts, _)) = online.get(c.user.user_id.as_str()) {
                (Some("online"), Some(*ts))
            } else {
                (Some("offline"), c.last_seen)
            };
            out.push(Contact {
                user_id: c.user.user_id,
                username: c.user.username,
                display_name: c.user.display_name,
                mutual: c.mutual,
                status,
                last_seen,
                blocked: c.blocked,
            });
        }
        Ok(out)
    }

    // --- delivery -------------------------------------------------------------------------

    /// Hand a stored message to the nodes that hold its recipients' sockets (`(user,
    /// inbox_id)`), this one included, one event per node. Best effort: the inbox is the
    /// truth.
    fn deliver(&self, message: Message, recipients: Vec<(String, u64)>) {
        let (local, remote) = self
            .links
            .cluster()
            .partition_by(recipients, |r| r.0.as_str());
        if !local.is_empty() {
            self.deliver_local(&message, &local);
        }
        for (node, recipients) in remote {
            let event = Event::Deliver {
                sending_device: message.from_device.clone(),
                message: Box::new(message.clone()),
                recipients,
            };
            self.links.send(&node, &event);
        }
    }

    /// Push a stored message to the online devices here of `recipients`, except the
    /// sender's sending device (which has the ack; a system item, made by the server, goes
    /// to every device). The frame is encoded once; each recipient's copy only gets its
    /// `inbox_id` spliced in.
    pub fn deliver_local(&self, message: &Message, recipients: &[(String, u64)]) {
        let frame = MessageFrame::new(message);
        let mut delivered = 0;
        let system = message.kind == Some(crate::protocol::timeline::ItemKind::System);
        for (user_id, inbox_id) in recipients {
            if !self.hub.is_online(user_id) {
                continue;
            }
            let except =
                (*user_id == message.from && !system).then_some(message.from_device.as_str());
            delivered += self
                .hub
                .send_to_user(user_id, &frame.with_inbox_id(*inbox_id), except);
        }
        self.metrics.messages_delivered.inc_by(delivered as u64);
    }

    pub async fn history(
        &self,
        caller: &str,
        channel: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: Option<u64>,
    ) -> Result<(Vec<Message>, bool), ApiError> {
        let channel = Channel::parse(channel)?;
        let limit = self.limits.page(limit)?;
        self.store
            .history(caller, &channel, after_seq, before_seq, limit)
            .await
    }

    pub async fn sync(
        &self,
        user_id: &str,
        after: u64,
        limit: Option<u64>,
    ) -> Result<(EncodedItems, bool), ApiError> {
        let limit = self.limits.page(limit)?;
        self.store.sync(user_id, after, limit).await
    }

    pub async fn set_cursor(
        &self,
        user_id: &str,
        device_id: &str,
        inbox_id: u64,
    ) -> Result<(), ApiError> {
        let head = self.store.inbox_head(user_id).await?;
        if inbox_id > head {
            return Err(ApiError::bad_request(format!(
                "cursor {inbox_id} is past your newest inbox entry ({head})"
            )));
        }
        self.store.set_cursor(user_id, device_id, inbox_id).await
    }

    /// Relay "typing" to the channel's other members' online devices.
    pub async fn typing(&self, user_id: &str, channel: &str) -> Result<(), ApiError> {
        let channel = Channel::parse(channel)?;
        let members = self.store.channel_members(user_id, &channel).await?;
        let frame = Utf8Bytes::from(
            ServerFrame::Typing {
                channel: channel.to_string(),
                user: user_id.to_owned(),
            }
            .to_json(),
        );
        self.links.relay(
            members.iter().map(String::as_str).filter(|m| *m != user_id),
            &frame,
        );
        Ok(())
    }
}
