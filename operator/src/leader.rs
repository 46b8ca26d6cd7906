//! Leader election over a `coordination.k8s.io/v1` Lease, so two operator replicas can run
//! and only one reconciles.
//!
//! The holder renews the Lease every [`LeaderConfig::renew_every`]; another replica takes it
//! over once `renewTime + leaseDurationSeconds` has passed. Every write carries the Lease's
//! `resourceVersion`, so two replicas racing for it cannot both win. A leader that cannot
//! renew before its lease runs out stops (the process exits and restarts as a follower): it
//! must not keep reconciling beside a new leader.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a follower retries).
    pub renew_every: Duration,
}

impl LeaderConfig {
    /// Defaults: a 15 s lease renewed every 5 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// What to do with the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder let it expire (or it has none): take it over.
    TakeOver,
    /// Someone else holds a live Lease.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// Decides from the Lease as read (pure, so it is tested without an API server).
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    match renewed {
        Some(t) if !holder.is_empty() && t + duration > now => Decision::Follow { holder },
        _ => Decision::TakeOver,
    }
}

/// One election round: reads the Lease and creates, renews or takes it over as
/// [`decide`] says. `Ok(true)` when we hold the Lease afterwards; a lost race is `Ok(false)`.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let decision = decide(current.as_ref(), &cfg.identity, now);
    let seconds = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15);
    let result = match (&decision, current) {
        (Decision::Follow { .. }, _) => return Ok(false),
        (Decision::Create, _) | (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        (_, Some(mut lease)) => {
            let mut spec = lease.spec.take().unwrap_or_default();
            if decision == Decision::TakeOver {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            lease.spec = Some(spec);
            // replace() sends the resourceVersion we read: a concurrent writer makes it 409.
            api.replace(&cfg.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => {
            if decision != Decision::Renew {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "acquired leadership");
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Leader election cannot work as configured: retrying would not help, so `run` stops with
/// this message (typical when running out of cluster with a kubeconfig).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The Lease's namespace does not exist.
    #[error(
        "the leader-election namespace {namespace:?} does not exist: create it (kubectl create namespace {namespace}) or point --lease-namespace (OPERATOR_NAMESPACE) at an existing one; out of cluster, e.g. --lease-namespace default"
    )]
    NamespaceMissing {
        /// The namespace named by `--lease-namespace`.
        namespace: String,
    },
    /// The operator's identity may not read or write the Lease.
    #[error(
        "not allowed to use the leader-election Lease {namespace}/{name}: {message}; give the operator's identity get, create and update on leases in {namespace} (the chart's Role does)"
    )]
    Forbidden {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The API server's answer.
        message: String,
    },
}

/// Blocks until this replica holds the Lease. Transient failures are retried; a missing
/// namespace or a refusal is returned at once, with what to do.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<(), LeaseError> {
    loop {
        match try_acquire(api, cfg).await {
            Ok(true) => return Ok(()),
            Ok(false) => tracing::debug!("another replica leads; waiting"),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(LeaseError::NamespaceMissing {
                    namespace: cfg.namespace.clone(),
                });
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(LeaseError::Forbidden {
                    namespace: cfg.namespace.clone(),
                    name: cfg.name.clone(),
                    message: e.message,
                });
            }
            Err(e) => tracing::warn!(error = %e, "leader election round failed; retrying"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the Lease until renewal fails for longer than the lease lasts (or another replica
/// took it), then returns: the caller must stop reconciling.
pub async fn keep(api: &Api<Lease>, cfg: &LeaderConfig) -> String {
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(api, cfg).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => return "another replica holds the Lease".into(),
            Err(e) => {
                tracing::warn!(error = %e, "renewing the leader Lease failed");
                if last_ok.elapsed() + cfg.renew_every >= cfg.lease_duration {
                    return format!("could not renew the leader Lease in time: {e}");
                }
            }
        }
    }
}

/// Gives the Lease up on a clean shutdown (empties its holder), so a standby replica takes
/// over at once instead of after the lease duration. Best effort: failures are logged.
pub async fn release(api: &Api<Lease>, cfg: &LeaderConfig) {
    let lease = match api.get_opt(&cfg.name).await {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "reading the leader Lease to release it failed");
            return;
        }
    };
    let mut lease = lease;
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "released leadership"),
        Err(e) => {
            tracing::warn!(error = %e, "releasing the leader Lease failed; it expires by itself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn leader_decision_creates_renews_follows_and_takes_over_expired_leases() {
        let now = Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&lease("a", now)), "a", now), Decision::Renew);
        let fresh = now - SignedDuration::from_secs(14);
        assert_eq!(
            decide(Some(&lease("b", fresh)), "a", now),
            Decision::Follow { holder: "b".into() }
        );
        let stale = now - SignedDuration::from_secs(15);
        assert_eq!(
            decide(Some(&lease("b", stale)), "a", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease("", now)), "a", now),
            Decision::TakeOver,
            "released lease"
        );
    }
}
