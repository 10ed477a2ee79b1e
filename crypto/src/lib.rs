//! Every cryptographic decision of quicnprotochat lives here, with no sockets, files
//! or actors: identity keys, the authentication transcript a client signs to prove
//! who it is on one connection, and how operator tokens are compared. (MLS groups,
//! the hybrid envelope and OPAQUE join this crate in later issues.)
#![forbid(unsafe_code)]

pub mod auth;
pub mod identity;
pub mod mls;
pub mod token;

pub use auth::{
    AUTH_NONCE_LEN, CHANNEL_BINDING_LEN, EXPORTER_LABEL, auth_transcript, fresh_nonce,
    verify_authentication,
};
pub use identity::{Identity, IdentityError};
