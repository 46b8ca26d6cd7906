//! Serving a warp filter over TLS: the internal (node-to-node) listener, which requires a
//! client certificate, and the client-facing listener when `--tls-cert-file` is given.
//! (Plain HTTP on the client port stays on warp's own server.)
//!
//! Each accepted connection does its handshake in its own task, bounded by
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent peer never holds up the accept loop. A refused
//! handshake (plain HTTP, no certificate, another CA, another cluster) closes the
//! connection before any request is read, and is counted. The node a client certificate
//! names reaches the routes as a [`PeerNode`] request extension.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::Filter;
use warp::reply::Response;

use crate::cluster::transport::{PeerNode, Transport};

/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused handshakes are logged at most this often per listener (all are counted): a
/// scanner must not flood the log.
const LOG_REFUSALS_EVERY: Duration = Duration::from_secs(10);

/// Whether a refusal may be logged now (at most once per [`LOG_REFUSALS_EVERY`]).
fn may_log(last: &AtomicU64, started: Instant) -> bool {
    let now = started.elapsed().as_secs();
    let prev = last.load(Ordering::Relaxed);
    (prev == 0 || now >= prev + LOG_REFUSALS_EVERY.as_secs())
        && last
            .compare_exchange(prev, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// A bound listener and how to secure it.
pub struct TlsListener {
    pub tcp: TcpListener,
    pub config: Arc<rustls::ServerConfig>,
    /// Names the peer node from its certificate (the internal listener only).
    pub identify: Option<Arc<Transport>>,
    /// Counts refused handshakes.
    pub refused: Counter,
    /// `internal` or `client`, for logs.
    pub name: &'static str,
    /// The client port's HTTP deadlines (`crate::http_server::Guarded`), its metrics; with
    /// it, requests also carry the TCP peer and the upgrade handle.
    pub guard: Option<(crate::http_server::Deadlines, Arc<crate::metrics::Metrics>)>,
}

/// Serve `filter` on `listener` until `shutdown`, then let open connections finish.
pub async fn serve<F>(listener: TlsListener, filter: F, shutdown: CancellationToken)
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let TlsListener {
        tcp,
        config,
        identify,
        refused,
        name,
        guard,
    } = listener;
    let acceptor = TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    let started = Instant::now();
    let last_logged = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, remote) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, never spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let identify = identify.clone();
        let refused = refused.clone();
        let last_logged = last_logged.clone();
        let svc = warp::service(filter.clone());
        let watcher = graceful.watcher();
        let guard = guard.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    refused.inc();
                    if may_log(&last_logged, started) {
                        tracing::info!(listener = name, peer = %remote, error = %e, "refused a TLS handshake (further refusals within 10 s are only counted: parley_tls_handshakes_refused_total)");
                    }
                    return;
                }
                Err(_) => {
                    refused.inc();
                    if may_log(&last_logged, started) {
                        tracing::info!(listener = name, peer = %remote, "a TLS handshake did not finish in time");
                    }
                    return;
                }
            };
            let peer: Option<PeerNode> = identify
                .as_ref()
                .and_then(|t| t.peer_node(tls.get_ref().1.peer_certificates()));
            // Without a guard (the internal listener) no deadline is armed: a pass-through.
            let guarded = match guard {
                Some((deadlines, metrics)) => {
                    crate::http_server::Guarded::new(tls, deadlines, metrics)
                }
                None => crate::http_server::Guarded::passthrough(tls),
            };
            let control = guarded.control();
            let client = name == "client";
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    if client {
                        req.extensions_mut()
                            .insert(crate::http_server::PeerAddr(remote));
                        req.extensions_mut().insert(control.clone());
                    }
                    let mut svc = svc.clone();
                    svc.call(req)
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, peer = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(tcp);
    graceful.shutdown().await;
}
