//! The StatefulSet of chat nodes.
//!
//! Each pod is one chat node whose node id is its pod name (`PARLEY_NODE_ID` from the
//! downward API), advertising its stable DNS name through the headless Service. Shared
//! settings come from the ConfigMap (`envFrom`); secrets are mounted as files.
//!
//! One StatefulSet per node pool ([`crate::pools`]): `<name>` without zones, `<name>-<zone>`
//! per zone, the zone's pods started with `PARLEY_ZONE` and `PARLEY_REGION`.
//!
//! Updates: `OnDelete`. A template change (new image, settings) does not make the StatefulSet
//! controller replace pods by itself; the operator replaces them one at a time, each drained
//! first through etcd (see `controller::rollout`), so no client is cut off.
//!
//! Termination: the node, on SIGTERM, stops taking connections, sends `reconnect` to its
//! clients and exits 0. The preStop hook first sleeps a few seconds so that endpoints stop
//! sending new clients before that, and the grace period covers the drain timeout on top
//! (a pod deleted by anyone else than the operator still drains).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext,
    SleepAction, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::tls::{
    ETCD_AUTH_MOUNT, ETCD_TLS_MOUNT, INTERNAL_PORT, NODE_TLS_MOUNT, TIKV_TLS_MOUNT,
    node_tls_secret_name,
};
use super::{child_meta, configmap_name, headless_name, labels, selector_labels, token_secret_ref};
use crate::crd::{ChatCluster, EmbeddedSpec, StorageBackend, TlsMode};
use crate::pools::{Pool, ZONE_LABEL};

/// Port of the chat node (HTTP, WebSocket and `/metrics`).
pub const HTTP_PORT: i32 = 8080;
/// Name of the chat node container.
pub const CONTAINER_NAME: &str = "chat-node";
/// Where the embedded store's files live (a PVC for `embedded`, an emptyDir otherwise).
pub const DATA_DIR: &str = "/var/lib/parley";
/// Directory of the mounted token signing key.
pub const TOKEN_MOUNT: &str = "/etc/parley/token";
/// Directory of the mounted push HMAC key.
pub const PUSH_MOUNT: &str = "/etc/parley/push";
/// Seconds the preStop hook waits before SIGTERM, so Services stop routing new clients first.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;
/// Extra seconds on top of preStop + drain timeout before the kubelet kills the node.
const GRACE_MARGIN_SECONDS: i64 = 15;
/// Non-root user of the chat node image.
const RUN_AS_USER: i64 = 65532;

/// `terminationGracePeriodSeconds`: preStop sleep + drain timeout + margin, so a node that is
/// moving its clients is never killed half-way.
pub fn termination_grace_seconds(cc: &ChatCluster) -> i64 {
    PRESTOP_SLEEP_SECONDS + cc.spec.drain.timeout_seconds + GRACE_MARGIN_SECONDS
}

