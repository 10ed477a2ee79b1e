//! The quicnprotochat binary's library: configuration, the QUIC server wiring
//! (`server::run`), operator commands and the embedded demo. The client lives in
//! `quicnprotochat-client`, the server's actors and stores in
//! `quicnprotochat-actors`; `main.rs` only parses flags.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backpressure;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod tokens;
