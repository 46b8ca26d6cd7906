//! The public wire contract (`PROTOCOL.md`): frames, HTTP bodies, error codes and limits.
//!
//! Everything a client can send or receive is typed here, so the gateway and the API only
//! parse into these types and encode out of them. Unknown frame types decode to a normal value
//! ([`frames::ClientFrame::Unknown`]), never a crash.

pub mod close;
pub mod error;
pub mod frames;
pub mod items;
pub mod limits;
pub mod timeline;
pub mod types;
pub mod validate;

pub use close::CloseReason;
pub use error::{ApiError, ErrorCode};
pub use limits::Limits;
