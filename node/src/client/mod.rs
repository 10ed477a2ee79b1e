//! The client side: a pinned QUIC connection with typed calls (`rpc`), the client's
//! local state (`state`), and the CLI commands built on them (`commands`).

pub mod actors;
pub mod command_error;
pub mod commands;
pub mod core;
pub mod device_sync;
pub mod display;
pub mod group_commands;
pub mod message;
pub mod messenger;
pub mod mls_store;
pub mod output;
pub mod profile_key;
mod record_pieces;
pub mod rejoin;
pub mod rpc;
pub mod state;

pub use rpc::{
    ClaimedKeyPackage, ClientError, CommitBodies, DirectoryEntry, Health, KeyDirectory,
    KeyPackageTarget, LoggedIn, NodeConnection, SendOutcome, SessionHandle, client_endpoint,
};
pub use state::ClientState;
