//! The CRD in `crds/` and the chart is crdgen's output; `chat-operator render` prints every
//! child for a valid ChatCluster and refuses an invalid one with its reasons.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn crds_dir_matches_crdgen_output() {
    let generated = operator::crd::crd_yaml().expect("crd serialises");
    let checked_in = read("crds/chatclusters.parley.dev.yaml");
    assert!(
        generated == checked_in,
        "crds/chatclusters.parley.dev.yaml is stale: run `cargo run -p operator --bin crdgen > crds/chatclusters.parley.dev.yaml` \
         and copy it to charts/parley-operator/crds/"
    );
}

#[test]
fn chart_crd_is_the_same_file_as_crds_dir() {
    let chart = read("charts/parley-operator/crds/chatclusters.parley.dev.yaml");
    assert!(
        chart == read("crds/chatclusters.parley.dev.yaml"),
        "charts/parley-operator/crds/chatclusters.parley.dev.yaml differs from crds/: copy crds/chatclusters.parley.dev.yaml over it"
    );
}

#[test]
fn crd_has_scale_subresource_printer_columns_and_cel_rules() {
    let crd: serde_yaml::Value =
        serde_yaml::from_str(&read("crds/chatclusters.parley.dev.yaml")).expect("CRD is YAML");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"].as_str(),
        Some(".spec.replicas")
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"].as_str(),
        Some(".status.replicas")
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"].as_str(),
        Some(".status.selector")
    );
    assert!(v["subresources"]["status"].is_mapping());
    let cols: Vec<_> = v["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(cols, ["Replicas", "Ready", "Connections", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"][0].as_str(), Some("chat"));
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = serde_yaml::to_string(&spec["x-kubernetes-validations"]).expect("rules");
    assert!(
        rules.contains("self.storage.backend != 'embedded' || self.replicas <= 1"),
        "{rules}"
    );
    assert_eq!(
        spec["properties"]["replicas"]["minimum"].as_f64(),
        Some(0.0),
        "replicas: 0 pauses"
    );
    assert!(rules.contains("exists_one(y, y.name == z.name)"), "{rules}");
    assert_eq!(
        spec["properties"]["zones"]["maxItems"].as_u64(),
        Some(16),
        "CEL over a list needs a bound"
    );
    let auto = &spec["properties"]["autoscaling"]["properties"];
    assert_eq!(
        auto["targetConnectionsPerNode"]["default"].as_i64(),
        Some(8000)
    );
    assert_eq!(
        auto["scaleDownStabilizationSeconds"]["default"].as_i64(),
        Some(300)
    );
    assert_eq!(spec["properties"]["replicas"]["default"].as_i64(), Some(3));
    let backends: Vec<_> = spec["properties"]["storage"]["properties"]["backend"]["enum"]
        .as_sequence()
        .expect("enum")
        .iter()
        .filter_map(|b| b.as_str())
        .collect();
    assert_eq!(backends, ["tikv", "etcd", "embedded"]);
    assert_eq!(
        spec["properties"]["service"]["properties"]["type"]["default"].as_str(),
        Some("ClusterIP")
    );
    let required: Vec<_> = spec["required"]
        .as_sequence()
        .expect("required")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(required, ["etcd", "image"]);
}

#[test]
fn render_prints_every_child_of_a_valid_chatcluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["render", "-f"])
        .arg(repo_root().join("charts/parley-operator/examples/chatcluster.yaml"))
        .output()
        .expect("chat-operator runs");
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("each document is YAML"))
        .collect();
    let kinds: Vec<_> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Secret/demo-token",
            "Secret/demo-ca",
            "Secret/demo-node-tls",
            "ConfigMap/demo-config",
            "Service/demo-headless",
            "Service/demo",
            "PodDisruptionBudget/demo",
            "StatefulSet/demo"
        ]
    );
    let sts = &docs[7];
    assert_eq!(sts["spec"]["replicas"].as_i64(), Some(3));
    assert_eq!(
        docs[3]["data"]["PARLEY_TIKV_PD"].as_str(),
        Some("https://pd.tikv.svc:2379")
    );
    assert!(
        docs[3]["data"]["PARLEY_INSECURE_CLUSTER"].is_null(),
        "the example secures every connection"
    );
    assert_eq!(docs[5]["spec"]["type"].as_str(), Some("LoadBalancer"));
    for d in &docs[..3] {
        assert!(
            d["data"].is_null(),
            "render never invents a key: {:?}",
            d["metadata"]["name"]
        );
    }
    // The mounts render shows: node certificates, etcd's and TiKV's client certificates.
    let volumes: Vec<(&str, &str)> = sts["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["secret"]["secretName"].as_str()?)))
        .collect();
    for want in [
        ("node-tls", "demo-node-tls"),
        ("etcd-tls", "etcd-client"),
        ("tikv-tls", "tikv-client"),
    ] {
        assert!(volumes.contains(&want), "{want:?} in {volumes:?}");
    }
}

