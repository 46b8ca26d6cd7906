//! Running a writer operation at the node that owns its unit (a channel, a user's inbox):
//! here, or over the cluster's calls, following ownership while it moves.

use std::future::Future;
use std::time::{Duration, Instant};

use super::Chat;
use crate::cluster::rpc::{Answer, Call};
use crate::protocol::ApiError;
use crate::store::writer::WriteError;

/// How long an operation keeps trying to reach its unit's owner while ownership moves: past
/// the lease of a node that died (10 s), after which its units have new owners.
const ROUTE_DEADLINE: Duration = Duration::from_secs(15);

impl Chat {
    /// Run an operation on `unit` at its owner: `here` when this node owns it, else `call`
    /// at the owner, whose answer `answer` takes apart. An owner that changes meanwhile is
    /// followed until [`ROUTE_DEADLINE`]; the operation must be safe to run again.
    pub(super) async fn at_owner<T, F, Fut>(
        &self,
        unit: &str,
        call: Call,
        here: F,
        answer: fn(Answer) -> Option<T>,
    ) -> Result<T, ApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
    {
        let deadline = Instant::now() + ROUTE_DEADLINE;
        let mut pause = Duration::from_millis(20);
        loop {
            // The writers' own view of who owns what (the one their fences check).
            let owner = self.links.cluster().owners().owner(unit).map(str::to_owned);
            let result = match owner {
                None => here().await,
                Some(node) => match self.links.rpc().call(&node, &call).await {
                    Ok(Answer::Refused { error }) => Err(WriteError::Api(error)),
                    Ok(Answer::NotOwner) => Err(WriteError::NotOwner),
                    Ok(other) => answer(other).ok_or_else(|| {
                        WriteError::Api(ApiError::internal(
                            "a node answered a call with something else",
                        ))
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, node = %node, unit, "a call could not reach its unit's owner");
                        Err(WriteError::NotOwner)
                    }
                },
            };
            match result {
                Err(WriteError::NotOwner) if Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(400));
                }
                other => return other.map_err(WriteError::into_api),
            }
        }
    }
}
