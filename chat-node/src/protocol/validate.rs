//! Validation of client-chosen values, each with an error that says what is allowed.

use super::ApiError;

/// `[a-z0-9_.-]{3,32}`.
pub fn username(s: &str) -> Result<(), ApiError> {
    let ok = (3..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        ApiError::bad_request("username must be 3 to 32 characters of a-z, 0-9, '_', '.' or '-'")
    })
}

/// 8 to 1024 chars.
pub fn password(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    (8..=1024)
        .contains(&n)
        .then_some(())
        .ok_or_else(|| ApiError::bad_request("password must be 8 to 1024 characters long"))
}

/// 1 to 64 chars, no control characters.
pub fn display_name(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    let ok = (1..=64).contains(&n) && !s.chars().any(char::is_control);
    ok.then_some(()).ok_or_else(|| {
        ApiError::bad_request("display_name must be 1 to 64 characters with no control characters")
    })
}

/// 1 to 100 chars, no control characters.
pub fn group_name(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    let ok = (1..=100).contains(&n) && !s.chars().any(char::is_control);
    ok.then_some(()).ok_or_else(|| {
        ApiError::bad_request("group name must be 1 to 100 characters with no control characters")
    })
}

/// `[A-Za-z0-9._-]{1,64}`.
pub fn device_id(s: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        ApiError::bad_request(
            "device_id must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
        )
    })
}

/// 1 to 64 chars, chosen by the client.
pub fn client_msg_id(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    (1..=64)
        .contains(&n)
        .then_some(())
        .ok_or_else(|| ApiError::bad_request("client_msg_id must be 1 to 64 characters long"))
}

/// Server-chosen ids (users, groups) as they appear in paths and channel names:
/// `[A-Za-z0-9_-]{1,64}`. Anything else cannot name an existing object.
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// Message text: 1 to `max_chars` Unicode scalar values.
pub fn text(s: &str, max_chars: usize) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::bad_request("text must not be empty"));
    }
    // Cheap upper bound first: a string of at most max_chars bytes has at most max_chars chars.
    if s.len() > max_chars && s.chars().count() > max_chars {
        return Err(ApiError::too_large(format!(
            "text is longer than {max_chars} characters; split it into several messages"
        )));
    }
    Ok(())
}

/// A channel name, parsed and checked to be in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `dm:<a>:<b>` with `a <= b` byte-wise.
    Direct(String, String),
    /// `g:<group_id>`.
    Group(String),
}

impl Channel {
    /// The one-on-one channel of two users (either order).
    pub fn direct(a: &str, b: &str) -> Self {
        if a <= b {
            Self::Direct(a.to_owned(), b.to_owned())
        } else {
            Self::Direct(b.to_owned(), a.to_owned())
        }
    }

    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_request(format!(
                "channel {s:?} is not valid: use dm:<user_a>:<user_b> (the two ids in byte order) or g:<group_id>"
            ))
        };
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or_else(bad)?;
            if !is_id(a) || !is_id(b) || a > b {
                return Err(bad());
            }
            Ok(Self::Direct(a.to_owned(), b.to_owned()))
        } else if let Some(g) = s.strip_prefix("g:") {
            if !is_id(g) {
                return Err(bad());
            }
            Ok(Self::Group(g.to_owned()))
        } else {
            Err(bad())
        }
    }
}

/// On the wire (node links), a channel is its name.
impl serde::Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Channel::parse(&name).map_err(|e| serde::de::Error::custom(e.message))
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(a, b) => write!(f, "dm:{a}:{b}"),
            Self::Group(g) => write!(f, "g:{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_counts_chars_not_bytes() {
        let max = 10;
        assert!(
            text(&"é".repeat(10), max).is_ok(),
            "10 two-byte chars fit in 10"
        );
        assert_eq!(
            text(&"é".repeat(11), max).unwrap_err().code,
            super::super::ErrorCode::TooLarge
        );
        assert_eq!(
            text("", max).unwrap_err().code,
            super::super::ErrorCode::BadRequest
        );
    }

    #[test]
    fn channels_round_trip_and_reject_non_canonical() {
        let c = Channel::direct("b", "a");
        assert_eq!(c.to_string(), "dm:a:b");
        assert_eq!(Channel::parse("dm:a:b").unwrap(), c);
        assert!(Channel::parse("dm:b:a").is_err());
        assert!(Channel::parse("dm:a/x:b").is_err());
        assert_eq!(
            Channel::parse("g:abc").unwrap(),
            Channel::Group("abc".into())
        );
        assert!(Channel::parse("x:abc").is_err());
    }

    #[test]
    fn usernames_and_device_ids() {
        assert!(username("al_ice.b-1").is_ok());
        assert!(username("Al").is_err());
        assert!(username("ALICE").is_err());
        assert!(device_id("phone-1.A_b").is_ok());
        assert!(device_id("").is_err());
        assert!(device_id(&"x".repeat(65)).is_err());
    }
}
