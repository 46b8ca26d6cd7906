//! Step 3 of apply: the node certificates of `spec.tls` (see `resources::tls`).
//!
//! - `selfSigned`: the CA Secret `<name>-ca` is created once; `<name>-node-tls` gets a
//!   certificate for every pod that lacks one, whose certificate is due for renewal (a third
//!   of its lifetime left) or was signed by another CA. Nothing is written when nothing is
//!   due, so a settled cluster costs two GETs per reconcile.
//! - `certManager`: the `Certificate`s are applied; the Secrets cert-manager wrote are copied
//!   into `<name>-node-tls` (a pod whose certificate cert-manager has not issued yet waits:
//!   its node cannot start without it).
//!
//! Order of the API calls (the reconcile tests assert it), selfSigned: GET `<name>-ca`
//! (POST it when missing), GET `<name>-node-tls`, PATCH (apply) it when something changed.
//! certManager: PATCH each Certificate, GET each pod's `<name>-node-tls-<ordinal>`
//! (`<name>-node-tls-<zone>-<ordinal>` in a zone's pool), GET and PATCH
//! `<name>-node-tls` when its copy changed.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::{Context, Error, Result};
use crate::FIELD_MANAGER;
use crate::crd::{ChatCluster, TlsMode};
use crate::pki::{self, Ca};
use crate::resources::tls::{
    NOT_AFTER_ANNOTATION, ca_secret, ca_secret_name, certificate_resource, certificates,
    node_tls_secret, node_tls_secret_name, node_uri, pod_dns, pod_tls_secret_name,
};

/// Make sure the pods `pods` (every pool's, by name) have certificates in
/// `<name>-node-tls`. `now`: Unix seconds.
pub(super) async fn ensure(
    cc: &ChatCluster,
    ctx: &Context,
    pods: &[String],
    now: i64,
) -> Result<()> {
    match cc.spec.tls.mode {
        TlsMode::Disabled => Ok(()),
        TlsMode::SelfSigned => self_signed(cc, ctx, pods, now).await,
        TlsMode::CertManager => cert_manager(cc, ctx, pods).await,
    }
}

fn secrets(cc: &ChatCluster, ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &cc.namespace_or_default())
}

async fn get(api: &Api<Secret>, cc: &ChatCluster, name: &str) -> Result<Option<Secret>> {
    api.get_opt(name).await.map_err(Error::kube(format!(
        "get Secret {}/{name}",
        cc.namespace_or_default()
    )))
}

/// The CA, from `<name>-ca`, created when missing.
async fn ensure_ca(cc: &ChatCluster, ctx: &Context, now: i64) -> Result<Ca> {
    let api = secrets(cc, ctx);
    let name = ca_secret_name(cc);
    let cluster = cc.cluster_id();
    if let Some(existing) = get(&api, cc, &name).await? {
        let data = existing.data.unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        return Ok(Ca::from_pem(&cluster, &text("tls.crt"), &text("tls.key"))?);
    }
    let ca = Ca::generate(&cluster, now)?;
    let secret = ca_secret(cc, Some((&ca.cert_pem, &ca.key_pem)));
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, &secret).await {
        Ok(_) => {
            ctx.event(
                cc,
                EventType::Normal,
                "CaCreated",
                format!("created Secret {name}: the CA that signs the node certificates"),
            )
            .await;
            Ok(ca)
        }
        // Another operator replica won the race: use its CA.
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(ensure_ca(cc, ctx, now)).await,
        Err(source) => Err(Error::Kube {
            what: format!("create Secret {}/{name}", cc.namespace_or_default()),
            source,
        }),
    }
}

fn not_after_of(secret: &Secret) -> BTreeMap<String, i64> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER_ANNOTATION))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// What `<name>-node-tls` should hold: every pod's certificate, issued anew when missing,
/// due, or signed by another CA. Returns `None` when the current Secret is right, else the
/// new data, expiries and the pods issued.
#[allow(clippy::type_complexity)]
pub fn plan_self_signed(
    cc: &ChatCluster,
    ca: &Ca,
    current: Option<&Secret>,
    pods: &[String],
    now: i64,
) -> Result<
    Option<(
        BTreeMap<String, ByteString>,
        BTreeMap<String, i64>,
        Vec<String>,
    )>,
    pki::PkiError,
