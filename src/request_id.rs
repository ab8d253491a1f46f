//! Request ids: the app's own `x-request-id` when it sends a sane one, else a fresh one; returned
//! as `x-keyproxy-request-id` and put in every log line about the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

pub const RESPONSE_HEADER: &str = "x-keyproxy-request-id";
const INCOMING: &str = "x-request-id";

/// A process-unique prefix (start time and pid) and a counter: unique without randomness per request.
fn next() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
        nanos ^ std::process::id().rotate_left(16)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("kp-{prefix:08x}-{n:x}"))
        .unwrap_or(HeaderValue::from_static("kp"))
}

/// The id for a request: the app's `x-request-id` if it is short printable ASCII, else a new one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(INCOMING) {
        Some(v)
            if (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            v.clone()
        }
        _ => next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_sane_incoming_id_else_makes_one() {
        let mut h = HeaderMap::new();
        let a = of(&h);
        let b = of(&h);
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("kp-"));
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(of(&h), "abc-123");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"x".repeat(500)).unwrap(),
        );
        assert!(of(&h).to_str().unwrap().starts_with("kp-"));
    }
}
