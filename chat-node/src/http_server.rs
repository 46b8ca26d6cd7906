//! The HTTP/1.1 server under the API: hyper's connection per accepted socket, with the
//! deadlines of PROTOCOL.md's "Limits against abuse" (a request head within
//! `--header-timeout-secs`, an idle keep-alive connection closed after
//! `--idle-timeout-secs`; the body deadline is the API's, see `api::read_body`).
//!
//! Why not `warp::serve`: it runs hyper without a timer, so no deadline applies and a few
//! thousand half-sent requests hold the node's file descriptors. hyper's own
//! `header_read_timeout` starts when the connection waits for a head, idle keep-alive
//! included, so it cannot tell "idle for 60 s" from "a head started 10 s ago". [`Guarded`]
//! watches the bytes instead: the first byte of a request starts the head deadline, the
//! blank line that ends the head stops it, and the response starts the idle deadline. A
//! socket upgraded to a WebSocket is left alone (the session has its own heartbeat).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// The TCP peer of a request (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A request's handle on its connection (a request extension): the WebSocket upgrade
/// marks it so that the HTTP deadlines stop applying.
#[derive(Debug, Clone, Default)]
pub struct ConnControl(Arc<AtomicBool>);

impl ConnControl {
    /// The connection becomes a WebSocket: no HTTP deadline applies from now on.
    pub fn upgraded(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn is_upgraded(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The HTTP deadlines; `None` turns one off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadlines {
    pub header: Option<Duration>,
    pub idle: Option<Duration>,
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (from the connection's start, or its first byte).
    Head,
    /// The head has arrived: the body (the API's deadline) and the handler run.
    Request,
    /// A response went out; waiting for the next request.
    Idle,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Head => "header",
            Self::Request => "body",
            Self::Idle => "idle",
        }
    }
}

/// A stream (TCP, or TLS over TCP) that fails its reads with `TimedOut` when its phase's
/// deadline passes.
pub struct Guarded<S = TcpStream> {
    inner: S,
    deadlines: Deadlines,
    phase: Phase,
    /// How much of `\r\n\r\n` the head has ended with so far.
    matched: u8,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    /// The waker of the last read that was left pending.
    read_waker: Option<std::task::Waker>,
    control: ConnControl,
    /// Where timeouts are counted (none: no deadlines, nothing to count).
    metrics: Option<Arc<Metrics>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// No deadline at all: the stream as it is, with the same type as a guarded one.
    pub fn passthrough(inner: S) -> Self {
        Self::with(inner, Deadlines::default(), None)
    }

    pub fn new(inner: S, deadlines: Deadlines, metrics: Arc<Metrics>) -> Self {
        Self::with(inner, deadlines, Some(metrics))
    }

    fn with(inner: S, deadlines: Deadlines, metrics: Option<Arc<Metrics>>) -> Self {
        let mut guarded = Self {
            inner,
            deadlines,
            phase: Phase::Head,
            matched: 0,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
            read_waker: None,
            control: ConnControl::default(),
            metrics,
        };
        guarded.enter(Phase::Head);
        guarded
    }

    pub fn control(&self) -> ConnControl {
        self.control.clone()
    }

    /// The stream itself, its deadlines dropped (a WebSocket taken out of the server).
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.matched = 0;
        let limit = match phase {
            Phase::Head => self.deadlines.header,
            Phase::Request => None,
            Phase::Idle => self.deadlines.idle,
        };
        self.armed = limit.is_some();
        if let Some(limit) = limit {
            self.sleep.as_mut().reset(Instant::now() + limit);
            // A read already waiting has not polled this deadline: have it poll again.
            if let Some(waker) = self.read_waker.take() {
                waker.wake();
            }
        }
    }

    /// Follow the request cycle through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.enter(Phase::Head);
        }
        if self.phase != Phase::Head {
            return;
        }
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            if b == END[self.matched as usize] {
                self.matched += 1;
                if self.matched == 4 {
                    self.enter(Phase::Request);
                    return;
                }
            } else {
                self.matched = u8::from(b == b'\r');
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.control.is_upgraded() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // A deadline armed later (by a write) must reach this read: wake it then.
                this.read_waker = Some(cx.waker().clone());
                if this.armed && this.sleep.as_mut().poll(cx).is_ready() {
                    this.armed = false;
                    if let Some(m) = &this.metrics {
                        m.http_timeout(this.phase.name());
                    }
                    tracing::debug!(
                        phase = this.phase.name(),
                        "closing a connection that ran out of time"
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the {} deadline passed", this.phase.name()),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) && !this.control.is_upgraded() {
            // A response (or part of one) went out: the connection idles until the next
            // request's first byte.
            this.enter(Phase::Idle);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) && !this.control.is_upgraded() {
            this.enter(Phase::Idle);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accept connections on `listener` and serve each with `service` until `shutdown`; then
/// stop accepting, let every connection finish the request it is answering (bounded by
/// `grace`), and return.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    deadlines: Deadlines,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    grace: Duration,
) where
    S: tower_service::Service<
            http::Request<Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let io = Guarded::new(tcp, deadlines, metrics.clone());
        let control = io.control();
        let service = service.clone();
        let handler = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut().insert(control.clone());
            let mut service = service.clone();
            service.call(req)
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                // Our own deadlines (above) replace hyper's head timer.
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(io), handler)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish within {grace:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_head_deadline_starts_with_a_request_and_ends_with_its_blank_line() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        let _client = client.await.unwrap();
        let mut g = Guarded::new(
            server,
            Deadlines {
                header: Some(Duration::from_secs(10)),
                idle: Some(Duration::from_secs(60)),
            },
            Arc::new(Metrics::new()),
        );
        assert_eq!(g.phase, Phase::Head);
        g.saw(b"GET / HTTP/1.1\r\nHost: x\r");
        assert_eq!(g.phase, Phase::Head);
        g.saw(b"\n\r\n");
        assert_eq!(
            g.phase,
            Phase::Request,
            "a head split over reads still ends"
        );
        g.enter(Phase::Idle);
        g.saw(b"G");
        assert_eq!(
            g.phase,
            Phase::Head,
            "the next request's first byte starts its head"
        );
    }
}
