//! The Prometheus registry and the handles the rest of the code increments. Every series of a
//! configured upstream exists from startup (at zero), and label values are resolved once, so the
//! request path only touches atomics. No label or value ever holds a key.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reason::Reason;

/// Latency buckets (seconds) from a fast local hop to a long generation.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    /// Configured client names; when any, requests, refusals and tokens get a `client` label.
    clients: Vec<String>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    in_flight: IntGaugeVec,
    auth_failures: IntCounterVec,
    rotations: IntCounterVec,
    key_generation: IntGaugeVec,
    key_loaded: GaugeVec,
    key_expiry: GaugeVec,
    key_usable: IntGaugeVec,
    upstream_errors: IntCounterVec,
    client_credentials: IntCounterVec,
    tokens: IntCounterVec,
    websockets_open: IntGaugeVec,
    key_state: IntGaugeVec,
    key_requests: IntCounterVec,
    failovers: IntCounterVec,
    pool_key_expiry: GaugeVec,
    credential_refreshes: IntCounterVec,
    /// Requests the browser guard turned away, by listener and reason (pre-resolved at startup).
    refusals: [IntCounter; 4],
    /// `keyproxy_client_errors_total` by kind, in `ClientError::ALL` order.
    client_errors: [IntCounter; 4],
}

/// How a credential the client sent compares with the keys keyproxy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialMatch {
    /// The app holds the key keyproxy injects anyway: it can drop it.
    Current,
    /// The app holds a key that was rotated out.
    Retired,
    /// A dummy or some other value.
    Unknown,
}

impl CredentialMatch {
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialMatch::Current => "current",
            CredentialMatch::Retired => "retired",
            CredentialMatch::Unknown => "unknown",
        }
    }
}

/// What went wrong talking to the upstream (`keyproxy_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Refused, unreachable, DNS, connect timeout.
    Connect,
    /// Handshake failed: unknown CA, wrong name, protocol.
    Tls,
    /// No response headers within `response_header_timeout`.
    Timeout,
    /// The connection broke before the response headers.
    Reset,
    /// The response body broke off after the headers.
    Body,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 5] = [
        UpstreamError::Connect,
        UpstreamError::Tls,
        UpstreamError::Timeout,
        UpstreamError::Reset,
        UpstreamError::Body,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Tls => "tls",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Body => "body",
        }
    }
}

/// What the app did wrong (`keyproxy_client_errors_total{kind}`): never counted as an upstream
/// error, and no shipped alert fires on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// A request body whose framing is broken (bad chunk, connection ended inside it): 400.
    MalformedBody,
    /// A request body that stopped arriving for `client_body_timeout`: 408.
    BodyTimeout,
    /// The app closed its connection before the response: 499, the upstream request cancelled.
    Disconnected,
    /// A request head that did not arrive whole within `client_header_timeout`.
    HeaderTimeout,
}

impl ClientError {
    pub const ALL: [ClientError; 4] = [
        ClientError::MalformedBody,
        ClientError::BodyTimeout,
        ClientError::Disconnected,
        ClientError::HeaderTimeout,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ClientError::MalformedBody => "malformed_body",
            ClientError::BodyTimeout => "body_timeout",
            ClientError::Disconnected => "disconnected",
            ClientError::HeaderTimeout => "header_timeout",
        }
    }
}

/// The families of one upstream's keys; each key's own series come from `member`.
pub struct KeyMetrics {
    upstream: String,
    state: IntGaugeVec,
    family: IntCounterVec,
    expiry: GaugeVec,
    failovers: IntCounterVec,
}

/// One key of a pool: its state gauge and request counters, resolved when it joins.
pub struct KeyMetric {
    upstream: String,
    name: Arc<str>,
    state: IntGauge,
    /// `key_requests_total` by status code (resolved on first use of each code).
    requests: Box<[OnceLock<IntCounter>]>,
    family: IntCounterVec,
    state_family: IntGaugeVec,
    expiry: GaugeVec,
}

