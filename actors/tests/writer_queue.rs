//! The store writer's queue is bounded: while the writer is busy, submitters
//! wait instead of the queue growing, and everything they submitted is written
//! once it is free again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::hold_writer;
use quicnprotochat_actors::store::writer::WriteOp;
use quicnprotochat_actors::store::{QUEUE_CAPACITY, StoreWriter};
use quicnprotochat_actors::store::{ServerStore, StoreOptions};
use quicnprotochat_wire::IdentityKey;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_writer_makes_submitters_wait_instead_of_queueing_without_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = ServerStore::open(&dir.path().join("node.redb"), StoreOptions::default()).unwrap();
    let (writer, thread) = StoreWriter::start(store).unwrap();
    // Hold the writer inside a transaction until released.
    let (release, busy) = hold_writer(&writer).await;
    // A submitter that never stops on its own.
    let total = QUEUE_CAPACITY * 2;
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut replies = Vec::new();
    let mut ops = Vec::new();
    for i in 0..total {
        let (reply, rx) = oneshot::channel();
        replies.push(rx);
        ops.push(WriteOp::Load {
            inbox: IdentityKey([(i % 251) as u8; 32]),
            reply,
        });
    }
    let submitter = {
        let (writer, submitted) = (writer.clone(), submitted.clone());
        tokio::spawn(async move {
            for op in ops {
                writer.submit(op).await;
                submitted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Give it every chance to run ahead of the busy writer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = submitted.load(Ordering::SeqCst);
    assert!(
        queued <= QUEUE_CAPACITY,
        "{queued} writes queued behind a busy writer; the queue holds {QUEUE_CAPACITY}"
    );
    assert!(!submitter.is_finished(), "the submitter waits");
    // Free again: everything submitted is written and answered.
    release.send(()).unwrap();
    busy.await.unwrap().unwrap();
    submitter.await.unwrap();
    assert_eq!(submitted.load(Ordering::SeqCst), total);
    for rx in replies {
        rx.await.unwrap().unwrap();
    }
    writer.shutdown().await;
    thread.join().unwrap();
}
