//! Prefix routing: the longest configured prefix that matches on a `/` boundary wins,
//! and the prefix is cut off before forwarding.

/// Routes, longest prefix first. A handful of upstreams: a linear scan beats any map.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(String, usize)>,
}

impl Router {
    /// `prefixes[i]` is upstream i's normalised prefix (`/` or `/name` with no trailing slash).
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> Router {
        let mut routes: Vec<(String, usize)> = prefixes
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p.to_owned(), i))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Router { routes }
    }

    /// The upstream index and the path to forward (always starting with `/`).
    #[inline]
    pub fn route<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        for (prefix, idx) in &self.routes {
            if prefix == "/" {
                return Some((*idx, path));
            }
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() {
                    return Some((*idx, "/"));
                }
                if rest.starts_with('/') {
                    return Some((*idx, rest));
                }
            }
        }
        None
    }
}

/// False for paths with `.` or `..` segments: raw, percent-encoded once or twice (`%2e`,
/// `%252e`), separated by `/`, `\\` or an encoded slash, or carrying a path parameter (`..;x`,
/// `.;`, which Tomcat and Spring strip before normalising). Any of them could climb out of a
/// prefix or a base path once some server along the way normalises it.
#[inline]
pub fn path_is_clean(path: &str) -> bool {
    if !path.bytes().any(|b| b == b'.' || b == b'%' || b == b'\\') {
        return true;
    }
    let once = percent_decode(path.as_bytes());
    let twice = percent_decode(&once);
    [path.as_bytes(), &once, &twice]
        .iter()
        .all(|p| !p.split(|b| *b == b'/' || *b == b'\\').any(is_dot_segment))
}

/// `.` or `..`, ignoring a `;parameter` after it.
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment.split(|b| *b == b';').next().unwrap_or(segment);
    name == b"." || name == b".."
}

/// One round of percent-decoding; malformed escapes stay as they are.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_on_segment_boundary() {
        let r = Router::new(["/", "/anthropic", "/anthropic/beta"]);
        assert_eq!(r.route("/v1/chat"), Some((0, "/v1/chat")));
        assert_eq!(r.route("/anthropic/v1/messages"), Some((1, "/v1/messages")));
        assert_eq!(r.route("/anthropic"), Some((1, "/")));
        assert_eq!(r.route("/anthropic/beta/x"), Some((2, "/x")));
        assert_eq!(r.route("/anthropicx/v1"), Some((0, "/anthropicx/v1")));
    }

    #[test]
    fn no_root_means_no_route() {
        let r = Router::new(["/a", "/b"]);
        assert_eq!(r.route("/c/x"), None);
        assert_eq!(r.route("/ab"), None);
        assert_eq!(r.route("/b/x"), Some((1, "/x")));
    }

    #[test]
    fn dot_segments_are_unclean() {
        assert!(path_is_clean("/v1/chat/completions"));
        assert!(path_is_clean("/v1/file.json"));
        assert!(path_is_clean("/v1/...")); // three dots is a name, not a climb
        assert!(path_is_clean("/v1/a;b/c.d"));
        assert!(path_is_clean("/v1/files/100%25"));
        for bad in [
            "/a/../b",
            "/..",
            "/a/.",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/./x",
            "/..%2f..%2fadmin",
            "/a\\..\\b",
            "/x/..%5Cy",
            "/a/%252e%252e/b",
            "/a/%252E./b",
            "/a/..;/b",
            "/a/..;jsessionid=1/b",
            "/a/.;/b",
            "/a/%2e%2e;x/b",
            "/a/%25%32%65%25%32%65/b",
        ] {
            assert!(!path_is_clean(bad), "{bad}");
        }
    }
}
