//! An upstream at run time: where it lives, how its provider wants the key, its key store and its
//! connection pool. Built once from the config; requests only read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, PathAndQuery};
use http::Uri;

pub mod keys;
pub mod members;
pub mod pool;

use crate::config::UpstreamConfig;
use crate::key::lifecycle::{KeyLifecycle, KeySettings};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::provider::Provider;
use crate::state::{DiagnosisRow, Store};
use pool::{UpstreamPool, Versions};

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
    /// The key's whole life here: source, key in service, keys rotated out, rotations. In a
    /// pool, its first key.
    pub key: KeyLifecycle,
    /// The pool's other keys, every key's name and weight, and their standing.
    pub keys: keys::KeyPool,
    pub pool: UpstreamPool,
    /// HTTP/1.1-only twin of `pool` whose connections are never reused: WebSocket upgrades.
    pub upgrade_pool: UpstreamPool,
    pub response_header_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub probe_path: Option<String>,
    /// `keyproxy rotate` can reach this upstream's key (an admin token is configured): advice
    /// names it only then.
    pub rotate_command: bool,
    pub metrics: Arc<UpstreamMetrics>,
    /// The last diagnoses, newest last, for /status.
    pub diagnoses: Mutex<VecDeque<Diagnosis>>,
    /// Where diagnoses are kept beyond a restart (attached at startup, when there is a store).
    store: OnceLock<Arc<Store>>,
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
    pub fn attach_store(&self, store: Arc<Store>) {
        let _ = self.store.set(store);
    }

    pub fn record_diagnosis(&self, d: Diagnosis) {
        if let Some(store) = self.store.get() {
            store.diagnosis(DiagnosisRow {
                at: crate::time::rfc3339_string(d.at),
                upstream: self.name.to_string(),
                status: d.status,
                reason: d.reason.to_owned(),
                sentence: d.message.clone(),
                fingerprint: d.key_fingerprint.clone(),
                generation: d.key_generation,
            });
        }
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

impl Upstream {
    /// `threads`: the threads that will forward through it, each keeping its own connections
    /// (the workers, plus the main runtime for probes).
    pub fn new(
        cfg: &UpstreamConfig,
        metrics: &Metrics,
        threads: usize,
    ) -> Result<Upstream, pool::PoolError> {
        let (default_header, default_prefix) = match cfg.key.minted() {
            // A minted token is an OAuth bearer token whatever the provider's key header is
            // (Azure's is `api-key`; its Entra tokens go in `Authorization: Bearer`).
            Some(_) => (http::header::AUTHORIZATION, "Bearer "),
            None => cfg.provider.auth_scheme(),
        };
        let parts = cfg.base_url.clone().into_parts();
        let base_path = parts
            .path_and_query
            .as_ref()
            .map(|pq| pq.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let authority = parts
            .authority
            .ok_or(pool::PoolError::NoHost(cfg.name.clone()))?;
        let name: Arc<str> = cfg.name.as_str().into();
        let auth_prefix = cfg
            .auth_prefix
            .clone()
            .unwrap_or_else(|| default_prefix.to_owned());
        let key_metrics = metrics.keys(&cfg.name);
        let metrics = metrics.upstream(&cfg.name);
        let settings = |i: usize, k: &crate::config::PoolKeyConfig| KeySettings {
            upstream: Arc::clone(&name),
            // `key = …` keeps its history under the upstream's name, as before pools existed.
            history: match cfg.is_pool() {
                false => Arc::clone(&name),
                true => format!("{}/{}", cfg.name, k.name).into(),
            },
            primary: i == 0,
            provider: cfg.provider,
            host: authority.host().to_owned(),
            auth_prefix: auth_prefix.clone(),
            source: k.source.clone(),
            expiry: k.expiry.clone(),
            validate_on_rotate: cfg.validate_on_rotate,
            lint: cfg.lint,
        };
        let first = cfg
            .keys
            .first()
            .ok_or(pool::PoolError::NoKey(cfg.name.clone()))?;
        // A key added at run time is set up as the first one is, with the upstream's expiry.
        let mut template = settings(0, first);
        template.expiry = cfg.expiry.clone();
        let mut lives = cfg
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyLifecycle::new(settings(i, k), Arc::clone(&metrics)));
        let key = lives
            .next()
            .ok_or(pool::PoolError::NoKey(cfg.name.clone()))?;
        let members = cfg
            .keys
            .iter()
            .map(|k| {
                let name: Arc<str> = k.name.as_str().into();
                keys::Member {
                    metric: key_metrics.member(&name),
                    name,
                    weight: k.weight,
                }
            })
            .collect();
        let keys = keys::KeyPool::new(
            members,
            lives.collect(),
            cfg.cooldown,
            cfg.grace,
            key_metrics,
            template,
            Arc::clone(&metrics),
        );
        Ok(Upstream {
            name,
            provider: cfg.provider,
            prefix: cfg.prefix.clone(),
            base_url: cfg.base_url.clone(),
            pool: UpstreamPool::new(cfg, &authority, Versions::Negotiated, threads)?,
            upgrade_pool: UpstreamPool::new(cfg, &authority, Versions::Upgrades, threads)?,
            authority,
            base_path,
            auth_header: cfg.auth_header.clone().unwrap_or(default_header),
            auth_prefix,
            key,
            keys,
            response_header_timeout: cfg.response_header_timeout,
            stream_idle_timeout: cfg.stream_idle_timeout,
            rotate_command: false,
            probe_path: cfg.probe_path.clone(),
            metrics,
            diagnoses: Mutex::new(VecDeque::with_capacity(DIAGNOSES_KEPT)),
            store: OnceLock::new(),
        })
    }

    /// Signs each request with SigV4 (`key = { aws = … }`) instead of sending a key header.
    #[inline]
    pub fn signs(&self) -> bool {
        matches!(self.key.source(), crate::key::KeySource::Aws(_))
    }

    /// Sign `req` (origin-form URI, `body` its body) with SigV4 as this upstream's pool will send
    /// it: its scheme and `Host`. The forwarding path and the probe alike.
    pub fn sign<B>(
        &self,
        creds: &crate::key::aws::Credentials,
        req: &mut http::Request<B>,
        body: &[u8],
    ) -> Result<(), crate::key::aws::SignError> {
        let (scheme, host) = self.pool.host();
        let host = host.to_str().unwrap_or_default();
        creds.sign_request(
            req,
            scheme.as_str(),
            host,
            body,
            std::time::SystemTime::now(),
        )
    }

    /// The upstream's host, for lint (another provider's key is fine on that provider's host).
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The API version segment (`v1`) when the base URL ends in it and the client's path (after
    /// the prefix) starts with it again: the request went to `/v1/v1/…`.
    pub fn doubled_version(&self, rest: &str) -> Option<&str> {
        let last = self.base_path.rsplit('/').next()?;
        let again = rest.strip_prefix('/')?.strip_prefix(last)?;
        (crate::config::is_version_segment(last) && (again.is_empty() || again.starts_with('/')))
            .then_some(last)
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
