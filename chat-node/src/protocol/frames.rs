//! WebSocket frames: what clients send (decoded into [`ClientFrame`]) and what the server
//! sends ([`ServerFrame`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::items::{self, ItemAction};
use super::types::{Ack, EncodedItems, Group, Message};
use super::{ApiError, ErrorCode};

/// Where a `send` goes: a user (the one-on-one channel with them) or a named channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTarget {
    User(String),
    Channel(String),
}

/// A timeline item to store: a message from a `send` frame or `POST /v1/messages`, or an
/// edit, delete or reaction (`action`; see [`items`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub client_msg_id: String,
    pub target: SendTarget,
    /// The message's text, an edit's new text, a reaction's emoji (empty for a delete).
    pub text: String,
    pub action: ItemAction,
}

/// A decoded client frame. An unknown `type` is a normal value, answered with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Send(SendRequest),
    Sync {
        after: u64,
        limit: Option<u64>,
    },
    Cursor {
        inbox_id: u64,
    },
    Heartbeat,
    Typing {
        channel: String,
    },
    /// The user has read `channel` up to `seq`.
    Read {
        channel: String,
        seq: u64,
    },
    Unknown {
        kind: String,
    },
}

/// A client frame with its optional correlation ids (echoed on any error it causes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub req: Option<String>,
    pub client_msg_id: Option<String>,
    pub frame: ClientFrame,
}

/// A frame that could not be decoded, with whatever correlation the client put on it, so
/// the `error` frame can carry it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub req: Option<String>,
    pub client_msg_id: Option<String>,
    pub error: ApiError,
}

/// The fields a well-formed frame may carry, borrowed from the frame's text where they can
/// be: the fast path of [`Inbound::decode`]. A frame this does not take (a field of the
/// wrong type, a missing one) goes the careful way, which says exactly what is wrong.
#[derive(Deserialize)]
struct Fast<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    req: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    client_msg_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    to: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    inbox_id: Option<u64>,
    #[serde(default)]
    reply_to: Option<u64>,
}

impl Fast<'_> {
    /// The frame, when this fast path can tell it whole.
    fn frame(self) -> Option<Inbound> {
        let frame = match self.kind.as_ref() {
            "send" => ClientFrame::Send(SendRequest {
                client_msg_id: self.client_msg_id.clone()?.into_owned(),
                target: match (self.to, self.channel) {
                    (Some(to), None) => SendTarget::User(to.into_owned()),
                    (None, Some(ch)) => SendTarget::Channel(ch.into_owned()),
                    _ => return None,
                },
                text: self.text?.into_owned(),
                action: match self.reply_to {
                    None => ItemAction::Message,
                    Some(reply_to) => ItemAction::Reply { reply_to },
                },
            }),
            "sync" => ClientFrame::Sync {
                after: self.after.unwrap_or(0),
                limit: self.limit,
            },
            "cursor" => ClientFrame::Cursor {
                inbox_id: self.inbox_id?,
            },
            "heartbeat" => ClientFrame::Heartbeat,
            "typing" => ClientFrame::Typing {
                channel: self.channel?.into_owned(),
            },
            _ => return None,
        };
        Some(Inbound {
            req: self.req.map(std::borrow::Cow::into_owned),
            client_msg_id: self.client_msg_id.map(std::borrow::Cow::into_owned),
            frame,
        })
    }
}

