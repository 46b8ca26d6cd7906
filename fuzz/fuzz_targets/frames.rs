//! WebSocket text frames: `Inbound::decode` answers every input with a frame or an error,
//! never a panic, and an error keeps the frame's correlation ids when it had them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chat_node::fuzzing::frame(data);
});
