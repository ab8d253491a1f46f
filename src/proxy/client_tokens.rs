//! Client tokens ("virtual keys"): when `[[clients]]` are configured, every proxied request must
//! present one — as `Authorization: Bearer`, `x-api-key`, `api-key`, `x-goog-api-key` or `key=`,
//! whichever the app's SDK sends — and it is compared in constant time. Only hashes are kept.

use http::{HeaderMap, HeaderName};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ClientConfig;
use crate::headers::presented_credential;
use crate::key::store::digest;
use crate::key::token;

#[derive(Debug, thiserror::Error)]
#[error("client {name}: {problem}")]
pub struct ClientTokenError {
    pub name: String,
    pub problem: String,
}

pub struct ClientTokens {
    names: Vec<String>,
    hashes: Vec<[u8; 32]>,
}

impl ClientTokens {
    /// Read every client's token; a missing or weak token stops startup (fail closed).
    pub async fn load(configs: &[ClientConfig]) -> Result<ClientTokens, ClientTokenError> {
        let mut clients = ClientTokens {
            names: Vec::new(),
            hashes: Vec::new(),
        };
        for c in configs {
            let error = |problem: String| ClientTokenError {
                name: c.name.clone(),
                problem,
            };
            let hash = token::load(&c.token)
                .await
                .map_err(|e| error(e.to_string()))?;
            clients.names.push(c.name.clone());
            clients.hashes.push(hash);
        }
        Ok(clients)
    }

    pub fn none() -> ClientTokens {
        ClientTokens {
            names: Vec::new(),
            hashes: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// The index of the client whose token the request carries (0 when no clients are
    /// configured); `None` when clients are configured and none matches.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        custom: &[HeaderName],
    ) -> Option<usize> {
        if self.is_empty() {
            return Some(0);
        }
        let presented = presented_credential(headers, query, custom)?;
        let hash = digest(presented);
        // Look at every entry, whatever matched, so timing says nothing about which.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, expected) in self.hashes.iter().enumerate() {
            let hit = hash.ct_eq(expected);
            index.conditional_assign(&(i as u64), hit);
            found |= hit;
        }
        bool::from(found).then_some(index as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeySource;

    #[tokio::test]
    async fn identifies_by_any_credential_header() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, token: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, token).unwrap();
            ClientConfig {
                name: name.into(),
                token: KeySource::File(p),
            }
        };
        let clients = ClientTokens::load(&[
            write("notebook", "notebook-token-0123456789"),
            write("ci", "ci-token-0123456789abcdef"),
        ])
        .await
        .unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(clients.identify(&h, None, &[]), None);
        h.insert(
            "authorization",
            "Bearer ci-token-0123456789abcdef".parse().unwrap(),
        );
        assert_eq!(clients.identify(&h, None, &[]), Some(1));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "notebook-token-0123456789".parse().unwrap());
        assert_eq!(clients.identify(&h, None, &[]), Some(0));
        h.insert("x-api-key", "notebook-token-0123456788".parse().unwrap());
        assert_eq!(clients.identify(&h, None, &[]), None);
        assert_eq!(
            clients.identify(
                &HeaderMap::new(),
                Some("alt=sse&key=ci-token-0123456789abcdef"),
                &[]
            ),
            Some(1)
        );
        assert_eq!(
            ClientTokens::none().identify(&HeaderMap::new(), None, &[]),
            Some(0)
        );

        let Err(weak) = ClientTokens::load(&[write("weak", "short")]).await else {
            panic!("a weak token was accepted")
        };
        assert!(weak.to_string().contains("at least 16"));
    }
}
