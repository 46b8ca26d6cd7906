//! The HTTP API (`/v1/...`, `/healthz`, `/readyz`, `/metrics`) and the entry to the
//! WebSocket upgrade.
//!
//! One warp filter takes every request apart (method, path, query, headers, body) and
//! [`routes`] matches the path segments against the contract's table. A plain `match` keeps
//! the whole API readable on one screen and gives every miss a contract-shaped error body
//! (404 / 405 with `{"error": ...}`), which warp's rejection chain makes awkward.
//!
//! The node-to-node routes (`/internal/v1/...`) are served by [`internal_filter`] on the
//! internal listener only (mutual TLS); on the client port they are 404 like any unknown
//! path.

mod internal;
mod routes;
mod web;

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use hyper::upgrade::OnUpgrade;
use serde::Serialize;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::auth::Claims;
use crate::cluster::transport::PeerNode;
use crate::http_server::{ConnControl, PeerAddr};
use crate::protocol::ApiError;
use crate::state::AppState;

/// The node's whole HTTP surface as one warp filter.
pub fn filter(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<ConnControl>())
        .and(warp::any().map(move || state.clone()))
        .then(
            |method: Method,
             path: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             body,
             upgrade,
             remote: Option<PeerAddr>,
             control: Option<ConnControl>,
             state: Arc<AppState>| async move {
                state.metrics.http_requests.inc();
                let request = Request {
                    method,
                    path: path.as_str().to_owned(),
                    query,
                    headers,
                    upgrade,
                    peer: None,
                    remote: remote.map(|p| p.0),
                    control,
                    body_timeout: state.limiters.config().body_timeout(),
                };
                match routes::route(&state, request, body).await {
                    Ok(response) => response,
                    Err(error) => error_response(&error),
                }
            },
        )
}

/// The internal listener's routes: `/internal/v1/...` (links, status, identity) and
/// `/healthz`; anything else is 404. The peer node proved by the connection's certificate
/// comes with each request ([`PeerNode`], `None` without mutual TLS).
pub fn internal_filter(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::ext::optional::<PeerNode>())
        .and(warp::any().map(move || state.clone()))
        .then(
            |method: Method,
             path: warp::path::FullPath,
             headers: HeaderMap,
             body,
             peer: Option<PeerNode>,
             state: Arc<AppState>| async move {
                let request = Request {
                    method,
                    path: path.as_str().to_owned(),
                    query: String::new(),
                    headers,
                    upgrade: None,
                    peer,
                    remote: None,
                    control: None,
                    // Link bodies are the peers' (mutual TLS); the client deadlines are for
                    // clients.
                    body_timeout: None,
                };
                let segments = request.segments();
                let result = match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                    ["internal", "v1", what] => {
                        let what = what.to_owned();
                        internal::route(&state, request, &what, body).await
                    }
                    ["healthz"] => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
                    _ => Err(ApiError::not_found(format!(
                        "there is no {} {} on the internal listener",
                        request.method, request.path
                    ))),
                };
                result.unwrap_or_else(|error| error_response(&error))
            },
        )
}

/// One request, taken apart.
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub upgrade: Option<OnUpgrade>,
    /// The node the connection's certificate names (internal listener, mutual TLS).
    pub peer: Option<PeerNode>,
    /// The TCP peer of a client connection (absent when the server did not say).
    pub remote: Option<std::net::SocketAddr>,
    /// The connection's handle, for the WebSocket upgrade.
    pub control: Option<ConnControl>,
    /// How long the body may take to arrive (`--body-timeout-secs`).
    pub body_timeout: Option<std::time::Duration>,
}

impl Request {
    /// The path's segments after the leading `/`, percent-decoded.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// A query parameter's value.
    pub fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// A query parameter that may be given at most once; 400 if it is repeated (which value
    /// would count is anyone's guess, so none does).
    pub fn query_once(&self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = form_urlencoded::parse(self.query.as_bytes()).filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.into_owned());
        let more = values.count();
        if more > 0 {
            return Err(ApiError::bad_request(format!(
                "query parameter {name} is given {} times; give it once",
                more + 1
            )));
        }
        Ok(first)
    }

    /// A numeric query parameter; 400 if present but not a non-negative integer, or repeated.
    pub fn query_u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.query_once(name)? {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter {name} must be a non-negative integer"
                ))
            }),
        }
    }

    /// The bearer token from `Authorization`, checked (signature, expiry, not revoked);
    /// 401 if absent, invalid or revoked.
    pub async fn auth(&self, state: &AppState) -> Result<Claims, ApiError> {
        state.authenticate(&self.headers).await
    }

    /// The client's address for the per-address limits (the peer, or the first
    /// `X-Forwarded-For` hop behind a trusted proxy).
    pub fn client_address(&self, state: &AppState) -> Option<std::net::IpAddr> {
        state
            .limiters
            .client_address(self.remote.map(|p| p.ip()), &self.headers)
    }
}

/// [`read_body_bytes`] within the request's body deadline: a body that has not arrived in
/// time is answered 408 and the connection closed.
pub async fn read_body<S, B>(body: S, req: &Request, limit: usize) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let Some(deadline) = req.body_timeout else {
        return read_body_bytes(body, &req.headers, limit).await;
    };
    match tokio::time::timeout(deadline, read_body_bytes(body, &req.headers, limit)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            crate::protocol::ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s; send it whole, promptly",
                deadline.as_secs()
            ),
        )),
    }
}

/// Read the whole body, refusing more than `limit` bytes with 413 (whether or not the
/// client declared a length).
pub async fn read_body_bytes<S, B>(
    body: S,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || ApiError::too_large(format!("the request body is over {limit} bytes"));
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if buf.len() + chunk.remaining() > limit {
            // Read (and drop) a bounded rest of the body before answering, so a client still
            // writing it gets the 413 instead of a broken pipe.
            let mut discarded = 0;
            while let Ok(Some(Ok(rest))) =
                tokio::time::timeout(std::time::Duration::from_secs(2), body.next()).await
            {
                discarded += rest.remaining();
                if discarded > 4 * limit {
                    break;
                }
            }
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Decode a JSON body; 400 saying what is wrong.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("this call needs a JSON body"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the JSON body is not valid: {e}")))
}

/// A JSON answer with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// 204 No Content.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The contract's error body with the code's status. A 413 is answered before the body was
/// read to its end, so it also closes the connection: a client must not reuse it (the rest of
/// its body would be read as the next request).
pub fn error_response(error: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, &error.to_body());
    if let Some(allow) = error
        .allow
        .as_deref()
        .and_then(|a| http::HeaderValue::from_str(a).ok())
    {
        response.headers_mut().insert(http::header::ALLOW, allow);
    }
    if let Some(secs) = error.retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    if matches!(
        error.code,
        crate::protocol::ErrorCode::TooLarge | crate::protocol::ErrorCode::RequestTimeout
    ) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}
