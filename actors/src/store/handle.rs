//! [`StoreWriter`]: the handle every actor writes through, whichever backend
//! runs behind it (the redb writer thread in `writer.rs`, the PostgreSQL one in
//! `postgres/writer.rs`). Cheap to clone; a bounded queue in front of the one
//! writer.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use quicnprotochat_wire::IdentityKey;

use super::server::{ServerStore, StoreError};
use super::writer::{Reply, TransactError, WriteOp, poisoned, run};
use crate::core::inbox::InboxMeta;
use crate::error::DeliveryError;
/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<WriteOp>,
    /// Whether other nodes may write the same store (PostgreSQL).
    shared: bool,
}

/// Writes queued for the writer at most; a full queue makes submitters wait
/// (inbox actors, and through their mailboxes the calls in flight, which the
/// call budget bounds in turn) instead of buffering without limit.
pub const QUEUE_CAPACITY: usize = 4096;

impl StoreWriter {
    /// Starts the writer thread over the redb `store`.
    pub fn start(store: ServerStore) -> std::io::Result<(StoreWriter, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store, rx))?;
        Ok((StoreWriter { tx, shared: false }, handle))
    }

    /// Starts the writer of `store`, whichever backend it is.
    pub fn start_for(store: &super::read::Store) -> std::io::Result<(StoreWriter, JoinHandle<()>)> {
        match store {
            super::read::Store::Redb(s) => StoreWriter::start(s.clone()),
            super::read::Store::Postgres(pg) => {
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                let handle = super::postgres::writer::start((**pg).clone(), rx)?;
                Ok((StoreWriter { tx, shared: true }, handle))
            }
        }
    }

    /// Whether other nodes may write the same store: then what an inbox
    /// actor holds in memory can be behind the store.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Queues a write, waiting while the queue is full. If the writer is gone,
    /// the op (and its reply port) is dropped, which the caller sees as a closed
    /// reply channel.
    pub async fn submit(&self, op: WriteOp) {
        let _ = self.tx.send(op).await;
    }

    /// Loads an inbox's marks in write order (see [`WriteOp::Load`]).
    pub async fn load(&self, inbox: IdentityKey) -> Result<InboxMeta, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(WriteOp::Load { inbox, reply }).await;
        match rx.await {
            Ok(Ok(meta)) => Ok(meta),
            Ok(Err(DeliveryError::Store(e))) => Err(e),
            Ok(Err(other)) => Err(StoreError::Corrupt(other.to_string())),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Sends the request `make` builds around a reply port, and returns the
    /// answer (given once the write is durable).
    pub async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> WriteOp,
    ) -> Result<T, DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.submit(make(reply)).await;
        rx.await
            .unwrap_or(Err(DeliveryError::Store(StoreError::WriterGone)))
    }

    /// Test hook of the redb store (see [`WriteOp::Custom`]): runs `f` inside the next batch's write transaction and returns its result
    /// once that transaction is durable. A refusal (`Err(E)`) is returned as is;
    /// `f` must not have written anything before refusing.
    pub async fn transact<T, E, F>(&self, f: F) -> Result<T, TransactError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteOp::Custom(Box::new(move |txn| {
            let result = txn.map(f);
            Box::new(move |commit: Result<(), DeliveryError>| {
                let _ = tx.send(commit.and_then(|()| {
                    result.ok_or_else(|| poisoned("a refused write was not applied"))
                }));
            })
        })))
        .await;
        match rx.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(refusal))) => Err(TransactError::Refused(refusal)),
            Ok(Err(store)) => Err(TransactError::Store(store)),
            Err(_) => Err(TransactError::Store(StoreError::WriterGone.into())),
        }
    }

    /// Asks the writer to finish what it has and stop; returns when it has.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        self.submit(WriteOp::Shutdown { done }).await;
        let _ = rx.await;
    }
}
