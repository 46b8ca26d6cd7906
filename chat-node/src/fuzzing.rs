//! Fuzz entry points: what each fuzz target in `fuzz/` feeds its input to, kept here so that
//! the regular test suite replays the checked-in corpus (`fuzz/corpus/<target>/`) through
//! the very same code (`tests/fuzz_corpus.rs`). Each function must return normally for
//! every input: an `Err` is a fine answer, a panic or an unbounded allocation is a finding.
//!
//! Not part of the node's API; public only for the fuzz crate and the tests.

use serde_json::{Map, Value};

use crate::auth::TokenKeys;
use crate::protocol::frames::Inbound;
use crate::protocol::items;
use crate::protocol::types::{
    GroupPatch, Login, NewGroup, NewMember, PasswordChange, ProfilePatch, PushRegistration,
    ReadBody, SignUp,
};
use crate::store::records;

/// A WebSocket text frame: decoded, or refused keeping its correlation ids.
pub fn frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // tungstenite closes such frames (1007) before they are decoded
    };
    match Inbound::decode(text) {
        Ok(_) => {}
        Err(e) => {
            let _ = crate::protocol::frames::ServerFrame::error(e.error, e.client_msg_id, e.req)
                .to_json();
        }
    }
}

/// Every JSON body type of the HTTP API, and the body of `POST /v1/messages` (a send, or an
/// edit, delete or reaction).
pub fn http_body(data: &[u8]) {
    let _ = serde_json::from_slice::<SignUp>(data);
    let _ = serde_json::from_slice::<Login>(data);
    let _ = serde_json::from_slice::<PasswordChange>(data);
    let _ = serde_json::from_slice::<ProfilePatch>(data);
    let _ = serde_json::from_slice::<NewGroup>(data);
    let _ = serde_json::from_slice::<NewMember>(data);
    let _ = serde_json::from_slice::<PushRegistration>(data);
    let _ = serde_json::from_slice::<GroupPatch>(data);
    let _ = serde_json::from_slice::<ReadBody>(data);
    if let Ok(mut obj) = serde_json::from_slice::<Map<String, Value>>(data) {
        let _ = items::http_request(&mut obj);
    }
}

/// A bearer token, checked with a fixed key: refused unless that key signed it.
pub fn token(data: &[u8]) {
    static KEYS: std::sync::OnceLock<TokenKeys> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| TokenKeys::new(b"fuzzing-secret-0123456789abcdef"));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keys.verify(text);
    }
}

/// A stored value of each record type (JSON and the write path's packed binary ones), and a
/// counter.
pub fn record(data: &[u8]) {
    let key = b"fuzz";
    let _ = records::decode::<records::UserRecord>(key, data);
    let _ = records::decode::<records::GroupRecord>(key, data);
    let _ = records::MessageRecord::decode(key, data);
    let _ = records::InboxEntry::decode(key, data);
    let _ = records::UserChannel::decode(key, data);
    let _ = records::decode::<records::DeviceRecord>(key, data);
    let _ = records::decode::<records::ContactRecord>(key, data);
    let _ = records::decode_u64(key, data);
    let _ = crate::store::keys::parse_revocation(data);
    let _ = crate::store::keys::due_of(data);
    let _ = crate::store::keys::trailing_number(data);
}
