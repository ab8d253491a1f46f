//! Watching a response body as it passes, with no byte held back and bounded work per chunk:
//! the provider's `usage` token counts (JSON bodies and the final streamed events) are counted,
//! with the model the response names in its first bytes, and an in-band stream error (an SSE
//! `event: error` after a 200) is logged.

use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;

use crate::metrics::UpstreamMetrics;

/// Everything watched on one response body. Token counts are added by `finish`, when the body is
/// done or dropped (the body holds the upstream's metrics; one reference per request is enough).
pub struct Tap {
    usage: UsageTap,
    model: ModelTap,
    errors: Option<SseTap>,
    client: usize,
}

impl Tap {
    pub fn new(client: usize, errors: Option<SseTap>) -> Tap {
        Tap {
            usage: UsageTap::default(),
            model: ModelTap::default(),
            errors,
            client,
        }
    }

    /// Count the tokens seen.
    pub fn finish(&self, metrics: &UpstreamMetrics) {
        let (input, output) = self.usage.totals();
        if input + output > 0 {
            metrics.tokens(self.client, self.model.model(), input, output);
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        self.usage.observe(chunk);
        self.model.observe(chunk);
        if let Some(errors) = &mut self.errors {
            errors.observe(chunk);
        }
    }
}

/// The model a response names (`"model": "gpt-4o-mini-2024-07-18"`: OpenAI's JSON and first
/// stream event, Anthropic's message and `message_start`), looked for in its first bytes only and
/// kept only when it looks like a model name, so the daily usage table stays small.
#[derive(Debug, Default)]
pub struct ModelTap {
    looked_at: usize,
    model: Option<Box<str>>,
}

/// How far into a response the model is looked for.
const MODEL_WINDOW: usize = 2048;
/// Longer than any model name; a longer value is not counted by name.
const MODEL_MAX: usize = 64;

impl ModelTap {
    pub fn observe(&mut self, chunk: &[u8]) {
        if self.model.is_some() || self.looked_at >= MODEL_WINDOW {
            return;
        }
        let look = &chunk[..chunk.len().min(MODEL_WINDOW - self.looked_at)];
        self.looked_at += look.len();
        let Some(at) = MODEL.find(look) else { return };
        let rest = &look[at + b"\"model\"".len()..];
        let Some(open) = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace() && *b != b':')
        else {
            return;
        };
        let Some(value) = rest[open..].strip_prefix(b"\"") else {
            return;
        };
        let Some(end) = value.iter().position(|b| *b == b'"') else {
            return;
        };
        let name = &value[..end];
        let plausible = !name.is_empty()
            && name.len() <= MODEL_MAX
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:/@".contains(b));
        if plausible {
            self.model = std::str::from_utf8(name).ok().map(Into::into);
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

/// Token counts from `"usage": {...}` objects: OpenAI (`prompt_tokens`/`completion_tokens`, or
/// `input_tokens`/`output_tokens` in the Responses API) and Anthropic (`input_tokens` in
/// `message_start`, the cumulative `output_tokens` in `message_delta`). The largest value seen for
/// each wins, so a count repeated across events is not added twice.
#[derive(Debug, Default)]
pub struct UsageTap {
    /// The tail of a `usage` object cut off at a chunk boundary.
    pending: Vec<u8>,
    input: u64,
    output: u64,
}

/// How much after `"usage"` is read for the counts.
const USAGE_WINDOW: usize = 512;

impl UsageTap {
    pub fn observe(&mut self, chunk: &[u8]) {
        if !self.pending.is_empty() {
            let need = USAGE_WINDOW
                .saturating_sub(self.pending.len())
                .min(chunk.len());
            let mut window = std::mem::take(&mut self.pending);
            window.extend_from_slice(&chunk[..need]);
            self.read_window(&window);
        }
        let mut from = 0;
        while let Some(at) = USAGE.find(&chunk[from..]) {
            let start = from + at;
            let end = (start + USAGE_WINDOW).min(chunk.len());
            if end - start < USAGE_WINDOW && end == chunk.len() && !closes(&chunk[start..end]) {
                self.pending = chunk[start..end].to_vec();
                return;
            }
            self.read_window(&chunk[start..end]);
            from = start + 7;
        }
        // A `"usage"` marker itself split across chunks.
        let tail = &chunk[chunk.len().saturating_sub(6)..];
        if let Some(i) = (0..tail.len()).find(|&i| b"\"usage\"".starts_with(&tail[i..])) {
            self.pending = tail[i..].to_vec();
        }
    }

    fn read_window(&mut self, window: &[u8]) {
        let Some(rest) = window.strip_prefix(b"\"usage\"") else {
            return;
        };
        // Only the object itself: `"usage": {...}` up to its closing brace.
        let Some(open) = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace() && *b != b':')
        else {
            return;
        };
        if rest[open] != b'{' {
            return;
        }
        let object = &rest[open..];
        let window = match object_end(object) {
            Some(end) => &object[..end],
            None => object,
        };
        for key in [&b"\"prompt_tokens\""[..], b"\"input_tokens\""] {
            if let Some(n) = number_after(window, key) {
                self.input = self.input.max(n);
            }
        }
        for key in [&b"\"completion_tokens\""[..], b"\"output_tokens\""] {
            if let Some(n) = number_after(window, key) {
                self.output = self.output.max(n);
            }
        }
    }

    pub fn totals(&self) -> (u64, u64) {
        (self.input, self.output)
    }
}

/// True when the `usage` object in `window` is complete (its braces balance).
fn closes(window: &[u8]) -> bool {
    window
        .iter()
        .position(|b| *b == b'{')
        .is_some_and(|i| object_end(&window[i..]).is_some())
}

/// The length of the JSON object that starts at `object[0] == b'{'`, if it ends in `object`.
fn object_end(object: &[u8]) -> Option<usize> {
    let mut depth = 0i32;
    for (i, &b) in object.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The searchers for the markers looked for in every chunk, built once (building one costs more
/// than searching a short chunk with it).
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"model\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error"));

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The integer after `"key":` inside the usage object (not inside a nested `_details` object's name).
fn number_after(window: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(window, key)? + key.len();
    let rest = &window[at..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let digits: Vec<u8> = rest[colon + 1..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

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
    ERROR
        .find_iter(bytes)
        .find(|&i| PRECEDED_BY.iter().any(|p| bytes[..i].ends_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_read_from_the_first_bytes_only_and_only_when_it_looks_like_one() {
        let model = |chunks: &[&[u8]]| {
            let mut tap = ModelTap::default();
            for c in chunks {
                tap.observe(c);
            }
            tap.model().map(str::to_owned)
        };
        assert_eq!(
            model(&[br#"{"id":"x","object":"chat.completion","model": "gpt-4o-mini-2024-07-18","choices":[]}"#]),
            Some("gpt-4o-mini-2024-07-18".into())
        );
        assert_eq!(
            model(&[
                b"event: message_start\ndata: {\"message\":{\"model\":\"claude-sonnet-4-5\"}}"
            ]),
            Some("claude-sonnet-4-5".into())
        );
        assert_eq!(
            model(&[br#"{"model":"<script>"}"#]),
            None,
            "not a model name"
        );
        assert_eq!(model(&[br#"{"model":""}"#]), None);
        let late = format!(
            "{{\"pad\":\"{}\",\"model\":\"gpt-4o\"}}",
            "x".repeat(MODEL_WINDOW)
        );
        assert_eq!(model(&[late.as_bytes()]), None, "past the window");
        assert_eq!(
            model(&[br#"{"model":"gpt-4o"}"#, br#"{"model":"other"}"#]),
            Some("gpt-4o".into()),
            "the first one counts"
        );
    }

    fn usage_of(chunks: &[&[u8]]) -> (u64, u64) {
        let mut u = UsageTap::default();
        for c in chunks {
            u.observe(c);
        }
        u.totals()
    }

    #[test]
    fn usage_from_json_bodies() {
        let openai = br#"{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(usage_of(&[openai]), (12, 34));
        let anthropic = br#"{"id":"msg_1","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":7,"output_tokens":9}}"#;
        assert_eq!(usage_of(&[anthropic]), (7, 9));
        assert_eq!(
            usage_of(&[&openai[..100], &openai[100..150], &openai[150..]]),
            (12, 34),
            "split anywhere"
        );
        for cut in 1..openai.len() {
            assert_eq!(
                usage_of(&[&openai[..cut], &openai[cut..]]),
                (12, 34),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn usage_from_streams() {
        let anthropic: [&[u8]; 3] = [
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"Hello\"}}\n\n",
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ];
        assert_eq!(usage_of(&anthropic), (25, 15));
        let openai: [&[u8]; 2] = [
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\ndata: [DONE]\n\n",
        ];
        assert_eq!(usage_of(&openai), (8, 2));
        assert_eq!(usage_of(&[b"{\"text\":\"no usage here\"}"]), (0, 0));
        let null_then_other: &[u8] =
            b"data: {\"usage\":null,\"tool\":{\"arguments\":\"{\\\"input_tokens\\\": 99}\"}}\n\n";
        assert_eq!(
            usage_of(&[null_then_other]),
            (0, 0),
            "only the usage object counts"
        );
    }

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
