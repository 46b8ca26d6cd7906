//! One WebSocket session: a single task that reads frames, runs their work (bounded in
//! number), and writes what is queued for the socket. While the socket is idle it waits on
//! two things only (the socket readable, something queued) and holds no buffer: the
//! heartbeat timeout is one sweep over every socket ([`crate::hub::Hub::silent_since`]), a
//! drain and a close arrive through the socket's queue ([`crate::hub::Conn`]).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::State;
use super::frame::{self, FrameError, Incoming, Opcode};
use super::socket::{Socket, Stream};
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

/// Frames are taken from the socket's queue (and the client's frames read) while less than
/// this waits for the kernel.
const WRITE_AHEAD: usize = 64 * 1024;

/// A client must take what the node writes within this long, else it is closed as a slow
/// consumer (1008) and goes offline for its contacts at once (docs/operations.md).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a close frame may take to go out.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// A frame's work, answering with its reply frame encoded (a `ServerFrame` is large: held
/// encoded, it does not grow every session's state).
type Work = Pin<Box<dyn Future<Output = Option<Utf8Bytes>> + Send>>;

fn work(answer: impl Future<Output = Option<ServerFrame>> + Send + 'static) -> Work {
    Box::pin(async move { answer.await.map(|frame| frame.to_json().into()) })
}

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
///
/// An `async move` block rather than an `async fn`, here and in [`Session::run`]: an
/// `async fn` keeps its arguments twice in its state (as passed, and moved into the body),
/// and this state is held by every idle socket. For the same reason the set-up's rare
/// paths are boxed, so that the long-lived state holds none of theirs.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
pub fn run<S: Stream>(
    state: State,
    mut socket: Socket<S>,
    claims: Claims,
    conn: Option<Arc<Conn>>,
) -> impl Future<Output = ()> + Send {
    async move {
        // A stale assignment, a membership change or a drain brought the client here: point
        // it at the node its user belongs on.
        let owner = Box::pin(settled_owner(&state, &claims.sub)).await;
        let now = now_ms();
        let conn = match (conn, owner) {
            (conn, Owner::Peer(member)) => {
                if let Some(conn) = conn {
                    state.presence.abandon(&conn);
                }
                Box::pin(send_elsewhere(&mut socket, member.ws_url)).await;
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

        match Box::pin(state.presence.connected(&conn, now)).await {
            Ok(()) => {
                let end = Session {
                    state: state.clone(),
                    conn: conn.clone(),
                    claims,
                    work: None,
                    pongs: Vec::new(),
                }
                .run(&mut socket)
                .await;
                if let End::Close(code, reason) = end {
                    close_with(&mut socket, code, &reason).await;
                }
            }
            Err(e) => {
                let frame = ServerFrame::error(e, None, None).to_json();
                socket.queue_text(frame.into());
                Box::pin(close(&mut socket, &CloseReason::NOT_REGISTERED)).await;
            }
        }

        if let Err(e) = Box::pin(state.presence.disconnected(&conn)).await {
            tracing::warn!(user_id = %conn.user_id, error = %e.message, "could not record a disconnect");
        }
        state.metrics.connections.dec();
        tracing::debug!(user_id = %conn.user_id, device_id = %conn.device_id, "socket closed");
    }
}

/// Point a client whose user belongs on another node there (`reconnect`, then close).
async fn send_elsewhere<S: Stream>(socket: &mut Socket<S>, ws_url: String) {
    let frame = ServerFrame::Reconnect {
        ws_url: Some(ws_url),
        reason: "wrong_node".into(),
    };
    socket.queue_text(frame.to_json().into());
    close(socket, &CloseReason::MOVED).await;
}

/// How long a session waits for this node's view of the cluster to change before it points
/// a client that belongs elsewhere away.
const SETTLE: Duration = Duration::from_millis(500);

/// The node the user belongs on. When that is another node, wait (up to [`SETTLE`]) for a
/// change of this node's view first: another node that just moved the client here may have
/// seen a membership change (a join, an end of drain) this one has not yet, and sending the
/// client back would bounce it.
async fn settled_owner(state: &State, user: &str) -> Owner {
    let mut changes = state.cluster.subscribe();
    let owner = state.cluster.owner(user);
    if matches!(owner, Owner::Here) || !state.cluster.is_clustered() {
        return owner;
    }
    let until = Instant::now() + SETTLE;
    while tokio::time::timeout_at(until, changes.changed())
        .await
        .is_ok_and(|r| r.is_ok())
    {
        if let Owner::Here = state.cluster.owner(user) {
            return Owner::Here;
        }
    }
    state.cluster.owner(user)
}

/// Send a close frame behind what is queued, and wait (bounded) for it to go out. The wait
/// is long enough for a slow consumer that resumes reading to reach the close frame.
async fn close<S: Stream>(socket: &mut Socket<S>, reason: &CloseReason) {
    close_with(socket, reason.code, reason.reason).await;
}

/// [`close`] with a reason text made for the occasion.
async fn close_with<S: Stream>(socket: &mut Socket<S>, code: u16, reason: &str) {
    socket.queue_frame(frame::close(code, reason));
    let _ = socket.finish(CLOSE_WITHIN).await;
}

struct Session {
    state: State,
    conn: Arc<Conn>,
    claims: Claims,
    /// The frames being worked on; allocated only while there are some.
    work: Option<FuturesUnordered<Work>>,
    /// Pongs to write, in the order of the pings.
    pongs: Vec<bytes::Bytes>,
}

/// How a session ends.
enum End {
    /// Send a close frame with this code and reason (behind what is queued).
    Close(u16, Cow<'static, str>),
    /// The connection is gone or broke: nothing more to send.
    Gone,
}

impl From<CloseReason> for End {
    fn from(reason: CloseReason) -> Self {
        Self::Close(reason.code, Cow::Borrowed(reason.reason))
    }
}

impl Session {
    fn in_flight(&self) -> usize {
        self.work.as_ref().map_or(0, FuturesUnordered::len)
    }

    /// Serve the socket until it must close; the caller sends the close frame.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold `self` twice"
    )]
    fn run<S: Stream>(mut self, socket: &mut Socket<S>) -> impl Future<Output = End> + Send + '_ {
        async move {
            let mut outgoing: Vec<Utf8Bytes> = Vec::new();
            // Since when the socket has had bytes waiting that the kernel would not take.
            let mut stalled_since: Option<Instant> = None;
            if self.state.shutdown.is_cancelled() {
                // The node began draining before this session ran.
                self.conn.drain();
            }
            if socket.has_arrived() {
                // What the HTTP server had read past the upgrade request.
                let result = socket.parse(|m| self.incoming(m));
                if let Some(end) = self.after_parse(result) {
                    return end;
                }
            }
            loop {
                let full = self.in_flight() >= MAX_IN_FLIGHT;
                self.conn.set_paused(full);
                let draining = self.conn.drain_requested();
                if draining && self.in_flight() == 0 {
                    // Everything this socket asked for is answered: now point it elsewhere.
                    let ws_url = match self.state.cluster.owner(&self.claims.sub) {
                        Owner::Peer(member) => Some(member.ws_url),
                        Owner::Here => None,
                    };
                    self.conn
                        .redirect(ws_url, "draining", CloseReason::DRAINING);
                }
                let backlog = socket.pending() >= WRITE_AHEAD;
                let reading = !full && !draining && !backlog;
                let deadline = stalled_since.map(|t| t + WRITE_DEADLINE);
                tokio::select! {
                    biased;
                    () = self.conn.ready(), if !backlog => {
                        let close_reason = self.conn.take(&mut outgoing);
                        for frame in outgoing.drain(..) {
                            socket.queue_text(frame.into());
                        }
                        if let Some(reason) = close_reason {
                            if reason == CloseReason::SLOW_CONSUMER {
                                self.state.metrics.slow_consumers.inc();
                            }
                            return reason.into();
                        }
                        if write_now(socket, &mut stalled_since).is_err() {
                            return End::Gone;
                        }
                    }
                    () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                        self.state.metrics.slow_consumers.inc();
                        return CloseReason::SLOW_CONSUMER.into();
                    }
                    Some(reply) = next_reply(&mut self.work), if self.in_flight() > 0 => {
                        if self.in_flight() == 0 {
                            self.work = None;
                        }
                        if let Some(frame) = reply {
                            self.conn.push(frame);
                        }
                        if full {
                            // Room again: go on with what the paused read kept.
                            let result = socket.resume(|m| self.incoming(m));
                            if let Some(end) = self.after_parse(result) {
                                return end;
                            }
                        }
                    }
                    progress = socket.progress(reading) => {
                        let Ok(progress) = progress else {
                            return End::Gone;
                        };
                        if progress.wrote {
                            // The kernel took some: the write deadline starts over.
                            stalled_since = (socket.pending() > 0).then(Instant::now);
                        }
                        if progress.read {
                            let result = socket.parse(|m| self.incoming(m));
                            for pong in self.pongs.drain(..) {
                                socket.queue_frame(pong);
                            }
                            if let Some(end) = self.after_parse(result) {
                                return end;
                            }
                            if socket.pending() > 0 && write_now(socket, &mut stalled_since).is_err() {
                                return End::Gone;
                            }
                        }
                        if progress.eof {
                            return End::Gone;
                        }
                    }
                }
            }
        }
    }

    /// What a parse's result asks for.
    fn after_parse(&self, result: Result<bool, FrameError>) -> Option<End> {
        match result {
            Ok(_paused) => None,
            Err(FrameError::TooLarge) => Some(End::Close(
                CloseReason::TOO_LARGE,
                format!(
                    "frame too large: the limit is {} bytes",
                    self.state.limits.max_frame_bytes()
                )
                .into(),
            )),
            Err(FrameError::Protocol(why)) => Some(End::Close(
                CloseReason::PROTOCOL_ERROR,
                format!("websocket protocol error: {why}").into(),
            )),
        }
    }

    /// Handle one message from the client. Returns false to stop reading for now (the
    /// in-flight work is full, or the socket closes).
    fn incoming(&mut self, message: Incoming) -> bool {
        self.conn.touch(now_ms());
        match message {
            Incoming::Text(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    if let Some(w) = self.handle(&text) {
                        self.work.get_or_insert_with(FuturesUnordered::new).push(w);
                    }
                }
                Err(_) => {
                    self.conn.close(CloseReason::INVALID_UTF8);
                    return false;
                }
            },
            Incoming::Binary => {
                self.conn.close(CloseReason::BINARY);
                return false;
            }
            Incoming::Ping(payload) => {
                // A pong goes out like any frame, in order.
                self.pongs.push(frame::control(Opcode::Pong, &payload));
            }
            Incoming::Pong => {}
            Incoming::Close(code) => {
                self.conn.close(CloseReason {
                    code: echoed_close_code(code),
                    reason: "closing as the client asked",
                });
                return false;
            }
        }
        self.in_flight() < MAX_IN_FLIGHT
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
                self.conn.push(
                    ServerFrame::error(e.error, e.client_msg_id, e.req)
                        .to_json()
                        .into(),
                );
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
            ClientFrame::Send(send) => Some(work(async move {
                if let Err(e) = state.limiters.check_send(&user) {
                    return failed(e, req);
                }
                match state.chat.send(&user, &device, send).await {
                    Ok(ack) => Some(ServerFrame::Ack { ack, req }),
                    Err(e) => failed(e, req),
                }
            })),
            ClientFrame::Sync { after, limit } => Some(work(async move {
                match state.chat.sync(&user, after, limit).await {
                    Ok((items, more)) => Some(ServerFrame::Sync { items, more, req }),
                    Err(e) => failed(e, req),
                }
            })),
            ClientFrame::Cursor { inbox_id } => Some(work(async move {
                state
                    .chat
                    .set_cursor(&user, &device, inbox_id)
                    .await
                    .err()
                    .and_then(|e| failed(e, req))
            })),
            ClientFrame::Typing { channel } => Some(work(async move {
                state
                    .chat
                    .typing(&user, &channel)
                    .await
                    .err()
                    .and_then(|e| failed(e, req))
            })),
            // A marker moved has no answer (every member's devices hear of it).
            ClientFrame::Read { channel, seq } => Some(work(async move {
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
                self.conn
                    .push(ServerFrame::error(e, client_msg_id, req).to_json().into());
                None
            }
        }
    }
}

/// Write what the kernel takes now; the write deadline runs from the first moment bytes
/// were left waiting, and stops once nothing waits.
fn write_now<S: Stream>(
    socket: &mut Socket<S>,
    stalled_since: &mut Option<Instant>,
) -> std::io::Result<()> {
    socket.write_now()?;
    if socket.pending() == 0 {
        *stalled_since = None;
    } else {
        stalled_since.get_or_insert_with(Instant::now);
    }
    Ok(())
}

/// The next answer of the in-flight work.
async fn next_reply(work: &mut Option<FuturesUnordered<Work>>) -> Option<Option<Utf8Bytes>> {
    match work {
        Some(work) => work.next().await,
        None => std::future::pending().await,
    }
}

/// The code a client's close is answered with: its own when it may be sent (RFC 6455,
/// 7.4), else 1000.
fn echoed_close_code(code: Option<u16>) -> u16 {
    code.filter(|c| matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999))
        .unwrap_or(1000)
}
