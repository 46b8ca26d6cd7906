//! Fencing of the write path on a real etcd store: two nodes' writers over one store, each
//! given a membership view by hand (the scripted views stand in for the etcd membership
//! only; the store, its guards and the writers are the real ones). A writer that another
//! node fenced at a newer epoch writes nothing, whatever its stale view says.

use std::sync::{Arc, Mutex};

use chat_node::protocol::validate::Channel;
use chat_node::store::etcd::EtcdKv;
use chat_node::store::writer::fence::{Ownership, OwnershipView};
use chat_node::store::writer::{SendOp, WriteError, Writer, WriterConfig};
use chat_node::store::{ChatStore, Kv, UserRecord};
use parley_testkit::TestEtcd;

/// A view given by hand: its epoch, and whether this node owns everything in it.
struct View {
    epoch: u64,
    owns_all: bool,
    peer: String,
}

impl OwnershipView for View {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn revision(&self) -> u64 {
        self.epoch
    }
    fn owner(&self, _unit: &str) -> Option<&str> {
        (!self.owns_all).then_some(self.peer.as_str())
    }
    fn peers(&self) -> Vec<String> {
        vec![self.peer.clone()]
    }
}

struct Scripted {
    node_id: String,
    view: Mutex<Arc<View>>,
}

impl Scripted {
    fn new(node_id: &str, peer: &str, epoch: u64) -> Arc<Self> {
        Arc::new(Self {
            node_id: node_id.into(),
            view: Mutex::new(Arc::new(View {
                epoch,
                owns_all: true,
                peer: peer.into(),
            })),
        })
    }

    fn set(&self, epoch: u64, owns_all: bool) {
        let peer = self.view.lock().unwrap().peer.clone();
        *self.view.lock().unwrap() = Arc::new(View {
            epoch,
            owns_all,
            peer,
        });
    }
}

impl Ownership for Scripted {
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn current(&self) -> Arc<dyn OwnershipView> {
        self.view.lock().unwrap().clone()
    }
}

fn send(cmid: &str) -> SendOp {
    SendOp {
        sender: "alice".into(),
        device: "phone".into(),
        channel: Channel::direct("alice", "bob"),
        client_msg_id: cmid.into(),
        text: format!("text of {cmid}"),
        ts: 1,
        push_due: None,
        action: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_fenced_by_a_node_at_a_newer_epoch_writes_nothing() {
    let etcd = TestEtcd::start().await;
    let kv: Arc<dyn Kv> = Arc::new(
        EtcdKv::connect(&[etcd.endpoint().to_owned()], "/parley-store/fence/")
            .await
            .expect("connect to the test etcd"),
    );
    let store = ChatStore::new(kv.clone());
    for id in ["alice", "bob"] {
        store
            .create_user(&UserRecord {
                user_id: id.into(),
                username: format!("name-{id}"),
                display_name: id.into(),
                password_hash: String::new(),
                created_at: 0,
                region: None,
            })
            .await
            .unwrap();
    }
    let (view_a, view_b) = (Scripted::new("a", "b", 5), Scripted::new("b", "a", 5));
    let a = Writer::spawn_clustered(
        kv.clone(),
        WriterConfig::default(),
        Default::default(),
        view_a.clone(),
    );
    let b = Writer::spawn_clustered(
        kv.clone(),
        WriterConfig::default(),
        Default::default(),
        view_b.clone(),
    );

    // Epoch 5: node a owns the channel and both inboxes.
    let first = a.send(send("one")).await.expect("the owner writes");
    assert_eq!((first.ack.seq, first.ack.inbox_id), (1, 1));

    // Epoch 7: the membership moved everything to node b, which adopts it: it fences a.
    // Node a has not heard (its view still says epoch 5, everything its own).
    view_b.set(7, true);
    let second = b.send(send("two")).await.expect("the new owner writes");
    assert_eq!(
        (second.ack.seq, second.ack.inbox_id),
        (2, 2),
        "the new owner loaded the state after fencing: it continues where a stopped"
    );

    // Node a still holds seq 1 in memory and believes it owns the channel: its batch
    // carries its fence guard, which b raised, so nothing is written.
    let stale = a.send(send("three")).await;
    assert!(
        matches!(stale, Err(WriteError::NotOwner)),
        "a fenced writer is refused, got {stale:?}"
    );
    let (page, _) = store
        .history("alice", &Channel::direct("alice", "bob"), None, None, 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter()
            .map(|m| (m.seq, m.client_msg_id.as_str()))
            .collect::<Vec<_>>(),
        [(1, "one"), (2, "two")],
        "no number was handed out twice and the fenced writer stored nothing"
    );

    // Node a's view catches up (epoch 7: b owns everything): it routes, it does not write.
    view_a.set(7, false);
    let moved = a.send(send("four")).await;
    assert!(
        matches!(moved, Err(WriteError::NotOwner)),
        "a node that no longer owns the channel says so, got {moved:?}"
    );
    // And when ownership comes back to a (epoch 9), a fences b and reloads: seq 3 next.
    view_a.set(9, true);
    let back = a.send(send("five")).await.expect("the owner again writes");
    assert_eq!((back.ack.seq, back.ack.inbox_id), (3, 3));
    let late = b.send(send("six")).await;
    assert!(
        matches!(late, Err(WriteError::NotOwner)),
        "b, fenced at 9 while its view says 7, writes nothing, got {late:?}"
    );
    let (items, _) = store.sync("bob", 0, 10).await.unwrap();
    let items = items.decode().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|m| (m.inbox_id.unwrap(), m.seq))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 3)],
        "bob's inbox is gapless and holds each message once"
    );
}
