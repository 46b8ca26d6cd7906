//! The node-to-node routes (`/internal/v1/...`): not for clients. Every request must carry
//! the cluster's link key (see [`crate::cluster::link`]).

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
    let header = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state.links.authorized(header) {
        return Err(ApiError::unauthorized(
            "this route is for the cluster's nodes and needs their link key",
        ));
    }
    if req.method != Method::POST {
        return Err(ApiError::new(
            crate::protocol::ErrorCode::MethodNotAllowed,
            format!("{} is not allowed on {}; use POST", req.method, req.path),
        ));
    }
    let bytes = read_body(body, &req.headers, MAX_BODY).await?;
    match what {
        "link" => {
            let batch: Batch = json_body(&bytes)?;
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
