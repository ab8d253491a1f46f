//! The integration tests, one binary so the crate and its dependencies link once: each module talks
//! to the real server (or the real binary) over real sockets on `127.0.0.1:0`, with an in-process
//! stand-in for the provider. `faults.rs` and `soak.rs` stay binaries of their own: they count the
//! whole process's file descriptors and memory, which other tests running beside them would move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bedrock;
mod bedrock_rotation;
mod canary;
mod cli;
mod client_faults;
mod connection;
mod diagnosis;
mod durable;
mod first_run;
mod forwarding;
mod fuzz;
mod http1_differential;
mod layers;
mod load;
mod observability;
mod pool;
mod pool_membership;
mod pools;
mod rotation;
mod security;
mod streaming;
mod tokens;
mod websocket;
