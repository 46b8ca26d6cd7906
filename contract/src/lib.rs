//! # The etcd contract between chat nodes and the operator
//!
//! Both sides build their keys and decode their values from this crate, so the contract is
//! written once (docs/operator.md, "The etcd contract", describes it for people).
//!
//! # Layout
//!
//! | item | role |
//! | --- | --- |
//! | [`keys`] | the key layout under `/parley/<cluster>/` |
//! | [`Member`] | a node's registration (`nodes/<node_id>`), written by the node under a lease |
//! | [`DrainRequest`], [`DrainPurpose`] | the operator's request that a node drain (`drain/<node_id>`) |
//! | [`location`] | region and zone names: the default region and what a valid name is |
//!
//! Compatibility: a reader ignores fields it does not know and defaults the ones it misses,
//! so a node and an operator of different versions keep understanding each other.

pub mod keys;
pub mod location;

use serde::{Deserialize, Serialize};

pub use keys::{
    KEY_ROOT, cluster_prefix, drain_key, drain_prefix, node_id_of, node_key, nodes_prefix,
};
pub use location::{DEFAULT_REGION, is_valid_name};

/// Seconds a node's registration lease lives: a node that stops refreshing leaves the view
/// after this.
pub const LEASE_TTL_SECONDS: i64 = 10;

/// A node's registration, `/parley/<cluster>/nodes/<node_id>` as JSON, under a lease of
/// [`LEASE_TTL_SECONDS`]. Written by the node; the other nodes watch it (membership and
/// assignment), the operator reads it (status, drain progress, autoscaling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node id (a StatefulSet pod's name).
    pub node_id: String,
    /// How peers reach the node (its HTTP base URL).
    #[serde(default)]
    pub advertise_url: String,
    /// Where clients open their WebSocket.
    #[serde(default)]
    pub ws_url: String,
    /// Where peers reach the node's internal listener (links, status, probes, and the
    /// identity check that makes peers believe this record): `https://` with mutual TLS.
    /// Empty from nodes older than the internal listener.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub internal_url: String,
    /// The node's zone (failure domain, `--zone`), if it was given one.
    #[serde(default)]
    pub zone: Option<String>,
    /// The node's region (`--region`): users whose home region this is are placed on the
    /// nodes of this region. Registrations without it (older nodes) are in
    /// [`DEFAULT_REGION`].
    #[serde(default = "default_region")]
    pub region: String,
    /// The node's weight in assignment (`--capacity`).
    #[serde(default)]
    pub capacity: u64,
    /// Live client sockets.
    #[serde(default)]
    pub connections: u64,
    /// Handing its clients over: takes no new users.
    #[serde(default)]
    pub draining: bool,
}

impl Default for Member {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            advertise_url: String::new(),
            ws_url: String::new(),
            internal_url: String::new(),
            zone: None,
            region: default_region(),
            capacity: 0,
            connections: 0,
            draining: false,
        }
    }
}

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

/// Why the operator asks a node to drain. The node drains the same way whatever the purpose
/// (it takes no new users and moves its users away); the operator uses it to know which of
/// its requests to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainPurpose {
    /// The node's pod is going away for good (a scale-down, or a pause to zero replicas).
    #[default]
    ScaleDown,
    /// The node's pod is being replaced (a rolling upgrade): the request is deleted once the
    /// new pod registered.
    Replace,
}

/// The operator's request that a node drain: `/parley/<cluster>/drain/<node_id>` as JSON.
/// While the key exists the node drains; deleting the key cancels the drain. Times are
/// milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// When the operator first asked.
    pub requested_at: i64,
    /// After this the operator removes the node whatever its connections.
    pub deadline: i64,
    /// Why (absent in requests of older operators: a scale-down).
    #[serde(default)]
    pub purpose: DrainPurpose,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_of_older_nodes_decode_with_defaults() {
        let old: Member = serde_json::from_str(
            r#"{"node_id":"demo-0","advertise_url":"http://a","ws_url":"ws://a/v1/ws","zone":"z1","capacity":10,"connections":3,"draining":true}"#,
        )
        .unwrap_or_default();
        assert_eq!(old.region, "default");
        assert_eq!(old.internal_url, "");
        assert_eq!(
            (old.connections, old.draining, old.zone.as_deref()),
            (3, true, Some("z1"))
        );
        let min: Member =
            serde_json::from_str(r#"{"node_id":"x","future_field":1}"#).unwrap_or_default();
        assert_eq!(
            (min.node_id.as_str(), min.region.as_str()),
            ("x", "default")
        );
    }

    #[test]
    fn the_internal_url_round_trips_and_is_left_out_when_empty() {
        let m = Member {
            node_id: "demo-0".into(),
            internal_url: "https://demo-0.demo:8081".into(),
            ..Member::default()
        };
        let json = serde_json::to_value(&m).unwrap_or_default();
        assert_eq!(json["internal_url"], "https://demo-0.demo:8081");
        let back: Member = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, m);
        let plain = serde_json::to_value(Member::default()).unwrap_or_default();
        assert!(plain.get("internal_url").is_none(), "{plain}");
    }

    #[test]
    fn drain_requests_round_trip_and_default_to_scale_down() {
        let old: DrainRequest = serde_json::from_str(r#"{"requested_at":1,"deadline":2}"#)
            .unwrap_or(DrainRequest {
                requested_at: 0,
                deadline: 0,
                purpose: DrainPurpose::Replace,
            });
        assert_eq!(old.purpose, DrainPurpose::ScaleDown);
        let json = serde_json::to_value(DrainRequest {
            requested_at: 1,
            deadline: 2,
            purpose: DrainPurpose::Replace,
        })
        .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"requested_at": 1, "deadline": 2, "purpose": "replace"})
        );
    }
}
