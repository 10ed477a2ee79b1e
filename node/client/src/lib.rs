//! The quicnprotochat client: a pinned QUIC connection with typed calls (`rpc`),
//! the profile's local state (`state`, `mls_store`), one actor per group
//! serializing its epoch transitions (`actors`, over the pure `core`), the
//! [`messenger::Messenger`] that ties them together, the commands built on it
//! (`commands`, `group_commands`) and the local web app (`web`).
//!
//! It depends on no server crate: what client and node share is the wire
//! contract and transport (`quicnprotochat-wire`) and the cryptography
//! (`quicnprotochat-crypto`). The binary keeps the CLI and the server wiring.
#![forbid(unsafe_code)]

pub mod account_command;
pub mod actors;
pub mod app_content;
pub mod command_error;
pub mod commands;
pub mod core;
pub mod daemon;
pub mod device_sync;
pub mod display;
pub mod group_commands;
pub mod key_packages;
pub mod message;
pub mod messenger;
pub mod mls_store;
pub mod output;
pub mod profile_command;
pub mod profile_key;
mod record_pieces;
pub mod rejoin;
pub mod resident;
pub mod rpc;
pub mod shutdown;
pub mod state;
pub mod web;

pub use rpc::{
    Applied, ClaimedKeyPackage, ClientError, CommitBodies, DirectoryEntry, Health, KeyDirectory,
    KeyPackageTarget, LoggedIn, NodeConnection, Pushed, SendOutcome, SessionHandle,
    client_endpoint,
};
pub use state::ClientState;
