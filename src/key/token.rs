//! The one rule for the tokens people choose themselves — client tokens (`[[clients]]`) and the
//! admin token — used by the proxy, the admin API and `keyproxy check` alike, so `check` can never
//! show ✓ for a token the server then refuses. Only a hash of an accepted token is kept.

use super::source::{KeyError, KeySource};
use super::store::digest;
use super::Secret;

/// Tokens shorter than this are too easy to guess.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token is not accepted, in a sentence that names its source and never the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the token from {from} must be at least {MIN_TOKEN_LEN} printable characters with no spaces")]
    Weak { from: String },
    #[error("{0}")]
    Unreadable(String),
}

/// The accepted token, as the SHA-256 the server compares against (in constant time).
pub fn accept(token: &Secret, source: &KeySource) -> Result<[u8; 32], TokenError> {
    let t = token.expose();
    if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Weak {
            from: source.to_string(),
        });
    }
    Ok(digest(t))
}

/// Read a token from its source and judge it by the rule.
pub async fn load(source: &KeySource) -> Result<[u8; 32], TokenError> {
    let token = source
        .read()
        .await
        .map_err(|e: KeyError| TokenError::Unreadable(e.to_string()))?;
    accept(&token, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(t: &str) -> bool {
        accept(&Secret::new(t.into()), &KeySource::Env("T".into())).is_ok()
    }

    #[test]
    fn sixteen_printable_characters_without_spaces() {
        assert!(judge("0123456789abcdef"));
        assert!(!judge("0123456789abcde"));
        assert!(!judge(" 0123456789abcdef"));
        assert!(!judge("0123456789abcdef "));
        assert!(!judge("01234567 89abcdef"));
        assert!(!judge("0123456789abcdeé"));
    }

    #[test]
    fn the_error_names_the_source_not_the_token() {
        let e = accept(
            &Secret::new("short-secret".into()),
            &KeySource::Env("ADMIN".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ADMIN") && !e.contains("short-secret"), "{e}");
    }
}
