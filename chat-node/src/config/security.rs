//! The security flags (docs/operations.md, "Security"): the internal listener and its
//! mutual TLS, TLS and credentials to etcd and TiKV, client-facing TLS, and the explicit
//! `--insecure-cluster` that a cluster needs to run any of it in plain text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use parley_etcd_connect::EtcdFiles;

use super::{ConfigError, StoreKind};
use crate::cluster::transport::TransportFiles;
use crate::store::tikv::TikvSecurity;

/// Transport security of a node. In cluster mode (`--etcd`) every connection leaving or
/// entering the node is authenticated, or the node refuses to start unless
/// `--insecure-cluster` says plain text is wanted.
#[derive(Debug, Clone, Default, Args)]
pub struct SecurityConfig {
    /// Node-to-node routes (`/internal/v1/...`) listen here, never on the client port.
    /// Default: the `--listen` address with the next port (8081 for 8080; port 0 stays 0).
    #[arg(long, env = "PARLEY_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,

    /// How other nodes reach the internal listener, e.g. `https://10.0.0.5:8081`. Default:
    /// the host of `--advertise-url` with the internal listener's port.
    #[arg(long, env = "PARLEY_INTERNAL_ADVERTISE_URL")]
    pub internal_advertise_url: Option<String>,

    /// This node's certificate (PEM, leaf first), signed by the cluster CA and naming
    /// `spiffe://parley/<cluster>/node/<node_id>`; used as server and client between nodes.
    #[arg(long, env = "PARLEY_INTERNAL_CERT_FILE")]
    pub internal_cert_file: Option<PathBuf>,

    /// The private key of `--internal-cert-file` (PEM).
    #[arg(long, env = "PARLEY_INTERNAL_KEY_FILE")]
    pub internal_key_file: Option<PathBuf>,

    /// The cluster CA bundle (PEM) that signs every node's certificate.
    #[arg(long, env = "PARLEY_INTERNAL_CA_FILE")]
    pub internal_ca_file: Option<PathBuf>,

    /// CA bundle (PEM) that signed etcd's server certificate; given, etcd is reached over TLS
    /// (`https://` endpoints).
    #[arg(long, env = "PARLEY_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's `--client-cert-auth`.
    #[arg(long, env = "PARLEY_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,

    /// The private key of `--etcd-cert-file` (PEM).
    #[arg(long, env = "PARLEY_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,

    /// etcd user, for etcd's user + password auth (with `--etcd-password-file`).
    #[arg(long, env = "PARLEY_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// A file holding the etcd user's password (one trailing newline ignored).
    #[arg(long, env = "PARLEY_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,

    /// The name etcd's certificate must carry, when it is not the endpoints' host.
    #[arg(long, env = "PARLEY_ETCD_SERVER_NAME")]
    pub etcd_server_name: Option<String>,

    /// CA bundle (PEM) of the TiKV cluster (PD and TiKV servers), for `--store tikv`.
    #[arg(long, env = "PARLEY_TIKV_CA_FILE")]
    pub tikv_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) TiKV and PD check.
    #[arg(long, env = "PARLEY_TIKV_CERT_FILE")]
    pub tikv_cert_file: Option<PathBuf>,

    /// The private key of `--tikv-cert-file` (PEM).
    #[arg(long, env = "PARLEY_TIKV_KEY_FILE")]
    pub tikv_key_file: Option<PathBuf>,

    /// Serve clients over TLS with this certificate (PEM, leaf first), for deployments
    /// without an ingress that terminates TLS; `ws_url` becomes `wss://`.
    #[arg(long, env = "PARLEY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of `--tls-cert-file` (PEM).
    #[arg(long, env = "PARLEY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Allow a cluster to run with plain-text parts (no mutual TLS between nodes, etcd or
    /// TiKV without TLS and authentication). Anyone who reaches those ports can then read
    /// and forge cluster traffic: for a laptop or a test, never production. Each plain-text
    /// part is logged loudly at start.
    #[arg(long, env = "PARLEY_INSECURE_CLUSTER")]
    pub insecure_cluster: bool,
}

