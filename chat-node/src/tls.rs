//! TLS material from PEM files, re-read when the files change, so a renewed certificate is
//! used without a restart (cert-manager, the operator and Kubernetes Secret volumes all
//! replace the files in place). Used by the client-facing listener (`--tls-cert-file`) and
//! by the node-to-node transport ([`crate::cluster::transport`]).
//!
//! A file is looked at (one `stat`) at most once per [`CHECK_EVERY`], when a handshake needs
//! it; a change (modified time, size or inode) re-reads and re-parses it. A file that is
//! half-written or does not parse keeps the previous material in force and logs a warning,
//! so a botched rotation never takes a node down.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::RootCertStore;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often a watched file is looked at, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What is wrong with a certificate, key or CA file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {path}: {source}; check the path (and {flag})")]
    Read {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {path} is not usable: {reason} (check {flag})")]
    Parse {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The crypto provider of every TLS endpoint of the node: ring, the one the whole
/// workspace uses (no OpenSSL, no aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which file and flag a piece of material comes from, for messages.
#[derive(Debug, Clone)]
pub struct Source {
    pub what: &'static str,
    pub flag: &'static str,
    pub path: PathBuf,
}

impl Source {
    pub fn new(what: &'static str, flag: &'static str, path: &Path) -> Self {
        Self {
            what,
            flag,
            path: path.to_owned(),
        }
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|source| TlsError::Read {
            what: self.what,
            flag: self.flag,
            path: self.path.clone(),
            source,
        })
    }

    fn bad(&self, reason: impl Into<String>) -> TlsError {
        TlsError::Parse {
            what: self.what,
            flag: self.flag,
            path: self.path.clone(),
            reason: reason.into(),
        }
    }
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(path: &Path) -> Stamp {
    Stamp(
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))),
    )
}

type Loader<T> = fn(&[Source]) -> Result<T, TlsError>;

/// A value built from files, rebuilt when they change.
pub struct Watched<T> {
    sources: Vec<Source>,
    load: Loader<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    stamps: Vec<Stamp>,
    checked: Instant,
    /// How many times the files were (re)loaded: 1 after start.
    generation: u64,
}

impl<T> Watched<T> {
    /// Load now (an error here stops start-up, saying which file is wrong).
    pub fn open(sources: Vec<Source>, load: Loader<T>) -> Result<Arc<Self>, TlsError> {
        let stamps = sources.iter().map(|s| stamp(&s.path)).collect();
        let value = Arc::new(load(&sources)?);
        Ok(Arc::new(Self {
            sources,
            load,
            state: Mutex::new(State {
                value,
                stamps,
                checked: Instant::now(),
                generation: 1,
            }),
        }))
    }

    /// The value in force, re-read first if a file changed (looked at once per
    /// [`CHECK_EVERY`] at most).
    pub fn get(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let stamps: Vec<Stamp> = self.sources.iter().map(|s| stamp(&s.path)).collect();
            if stamps != state.stamps {
                match (self.load)(&self.sources) {
                    Ok(value) => {
                        state.value = Arc::new(value);
                        state.stamps = stamps;
                        state.generation += 1;
                        tracing::info!(
                            files = %self.describe(),
                            generation = state.generation,
                            "reloaded TLS material that changed on disk"
                        );
                    }
                    // Keep what works; try again at the next change (or the next check, as
                    // the stamps are not taken: a file still being written settles).
                    Err(e) => {
                        tracing::warn!(error = %e, "a changed TLS file is not usable yet; keeping the previous material")
                    }
                }
            }
        }
        state.value.clone()
    }

    /// How many times the files have been loaded (1 after start).
    pub fn generation(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    fn describe(&self) -> String {
        self.sources
            .iter()
            .map(|s| s.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A certificate chain and its key (`[cert, key]` sources).
pub type Identity = Watched<CertifiedKey>;

/// Load a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1), checking that the key belongs to the certificate.
pub fn load_identity(sources: &[Source]) -> Result<CertifiedKey, TlsError> {
    let (cert_src, key_src) = (&sources[0], &sources[1]);
    let chain = load_certs(cert_src)?;
    let key_pem = key_src.read()?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_src.bad(format!("no PEM private key in it ({e})")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        key_src.bad(format!(
            "the key does not go with the certificate {} ({e})",
            cert_src.path.display()
        ))
    })
}

fn load_certs(src: &Source) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = src.read()?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| src.bad(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(src.bad("it holds no PEM certificate"));
    }
    Ok(certs)
}

/// Open a watched certificate + key pair.
pub fn identity(cert: Source, key: Source) -> Result<Arc<Identity>, TlsError> {
    Watched::open(vec![cert, key], load_identity)
}

/// A CA bundle (`[ca]` source).
pub type Roots = Watched<RootCertStore>;

/// Load a CA bundle: every PEM certificate in the file is trusted.
pub fn load_roots(sources: &[Source]) -> Result<RootCertStore, TlsError> {
    let src = &sources[0];
    let mut store = RootCertStore::empty();
    for cert in load_certs(src)? {
        store
            .add(cert)
            .map_err(|e| src.bad(format!("a certificate in it is not a usable CA ({e})")))?;
    }
    Ok(store)
}

/// Open a watched CA bundle.
pub fn roots(ca: Source) -> Result<Arc<Roots>, TlsError> {
    Watched::open(vec![ca], load_roots)
}

/// Presents the certificate in force, as a server and as a client.
#[derive(Clone)]
pub struct Resolver(pub Arc<Identity>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client-facing listener's TLS (`--tls-cert-file`, `--tls-key-file`): HTTP/1.1 (the
/// WebSocket upgrade), no client certificates.
pub fn client_server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let identity = identity(
        Source::new("client TLS certificate", "--tls-cert-file", cert),
        Source::new("client TLS key", "--tls-key-file", key),
    )?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Parse {
            what: "client TLS certificate",
            flag: "--tls-cert-file",
            path: cert.to_owned(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(identity)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_changed_pair_is_reloaded_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a");
        let id = identity(
            Source::new("cert", "--x", &c),
            Source::new("key", "--y", &k),
        )
        .unwrap();
        let first = id.get().cert[0].clone();
        let (c2, k2) = pair(dir.path(), "b");
        std::fs::rename(&c2, &c).unwrap();
        std::fs::rename(&k2, &k).unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_ne!(id.get().cert[0], first, "the new pair is in force");
        assert_eq!(id.generation(), 2);
        std::fs::write(&k, "not a key").unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        let kept = id.get();
        assert_eq!(id.generation(), 2, "a broken key is not taken");
        assert_eq!(kept.cert.len(), 1);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let err = identity(
            Source::new("cert", "--x", &c),
            Source::new("key", "--y", &other_key),
        )
        .err()
        .expect("mismatched pair");
        let text = err.to_string();
        assert!(
            text.contains("does not go with") && text.contains("a.crt"),
            "{text}"
        );
        let err = roots(Source::new("CA", "--ca", &dir.path().join("none")))
            .err()
            .expect("missing file");
        assert!(err.to_string().contains("--ca"), "{err}");
    }
}
