//! Start-up (build the [`AppState`] from the configuration) and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::TlsListener;

use crate::accounts::{Accounts, UserHomes};
use crate::auth::{TokenKeys, load_or_create_secret, read_secret_file};
use crate::chat::Chat;
use crate::cluster::link::Links;
use crate::cluster::membership::Membership;
use crate::cluster::rebalance::Rebalancer;
use crate::cluster::transport::{Transport, TransportError};
use crate::cluster::trust::Trust;
use crate::cluster::{Cluster, Settings};
use crate::config::{Config, StoreKind};
use crate::http_server::Deadlines;
use crate::hub::Hub;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::push::{NodeAudience, Push};
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::store::embedded::Embedded;
use crate::store::etcd::EtcdKv;
use crate::store::tikv::TikvKv;
use crate::store::writer::{Writer, WriterConfig, WriterHooks};
use crate::store::{ChatStore, Kv};
use crate::tls::TlsError;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Secret(String),
    #[error(transparent)]
    Push(#[from] crate::push::PushError),
    #[error("cannot listen on {addr}: {source}; pick a free address with --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for node-to-node traffic: {source}; pick a free address with --internal-listen"
    )]
    InternalListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("client TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("node-to-node mutual TLS: {0}")]
    Transport(#[from] TransportError),
    #[error("etcd connection settings: {0}")]
    Etcd(#[from] parley_etcd_connect::Error),
}

/// A started node: its address, and the future that serves until shutdown.
pub struct Node {
    pub addr: SocketAddr,
    /// The internal (node-to-node) listener's address, in cluster mode.
    pub internal_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    listener: TcpListener,
    internal: Option<TcpListener>,
    /// TLS of the client port (`--tls-cert-file`).
    client_tls: Option<Arc<rustls::ServerConfig>>,
}

/// The key prefix of a cluster's history in a shared store (etcd, TiKV): `/parley-store/<cluster>/`.
fn store_prefix(config: &Config) -> String {
    format!("/parley-store/{}/", config.cluster)
}

/// Open the store, bind the port, and build the state. Serve with [`Node::serve`].
pub async fn start(config: Config) -> Result<Node, StartError> {
    config.validate()?;
    if config.security.insecure_cluster {
        for part in config
            .security
            .plain_text_parts(config.is_clustered(), config.store)
        {
            tracing::warn!(
                "INSECURE CLUSTER (--insecure-cluster): {part}. Anyone who reaches these ports can read and forge cluster traffic; never run this in production"
            );
        }
    }
    let metrics = Arc::new(Metrics::new());
    let kv: Arc<dyn Kv> = match config.store {
        StoreKind::Embedded => {
            if config.is_clustered() {
                tracing::warn!(
                    "--store embedded with --etcd: this node keeps its own history, so run a single node (use --store etcd or tikv for several)"
                );
            }
            Arc::new(Embedded::open(&config.data_dir)?)
        }
        // Both connect with bounded calls and check that the store answers; their errors
        // name the endpoints.
        StoreKind::Etcd => {
            if config.max_group_members > 500 {
                tracing::warn!(
                    max_group_members = config.max_group_members,
                    "a send to a group this large is a transaction of about 2 operations per member: give etcd a --max-txn-ops of at least {}",
                    3 * config.max_group_members + 16
                );
            }
            let etcd = config.security.etcd_files().load(&config.etcd)?;
            Arc::new(EtcdKv::connect_with(&etcd, &store_prefix(&config)).await?)
        }
        StoreKind::Tikv => Arc::new(
            TikvKv::connect_with(
                &config.tikv_pd,
                &store_prefix(&config),
                config.security.tikv_files().as_ref(),
            )
            .await?,
        ),
    };
    let errors = metrics.store_errors.clone();
    let conflicts = metrics.store_conflicts.clone();
    let store = ChatStore::new(kv)
        .with_error_hook(move || {
            errors.inc();
        })
        .with_conflict_hook(move || {
            conflicts.inc();
        });
    let secret = match &config.token_secret_file {
        Some(path) => read_secret_file(path),
        None => load_or_create_secret(&config.data_dir),
    }
    .map_err(StartError::Secret)?;

    let listener = bind(config.listen).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let client_tls = match (
        &config.security.tls_cert_file,
        &config.security.tls_key_file,
    ) {
        (Some(cert), Some(key)) => Some(crate::tls::client_server_config(cert, key)?),
        _ => None,
    };
    let node_id = config.node_id();
    let transport = Arc::new(match config.security.transport_files() {
        Some(files) if config.is_clustered() => {
            Transport::mutual_tls(&config.cluster, &node_id, &files)?
        }
        _ => Transport::insecure(&config.cluster, &node_id),
    });
    let (internal, internal_addr) = if config.is_clustered() {
        let at = config.security.internal_listen(config.listen)?;
        let bound = |source| StartError::InternalListen { addr: at, source };
        let listener = bind(at).map_err(bound)?;
        let local = listener.local_addr().map_err(bound)?;
        (Some(listener), Some(local))
    } else {
        (None, None)
    };
    let internal_url = internal_addr.map(|a| {
        config
            .security
            .internal_advertise_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| default_internal_url(&config, transport.scheme(), a))
    });

    let limits = config.limits();
    let hub = Arc::new(Hub::new());
    let cluster = Arc::new(Cluster::new(Settings {
        node_id,
        cluster: config.cluster.clone(),
        advertise_url: config.advertise_url.clone(),
        listen: addr,
        capacity: config.capacity as u64,
        zone: config.zone.clone(),
        region: config.region.clone(),
        clustered: config.is_clustered(),
        internal_url,
        client_tls: client_tls.is_some(),
        require_proof: transport.is_secure(),
    }));
    let links = Arc::new(Links::new(
        cluster.clone(),
        hub.clone(),
        metrics.clone(),
        transport,
    ));
    let presence = Arc::new(Presence::new(
        store.clone(),
        hub.clone(),
        links.clone(),
        metrics.clone(),
    ));
    let push = Push::from_config(
        &config.push,
        store.clone(),
        Arc::new(NodeAudience::new(presence.clone(), cluster.clone())),
        metrics.clone(),
    )?;
    // One writer per node. In a cluster it owns what the membership view says, and writes
    // under its fence (store::writer::fence).
    let writer = if config.is_clustered() {
        Writer::spawn_clustered(
            store.kv().clone(),
            WriterConfig::default(),
            write_hooks(&metrics),
            cluster.clone(),
        )
    } else {
        Writer::spawn(
            store.kv().clone(),
            WriterConfig::default(),
            write_hooks(&metrics),
        )
    };
    let chat = Chat::new(
        store.clone(),
        writer,
        hub.clone(),
        links.clone(),
        presence.clone(),
        metrics.clone(),
        limits.clone(),
    )
    .with_push(push.clone());
    let limiters = Arc::new(Limiters::new(config.abuse.clone(), metrics.clone()));
    let sessions = Arc::new(Sessions::new(store.clone(), hub.clone(), metrics.clone()));
    let accounts = Accounts::new(
        store.clone(),
        TokenKeys::new(&secret),
        presence.clone(),
        limiters.clone(),
        sessions.clone(),
        metrics.clone(),
        config.region.clone(),
    );
    cluster.set_directory(Arc::new(UserHomes(store.clone())));
    let state = Arc::new(AppState {
        config,
        limits,
        store,
        hub,
        presence,
        chat,
        accounts,
        limiters,
        revocation: sessions,
        metrics,
        cluster,
        links,
        push,
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        ready: Default::default(),
    });
    Ok(Node {
        addr,
        internal_addr,
        state,
        listener,
        internal,
        client_tls,
    })
}

/// The write path's counts, into the node's metrics.
fn write_hooks(metrics: &Arc<Metrics>) -> WriterHooks {
    let (shed, batches, ops, seconds) = (
        metrics.write.shed.clone(),
        metrics.write.batches.clone(),
        metrics.write.batch_ops.clone(),
        metrics.write.batch_seconds.clone(),
    );
    WriterHooks {
        on_shed: Some(Arc::new(move || {
            shed.inc();
        })),
        on_batch: Some(Arc::new(move |n, _writes, took| {
            batches.inc();
            ops.observe(n as f64);
            seconds.observe(took.as_secs_f64());
        })),
    }
}

/// This node's internal URL when `--internal-advertise-url` is not given: the host of
/// `--advertise-url` (else of the listen address) with the internal listener's port.
fn default_internal_url(config: &Config, scheme: &str, internal: SocketAddr) -> String {
    let host = config
        .advertise_url
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| match internal.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    format!("{scheme}://{host}:{}", internal.port())
}

/// Listen with a deep accept backlog, so a reconnect storm is queued, not refused. The kernel
/// caps it at `net.core.somaxconn` (4096 on many systems): raise that on chat-node machines
/// (docs/operations.md), or connects past it wait for a SYN retry (1 s, then 3 s, 7 s).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(65_535)
}

