//! Certificates of the chat nodes (`spec.tls`) and the security settings they imply.
//!
//! Every pod mounts one Secret, `<name>-node-tls`, holding `ca.crt` and, for each pod,
//! `<pod>.crt` and `<pod>.key`; a node picks its own by `POD_NAME`. The operator keeps that
//! Secret up to date (Kubernetes refreshes mounted Secrets in place and the node reloads
//! changed files, so a renewal needs no restart):
//!
//! - `selfSigned`: the operator signs the certificates with its CA (`<name>-ca`, see
//!   [`crate::pki`]) and renews each when a third of its lifetime is left;
//! - `certManager`: one cert-manager `Certificate` per pod ([`certificates`]) writes
//!   `<name>-node-tls-<ordinal>`; the operator copies those into `<name>-node-tls`.
//!
//! One Secret for all pods means a pod can read its peers' keys too: it already holds the
//! cluster's token signing key, which is worth more. A CSI driver that mounts a per-pod
//! certificate (cert-manager's csi-driver-spiffe) would close that; the node only needs the
//! three file paths.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::{child_meta, headless_name};
use crate::crd::{ChatCluster, StorageBackend, TlsMode};

/// The chat node's internal (node-to-node) port.
pub const INTERNAL_PORT: i32 = 8081;
/// Where `<name>-node-tls` is mounted.
pub const NODE_TLS_MOUNT: &str = "/etc/parley/node-tls";
/// Where `spec.etcd.tlsSecretRef` is mounted.
pub const ETCD_TLS_MOUNT: &str = "/etc/parley/etcd-tls";
/// Where the password of `spec.etcd.authSecretRef` is mounted.
pub const ETCD_AUTH_MOUNT: &str = "/etc/parley/etcd-auth";
/// Where `spec.storage.tikv.tlsSecretRef` is mounted.
pub const TIKV_TLS_MOUNT: &str = "/etc/parley/tikv-tls";
/// Annotation of `<name>-node-tls`: each pod certificate's expiry (JSON, Unix seconds).
pub const NOT_AFTER_ANNOTATION: &str = "parley.dev/not-after";

/// `<name>-ca`: the operator's CA (selfSigned).
pub fn ca_secret_name(cc: &ChatCluster) -> String {
    format!("{}-ca", cc.name_or_empty())
}

/// `<name>-node-tls`: what every pod mounts.
pub fn node_tls_secret_name(cc: &ChatCluster) -> String {
    format!("{}-node-tls", cc.name_or_empty())
}

