//! # How Parley connects to etcd
//!
//! One small type, [`EtcdConnect`], says how a process reaches a cluster's etcd: the
//! endpoints, the TLS material (the CA that signed etcd's server certificate, and a client
//! certificate when etcd runs with `--client-cert-auth`) and the credentials (etcd's
//! user + password auth). The chat node builds it from files (its `--etcd-*` flags, through
//! [`EtcdFiles`]), the operator from the Secrets a ChatCluster names, the tests from their
//! throwaway CA; all three then connect the same way ([`EtcdConnect::connect`]).
//!
//! # Layout
//!
//! | item | role |
//! | --- | --- |
//! | [`EtcdConnect`] | endpoints, [`EtcdTls`] and [`EtcdUser`] → a connected `etcd_client::Client` |
//! | [`EtcdFiles`] | the same, read from PEM and password files (re-read at every reconnect, so a rotated certificate is picked up) |
//! | [`Error`] | what is wrong with the material, saying which file or field to fix |
//!
//! Plain text (no TLS) is still possible, for a single machine and for tests of other
//! things: [`EtcdConnect::is_plain_text`] says so, and the chat node refuses it in cluster
//! mode unless told `--insecure-cluster`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// What is wrong with the etcd connection settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named by a flag or a Secret could not be read.
    #[error(
        "cannot read the etcd {what} file {path}: {source}; check the path and its permissions"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A combination that cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// etcd's user + password auth. The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS to etcd: the CA bundle that signed etcd's server certificate, and this client's
/// certificate and key (PEM) when etcd checks clients (`--client-cert-auth`).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client: Option<ClientCert>,
    /// The name to check etcd's certificate against, when it is not the endpoints' host.
    pub server_name: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("client", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A client certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// How to reach one etcd cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConnect {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    pub user: Option<EtcdUser>,
}

