//! Regions and zones. A node runs in one region (`--region`, default [`DEFAULT_REGION`]) and
//! optionally one zone (`--zone`, a failure domain inside it); every user has a home region.

/// The region of a node started without `--region`, and of every user record written before
/// regions existed: an upgraded single-region cluster keeps every user where they were.
pub const DEFAULT_REGION: &str = "default";

/// Whether `name` can name a region or zone: 1 to 63 characters of `[a-z0-9-]`, starting and
/// ending with a letter or digit (a DNS label, so the operator can put it in object names and
/// labels).
pub fn is_valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| ok(c) || c == '-')
        && name.starts_with(ok)
        && name.ends_with(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["default", "eu-west-1", "z1", "a"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "-eu",
            "eu-",
            "EU",
            "eu_west",
            "eu west",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
