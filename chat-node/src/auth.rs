//! Authentication: argon2id password hashes and signed bearer tokens.
//!
//! Tokens are HS256 JWTs signed with the cluster's shared secret, so any node holding the
//! secret checks them without a look-up.

pub mod password;
pub mod token;

pub use token::{Claims, TokenKeys};

/// Read a secret file: its bytes, with one trailing newline ignored.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.len() < 16 {
        return Err(format!(
            "the secret in {} is {} bytes; use at least 16 random bytes (e.g. `openssl rand -hex 32`)",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The token secret of a node without `--token-secret-file`: generated once into
/// `<data-dir>/token-secret` (mode 0600) and reused on restart.
pub fn load_or_create_secret(data_dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let path = data_dir.join("token-secret");
    if path.exists() {
        return read_secret_file(&path);
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create the data dir {}: {e}", data_dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = data_dir.join("token-secret.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("cannot write the token secret to {}: {e}", path.display()))?;
    Ok(secret.into_bytes())
}
