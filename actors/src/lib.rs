//! The actors of quicnprotochat and what they own: the node's inbox actors and their
//! registry, the store writer with group commit, the Cap'n Proto service that
//! decodes calls and forwards them; the redb stores (`store`); and the pure state
//! machines the actors wrap (`core`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod connection;
pub mod core;
pub mod disk;
pub mod error;
pub mod group;
pub mod inbox;
pub mod maintenance;
pub mod registry;
pub mod store;
pub mod telemetry;

pub use error::DeliveryError;