impl KeyMetrics {
    /// The series of key `name`, at zero from now.
    pub fn member(&self, name: &Arc<str>) -> KeyMetric {
        let labels = [self.upstream.as_str(), &**name];
        self.family
            .with_label_values(&[labels[0], labels[1], "200"]);
        KeyMetric {
            upstream: self.upstream.clone(),
            name: Arc::clone(name),
            state: self.state.with_label_values(&labels),
            requests: (0..500).map(|_| OnceLock::new()).collect(),
            family: self.family.clone(),
            state_family: self.state.clone(),
            expiry: self.expiry.clone(),
        }
    }

    /// A request sent again on another key after `reason` (the error path: resolved here).
    pub fn failover(&self, reason: Reason) {
        self.failovers
            .with_label_values(&[self.upstream.as_str(), reason.as_str()])
            .inc();
    }
}

impl KeyMetric {
    /// The key's state code (see `keyproxy_key_state`).
    pub fn state(&self, code: i64) {
        self.state.set(code);
    }

    /// One request answered through this key.
    pub fn request(&self, status: u16) {
        if let Some(slot) = self.requests.get(usize::from(status).wrapping_sub(100)) {
            slot.get_or_init(|| {
                let status = status.to_string();
                self.family.with_label_values(&[
                    self.upstream.as_str(),
                    &*self.name,
                    status.as_str(),
                ])
            })
            .inc();
        }
    }

    /// `keyproxy_pool_key_expiry_timestamp_seconds`: shown only when known.
    pub fn expiry(&self, unix_seconds: Option<f64>) {
        let labels = [self.upstream.as_str(), &*self.name];
        match unix_seconds {
            Some(at) => self.expiry.with_label_values(&labels).set(at),
            None => {
                let _ = self.expiry.remove_label_values(&labels);
            }
        }
    }

    /// The key left the pool: its series go (an alert must not count it).
    pub fn remove(&self) {
        let labels = [self.upstream.as_str(), &*self.name];
        let _ = self.state_family.remove_label_values(&labels);
        let _ = self.expiry.remove_label_values(&labels);
    }
}

/// One upstream's pre-resolved series.
pub struct UpstreamMetrics {
    name: String,
    requests: IntCounterVec,
    /// Per client (one entry when no clients are configured).
    per_client: Vec<ClientSeries>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub in_flight: IntGauge,
    rotations: IntCounterVec,
    auth_failures: IntCounterVec,
    credentials: [IntCounter; 3],
    upstream_errors: [IntCounter; 5],
    pub websockets_open: IntGauge,
    pub key_generation: IntGauge,
    pub key_loaded: Gauge,
    key_expiry_vec: GaugeVec,
    pub key_usable: IntGauge,
    credential_refreshes: IntCounterVec,
    /// Where token counts by model go besides the counters (the state store's daily usage).
    usage: OnceLock<Arc<dyn UsageSink>>,
}

/// Receives each response's token counts with its client and model. Must not block: it is called
/// when a response body ends.
pub trait UsageSink: Send + Sync {
    fn record(&self, client: Option<&str>, model: &str, input: u64, output: u64);
}

/// The series one client's traffic to one upstream moves.
struct ClientSeries {
    /// The `client` label value, when clients are configured.
    client: Option<String>,
    /// `requests_total` by status code, resolved on first use of each code.
    by_status: Box<[OnceLock<IntCounter>]>,
    tokens_input: IntCounter,
    tokens_output: IntCounter,
}

/// Label values in family order: upstream, [client], last.
fn labels<'a>(upstream: &'a str, client: Option<&'a str>, last: &'a str) -> Vec<&'a str> {
    match client {
        Some(c) => vec![upstream, c, last],
        None => vec![upstream, last],
    }
}