/// The StatefulSet of `pool` at `replicas` pods; `config_hash` is the ConfigMap's hash, put
/// on the pod template so a settings change rolls the pods.
pub fn statefulset(cc: &ChatCluster, pool: &Pool, replicas: i32, config_hash: &str) -> StatefulSet {
    let embedded = cc.spec.storage.backend == StorageBackend::Embedded;
    let claim = embedded.then(|| data_claim(cc.spec.storage.embedded.clone().unwrap_or_default()));
    let mut metadata = child_meta(cc, pool.name.clone());
    if let (Some(zone), Some(labels)) = (&pool.zone, metadata.labels.as_mut()) {
        labels.insert(ZONE_LABEL.into(), zone.clone());
    }
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_name(cc)),
            selector: LabelSelector {
                match_labels: Some(pool.selector_labels(cc)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            template: pod_template(cc, pool, config_hash, embedded),
            volume_claim_templates: claim.map(|c| vec![c]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn pod_template(
    cc: &ChatCluster,
    pool: &Pool,
    config_hash: &str,
    embedded: bool,
) -> PodTemplateSpec {
    let spec = &cc.spec;
    let token = token_secret_ref(cc);
    let mut volumes = vec![Volume {
        name: "token".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(token.name.clone()),
            items: Some(vec![KeyToPath {
                key: token.key.clone(),
                path: token.key.clone(),
                ..Default::default()
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "token".into(),
            mount_path: TOKEN_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if !embedded {
        volumes.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    // The root filesystem is read-only; /tmp is scratch space.
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    });
    let ns = cc.namespace_or_default();
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        value_env("PARLEY_NODE_ID", "$(POD_NAME)"),
        value_env(
            "PARLEY_ADVERTISE_URL",
            &format!(
                "http://$(POD_NAME).{}.{ns}.svc:{HTTP_PORT}",
                headless_name(cc)
            ),
        ),
        value_env(
            "PARLEY_TOKEN_SECRET_FILE",
            &format!("{TOKEN_MOUNT}/{}", token.key),
        ),
    ];
    security_mounts(cc, &mut volumes, &mut mounts, &mut env);
    if let Some(region) = &pool.region {
        env.push(value_env("PARLEY_REGION", region));
    }
    if let Some(zone) = &pool.zone {
        env.push(value_env("PARLEY_ZONE", zone));
    }
    if let Some(secret) = spec.push.as_ref().and_then(|p| p.secret_ref.as_ref()) {
        volumes.push(Volume {
            name: "push".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: secret.key.clone(),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "push".into(),
            mount_path: PUSH_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        env.push(value_env(
            "PARLEY_PUSH_SECRET_FILE",
            &format!("{PUSH_MOUNT}/{}", secret.key),
        ));
    }
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(spec.image.clone()),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("internal".into()),
                container_port: INTERNAL_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: configmap_name(cc),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 2, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 10, 6)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRESTOP_SLEEP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Lifecycle::default()
        }),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut pod_labels = labels(cc);
    pod_labels.extend(pool.selector_labels(cc));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([
                (
                    "parley.dev/config-hash".to_string(),
                    config_hash.to_string(),
                ),
                ("prometheus.io/scrape".to_string(), "true".to_string()),
                ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
                ("prometheus.io/path".to_string(), "/metrics".to_string()),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(termination_grace_seconds(cc)),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: pool.node_selector.clone(),
            tolerations: pool.tolerations.clone(),
            affinity: pool.affinity.clone(),
            topology_spread_constraints: Some(
                spec.topology_spread_constraints
                    .clone()
                    .unwrap_or_else(|| default_spread(cc)),
            ),
            ..PodSpec::default()
        }),
    }
}

/// A read-only Secret volume of `keys` (each kept under its own name).
fn secret_volume(name: &str, secret: &str, keys: Option<&[&str]>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: keys.map(|keys| {
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        ..Default::default()
                    })
                    .collect()
            }),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn read_only(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The internal listener's certificates, and etcd's and TiKV's client credentials: mounted
/// Secrets and the `PARLEY_*` variables naming their files (docs/operations.md, "Security").
fn security_mounts(
    cc: &ChatCluster,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
    env: &mut Vec<EnvVar>,
) {
    let spec = &cc.spec;
    let scheme = if spec.tls.mode == TlsMode::Disabled {
        "http"
    } else {
        "https"
    };
    env.push(value_env(
        "PARLEY_INTERNAL_ADVERTISE_URL",
        &format!(
            "{scheme}://$(POD_NAME).{}.{}.svc:{INTERNAL_PORT}",
            headless_name(cc),
            cc.namespace_or_default()
        ),
    ));
    if spec.tls.mode != TlsMode::Disabled {
        // Mounted whole: the operator adds pods' keys as the cluster grows.
        volumes.push(secret_volume("node-tls", &node_tls_secret_name(cc), None));
        mounts.push(read_only("node-tls", NODE_TLS_MOUNT));
        env.push(value_env(
            "PARLEY_INTERNAL_CERT_FILE",
            &format!("{NODE_TLS_MOUNT}/$(POD_NAME).crt"),
        ));
        env.push(value_env(
            "PARLEY_INTERNAL_KEY_FILE",
            &format!("{NODE_TLS_MOUNT}/$(POD_NAME).key"),
        ));
        env.push(value_env(
            "PARLEY_INTERNAL_CA_FILE",
            &format!("{NODE_TLS_MOUNT}/ca.crt"),
        ));
    }
    if let Some(tls) = &spec.etcd.tls_secret_ref {
        let keys = ["ca.crt", "tls.crt", "tls.key"];
        volumes.push(secret_volume("etcd-tls", &tls.name, Some(&keys)));
        mounts.push(read_only("etcd-tls", ETCD_TLS_MOUNT));
        for (var, key) in [
            ("PARLEY_ETCD_CA_FILE", "ca.crt"),
            ("PARLEY_ETCD_CERT_FILE", "tls.crt"),
            ("PARLEY_ETCD_KEY_FILE", "tls.key"),
        ] {
            env.push(value_env(var, &format!("{ETCD_TLS_MOUNT}/{key}")));
        }
    }
    if let Some(auth) = &spec.etcd.auth_secret_ref {
        volumes.push(secret_volume("etcd-auth", &auth.name, Some(&["password"])));
        mounts.push(read_only("etcd-auth", ETCD_AUTH_MOUNT));
        env.push(EnvVar {
            name: "PARLEY_ETCD_USER".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                    name: auth.name.clone(),
                    key: "username".into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
        env.push(value_env(
            "PARLEY_ETCD_PASSWORD_FILE",
            &format!("{ETCD_AUTH_MOUNT}/password"),
        ));
    }
    if let (StorageBackend::Tikv, Some(tls)) = (
        spec.storage.backend,
        spec.storage
            .tikv
            .as_ref()
            .and_then(|t| t.tls_secret_ref.as_ref()),
    ) {
        let keys = ["ca.crt", "tls.crt", "tls.key"];
        volumes.push(secret_volume("tikv-tls", &tls.name, Some(&keys)));
        mounts.push(read_only("tikv-tls", TIKV_TLS_MOUNT));
        for (var, key) in [
            ("PARLEY_TIKV_CA_FILE", "ca.crt"),
            ("PARLEY_TIKV_CERT_FILE", "tls.crt"),
            ("PARLEY_TIKV_KEY_FILE", "tls.key"),
        ] {
            env.push(value_env(var, &format!("{TIKV_TLS_MOUNT}/{key}")));
        }
    }
}

/// Best-effort spread over hosts, so losing one machine loses few nodes.
fn default_spread(cc: &ChatCluster) -> Vec<TopologySpreadConstraint> {
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(cc)),
            ..Default::default()
        }),
        ..TopologySpreadConstraint::default()
    }]
}

fn data_claim(e: EmbeddedSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: e.storage_class_name,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), e.size)])),
                ..Default::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn http_probe(path: &str, initial: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
#[path = "statefulset_tests.rs"]
mod tests;
