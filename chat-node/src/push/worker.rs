//! The push worker: one task per node that turns due outbox entries into per-device push
//! jobs and sends due jobs, retrying durably.
//!
//! Each round:
//! 1. **Expand.** Read the outbox entries due now that this node owns ([`Audience::owns`]);
//!    drop the recipients who are online; for every offline recipient's device with a push
//!    registration, make one job that coalesces all that user's due entries (the newest
//!    message's fields, `count` of messages, `unread` from the device's cursor). A device whose
//!    cursor already covers the newest message gets none. The entries are deleted and the jobs
//!    written in one transaction.
//! 2. **Send.** Send the due jobs this node owns, concurrently. Delivered and dropped jobs are
//!    deleted; a retry rewrites the job with the next due time and attempt count.
//!
//! Both steps read each message as it is now: a message edited since carries its latest
//! text, and a deleted one an empty preview, so a deleted message's text is never pushed.
//!
//! A crash anywhere leaves either the outbox entry or the job in the store, so the push is
//! sent after restart: at least once (a crash between the provider's answer and the delete
//! sends it again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Push, label};
use crate::metrics::ProviderLabel;
use crate::now_ms;
use crate::protocol::ApiError;
use crate::store::{OutboxEntry, PushJob, PushNotification};

/// Outbox entries expanded per round.
const EXPAND_BATCH: usize = 256;
/// Outbox keys read per round at most while looking for entries this node owns.
const SCAN_BUDGET: usize = 4096;
/// Jobs sent concurrently per round.
const SEND_BATCH: usize = 64;
/// The longest sleep between two looks at the store (other nodes write entries this one owns).
const POLL: Duration = Duration::from_secs(1);
/// How often the depth gauge is recounted at most.
const DEPTH_EVERY: Duration = Duration::from_secs(1);
/// Cap of the depth count per table.
const DEPTH_CAP: usize = 10_000;

