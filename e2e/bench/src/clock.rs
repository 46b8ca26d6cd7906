//! One monotonic time base for the whole process. Senders and receivers live in the same
//! process, so a send time written into a message (nanoseconds since [`start`]) is read by
//! the receiver against the same clock, whichever node the message travelled through.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// The process's time origin (set on first use).
pub fn start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Nanoseconds since [`start`].
pub fn now_ns() -> u64 {
    start().elapsed().as_nanos() as u64
}

/// Microseconds elapsed since `ns` (a [`now_ns`] value), at least 1.
pub fn since_us(ns: u64) -> u64 {
    (now_ns().saturating_sub(ns) / 1_000).max(1)
}