impl Inbound {
    /// Decode one text frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        if let Ok(fast) = serde_json::from_str::<Fast<'_>>(text)
            && let Some(inbound) = fast.frame()
        {
            return Ok(inbound);
        }
        Self::decode_carefully(text)
    }

    /// Decode a frame field by field, so that a bad one is named in the error and the
    /// frame's correlation ids still come back.
    fn decode_carefully(text: &str) -> Result<Self, DecodeError> {
        let mut obj: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(obj)) => obj,
            Ok(_) => {
                return Err(plain(ApiError::bad_request(
                    "a frame must be a JSON object with a \"type\"",
                )));
            }
            Err(e) => {
                return Err(plain(ApiError::bad_request(format!(
                    "the frame is not valid JSON: {e}"
                ))));
            }
        };
        let client_msg_id = match obj.get("client_msg_id") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let req = match obj.remove("req") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                let error = ApiError::bad_request("\"req\" must be a string");
                return Err(DecodeError {
                    req: None,
                    client_msg_id,
                    error,
                });
            }
        };
        let fail = |error| DecodeError {
            req: req.clone(),
            client_msg_id: client_msg_id.clone(),
            error,
        };
        let kind = match obj.remove("type") {
            Some(Value::String(s)) => s,
            _ => {
                return Err(fail(ApiError::bad_request(
                    "a frame needs a string \"type\"",
                )));
            }
        };
        let frame = Self::decode_body(&kind, &mut obj).map_err(fail)?;
        Ok(Self {
            req,
            client_msg_id,
            frame,
        })
    }

    fn decode_body(kind: &str, obj: &mut Map<String, Value>) -> Result<ClientFrame, ApiError> {
        Ok(match kind {
            "send" => ClientFrame::Send(SendRequest::from_json(obj)?),
            "sync" => ClientFrame::Sync {
                after: opt_u64(obj, "after")?.unwrap_or(0),
                limit: opt_u64(obj, "limit")?,
            },
            "cursor" => ClientFrame::Cursor {
                inbox_id: opt_u64(obj, "inbox_id")?.ok_or_else(|| {
                    ApiError::bad_request("cursor needs \"inbox_id\": a non-negative integer")
                })?,
            },
            "heartbeat" => ClientFrame::Heartbeat,
            "typing" => ClientFrame::Typing {
                channel: opt_string(obj, "channel")?
                    .ok_or_else(|| ApiError::bad_request("typing needs \"channel\""))?,
            },
            "edit" | "delete" | "react" => ClientFrame::Send(items::target_request(kind, obj)?),
            "read" => ClientFrame::Read {
                channel: opt_string(obj, "channel")?
                    .ok_or_else(|| ApiError::bad_request("read needs \"channel\""))?,
                seq: opt_u64(obj, "seq")?.ok_or_else(|| {
                    ApiError::bad_request("read needs \"seq\": a non-negative integer")
                })?,
            },
            other => ClientFrame::Unknown {
                kind: other.chars().take(64).collect(),
            },
        })
    }
}

impl SendRequest {
    /// Read a send from a JSON object (a `send` frame or the body of `POST /v1/messages`).
    pub fn from_json(obj: &mut Map<String, Value>) -> Result<Self, ApiError> {
        let client_msg_id = opt_string(obj, "client_msg_id")?.ok_or_else(|| {
            ApiError::bad_request("send needs \"client_msg_id\" (1 to 64 characters)")
        })?;
        let text =
            opt_string(obj, "text")?.ok_or_else(|| ApiError::bad_request("send needs \"text\""))?;
        let action = match opt_u64(obj, "reply_to")? {
            None => ItemAction::Message,
            Some(reply_to) => ItemAction::Reply { reply_to },
        };
        let target = match (opt_string(obj, "to")?, opt_string(obj, "channel")?) {
            (Some(to), None) => SendTarget::User(to),
            (None, Some(ch)) => SendTarget::Channel(ch),
            _ => {
                return Err(ApiError::bad_request(
                    "send needs exactly one of \"to\" (a user_id) or \"channel\"",
                ));
            }
        };
        Ok(Self {
            client_msg_id,
            target,
            text,
            action,
        })
    }
}

fn plain(error: ApiError) -> DecodeError {
    DecodeError {
        req: None,
        client_msg_id: None,
        error,
    }
}

fn opt_string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "\"{field}\" must be a string"
        ))),
    }
}

