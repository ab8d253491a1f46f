//! Request ids: the app's own `x-request-id` when it sends a sane one, else a fresh one; returned
//! as `x-keyproxy-request-id` and put in every log line about the request.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

pub static RESPONSE_HEADER: HeaderName = HeaderName::from_static("x-keyproxy-request-id");
static INCOMING: HeaderName = HeaderName::from_static("x-request-id");

/// A process-unique prefix (start time and pid) and a counter: unique without randomness per request.
/// Each thread counts on its own (a counter shared by the workers moved its cache line between
/// cores on every request); the low 12 bits of the number say which thread.
fn next() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static COUNTER: Cell<u64> = Cell::new(THREADS.fetch_add(1, Ordering::Relaxed) & 0xfff);
    }
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
        nanos ^ std::process::id().rotate_left(16)
    });
    let n = COUNTER.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1 << 12));
        n
    });
    id(prefix, n)
}

/// `kp-{prefix:08x}-{n:x}`, written without the formatting machinery (this runs per request).
fn id(prefix: u32, n: u64) -> HeaderValue {
    // "kp-" + 8 hex digits + "-" + the counter in hex without leading zeros.
    let mut id = [0u8; 3 + 8 + 1 + 16];
    id[..3].copy_from_slice(b"kp-");
    hex(u64::from(prefix), 8, &mut id[3..11]);
    id[11] = b'-';
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    hex(n, digits, &mut id[12..12 + digits]);
    HeaderValue::from_bytes(&id[..12 + digits]).unwrap_or(HeaderValue::from_static("kp"))
}

/// The low `digits` nibbles of `n` as lowercase hex into `out`.
fn hex(mut n: u64, digits: usize, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out[..digits].iter_mut().rev() {
        *slot = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The id for a request: the app's `x-request-id` if it is short printable ASCII, else a new one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&INCOMING) {
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

    #[test]
    fn ids_read_like_the_formatted_ones() {
        for (prefix, n) in [(0, 0), (0xdead_beef, 1), (7, 0xabc), (u32::MAX, u64::MAX)] {
            assert_eq!(id(prefix, n), format!("kp-{prefix:08x}-{n:x}").as_str());
        }
    }
}
