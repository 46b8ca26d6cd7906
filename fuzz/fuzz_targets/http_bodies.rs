//! HTTP request bodies: every JSON body type of the API, and `POST /v1/messages`'s send
//! parsing, refuse bad input with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chat_node::fuzzing::http_body(data);
});
