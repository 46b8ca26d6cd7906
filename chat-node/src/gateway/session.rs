//! One WebSocket session: a single task that reads frames, runs their work (bounded in
//! number), writes queued frames, watches the heartbeat deadline and drains on shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::{Socket, State};
use crate::auth::Claims;
use crate::cluster::Owner;
use crate::hub::Conn;
use crate::now_ms;
use crate::protocol::frames::{ClientFrame, Inbound, ServerFrame};
use crate::protocol::{ApiError, CloseReason};

/// Frames of one socket being worked on at once; past this the session stops reading (the
/// client's pipelining is held back by TCP, not buffered here).
const MAX_IN_FLIGHT: usize = 64;

/// Bytes of outbound frames a socket may have queued beyond one largest frame before it is
/// cut as a slow consumer.
const QUEUE_BUDGET: usize = 4 * 1024 * 1024;

/// Bytes fed to the socket between flushes.
const FLUSH_EVERY: usize = 64 * 1024;

type Work = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send>>;

/// Before the upgrade is answered: the socket's [`Conn`], registered with the hub, when its
/// user belongs on this node (`None`: the session will point the client elsewhere).
/// Registering before the `101` means a message sent to the user once the client saw its
/// socket open reaches it (it waits in the socket's queue until the session runs): the
/// session task may start later than the client's next step.
pub fn open(state: &State, claims: &Claims) -> Option<Arc<Conn>> {
    if let Owner::Peer(_) = state.cluster.owner(&claims.sub) {
        return None;
    }
    let budget = state.limits.max_frame_bytes() + QUEUE_BUDGET;
    let conn = Arc::new(Conn::new(
        claims.sub.clone(),
        claims.dev.clone(),
        budget,
        now_ms(),
    ));
    conn.set_generation(claims.generation);
    state.presence.register(conn.clone());
    Some(conn)
}

/// The upgrade failed after [`open`]: forget the socket.
pub fn abandon(state: &State, conn: &Conn) {
    state.presence.abandon(conn);
}

/// Run a session until the socket closes, times out, or the node drains. `conn` is what
/// [`open`] registered.
pub async fn run(state: State, mut ws: Socket, claims: Claims, conn: Option<Arc<Conn>>) {
    let now = now_ms();
    // A stale assignment, a membership change or a drain brought the client here: point
    // it at the node its user belongs on.
    let conn = match (conn, state.cluster.owner(&claims.sub)) {
        (conn, Owner::Peer(member)) => {
            if let Some(conn) = conn {
                state.presence.abandon(&conn);
            }
            let frame = ServerFrame::Reconnect {
                ws_url: Some(member.ws_url),
                reason: "wrong_node".into(),
            };
            let _ = ws.send(Message::Text(frame.to_json().into())).await;
            close(&mut ws, &CloseReason::MOVED).await;
            return;
        }
        (Some(conn), Owner::Here) => conn,
        // The view changed between the upgrade and now: the user belongs here after all.
        (None, Owner::Here) => match open(&state, &claims) {
            Some(conn) => conn,
            None => return,
        },
    };
    state.metrics.connections.inc();
    tracing::debug!(user_id = %conn.user_id, device_id = %conn.device_id, "socket open");

    match state.presence.connected(&conn, now).await {
        Ok(()) => {
            Session {
                state: state.clone(),
                conn: conn.clone(),
                claims,
            }
            .run(&mut ws)
            .await
        }
        Err(e) => {
            let frame = ServerFrame::error(e, None, None).to_json();
            let _ = ws.send(Message::Text(frame.into())).await;
            close(&mut ws, &CloseReason::NOT_REGISTERED).await;
        }
    }

    if let Err(e) = state.presence.disconnected(&conn).await {
        tracing::warn!(user_id = %conn.user_id, error = %e.message, "could not record a disconnect");
    }
    state.metrics.connections.dec();
    tracing::debug!(user_id = %conn.user_id, device_id = %conn.device_id, "socket closed");
}

/// Send a close frame and wait (bounded) for it to go out. The wait is long enough for a
/// slow consumer that resumes reading to reach the close frame behind what it had queued;
/// meanwhile the socket holds at most tungstenite's small write buffer.
async fn close(ws: &mut Socket, reason: &CloseReason) {
    close_with(ws, reason.code, reason.reason).await;
}

/// [`close`] with a reason text made for the occasion.
async fn close_with(ws: &mut Socket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), ws.close(Some(frame))).await;
}

struct Session {
    state: State,
    conn: Arc<Conn>,
    claims: Claims,
}

