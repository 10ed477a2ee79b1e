//! What the actor tests share: a replayable RNG, the seeds to run, inbox names,
//! inbox and group actors started alike, and a way to hold the store writer still.
#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;
use std::time::Duration;

use quicnprotochat_actors::core::inbox::InboxLimits;
use quicnprotochat_actors::group::{GroupRegistry, GroupSettings};
use quicnprotochat_actors::inbox::{InboxRegistry, InboxSettings};
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::writer::TransactError;
use quicnprotochat_wire::IdentityKey;

/// xorshift64*: enough randomness for choosing moments and operations, and
/// replayable from its seed.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (mixed, so neighbouring seeds differ at once).
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The seeds to run: the one in the environment variable `var` (a replay), or
/// `defaults`.
pub(crate) fn seeds(var: &str, defaults: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => vec![s.parse().unwrap_or_else(|_| panic!("{var} is a number"))],
        Err(_) => defaults.collect(),
    }
}

/// Inbox `i` of a test.
pub(crate) fn inbox(i: u8) -> IdentityKey {
    IdentityKey([i + 1; 32])
}

/// What [`hold_writer`] hands back: send (or drop) to let the writer go, then
/// await the task.
pub(crate) type HeldWriter = (
    std::sync::mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<(), TransactError<()>>>,
);

/// Holds `writer` inside a transaction, so that nothing commits until released;
/// returns once the writer is held.
pub(crate) async fn hold_writer(writer: &StoreWriter) -> HeldWriter {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let busy = {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .transact(move |_| {
                    let _ = started_tx.send(());
                    let _ = held.recv();
                    Ok::<(), ()>(())
                })
                .await
        })
    };
    started.await.unwrap();
    (release, busy)
}

/// Inbox actors over `writer` as the actor tests use them: roomy inboxes
/// (100,000 messages of up to 1 KiB), two long-polls each.
pub(crate) async fn start_inboxes(
    writer: &StoreWriter,
    idle_after: Duration,
    live_actors: usize,
) -> InboxRegistry {
    InboxRegistry::start(
        writer.clone(),
        InboxSettings {
            limits: InboxLimits {
                queue_limit: 100_000,
                max_payload: 1024,
            },
            idle_after,
            long_polls: 2,
            live_actors,
        },
    )
    .await
    .unwrap()
}

/// Group actors over `inboxes`, every device known, 10 groups per device.
pub(crate) async fn start_groups(
    inboxes: &InboxRegistry,
    writer: &StoreWriter,
    idle_after: Duration,
    live_actors: usize,
) -> GroupRegistry {
    GroupRegistry::start(
        inboxes.clone(),
        writer.clone(),
        GroupSettings {
            idle_after,
            live_actors,
            groups_per_device: 10,
            group_info_bytes_per_device: 1 << 30,
            disk: Default::default(),
        },
        Arc::new(|_: &IdentityKey| true),
    )
    .await
    .unwrap()
}
