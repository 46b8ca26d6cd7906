//! Dialling a WebSocket the way a client of the protocol does (ask `/v1/assign`, open
//! `ws_url?token=`), with the local source address chosen per socket so that large socket
//! counts to a loopback node do not run out of ephemeral ports; and decoding the frames
//! the benchmark reads, borrowing from the frame text.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::api::{Api, User};

/// A client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// Opens sockets for users.
#[derive(Clone)]
pub struct Dialer {
    pub api: Api,
    source_ips: u8,
}

impl Dialer {
    /// `source_ips`: how many of 127.0.0.1..=127.0.0.N to spread loopback sockets over.
    pub fn new(api: Api, source_ips: u8) -> Self {
        Self {
            api,
            source_ips: source_ips.max(1),
        }
    }

    /// Ask `/v1/assign` where `user` belongs and open a socket there; returns the socket and
    /// the `ws_url` it used (to reconnect to without asking again).
    pub async fn assign_and_dial(&self, user: &User, slot: usize) -> Result<(Ws, String)> {
        let ws_url = self.api.assign(&user.token).await?;
        let ws = self.dial(&ws_url, &user.token, slot).await?;
        Ok((ws, ws_url))
    }

    /// Open a socket on `ws_url` with `token`; `slot` picks the local source address.
    pub async fn dial(&self, ws_url: &str, token: &str, slot: usize) -> Result<Ws> {
        let rest = ws_url.strip_prefix("ws://").ok_or_else(|| {
            anyhow!("{ws_url}: only ws:// URLs are supported (run the benchmark on plain HTTP)")
        })?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr = tokio::net::lookup_host(host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{host_port} has no IPv4 address"))?;
        let socket = TcpSocket::new_v4()?;
        if let IpAddr::V4(ip) = addr.ip()
            && ip.is_loopback()
            && self.source_ips > 1
        {
            let last = 1 + (slot % self.source_ips as usize) as u8;
            socket.set_reuseaddr(true)?;
            // Pick the source port at connect, not at bind: a bind to port 0 searches the
            // ephemeral range for a port free on every address, which with ~20,000 sockets
            // open or closing took the tool's kernel seconds per thousand binds (a storm
            // of 10,000 measured 9.3 s, 1.7 cores in `inet_bind2_bucket_find`, the node
            // idle); at connect the kernel only needs the 4-tuple to be unique.
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )?;
            socket.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let request = format!("{ws_url}?token={token}").into_client_request()?;
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(usize::MAX);
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                bail!("WebSocket upgrade refused: {} {body}", resp.status())
            }
            Err(e) => Err(e).context("WebSocket handshake"),
        }
    }
}

/// The fields of a server frame that the benchmark reads.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub inbox_id: Option<u64>,
    #[serde(default)]
    pub seq: Option<u64>,
    /// A timeline item's `kind` (absent for a plain message).
    #[serde(rename = "kind", borrow, default)]
    pub item: Option<Cow<'a, str>>,
    #[serde(default)]
    pub items: Option<Vec<Item>>,
    #[serde(default)]
    pub more: Option<bool>,
    #[serde(default)]
    pub ws_url: Option<String>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

/// One item of a `sync` answer.
#[derive(Debug, Deserialize)]
pub struct Item {
    pub inbox_id: u64,
}

impl<'a> Frame<'a> {
    /// Decode a text frame.
    pub fn decode(text: &'a str) -> Result<Self> {
        serde_json::from_str(text).with_context(|| {
            format!(
                "undecodable frame: {}",
                text.chars().take(200).collect::<String>()
            )
        })
    }
}

/// A message text that carries its send time (`ns` of [`crate::clock`]), padded to
/// `chars` characters (at least the stamp).
pub fn stamped_text(ns: u64, chars: usize) -> String {
    let mut s = format!("t{ns:020}");
    while s.len() < chars {
        s.push(if s.len() % 10 == 0 { ' ' } else { 'x' });
    }
    s
}

/// The send time in a [`stamped_text`].
pub fn read_stamp(text: &str) -> Option<u64> {
    text.get(1..21)?.parse().ok()
}

/// A `client_msg_id` that carries its send time, unique per (connection, counter).
pub fn stamped_cmid(conn: usize, n: u64, ns: u64) -> String {
    format!("{conn:x}.{n:x}.{ns}")
}

/// The send time in a [`stamped_cmid`].
pub fn read_cmid_stamp(cmid: &str) -> Option<u64> {
    cmid.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let t = stamped_text(123_456_789, 100);
        assert_eq!(t.chars().count(), 100);
        assert_eq!(read_stamp(&t), Some(123_456_789));
        assert_eq!(read_stamp(&stamped_text(7, 5)), Some(7));
        let c = stamped_cmid(17, 99, 42);
        assert!(c.len() <= 64);
        assert_eq!(read_cmid_stamp(&c), Some(42));
        assert_eq!(read_stamp("hello"), None);
    }

    #[test]
    fn frames_decode_borrowed_and_ignore_other_fields() {
        let f = Frame::decode(
            r#"{"type":"message","channel":"dm:a:b","seq":3,"from":"a","client_msg_id":"1.2.3","text":"t00000000000000000042 xx","ts":1,"inbox_id":9}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.inbox_id, Some(9));
        assert_eq!(read_stamp(f.text.as_deref().unwrap()), Some(42));
        let s = Frame::decode(
            r#"{"type":"sync","items":[{"inbox_id":1,"text":"x"},{"inbox_id":2}],"more":true}"#,
        )
        .unwrap();
        assert_eq!(s.items.unwrap().len(), 2);
        assert_eq!(s.more, Some(true));
    }
}
