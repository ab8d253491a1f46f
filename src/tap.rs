//! Watching an event stream as it passes: an in-band error (an SSE `event: error`, or a
//! `data: {"error":...}` after a 200) is logged once per stream. Every byte goes on unchanged,
//! and the work per chunk is one linear scan.

use std::sync::Arc;

/// How much of the previous chunk is kept, to see a marker split across two chunks.
const CARRY: usize = 24;
/// How much of the error event goes into the log.
const EXCERPT: usize = 400;

pub struct SseTap {
    upstream: Arc<str>,
    path: String,
    carry: Vec<u8>,
    reported: bool,
}

impl SseTap {
    pub fn new(upstream: Arc<str>, path: &str) -> SseTap {
        SseTap {
            upstream,
            path: path.to_owned(),
            carry: Vec::with_capacity(CARRY * 2),
            reported: false,
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        if self.reported {
            return;
        }
        let seam_hit = if self.carry.is_empty() {
            false
        } else {
            let mut seam = std::mem::take(&mut self.carry);
            seam.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            let hit = find_error(&seam).is_some();
            seam.clear();
            self.carry = seam;
            hit
        };
        let at = find_error(chunk).or(if seam_hit { Some(0) } else { None });
        if let Some(at) = at {
            self.reported = true;
            let start = chunk[..at]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let end = (start + EXCERPT).min(chunk.len());
            let excerpt = String::from_utf8_lossy(&chunk[start..end]);
            tracing::warn!(
                upstream = %self.upstream,
                path = %self.path,
                "the provider reported an error inside the event stream (after a 200): {}",
                excerpt.trim()
            );
            return;
        }
        self.carry.clear();
        self.carry
            .extend_from_slice(&chunk[chunk.len().saturating_sub(CARRY)..]);
    }

    pub fn reported(&self) -> bool {
        self.reported
    }
}

/// The position of an `error` that is an SSE event name, a top-level `"error"` member or a
/// `"type":"error"` value.
fn find_error(bytes: &[u8]) -> Option<usize> {
    const PRECEDED_BY: [&[u8]; 6] = [
        b"event: ",
        b"event:",
        b"{\"",
        b"{ \"",
        b"\"type\":\"",
        b"\"type\": \"",
    ];
    (0..bytes.len().saturating_sub(4)).find(|&i| {
        &bytes[i..i + 5] == b"error" && PRECEDED_BY.iter().any(|p| bytes[..i].ends_with(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap() -> SseTap {
        SseTap::new("openai".into(), "/v1/chat/completions")
    }

    #[test]
    fn finds_in_band_errors_of_each_shape() {
        for stream in [
            &b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n"[..],
            b"data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n",
            b"data: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\"}\n\n",
        ] {
            let mut t = tap();
            t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"an error in the text is fine\"}}]}\n\n");
            assert!(!t.reported());
            t.observe(stream);
            assert!(t.reported(), "{}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn a_marker_split_across_chunks_is_found() {
        let mut t = tap();
        t.observe(b"data: {\"n\":1}\n\nevent: er");
        t.observe(b"ror\ndata: {}\n\n");
        assert!(t.reported());
    }

    #[test]
    fn ordinary_content_mentioning_errors_is_not_reported() {
        let mut t = tap();
        t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"error: the word error\"}}]}\n\n");
        t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\" quoted\"}}]}\n\n");
        assert!(!t.reported());
    }
}
