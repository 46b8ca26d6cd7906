//! The node's configuration: the flags and `PARLEY_*` variables of PROTOCOL.md ("Running a
//! node"), with their defaults, validated at start-up with messages that say what to fix.
//! The security flags (internal listener, mutual TLS, etcd and TiKV credentials, client
//! TLS) are in [`security`].

pub mod security;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::protocol::Limits;

/// Where history lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A pure-Rust engine in the data dir; one node, nothing else to run.
    Embedded,
    /// The cluster's etcd (small clusters and tests).
    Etcd,
    /// TiKV through its PD endpoints (production).
    Tikv,
}

/// Command line of `chat-node`. With no flags it runs one self-contained node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-node",
    version,
    about = "Parley chat node: WebSockets, HTTP API and history"
)]
pub struct Config {
    /// HTTP and WebSocket on one port.
    #[arg(long, env = "PARLEY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// How clients and other nodes reach this node (`ws_url` is derived from it). Default:
    /// `http://<listen>`; when listening on all interfaces, the Host the client used.
    #[arg(long, env = "PARLEY_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// The embedded store's files (and the generated token secret).
    #[arg(long, env = "PARLEY_DATA_DIR", default_value = "./parley-data")]
    pub data_dir: PathBuf,

    /// Where history lives.
    #[arg(long, env = "PARLEY_STORE", value_enum, default_value = "embedded")]
    pub store: StoreKind,

    /// Comma-separated etcd endpoints; given, the node joins a cluster.
    #[arg(long, env = "PARLEY_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// PD endpoints for `--store tikv`.
    #[arg(long, env = "PARLEY_TIKV_PD", value_delimiter = ',')]
    pub tikv_pd: Vec<String>,

    /// The cluster's name: nodes of one name share membership and keys.
    #[arg(long, env = "PARLEY_CLUSTER", default_value = "parley")]
    pub cluster: String,

    /// Unique per node (a StatefulSet pod's name). Default: the host name.
    #[arg(long, env = "PARLEY_NODE_ID")]
    pub node_id: Option<String>,

    /// A file holding the key that signs tokens (one trailing newline ignored); every node
    /// of a cluster shares it. Default: generated and kept in the data dir.
    #[arg(long, env = "PARLEY_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,

    /// Push notifications: `--push-webhook`, `--push-secret-file`, FCM, APNs, timing
    /// (see `crate::push::config` and docs/push.md).
    #[command(flatten)]
    pub push: crate::push::PushConfig,

    /// Limits against abuse: rates, counts and HTTP timeouts (see `crate::limits::config`
    /// and docs/operations.md).
    #[command(flatten)]
    pub abuse: crate::limits::LimitsConfig,

    /// Seconds of silence after which a device is offline and its socket closed.
    #[arg(long, env = "PARLEY_HEARTBEAT_TIMEOUT", default_value_t = 30)]
    pub heartbeat_timeout: u64,

    /// Most members of a group, the creator included.
    #[arg(long, env = "PARLEY_MAX_GROUP_MEMBERS", default_value_t = 100)]
    pub max_group_members: usize,

    /// Longest message text, in Unicode scalar values.
    #[arg(long, env = "PARLEY_MAX_MESSAGE_CHARS", default_value_t = 100_000)]
    pub max_message_chars: usize,

    /// The region this node runs in. Users whose home region it is are placed on the nodes
    /// of this region; users who sign up here without choosing a region get it as their home.
    #[arg(long, env = "PARLEY_REGION", default_value = parley_cluster_contract::DEFAULT_REGION)]
    pub region: String,

    /// The zone (failure domain) this node runs in, inside its region; carried in its
    /// registration for the operator and operators' dashboards.
    #[arg(long, env = "PARLEY_ZONE")]
    pub zone: Option<String>,

    /// Connections this node takes before `/v1/assign` prefers others.
    #[arg(long, env = "PARLEY_CAPACITY", default_value_t = 10_000)]
    pub capacity: usize,

    /// Hard limit of open WebSockets on this node; past it, upgrades get 503.
    #[arg(long, env = "PARLEY_MAX_CONNECTIONS", default_value_t = 18_000)]
    pub max_connections: usize,

    /// Seconds a draining node (SIGTERM) waits, beyond 10 s of grace, for its sessions to
    /// answer in-flight work and close before it exits.
    #[arg(long, env = "PARLEY_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,

