//! The key's whole life: where it comes from (`source`), how it is shown (`fingerprint`),
//! how it is held in memory (`secret`), how requests read it lock-free (`store`), how it is
//! rotated (`lifecycle`, `watch`), what of that must outlive a restart (`history`), and tokens
//! that expire by design, minted and refreshed from a longer-lived secret (`minted`).

pub mod aws;
pub mod expiry;
pub mod fingerprint;
pub mod history;
pub mod lifecycle;
pub mod lint;
pub mod minted;
pub mod rotation;
pub mod secret;
pub mod source;
pub mod store;
pub mod token;
pub mod watch;

pub use fingerprint::Fingerprint;
pub use secret::Secret;
pub use source::{KeyError, KeySource};
pub use store::{KeySnapshot, KeyState, KeyStore};
