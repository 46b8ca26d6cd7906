//! The node-to-node routes (`/internal/v1/...`), served on the internal listener only (never
//! on the client port). With mutual TLS the connection itself proves which node calls
//! ([`crate::cluster::transport`]); a batch must come `from` that node.

use bytes::Buf;
use futures_util::Stream;
use http::{Method, StatusCode};
use warp::reply::Response;

use super::{Request, json, json_body, no_content, read_body};
use crate::cluster::link::{Batch, Event, HomeChange, MAX_BODY, StatusAnswer, StatusQuery};
use crate::cluster::rpc::{AnswerBatch, CallBatch};
use crate::protocol::ApiError;
use crate::state::AppState;

/// `POST /internal/v1/link` (a batch of events), `POST /internal/v1/rpc` (a batch of calls,
/// answered in order), `POST /internal/v1/status` and `POST /internal/v1/home` (a user's new
/// home region).
pub async fn route<S, B>(
    state: &AppState,
    req: Request,
    what: &str,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if state.links.transport().is_secure() && req.peer.is_none() {
        return Err(ApiError::unauthorized(
            "this route is for the cluster's nodes: connect with a node certificate of the cluster CA",
        ));
    }
    if what == "identity" && req.method == Method::GET {
        // How a peer proves its etcd record (cluster::trust): this node's own registration.
        let me = state.cluster.registration(state.hub.connection_count());
        return Ok(json(StatusCode::OK, &me));
    }
    if req.method != Method::POST {
        return Err(ApiError::new(
            crate::protocol::ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {}; use POST", req.method, req.path),
        ));
    }
    let bytes = read_body(body, &req, MAX_BODY).await?;
    match what {
        "link" => {
            let batch: Batch = json_body(&bytes)?;
            if let Some(peer) = req.peer.as_ref().filter(|p| p.0 != batch.from) {
                return Err(ApiError::forbidden(format!(
                    "this connection's certificate names node {}, not {}",
                    peer.0, batch.from
                )));
            }
            receive(state, batch);
            Ok(no_content())
        }
        "rpc" => {
            let batch: CallBatch = json_body(&bytes)?;
            // Every call's writer operation is queued in the order of the batch (`answer`
            // queues before its first await), then all are awaited together.
            let answers = futures_util::future::join_all(
                batch.calls.into_iter().map(|call| state.chat.answer(call)),
            )
            .await;
            Ok(json(StatusCode::OK, &AnswerBatch { answers }))
        }
        "status" => {
            let query: StatusQuery = json_body(&bytes)?;
            let answer: StatusAnswer = state.presence.local_online(&query.users);
            Ok(json(StatusCode::OK, &answer))
        }
        "home" => {
            let change: HomeChange = json_body(&bytes)?;
            if !parley_cluster_contract::is_valid_name(&change.region) {
                return Err(ApiError::bad_request(format!(
                    "{:?} is not a region name",
                    change.region
                )));
            }
            state.cluster.home_changed(&change.user, &change.region);
            Ok(no_content())
        }
        _ => Err(ApiError::not_found(format!(
            "there is no {} {}",
            req.method, req.path
        ))),
    }
}

/// Apply a peer's events to this node's sockets.
fn receive(state: &AppState, batch: Batch) {
    for event in batch.events {
        match event {
            // The message names its sending device (`from_device`).
            Event::Deliver {
                message,
                recipients,
                sending_device: _,
            } => state.chat.deliver_local(&message, &recipients),
            Event::Presence {
                user,
                status,
                last_seen,
                to,
            } => state
                .presence
                .remote_change(&batch.from, user, status, last_seen, to),
            Event::Frame { to, frame } => {
                let frame = frame.into();
                for user in &to {
                    state.hub.send_to_user(user, &frame, None);
                }
            }
        }
    }
}