impl Metrics {
    /// Metrics without client labels (no `[[clients]]` configured).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        Metrics::with_clients(&[])
    }

    pub fn with_clients(clients: &[String]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &["upstream"])?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = int_gauge(
            "keyproxy_build_info",
            "keyproxy build information; always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let with_client = |last: &'static str| -> Vec<&'static str> {
            if clients.is_empty() {
                vec!["upstream", last]
            } else {
                vec!["upstream", "client", last]
            }
        };
        Ok(Metrics {
            clients: clients.to_vec(),
            requests: counter(
                "keyproxy_requests_total",
                "Proxied requests by upstream (and client) and response status.",
                &with_client("status"),
            )?,
            request_duration: histogram(
                "keyproxy_request_duration_seconds",
                "Time from receiving a request to sending the response headers, keyproxy included.",
            )?,
            upstream_duration: histogram(
                "keyproxy_upstream_duration_seconds",
                "Time the upstream took to answer with response headers.",
            )?,
            in_flight: int_gauge(
                "keyproxy_requests_in_flight",
                "Requests whose response is not finished yet (open streams included).",
                &["upstream"],
            )?,
            auth_failures: counter(
                "keyproxy_auth_failures_total",
                "Provider refusals (401/403/429, key-related 400/402) by diagnosed reason code.",
                &with_client("reason"),
            )?,
            rotations: counter(
                "keyproxy_key_rotations_total",
                "Key rotation attempts by trigger (startup, file, periodic, sighup, admin, refresh) and result (applied, rejected).",
                &["upstream", "trigger", "result"],
            )?,
            key_generation: int_gauge(
                "keyproxy_key_generation",
                "Generation of the key in use (1 = first key loaded).",
                &["upstream"],
            )?,
            key_loaded: gauge(
                "keyproxy_key_loaded_timestamp_seconds",
                "When the key in use was loaded (Unix time).",
                &["upstream"],
            )?,
            key_expiry: gauge(
                "keyproxy_key_expiry_timestamp_seconds",
                "When the key in use expires (Unix time); absent when unknown.",
                &["upstream"],
            )?,
            key_usable: int_gauge(
                "keyproxy_key_usable",
                "1 when the upstream has a loaded, lint-clean key; else 0.",
                &["upstream"],
            )?,
            upstream_errors: counter(
                "keyproxy_upstream_errors_total",
                "Failures talking to the upstream by kind (connect, tls, timeout, reset, body).",
                &["upstream", "kind"],
            )?,
            client_credentials: counter(
                "keyproxy_client_credentials_total",
                "Credentials clients sent (and keyproxy stripped), by whether they match the current key, a retired key, or nothing known.",
                &["upstream", "match"],
            )?,
            tokens: counter(
                "keyproxy_tokens_total",
                "Tokens the provider reported in its usage fields, by kind (input, output).",
                &with_client("kind"),
            )?,
            websockets_open: int_gauge(
                "keyproxy_websockets_open",
                "WebSocket connections currently spliced through to the upstream.",
                &["upstream"],
            )?,
            key_state: int_gauge(
                "keyproxy_key_state",
                "Each key of an upstream by its configured name: 0 active, 1 cooling (rate-limited), 2 quarantined (refused for the key itself), 3 no key loaded.",
                &["upstream", "key"],
            )?,
            key_requests: counter(
                "keyproxy_key_requests_total",
                "Requests of an upstream with several keys, by the key that answered and response status.",
                &["upstream", "key", "status"],
            )?,
            failovers: counter(
                "keyproxy_failovers_total",
                "Requests sent again on another key of the pool after a key-class refusal, by the refusal's reason.",
                &["upstream", "reason"],
            )?,
            pool_key_expiry: gauge(
                "keyproxy_pool_key_expiry_timestamp_seconds",
                "When each key of an upstream with several keys expires (Unix time), by its name; absent when unknown.",
                &["upstream", "key"],
            )?,
            credential_refreshes: counter(
                "keyproxy_credential_refreshes_total",
                "Token credentials (oauth2, azure_ad, google_service_account) minted at the token endpoint, by result (ok, failed).",
                &["upstream", "result"],
            )?,
            refusals: {
                let family = counter(
                    "keyproxy_refusals_total",
                    "Requests refused before anything was forwarded, by listener (proxy, admin) and reason (host_not_allowed, origin_not_allowed).",
                    &["listener", "reason"],
                )?;
                let series = |listener: &str, reason: Reason| {
                    family.with_label_values(&[listener, reason.as_str()])
                };
                [
                    series("proxy", Reason::HostNotAllowed),
                    series("proxy", Reason::OriginNotAllowed),
                    series("admin", Reason::HostNotAllowed),
                    series("admin", Reason::OriginNotAllowed),
                ]
            },
            client_errors: {
                let family = counter(
                    "keyproxy_client_errors_total",
                    "Requests the app failed to deliver or waited out, by kind (malformed_body, body_timeout, disconnected, header_timeout); never upstream errors.",
                    &["kind"],
                )?;
                ClientError::ALL.map(|k| family.with_label_values(&[k.as_str()]))
            },
            registry,
        })
    }

    /// Resolve every series of one upstream, so they exist (at zero) from startup.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        let clients: Vec<Option<String>> = if self.clients.is_empty() {
            vec![None]
        } else {
            self.clients.iter().cloned().map(Some).collect()
        };
        let per_client = clients
            .into_iter()
            .map(|client| {
                let c = client.as_deref();
                for reason in Reason::provider_refusals() {
                    self.auth_failures
                        .with_label_values(&labels(name, c, reason.as_str()));
                }
                self.requests.with_label_values(&labels(name, c, "200"));
                ClientSeries {
                    by_status: (0..500).map(|_| OnceLock::new()).collect(),
                    tokens_input: self.tokens.with_label_values(&labels(name, c, "input")),
                    tokens_output: self.tokens.with_label_values(&labels(name, c, "output")),
                    client,
                }
            })
            .collect();
        let credentials = [
            CredentialMatch::Current,
            CredentialMatch::Retired,
            CredentialMatch::Unknown,
        ]
        .map(|m| {
            self.client_credentials
                .with_label_values(&[name, m.as_str()])
        });
        let upstream_errors =
            UpstreamError::ALL.map(|k| self.upstream_errors.with_label_values(&[name, k.as_str()]));
        Arc::new(UpstreamMetrics {
            name: name.to_owned(),
            requests: self.requests.clone(),
            per_client,
            request_duration: self.request_duration.with_label_values(&[name]),
            upstream_duration: self.upstream_duration.with_label_values(&[name]),
            in_flight: self.in_flight.with_label_values(&[name]),
            rotations: self.rotations.clone(),
            auth_failures: self.auth_failures.clone(),
            credentials,
            upstream_errors,
            websockets_open: self.websockets_open.with_label_values(&[name]),
            key_generation: self.key_generation.with_label_values(&[name]),
            key_loaded: self.key_loaded.with_label_values(&[name]),
            key_expiry_vec: self.key_expiry.clone(),
            key_usable: self.key_usable.with_label_values(&[name]),
            credential_refreshes: self.credential_refreshes.clone(),
            usage: OnceLock::new(),
        })
    }

    /// The families of one upstream's keys (each key's series: `KeyMetrics::member`).
    pub fn keys(&self, upstream: &str) -> KeyMetrics {
        KeyMetrics {
            upstream: upstream.to_owned(),
            state: self.key_state.clone(),
            family: self.key_requests.clone(),
            expiry: self.pool_key_expiry.clone(),
            failovers: self.failovers.clone(),
        }
    }

    /// A request the browser guard refused on the proxy (`admin = false`) or admin listener.
    pub fn refused(&self, admin: bool, reason: Reason) {
        let index = usize::from(admin) * 2 + usize::from(reason == Reason::OriginNotAllowed);
        self.refusals[index].inc();
    }

    /// A request the app failed (see [`ClientError`]).
    pub fn client_error(&self, kind: ClientError) {
        self.client_errors[kind as usize].inc();
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl UpstreamMetrics {
    fn series(&self, client: usize) -> &ClientSeries {
        self.per_client.get(client).unwrap_or(&self.per_client[0])
    }

    /// One finished request phase: count it by (client and) status.
    pub fn request(&self, client: usize, status: u16) {
        let series = self.series(client);
        let counter = match series.by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot.get_or_init(|| {
                let status = status.to_string();
                self.requests.with_label_values(&labels(
                    &self.name,
                    series.client.as_deref(),
                    &status,
                ))
            }),
            None => return,
        };
        counter.inc();
    }

    /// Requests counted so far (for /status).
    pub fn requests_total(&self) -> u64 {
        self.per_client
            .iter()
            .flat_map(|s| s.by_status.iter())
            .filter_map(OnceLock::get)
            .map(IntCounter::get)
            .sum()
    }

    pub fn rotation(&self, trigger: &str, result: &str) {
        self.rotations
            .with_label_values(&[self.name.as_str(), trigger, result])
            .inc();
    }

    /// A token credential's refresh (`ok` or `failed`): minutes apart, so resolved here.
    pub fn credential_refresh(&self, result: &str) {
        self.credential_refreshes
            .with_label_values(&[self.name.as_str(), result])
            .inc();
    }

    /// On the error path only, so resolving the label here costs nothing that matters.
    pub fn auth_failure(&self, client: usize, reason: Reason) {
        let c = self.series(client).client.as_deref();
        self.auth_failures
            .with_label_values(&labels(&self.name, c, reason.as_str()))
            .inc();
    }

    pub fn auth_failures_total(&self) -> u64 {
        let mut total = 0;
        for series in &self.per_client {
            for r in Reason::provider_refusals() {
                let l = labels(&self.name, series.client.as_deref(), r.as_str());
                total += self.auth_failures.with_label_values(&l).get();
            }
        }
        total
    }

    pub fn credential(&self, m: CredentialMatch) {
        self.credentials[m as usize].inc();
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }

    pub fn tokens(&self, client: usize, model: Option<&str>, input: u64, output: u64) {
        let series = self.series(client);
        series.tokens_input.inc_by(input);
        series.tokens_output.inc_by(output);
        if let Some(sink) = self.usage.get() {
            sink.record(
                series.client.as_deref(),
                model.unwrap_or("unknown"),
                input,
                output,
            );
        }
    }

    /// Send token counts by model to `sink` too (once, at startup).
    pub fn attach_usage(&self, sink: Arc<dyn UsageSink>) {
        let _ = self.usage.set(sink);
    }

    /// Requests answered so far by status, over every client (for /status), lowest status first.
    pub fn requests_by_status(&self) -> Vec<(u16, u64)> {
        let mut counts: Vec<(u16, u64)> = Vec::new();
        for series in &self.per_client {
            for (i, slot) in series.by_status.iter().enumerate() {
                let Some(counter) = slot.get() else { continue };
                let status = u16::try_from(i + 100).unwrap_or(u16::MAX);
                match counts.iter_mut().find(|(s, _)| *s == status) {
                    Some((_, n)) => *n += counter.get(),
                    None => counts.push((status, counter.get())),
                }
            }
        }
        counts.sort_unstable();
        counts
    }

    /// Tokens counted so far (input, output), over every client.
    pub fn tokens_totals(&self) -> (u64, u64) {
        self.per_client.iter().fold((0, 0), |(i, o), s| {
            (i + s.tokens_input.get(), o + s.tokens_output.get())
        })
    }

    /// Client credentials seen so far, by match (for /status).
    pub fn credential_counts(&self) -> serde_json::Value {
        serde_json::json!({
            "current": self.credentials[0].get(),
            "retired": self.credentials[1].get(),
            "unknown": self.credentials[2].get(),
        })
    }

    /// Expiry is shown only when known: an unknown expiry removes the series.
    pub fn set_expiry(&self, unix_seconds: Option<f64>) {
        match unix_seconds {
            Some(t) => self
                .key_expiry_vec
                .with_label_values(&[self.name.as_str()])
                .set(t),
            None => {
                let _ = self
                    .key_expiry_vec
                    .remove_label_values(&[self.name.as_str()]);
            }
        }
    }
}

