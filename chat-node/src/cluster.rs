//! Which node serves which user. On a single node every user is served here and
//! `/v1/assign` names this node; cluster mode (etcd membership and rendezvous hashing)
//! plugs in behind the same calls.

use std::net::SocketAddr;

/// A node as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub node_id: String,
    pub ws_url: String,
}

/// This node's view of the cluster.
pub struct Cluster {
    node_id: String,
    advertise_url: Option<String>,
    listen: SocketAddr,
}

impl Cluster {
    /// A cluster of one: this node. `listen` is the bound address (port 0 resolved).
    pub fn single(node_id: String, advertise_url: Option<String>, listen: SocketAddr) -> Self {
        Self {
            node_id,
            advertise_url,
            listen,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node `user_id` should open its WebSocket on. `host` is the Host header the client
    /// used, which names this node best when it listens on all interfaces and no
    /// `--advertise-url` was given.
    pub fn assign(&self, _user_id: &str, host: Option<&str>) -> NodeAddress {
        NodeAddress {
            node_id: self.node_id.clone(),
            ws_url: self.ws_url(host),
        }
    }

    /// This node's WebSocket URL.
    pub fn ws_url(&self, host: Option<&str>) -> String {
        let base = match (&self.advertise_url, host) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(host)) if self.listen.ip().is_unspecified() => format!("http://{host}"),
            (None, _) => format!("http://{}", self.listen),
        };
        let ws = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base.trim_start_matches("http://")),
        };
        format!("{ws}/v1/ws")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_follows_advertise_url_then_host_then_listen() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let c = Cluster::single("n1".into(), Some("https://chat.example.com/".into()), any);
        assert_eq!(c.ws_url(Some("x")), "wss://chat.example.com/v1/ws");
        let c = Cluster::single("n1".into(), None, any);
        assert_eq!(c.ws_url(Some("10.0.0.5:8080")), "ws://10.0.0.5:8080/v1/ws");
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let c = Cluster::single("n1".into(), None, lo);
        assert_eq!(
            c.assign("u", Some("localhost:9000")).ws_url,
            "ws://127.0.0.1:9000/v1/ws"
        );
    }
}