> {
    let hours = i64::from(cc.spec.tls.certificate_hours);
    let old_data = current.and_then(|s| s.data.clone()).unwrap_or_default();
    let old_not_after = current.map(not_after_of).unwrap_or_default();
    let same_ca = old_data.get("ca.crt").map(|v| v.0.as_slice()) == Some(ca.cert_pem.as_bytes());
    let mut data = BTreeMap::from([(
        "ca.crt".to_string(),
        ByteString(ca.cert_pem.as_bytes().to_vec()),
    )]);
    let mut not_after = BTreeMap::new();
    let mut issued = Vec::new();
    for pod in pods {
        let (crt, key) = (format!("{pod}.crt"), format!("{pod}.key"));
        let kept = match (
            old_data.get(&crt),
            old_data.get(&key),
            old_not_after.get(pod),
        ) {
            (Some(c), Some(k), Some(&until)) if same_ca && !pki::due(until, now, hours) => {
                Some((c.clone(), k.clone(), until))
            }
            _ => None,
        };
        let (c, k, until) = match kept {
            Some(v) => v,
            None => {
                let i = ca.issue(pod, &node_uri(cc, pod), &[pod_dns(cc, pod)], now, hours)?;
                issued.push(pod.clone());
                (
                    ByteString(i.cert_pem.into_bytes()),
                    ByteString(i.key_pem.into_bytes()),
                    i.not_after,
                )
            }
        };
        data.insert(crt, c);
        data.insert(key, k);
        not_after.insert(pod.clone(), until);
    }
    if data == old_data && not_after == old_not_after {
        return Ok(None);
    }
    Ok(Some((data, not_after, issued)))
}

async fn apply_node_tls(cc: &ChatCluster, ctx: &Context, secret: &Secret) -> Result<()> {
    let name = node_tls_secret_name(cc);
    secrets(cc, ctx)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(secret),
        )
        .await
        .map_err(Error::kube(format!(
            "apply Secret {}/{name}",
            cc.namespace_or_default()
        )))?;
    Ok(())
}

async fn self_signed(cc: &ChatCluster, ctx: &Context, pods: &[String], now: i64) -> Result<()> {
    let ca = ensure_ca(cc, ctx, now).await?;
    let current = get(&secrets(cc, ctx), cc, &node_tls_secret_name(cc)).await?;
    let Some((data, not_after, issued)) = plan_self_signed(cc, &ca, current.as_ref(), pods, now)?
    else {
        return Ok(());
    };
    apply_node_tls(cc, ctx, &node_tls_secret(cc, Some(data), &not_after)).await?;
    if !issued.is_empty() {
        info!(pods = ?issued, "issued node certificates");
        ctx.event(
            cc,
            EventType::Normal,
            "CertificatesIssued",
            format!(
                "issued node certificates for {} (valid {}h, renewed with a third left)",
                issued.join(", "),
                cc.spec.tls.certificate_hours
            ),
        )
        .await;
    }
    Ok(())
}

async fn cert_manager(cc: &ChatCluster, ctx: &Context, pods: &[String]) -> Result<()> {
    let ns = cc.namespace_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &certificate_resource());
    for cert in certificates(cc, pods) {
        let name = cert.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cert),
        )
        .await
        .map_err(Error::kube(format!(
            "apply Certificate {ns}/{name} (is cert-manager installed?)"
        )))?;
    }
    let secrets_api = secrets(cc, ctx);
    let mut data = BTreeMap::new();
    for pod in pods {
        let Some(issued) = get(&secrets_api, cc, &pod_tls_secret_name(cc, pod)).await? else {
            continue;
        };
        let issued = issued.data.unwrap_or_default();
        if let (Some(c), Some(k)) = (issued.get("tls.crt"), issued.get("tls.key")) {
            data.insert(format!("{pod}.crt"), c.clone());
            data.insert(format!("{pod}.key"), k.clone());
        }
        if let Some(ca) = issued.get("ca.crt") {
            data.entry("ca.crt".to_string())
                .or_insert_with(|| ca.clone());
        }
    }
    let current = get(&secrets_api, cc, &node_tls_secret_name(cc)).await?;
    if current.and_then(|s| s.data).unwrap_or_default() != data {
        apply_node_tls(cc, ctx, &node_tls_secret(cc, Some(data), &BTreeMap::new())).await?;
    }
    Ok(())
}