impl Session {
    async fn run(self, ws: &mut Socket) {
        let heartbeat = self.state.limits.heartbeat_timeout;
        let mut deadline = Instant::now() + heartbeat;
        let mut work: FuturesUnordered<Work> = FuturesUnordered::new();
        let mut outgoing = Vec::new();
        let shutdown = self.state.shutdown.clone();
        // On shutdown each socket picks its moment within the drain window, so that the
        // clients of a draining node come back elsewhere spread out, not all at once.
        let mut drain_at: Option<Instant> = None;
        let mut draining = false;

        loop {
            // While the socket is not read (its in-flight work is full: the node, not the
            // client, is slow), silence is not the client's: hold the heartbeat deadline.
            if work.len() >= MAX_IN_FLIGHT {
                deadline = Instant::now() + heartbeat;
            }
            if draining && work.is_empty() {
                // Everything this socket asked for is answered: now point it elsewhere.
                let ws_url = match self.state.cluster.owner(&self.claims.sub) {
                    Owner::Peer(member) => Some(member.ws_url),
                    Owner::Here => None,
                };
                self.conn
                    .redirect(ws_url, "draining", CloseReason::DRAINING);
            }
            tokio::select! {
                () = shutdown.cancelled(), if drain_at.is_none() => {
                    let window = Duration::from_secs(self.state.config.drain_seconds);
                    drain_at = Some(Instant::now() + window.mul_f64(rand::random::<f64>()));
                }
                () = tokio::time::sleep_until(drain_at.unwrap_or_else(Instant::now)), if drain_at.is_some() && !draining => {
                    draining = true;
                }
                () = self.conn.ready() => {
                    let close_reason = self.conn.take(&mut outgoing);
                    let mut failed = false;
                    let mut unflushed = 0;
                    for frame in outgoing.drain(..) {
                        unflushed += frame.len();
                        if ws.feed(Message::Text(frame)).await.is_err() {
                            failed = true;
                            break;
                        }
                        // Flush as we go, so tungstenite never buffers more than ~64 KiB
                        // beyond one frame: a socket that cannot take more holds us here
                        // (and the queue in `Conn` bounds the rest).
                        if unflushed > FLUSH_EVERY {
                            unflushed = 0;
                            if ws.flush().await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failed || ws.flush().await.is_err() {
                        return;
                    }
                    if let Some(reason) = close_reason {
                        if reason == CloseReason::SLOW_CONSUMER {
                            self.state.metrics.slow_consumers.inc();
                        }
                        close(ws, &reason).await;
                        return;
                    }
                }
                Some(reply) = work.next(), if !work.is_empty() => {
                    if let Some(frame) = reply {
                        self.conn.push(Utf8Bytes::from(frame.to_json()));
                    }
                }
                message = ws.next(), if !draining && work.len() < MAX_IN_FLIGHT => {
                    let message = match message {
                        None => return,
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            read_error(ws, e, self.state.limits.max_frame_bytes()).await;
                            return;
                        }
                    };
                    deadline = Instant::now() + heartbeat;
                    self.conn.touch(now_ms());
                    match message {
                        Message::Text(text) => {
                            if let Some(w) = self.handle(&text) {
                                work.push(w);
                            }
                        }
                        Message::Binary(_) => {
                            close(ws, &CloseReason::BINARY).await;
                            return;
                        }
                        // tungstenite queued the pong (or the close reply): write it out.
                        Message::Ping(_) | Message::Close(_) => {
                            if ws.flush().await.is_err() {
                                return;
                            }
                        }
                        Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    close(ws, &CloseReason::HEARTBEAT_TIMEOUT).await;
                    return;
                }
            }
        }
    }

    /// Decode one text frame and return the work it asks for (its answer, if any, is queued
    /// when the work completes). Decoding errors are answered at once.
    fn handle(&self, text: &str) -> Option<Work> {
        let Inbound {
            req,
            client_msg_id,
            frame,
        } = match Inbound::decode(text) {
            Ok(inbound) => inbound,
            Err(e) => {
                self.conn.push(Utf8Bytes::from(
                    ServerFrame::error(e.error, e.client_msg_id, e.req).to_json(),
                ));
                return None;
            }
        };
        let state = self.state.clone();
        let user = self.claims.sub.clone();
        let device = self.claims.dev.clone();
        let cmid = client_msg_id.clone();
        let failed =
            move |e: ApiError, req: Option<String>| Some(ServerFrame::error(e, cmid.clone(), req));
        match frame {
            ClientFrame::Send(send) => Some(Box::pin(async move {
                if let Err(e) = state.limiters.check_send(&user) {
                    return failed(e, req);
                }
                match state.chat.send(&user, &device, send).await {
                    Ok(ack) => Some(ServerFrame::Ack { ack, req }),
                    Err(e) => failed(e, req),
                }
            })),
            ClientFrame::Sync { after, limit } => Some(Box::pin(async move {
                match state.chat.sync(&user, after, limit).await {
                    Ok((items, more)) => Some(ServerFrame::Sync { items, more, req }),
                    Err(e) => failed(e, req),
                }
            })),
            ClientFrame::Cursor { inbox_id } => Some(Box::pin(async move {
                state
                    .chat
                    .set_cursor(&user, &device, inbox_id)
                    .await
                    .err()
                    .and_then(|e| failed(e, req))
            })),
            ClientFrame::Typing { channel } => Some(Box::pin(async move {
                state
                    .chat
                    .typing(&user, &channel)
                    .await
                    .err()
                    .and_then(|e| failed(e, req))
            })),
            // A marker moved has no answer (every member's devices hear of it).
            ClientFrame::Read { channel, seq } => Some(Box::pin(async move {
                state
                    .chat
                    .mark_read(&user, &channel, seq)
                    .await
                    .err()
                    .and_then(|e| failed(e, req))
            })),
            ClientFrame::Heartbeat => None,
            ClientFrame::Unknown { kind } => {
                let e = ApiError::bad_request(format!(
                    "unknown frame type {kind:?}; known types: send, edit, delete, react, read, sync, cursor, heartbeat, typing"
                ));
                self.conn.push(Utf8Bytes::from(
                    ServerFrame::error(e, client_msg_id, req).to_json(),
                ));
                None
            }
        }
    }
}

/// Close the socket with the code the contract gives for a read error.
async fn read_error(ws: &mut Socket, error: WsError, max_frame: usize) {
    match error {
        WsError::Utf8(_) => close(ws, &CloseReason::INVALID_UTF8).await,
        WsError::Capacity(_) => {
            close_with(
                ws,
                CloseReason::TOO_LARGE,
                &format!("frame too large: the limit is {max_frame} bytes"),
            )
            .await;
        }
        WsError::Protocol(e) => {
            close_with(
                ws,
                CloseReason::PROTOCOL_ERROR,
                &format!("websocket protocol error: {e}"),
            )
            .await;
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => {}
        other => tracing::debug!(error = %other, "websocket read failed"),
    }
}
