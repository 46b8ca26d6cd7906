//! The write path (`store::writer`) over the real embedded store: many sends per batch stay
//! gapless and deduplicated, an fsync failure acknowledges nothing, and overload is shed
//! within the deadline. Failures of the disk cannot be had on this machine, so two tests wrap
//! the real store in a fault injector; their names say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_node::protocol::ErrorCode;
use chat_node::protocol::validate::Channel;
use chat_node::store::embedded::Embedded;
use chat_node::store::writer::{SendOp, Writer, WriterConfig, WriterHooks};
use chat_node::store::{Batch, ChatStore, GroupRecord, Guard, Kv, KvTxn, StoreError, UserRecord};

fn user(id: &str) -> UserRecord {
    UserRecord {
        user_id: id.into(),
        username: format!("name-{id}"),
        display_name: id.into(),
        password_hash: String::new(),
        created_at: 0,
        region: None,
    }
}

fn send(from: &str, channel: &Channel, cmid: String) -> SendOp {
    SendOp {
        sender: from.into(),
        device: "phone".into(),
        channel: channel.clone(),
        client_msg_id: cmid,
        text: "hello".into(),
        ts: 1,
        push_due: None,
        action: Default::default(),
    }
}

/// The real embedded store, with faults injected into `sync` and delays into `apply`.
struct Faulty {
    inner: Embedded,
    fail_sync: AtomicBool,
    slow_apply: Option<Duration>,
}

#[async_trait]
impl Kv for Faulty {
    async fn begin(&self) -> Result<Box<dyn KvTxn>, StoreError> {
        self.inner.begin().await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected fsync failure".into()));
        }
        self.inner.sync().await
    }
    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.get_many(keys).await
    }
    async fn apply(&self, batch: &Batch, guard: Option<&Guard>) -> Result<(), StoreError> {
        if let Some(delay) = self.slow_apply {
            tokio::time::sleep(delay).await;
        }
        self.inner.apply(batch, guard).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn name(&self) -> &'static str {
        "faulty-embedded"
    }
}

