//! `Secret`: key material that prints as `*****`, is wiped from memory on drop, and is registered
//! with `redact` so that no output ever carries it.

use std::fmt;
use zeroize::Zeroizing;

/// A key or token. `Debug`/`Display` never show it; the bytes are zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Every secret is made here, so every secret is known to the redactor from its first moment.
    pub fn new(text: String) -> Self {
        crate::redact::register(&text);
        Secret(Zeroizing::new(text))
    }

    /// Secrets joined with text that is not secret (an aws bundle: JSON names and the region),
    /// each part registered already when it was read. The whole is not registered, or the
    /// redactor would mask that public glue wherever it appears (`"region":"eu-west-3"`).
    pub(super) fn bundle(text: String) -> Self {
        Secret(Zeroizing::new(text))
    }

    /// The key itself. Call sites are few and easy to audit: building the header, hashing, lint.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(*****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_the_key() {
        let s = Secret::new("sk-proj-abcdefghijklmnop".into());
        assert_eq!(format!("{s}"), "*****");
        assert_eq!(format!("{s:?}"), "Secret(*****)");
        assert_eq!(s.expose(), "sk-proj-abcdefghijklmnop");
    }
}
