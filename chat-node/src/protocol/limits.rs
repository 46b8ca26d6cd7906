//! The configurable limits of the contract and the sizes derived from them.

/// Limits in force on a node (PROTOCOL.md, "Limits"). Every node of a cluster should run the
/// same values; the operator passes them from the ChatCluster spec.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Message text length in Unicode scalar values (`chars`), not bytes.
    pub max_message_chars: usize,
    /// Group size, the creator included.
    pub max_group_members: usize,
    /// A device silent for this long is offline and its socket is closed.
    pub heartbeat_timeout: std::time::Duration,
    /// Default and maximum page size of `sync` and history.
    pub default_page: usize,
    pub max_page: usize,
    /// Groups one user may create (0: no limit).
    pub max_groups_per_user: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_chars: 100_000,
            max_group_members: 100,
            heartbeat_timeout: std::time::Duration::from_secs(30),
            default_page: 100,
            max_page: 1_000,
            max_groups_per_user: 1_000,
        }
    }
}

impl Limits {
    /// The largest WebSocket text frame and HTTP body accepted: the largest message even when
    /// every char is JSON-escaped as a 12-byte surrogate pair (`\ud83d\ude00`), plus 64 KiB
    /// for the rest of the frame.
    pub fn max_frame_bytes(&self) -> usize {
        12 * self.max_message_chars + 64 * 1024
    }

    /// Clamp a requested page size: absent means the default, above the maximum means the
    /// maximum (a client asking for too much gets a full page and `more: true`).
    pub fn page(&self, requested: Option<u64>) -> Result<usize, crate::protocol::ApiError> {
        match requested {
            None => Ok(self.default_page),
            Some(0) => Err(crate::protocol::ApiError::bad_request(
                "limit must be at least 1 (it defaults to 100 and is capped at 1000)",
            )),
            Some(n) => Ok((n as usize).min(self.max_page)),
        }
    }
}