impl Push {
    /// Start the worker; it stops at the end of a round once `shutdown` is cancelled.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let push = self.clone();
        tokio::spawn(async move { push.run(shutdown).await })
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_depth: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let busy = match self.round().await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e.message, "push round failed; retrying shortly");
                    false
                }
            };
            if last_depth.is_none_or(|t| t.elapsed() >= DEPTH_EVERY) || !busy {
                if let Ok(depth) = self.store.push_depth(DEPTH_CAP).await {
                    self.metrics.push.outbox_depth.set(depth as i64);
                }
                last_depth = Some(Instant::now());
            }
            if busy {
                continue;
            }
            let now = now_ms();
            let wait = match self.store.push_next_due().await {
                Ok(Some(due)) if due > now => POLL.min(Duration::from_millis((due - now) as u64)),
                _ => POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracing::info!("push worker stopped");
    }

    /// One expand and one send. Returns whether it did anything (then look again at once).
    async fn round(&self) -> Result<bool, ApiError> {
        let expanded = self.expand(now_ms()).await?;
        let sent = self.send_due(now_ms()).await?;
        Ok(expanded || sent)
    }

    /// Turn due outbox entries into jobs. Returns whether any entry was taken.
    async fn expand(&self, now: i64) -> Result<bool, ApiError> {
        let mut owned: Vec<(Vec<u8>, OutboxEntry)> = Vec::new();
        let mut from: Option<Vec<u8>> = None;
        let mut scanned = 0;
        while owned.len() < EXPAND_BATCH && scanned < SCAN_BUDGET {
            let page = self
                .store
                .push_outbox_due(from.as_deref(), now, EXPAND_BATCH)
                .await?;
            let full = page.len() == EXPAND_BATCH;
            scanned += page.len();
            if let Some((last, _)) = page.last() {
                let mut next = last.clone();
                next.push(0);
                from = Some(next);
            }
            owned.extend(
                page.into_iter()
                    .filter(|(_, e)| self.audience.owns(&e.channel)),
            );
            if !full {
                break;
            }
        }
        if owned.is_empty() {
            return Ok(false);
        }
        // A message edited since carries its latest text, a deleted one none: a deleted
        // message's preview is never pushed.
        let messages: Vec<(String, u64)> = owned
            .iter()
            .map(|(_, e)| (e.channel.clone(), e.seq))
            .collect();
        for ((_, entry), now) in owned
            .iter_mut()
            .zip(self.store.previews_now(&messages).await?)
        {
            if let Some(preview) = now {
                entry.preview = preview;
            }
        }

        // Each recipient's due entries, newest last (by inbox_id).
        let mut by_user: BTreeMap<String, Vec<(u64, &OutboxEntry)>> = BTreeMap::new();
        for (_, entry) in &owned {
            for (user, inbox_id) in &entry.recipients {
                by_user
                    .entry(user.clone())
                    .or_default()
                    .push((*inbox_id, entry));
            }
        }
        let users: Vec<String> = by_user.keys().cloned().collect();
        let online = self.audience.online(&users).await;
        let mut jobs = Vec::new();
        for (user, mut entries) in by_user {
            if online.contains(&user) {
                continue;
            }
            let devices: Vec<_> = self
                .store
                .devices(&user)
                .await?
                .into_iter()
                .filter(|d| d.push.is_some())
                .collect();
            if devices.is_empty() {
                continue;
            }
            entries.sort_by_key(|(inbox_id, _)| *inbox_id);
            let head = self.store.inbox_head(&user).await?;
            let Some(&(newest_id, newest)) = entries.last() else {
                continue;
            };
            for device in devices {
                let Some(reg) = device.push else { continue };
                if device.cursor >= newest_id {
                    continue; // the device already holds these messages
                }
                let count = entries.iter().filter(|(id, _)| *id > device.cursor).count() as u64;
                jobs.push(PushJob {
                    notification: PushNotification {
                        user_id: user.clone(),
                        device_id: device.device_id,
                        provider: reg.provider,
                        token: reg.token,
                        channel: newest.channel.clone(),
                        seq: newest.seq,
                        inbox_id: newest_id,
                        from: newest.from.clone(),
                        preview: newest.preview.clone(),
                        ts: newest.ts,
                        count,
                        unread: head.saturating_sub(device.cursor),
                    },
                    attempt: 0,
                });
            }
        }
        let keys: Vec<Vec<u8>> = owned.into_iter().map(|(k, _)| k).collect();
        if !self.store.push_expand(&keys, &jobs, now).await? {
            tracing::debug!("push outbox entries were taken by someone else; reading again");
        }
        Ok(true)
    }

    /// Send the due jobs this node owns. Returns whether any was sent.
    async fn send_due(&self, now: i64) -> Result<bool, ApiError> {
        let jobs: Vec<(Vec<u8>, PushJob)> = self
            .store
            .push_jobs_due(None, now, SEND_BATCH)
            .await?
            .into_iter()
            .filter(|(_, j)| self.audience.owns(&j.notification.channel))
            .collect();
        if jobs.is_empty() {
            return Ok(false);
        }
        // The message may have been deleted (or edited) since its job was written.
        let messages: Vec<(String, u64)> = jobs
            .iter()
            .map(|(_, j)| (j.notification.channel.clone(), j.notification.seq))
            .collect();
        let mut jobs = jobs;
        for ((_, job), now) in jobs
            .iter_mut()
            .zip(self.store.previews_now(&messages).await?)
        {
            if let Some(preview) = now {
                job.notification.preview = preview;
            }
        }
        let outcomes = join_all(jobs.iter().map(|(_, job)| self.try_once(job))).await;
        // Online state was decided at expansion: a device that came online since gets one
        // harmless extra notification.
        let mut gone: HashMap<(String, String), String> = HashMap::new();
        for ((key, mut job), outcome) in jobs.into_iter().zip(outcomes) {
            let n = &job.notification;
            let labels = ProviderLabel {
                provider: label(n.provider),
            };
            let m = &self.metrics.push;
            job.attempt += 1;
            match outcome {
                Outcome::Delivered => {
                    m.sent.get_or_create(&labels).inc();
                    tracing::debug!(user_id = %n.user_id, device_id = %n.device_id, provider = labels.provider, "push delivered");
                    self.store.push_job_done(&key).await?;
                }
                Outcome::Retry(reason) if job.attempt < self.schedule.max_attempts => {
                    m.failed.get_or_create(&labels).inc();
                    m.retried.get_or_create(&labels).inc();
                    let wait = self.schedule.backoff(job.attempt);
                    tracing::info!(user_id = %n.user_id, device_id = %n.device_id, provider = labels.provider, attempt = job.attempt, %reason, retry_in_ms = wait.as_millis() as u64, "push failed; will retry");
                    let due = now_ms().saturating_add(wait.as_millis() as i64);
                    self.store.push_job_retry(&key, &job, due).await?;
                }
                Outcome::Retry(reason) => {
                    m.failed.get_or_create(&labels).inc();
                    m.dropped.get_or_create(&labels).inc();
                    tracing::warn!(user_id = %n.user_id, device_id = %n.device_id, provider = labels.provider, attempt = job.attempt, %reason, "push failed on its last try; giving up");
                    self.store.push_job_done(&key).await?;
                }
                Outcome::Drop(reason) => {
                    m.failed.get_or_create(&labels).inc();
                    m.dropped.get_or_create(&labels).inc();
                    tracing::warn!(user_id = %n.user_id, device_id = %n.device_id, provider = labels.provider, %reason, "push refused; dropped");
                    self.store.push_job_done(&key).await?;
                }
                Outcome::Gone(reason) => {
                    m.failed.get_or_create(&labels).inc();
                    m.dropped.get_or_create(&labels).inc();
                    tracing::info!(user_id = %n.user_id, device_id = %n.device_id, provider = labels.provider, %reason, "push token gone; removing the registration");
                    gone.insert((n.user_id.clone(), n.device_id.clone()), n.token.clone());
                    self.store.push_job_done(&key).await?;
                }
            }
        }
        for ((user, device), token) in gone {
            self.store
                .push_registration_gone(&user, &device, &token)
                .await?;
        }
        Ok(true)
    }

    /// One try of one job, with the provider its registration names.
    async fn try_once(&self, job: &PushJob) -> Outcome {
        let n = &job.notification;
        match self.provider(n.provider) {
            Some(p) => p.send(n).await,
            None => Outcome::Drop(format!(
                "device {} registered provider {}, which this node has not been set up for (see docs/push.md)",
                n.device_id,
                label(n.provider)
            )),
        }
    }
}
