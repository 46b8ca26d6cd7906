//! Bearer tokens: HS256 JWTs naming the user and the device of one login.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::ApiError;

/// How long a token is valid.
pub const TOKEN_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The device id of this login.
    pub dev: String,
    /// Expiry, seconds since the epoch (JWT convention).
    pub exp: i64,
    pub iat: i64,
    /// The device's session generation when the token was issued: the token is valid only
    /// while it is the device's current one (see `crate::sessions`). Tokens issued before
    /// generations existed carry none and count as 0, valid until the device is revoked.
    #[serde(default, rename = "gen")]
    pub generation: u64,
}

/// The signing and checking keys derived from the cluster's shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user_id` on `device_id` at session `generation`, and its expiry in ms.
    pub fn issue(
        &self,
        user_id: &str,
        device_id: &str,
        generation: u64,
        now_ms: i64,
    ) -> Result<(String, i64), ApiError> {
        let expires_at = now_ms + TOKEN_LIFETIME_MS;
        let claims = Claims {
            sub: user_id.to_owned(),
            dev: device_id.to_owned(),
            exp: expires_at / 1000,
            iat: now_ms / 1000,
            generation,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("token signing failed: {e}")))?;
        Ok((token, expires_at))
    }

    /// Check a token's signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    _ => "the token is malformed",
                };
                ApiError::unauthorized(format!("{why}; log in again with POST /v1/sessions"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forgeries_do_not() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let now = crate::now_ms();
        let (token, exp) = keys.issue("u1", "phone", 3, now).unwrap();
        assert!(exp > now);
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.dev.as_str()), ("u1", "phone"));
        assert_eq!(claims.generation, 3);
        let other = TokenKeys::new(b"another secret, also long enough");
        assert!(
            other.verify(&token).is_err(),
            "a token signed with another secret is refused"
        );
        assert!(keys.verify("garbage").is_err());
        let (old, _) = keys
            .issue("u1", "phone", 0, now - 2 * TOKEN_LIFETIME_MS)
            .unwrap();
        assert!(keys.verify(&old).is_err(), "an expired token is refused");
    }

    #[test]
    fn tokens_from_before_generations_still_verify_as_generation_zero() {
        #[derive(Serialize)]
        struct OldClaims<'a> {
            sub: &'a str,
            dev: &'a str,
            exp: i64,
            iat: i64,
        }
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = crate::now_ms() / 1000;
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &OldClaims {
                sub: "u1",
                dev: "phone",
                exp: now + 60,
                iat: now,
            },
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        let claims = TokenKeys::new(secret).verify(&old).unwrap();
        assert_eq!(claims.generation, 0);
    }
}
