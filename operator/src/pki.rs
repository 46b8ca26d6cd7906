//! The operator's own CA for `spec.tls.mode: selfSigned` (rcgen, no OpenSSL): it signs one
//! certificate per chat pod, naming the pod's node identity
//! `spiffe://parley/<namespace>.<name>/node/<pod>` and its DNS name.
//!
//! The CA's key lives in the Secret `<name>-ca` (created once, never rotated by the
//! operator: delete the Secret to roll a new CA, and every node certificate is reissued at
//! the next reconcile). The CA certificate is rebuilt from the same parameters and the
//! stored key, so no certificate parser is needed.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// How long the CA is valid: ten years.
const CA_HOURS: i64 = 10 * 365 * 24;

/// Issuing failed (a corrupt CA Secret, mostly).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PkiError {
    what: String,
    #[source]
    source: rcgen::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError { what, source }
}

/// A node certificate, PEM, with its expiry (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

/// A cluster's CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (what every node trusts).
    pub cert_pem: String,
    /// The CA key (kept in the `<name>-ca` Secret only).
    pub key_pem: String,
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(cluster_id: &str, not_before: i64) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err("CA parameters"))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(DnType::CommonName, format!("parley {cluster_id} node CA"));
    p.distinguished_name
        .push(DnType::OrganizationName, "parley chat-operator");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = at(not_before);
    p.not_after = at(not_before + CA_HOURS * 3600);
    Ok(p)
}

impl Ca {
    /// A new CA for the cluster `cluster_id` (`<namespace>.<name>`), valid from `now`.
    pub fn generate(cluster_id: &str, now: i64) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(err("generate the CA key"))?;
        let params = ca_params(cluster_id, now)?;
        let cert = params.self_signed(&key).map_err(err("sign the CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA kept in a Secret (its certificate and key, PEM).
    pub fn from_pem(cluster_id: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(err("read the CA key of the <name>-ca Secret"))?;
        Ok(Self {
            issuer: Issuer::new(ca_params(cluster_id, 0)?, key),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// A certificate for `pod` of `cluster_id`, naming `uri` and `dns_names`, valid from
    /// `now` for `hours`; usable as server and client (the node's two roles).
    pub fn issue(
        &self,
        pod: &str,
        uri: &str,
        dns_names: &[String],
        now: i64,
        hours: i64,
    ) -> Result<Issued, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err("node parameters"))?;
        p.distinguished_name.push(DnType::CommonName, pod);
        let uri = uri.try_into().map_err(|e| PkiError {
            what: format!("the node identity {uri} is not a valid URI"),
            source: e,
        })?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            let dns = name.as_str().try_into().map_err(|e| PkiError {
                what: format!("{name} is not a valid DNS name"),
                source: e,
            })?;
            p.subject_alt_names.push(SanType::DnsName(dns));
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A little slack for clocks that run behind.
        p.not_before = at(now - 300);
        let not_after = now + hours * 3600;
        p.not_after = at(not_after);
        let key = KeyPair::generate().map_err(err("generate a node key"))?;
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(err(format!("sign the certificate of {pod}")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// Whether a certificate that expires at `not_after` is due for renewal at `now`: when a
/// third of its lifetime (`hours`) or less is left.
pub fn due(not_after: i64, now: i64, hours: i64) -> bool {
    not_after - now <= hours * 3600 / 3
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, UnixTime};

    use super::*;

    fn verify(ca_pem: &str, cert_pem: &str, now: i64) -> Result<Vec<String>, webpki::Error> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )?;
        Ok(cert.valid_uri_names().map(str::to_owned).collect())
    }

    #[test]
    fn a_pod_certificate_chains_to_the_ca_rebuilt_from_its_secret_and_names_the_pod() {
        let now = 1_800_000_000;
        let ca = Ca::generate("chat.demo", now).unwrap();
        let again = Ca::from_pem("chat.demo", &ca.cert_pem, &ca.key_pem).unwrap();
        let issued = again
            .issue(
                "demo-1",
                "spiffe://parley/chat.demo/node/demo-1",
                &["demo-1.demo-headless.chat.svc".into()],
                now,
                24,
            )
            .unwrap();
        let uris = verify(&ca.cert_pem, &issued.cert_pem, now + 60).expect("chains to the CA");
        assert_eq!(uris, ["spiffe://parley/chat.demo/node/demo-1"]);
        assert_eq!(issued.not_after, now + 24 * 3600);
        assert!(
            verify(&ca.cert_pem, &issued.cert_pem, now + 25 * 3600).is_err(),
            "expires"
        );
        let other = Ca::generate("chat.demo", now).unwrap();
        assert!(verify(&other.cert_pem, &issued.cert_pem, now).is_err());
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let h = 90;
        let issued_at = 0;
        let not_after = issued_at + h * 3600;
        assert!(!due(not_after, issued_at + 59 * 3600, h));
        assert!(due(not_after, issued_at + 60 * 3600, h));
        assert!(due(not_after, not_after + 1, h));
    }
}
