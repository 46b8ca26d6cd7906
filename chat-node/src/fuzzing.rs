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
        return; // the gateway closes such frames (1007) before they are decoded
    };
    match Inbound::decode(text) {
        Ok(_) => {}
        Err(e) => {
            let _ = crate::protocol::frames::ServerFrame::error(e.error, e.client_msg_id, e.req)
                .to_json();
        }
    }
}

/// A client's bytes on a WebSocket, through the gateway's frame reader: fed whole and fed
/// in pieces (the first byte picks the piece size), both must give the same messages or the
/// same refusal, and the reader must not hold more than one message's worth in between.
pub fn ws_bytes(data: &[u8]) {
    use crate::gateway::frame::Reader;
    const MAX: usize = 4096;
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut whole = Vec::new();
    let whole_result = Reader::default().feed(data, MAX, |m| {
        whole.push(m);
        true
    });
    let mut pieces = Vec::new();
    let mut reader = Reader::default();
    let mut pieces_result = Ok(false);
    for chunk in data.chunks(step) {
        pieces_result = reader.feed(chunk, MAX, |m| {
            pieces.push(m);
            true
        });
        if pieces_result.is_err() {
            break;
        }
        assert!(
            reader.held() <= 2 * MAX + 14 + step,
            "the reader holds {} bytes",
            reader.held()
        );
    }
    match (&whole_result, &pieces_result) {
        (Ok(_), Ok(_)) => assert_eq!(whole, pieces, "whole and in pieces differ"),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "whole and in pieces fail differently");
            assert!(pieces.starts_with(&whole) || whole.starts_with(&pieces));
        }
        _ => panic!("whole: {whole_result:?}, in pieces: {pieces_result:?}"),
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
