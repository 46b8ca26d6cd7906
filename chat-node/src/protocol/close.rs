//! WebSocket close codes the server sends, named once (PROTOCOL.md, "WebSocket"), with the
//! reason text a client sees.

/// Why the server closes a socket, and the close code it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    /// 1000 after a `reconnect` frame: the user now belongs on another node.
    pub const MOVED: Self = Self {
        code: 1000,
        reason: "moved: reconnect where the reconnect frame says",
    };

    /// 1001 after a `reconnect` frame: the node is draining.
    pub const DRAINING: Self = Self {
        code: 1001,
        reason: "node is draining; reconnect where the reconnect frame says or via GET /v1/assign",
    };

    /// 1000: the device sent nothing for the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: Self = Self {
        code: 1000,
        reason: "heartbeat timeout: nothing received for the heartbeat interval",
    };

    /// 1003: a binary frame.
    pub const BINARY: Self = Self {
        code: 1003,
        reason: "binary frames are not supported: send JSON text frames",
    };

    /// 1007: a text frame that is not UTF-8.
    pub const INVALID_UTF8: Self = Self {
        code: 1007,
        reason: "text frames must be valid UTF-8",
    };

    /// 1008: the client did not read its frames fast enough.
    pub const SLOW_CONSUMER: Self = Self {
        code: 1008,
        reason: "slow consumer: frames were not read in time; reconnect and sync",
    };

    /// 1008: the token the socket was opened with was revoked (logout, device removal,
    /// password change, or a login past the device limit).
    pub const REVOKED: Self = Self {
        code: 1008,
        reason: "session revoked: log in again with POST /v1/sessions",
    };

    /// 1001 after a `reconnect` frame: the node lost its cluster registration and stepped
    /// down until it has registered again.
    pub const STEPPED_DOWN: Self = Self {
        code: 1001,
        reason: "node lost its cluster registration; reconnect via GET /v1/assign",
    };

    /// 1011: the node could not set the session up.
    pub const NOT_REGISTERED: Self = Self {
        code: 1011,
        reason: "the node could not register this connection; reconnect shortly",
    };

    /// 1002: the client broke the WebSocket protocol (the reason text says how).
    pub const PROTOCOL_ERROR: u16 = 1002;

    /// 1009: a frame over the size limit (the reason text names the limit).
    pub const TOO_LARGE: u16 = 1009;
}
