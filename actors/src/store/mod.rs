//! The node's stores. Two backends keep the same tables with the same promises:
//! an embedded redb file (the default, [`server::ServerStore`]) and PostgreSQL
//! ([`postgres::PgStore`]), for several nodes serving one population. Every
//! write goes through the [`StoreWriter`] as a typed [`writer::WriteOp`];
//! reads go through [`Store`].

pub mod admin;
mod answers;
pub mod auth;
pub mod crash_point;
pub mod fences;
pub mod group_directory;
mod handle;
pub mod ops;
pub mod postgres;
mod read;
pub mod server;
pub mod snapshot;
pub mod writer;

pub use handle::{QUEUE_CAPACITY, StoreWriter};
pub use read::{Directory, Store};
pub use server::{ServerStore, StoreError, StoreOptions};

/// Now, in ms since the Unix epoch (the stores' timestamps).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
