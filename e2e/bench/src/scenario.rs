//! The scenarios. Each takes the shared [`Ctx`], sets up what it needs (users from the
//! cached pool, groups), runs, prints its human summary on stderr and returns its figures
//! for the JSON line.

pub mod catchup;
pub mod dm;
pub mod group;
pub mod idle;
pub mod mixed;
pub mod storm;

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};

use crate::api::Api;
use crate::cli::Global;
use crate::report::NodeProbe;
use crate::ws::Dialer;

/// What every scenario gets.
pub struct Ctx {
    pub global: Global,
    pub api: Api,
    pub dialer: Dialer,
    pub probe: NodeProbe,
    /// Users this run had to create (the node ran argon2 for them).
    pub created: AtomicUsize,
}

impl Ctx {
    /// Users `0..n` of the cached pool (created if missing).
    pub async fn users(&self, n: usize) -> Result<Vec<crate::api::User>> {
        let (users, created) = crate::users::ensure(
            &self.api,
            &self.global.users_file,
            n,
            self.global.setup_concurrency,
        )
        .await?;
        self.created.fetch_add(created, Ordering::Relaxed);
        Ok(users)
    }
}

/// Fail early, with what to do, when `sockets` would not fit this process's open-file limit.
pub fn check_open_files(sockets: usize) -> Result<()> {
    if let Some(limit) = crate::procfs::open_files_limit()
        && (sockets as u64 + 64) > limit
    {
        bail!(
            "{sockets} sockets need more open files than this process may hold ({limit}); \
             raise it with `ulimit -n` (this machine's hard limit is 20000) or use fewer"
        );
    }
    Ok(())
}
