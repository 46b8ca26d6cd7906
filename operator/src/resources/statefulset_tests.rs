//! Field-by-field tests of the StatefulSet builder.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Toleration};

use super::*;

fn pod_spec(sts: &StatefulSet) -> PodSpec {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default()
}

fn container(sts: &StatefulSet) -> Container {
    pod_spec(sts)
        .containers
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn env(c: &Container, name: &str) -> Option<EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name).cloned()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    env(c, name).and_then(|e| e.value)
}

#[test]
fn statefulset_identity_selector_and_scaling_fields() {
    let cc = ChatCluster::test();
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 4, "abc");
    assert_eq!(sts.metadata.name.as_deref(), Some("demo"));
    assert_eq!(sts.metadata.namespace.as_deref(), Some("chat"));
    let owners = sts.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].name, "demo");
    assert_eq!(owners[0].api_version, "parley.dev/v1alpha1");
    assert_eq!(owners[0].controller, Some(true));
    let spec = sts.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.replicas,
        Some(4),
        "replicas come from the argument, not the spec (drain)"
    );
    assert_eq!(spec.service_name.as_deref(), Some("demo-headless"));
    assert_eq!(
        spec.pod_management_policy.as_deref(),
        Some("Parallel"),
        "scale-up is immediate"
    );
    assert_eq!(spec.selector.match_labels, Some(selector_labels(&cc)));
    let tpl_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in selector_labels(&cc) {
        assert_eq!(
            tpl_labels.get(&k),
            Some(&v),
            "template carries selector label {k}"
        );
    }
    let ann = spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        ann.get("parley.dev/config-hash").map(String::as_str),
        Some("abc")
    );
    assert_eq!(spec.volume_claim_templates, None, "no PVC unless embedded");
}

#[test]
fn statefulset_container_passes_node_identity_and_config() {
    let cc = ChatCluster::test();
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 3, "h");
    let c = container(&sts);
    assert_eq!(c.name, "chat-node");
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example.com/parley/chat-node:0.1.0")
    );
    let ports = c.ports.clone().unwrap_or_default();
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].container_port),
        (Some("http"), 8080)
    );
    let pod_name = env(&c, "POD_NAME")
        .and_then(|e| e.value_from)
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(pod_name.as_deref(), Some("metadata.name"));
    // POD_NAME must come before the variables that refer to it.
    let names: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(
        names.iter().position(|n| *n == "POD_NAME")
            < names.iter().position(|n| *n == "PARLEY_NODE_ID")
    );
    assert_eq!(
        env_value(&c, "PARLEY_NODE_ID").as_deref(),
        Some("$(POD_NAME)")
    );
    assert_eq!(
        env_value(&c, "PARLEY_ADVERTISE_URL").as_deref(),
        Some("http://$(POD_NAME).demo-headless.chat.svc:8080")
    );
    assert_eq!(
        env_value(&c, "PARLEY_TOKEN_SECRET_FILE").as_deref(),
        Some("/etc/parley/token/secret")
    );
    assert_eq!(env(&c, "PARLEY_PUSH_SECRET_FILE"), None);
    let from = c.env_from.clone().unwrap_or_default();
    assert_eq!(
        from[0].config_map_ref.as_ref().map(|r| r.name.as_str()),
        Some("demo-config")
    );
}

#[test]
fn statefulset_probes_prestop_and_grace_fit_the_drain_timeout() {
    let cc = ChatCluster::test().drain_timeout(200);
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 3, "h");
    let c = container(&sts);
    let path = |p: Option<Probe>| p.and_then(|p| p.http_get).and_then(|h| h.path);
    assert_eq!(path(c.readiness_probe.clone()).as_deref(), Some("/readyz"));
    assert_eq!(path(c.liveness_probe.clone()).as_deref(), Some("/healthz"));
    let sleep = c
        .lifecycle
        .and_then(|l| l.pre_stop)
        .and_then(|p| p.sleep)
        .map(|s| s.seconds);
    assert_eq!(sleep, Some(PRESTOP_SLEEP_SECONDS));
    let grace = pod_spec(&sts)
        .termination_grace_period_seconds
        .unwrap_or_default();
    assert_eq!(grace, termination_grace_seconds(&cc));
    assert!(
        grace >= 200 + PRESTOP_SLEEP_SECONDS,
        "grace {grace} must cover preStop + drain timeout"
    );
}