fn opt_u64(obj: &mut Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("\"{field}\" must be a non-negative integer"))
        }),
        Some(_) => Err(ApiError::bad_request(format!(
            "\"{field}\" must be a non-negative integer"
        ))),
    }
}

/// Online or offline, as presence frames and the contact list say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ack {
        #[serde(flatten)]
        ack: Ack,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
    Message(Message),
    Sync {
        items: EncodedItems,
        more: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
    Presence {
        user: String,
        status: Status,
        last_seen: Option<i64>,
    },
    Typing {
        channel: String,
        user: String,
    },
    /// `user` has read `channel` up to `seq`.
    Read {
        channel: String,
        user: String,
        seq: u64,
    },
    /// The receiver was made a member of a new group.
    Group {
        group: Group,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Extension: whole seconds after which a retry may succeed (`rate_limited`), like
        /// HTTP's `Retry-After`.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
    Reconnect {
        #[serde(skip_serializing_if = "Option::is_none")]
        ws_url: Option<String>,
        reason: String,
    },
}

impl ServerFrame {
    pub fn error(error: ApiError, client_msg_id: Option<String>, req: Option<String>) -> Self {
        Self::Error {
            code: error.code,
            message: error.message,
            client_msg_id,
            req,
            retry_after: error.retry_after,
        }
    }

    /// The frame as JSON text. Serialising these types cannot fail (string keys, no maps
    /// with non-string keys, no floats).
    pub fn to_json(&self) -> String {
        // A sync page is written into room for its items at once, not regrown (and copied)
        // a dozen times on the way to a few hundred KiB.
        let mut out = Vec::with_capacity(match self {
            Self::Sync { items, .. } => items.json().len() + 64,
            _ => 128,
        });
        serde_json::to_writer(&mut out, self)
            .map_err(|e| e.to_string())
            .and_then(|()| String::from_utf8(out).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                format!(
                    r#"{{"type":"error","code":"internal","message":"frame encoding failed: {e}"}}"#
                )
            })
    }
}

/// A `message` frame encoded once for many recipients, who differ only in their
/// `inbox_id`: the JSON is built once and each recipient's copy splices its number in.
pub struct MessageFrame {
    /// `{"type":"message",` + the message's fields, without the closing brace.
    head: String,
}

