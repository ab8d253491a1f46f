//! An upstream at run time: where it lives, how its provider wants the key, its key store and its
//! connection pool. Built once from the config; requests only read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, PathAndQuery};
use http::Uri;

use arc_swap::ArcSwap;

use crate::client::{self, Pool};
use crate::config::{ExpiryConfig, UpstreamConfig};
use crate::key::lint::LintMode;
use crate::key::rotation::{Attempt, RetiredKey};
use crate::key::{KeySource, KeyStore};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::provider::Provider;

pub struct Upstream {
    pub name: Arc<str>,
    pub provider: Provider,
    pub prefix: String,
    pub base_url: Uri,
    authority: Authority,
    /// The base URL's path without a trailing `/` (empty for the host root).
    base_path: String,
    pub auth_header: HeaderName,
    pub auth_prefix: String,
    pub key_source: KeySource,
    pub key: KeyStore,
    pub client: Pool,
    /// HTTP/1.1-only twin of `client` whose connections are never reused: WebSocket upgrades.
    pub upgrade_client: Pool,
    pub response_header_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub expiry: ExpiryConfig,
    pub validate_on_rotate: bool,
    pub probe_path: Option<String>,
    pub lint: LintMode,
    pub metrics: Arc<UpstreamMetrics>,
    /// Keys rotated out, newest first; read lock-free on the request path.
    pub retired: ArcSwap<Vec<RetiredKey>>,
    /// Rotation bookkeeping; never touched by requests.
    pub lifecycle: Mutex<Lifecycle>,
    /// One rotation at a time per upstream (a probe may be in flight).
    pub rotating: tokio::sync::Mutex<()>,
    /// The last diagnoses, newest last, for /status.
    pub diagnoses: Mutex<VecDeque<Diagnosis>>,
}

/// How many diagnoses each upstream keeps for /status.
pub const DIAGNOSES_KEPT: usize = 50;

/// One explained refusal, as /status shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnosis {
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub at: std::time::SystemTime,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
    pub key_fingerprint: Option<String>,
    pub key_generation: Option<u64>,
    pub provider_request_id: Option<String>,
}

impl Upstream {
    pub fn record_diagnosis(&self, d: Diagnosis) {
        let mut kept = self.diagnoses.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == DIAGNOSES_KEPT {
            kept.pop_front();
        }
        kept.push_back(d);
    }

    pub fn recent_diagnoses(&self) -> Vec<Diagnosis> {
        self.diagnoses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What the key lifecycle remembers between rotations.
#[derive(Debug, Default)]
pub struct Lifecycle {
    pub last_attempt: Option<Attempt>,
    /// Digest of what the source held when last read: a re-read only rotates when the source changed,
    /// so a key set through the admin API is not undone by an unchanged file.
    pub last_source_digest: Option<[u8; 32]>,
    /// (generation, threshold) of the last expiry warning, so each is logged once.
    pub expiry_warned: Option<(u64, u32)>,
}

impl Upstream {
    /// `threads`: the threads that will forward through it, each keeping its own connections
    /// (the workers, plus the main runtime for probes).
    pub fn new(
        cfg: &UpstreamConfig,
        metrics: &Metrics,
        threads: usize,
    ) -> Result<Upstream, client::ClientError> {
        let (default_header, default_prefix) = cfg.provider.auth_scheme();
        let parts = cfg.base_url.clone().into_parts();
        let base_path = parts
            .path_and_query
            .as_ref()
            .map(|pq| pq.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let source = cfg.key.to_string();
        let authority = parts
            .authority
            .ok_or(client::ClientError::NoHost(cfg.name.clone()))?;
        Ok(Upstream {
            name: cfg.name.as_str().into(),
            provider: cfg.provider,
            prefix: cfg.prefix.clone(),
            base_url: cfg.base_url.clone(),
            client: Pool::new(cfg, &authority, client::Versions::Negotiated, threads)?,
            upgrade_client: Pool::new(cfg, &authority, client::Versions::Upgrades, threads)?,
            authority,
            base_path,
            auth_header: cfg.auth_header.clone().unwrap_or(default_header),
            auth_prefix: cfg
                .auth_prefix
                .clone()
                .unwrap_or_else(|| default_prefix.to_owned()),
            key_source: cfg.key.clone(),
            key: KeyStore::new(&source),
            response_header_timeout: cfg.response_header_timeout,
            stream_idle_timeout: cfg.stream_idle_timeout,
            expiry: cfg.expiry.clone(),
            validate_on_rotate: cfg.validate_on_rotate,
            probe_path: cfg.probe_path.clone(),
            lint: cfg.lint,
            metrics: metrics.upstream(&cfg.name),
            retired: ArcSwap::from_pointee(Vec::new()),
            lifecycle: Mutex::new(Lifecycle::default()),
            rotating: tokio::sync::Mutex::new(()),
            diagnoses: Mutex::new(VecDeque::with_capacity(DIAGNOSES_KEPT)),
        })
    }

    /// The upstream's host, for lint (another provider's key is fine on that provider's host).
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// True when the upstream path is the client's path as it is (the base URL has no path).
    pub fn passes_paths_through(&self) -> bool {
        self.base_path.is_empty()
    }

    /// The upstream URI for a request path (after the prefix) and its query, in origin form: the
    /// pool adds the scheme and authority each HTTP version wants.
    pub fn uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::uri::InvalidUri> {
        let mut pq = String::with_capacity(
            self.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(rest);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::from_maybe_shared(pq).map(Uri::from)
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
        Upstream::new(&cfg.upstreams[0], &Metrics::new().unwrap(), 1).unwrap()
    }

    #[test]
    fn uri_joins_base_path_rest_and_query() {
        let u = upstream("https://openrouter.ai/api/");
        assert_eq!(
            u.uri("/v1/chat/completions", Some("a=1")).unwrap(),
            "/api/v1/chat/completions?a=1"
        );
        let u = upstream("http://127.0.0.1:9/");
        assert_eq!(u.uri("/v1/models", None).unwrap(), "/v1/models");
        assert_eq!(u.uri("/v1/models", Some("")).unwrap(), "/v1/models");
    }
}