/// How a node stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Asked to (SIGTERM): drained and exited cleanly.
    Clean,
    /// It could not go on (a poisoned store): drained what it could; exit non-zero so that
    /// it is restarted.
    Fatal(String),
}

/// Watch the store's health: a poisoned store (a failed fsync: the embedded engine refuses
/// writes from then on) stops the node, which exits non-zero so that it is restarted.
async fn watch_store(state: Arc<AppState>, fatal: Arc<std::sync::OnceLock<String>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        if let Ok(Err(crate::store::StoreError::Poisoned(reason))) =
            tokio::time::timeout(Duration::from_secs(2), state.store.kv().ping()).await
        {
            tracing::error!(%reason, "the store is poisoned: stopping so that the node is restarted");
            let _ = fatal.set(reason);
            state.shutdown.cancel();
            return;
        }
    }
}

/// Close every socket whose device sent nothing for the heartbeat timeout: one sweep over
/// all sockets (ten a timeout, at most one a second) instead of a timer per socket.
async fn heartbeat_sweep(state: Arc<AppState>, stop: CancellationToken) {
    let timeout = state.limits.heartbeat_timeout;
    let every = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let oldest = crate::now_ms() - timeout.as_millis() as i64;
        for conn in state.hub.silent_since(oldest) {
            conn.close(crate::protocol::CloseReason::HEARTBEAT_TIMEOUT);
        }
    }
}

