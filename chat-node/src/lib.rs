//! # Parley chat node
//!
//! One binary that holds clients' WebSockets, serves the HTTP API and keeps history in an
//! ordered transactional key-value store.
//!
//! # Layout
//!
//! Three layers, each knowing only the one below:
//!
//! | layer | modules | role |
//! | --- | --- | --- |
//! | edge | [`http_server`], [`listener`], [`api`], [`gateway`] | the HTTP/1.1 server with its deadlines (TLS listeners in `listener`), HTTP routes (the client API on the client port; the node-to-node routes on the internal listener) and WebSocket sessions: parse, authorise, call a service, encode |
//! | services | [`chat`], [`accounts`], [`sessions`], [`limits`], [`presence`], [`hub`], [`cluster`], [`push`] | the behaviour: sending and delivering, sign-up and login, session revocation, limits against abuse, who is online, which node serves whom (etcd membership, rendezvous assignment) and the links between nodes, notifying offline devices |
//! | storage | [`store`] | the ordered-KV trait, its backends, and the chat data model on top |
//!
//! Beside them: [`protocol`] (the wire types and limits of PROTOCOL.md), [`auth`] (password
//! hashes and signed tokens), [`config`] (flags and `PARLEY_*` variables), [`metrics`]
//! (Prometheus), [`state`] (the shared [`state::AppState`] every request and session holds),
//! [`server`] (start-up and shutdown), [`cache`] (a bounded LRU cache that grows as it fills), [`tls`] (certificates and keys from files, reloaded
//! when they change) and [`listener`] (serving the routes over TLS: the internal listener
//! with mutual TLS, the client port with `--tls-cert-file`).

pub mod accounts;
pub mod api;
pub mod auth;
pub mod cache;
pub mod chat;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http_server;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tls;

/// Milliseconds since the Unix epoch: the protocol's `ts`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