impl EtcdConnect {
    /// Plain text to `endpoints`, no credentials (single machines and tests).
    pub fn plain(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Whether anything on the way to etcd can be read or forged: no TLS, or TLS without
    /// any client authentication (neither a client certificate nor a user).
    pub fn is_plain_text(&self) -> bool {
        match &self.tls {
            None => true,
            Some(tls) => tls.client.is_none() && self.user.is_none(),
        }
    }

    /// What the endpoints look like, for messages: `https://a:2379,https://b:2379`.
    pub fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    /// Check the combination: endpoints given, `https://` with TLS and `http://` without.
    pub fn validate(&self) -> Result<(), Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Invalid(
                "no etcd endpoints given: pass --etcd host:port[,host:port…]".into(),
            ));
        }
        for e in &self.endpoints {
            match (
                &self.tls,
                e.starts_with("http://"),
                e.starts_with("https://"),
            ) {
                (Some(_), true, _) => {
                    return Err(Error::Invalid(format!(
                        "etcd endpoint {e} is http:// but TLS to etcd is configured: write it https://"
                    )));
                }
                (None, _, true) => {
                    return Err(Error::Invalid(format!(
                        "etcd endpoint {e} is https:// but no CA is given to check etcd's certificate: pass --etcd-ca-file (or the Secret's ca.crt)"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The endpoints as etcd-client wants them: a bare `host:port` gets `https://` when TLS
    /// is on (etcd-client would otherwise guess from the options, silently).
    pub fn urls(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if self.tls.is_some() {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    }

    /// `base` (timeouts, keep-alive) with this connection's TLS and credentials.
    pub fn options(&self, base: ConnectOptions) -> ConnectOptions {
        let mut options = base;
        if let Some(tls) = &self.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some(c) = &tls.client {
                t = t.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
            }
            if let Some(name) = &tls.server_name {
                t = t.domain_name(name.clone());
            }
            options = options.with_tls(t);
        }
        if let Some(user) = &self.user {
            options = options.with_user(user.name.clone(), user.password.clone());
        }
        options
    }

    /// Connect with `base` options (timeouts), bounded by `timeout` as a whole (etcd-client
    /// can wait for ever on an address that accepts but never answers).
    pub async fn connect(
        &self,
        base: ConnectOptions,
        timeout: Duration,
    ) -> Result<Client, ConnectError> {
        self.validate().map_err(ConnectError::Config)?;
        match tokio::time::timeout(
            timeout,
            Client::connect(self.urls(), Some(self.options(base))),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(ConnectError::Etcd(e)),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(Error),
    #[error("{}", explain(.0))]
    Etcd(#[source] etcd_client::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// etcd-client's error, with a hint for the usual TLS and auth mistakes.
fn explain(e: &etcd_client::Error) -> String {
    let text = e.to_string();
    let lower = format!("{e:?}").to_lowercase();
    let hint = if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
    {
        "; the TLS handshake failed: check that --etcd-ca-file signed etcd's certificate, that the certificate names the endpoint's host, and that the client certificate is signed by the CA etcd trusts (--trusted-ca-file)"
    } else if lower.contains("authentication failed") || lower.contains("invalid user") {
        "; etcd refused the user or password: check --etcd-user and --etcd-password-file"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// The chat node's `--etcd-*` flags: where the TLS material and credentials are on disk.
/// [`EtcdFiles::load`] reads them afresh, so a process that reconnects after a rotation
/// (a renewed certificate written over the old one) uses the new files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdFiles {
    /// CA bundle that signed etcd's server certificate (`--etcd-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (`--etcd-cert-file`), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (`--etcd-key-file`).
    pub key_file: Option<PathBuf>,
    /// etcd user for user + password auth (`--etcd-user`), with `password_file`.
    pub user: Option<String>,
    /// A file holding the etcd user's password, one trailing newline ignored
    /// (`--etcd-password-file`).
    pub password_file: Option<PathBuf>,
    /// Name etcd's certificate must carry, when it is not the endpoints' host
    /// (`--etcd-server-name`).
    pub server_name: Option<String>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

impl EtcdFiles {
    /// Whether any TLS or credential file is named.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Check the combination without reading: a certificate needs its key, a user a
    /// password, a client certificate or server name needs a CA.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Invalid(m.to_owned()));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("--etcd-cert-file and --etcd-key-file go together: give both or neither");
        }
        if self.user.is_some() != self.password_file.is_some() {
            return bad("--etcd-user and --etcd-password-file go together: give both or neither");
        }
        if self.ca_file.is_none() && (self.cert_file.is_some() || self.server_name.is_some()) {
            return bad(
                "a client certificate or --etcd-server-name for etcd needs --etcd-ca-file: the CA that signed etcd's server certificate",
            );
        }
        Ok(())
    }

    /// Read the files into an [`EtcdConnect`] for `endpoints`.
    pub fn load(&self, endpoints: &[String]) -> Result<EtcdConnect, Error> {
        self.check()?;
        let tls = match &self.ca_file {
            None => None,
            Some(ca) => Some(EtcdTls {
                ca_pem: read("CA", ca)?,
                client: match (&self.cert_file, &self.key_file) {
                    (Some(cert), Some(key)) => Some(ClientCert {
                        cert_pem: read("client certificate", cert)?,
                        key_pem: read("client key", key)?,
                    }),
                    _ => None,
                },
                server_name: self.server_name.clone(),
            }),
        };
        let user = match (&self.user, &self.password_file) {
            (Some(name), Some(file)) => {
                let raw = read("password", file)?;
                let text = String::from_utf8(raw).map_err(|_| {
                    Error::Invalid(format!(
                        "the etcd password file {} is not UTF-8",
                        file.display()
                    ))
                })?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password).to_owned();
                Some(EtcdUser {
                    name: name.clone(),
                    password,
                })
            }
            _ => None,
        };
        let connect = EtcdConnect {
            endpoints: endpoints.to_vec(),
            tls,
            user,
        };
        connect.validate()?;
        Ok(connect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_told_apart_from_authenticated_tls() {
        let mut c = EtcdConnect::plain(["127.0.0.1:2379"]);
        assert!(c.is_plain_text());
        assert_eq!(c.urls(), ["http://127.0.0.1:2379"]);
        c.tls = Some(EtcdTls {
            ca_pem: b"ca".to_vec(),
            client: None,
            server_name: None,
        });
        assert!(c.is_plain_text(), "TLS without client auth lets anyone in");
        assert_eq!(c.urls(), ["https://127.0.0.1:2379"]);
        c.user = Some(EtcdUser {
            name: "parley".into(),
            password: "pw".into(),
        });
        assert!(!c.is_plain_text());
        assert!(!format!("{c:?}").contains("pw"), "the password is redacted");
    }

    #[test]
    fn mismatched_schemes_are_refused_with_the_fix() {
        let mut c = EtcdConnect::plain(["https://e:2379"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--etcd-ca-file"), "{e}");
        c.endpoints = vec!["http://e:2379".into()];
        c.tls = Some(EtcdTls {
            ca_pem: vec![],
            client: None,
            server_name: None,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn files_load_with_one_trailing_newline_of_the_password_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let pw = dir.path().join("pw");
        std::fs::write(&ca, "CA PEM").unwrap();
        std::fs::write(&pw, "s3cret\n").unwrap();
        let files = EtcdFiles {
            ca_file: Some(ca),
            user: Some("parley".into()),
            password_file: Some(pw),
            ..EtcdFiles::default()
        };
        let c = files.load(&["https://e:2379".into()]).unwrap();
        assert_eq!(c.user.as_ref().unwrap().password, "s3cret");
        assert_eq!(c.tls.as_ref().unwrap().ca_pem, b"CA PEM");
        let half = EtcdFiles {
            cert_file: Some("c".into()),
            ..EtcdFiles::default()
        };
        assert!(
            half.check()
                .unwrap_err()
                .to_string()
                .contains("--etcd-key-file")
        );
        let missing = EtcdFiles {
            ca_file: Some(dir.path().join("nope")),
            ..EtcdFiles::default()
        };
        let e = missing
            .load(&["https://e:2379".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("CA"), "{e}");
    }
}