#[test]
fn statefulset_mounts_token_and_push_secrets_as_files() {
    let cc = ChatCluster::test()
        .token_secret("parley-token", "signing")
        .push("https://push.example.com/hook", "parley-push", "hmac");
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 3, "h");
    let c = container(&sts);
    assert_eq!(
        env_value(&c, "PARLEY_TOKEN_SECRET_FILE").as_deref(),
        Some("/etc/parley/token/signing")
    );
    assert_eq!(
        env_value(&c, "PARLEY_PUSH_SECRET_FILE").as_deref(),
        Some("/etc/parley/push/hmac")
    );
    let vols = pod_spec(&sts).volumes.unwrap_or_default();
    let secret_of = |n: &str| {
        vols.iter()
            .find(|v| v.name == n)
            .and_then(|v| v.secret.clone())
    };
    let token = secret_of("token").unwrap_or_default();
    assert_eq!(token.secret_name.as_deref(), Some("parley-token"));
    assert_eq!(token.items.unwrap_or_default()[0].key, "signing");
    assert_eq!(
        secret_of("push").and_then(|s| s.secret_name).as_deref(),
        Some("parley-push")
    );
    let mounts = c.volume_mounts.unwrap_or_default();
    let mount = |n: &str| {
        mounts
            .iter()
            .find(|m| m.name == n)
            .map(|m| (m.mount_path.clone(), m.read_only))
    };
    assert_eq!(
        mount("token"),
        Some(("/etc/parley/token".into(), Some(true)))
    );
    assert_eq!(mount("push"), Some(("/etc/parley/push".into(), Some(true))));
    assert_eq!(mount("data").map(|m| m.0), Some("/var/lib/parley".into()));
    assert!(
        vols.iter()
            .any(|v| v.name == "data" && v.empty_dir.is_some()),
        "non-embedded data is scratch"
    );
    assert_eq!(
        mount("tmp").map(|m| m.0),
        Some("/tmp".into()),
        "scratch beside a read-only root"
    );
}

#[test]
fn statefulset_embedded_store_gets_a_volume_claim() {
    let cc = ChatCluster::test()
        .replicas(1)
        .embedded("20Gi", Some("fast"));
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 1, "h");
    let claims = sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let spec = claims[0].spec.clone().unwrap_or_default();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned());
    assert_eq!(size.map(|q| q.0).as_deref(), Some("20Gi"));
    assert!(
        !pod_spec(&sts)
            .volumes
            .unwrap_or_default()
            .iter()
            .any(|v| v.name == "data"),
        "claim, not emptyDir"
    );
}

#[test]
fn statefulset_is_non_root_and_takes_scheduling_from_the_spec() {
    let mut cc = ChatCluster::test();
    cc.spec.node_selector = Some([("pool".to_string(), "chat".to_string())].into());
    cc.spec.tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 3, "h");
    let pod = pod_spec(&sts);
    let sc = pod.security_context.clone().unwrap_or_default();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "the node never talks to the API"
    );
    assert_eq!(pod.node_selector, cc.spec.node_selector);
    assert_eq!(pod.tolerations, cc.spec.tolerations);
    let spread = pod.topology_spread_constraints.unwrap_or_default();
    assert_eq!(
        spread[0].topology_key, "kubernetes.io/hostname",
        "default spread over hosts"
    );
    let csc = container(&sts).security_context.unwrap_or_default();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
}

