//! The command line: global flags (where the nodes are, where the user cache lives) and one
//! subcommand per scenario with its own knobs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Drive Parley chat nodes over the public protocol and report what they sustain.
#[derive(Debug, Parser)]
#[command(name = "parley-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// A node's base URL; repeat or comma-separate for a cluster. HTTP calls rotate over
    /// them; WebSockets go where `/v1/assign` says.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: Vec<String>,

    /// Where created users' tokens are cached, keyed by the first node URL, so reruns
    /// against the same data dir skip the (deliberately slow) argon2 sign-ups.
    #[arg(long, global = true, default_value = "parley-bench-users.json")]
    pub users_file: PathBuf,

    /// Sign-ups and logins in flight at once while creating users.
    #[arg(long, global = true, default_value_t = 16)]
    pub setup_concurrency: usize,

    /// Local source addresses 127.0.0.1 ..= 127.0.0.N for sockets to a loopback node
    /// (about 28,000 ephemeral ports per address pair).
    #[arg(long, global = true, default_value_t = 8)]
    pub source_ips: u8,

    /// The node processes to read memory and CPU from (`/proc/PID`); repeat for several.
    /// Default: the processes listening on the URLs' ports, when they run on this machine.
    #[arg(long, global = true, value_delimiter = ',')]
    pub node_pid: Vec<u32>,

    /// Free text stored with the results (e.g. "single node, release, embedded store").
    #[arg(long, global = true, default_value = "")]
    pub label: String,

    /// Also append the JSON line to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N idle authenticated sockets, heartbeating: the node's memory per connection.
    Idle(IdleArgs),
    /// M online pairs exchanging one-on-one messages, the total rate stepped up.
    Dm(TrafficArgs),
    /// Groups of (by default) 100 online members; every member sends to its group.
    Group(GroupArgs),
    /// Online pairs mixing one-on-one messages with edits, reactions and read markers.
    Mixed(MixedArgs),
    /// N clients drop at once and reconnect at once, then sync: time until all are back.
    Storm(StormArgs),
    /// One device offline for K messages syncs them: messages per second received.
    Catchup(CatchupArgs),
}

/// `idle` knobs.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Sockets to open (each a distinct user).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them open before measuring.
    #[arg(long, default_value_t = 10)]
    pub hold_secs: u64,
    /// Seconds between each socket's heartbeat frames.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_secs: u64,
    /// Sockets being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// Knobs of the paced scenarios (`dm`, `group`).
#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    /// Pairs of users (dm) that message each other, both directions.
    #[arg(long, default_value_t = 200)]
    pub pairs: usize,
    /// Total offered send rates (messages per second), one step each, in order. Stepping
    /// stops after the first step that is not held.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,5000,10000,20000,30000,40000,50000,70000,100000"
    )]
    pub rates: Vec<u64>,
    /// Seconds each step offers its rate.
    #[arg(long, default_value_t = 5)]
    pub step_secs: u64,
    /// A step is held when its send→deliver p99 is under this (ms) and the node acked at
    /// least 95 % of the offered rate.
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// Characters of message text.
    #[arg(long, default_value_t = 100)]
    pub text_chars: usize,
    /// Sends a client may have unacked before it stops offering more (the node holds back
    /// at 64 in flight per socket; the rest waits in TCP buffers).
    #[arg(long, default_value_t = 4096)]
    pub max_unacked: u64,
    /// After stepping, also run the half of the highest held rate (the latency target).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub half_step: bool,
}

/// `mixed` knobs: the paced knobs of `dm`, and the shares of the timeline operations.
#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Percent of the offered operations that edit the socket's latest message.
    #[arg(long, default_value_t = 10)]
    pub edit_pct: u8,
    /// Percent that react to (or take back a reaction on) the latest message received.
    #[arg(long, default_value_t = 20)]
    pub react_pct: u8,
    /// Percent that move the read marker to the newest item seen (no ack; counted apart).
    #[arg(long, default_value_t = 20)]
    pub read_pct: u8,
}

/// `group` knobs.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// Groups, each with its own members.
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// Members per group, the creator included (the node's default limit is 100).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Total offered send rates (messages per second; each is delivered to members − 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "200,500,1000,2000,3000,5000,7000,10000"
    )]
    pub rates: Vec<u64>,
    /// Seconds each step offers its rate.
    #[arg(long, default_value_t = 5)]
    pub step_secs: u64,
    /// A step is held when its p99 is under this (ms) and 95 % of the rate is acked.
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// Characters of message text.
    #[arg(long, default_value_t = 100)]
    pub text_chars: usize,
    /// Sends a client may have unacked before it stops offering more.
    #[arg(long, default_value_t = 4096)]
    pub max_unacked: u64,
    /// After stepping, also run the half of the highest held rate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub half_step: bool,
}

/// `storm` knobs.
#[derive(Debug, Args)]
pub struct StormArgs {
    /// Clients (each a distinct user) that drop and reconnect at once.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Sockets being opened at once while setting up (the storm itself opens all at once).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Give up on the storm after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// `catchup` knobs.
#[derive(Debug, Args)]
pub struct CatchupArgs {
    /// Messages sent while the device is offline.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// `limit` of each `sync` page (the node allows at most 1,000).
    #[arg(long, default_value_t = 1000)]
    pub page: u64,
    /// Sends in flight at once while filling the inbox.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Characters of message text.
    #[arg(long, default_value_t = 100)]
    pub text_chars: usize,
}
