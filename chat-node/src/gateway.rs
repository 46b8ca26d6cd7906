//! The WebSocket gateway: the upgrade on `GET /v1/ws` and one session task per socket.
//!
//! We take the HTTP upgrade ourselves instead of using warp's `Ws`, because warp does not
//! expose tungstenite's read buffer size and the default (128 KiB per socket) would cost
//! over a gigabyte at ten thousand idle sockets; ours is a few KiB.

mod session;

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::reply::{Reply, Response};

use crate::http_server::ConnControl;
use crate::protocol::ApiError;
use crate::state::AppState;

/// Bytes tungstenite reads at a time (and keeps allocated) per socket.
const READ_BUFFER: usize = 4 * 1024;

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
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(16 * 1024)
        // The session flushes every 64 KiB, so this buffer holds at most that plus one frame.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let conn = session::open(&state, &claims);
    let tracker = state.sessions.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(state, ws, claims, conn).await;
                drop(permit);
            }
            Err(e) => {
                if let Some(conn) = conn {
                    session::abandon(&state, &conn);
                }
                tracing::debug!(error = %e, "websocket upgrade failed");
            }
        }
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

/// The socket type sessions run on.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Shared state, as sessions hold it.
type State = Arc<AppState>;
