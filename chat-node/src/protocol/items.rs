//! Requests that add a timeline item about another message: `edit`, `delete` and `react`
//! frames, and `POST /v1/messages` with a `kind`. They travel as a [`SendRequest`] whose
//! [`ItemAction`] says what the item does, so they take the same path as a send (routing to
//! the channel's owner, dedupe on `client_msg_id`, limits).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ApiError;
use super::frames::{SendRequest, SendTarget};

/// Longest emoji (Unicode scalar values) a reaction may carry.
pub const MAX_EMOJI_CHARS: usize = 16;

/// What a send-like request adds to the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ItemAction {
    /// A plain message, optionally answering `reply_to`.
    #[default]
    Message,
    /// A plain message answering message `reply_to` of the same channel.
    Reply { reply_to: u64 },
    /// New text for the sender's own plain message `seq`.
    Edit { seq: u64 },
    /// Take back message `seq` (its author, or a group's owner).
    Delete { seq: u64 },
    /// React to message `seq` with the request's text (an emoji), or take that back.
    React { seq: u64, remove: bool },
}

impl ItemAction {
    /// The message the item is about, for edits, deletes and reactions.
    pub fn target(&self) -> Option<u64> {
        match self {
            Self::Edit { seq } | Self::Delete { seq } | Self::React { seq, .. } => Some(*seq),
            Self::Message | Self::Reply { .. } => None,
        }
    }
}

/// Read an `edit`, `delete` or `react` request (`kind` is the frame type, or the HTTP body's
/// `kind`: `edit`, `delete`, `reaction`) from a JSON object.
pub fn target_request(kind: &str, obj: &mut Map<String, Value>) -> Result<SendRequest, ApiError> {
    let what = match kind {
        "edit" => "edit",
        "delete" => "delete",
        _ => "react",
    };
    let client_msg_id = string(obj, "client_msg_id")?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what} needs \"client_msg_id\" (1 to 64 characters)"
        ))
    })?;
    let channel = string(obj, "channel")?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what} needs \"channel\": the channel of the message it is about"
        ))
    })?;
    let seq = number(obj, "seq")?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what} needs \"seq\": the seq of the message it is about"
        ))
    })?;
    let (text, action) = match what {
        "edit" => (
            string(obj, "text")?
                .ok_or_else(|| ApiError::bad_request("edit needs \"text\": the new text"))?,
            ItemAction::Edit { seq },
        ),
        "delete" => (String::new(), ItemAction::Delete { seq }),
        _ => {
            let emoji = string(obj, "emoji")?.ok_or_else(|| {
                ApiError::bad_request("react needs \"emoji\" (1 to 16 characters)")
            })?;
            let remove = match obj.remove("remove") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(ApiError::bad_request("\"remove\" must be true or false")),
            };
            (emoji, ItemAction::React { seq, remove })
        }
    };
    Ok(SendRequest {
        client_msg_id,
        target: SendTarget::Channel(channel),
        text,
        action,
    })
}

/// The body of `POST /v1/messages`: a send, or with `kind` an edit, delete or reaction.
pub fn http_request(obj: &mut Map<String, Value>) -> Result<SendRequest, ApiError> {
    match obj.remove("kind") {
        None | Some(Value::Null) => SendRequest::from_json(obj),
        Some(Value::String(kind)) if matches!(kind.as_str(), "edit" | "delete" | "reaction") => {
            target_request(&kind, obj)
        }
        Some(_) => Err(ApiError::bad_request(
            "\"kind\" must be absent (a message), \"edit\", \"delete\" or \"reaction\"",
        )),
    }
}

/// An emoji for a reaction: 1 to [`MAX_EMOJI_CHARS`] characters, no control characters.
pub fn emoji(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    let ok = (1..=MAX_EMOJI_CHARS).contains(&n) && !s.chars().any(char::is_control);
    ok.then_some(()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "emoji must be 1 to {MAX_EMOJI_CHARS} characters with no control characters"
        ))
    })
}

fn string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "\"{field}\" must be a string"
        ))),
    }
}

fn number(obj: &mut Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn http_bodies_take_a_kind() {
        let r = http_request(&mut obj(serde_json::json!({
            "kind": "reaction", "client_msg_id": "c", "channel": "g:x", "seq": 3, "emoji": "👍", "remove": true
        })))
        .unwrap();
        assert_eq!(
            r.action,
            ItemAction::React {
                seq: 3,
                remove: true
            }
        );
        assert_eq!(r.text, "👍");
        let r = http_request(&mut obj(serde_json::json!({
            "kind": "delete", "client_msg_id": "c", "channel": "g:x", "seq": 3
        })))
        .unwrap();
        assert_eq!(
            (r.action, r.text.as_str()),
            (ItemAction::Delete { seq: 3 }, "")
        );
        let e = http_request(&mut obj(serde_json::json!({
            "kind": "edit", "client_msg_id": "c", "channel": "g:x", "seq": 3
        })))
        .unwrap_err();
        assert!(e.message.contains("text"), "{}", e.message);
        assert!(http_request(&mut obj(serde_json::json!({"kind": "poke"}))).is_err());
        assert!(emoji("👍").is_ok());
        assert!(emoji("").is_err());
        assert!(emoji(&"x".repeat(17)).is_err());
    }
}
