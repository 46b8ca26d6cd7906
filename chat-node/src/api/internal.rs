//! The node-to-node routes (`/internal/v1/...`): not for clients. Every request must carry
//! the cluster's link key (see [`crate::cluster::link`]).

use bytes::Buf;
use futures_util::Stream;
use http::{Method, StatusCode};
use warp::reply::Response;

use super::{Request, json, json_body, no_content, read_body};
use crate::cluster::link::{Batch, Event, MAX_BODY, StatusAnswer, StatusQuery};
use crate::protocol::ApiError;
use crate::state::AppState;

/// `POST /internal/v1/link` (a batch of events) and `POST /internal/v1/status`.
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
        "status" => {
            let query: StatusQuery = json_body(&bytes)?;
            let answer: StatusAnswer = state.presence.local_online(&query.users);
            Ok(json(StatusCode::OK, &answer))
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
            Event::Deliver {
                message,
                recipients,
                sending_device,
            } => state
                .chat
                .deliver_local(&message, &recipients, &sending_device),
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
