//! A client's bytes on a WebSocket: the gateway's own frame reader answers every input with
//! messages or a refusal, never a panic, the same whether the bytes arrive at once or in
//! pieces, and holds no more than one message's worth between reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chat_node::fuzzing::ws_bytes(data);
});
