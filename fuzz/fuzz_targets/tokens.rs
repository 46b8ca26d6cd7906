//! Bearer tokens: `TokenKeys::verify` refuses anything it did not sign, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chat_node::fuzzing::token(data);
});
