//! The WebSocket gateway: the upgrade on `GET /v1/ws` and one session task per socket.
//!
//! We take the HTTP upgrade ourselves, take the TCP socket back out of the HTTP server once
//! upgraded (so none of its buffers stay), and speak WebSocket frames with a codec of our
//! own ([`frame`], [`socket`]) that keeps nothing while a socket is idle: memory per idle
//! connection is what the contract's scale needs (docs/benchmarks.md, "Idle sockets").

pub(crate) mod frame;
mod session;
mod socket;

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use warp::reply::{Reply, Response};

use crate::http_server::{ConnControl, Guarded};
use crate::protocol::ApiError;
use crate::state::AppState;
use socket::Socket;

/// Check the upgrade request and the token (`?token=`, else `Authorization`), then switch
/// protocols and start the session. A bad token is refused with 401 before the upgrade, as
/// the contract says.
pub async fn upgrade(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    token: Option<String>,
    upgrade: Option<OnUpgrade>,
    control: Option<ConnControl>,
) -> Result<Response, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let is_upgrade = header("upgrade").eq_ignore_ascii_case("websocket")
        && header("connection")
            .to_ascii_lowercase()
            .contains("upgrade");
    let key = header("sec-websocket-key").to_owned();
    if !is_upgrade || key.is_empty() || header("sec-websocket-version") != "13" {
        return Err(ApiError::bad_request(
            "GET /v1/ws needs a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Version: 13)",
        ));
    }
    let claims = match token {
        Some(token) => state.accounts.authenticate(&token).await?,
        None => state.authenticate(headers).await?,
    };
    let state = state.clone();
    if state.is_draining() || !state.cluster.is_serving() {
        return Err(ApiError::unavailable(
            "this node is shutting down; ask GET /v1/assign for another",
        ));
    }
    if state.hub.connection_count() >= state.config.max_connections as u64 {
        return Err(ApiError::unavailable(
            "this node is at its connection limit; retry shortly",
        ));
    }
    if state.cluster.all_draining() && state.cluster.is_draining() {
        return Err(ApiError::unavailable(
            "every node of this cluster is draining (paused or shutting down); retry later",
        ));
    }
    // The session checks that the user belongs here; that needs their home region, read from
    // their record (a store that cannot answer is a 503 before the upgrade).
    let home = state.accounts.home_region(&claims.sub).await?;
    state.cluster.learn_home(&claims.sub, &home);
    let on_upgrade = upgrade.ok_or_else(|| {
        ApiError::bad_request("this connection cannot be upgraded (use HTTP/1.1)")
    })?;
    // 429 before the upgrade; the permit is the session's until it ends.
    let permit = state.limiters.open_socket(&claims.sub)?;
    if let Some(control) = control {
        control.upgraded();
    }

    let max_frame = state.limits.max_frame_bytes();
    let conn = session::open(&state, &claims);
    let tracker = state.sessions.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                if let Some(conn) = conn {
                    session::abandon(&state, &conn);
                }
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        // Plain HTTP: the HTTP server's connection is done with, keep only the TCP socket
        // (and whatever it had read past the request). With TLS the connection stays
        // hyper's (its TLS state is needed).
        match upgraded.downcast::<TokioIo<Guarded<TcpStream>>>() {
            Ok(parts) => {
                // `read_buf` shares hyper's whole read buffer (8 KiB): copy what it holds
                // and let the buffer go before the session starts.
                let hyper::upgrade::Parts { io, read_buf, .. } = parts;
                let socket = Socket::new(io.into_inner().into_inner(), &read_buf, max_frame);
                drop(read_buf);
                // Boxed, here and below: the task holds one session's state, not the
                // larger of the two kinds.
                Box::pin(session::run(state, socket, claims, conn)).await;
            }
            Err(upgraded) => {
                let socket = Socket::new(TokioIo::new(upgraded), &[], max_frame);
                Box::pin(session::run(state, socket, claims, conn)).await;
            }
        }
        drop(permit);
    });

    let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
    let reply = warp::reply::with_header(reply, "upgrade", "websocket");
    let reply = warp::reply::with_header(reply, "connection", "Upgrade");
    let reply = warp::reply::with_header(
        reply,
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()),
    );
    Ok(reply.into_response())
}

/// Shared state, as sessions hold it.
type State = Arc<AppState>;
