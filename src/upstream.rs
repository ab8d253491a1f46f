//! An upstream at run time: where it lives, how its provider wants the key, its key store and its
//! connection pool. Built once from the config; requests only read it.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use serde::Deserialize;

use crate::client::{self, HttpClient};
use crate::config::UpstreamConfig;
use crate::key::store::Unavailable;
use crate::key::{KeySource, KeyStore};
use crate::reason::Reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
    Azure,
    Gemini,
    Generic,
}

impl Provider {
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Azure => "azure",
            Provider::Gemini => "gemini",
            Provider::Generic => "generic",
        }
    }

    /// The header each provider reads the key from, and what goes before the key in it.
    fn default_scheme(self) -> (HeaderName, &'static str) {
        match self {
            Provider::Openai | Provider::Generic => (http::header::AUTHORIZATION, "Bearer "),
            Provider::Anthropic => (HeaderName::from_static("x-api-key"), ""),
            Provider::Azure => (HeaderName::from_static("api-key"), ""),
            Provider::Gemini => (HeaderName::from_static("x-goog-api-key"), ""),
        }
    }
}

pub const ANTHROPIC_VERSION: &str = "anthropic-version";
pub const ANTHROPIC_DEFAULT_VERSION: HeaderValue = HeaderValue::from_static("2023-06-01");

pub struct Upstream {
    pub name: Arc<str>,
    pub provider: Provider,
    pub prefix: String,
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path without a trailing `/` (empty for the host root).
    base_path: String,
    pub auth_header: HeaderName,
    pub auth_prefix: String,
    pub key_source: KeySource,
    pub key: KeyStore,
    pub client: HttpClient,
    pub response_header_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, client::ClientError> {
        let (default_header, default_prefix) = cfg.provider.default_scheme();
        let parts = cfg.base_url.clone().into_parts();
        let base_path = parts
            .path_and_query
            .as_ref()
            .map(|pq| pq.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let source = cfg.key.to_string();
        Ok(Upstream {
            name: cfg.name.as_str().into(),
            provider: cfg.provider,
            prefix: cfg.prefix.clone(),
            scheme: parts.scheme.unwrap_or(Scheme::HTTPS),
            authority: parts
                .authority
                .ok_or(client::ClientError::NoHost(cfg.name.clone()))?,
            base_path,
            auth_header: cfg.auth_header.clone().unwrap_or(default_header),
            auth_prefix: cfg
                .auth_prefix
                .clone()
                .unwrap_or_else(|| default_prefix.to_owned()),
            key_source: cfg.key.clone(),
            key: KeyStore::new(&source),
            client: client::build(cfg)?,
            response_header_timeout: cfg.response_header_timeout,
        })
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The upstream URI for a request path (after the prefix) and its query.
    pub fn uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(
            self.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(rest);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_maybe_shared(pq)?)
            .build()
    }

    /// Read the key from its source and swap it in; on failure the store says why.
    /// Returns the error text when the key could not be used.
    pub async fn load_key(&self) -> Result<(), String> {
        let source = self.key_source.to_string();
        let result = match self.key_source.read().await {
            Ok(secret) => self
                .key
                .install(&secret, &self.auth_prefix, &source)
                .map(|_| ())
                .map_err(|e| (Reason::MalformedKey, e.to_string())),
            Err(e) => Err((Reason::MissingKey, e.to_string())),
        };
        result.map_err(|(reason, message)| {
            self.key.mark_unavailable(Unavailable {
                reason,
                message: message.clone(),
                source: source.into(),
            });
            message
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn upstream(base_url: &str) -> Upstream {
        let text = format!(
            "[[upstreams]]\nname = \"u\"\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nkey = {{ env = \"X\" }}\n"
        );
        let cfg = Config::parse(Path::new("k.toml"), &text).unwrap();
        Upstream::new(&cfg.upstreams[0]).unwrap()
    }

    #[test]
    fn uri_joins_base_path_rest_and_query() {
        let u = upstream("https://openrouter.ai/api/");
        assert_eq!(
            u.uri("/v1/chat/completions", Some("a=1")).unwrap(),
            "https://openrouter.ai/api/v1/chat/completions?a=1"
        );
        let u = upstream("http://127.0.0.1:9/");
        assert_eq!(
            u.uri("/v1/models", None).unwrap(),
            "http://127.0.0.1:9/v1/models"
        );
        assert_eq!(
            u.uri("/v1/models", Some("")).unwrap(),
            "http://127.0.0.1:9/v1/models"
        );
    }
}