impl MessageFrame {
    /// Encode `message` (its own `inbox_id` is ignored).
    pub fn new(message: &Message) -> Self {
        let fields = match message.inbox_id {
            None => serde_json::to_string(message),
            Some(_) => serde_json::to_string(&Message {
                inbox_id: None,
                ..message.clone()
            }),
        }
        .unwrap_or_else(|_| "{}".to_owned());
        // `fields` is `{...}`: keep what is between the braces.
        let inner = fields
            .strip_prefix('{')
            .and_then(|f| f.strip_suffix('}'))
            .unwrap_or("");
        let mut head = String::with_capacity(inner.len() + 48);
        head.push_str(r#"{"type":"message","#);
        head.push_str(inner);
        Self { head }
    }

    /// The frame for the recipient whose inbox took the message as `inbox_id`.
    pub fn with_inbox_id(&self, inbox_id: u64) -> tokio_tungstenite::tungstenite::Utf8Bytes {
        let mut frame = String::with_capacity(self.head.len() + 32);
        frame.push_str(&self.head);
        frame.push_str(r#","inbox_id":"#);
        frame.push_str(itoa::Buffer::new().format(inbox_id));
        frame.push('}');
        frame.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_encoded_once_equals_the_frame_encoded_per_recipient() {
        let message = Message {
            channel: "g:x".into(),
            seq: 9,
            from: "u\"1".into(),
            from_device: "d".into(),
            client_msg_id: "c".into(),
            text: "hello \u{1F600} \\ \n".into(),
            ts: 17,
            reply_to: Some(3),
            ..Message::default()
        };
        let frame = MessageFrame::new(&message);
        for inbox_id in [1, 42, u64::MAX] {
            let spliced: Value = serde_json::from_str(&frame.with_inbox_id(inbox_id)).unwrap();
            let whole: Value = serde_json::from_str(
                &ServerFrame::Message(Message {
                    inbox_id: Some(inbox_id),
                    ..message.clone()
                })
                .to_json(),
            )
            .unwrap();
            assert_eq!(spliced, whole);
        }
    }

    #[test]
    fn the_fast_and_the_careful_decoders_agree() {
        for text in [
            r#"{"type":"send","req":"r1","client_msg_id":"c1","to":"u1","text":"hi \"you\" \u00e9"}"#,
            r#"{"type":"send","client_msg_id":"c1","channel":"g:x","text":"","extra":[1,2]}"#,
            r#"{"type":"sync","after":5,"limit":10,"req":"s"}"#,
            r#"{"type":"sync"}"#,
            r#"{"type":"cursor","inbox_id":3}"#,
            r#"{"type":"heartbeat","req":null}"#,
            r#"{"type":"typing","channel":"dm:a:b"}"#,
            r#"{"type":"send","client_msg_id":"c1","channel":"g:x","text":"re","reply_to":4}"#,
        ] {
            let fast = serde_json::from_str::<Fast<'_>>(text)
                .ok()
                .and_then(Fast::frame);
            assert_eq!(
                fast,
                Some(Inbound::decode_carefully(text).unwrap()),
                "{text}"
            );
        }
        // What the fast path does not take goes the careful way.
        for text in [
            r#"{"type":"send","client_msg_id":"c","to":"u","channel":"g:x","text":"t"}"#,
            r#"{"type":"cursor"}"#,
            r#"{"type":"dance"}"#,
        ] {
            assert!(
                serde_json::from_str::<Fast<'_>>(text)
                    .ok()
                    .and_then(Fast::frame)
                    .is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn decodes_send_with_req() {
        let f = Inbound::decode(
            r#"{"type":"send","req":"r1","client_msg_id":"c1","to":"u1","text":"hi"}"#,
        )
        .unwrap();
        assert_eq!(f.req.as_deref(), Some("r1"));
        assert_eq!(
            f.frame,
            ClientFrame::Send(SendRequest {
                client_msg_id: "c1".into(),
                target: SendTarget::User("u1".into()),
                text: "hi".into(),
                action: ItemAction::Message,
            })
        );
    }

    #[test]
    fn unknown_type_is_a_value_not_an_error() {
        let f = Inbound::decode(r#"{"type":"dance"}"#).unwrap();
        assert_eq!(
            f.frame,
            ClientFrame::Unknown {
                kind: "dance".into()
            }
        );
    }

    #[test]
    fn errors_keep_correlation() {
        let e =
            Inbound::decode(r#"{"type":"send","req":"r9","client_msg_id":"c9","to":5,"text":"x"}"#)
                .unwrap_err();
        assert_eq!(e.req.as_deref(), Some("r9"));
        assert_eq!(e.client_msg_id.as_deref(), Some("c9"));
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert!(Inbound::decode("[1,2]").is_err());
        assert!(Inbound::decode("not json").is_err());
        assert!(Inbound::decode(r#"{"type":"sync","after":-1}"#).is_err());
    }

    #[test]
    fn encodes_frames_as_documented() {
        let f = ServerFrame::Ack {
            ack: Ack {
                client_msg_id: "c".into(),
                channel: "dm:a:b".into(),
                seq: 1,
                inbox_id: 2,
                ts: 3,
            },
            req: None,
        };
        let v: Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"ack","client_msg_id":"c","channel":"dm:a:b","seq":1,"inbox_id":2,"ts":3})
        );
        let p = ServerFrame::Presence {
            user: "u".into(),
            status: Status::Offline,
            last_seen: None,
        };
        let v: Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"presence","user":"u","status":"offline","last_seen":null})
        );
    }
}
