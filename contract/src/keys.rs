//! The key layout. The root `/parley` is fixed; `<cluster>` is the node's `--cluster`, which
//! the operator sets to `<namespace>.<name>`.
//!
//! - `/parley/<cluster>/nodes/<node_id>` → [`crate::Member`] JSON, under the node's lease.
//! - `/parley/<cluster>/drain/<node_id>` → [`crate::DrainRequest`] JSON, written by the
//!   operator.
//!
//! Everything of one cluster is under [`cluster_prefix`] (what the operator's finalizer
//! deletes); the trailing slash keeps `chat.demo` from matching `chat.demo2`.

/// Root of every key Parley keeps in etcd.
pub const KEY_ROOT: &str = "/parley";

/// `/parley/<cluster>/`.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{KEY_ROOT}/{cluster}/")
}

/// `/parley/<cluster>/nodes/`: the live registrations.
pub fn nodes_prefix(cluster: &str) -> String {
    format!("{KEY_ROOT}/{cluster}/nodes/")
}

/// `/parley/<cluster>/nodes/<node_id>`.
pub fn node_key(cluster: &str, node_id: &str) -> String {
    format!("{}{node_id}", nodes_prefix(cluster))
}

/// `/parley/<cluster>/drain/`: the operator's drain requests.
pub fn drain_prefix(cluster: &str) -> String {
    format!("{KEY_ROOT}/{cluster}/drain/")
}

/// `/parley/<cluster>/drain/<node_id>`.
pub fn drain_key(cluster: &str, node_id: &str) -> String {
    format!("{}{node_id}", drain_prefix(cluster))
}

/// The node id at the end of a key under `prefix` (one of [`nodes_prefix`] or
/// [`drain_prefix`]); `None` for a key elsewhere.
pub fn node_id_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix(prefix).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        assert_eq!(cluster_prefix("chat.demo"), "/parley/chat.demo/");
        assert_eq!(nodes_prefix("chat.demo"), "/parley/chat.demo/nodes/");
        assert_eq!(
            node_key("chat.demo", "demo-0"),
            "/parley/chat.demo/nodes/demo-0"
        );
        assert_eq!(
            drain_key("chat.demo", "demo-4"),
            "/parley/chat.demo/drain/demo-4"
        );
        let p = drain_prefix("c");
        assert_eq!(node_id_of(&p, "/parley/c/drain/n1"), Some("n1"));
        assert_eq!(node_id_of(&p, "/parley/c/nodes/n1"), None);
        assert_eq!(node_id_of(&p, "/parley/c/drain/"), None);
    }
}