/// `<name>-node-tls-<ordinal>` (`<name>-node-tls-<zone>-<ordinal>` for a zone's pod): the
/// Secret cert-manager writes for the pod `pod` (certManager).
pub fn pod_tls_secret_name(cc: &ChatCluster, pod: &str) -> String {
    let name = cc.name_or_empty();
    let suffix = pod
        .strip_prefix(name.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(pod);
    format!("{name}-node-tls-{suffix}")
}

/// A pod's node identity, as its certificate must name it.
pub fn node_uri(cc: &ChatCluster, pod: &str) -> String {
    format!("spiffe://parley/{}/node/{pod}", cc.cluster_id())
}

/// A pod's stable DNS name through the headless Service.
pub fn pod_dns(cc: &ChatCluster, pod: &str) -> String {
    format!(
        "{pod}.{}.{}.svc",
        headless_name(cc),
        cc.namespace_or_default()
    )
}

/// cert-manager's `Certificate` kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// One cert-manager `Certificate` per pod of `pods` (every pool's; certManager mode, none
/// otherwise).
pub fn certificates(cc: &ChatCluster, pods: &[String]) -> Vec<DynamicObject> {
    let tls = &cc.spec.tls;
    let (TlsMode::CertManager, Some(issuer)) = (tls.mode, &tls.issuer_ref) else {
        return Vec::new();
    };
    let hours = i64::from(tls.certificate_hours);
    pods.iter()
        .map(|pod| {
            let mut cert = DynamicObject::new(pod, &certificate_resource()).data(json!({
                "spec": {
                    "secretName": pod_tls_secret_name(cc, pod),
                    "commonName": pod,
                    "uris": [node_uri(cc, pod)],
                    "dnsNames": [pod_dns(cc, pod)],
                    "duration": format!("{hours}h"),
                    "renewBefore": format!("{}h", (hours / 3).max(1)),
                    "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                    "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                    "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
                }
            }));
            cert.metadata = child_meta(cc, pod.clone());
            cert
        })
        .collect()
}

/// `<name>-ca` with the CA's certificate and key (`None`: without data, as `render` shows it).
pub fn ca_secret(cc: &ChatCluster, ca: Option<(&str, &str)>) -> Secret {
    let mut metadata = child_meta(cc, ca_secret_name(cc));
    metadata.annotations = Some(BTreeMap::from([(
        "parley.dev/generated".to_string(),
        "created once by chat-operator (spec.tls.mode selfSigned); delete it to roll a new CA"
            .to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: ca.map(|(cert, key)| {
            BTreeMap::from([
                ("tls.crt".to_string(), ByteString(cert.as_bytes().to_vec())),
                ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
            ])
        }),
        ..Secret::default()
    }
}

/// `<name>-node-tls` with `data` (`ca.crt`, `<pod>.crt`, `<pod>.key`) and the expiries;
/// `None` data is what `render` shows (the operator fills it in when it applies).
pub fn node_tls_secret(
    cc: &ChatCluster,
    data: Option<BTreeMap<String, ByteString>>,
    not_after: &BTreeMap<String, i64>,
) -> Secret {
    let mut metadata = child_meta(cc, node_tls_secret_name(cc));
    metadata.annotations = Some(BTreeMap::from([(
        NOT_AFTER_ANNOTATION.to_string(),
        serde_json::to_string(not_after).unwrap_or_default(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data,
        ..Secret::default()
    }
}

/// What would run in plain text with this spec, each naming the field that secures it. The
/// nodes get `--insecure-cluster` when this is not empty (they refuse plain text otherwise).
pub fn plain_text_parts(cc: &ChatCluster) -> Vec<&'static str> {
    let spec = &cc.spec;
    let mut parts = Vec::new();
    if spec.tls.mode == TlsMode::Disabled {
        parts.push("spec.tls.mode is disabled: no mutual TLS between the nodes");
    }
    if spec.etcd.tls_secret_ref.is_none() {
        parts.push("spec.etcd.tlsSecretRef is not set: etcd is reached without TLS");
    }
    if spec.storage.backend == StorageBackend::Tikv
        && spec
            .storage
            .tikv
            .as_ref()
            .and_then(|t| t.tls_secret_ref.as_ref())
            .is_none()
    {
        parts.push("spec.storage.tikv.tlsSecretRef is not set: TiKV is reached without TLS");
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_manager_mode_renders_one_certificate_per_pod_naming_its_identity() {
        let cc = ChatCluster::test().cert_manager("parley-issuer");
        let pods: Vec<String> = (0..3).map(|o| format!("demo-{o}")).collect();
        let certs = certificates(&cc, &pods);
        assert_eq!(certs.len(), 3);
        let c = serde_json::to_value(&certs[1]).unwrap();
        assert_eq!(c["apiVersion"], "cert-manager.io/v1");
        assert_eq!(c["kind"], "Certificate");
        assert_eq!(c["metadata"]["name"], "demo-1");
        assert_eq!(c["metadata"]["namespace"], "chat");
        assert_eq!(c["metadata"]["ownerReferences"][0]["kind"], "ChatCluster");
        let spec = &c["spec"];
        assert_eq!(spec["secretName"], "demo-node-tls-1");
        assert_eq!(spec["uris"][0], "spiffe://parley/chat.demo/node/demo-1");
        assert_eq!(spec["dnsNames"][0], "demo-1.demo-headless.chat.svc");
        assert_eq!(spec["issuerRef"]["name"], "parley-issuer");
        assert_eq!(spec["issuerRef"]["kind"], "Issuer");
        assert_eq!(spec["duration"], "2160h");
        assert_eq!(spec["renewBefore"], "720h");
        let usages: Vec<&str> = spec["usages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u.as_str())
            .collect();
        assert!(usages.contains(&"server auth") && usages.contains(&"client auth"));
        let zoned = certificates(&cc, &["demo-eu-1".to_string()]);
        let z = serde_json::to_value(&zoned[0]).unwrap();
        assert_eq!(z["metadata"]["name"], "demo-eu-1");
        assert_eq!(z["spec"]["secretName"], "demo-node-tls-eu-1");
        assert_eq!(
            z["spec"]["uris"][0],
            "spiffe://parley/chat.demo/node/demo-eu-1"
        );
        assert!(
            certificates(&ChatCluster::test(), &pods).is_empty(),
            "selfSigned renders none"
        );
    }

    #[test]
    fn plain_text_parts_name_the_field_that_secures_them() {
        let secure = ChatCluster::test().etcd_secrets("etcd-client", None);
        assert!(plain_text_parts(&secure).is_empty());
        let open = ChatCluster::test().tls_mode(TlsMode::Disabled);
        let parts = plain_text_parts(&open);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].contains("spec.tls.mode") && parts[1].contains("tlsSecretRef"));
        let tikv = secure.tikv(&["http://pd:2379"]);
        assert!(plain_text_parts(&tikv)[0].contains("spec.storage.tikv.tlsSecretRef"));
    }
}
