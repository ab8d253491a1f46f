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

/// False for paths with `.` or `..` segments, raw or percent-encoded: they could climb out of a
/// prefix or a base path once the upstream normalises them.
#[inline]
pub fn path_is_clean(path: &str) -> bool {
    if !path.bytes().any(|b| b == b'.' || b == b'%' || b == b'\\') {
        return true;
    }
    // An encoded slash or a backslash is a separator to some servers: judge the segments as they would.
    let lower = path.to_ascii_lowercase();
    let separated = lower
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    !separated.split('/').any(is_dot_segment)
}

/// `.`, `..`, `%2e`, `.%2E`, ...: one or two dots, each written raw or percent-encoded.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
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
        ] {
            assert!(!path_is_clean(bad), "{bad}");
        }
    }
}
