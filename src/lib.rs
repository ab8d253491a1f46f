//! keyproxy: a local proxy that holds LLM API keys, injects them upstream in each provider's scheme,
//! hot-swaps them on rotation and explains auth failures. `main.rs` parses the command line and
//! hands over to `cli`; everything else lives here so integration tests and benchmarks drive the
//! same code the binary runs.
//!
//! # Layers
//! Imports go one way, down this table; a module may use its own layer's modules (without a
//! cycle) and any layer below, never one above. `tests/layers.rs` reads every `crate::…` path in
//! `src/` and fails on an upward import or a cycle. Something a lower layer needs from a higher
//! one lives in the wrong room: move it down, or pass it in (as `KeyProbe` and `KeyHistory` are passed to
//! the key lifecycle and `Watched` to the file watcher).
//!
//! | layer | modules | what lives there |
//! |---|---|---|
//! | `leaves` | `reason`, `provider`, `time`, `redact`, `request_id`, `workers`, `metrics`, `telemetry` | facts and tools that know nothing of the rest |
//! | `key` | `key` | the credential's whole life: secret, fingerprint, source, lint, expiry, store, lifecycle, watch, minted (tokens refreshed before they expire) |
//! | `state` | `state` | the durable store (SQLite): rotations, retired keys, sightings, diagnoses; implements `key::history::KeyHistory` |
//! | `config` | `config` | TOML → raw → validated `Config`, built from the types of the layers below |
//! | `http1` | `http1`, `headers`, `websocket` | the wire: limits, framing, heads and bodies, header surgery |
//! | `upstream` | `upstream` | an upstream at run time and its connection pool (`upstream::pool`) |
//! | `diagnose` | `diagnose` | a refusal → reason + sentence; asking the provider about a key (`diagnose::probe`) |
//! | `proxy` | `proxy` | the forwarding path: route, guard, client tokens, rewrite, send, reply, explain, tap; `ProxyError` for every refusal keyproxy makes itself |
//! | `admin` | `admin` | the admin port: health, status (and its page), metrics, rotation |
//! | `server` | `server` | listeners, workers, signals, shutdown |
//! | `cli` | `cli` | the subcommands behind `main.rs` |
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod diagnose;
pub mod headers;
pub mod http1;
pub mod key;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod reason;
pub mod redact;
pub mod request_id;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod time;
pub mod upstream;
pub mod websocket;
pub mod workers;