/// Counts a request as in flight until its response body is finished or dropped.
pub struct InFlight(Arc<UpstreamMetrics>);

impl InFlight {
    pub fn start(metrics: &Arc<UpstreamMetrics>) -> InFlight {
        metrics.in_flight.inc();
        InFlight(Arc::clone(metrics))
    }

    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_exist_from_startup() {
        let m = Metrics::new().unwrap();
        let u = m.upstream("openai");
        u.credential(CredentialMatch::Retired);
        u.rotation("file", "applied");
        u.request(0, 401);
        u.request(0, 401);
        u.request(0, 999);
        let text = m.render();
        for want in [
            "keyproxy_build_info{version=\"",
            "keyproxy_requests_total{status=\"200\",upstream=\"openai\"} 0",
            "keyproxy_requests_total{status=\"401\",upstream=\"openai\"} 2",
            "keyproxy_request_duration_seconds_count{upstream=\"openai\"} 0",
            "keyproxy_upstream_duration_seconds_bucket{upstream=\"openai\",le=\"0.001\"} 0",
            "keyproxy_requests_in_flight{upstream=\"openai\"} 0",
            "keyproxy_auth_failures_total{reason=\"invalid_key\",upstream=\"openai\"} 0",
            "keyproxy_client_credentials_total{match=\"current\",upstream=\"openai\"} 0",
            "keyproxy_client_credentials_total{match=\"retired\",upstream=\"openai\"} 1",
            "keyproxy_key_rotations_total{result=\"applied\",trigger=\"file\",upstream=\"openai\"} 1",
            "keyproxy_key_usable{upstream=\"openai\"} 0",
            "keyproxy_upstream_errors_total{kind=\"tls\",upstream=\"openai\"} 0",
            "keyproxy_tokens_total{kind=\"output\",upstream=\"openai\"} 0",
            "keyproxy_websockets_open{upstream=\"openai\"} 0",
            "keyproxy_key_generation{upstream=\"openai\"} 0",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert_eq!(u.requests_total(), 2);
    }

    #[test]
    fn client_labels_when_clients_are_configured() {
        let m = Metrics::with_clients(&["notebook".into(), "ci".into()]).unwrap();
        let u = m.upstream("openai");
        u.request(1, 200);
        u.tokens(0, None, 5, 6);
        u.auth_failure(1, Reason::InvalidKey);
        let text = m.render();
        for want in [
            "keyproxy_requests_total{client=\"ci\",status=\"200\",upstream=\"openai\"} 1",
            "keyproxy_requests_total{client=\"notebook\",status=\"200\",upstream=\"openai\"} 0",
            "keyproxy_tokens_total{client=\"notebook\",kind=\"input\",upstream=\"openai\"} 5",
            "keyproxy_auth_failures_total{client=\"ci\",reason=\"invalid_key\",upstream=\"openai\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert_eq!(u.auth_failures_total(), 1);
    }

    #[test]
    fn in_flight_follows_the_guard() {
        let m = Metrics::new().unwrap();
        let u = m.upstream("a");
        let guard = InFlight::start(&u);
        assert_eq!(u.in_flight.get(), 1);
        drop(guard);
        assert_eq!(u.in_flight.get(), 0);
    }
}
