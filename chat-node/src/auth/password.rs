//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), run on
//! a few dedicated threads so that a burst of logins never stalls the sockets.
//!
//! The threads take jobs from a bounded queue ([`QUEUE_PER_THREAD`] jobs per thread): when
//! it is full, the caller gets 503 `unavailable` with `Retry-After` at once instead of
//! waiting behind a flood, and a job whose caller went away (the client hung up) is skipped,
//! not hashed.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::protocol::ApiError;

/// A queued hash: it is run only if its caller still waits (`wanted`).
struct Job {
    wanted: Box<dyn Fn() -> bool + Send>,
    run: Box<dyn FnOnce() + Send>,
}

/// Jobs queued per hashing thread before callers are refused. At ~30 ms a hash (release,
/// one core) that is about a second of waiting at most.
pub const QUEUE_PER_THREAD: usize = 32;

/// A pool of hashing threads fed by one bounded queue.
struct Pool {
    tx: mpsc::SyncSender<Job>,
    /// Jobs skipped because their caller had gone (the tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    skipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Pool {
    fn new(threads: usize, capacity: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(capacity);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let skipped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for i in 0..threads {
            let rx = rx.clone();
            let skipped = skipped.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        if (job.wanted)() {
                            (job.run)();
                        } else {
                            skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .expect("spawn a hashing thread");
        }
        Self { tx, skipped }
    }
}

/// The hashing threads' queue. Why not tokio's blocking pool: a burst of sign-ups there runs
/// on up to hundreds of threads, each leaving its freed 19 MiB in its own allocator arena
/// (measured: ~800 MB RSS per node after 2,000 sign-ups). One thread per core bounds both the
/// CPU that hashing takes from the sockets and the memory it keeps; a burst queues instead.
fn hashers() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Pool::new(threads, threads * QUEUE_PER_THREAD)
    })
}

/// The answer when the queue is full.
pub fn saturated() -> ApiError {
    ApiError::unavailable(
        "the node is busy checking passwords; nothing was done, retry after the Retry-After seconds",
    )
    .with_retry_after(1)
}

/// Run `f` on a hashing thread; 503 at once when the queue is full.
async fn on_hasher<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    run_on(hashers(), f).await
}

async fn run_on<T: Send + 'static>(
    pool: &Pool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Arc::new(Mutex::new(Some(tx)));
    let probe = tx.clone();
    let job = Job {
        wanted: Box::new(move || {
            probe
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|tx| !tx.is_closed())
        }),
        run: Box::new(move || {
            let value = f();
            if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(value);
            }
        }),
    };
    match pool.tx.try_send(job) {
        Ok(()) => {}
        Err(mpsc::TrySendError::Full(_)) => return Err(saturated()),
        Err(mpsc::TrySendError::Disconnected(_)) => {
            return Err(ApiError::internal("the password hashing threads are gone"));
        }
    }
    rx.await
        .map_err(|_| ApiError::internal("a password hashing thread failed"))
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
    .await?
}

/// Whether `password` matches `phc`. With `phc` absent (no such user) a dummy hash is still
/// checked, so the answer takes as long either way and does not reveal which usernames exist.
/// Err: the queue is full (503).
pub async fn verify(password: String, phc: Option<String>) -> Result<bool, ApiError> {
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
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let phc = super::hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(
            super::verify("correct horse".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !super::verify("wrong horse".into(), Some(phc))
                .await
                .unwrap()
        );
        assert!(!super::verify("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once_and_abandoned_jobs_are_skipped() {
        // A pool of its own (the node's is shared by the other tests): one thread, 4 places.
        // Many more callers than it holds, each giving up after one poll: those past the
        // queue are refused without waiting, and the queued ones are skipped, not run.
        use futures_util::FutureExt;
        let pool = super::Pool::new(1, 4);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = std::time::Instant::now();
        let mut waiting = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            let ran = ran.clone();
            let mut attempt = Box::pin(super::run_on(&pool, move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }));
            match (&mut attempt).now_or_never() {
                Some(Err(e)) => {
                    assert_eq!(e.code, crate::protocol::ErrorCode::Unavailable);
                    assert_eq!(e.retry_after, Some(1));
                    refused += 1;
                }
                Some(Ok(())) => {}
                None => waiting.push(attempt),
            }
        }
        assert!(
            refused >= 190,
            "a queue of 4 refused most of 200 callers: {refused}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "refusals are immediate: {:?}",
            started.elapsed()
        );
        // Every waiting caller goes away; the thread skips what it had not started.
        drop(waiting);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pool.skipped.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no abandoned job was skipped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            ran.load(std::sync::atomic::Ordering::Relaxed) <= 2,
            "abandoned jobs are not run"
        );
    }
}
