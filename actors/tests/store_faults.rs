//! Store model check through the whole write path, with I/O failures: random
//! enqueues, batches, group commits (fence moves), group sends (shared bodies)
//! and acks go through the inbox and group actors and the one store writer, on
//! redb with two-phase commit, over a storage backend that starts failing every
//! write at a random moment. Every operation answered `Ok` goes into a plain
//! model. After the first failure the node must refuse every write; reopened on
//! a healthy backend, the store must hold exactly the model's state.
//!
//! Seeded: `QPC_FAULT_SEED=N` replays one run; a failure names its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Rng, inbox, seeds};
use quicnprotochat_actors::core::inbox::InboxLimits;
use quicnprotochat_actors::group::{GroupRegistry, GroupSettings};
use quicnprotochat_actors::inbox::{Delivery, InboxRegistry, InboxSettings};
use quicnprotochat_actors::store::writer::StoreWriter;
use quicnprotochat_actors::store::{ServerStore, StoreOptions};
use quicnprotochat_wire::IdentityKey;
use redb::StorageBackend;
use redb::backends::FileBackend;

const INBOXES: u8 = 3;
const OPS: usize = 120;

/// A file backend whose writes (and every I/O after) fail from the `fail_at`-th
/// write on: a disk that dies. A failing write writes nothing, so what redb had
/// committed before stays the last state on the file.
#[derive(Debug)]
struct DyingDisk {
    inner: FileBackend,
    writes: AtomicU64,
    fail_at: u64,
    dead: Arc<AtomicBool>,
}

impl DyingDisk {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the disk died"));
        }
        Ok(())
    }
}

impl StorageBackend for DyingDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_at {
            self.dead.store(true, Ordering::SeqCst);
        }
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
}

/// What the store must hold: per inbox, seq → bytes, and how far it was acked;
/// and the group's next epoch.
#[derive(Default, Debug, PartialEq, Eq)]
struct Model {
    inboxes: BTreeMap<u8, BTreeMap<u64, Vec<u8>>>,
    next_epoch: u64,
}

impl Model {
    fn add(&mut self, i: u8, seq: u64, data: Vec<u8>) {
        self.inboxes.entry(i).or_default().insert(seq, data);
    }
}

async fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    // Create the file healthy (the schema), then reopen it on the dying disk.
    drop(ServerStore::open(&path, StoreOptions::default()).unwrap());
    let mut rng = Rng::seeded(seed);
    let dead = Arc::new(AtomicBool::new(false));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let disk = DyingDisk {
        inner: FileBackend::new(file).unwrap(),
        writes: AtomicU64::new(0),
        fail_at: 5 + rng.next() % 900,
        dead: dead.clone(),
    };
    let options = StoreOptions::default();
    assert!(options.two_phase_commit && options.durable);
    let store = ServerStore::open_with_backend(disk, options).unwrap();
    let (writer, thread) = StoreWriter::start(store.clone()).unwrap();
    let inboxes = InboxRegistry::start(
        writer.clone(),
        InboxSettings {
            limits: InboxLimits {
                queue_limit: 100_000,
                max_payload: 1024,
            },
            idle_after: Duration::from_secs(60),
            long_polls: 2,
            live_actors: 100,
        },
    )
    .await
    .unwrap();
    let groups = GroupRegistry::start(
        inboxes.clone(),
        writer.clone(),
        GroupSettings {
            idle_after: Duration::from_secs(60),
            live_actors: 10,
            groups_per_device: 10,
        },
        Arc::new(|_: &IdentityKey| true),
    )
    .await
    .unwrap();
    let gid = b"faults".to_vec();
    let members: BTreeSet<[u8; 32]> = (0..INBOXES).map(|i| inbox(i).0).collect();

    let mut model = Model::default();
    let mut failed_at = None;
    for n in 0..OPS {
        let kind = rng.next() % 5;
        let i = (rng.next() % INBOXES as u64) as u8;
        let data = format!("{seed}:{n}").into_bytes();
        let ok = match kind {
            0 => match inboxes.enqueue(inbox(i), data.clone()).await {
                Ok(seq) => {
                    model.add(i, seq, data);
                    true
                }
                Err(_) => false,
            },
            1 => {
                let mut to: Vec<u8> = (0..INBOXES)
                    .filter(|_| rng.next().is_multiple_of(2))
                    .collect();
                if to.is_empty() {
                    to.push(i); // an empty batch writes nothing at all
                }
                let deliveries = to
                    .iter()
                    .map(|t| Delivery {
                        recipient: inbox(*t),
                        payload: data.clone(),
                    })
                    .collect();
                match inboxes.enqueue_many(deliveries, None).await {
                    Ok(seqs) => {
                        for (t, seq) in to.iter().zip(seqs) {
                            model.add(*t, seq, data.clone());
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
            2 => {
                // Member 0 commits to the others: the fence moves with it.
                let deliveries = (1..INBOXES)
                    .map(|t| Delivery {
                        recipient: inbox(t),
                        payload: data.clone(),
                    })
                    .collect();
                match groups
                    .commit(
                        &gid,
                        model.next_epoch,
                        inbox(0),
                        members.clone(),
                        deliveries,
                    )
                    .await
                {
                    Ok(seqs) => {
                        for (t, seq) in (1..INBOXES).zip(seqs) {
                            model.add(t, seq, data.clone());
                        }
                        model.next_epoch += 1;
                        true
                    }
                    Err(_) => false,
                }
            }
            3 if model.next_epoch > 0 => {
                match groups.send(&gid, inbox(0), data.clone(), Vec::new()).await {
                    Ok(outcomes) if outcomes.iter().all(|(_, o)| o.is_ok()) => {
                        for (who, o) in outcomes {
                            let t = who.0[0] - 1;
                            model.add(t, o.unwrap(), data.clone());
                        }
                        true
                    }
                    _ => false,
                }
            }
            _ => {
                let held = model.inboxes.entry(i).or_default();
                let Some(&up_to) = held.keys().nth(held.len() / 2) else {
                    continue;
                };
                match inboxes.ack(inbox(i), up_to).await {
                    Ok(()) => {
                        held.retain(|seq, _| *seq > up_to);
                        true
                    }
                    Err(_) => false,
                }
            }
        };
        match (ok, failed_at) {
            (false, None) => {
                assert!(
                    dead.load(Ordering::SeqCst),
                    "seed {seed}: op {n} failed on a healthy disk"
                );
                failed_at = Some(n);
            }
            (true, Some(first)) => {
                panic!(
                    "seed {seed}: op {n} (kind {kind}) succeeded after the failure at op {first}"
                )
            }
            _ => {}
        }
    }
    groups.stop().await;
    inboxes.stop().await;
    writer.shutdown().await;
    let _ = thread.join();
    drop(store);

    // Reopened on a healthy disk: exactly the acknowledged state.
    let store = ServerStore::open(&path, StoreOptions::default()).unwrap();
    let mut stored = Model::default();
    for i in 0..INBOXES {
        for e in store.fetch(&inbox(i), 0, 100_000, usize::MAX).unwrap() {
            stored.add(i, e.seq, e.data);
        }
    }
    model.inboxes.retain(|_, m| !m.is_empty());
    let (writer, _thread) = StoreWriter::start(store.clone()).unwrap();
    let gid2 = gid.clone();
    let (next, _) = writer
        .transact(move |txn| {
            quicnprotochat_actors::store::server::group_fence(txn, &gid2).map_err(|e| e.to_string())
        })
        .await
        .unwrap();
    stored.next_epoch = next.unwrap_or(0);
    assert_eq!(
        stored, model,
        "seed {seed}: the reopened store is not the acknowledged state (failure at op {failed_at:?})"
    );
    eprintln!("seed {seed}: disk died at op {failed_at:?}; reopened store equals the model");
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_io_failure_the_node_refuses_writes_and_reopens_at_the_last_acknowledged_state() {
    for seed in seeds("QPC_FAULT_SEED", 1..=12) {
        run(seed).await;
    }
}
