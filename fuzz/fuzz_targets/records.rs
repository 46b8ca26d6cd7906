//! Stored records: decoding a value read from the store (any bytes: a corrupted or hostile
//! store) is an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chat_node::fuzzing::record(data);
});
