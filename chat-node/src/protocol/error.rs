//! Wire errors: the codes of PROTOCOL.md, their HTTP statuses, and a human message that says
//! what went wrong and what to do.

use serde::{Deserialize, Serialize};

/// The error codes of the wire contract. `MethodNotAllowed` and `PayloadTooLarge`-style
/// extensions stay within the documented set where one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    /// An extension of the contract: the path exists but not with this method (HTTP 405).
    MethodNotAllowed,
    /// An extension of the contract: the request body did not arrive within
    /// `--body-timeout-secs` (HTTP 408; the connection is closed).
    RequestTimeout,
    Conflict,
    TooLarge,
    GroupFull,
    /// An extension (second wave): a user's `--max-groups-per-user` is reached (HTTP 422).
    GroupLimit,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::GroupFull => "group_full",
            Self::GroupLimit => "group_limit",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status the code travels with.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::GroupFull | Self::GroupLimit => 422,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

/// An error a client sees, over HTTP (status + `{"error": {...}}`) or as an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which a retry may succeed: the `Retry-After` header of a 429 or 503.
    pub retry_after: Option<u64>,
    /// The methods a path serves: the `Allow` header of a 405.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// The same error with an `Allow` header (a 405) listing `methods` (e.g. `GET, POST`).
    #[must_use]
    pub fn with_allow(mut self, methods: impl Into<String>) -> Self {
        self.allow = Some(methods.into());
        self
    }

    /// The same error with a `Retry-After` of `secs` seconds.
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// 422 `group_full`: a group would pass `max` members.
    pub fn group_full(max: usize) -> Self {
        Self::new(
            ErrorCode::GroupFull,
            format!(
                "a group has at most {max} members (its owner included); remove a member first"
            ),
        )
    }

    /// The HTTP body: `{"error": {"code", "message"}}`.
    pub fn to_body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}
