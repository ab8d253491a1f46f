//! The Prometheus registry and the handles the rest of the code increments. Label values are
//! resolved once per upstream at startup, so the request path only touches atomics. Never a key.

use crate::reason::Reason;
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    rotations: IntCounterVec,
    auth_failures: IntCounterVec,
    client_credentials: IntCounterVec,
    key_generation: IntGaugeVec,
    key_loaded: GaugeVec,
    key_expiry: GaugeVec,
    key_usable: IntGaugeVec,
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

/// One upstream's pre-resolved series.
pub struct UpstreamMetrics {
    name: String,
    rotations: IntCounterVec,
    auth_failures: IntCounterVec,
    credentials: [IntCounter; 3],
    pub key_generation: IntGauge,
    pub key_loaded: Gauge,
    pub key_expiry: Gauge,
    key_expiry_vec: GaugeVec,
    pub key_usable: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
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
        let build_info = int_gauge(
            "keyproxy_build_info",
            "keyproxy build information; always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Metrics {
            rotations: counter(
                "keyproxy_key_rotations_total",
                "Key rotation attempts by trigger (startup, file, sighup, admin, periodic) and result (applied, rejected).",
                &["upstream", "trigger", "result"],
            )?,
            auth_failures: counter(
                "keyproxy_auth_failures_total",
                "Provider refusals (401/403/429, key-related 400/402) by diagnosed reason code.",
                &["upstream", "reason"],
            )?,
            client_credentials: counter(
                "keyproxy_client_credentials_total",
                "Credentials clients sent (and keyproxy stripped), by whether they match the current key, a retired key, or nothing known.",
                &["upstream", "match"],
            )?,
            key_generation: int_gauge("keyproxy_key_generation", "Generation of the key in use (1 = first key loaded).", &["upstream"])?,
            key_loaded: gauge("keyproxy_key_loaded_timestamp_seconds", "When the key in use was loaded (Unix time).", &["upstream"])?,
            key_expiry: gauge("keyproxy_key_expiry_timestamp_seconds", "When the key in use expires (Unix time); absent when unknown.", &["upstream"])?,
            key_usable: int_gauge("keyproxy_key_usable", "1 when the upstream has a loaded, lint-clean key; else 0.", &["upstream"])?,
            registry,
        })
    }

    /// Resolve every series of one upstream, so they exist (at zero) from startup.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        for reason in &Reason::ALL[..16] {
            self.auth_failures
                .with_label_values(&[name, reason.as_str()]);
        }
        let credentials = [
            CredentialMatch::Current,
            CredentialMatch::Retired,
            CredentialMatch::Unknown,
        ]
        .map(|m| {
            self.client_credentials
                .with_label_values(&[name, m.as_str()])
        });
        UpstreamMetrics {
            name: name.to_owned(),
            rotations: self.rotations.clone(),
            auth_failures: self.auth_failures.clone(),
            credentials,
            key_generation: self.key_generation.with_label_values(&[name]),
            key_loaded: self.key_loaded.with_label_values(&[name]),
            key_expiry: self.key_expiry.with_label_values(&[name]),
            key_expiry_vec: self.key_expiry.clone(),
            key_usable: self.key_usable.with_label_values(&[name]),
        }
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
    pub fn rotation(&self, trigger: &str, result: &str) {
        self.rotations
            .with_label_values(&[&self.name, trigger, result])
            .inc();
    }

    /// On the error path only, so resolving the label here costs nothing that matters.
    pub fn auth_failure(&self, reason: Reason) {
        self.auth_failures
            .with_label_values(&[self.name.as_str(), reason.as_str()])
            .inc();
    }

    pub fn credential(&self, m: CredentialMatch) {
        self.credentials[m as usize].inc();
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
            Some(t) => {
                let g = self.key_expiry_vec.with_label_values(&[&self.name]);
                g.set(t);
            }
            None => {
                let _ = self.key_expiry_vec.remove_label_values(&[&self.name]);
            }
        }
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
        let text = m.render();
        assert!(text.contains("keyproxy_build_info{version=\""), "{text}");
        assert!(
            text.contains(
                "keyproxy_client_credentials_total{match=\"current\",upstream=\"openai\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "keyproxy_client_credentials_total{match=\"retired\",upstream=\"openai\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("keyproxy_key_rotations_total{result=\"applied\",trigger=\"file\",upstream=\"openai\"} 1"), "{text}");
        assert!(
            text.contains("keyproxy_key_usable{upstream=\"openai\"} 0"),
            "{text}"
        );
    }
}
