//! The chat data model over the etcd backend on a real etcd: group sends of the default
//! maximum size (100 members) fit etcd's limits as Parley configures it, many of them in
//! one batch of the write path, concurrent sends stay gapless, dedupe holds, and history
//! pages come back newest first.

use std::sync::Arc;

use chat_node::protocol::validate::Channel;
use chat_node::store::etcd::EtcdKv;
use chat_node::store::writer::{SendOp, Writer, WriterConfig};
use chat_node::store::{ChatStore, GroupRecord, Kv, UserRecord};
use parley_testkit::TestEtcd;

async fn store(etcd: &TestEtcd) -> ChatStore {
    let kv: Arc<dyn Kv> = Arc::new(
        EtcdKv::connect(&[etcd.endpoint().to_owned()], "/parley-store/model/")
            .await
            .expect("connect to the test etcd"),
    );
    ChatStore::new(kv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_100_sends_concurrently_over_etcd_gapless_and_deduplicated() {
    let etcd = TestEtcd::start().await;
    let store = store(&etcd).await;
    let members: Vec<String> = (0..100).map(|n| format!("u{n:03}")).collect();
    for id in &members {
        store
            .create_user(&UserRecord {
                user_id: id.clone(),
                username: format!("name-{id}"),
                display_name: id.clone(),
                password_hash: "not-a-real-hash".into(),
                created_at: 0,
                region: None,
            })
            .await
            .expect("create a user");
    }
    let group = GroupRecord {
        group_id: "g1".into(),
        name: "everyone".into(),
        owner: members[0].clone(),
        members: members.clone(),
        created_at: 0,
        joined: Default::default(),
    };
    store
        .create_group(&group, 100, 0)
        .await
        .expect("create a group of 100");
    let channel = Channel::Group("g1".into());
    let writer = Writer::spawn(
        store.kv().clone(),
        WriterConfig::default(),
        Default::default(),
    );
    let send = |from: &str, id: String, text: String, ts| SendOp {
        sender: from.to_owned(),
        device: "d1".into(),
        channel: channel.clone(),
        client_msg_id: id,
        text,
        ts,
        push_due: None,
        action: Default::default(),
    };

    // 4 senders x 5 messages at once: the writer takes them in batches (each batch of group
    // sends bounded by etcd's transaction size), one etcd transaction per batch.
    let mut tasks = Vec::new();
    for from in &members[..4] {
        let writer = writer.clone();
        let ops: Vec<SendOp> = (0..5)
            .map(|n| {
                send(
                    from,
                    format!("{from}-{n}"),
                    format!("hello {n} from {from}"),
                    1,
                )
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for op in ops {
                let outcome = writer
                    .send(op)
                    .await
                    .expect("a group send commits over etcd");
                assert!(!outcome.duplicate);
                assert_eq!(outcome.recipients.len(), 100);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let (page, more) = store
        .history(&members[0], &channel, None, None, 50)
        .await
        .unwrap();
    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "gapless, oldest first");
    assert!(!more);
    let (newest, more) = store
        .history(&members[0], &channel, None, None, 3)
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [18, 19, 20]
    );
    assert!(more);
    for member in [&members[0], &members[57], &members[99]] {
        assert_eq!(
            store.inbox_head(member).await.unwrap(),
            20,
            "{member}'s inbox"
        );
        let (items, _) = store.sync(member, 0, 100).await.unwrap();
        let items = items.decode().unwrap();
        let ids: Vec<u64> = items.iter().filter_map(|m| m.inbox_id).collect();
        assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "{member}'s inbox ids");
    }

    // A resend of an acked message is answered from the dedupe record.
    let again = writer
        .send(send(
            &members[1],
            format!("{}-2", members[1]),
            "ignored".into(),
            2,
        ))
        .await
        .unwrap();
    assert!(again.duplicate, "a resend is a duplicate");
    assert_eq!(store.inbox_head(&members[0]).await.unwrap(), 20);
}