    /// The internal listener, mutual TLS between nodes, TLS and credentials to etcd and
    /// TiKV, client TLS, `--insecure-cluster` (see [`security`] and docs/operations.md).
    #[command(flatten)]
    pub security: security::SecurityConfig,
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Check what clap cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_owned()));
        if self.heartbeat_timeout == 0 {
            return bad("--heartbeat-timeout must be at least 1 second");
        }
        if !(2..=10_000).contains(&self.max_group_members) {
            return bad("--max-group-members must be between 2 and 10000");
        }
        if !(1..=10_000_000).contains(&self.max_message_chars) {
            return bad("--max-message-chars must be between 1 and 10000000");
        }
        if !parley_cluster_contract::is_valid_name(&self.region) {
            return Err(ConfigError(format!(
                "--region {:?} is not a valid region name: use 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit (e.g. eu-west)",
                self.region
            )));
        }
        if let Some(zone) = &self.zone
            && !parley_cluster_contract::is_valid_name(zone)
        {
            return Err(ConfigError(format!(
                "--zone {zone:?} is not a valid zone name: use 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit (e.g. eu-west-1a)"
            )));
        }
        if self.capacity == 0 {
            return bad("--capacity must be at least 1");
        }
        if self.store == StoreKind::Tikv && self.tikv_pd.is_empty() {
            return bad(
                "--store tikv needs --tikv-pd with the PD endpoints (host:port, comma-separated)",
            );
        }
        if self.store == StoreKind::Etcd && self.etcd.is_empty() {
            return bad("--store etcd needs --etcd with the etcd endpoints");
        }
        if self.is_clustered() {
            if self.token_secret_file.is_none() {
                return bad(
                    "cluster mode (--etcd) needs --token-secret-file: every node must sign and check tokens with the same secret",
                );
            }
            if self.advertise_url.is_none() && self.listen.ip().is_unspecified() {
                return bad(
                    "cluster mode (--etcd) needs --advertise-url when listening on all interfaces: it is how other nodes and clients reach this node (e.g. http://10.0.0.5:8080)",
                );
            }
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("--advertise-url must start with http:// or https://");
        }
        self.push.validate().map_err(|e| ConfigError(e.0))?;
        self.security.validate(
            self.is_clustered(),
            self.store,
            &self.node_id(),
            &self.cluster,
        )?;
        self.abuse.validate().map_err(ConfigError)?;
        Ok(())
    }

    /// Whether the node joins a cluster through etcd.
    pub fn is_clustered(&self) -> bool {
        !self.etcd.is_empty()
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_message_chars: self.max_message_chars,
            max_group_members: self.max_group_members,
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout),
            max_groups_per_user: self.abuse.max_groups_per_user,
            ..Limits::default()
        }
    }

    /// This node's id: `--node-id`, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "parley-node".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("chat-node").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn shared_stores_are_accepted_with_their_endpoints() {
        parse(&["--store", "tikv", "--tikv-pd", "127.0.0.1:2379"])
            .validate()
            .expect("--store tikv with PD endpoints is valid");
        let err = parse(&["--store", "tikv"]).validate().unwrap_err();
        assert!(err.0.contains("--tikv-pd"), "{}", err.0);
        let err = parse(&["--store", "etcd"]).validate().unwrap_err();
        assert!(err.0.contains("--etcd"), "{}", err.0);
    }

    /// The `maximum` the CRD's schema gives `field` (its first occurrence with one).
    fn crd_maximum(field: &str) -> u64 {
        let crd = include_str!("../../crds/chatclusters.parley.dev.yaml");
        let lines: Vec<&str> = crd.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim() == format!("{field}:"))
            .find_map(|(i, _)| {
                lines[i + 1..(i + 10).min(lines.len())]
                    .iter()
                    .find_map(|l| l.trim().strip_prefix("maximum: "))
            })
            .and_then(|m| m.parse::<f64>().ok())
            .map(|m| m as u64)
            .unwrap_or_else(|| panic!("the CRD gives {field} no maximum"))
    }

    #[test]
    fn the_crd_accepts_exactly_what_the_node_accepts() {
        // A ChatCluster the CRD admits but the node refuses would crash-loop every pod.
        let groups = crd_maximum("maxGroupMembers");
        let chars = crd_maximum("maxMessageChars");
        let with = |g: u64, c: u64| {
            parse(&[
                "--max-group-members",
                &g.to_string(),
                "--max-message-chars",
                &c.to_string(),
            ])
            .validate()
        };
        with(groups, chars).expect("the CRD's maxima are valid for the node");
        assert!(
            with(groups + 1, chars).is_err(),
            "maxGroupMembers {groups} is the node's bound too"
        );
        assert!(
            with(groups, chars + 1).is_err(),
            "maxMessageChars {chars} is the node's bound too"
        );
    }

    #[test]
    fn abuse_limits_have_the_contract_defaults_and_zero_turns_them_off() {
        let c = parse(&[]);
        assert_eq!(
            (c.abuse.max_sends_per_second, c.abuse.send_burst),
            (20, 100)
        );
        assert_eq!(c.abuse.max_failed_logins, 10);
        assert_eq!(c.abuse.max_logins_per_address, 60);
        assert_eq!(c.abuse.max_sockets_per_user, 16);
        assert_eq!(
            (
                c.abuse.header_timeout_secs,
                c.abuse.body_timeout_secs,
                c.abuse.idle_timeout_secs
            ),
            (10, 30, 60)
        );
        assert_eq!(c.abuse.max_groups_per_user, 1_000);
        assert_eq!(c.abuse.max_devices_per_user, 100);
        let off = parse(&["--max-sends-per-second", "0", "--header-timeout-secs", "0"]);
        assert_eq!(off.abuse.header_timeout(), None);
        off.validate().expect("0 turns a limit off");
        let proxies = parse(&["--trusted-proxies", "10.0.0.0/8,::1/128"]);
        assert_eq!(proxies.abuse.trusted_proxies.len(), 2);
        assert!(Config::try_parse_from(["chat-node", "--trusted-proxies", "not-a-cidr"]).is_err());
    }

    #[test]
    fn region_and_zone_default_and_are_checked() {
        let c = parse(&[]);
        assert_eq!((c.region.as_str(), c.zone.as_deref()), ("default", None));
        parse(&["--region", "eu-west", "--zone", "eu-west-1a"])
            .validate()
            .expect("valid names");
        let err = parse(&["--region", "EU West"]).validate().unwrap_err();
        assert!(err.0.contains("--region \"EU West\""), "{}", err.0);
        let err = parse(&["--zone=zone_a"]).validate().unwrap_err();
        assert!(err.0.contains("--zone"), "{}", err.0);
    }
}