fn all_or_none(flags: &[(&str, bool)]) -> Result<(), ConfigError> {
    let given = flags.iter().filter(|(_, g)| *g).count();
    if given != 0 && given != flags.len() {
        let names: Vec<&str> = flags.iter().map(|(n, _)| *n).collect();
        return Err(ConfigError(format!(
            "{} go together: give all of them or none",
            names.join(", ")
        )));
    }
    Ok(())
}

/// Characters allowed in a node id and a cluster name that go into a certificate's URI.
fn is_uri_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl SecurityConfig {
    /// Check the combinations. `clustered`: `--etcd` given.
    pub fn validate(
        &self,
        clustered: bool,
        store: StoreKind,
        node_id: &str,
        cluster: &str,
    ) -> Result<(), ConfigError> {
        all_or_none(&[
            ("--internal-cert-file", self.internal_cert_file.is_some()),
            ("--internal-key-file", self.internal_key_file.is_some()),
            ("--internal-ca-file", self.internal_ca_file.is_some()),
        ])?;
        all_or_none(&[
            ("--tikv-ca-file", self.tikv_ca_file.is_some()),
            ("--tikv-cert-file", self.tikv_cert_file.is_some()),
            ("--tikv-key-file", self.tikv_key_file.is_some()),
        ])?;
        all_or_none(&[
            ("--tls-cert-file", self.tls_cert_file.is_some()),
            ("--tls-key-file", self.tls_key_file.is_some()),
        ])?;
        self.etcd_files()
            .check()
            .map_err(|e| ConfigError(e.to_string()))?;
        if let Some(url) = &self.internal_advertise_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError(
                "--internal-advertise-url must start with https:// (or http:// with --insecure-cluster)"
                    .into(),
            ));
        }
        if self.transport_files().is_some() {
            if !is_uri_safe(node_id) || !is_uri_safe(cluster) {
                return Err(ConfigError(format!(
                    "with mutual TLS the node id ({node_id:?}) and cluster name ({cluster:?}) go into a certificate URI: use letters, digits, '-', '_' and '.' only"
                )));
            }
            if self
                .internal_advertise_url
                .as_ref()
                .is_some_and(|u| u.starts_with("http://"))
            {
                return Err(ConfigError(
                    "--internal-advertise-url is http:// but the internal listener speaks mutual TLS: write https://".into(),
                ));
            }
        }
        if clustered && !self.insecure_cluster {
            let missing = self.plain_text_parts(clustered, store);
            if !missing.is_empty() {
                return Err(ConfigError(format!(
                    "cluster mode (--etcd) refuses plain text: {}. Give the certificates (see docs/operations.md, \"Security\"), or pass --insecure-cluster to run without them knowingly",
                    missing.join("; ")
                )));
            }
        }
        Ok(())
    }

    /// The parts of a cluster node's traffic that would go unauthenticated, each saying
    /// which flags would secure it.
    pub fn plain_text_parts(&self, clustered: bool, store: StoreKind) -> Vec<String> {
        let mut parts = Vec::new();
        if !clustered {
            return parts;
        }
        if self.transport_files().is_none() {
            parts.push("node-to-node links have no mutual TLS (--internal-cert-file, --internal-key-file, --internal-ca-file)".to_owned());
        }
        let etcd = self.etcd_files();
        if etcd.ca_file.is_none() || (etcd.cert_file.is_none() && etcd.user.is_none()) {
            parts.push("etcd is reached without TLS and authentication (--etcd-ca-file with --etcd-cert-file/--etcd-key-file or --etcd-user/--etcd-password-file)".to_owned());
        }
        if store == StoreKind::Tikv && self.tikv_files().is_none() {
            parts.push(
                "TiKV is reached without TLS (--tikv-ca-file, --tikv-cert-file, --tikv-key-file)"
                    .to_owned(),
            );
        }
        parts
    }

    /// The etcd TLS and credential files.
    pub fn etcd_files(&self) -> EtcdFiles {
        EtcdFiles {
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
            server_name: self.etcd_server_name.clone(),
        }
    }

    /// The node certificate, key and cluster CA, when all are given.
    pub fn transport_files(&self) -> Option<TransportFiles> {
        Some(TransportFiles {
            cert: self.internal_cert_file.clone()?,
            key: self.internal_key_file.clone()?,
            ca: self.internal_ca_file.clone()?,
        })
    }

    /// TiKV's TLS files, when all are given.
    pub fn tikv_files(&self) -> Option<TikvSecurity> {
        Some(TikvSecurity {
            ca: self.tikv_ca_file.clone()?,
            cert: self.tikv_cert_file.clone()?,
            key: self.tikv_key_file.clone()?,
        })
    }

    /// Where the internal listener binds: `--internal-listen`, else `listen` with the next
    /// port (port 0, "any", stays 0).
    pub fn internal_listen(&self, listen: SocketAddr) -> Result<SocketAddr, ConfigError> {
        if let Some(addr) = self.internal_listen {
            return Ok(addr);
        }
        let port = match listen.port() {
            0 => 0,
            p => p.checked_add(1).ok_or_else(|| {
                ConfigError(
                    "--listen uses port 65535, so the internal listener has no next port: give --internal-listen".into(),
                )
            })?,
        };
        Ok(SocketAddr::new(listen.ip(), port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtls() -> SecurityConfig {
        SecurityConfig {
            internal_cert_file: Some("n.crt".into()),
            internal_key_file: Some("n.key".into()),
            internal_ca_file: Some("ca.crt".into()),
            etcd_ca_file: Some("ca.crt".into()),
            etcd_cert_file: Some("e.crt".into()),
            etcd_key_file: Some("e.key".into()),
            ..SecurityConfig::default()
        }
    }

    #[test]
    fn a_cluster_refuses_plain_text_unless_told_so() {
        let plain = SecurityConfig::default();
        let e = plain
            .validate(true, StoreKind::Etcd, "n1", "c")
            .unwrap_err()
            .0;
        assert!(
            e.contains("--insecure-cluster")
                && e.contains("--internal-cert-file")
                && e.contains("--etcd-ca-file"),
            "{e}"
        );
        let insecure = SecurityConfig {
            insecure_cluster: true,
            ..SecurityConfig::default()
        };
        insecure.validate(true, StoreKind::Etcd, "n1", "c").unwrap();
        assert_eq!(insecure.plain_text_parts(true, StoreKind::Etcd).len(), 2);
        plain
            .validate(false, StoreKind::Embedded, "n1", "c")
            .unwrap();
        mtls().validate(true, StoreKind::Etcd, "n1", "c").unwrap();
        let e = mtls()
            .validate(true, StoreKind::Tikv, "n1", "c")
            .unwrap_err()
            .0;
        assert!(e.contains("--tikv-ca-file"), "{e}");
    }

    #[test]
    fn half_given_pairs_and_unsafe_ids_are_refused() {
        let half = SecurityConfig {
            internal_cert_file: Some("n.crt".into()),
            insecure_cluster: true,
            ..SecurityConfig::default()
        };
        let e = half
            .validate(true, StoreKind::Etcd, "n1", "c")
            .unwrap_err()
            .0;
        assert!(e.contains("go together"), "{e}");
        let e = mtls()
            .validate(true, StoreKind::Etcd, "n/1", "c")
            .unwrap_err()
            .0;
        assert!(e.contains("certificate URI"), "{e}");
    }

    #[test]
    fn the_internal_port_follows_the_client_port() {
        let s = SecurityConfig::default();
        let at = |a: &str| s.internal_listen(a.parse().unwrap()).unwrap().to_string();
        assert_eq!(at("0.0.0.0:8080"), "0.0.0.0:8081");
        assert_eq!(at("127.0.0.1:0"), "127.0.0.1:0");
        assert!(s.internal_listen("0.0.0.0:65535".parse().unwrap()).is_err());
    }
}
