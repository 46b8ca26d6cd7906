//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), run on
//! a few dedicated threads so that a burst of logins never stalls the sockets.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::protocol::ApiError;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue. Why not tokio's blocking pool: a burst of sign-ups there runs
/// on up to hundreds of threads, each leaving its freed 19 MiB in its own allocator arena
/// (measured: ~800 MB RSS per node after 2,000 sign-ups). One thread per core bounds both the
/// CPU that hashing takes from the sockets and the memory it keeps; a burst queues instead.
fn hashers() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job();
                    }
                })
                .expect("spawn a hashing thread");
        }
        tx
    })
}

/// Run `f` on a hashing thread.
async fn on_hasher<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    hashers()
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .ok()?;
    rx.await.ok()
}

/// A PHC string (`$argon2id$v=19$...`) for `password`.
pub async fn hash(password: String) -> Result<String, ApiError> {
    on_hasher(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| ApiError::internal(format!("salt encoding failed: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
    })
    .await
    .unwrap_or_else(|| Err(ApiError::internal("the password hashing threads are gone")))
}

/// Whether `password` matches `phc`. With `phc` absent (no such user) a dummy hash is still
/// checked, so the answer takes as long either way and does not reveal which usernames exist.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let known = phc.is_some();
    on_hasher(move || {
        let phc = phc.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::encode_b64(&[7u8; 16]).expect("16 bytes always encode");
                    Argon2::default()
                        .hash_password(b"not a real password", &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && known
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let phc = super::hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(super::verify("correct horse".into(), Some(phc.clone())).await);
        assert!(!super::verify("wrong horse".into(), Some(phc)).await);
        assert!(!super::verify("anything".into(), None).await);
    }
}
