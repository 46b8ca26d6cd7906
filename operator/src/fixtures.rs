//! Fixtures for tests: `ChatCluster::test().replicas(3)` and friends.
//!
//! Public (not `#[cfg(test)]`) so the crate's integration tests in `tests/` use the same
//! builders as its unit tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{
    AuthSpec, AutoscalingSpec, ChatCluster, ChatClusterSpec, DrainSpec, EmbeddedSpec, EtcdSpec,
    LimitsSpec, PdbSpec, PushSpec, SecretKeyRef, ServiceSpec, StorageBackend, StorageSpec,
    TikvSpec, TlsSpec, ZoneSpec,
};

impl ChatCluster {
    /// A valid ChatCluster `demo` in namespace `chat` with a uid (as if read from the API),
    /// 3 replicas, the etcd store, and every other field at its default.
    pub fn test() -> Self {
        let mut cc = ChatCluster::new(
            "demo",
            ChatClusterSpec {
                replicas: 3,
                image: "registry.example.com/parley/chat-node:0.1.0".into(),
                etcd: EtcdSpec {
                    endpoints: vec!["http://etcd.chat.svc:2379".into()],
                    tls_secret_ref: None,
                    auth_secret_ref: None,
                },
                storage: StorageSpec::default(),
                service: ServiceSpec::default(),
                limits: LimitsSpec::default(),
                auth: None,
                push: None,
                drain: DrainSpec::default(),
                tls: TlsSpec::default(),
                pod_disruption_budget: PdbSpec::default(),
                resources: None,
                node_selector: None,
                tolerations: None,
                affinity: None,
                topology_spread_constraints: None,
                zones: None,
                autoscaling: None,
            },
        );
        cc.metadata = ObjectMeta {
            name: Some("demo".into()),
            namespace: Some("chat".into()),
            uid: Some("6f1b2c3d-0000-4000-8000-000000000001".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        cc
    }

    /// Sets `spec.replicas`.
    pub fn replicas(mut self, n: i32) -> Self {
        self.spec.replicas = n;
        self
    }

    /// Sets the etcd endpoints.
    pub fn etcd(mut self, endpoints: &[&str]) -> Self {
        self.spec.etcd.endpoints = endpoints.iter().map(|e| e.to_string()).collect();
        self
    }

    /// Uses TiKV at these PD endpoints.
    pub fn tikv(mut self, pd: &[&str]) -> Self {
        self.spec.storage.backend = StorageBackend::Tikv;
        self.spec.storage.tikv = Some(TikvSpec {
            pd_endpoints: pd.iter().map(|e| e.to_string()).collect(),
            tls_secret_ref: None,
        });
        self
    }

    /// Uses the embedded store on a claim of `size` (does not change replicas).
    pub fn embedded(mut self, size: &str, class: Option<&str>) -> Self {
        self.spec.storage.backend = StorageBackend::Embedded;
        self.spec.storage.embedded = Some(EmbeddedSpec {
            size: k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
            storage_class_name: class.map(str::to_string),
        });
        self
    }

    /// References an existing token Secret.
    pub fn token_secret(mut self, name: &str, key: &str) -> Self {
        self.spec.auth = Some(AuthSpec {
            token_secret_ref: Some(SecretKeyRef {
                name: name.into(),
                key: key.into(),
            }),
        });
        self
    }

    /// Sends pushes to `url`, signed with the key in Secret `name`/`key`.
    pub fn push(mut self, url: &str, name: &str, key: &str) -> Self {
        self.spec.push = Some(PushSpec {
            webhook_url: Some(url.into()),
            secret_ref: Some(SecretKeyRef {
                name: name.into(),
                key: key.into(),
            }),
        });
        self
    }

    /// Sets `spec.tls.mode`.
    pub fn tls_mode(mut self, mode: crate::crd::TlsMode) -> Self {
        self.spec.tls.mode = mode;
        self
    }

    /// Issues node certificates with cert-manager's Issuer `issuer`.
    pub fn cert_manager(mut self, issuer: &str) -> Self {
        self.spec.tls.mode = crate::crd::TlsMode::CertManager;
        self.spec.tls.issuer_ref = Some(crate::crd::IssuerRef {
            name: issuer.into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        });
        self
    }

    /// Reaches etcd over TLS with the client certificate in Secret `tls` and, when given,
    /// the user in Secret `auth`.
    pub fn etcd_secrets(mut self, tls: &str, auth: Option<&str>) -> Self {
        self.spec.etcd.tls_secret_ref = Some(crate::crd::LocalSecretRef { name: tls.into() });
        self.spec.etcd.auth_secret_ref =
            auth.map(|a| crate::crd::LocalSecretRef { name: a.into() });
        self
    }

    /// Sets the drain timeout.
    pub fn drain_timeout(mut self, secs: i64) -> Self {
        self.spec.drain.timeout_seconds = secs;
        self
    }

    /// Adds a zone (a node pool of `replicas` nodes in `region`).
    pub fn zone(mut self, name: &str, region: &str, replicas: i32) -> Self {
        self.spec.zones.get_or_insert_with(Vec::new).push(ZoneSpec {
            name: name.into(),
            region: region.into(),
            replicas,
            node_selector: Some(std::collections::BTreeMap::from([(
                "topology.kubernetes.io/zone".to_string(),
                name.to_string(),
            )])),
            affinity: None,
            tolerations: None,
        });
        self
    }

    /// Turns on autoscaling: `min..=max` nodes per pool, `target` connections per node,
    /// scale-down after `stabilization` seconds.
    pub fn autoscaling(mut self, min: i32, max: i32, target: i64, stabilization: i64) -> Self {
        self.spec.autoscaling = Some(AutoscalingSpec {
            min_replicas: min,
            max_replicas: max,
            target_connections_per_node: target,
            scale_down_stabilization_seconds: stabilization,
        });
        self
    }

    /// Sets `metadata.generation`.
    pub fn generation(mut self, g: i64) -> Self {
        self.metadata.generation = Some(g);
        self
    }

    /// Adds the operator's finalizer (as after the first reconcile).
    pub fn with_finalizer(mut self) -> Self {
        self.metadata.finalizers = Some(vec![crate::crd::FINALIZER.into()]);
        self
    }

    /// Marks the object as being deleted.
    pub fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        self
    }
}
