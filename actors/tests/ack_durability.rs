//! An ack is answered only once its deletion is committed, even when it repeats
//! an ack whose write is still in flight (a client retrying after a timeout, or
//! two devices of one inbox): the inbox actor counts an ack at once, so without
//! care the repeat would be answered "done" for a deletion a crash could undo.

mod common;

use std::time::Duration;

use common::{hold_writer, inbox, start_inboxes};
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::{ServerStore, StoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_repeated_while_the_first_is_in_flight_is_answered_only_once_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = ServerStore::open(&dir.path().join("node.redb"), StoreOptions::default()).unwrap();
    let (writer, _thread) = StoreWriter::start(store.clone()).unwrap();
    let inboxes = start_inboxes(&writer, Duration::from_secs(60), 10).await;
    let me = inbox(0);
    for i in 0..3u8 {
        inboxes.enqueue(me, vec![i]).await.unwrap();
    }

    // Hold the writer inside a transaction until released: nothing commits.
    let (release, busy) = hold_writer(&writer).await;

    let first = tokio::spawn({
        let inboxes = inboxes.clone();
        async move { inboxes.ack(me, 2).await }
    });
    // Let the first reach the actor (and the writer's queue) before the repeat.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut repeat = tokio::spawn({
        let inboxes = inboxes.clone();
        async move { inboxes.ack(me, 2).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut repeat)
            .await
            .is_err(),
        "the repeated ack was answered while its deletion was not committed"
    );
    assert!(!first.is_finished());

    release.send(()).unwrap();
    busy.await.unwrap().unwrap();
    first.await.unwrap().unwrap();
    repeat.await.unwrap().unwrap();
    assert_eq!(store.fetch(&me, 0, 10, usize::MAX).unwrap().len(), 1);
    // Committed now: a third is answered at once, without a write.
    inboxes.ack(me, 2).await.unwrap();
    inboxes.stop().await;
    writer.shutdown().await;
}
