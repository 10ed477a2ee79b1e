//! Every cryptographic decision of quicnprotochat lives here, with no sockets or
//! actors: identity keys, the authentication transcript a client signs to prove
//! who it is on one connection, how operator tokens are compared, MLS group
//! membership (`mls`), the post-quantum hybrid envelope and sealed sender
//! (`envelope`), OPAQUE password authentication (`opaque`), and the owner-only
//! files and folders that keep secrets at rest (`private_fs`, the one place that
//! touches the file system, shared by node and client). Other crates call
//! this one; nothing else touches openmls, x-wing or opaque-ke directly.
#![forbid(unsafe_code)]

pub mod at_rest;
pub mod auth;
pub mod envelope;
pub mod identity;
pub mod mls;
pub mod opaque;
pub mod private_fs;
pub mod token;

pub use auth::{
    AUTH_NONCE_LEN, CHANNEL_BINDING_LEN, EXPORTER_LABEL, auth_transcript, fresh_nonce,
    verify_authentication,
};
pub use identity::{Identity, IdentityError};

/// SHA-256 of `bytes`: a name for a message that only the same bytes share (the
/// client remembers processed group messages by it, to ignore replays).
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}