/// On shutdown, tell every socket to move, each at its own moment within the drain window,
/// so that a draining node's clients come back elsewhere spread out, not all at once. Each
/// session answers its in-flight work first. (A session that starts after this sees the
/// shutdown itself.)
async fn drain_on_shutdown(state: Arc<AppState>) {
    state.shutdown.cancelled().await;
    let mut conns = state.hub.all();
    rand::seq::SliceRandom::shuffle(conns.as_mut_slice(), &mut rand::rng());
    let window = Duration::from_secs(state.config.drain_seconds);
    let pause = window / conns.len().max(1) as u32;
    for conn in conns {
        conn.drain();
        tokio::time::sleep(pause).await;
    }
}

impl Node {
    /// Serve until `signal` resolves, then drain: stop accepting, answer in-flight work,
    /// send `reconnect` to every client, wait for sessions (bounded), make the store durable.
    pub async fn serve(self, signal: impl Future<Output = ()> + Send + 'static) -> Stopped {
        let state = self.state;
        let shutdown = state.shutdown.clone();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutdown requested: draining");
            trigger.cancel();
        });
        let push_worker = state.push.as_ref().map(|p| p.spawn(shutdown.clone()));
        let routes = crate::api::filter(state.clone());
        let deadlines = Deadlines {
            header: state.config.abuse.header_timeout(),
            idle: state.config.abuse.idle_timeout(),
        };
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let server: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match self.client_tls {
            Some(config) => Box::pin(crate::listener::serve(
                TlsListener {
                    tcp: self.listener,
                    config,
                    identify: None,
                    refused: state.metrics.tls_handshakes_refused.clone(),
                    name: "client",
                    guard: Some((deadlines, state.metrics.clone())),
                },
                routes,
                shutdown.clone(),
            )),
            // Plain HTTP: our own server with the header/idle deadlines (warp's has none).
            None => Box::pin(crate::http_server::serve(
                self.listener,
                warp::service(routes),
                deadlines,
                state.metrics.clone(),
                shutdown.clone(),
                Duration::from_secs(5),
            )),
        };
        // Node-to-node traffic outlives the client port during a drain (peers still deliver
        // to the sessions this node is handing over); it stops once the sessions are done.
        let internal_stop = CancellationToken::new();
        let internal_server = self.internal.map(|listener| {
            let routes = crate::api::internal_filter(state.clone());
            let stop = internal_stop.clone();
            let transport = state.links.transport().clone();
            match transport.server_config() {
                Some(config) => tokio::spawn(crate::listener::serve(
                    TlsListener {
                        tcp: listener,
                        config,
                        identify: Some(transport),
                        refused: state.metrics.tls_handshakes_refused.clone(),
                        name: "internal",
                        guard: None,
                    },
                    routes,
                    stop,
                )),
                None => tokio::spawn(
                    warp::serve(routes)
                        .incoming(listener)
                        .graceful(stop.cancelled_owned())
                        .run(),
                ),
            }
        });
        if state.cluster.requires_proof() {
            tokio::spawn(
                Trust {
                    cluster: state.cluster.clone(),
                    transport: state.links.transport().clone(),
                    metrics: state.metrics.clone(),
                    shutdown: internal_stop.clone(),
                }
                .run(),
            );
        }
        // Background upkeep: limiter keys expire; revoked sessions close on every node.
        let upkeep = CancellationToken::new();
        let fatal = Arc::new(std::sync::OnceLock::new());
        tokio::spawn(watch_store(state.clone(), fatal.clone()));
        tokio::spawn(state.limiters.clone().run_sweeper(upkeep.clone()));
        tokio::spawn(state.revocation.clone().run_watcher(upkeep.clone()));
        tokio::spawn(heartbeat_sweep(state.clone(), upkeep.clone()));
        tokio::spawn(drain_on_shutdown(state.clone()));
        let membership = state.config.is_clustered().then(|| {
            tokio::spawn(crate::cluster::placement::learn(
                state.cluster.homes().clone(),
                Arc::new(UserHomes(state.store.clone())),
                shutdown.clone(),
            ));
            tokio::spawn(
                Rebalancer {
                    cluster: state.cluster.clone(),
                    hub: state.hub.clone(),
                    links: state.links.clone(),
                    presence: state.presence.clone(),
                    metrics: state.metrics.clone(),
                    window: Duration::from_secs(state.config.drain_seconds.max(1)),
                    shutdown: shutdown.clone(),
                }
                .run(),
            );
            Membership::start(
                state.cluster.clone(),
                state.config.etcd.clone(),
                state.config.security.etcd_files(),
                state.hub.clone(),
                state.metrics.clone(),
                shutdown.clone(),
            )
        });
        state.mark_ready();
        if let Some(at) = self.internal_addr {
            let transport = state.links.transport();
            tracing::info!(
                mutual_tls = transport.is_secure(),
                "internal listener on {}://{at}",
                transport.scheme()
            );
        }
        tracing::info!(node_id = %state.cluster.node_id(), store = state.store.kv().name(), cluster = state.config.is_clustered(), "listening on {scheme}://{}", self.addr);
        server.await;

        state.sessions.close();
        let grace = Duration::from_secs(state.config.drain_seconds + 10);
        if tokio::time::timeout(grace, state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close within {grace:?}; exiting anyway");
        }
        if let Some(worker) = push_worker {
            // Ends after its current round (bounded by the push timeout); what it has not
            // sent stays in the store for the next start.
            let _ = worker.await;
        }
        if let Some(membership) = membership {
            membership.leave().await;
        }
        internal_stop.cancel();
        if let Some(internal) = internal_server {
            let _ = tokio::time::timeout(Duration::from_secs(5), internal).await;
        }
        state.chat.flush().await;
        if let Err(e) = state.store.flush_last_seen().await {
            tracing::warn!(error = %e.message, "could not write the last-seen times of the last sessions");
        }
        upkeep.cancel();
        if let Err(e) = state.store.kv().sync().await {
            tracing::error!(error = %e, "final store sync failed");
        }
        if let Err(e) = state.store.kv().close().await {
            tracing::warn!(error = %e, "could not write the store's memory out; the next start replays its journal");
        }
        match fatal.get() {
            Some(reason) => {
                tracing::error!(%reason, "stopped after a fatal store failure");
                Stopped::Fatal(reason.clone())
            }
            None => {
                tracing::info!("stopped");
                Stopped::Clean
            }
        }
    }
}
