//! # parley-bench
//!
//! A load generator for Parley chat nodes. It speaks only the public protocol
//! (PROTOCOL.md): HTTP to sign up, log in, make groups and ask `/v1/assign`, WebSockets for
//! everything else, following `reconnect` frames, so the same tool drives one node or a
//! cluster. Each scenario prints one JSON line (stdout) and a human summary (stderr).
//!
//! # Layout
//!
//! | module | role |
//! | --- | --- |
//! | [`cli`] | the command line: global flags and one subcommand per scenario |
//! | [`api`] | the HTTP side of the protocol (sign-up, login, groups, assign) |
//! | [`users`] | the pool of benchmark users, created concurrently and cached in a file |
//! | [`ws`] | dialling a WebSocket (assign, source address, handshake) and decoding frames |
//! | [`clock`] | one monotonic time base, so a timestamp in a message is read by its receiver |
//! | [`report`] | HDR latency summaries, machine facts, the JSON line and the human summary |
//! | [`procfs`] | a node's resident memory and CPU time from `/proc` |
//! | [`traffic`] | the paced send/deliver engine shared by `dm`, `group` and `mixed` |
//! | [`step`] | one step's figures (rates, latencies, CPU, held) and its summary line |
//! | [`mix`] | `mixed`'s timeline operations beside sends: edits, reactions, read markers |
//! | [`scenario`] | `idle`, `dm`, `group`, `mixed`, `storm`, `catchup` |
//! | [`floor`] | `parley-floor`: the machine's floor, a bare TCP relay and its paced driver |

pub mod api;
pub mod cli;
pub mod clock;
pub mod floor;
pub mod mix;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod step;
pub mod traffic;
pub mod users;
pub mod ws;
