//! The ConfigMap holding the chat nodes' environment (PROTOCOL.md, "Running a node").
//!
//! Pod-specific values (node id, advertise URL) and secret file paths are set on the
//! container itself; everything shared by all nodes lives here and reaches the container
//! through `envFrom`. The StatefulSet's pod template carries a hash of this data, so a change
//! rolls the pods (one at a time, each draining on SIGTERM).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{DATA_DIR, HTTP_PORT, child_meta, configmap_name};
use crate::crd::{ChatCluster, StorageBackend};

/// The ConfigMap `<name>-config`.
pub fn configmap(cc: &ChatCluster) -> ConfigMap {
    let spec = &cc.spec;
    let mut data = BTreeMap::from([
        ("PARLEY_LISTEN".to_string(), format!("0.0.0.0:{HTTP_PORT}")),
        ("PARLEY_DATA_DIR".to_string(), DATA_DIR.to_string()),
        (
            "PARLEY_STORE".to_string(),
            spec.storage.backend.as_flag().to_string(),
        ),
        ("PARLEY_ETCD".to_string(), spec.etcd.endpoints.join(",")),
        ("PARLEY_CLUSTER".to_string(), cc.cluster_id()),
        (
            "PARLEY_HEARTBEAT_TIMEOUT".to_string(),
            spec.limits.heartbeat_timeout_seconds.to_string(),
        ),
        (
            "PARLEY_MAX_GROUP_MEMBERS".to_string(),
            spec.limits.max_group_members.to_string(),
        ),
        (
            "PARLEY_MAX_MESSAGE_CHARS".to_string(),
            spec.limits.max_message_chars.to_string(),
        ),
        (
            "PARLEY_CAPACITY".to_string(),
            spec.limits.connections_per_node.to_string(),
        ),
    ]);
    if let (StorageBackend::Tikv, Some(t)) = (spec.storage.backend, &spec.storage.tikv) {
        data.insert("PARLEY_TIKV_PD".into(), t.pd_endpoints.join(","));
    }
    if let Some(url) = spec.push.as_ref().and_then(|p| p.webhook_url.as_ref()) {
        data.insert("PARLEY_PUSH_WEBHOOK".into(), url.clone());
    }
    data.insert(
        "PARLEY_INTERNAL_LISTEN".into(),
        format!("0.0.0.0:{}", super::INTERNAL_PORT),
    );
    // The nodes refuse plain text in cluster mode; what the spec leaves open is said here
    // (and in an InsecureCluster event), never silently.
    if !super::plain_text_parts(cc).is_empty() {
        data.insert("PARLEY_INSECURE_CLUSTER".into(), "true".into());
    }
    ConfigMap {
        metadata: child_meta(cc, configmap_name(cc)),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A stable hash (FNV-1a, 64 bit, hex) of the ConfigMap's data, for the pod template
/// annotation. Stable across Rust versions, unlike `DefaultHasher`.
pub fn config_hash(cm: &ConfigMap) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in cm.data.iter().flatten() {
        for b in k.bytes().chain([0u8]).chain(v.bytes()).chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(cc: &ChatCluster) -> BTreeMap<String, String> {
        configmap(cc).data.unwrap_or_default()
    }

    #[test]
    fn configmap_carries_every_shared_node_setting() {
        let cc = ChatCluster::test().etcd(&["http://e1:2379", "http://e2:2379"]);
        let cm = configmap(&cc);
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("chat"));
        let d = data(&cc);
        assert_eq!(d["PARLEY_LISTEN"], "0.0.0.0:8080");
        assert_eq!(d["PARLEY_DATA_DIR"], "/var/lib/parley");
        assert_eq!(d["PARLEY_STORE"], "etcd");
        assert_eq!(d["PARLEY_ETCD"], "http://e1:2379,http://e2:2379");
        assert_eq!(
            d["PARLEY_CLUSTER"], "chat.demo",
            "cluster id is <namespace>.<name>"
        );
        assert_eq!(d["PARLEY_HEARTBEAT_TIMEOUT"], "30");
        assert_eq!(d["PARLEY_MAX_GROUP_MEMBERS"], "100");
        assert_eq!(d["PARLEY_MAX_MESSAGE_CHARS"], "100000");
        assert_eq!(d["PARLEY_CAPACITY"], "10000");
        assert!(!d.contains_key("PARLEY_TIKV_PD"));
        assert!(!d.contains_key("PARLEY_PUSH_WEBHOOK"));
        assert_eq!(d["PARLEY_INTERNAL_LISTEN"], "0.0.0.0:8081");
        assert_eq!(
            d["PARLEY_INSECURE_CLUSTER"], "true",
            "etcd without spec.etcd.tlsSecretRef is plain text, said out loud"
        );
        assert_eq!(d.len(), 11);
        let secure = data(&cc.etcd_secrets("etcd-client", None));
        assert!(!secure.contains_key("PARLEY_INSECURE_CLUSTER"));
    }

    #[test]
    fn configmap_adds_tikv_pd_and_push_webhook_when_configured() {
        let cc = ChatCluster::test()
            .tikv(&["http://pd0:2379", "http://pd1:2379"])
            .push("https://push.example.com/hook", "parley-push", "hmac");
        let d = data(&cc);
        assert_eq!(d["PARLEY_STORE"], "tikv");
        assert_eq!(d["PARLEY_TIKV_PD"], "http://pd0:2379,http://pd1:2379");
        assert_eq!(d["PARLEY_PUSH_WEBHOOK"], "https://push.example.com/hook");
    }

    #[test]
    fn config_hash_is_stable_and_changes_with_the_data() {
        let a = configmap(&ChatCluster::test());
        assert_eq!(
            config_hash(&a),
            config_hash(&configmap(&ChatCluster::test()))
        );
        let mut changed = ChatCluster::test();
        changed.spec.limits.max_group_members = 50;
        assert_ne!(config_hash(&a), config_hash(&configmap(&changed)));
        assert_eq!(config_hash(&a).len(), 16);
    }
}
