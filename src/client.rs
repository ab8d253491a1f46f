//! The HTTP client each upstream sends through: a pooled hyper client over rustls (webpki roots plus
//! the upstream's own `ca_file`), HTTP/2 when ALPN offers it, plain `http://` allowed.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

/// What goes upstream: the client's body streamed through, or nothing (probes).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream {0}: base_url has no host")]
    NoHost(String),
    #[error("upstream {upstream}: TLS setup failed: {source}")]
    Tls {
        upstream: String,
        source: rustls::Error,
    },
    #[error("upstream {upstream}: a certificate in ca_file was refused: {source}")]
    BadCa {
        upstream: String,
        source: rustls::Error,
    },
}

/// Which HTTP versions a client may speak to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// HTTP/1.1 or HTTP/2, as ALPN decides: ordinary requests.
    Negotiated,
    /// HTTP/1.1 only: WebSocket upgrades (an HTTP/2 connection cannot carry an `Upgrade`).
    Http1Only,
}

pub fn build(cfg: &UpstreamConfig, versions: Versions) -> Result<HttpClient, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.ca_certs {
        roots
            .add(cert.clone())
            .map_err(|source| ClientError::BadCa {
                upstream: cfg.name.clone(),
                source,
            })?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|source| ClientError::Tls {
        upstream: cfg.name.clone(),
        source,
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let https = match versions {
        Versions::Negotiated => https.enable_http2().wrap_connector(http),
        Versions::Http1Only => https.wrap_connector(http),
    };

    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(https))
}
