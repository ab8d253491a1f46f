//! The HTTP/1.1 wire.

pub mod client;
pub mod server;
