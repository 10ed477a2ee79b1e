//! The quicnprotochat node: configuration, TLS material, the QUIC server wiring
//! (`server::run`), and the client side (connection, typed calls, local state,
//! commands). `main.rs` only parses flags.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backpressure;
pub mod client;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod tokens;
pub mod web;
