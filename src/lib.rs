//! keyproxy: a local proxy that holds LLM API keys, injects them upstream in each provider's scheme,
//! hot-swaps them on rotation and explains auth failures. `main.rs` is the CLI; everything else lives here
//! so integration tests and benchmarks drive the same code the binary runs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod clients;
pub mod config;
pub mod diagnose;
pub mod explain;
pub mod guard;
pub mod headers;
pub mod http1;
pub mod key;
pub mod lifecycle;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod reason;
pub mod redact;
pub mod reply;
pub mod request_id;
pub mod route;
pub mod server;
pub mod status_page;
pub mod tap;
pub mod telemetry;
pub mod upstream;
pub mod websocket;
pub mod workers;
