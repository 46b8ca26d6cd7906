//! How nodes reach each other: mutual TLS on the internal listener and on every link.
//!
//! Each node holds a certificate signed by the cluster's CA (`--internal-ca-file`) whose
//! subject alternative names include the URI
//!
//! ```text
//! spiffe://parley/<cluster>/node/<node_id>
//! ```
//!
//! (the SPIFFE form; other names, such as the pod's DNS name, may be there too and are not
//! used). That URI is the node's identity:
//!
//! - **as a server** (the internal listener): a client must present a certificate of the
//!   cluster's CA that names a node of *this* cluster, or the handshake fails. The node id
//!   it names reaches the route as [`PeerNode`], and the routes check it against what the
//!   request claims (a batch's `from`).
//! - **as a client** (links, status questions, probes): a connection to member X is opened
//!   only when X's certificate chains to the CA and names X. So a record in etcd that points
//!   X's id at another address cannot draw X's traffic there, even to another real node.
//! - **at start-up**: the node checks that its own certificate names its `--node-id` and
//!   chains to the CA, and refuses to start otherwise.
//!
//! Certificates and the CA are re-read when their files change ([`crate::tls`]): renewed
//! certificates are used for new connections without a restart.
//!
//! With `--insecure-cluster` and no certificates the transport is plain HTTP: no identity,
//! no proof, every record believed (the node logs that loudly at start).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DistinguishedName, RootCertStore, SignatureScheme};

use crate::tls::{self, Identity, Resolver, Source, TlsError, Watched};

/// Bound on one link request (a batch, a status question, a probe).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The identity URI a node's certificate carries.
pub fn node_uri(cluster: &str, node_id: &str) -> String {
    format!("spiffe://parley/{cluster}/node/{node_id}")
}

/// The node id a peer proved over mutual TLS, put on each request of the internal listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode(pub String);

/// Why the transport cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "the node certificate {cert} does not name this node: it carries {found:?}, this node needs the URI {expected} in its subject alternative names (issue it for --node-id {node_id} of --cluster {cluster})"
    )]
    WrongIdentity {
        cert: PathBuf,
        found: Vec<String>,
        expected: String,
        node_id: String,
        cluster: String,
    },
    #[error("the node certificate {cert} is not signed by the cluster CA {ca}: {reason}")]
    NotSignedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("cannot build the link client: {0}")]
    Client(String),
}

/// Where the node's certificate, key and the cluster CA are (`--internal-cert-file`,
/// `--internal-key-file`, `--internal-ca-file`).
#[derive(Debug, Clone)]
pub struct TransportFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The cluster CA with the client verifier built from it (rebuilt together on a change).
pub struct TrustedCa {
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
}

fn load_ca(sources: &[Source]) -> Result<TrustedCa, TlsError> {
    let roots = Arc::new(tls::load_roots(sources)?);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), tls::provider())
        .build()
        .map_err(|e| TlsError::Parse {
            what: sources[0].what,
            flag: sources[0].flag,
            path: sources[0].path.clone(),
            reason: e.to_string(),
        })?;
    Ok(TrustedCa { roots, clients })
}

struct Mtls {
    identity: Arc<Identity>,
    ca: Arc<Watched<TrustedCa>>,
    server: Arc<rustls::ServerConfig>,
}

/// This node's side of node-to-node traffic: the internal listener's TLS, and one HTTP
/// client per peer that only talks to that peer.
pub struct Transport {
    cluster: String,
    node_id: String,
    mtls: Option<Mtls>,
    plain: reqwest::Client,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .http1_only()
}