#[test]
fn render_of_the_cert_manager_example_shows_a_certificate_per_pod() {
    let text = operator::resources::render(&read(
        "charts/parley-operator/examples/chatcluster-cert-manager.yaml",
    ))
    .expect("valid example");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("each document is YAML"))
        .collect();
    let certs: Vec<&serde_yaml::Value> =
        docs.iter().filter(|d| d["kind"] == "Certificate").collect();
    assert_eq!(certs.len(), 2, "one per pod");
    assert_eq!(certs[0]["apiVersion"].as_str(), Some("cert-manager.io/v1"));
    assert_eq!(
        certs[1]["spec"]["secretName"].as_str(),
        Some("managed-node-tls-1")
    );
    assert_eq!(
        certs[1]["spec"]["uris"][0].as_str(),
        Some("spiffe://parley/chat.managed/node/managed-1")
    );
    assert_eq!(
        certs[1]["spec"]["issuerRef"]["name"].as_str(),
        Some("parley-nodes")
    );
    assert!(
        !docs.iter().any(|d| d["metadata"]["name"] == "managed-ca"),
        "no operator CA with cert-manager"
    );
}

#[test]
fn render_shows_one_statefulset_and_budget_per_zone() {
    let text = operator::resources::render(&read(
        "charts/parley-operator/examples/chatcluster-zones.yaml",
    ))
    .expect("valid example");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("each document is YAML"))
        .collect();
    let named = |kind: &str| -> Vec<String> {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let zones = ["demo-eu-west-1a", "demo-eu-west-1b", "demo-us-east-1a"];
    assert_eq!(named("StatefulSet"), zones);
    assert_eq!(named("PodDisruptionBudget"), zones);
    let sts = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "demo-us-east-1a")
        .expect("the us zone");
    assert_eq!(sts["spec"]["replicas"].as_i64(), Some(1));
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(value("PARLEY_REGION").as_deref(), Some("us-east"));
    assert_eq!(value("PARLEY_ZONE").as_deref(), Some("us-east-1a"));
    assert_eq!(
        sts["spec"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/zone"].as_str(),
        Some("us-east-1a")
    );
    assert_eq!(
        sts["spec"]["updateStrategy"]["type"].as_str(),
        Some("OnDelete")
    );
    // Zones and mutual TLS together: every zone's pods find their certificate in the one
    // node-tls Secret, and nothing runs in plain text.
    assert_eq!(
        value("PARLEY_INTERNAL_CERT_FILE").as_deref(),
        Some("/etc/parley/node-tls/$(POD_NAME).crt")
    );
    assert_eq!(named("Secret"), ["demo-token", "demo-ca", "demo-node-tls"]);
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the ConfigMap");
    assert!(
        config["data"]["PARLEY_INSECURE_CLUSTER"].is_null(),
        "the zones example is secure: {:?}",
        config["data"]
    );
}

#[test]
fn render_of_the_embedded_example_claims_a_volume_for_its_single_node() {
    let text = operator::resources::render(&read(
        "charts/parley-operator/examples/chatcluster-embedded.yaml",
    ))
    .expect("valid example");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("each document is YAML"))
        .collect();
    assert_eq!(
        docs.len(),
        7,
        "no generated token Secret when tokenSecretRef is given (the CA and node-tls are there)"
    );
    let sts = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("StatefulSet");
    assert_eq!(sts["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].as_str(),
        Some("10Gi")
    );
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    assert_eq!(cm["data"]["PARLEY_STORE"].as_str(), Some("embedded"));
    assert_eq!(cm["data"]["PARLEY_CLUSTER"].as_str(), Some("chat.solo"));
}

#[test]
fn render_refuses_an_invalid_chatcluster_with_its_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = read("charts/parley-operator/examples/chatcluster.yaml")
        .replace("backend: tikv", "backend: embedded");
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["render", "-f"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success(), "an invalid spec must exit non-zero");
    assert!(
        out.stdout.is_empty(),
        "nothing is printed for an invalid spec"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replicas must be 1"),
        "stderr should say why: {err}"
    );

    std::fs::write(&bad, "apiVersion: parley.dev/v1alpha1\nkind: ChatCluster\nmetadata: {name: x}\nspec: {replicas: 2}\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["render", "-f"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing field `image`"),
        "stderr should name the missing field: {err}"
    );
}
