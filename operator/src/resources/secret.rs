//! The token signing Secret the operator creates when the spec references none.
//!
//! Unlike the other children it is created once and never applied again: re-applying a
//! freshly generated key would log every user out.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{child_meta, generated_token_secret_name};
use crate::crd::ChatCluster;

/// Key of the generated Secret that holds the signing key.
pub const TOKEN_SECRET_KEY: &str = "secret";

/// `<name>-token`. `key` is the signing key; `None` builds the Secret without data (what
/// `render` prints, since the key is generated only when the operator creates it).
pub fn token_secret(cc: &ChatCluster, key: Option<&[u8]>) -> Secret {
    let mut metadata = child_meta(cc, generated_token_secret_name(cc));
    metadata.annotations = Some(BTreeMap::from([(
        "parley.dev/generated".to_string(),
        "created once by chat-operator with a random key; never overwritten".to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: key.map(|k| BTreeMap::from([(TOKEN_SECRET_KEY.to_string(), ByteString(k.to_vec()))])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secret_holds_the_key_under_secret_and_render_shows_no_data() {
        let cc = ChatCluster::test();
        let s = token_secret(&cc, Some(b"k3y"));
        assert_eq!(s.metadata.name.as_deref(), Some("demo-token"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            s.data.unwrap_or_default().get("secret"),
            Some(&ByteString(b"k3y".to_vec()))
        );
        assert!(
            s.metadata.owner_references.is_some(),
            "deleted with the ChatCluster"
        );
        assert_eq!(token_secret(&cc, None).data, None);
    }
}
