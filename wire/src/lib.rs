//! The wire contract of quicnprotochat: the Cap'n Proto code generated from
//! `schemas/node.capnp` (committed, so building needs no schema compiler), the stable
//! error codes carried in exception texts, the reader limits that keep a hostile
//! message from making a peer allocate, the typed values other crates use instead
//! of raw Cap'n Proto readers, and the QUIC + TLS 1.3 transport both ends
//! configure (`tls`: the node's certificate, the client's pinning).
#![forbid(unsafe_code)]

#[allow(
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    missing_docs,
    dead_code
)]
#[rustfmt::skip] // generated: compared byte for byte with capnp's output
#[path = "generated/node_capnp.rs"]
pub mod node_capnp;

pub mod error;
pub mod fanout;
pub mod limits;
pub mod tls;
pub mod types;

pub use error::{ErrorCode, WireError};
pub use types::{Envelope, EnvelopeKind, IDENTITY_KEY_LEN, IdentityKey, Inbound};

/// ALPN protocol id of our QUIC connections; a peer speaking anything else is refused
/// during the TLS handshake.
pub const ALPN: &[u8] = b"quicnprotochat/1";