impl Transport {
    /// Mutual TLS with the node's certificate, checked to name `node_id` of `cluster` and to
    /// chain to the CA.
    pub fn mutual_tls(
        cluster: &str,
        node_id: &str,
        files: &TransportFiles,
    ) -> Result<Self, TransportError> {
        let identity = tls::identity(
            Source::new("node certificate", "--internal-cert-file", &files.cert),
            Source::new("node key", "--internal-key-file", &files.key),
        )?;
        let ca = Watched::open(
            vec![Source::new("cluster CA", "--internal-ca-file", &files.ca)],
            load_ca,
        )?;
        let own = identity.get();
        let expected = node_uri(cluster, node_id);
        let found = uri_names(&own.cert[0]);
        if !found.contains(&expected) {
            return Err(TransportError::WrongIdentity {
                cert: files.cert.clone(),
                found,
                expected,
                node_id: node_id.to_owned(),
                cluster: cluster.to_owned(),
            });
        }
        verify_chain(&ca.get().roots, &own.cert[0], &own.cert[1..]).map_err(|e| {
            TransportError::NotSignedByCa {
                cert: files.cert.clone(),
                ca: files.ca.clone(),
                reason: e.to_string(),
            }
        })?;
        let verifier = Arc::new(ClusterNodes {
            ca: ca.clone(),
            prefix: node_uri(cluster, ""),
            algs: algorithms(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Client(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(identity.clone())));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cluster: cluster.to_owned(),
            node_id: node_id.to_owned(),
            mtls: Some(Mtls {
                identity,
                ca,
                server: Arc::new(server),
            }),
            plain: builder()
                .build()
                .map_err(|e| TransportError::Client(e.to_string()))?,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Plain HTTP (`--insecure-cluster` without certificates): nothing is proved.
    pub fn insecure(cluster: &str, node_id: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            node_id: node_id.to_owned(),
            mtls: None,
            plain: builder().build().unwrap_or_default(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Whether peers must prove who they are (mutual TLS).
    pub fn is_secure(&self) -> bool {
        self.mtls.is_some()
    }

    /// `https` with mutual TLS, else `http`: the scheme of this node's internal URL.
    pub fn scheme(&self) -> &'static str {
        if self.is_secure() { "https" } else { "http" }
    }

    /// The internal listener's TLS config (client certificates required), if secure.
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.mtls.as_ref().map(|m| m.server.clone())
    }

    /// The node a connection's client certificate names (already verified by the handshake).
    pub fn peer_node(&self, certs: Option<&[CertificateDer<'_>]>) -> Option<PeerNode> {
        let leaf = certs?.first()?;
        let prefix = node_uri(&self.cluster, "");
        uri_names(leaf)
            .into_iter()
            .find_map(|u| u.strip_prefix(&prefix).map(str::to_owned))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(PeerNode)
    }

    /// The HTTP client for requests to `node_id`: with mutual TLS it accepts only a server
    /// certificate that names `node_id` (one client, and so one connection pool, per peer).
    pub fn client(&self, node_id: &str) -> reqwest::Client {
        let Some(mtls) = &self.mtls else {
            return self.plain.clone();
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(node_id) {
            return c.clone();
        }
        let client = self.build_client(mtls, node_id).unwrap_or_else(|e| {
            // Cannot happen with the fixed settings above; a client that refuses every
            // connection keeps the node from talking in clear.
            tracing::error!(error = %e, peer = node_id, "cannot build a link client");
            reqwest::Client::builder()
                .https_only(true)
                .build()
                .unwrap_or_default()
        });
        clients.insert(node_id.to_owned(), client.clone());
        client
    }

    fn build_client(&self, mtls: &Mtls, node_id: &str) -> Result<reqwest::Client, String> {
        let verifier = Arc::new(ExpectNode {
            ca: mtls.ca.clone(),
            expected: node_uri(&self.cluster, node_id),
            algs: algorithms(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver(mtls.identity.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        builder()
            .https_only(true)
            .use_preconfigured_tls(config)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Drop the clients of nodes for which `keep` is false (members that left).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep(id));
    }

    /// This node's id, as its certificate names it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// The URIs among a certificate's subject alternative names.
pub fn uri_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_uri_names().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    tls::provider().signature_verification_algorithms
}

fn verify_chain(
    roots: &RootCertStore,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        UnixTime::now(),
        algorithms().all,
    )
}

/// A peer's certificate that names someone else.
#[derive(Debug, thiserror::Error)]
#[error("the peer's certificate names {found:?}, not {expected}")]
struct WrongPeer {
    expected: String,
    found: Vec<String>,
}

/// Verifies a server: chains to the cluster CA and names the expected node.
struct ExpectNode {
    ca: Arc<Watched<TrustedCa>>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for ExpectNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpectNode")
            .field("expected", &self.expected)
            .finish()
    }
}

impl ServerCertVerifier for ExpectNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.ca.get().roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let found = uri_names(end_entity);
        if !found.contains(&self.expected) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeer {
                    expected: self.expected.clone(),
                    found,
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies a client: chains to the cluster CA (as a client certificate) and names a node
/// of this cluster.
struct ClusterNodes {
    ca: Arc<Watched<TrustedCa>>,
    prefix: String,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for ClusterNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNodes")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl ClientCertVerifier for ClusterNodes {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the CA can change under us, so none are sent.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.ca
            .get()
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        let found = uri_names(end_entity);
        if !found.iter().any(|u| u.starts_with(&self.prefix)) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeer {
                    expected: format!("{}<node id>", self.prefix),
                    found,
                })),
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