async fn store_with_users(kv: Arc<dyn Kv>, users: &[String]) -> ChatStore {
    let store = ChatStore::new(kv);
    for id in users {
        store.create_user(&user(id)).await.unwrap();
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sends_in_small_batches_stay_gapless_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..10).map(|n| format!("u{n}")).collect();
    let store = store_with_users(Arc::new(Embedded::open(dir.path()).unwrap()), &users).await;
    store
        .create_group(
            &GroupRecord {
                group_id: "g1".into(),
                name: "all".into(),
                owner: users[0].clone(),
                members: users.clone(),
                created_at: 0,
                joined: Default::default(),
            },
            100,
            0,
        )
        .await
        .unwrap();
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    let writer = Writer::spawn(
        store.kv().clone(),
        WriterConfig {
            max_ops: 16,
            ..WriterConfig::default()
        },
        WriterHooks {
            on_batch: Some(Arc::new(move |_, _, _| {
                counted.fetch_add(1, Ordering::Relaxed);
            })),
            ..WriterHooks::default()
        },
    );
    let group = Channel::Group("g1".into());
    let mut tasks = Vec::new();
    // Every user sends 20 to the group and 20 to each neighbour, all at once, and every
    // group send twice (the second is a duplicate wherever it lands).
    for (n, from) in users.iter().enumerate() {
        let peer = &users[(n + 1) % users.len()];
        let dm = Channel::direct(from, peer);
        for k in 0..20 {
            for (channel, cmid) in [(&group, format!("g-{k}")), (&dm, format!("d-{k}"))] {
                let copies = if channel == &group { 2 } else { 1 };
                for _ in 0..copies {
                    let writer = writer.clone();
                    let op = send(from, channel, cmid.clone());
                    let from = from.clone();
                    tasks.push(tokio::spawn(async move {
                        (from, writer.send(op).await.expect("a send is answered"))
                    }));
                }
            }
        }
    }
    let mut acks = std::collections::HashMap::new();
    for task in tasks {
        let (from, outcome) = task.await.unwrap();
        let key = (
            from,
            outcome.ack.channel.clone(),
            outcome.ack.client_msg_id.clone(),
        );
        let seen = acks.entry(key).or_insert_with(Vec::new);
        seen.push(outcome);
    }
    assert!(
        batches.load(Ordering::Relaxed) > 1,
        "the sends were written in several batches"
    );
    for outcomes in acks.values() {
        let fresh = outcomes.iter().filter(|o| !o.duplicate).count();
        assert_eq!(fresh, 1, "each (sender, client_msg_id) is stored once");
        let first = &outcomes[0].ack;
        assert!(
            outcomes.iter().all(|o| o.ack == *first),
            "a duplicate answers with the first ack"
        );
    }
    let (page, _) = store
        .history(&users[0], &group, None, None, 1000)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<u64>>(),
        "the group's seqs are gapless: 10 users x 20 sends, duplicates stored once"
    );
    for member in &users {
        let (items, more) = store.sync(member, 0, 1000).await.unwrap();
        let items = items.decode().unwrap();
        assert!(!more);
        let ids: Vec<u64> = items.iter().filter_map(|m| m.inbox_id).collect();
        assert_eq!(
            ids,
            (1..=240).collect::<Vec<u64>>(),
            "{member}: 200 group messages and 20 from each side of two one-on-ones, gapless"
        );
        assert_eq!(store.inbox_head(member).await.unwrap(), 240);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_fsync_fails_acks_nothing_injected_fault() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Faulty {
        inner: Embedded::open(dir.path()).unwrap(),
        fail_sync: AtomicBool::new(false),
        slow_apply: None,
    });
    let users = vec!["a".to_owned(), "b".to_owned()];
    let store = store_with_users(faulty.clone(), &users).await;
    let writer = Writer::spawn(faulty.clone(), WriterConfig::default(), Default::default());
    let dm = Channel::direct("a", "b");
    writer
        .send(send("a", &dm, "before".into()))
        .await
        .expect("a healthy store acks");

    faulty.fail_sync.store(true, Ordering::SeqCst);
    let sends: Vec<_> = (0..20)
        .map(|n| {
            let writer = writer.clone();
            let op = send("a", &dm, format!("during-{n}"));
            tokio::spawn(async move { writer.send(op).await })
        })
        .collect();
    for s in sends {
        let result = s.await.unwrap();
        let error = result
            .expect_err("nothing is acked once an fsync failed")
            .into_api();
        assert_eq!(error.code, ErrorCode::Unavailable, "{}", error.message);
    }
    assert!(
        writer.is_poisoned(),
        "the writer stops after a failed fsync"
    );

    // The store answers again, but this writer stays stopped: whatever it was given after
    // the failure might not be on disk.
    faulty.fail_sync.store(false, Ordering::SeqCst);
    let after = writer.send(send("a", &dm, "after".into())).await;
    assert_eq!(
        after
            .expect_err("a poisoned writer acks nothing")
            .into_api()
            .code,
        ErrorCode::Unavailable
    );
    let (page, _) = store.history("a", &dm, None, None, 100).await.unwrap();
    assert!(
        page.iter().all(|m| m.client_msg_id != "after"),
        "nothing is written after the failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_within_the_deadline_and_the_writer_recovers_injected_delay() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(Faulty {
        inner: Embedded::open(dir.path()).unwrap(),
        fail_sync: AtomicBool::new(false),
        slow_apply: Some(Duration::from_millis(300)),
    });
    let users = vec!["a".to_owned(), "b".to_owned()];
    store_with_users(faulty.clone(), &users).await;
    let shed = Arc::new(AtomicUsize::new(0));
    let counted = shed.clone();
    let writer = Writer::spawn(
        faulty.clone(),
        WriterConfig {
            queue: 8,
            max_ops: 4,
            shed_after: Duration::from_millis(100),
            ..WriterConfig::default()
        },
        WriterHooks {
            on_shed: Some(Arc::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            })),
            ..WriterHooks::default()
        },
    );
    let dm = Channel::direct("a", "b");
    let started = Instant::now();
    let sends: Vec<_> = (0..40)
        .map(|n| {
            let writer = writer.clone();
            let op = send("a", &dm, format!("load-{n}"));
            tokio::spawn(async move {
                let result = writer.send(op).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let (mut acked, mut refused) = (0, 0);
    for s in sends {
        let (result, took) = s.await.unwrap();
        assert!(
            took < Duration::from_secs(1),
            "every send is answered within a second, this one took {took:?}"
        );
        match result {
            Ok(_) => acked += 1,
            Err(e) => {
                let e = e.into_api();
                assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
                refused += 1;
            }
        }
    }
    assert!(acked >= 1, "some sends are acked under overload");
    assert!(refused >= 1, "the overload is shed");
    assert_eq!(
        shed.load(Ordering::Relaxed),
        refused,
        "every refusal is counted"
    );
    // Once the load is gone the writer takes sends again at once (what it still writes in
    // the background, index changes under this store's 300 ms apply, may delay the first).
    let recovered = async {
        loop {
            if writer.send(send("a", &dm, "after".into())).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), recovered)
        .await
        .expect("once the load is gone, sends are acked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_index_written_behind_the_inbox_is_whole_after_a_crash_and_after_a_flush() {
    use chat_node::store::index;
    let dir = tempfile::tempdir().unwrap();
    let users = vec!["a".to_owned(), "b".to_owned()];
    let store = store_with_users(Arc::new(Embedded::open(dir.path()).unwrap()), &users).await;
    let writer = Writer::spawn(
        store.kv().clone(),
        WriterConfig::default(),
        Default::default(),
    );
    let dm = Channel::direct("a", "b");
    for n in 0..5 {
        writer.send(send("a", &dm, format!("m{n}"))).await.unwrap();
    }
    let name = dm.to_string();
    // No flush yet (the writer writes its index a second after the changes): what a crash
    // now would leave is the inbox, and the index is rebuilt from it.
    let b = index::load(store.kv().as_ref(), "b", std::slice::from_ref(&name))
        .await
        .unwrap();
    let entry = b.channels[&name];
    assert_eq!(
        (b.head, entry.last_seq, entry.unread, entry.read_seq),
        (5, 5, 5, 0),
        "b's index, replayed from the inbox: five unread"
    );
    let a = index::load(store.kv().as_ref(), "a", std::slice::from_ref(&name))
        .await
        .unwrap();
    let entry = a.channels[&name];
    assert_eq!(
        (entry.last_seq, entry.unread, entry.read_seq),
        (5, 0, 5),
        "the sender's own messages are read"
    );
    writer.flush().await.unwrap();
    let b = index::load(store.kv().as_ref(), "b", std::slice::from_ref(&name))
        .await
        .unwrap();
    assert_eq!(
        b.channels[&name].unread, 5,
        "the written index says the same"
    );
    assert!(!b.is_dirty(), "after the flush nothing is left to replay");
}
