//! The etcd connection the operator itself makes for a ChatCluster: `spec.etcd.endpoints`
//! with the TLS material and credentials of the Secrets `spec.etcd` names, the same ones
//! the chat nodes mount (`tlsSecretRef`: `ca.crt`, `tls.crt`, `tls.key`;
//! `authSecretRef`: `username`, `password`).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use parley_etcd_connect::{ClientCert, EtcdConnect, EtcdTls, EtcdUser};

use crate::crd::ChatCluster;
use crate::drain;

/// Read the Secrets and build the connection. A missing Secret or key is a connection
/// failure naming the field (reported in the `Degraded` condition).
pub async fn etcd_connect(
    cc: &ChatCluster,
    client: &kube::Client,
) -> Result<EtcdConnect, drain::Error> {
    let ns = cc.namespace_or_default();
    let endpoints = cc.spec.etcd.endpoints.clone();
    let fail = |reason: String| drain::Error::Connect {
        endpoints: endpoints.join(","),
        reason,
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let read = |field: &'static str, name: String| {
        let api = api.clone();
        let ns = ns.clone();
        async move {
            let secret = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("cannot read Secret {ns}/{name} ({field}): {e}"))?
                .ok_or_else(|| format!("Secret {ns}/{name} ({field}) not found"))?;
            let data = secret.data.unwrap_or_default();
            Ok::<_, String>(move |key: &str| {
                data.get(key)
                    .map(|v| v.0.clone())
                    .ok_or_else(|| format!("Secret {ns}/{name} ({field}) has no key {key:?}"))
            })
        }
    };
    let mut connect = EtcdConnect::plain(endpoints.iter().cloned());
    if let Some(r) = &cc.spec.etcd.tls_secret_ref {
        let get = read("spec.etcd.tlsSecretRef", r.name.clone())
            .await
            .map_err(fail)?;
        connect.tls = Some(EtcdTls {
            ca_pem: get("ca.crt").map_err(fail)?,
            client: Some(ClientCert {
                cert_pem: get("tls.crt").map_err(fail)?,
                key_pem: get("tls.key").map_err(fail)?,
            }),
            server_name: None,
        });
    }
    if let Some(r) = &cc.spec.etcd.auth_secret_ref {
        let get = read("spec.etcd.authSecretRef", r.name.clone())
            .await
            .map_err(fail)?;
        let text = |key: &str| {
            get(key).and_then(|v| {
                String::from_utf8(v)
                    .map_err(|_| format!("the {key} of spec.etcd.authSecretRef is not UTF-8"))
            })
        };
        connect.user = Some(EtcdUser {
            name: text("username").map_err(fail)?,
            password: text("password").map_err(fail)?,
        });
    }
    Ok(connect)
}
