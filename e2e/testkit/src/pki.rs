//! A throwaway certificate authority for tests (rcgen): node certificates naming
//! `spiffe://parley/<cluster>/node/<id>`, etcd's server certificate, client certificates for
//! etcd, and a second, foreign CA for outsiders. Everything is written as PEM files into a
//! temporary directory that lives as long as the [`Pki`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use parley_etcd_connect::{ClientCert, EtcdConnect, EtcdTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(&self.cert).expect("read cert")
    }
    pub fn key_pem(&self) -> String {
        std::fs::read_to_string(&self.key).expect("read key")
    }
}

/// A CA and the files it issued.
pub struct Pki {
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file): what every party trusts.
    pub ca_file: PathBuf,
    /// The cluster name node certificates are issued for.
    pub cluster: String,
}

/// The identity URI of a node (what `chat-node` checks).
pub fn node_uri(cluster: &str, node_id: &str) -> String {
    format!("spiffe://parley/{cluster}/node/{node_id}")
}

impl Pki {
    /// A fresh CA for `cluster`, in a temporary directory.
    pub fn new(cluster: &str) -> Self {
        Self::named(cluster, "parley test CA")
    }

    /// A fresh CA whose subject is `name` (a foreign CA for outsiders, say).
    pub fn named(cluster: &str, name: &str) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir for the test CA");
        let mut pki = Self::in_dir(tmp.path(), cluster, name);
        pki._tmp = Some(tmp);
        pki
    }

    /// A fresh CA whose files go into `dir` (kept: `scripts/cluster.sh` uses this through
    /// the `parley-pki` binary).
    pub fn in_dir(dir: &Path, cluster: &str, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the CA directory");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        Self {
            issuer: Issuer::new(params, key),
            ca_file,
            cluster: cluster.to_owned(),
            _tmp: None,
            dir: dir.to_owned(),
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca_file).expect("read CA")
    }

    /// Issue a certificate with these SANs and usages into `<stem>.crt` / `<stem>.key`
    /// (overwriting: a reissue is a rotation).
    pub fn issue(&self, stem: &str, common_name: &str, sans: Vec<SanType>) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let files = CertFiles {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        // Write beside, then rename: a reader never sees half a file.
        let (tmp_c, tmp_k) = (
            files.cert.with_extension("crt.tmp"),
            files.key.with_extension("key.tmp"),
        );
        std::fs::write(&tmp_c, cert.pem()).expect("write cert");
        std::fs::write(&tmp_k, key.serialize_pem()).expect("write key");
        std::fs::rename(&tmp_k, &files.key).expect("rename key");
        std::fs::rename(&tmp_c, &files.cert).expect("rename cert");
        files
    }

    /// A node certificate naming `node_id` of this CA's cluster (plus `localhost` and
    /// 127.0.0.1, so ordinary TLS clients in tests can reach the node too).
    pub fn node(&self, node_id: &str) -> CertFiles {
        self.node_as(node_id, &node_uri(&self.cluster, node_id))
    }

    /// A certificate stored as `stem` that carries `uri` as its identity: a node certificate
    /// for another id, or another cluster, when `uri` says so.
    pub fn node_as(&self, stem: &str, uri: &str) -> CertFiles {
        self.issue(
            stem,
            stem,
            vec![
                SanType::URI(uri.try_into().expect("URI SAN")),
                SanType::DnsName("localhost".try_into().expect("DNS SAN")),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
        )
    }

    /// etcd's server certificate (localhost, 127.0.0.1).
    pub fn etcd_server(&self) -> CertFiles {
        self.issue(
            "etcd-server",
            "etcd",
            vec![
                SanType::DnsName("localhost".try_into().expect("DNS SAN")),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
        )
    }

    /// A client certificate (for etcd's `--client-cert-auth`; its CN is the etcd user when
    /// etcd's auth is on).
    pub fn client(&self, common_name: &str) -> CertFiles {
        self.issue(&format!("client-{common_name}"), common_name, Vec::new())
    }

    /// How to reach an etcd that trusts this CA, as client `client`.
    pub fn etcd_connect(&self, endpoints: &[String], client: &CertFiles) -> EtcdConnect {
        EtcdConnect {
            endpoints: endpoints.to_vec(),
            tls: Some(EtcdTls {
                ca_pem: self.ca_pem().into_bytes(),
                client: Some(ClientCert {
                    cert_pem: client.cert_pem().into_bytes(),
                    key_pem: client.key_pem().into_bytes(),
                }),
                server_name: None,
            }),
            user: None,
        }
    }

    /// The flags that give a chat node this CA's certificates: its node certificate for
    /// `node_id` and an etcd client certificate.
    pub fn node_flags(&self, node_id: &str) -> Vec<String> {
        let node = self.node(node_id);
        let etcd = self.client(&format!("etcd-{node_id}"));
        [
            ("--internal-cert-file", &node.cert),
            ("--internal-key-file", &node.key),
            ("--internal-ca-file", &self.ca_file),
            ("--etcd-ca-file", &self.ca_file),
            ("--etcd-cert-file", &etcd.cert),
            ("--etcd-key-file", &etcd.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }
}
