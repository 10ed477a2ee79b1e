//! The redb stores owned by actors. One file per node; every write goes through the
//! [`writer::StoreWriter`], reads open their own read transactions.

pub mod admin;
pub mod auth;
pub mod crash_point;
pub mod group_directory;
pub mod private_fs;
pub mod server;
pub mod writer;

pub use server::{ServerStore, StoreError, StoreOptions};