#[test]
fn statefulset_mounts_node_certificates_and_etcd_and_tikv_credentials() {
    let cc = ChatCluster::test()
        .etcd_secrets("etcd-client", Some("etcd-user"))
        .tikv(&["http://pd:2379"]);
    let mut cc = cc;
    cc.spec.storage.tikv.as_mut().unwrap().tls_secret_ref = Some(crate::crd::LocalSecretRef {
        name: "tikv-client".into(),
    });
    let sts = statefulset(&cc, &crate::pools::pools(&cc)[0], 3, "h");
    let c = container(&sts);
    let ports = c.ports.clone().unwrap_or_default();
    assert_eq!(
        (ports[1].name.as_deref(), ports[1].container_port),
        (Some("internal"), 8081)
    );
    for (var, value) in [
        (
            "PARLEY_INTERNAL_ADVERTISE_URL",
            "https://$(POD_NAME).demo-headless.chat.svc:8081",
        ),
        (
            "PARLEY_INTERNAL_CERT_FILE",
            "/etc/parley/node-tls/$(POD_NAME).crt",
        ),
        (
            "PARLEY_INTERNAL_KEY_FILE",
            "/etc/parley/node-tls/$(POD_NAME).key",
        ),
        ("PARLEY_INTERNAL_CA_FILE", "/etc/parley/node-tls/ca.crt"),
        ("PARLEY_ETCD_CA_FILE", "/etc/parley/etcd-tls/ca.crt"),
        ("PARLEY_ETCD_CERT_FILE", "/etc/parley/etcd-tls/tls.crt"),
        ("PARLEY_ETCD_KEY_FILE", "/etc/parley/etcd-tls/tls.key"),
        (
            "PARLEY_ETCD_PASSWORD_FILE",
            "/etc/parley/etcd-auth/password",
        ),
        ("PARLEY_TIKV_CA_FILE", "/etc/parley/tikv-tls/ca.crt"),
        ("PARLEY_TIKV_CERT_FILE", "/etc/parley/tikv-tls/tls.crt"),
        ("PARLEY_TIKV_KEY_FILE", "/etc/parley/tikv-tls/tls.key"),
    ] {
        assert_eq!(env_value(&c, var).as_deref(), Some(value), "{var}");
    }
    let user = env(&c, "PARLEY_ETCD_USER")
        .and_then(|e| e.value_from)
        .and_then(|v| v.secret_key_ref)
        .expect("the etcd user comes from its Secret");
    assert_eq!(
        (user.name.as_str(), user.key.as_str()),
        ("etcd-user", "username")
    );
    let volumes = pod_spec(&sts).volumes.unwrap_or_default();
    let secret_of = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.secret.clone())
            .and_then(|s| s.secret_name)
    };
    assert_eq!(secret_of("node-tls").as_deref(), Some("demo-node-tls"));
    assert_eq!(secret_of("etcd-tls").as_deref(), Some("etcd-client"));
    assert_eq!(secret_of("etcd-auth").as_deref(), Some("etcd-user"));
    assert_eq!(secret_of("tikv-tls").as_deref(), Some("tikv-client"));

    let open_cc = ChatCluster::test().tls_mode(crate::crd::TlsMode::Disabled);
    let open = statefulset(&open_cc, &crate::pools::pools(&open_cc)[0], 3, "h");
    let c = container(&open);
    assert_eq!(env(&c, "PARLEY_INTERNAL_CERT_FILE"), None);
    assert_eq!(
        env_value(&c, "PARLEY_INTERNAL_ADVERTISE_URL").as_deref(),
        Some("http://$(POD_NAME).demo-headless.chat.svc:8081")
    );
}

#[test]
fn a_zone_gets_its_own_statefulset_selector_scheduling_and_location() {
    let cc = ChatCluster::test()
        .zone("a", "eu-west", 2)
        .zone("b", "us-east", 1);
    let pools = crate::pools::pools(&cc);
    let sts = statefulset(&cc, &pools[1], 1, "h");
    assert_eq!(sts.metadata.name.as_deref(), Some("demo-b"));
    let spec = sts.spec.clone().unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert_eq!(selector.get(ZONE_LABEL).map(String::as_str), Some("b"));
    assert_eq!(
        spec.service_name.as_deref(),
        Some("demo-headless"),
        "one headless Service for all zones"
    );
    assert_eq!(
        spec.update_strategy.and_then(|u| u.type_).as_deref(),
        Some("OnDelete"),
        "the operator replaces pods itself, each drained first"
    );
    let c = container(&sts);
    assert_eq!(env_value(&c, "PARLEY_REGION").as_deref(), Some("us-east"));
    assert_eq!(env_value(&c, "PARLEY_ZONE").as_deref(), Some("b"));
    assert_eq!(
        env_value(&c, "PARLEY_INTERNAL_CERT_FILE").as_deref(),
        Some("/etc/parley/node-tls/$(POD_NAME).crt"),
        "a zone's pods find their certificate by pod name in the one node-tls Secret"
    );
    let pod = pod_spec(&sts);
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("b")
    );
    let tpl = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(tpl.get(ZONE_LABEL).map(String::as_str), Some("b"));
    // Without zones the nodes keep the default region and no zone.
    let plain = ChatCluster::test();
    let c = container(&statefulset(
        &plain,
        &crate::pools::pools(&plain)[0],
        3,
        "h",
    ));
    assert_eq!(env_value(&c, "PARLEY_REGION"), None);
    assert_eq!(env_value(&c, "PARLEY_ZONE"), None);
}
