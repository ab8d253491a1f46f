//! The token endpoint exchange (RFC 6749 §4.4 and RFC 7523 share it): one form-encoded POST, a
//! bounded JSON answer, read into a token or a refusal. A small client of its own (HTTPS with the
//! webpki roots, or plain `http://` for loopback stand-ins), no connection kept between
//! refreshes: they are minutes apart.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{MintError, Minted};
use crate::key::Secret;

/// A token endpoint answers in well under a second; this bounds a hung one.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Token answers are a few KB at most; more is not a token endpoint.
const MAX_ANSWER: usize = 64 * 1024;
/// When the endpoint names no lifetime (RFC 6749 only recommends `expires_in`): the usual hour.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest lifetime believed. An endpoint may name any number (`1e300`, `u64::MAX`): past
/// this the token is still replaced daily, and no clock arithmetic overflows on it.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// What is kept of an endpoint's own sentence.
const MAX_DESCRIPTION: usize = 400;

type TokenClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> Result<&'static TokenClient, String> {
    static CLIENT: OnceLock<Result<TokenClient, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(TIMEOUT));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            // No idle connections: the client outlives any one runtime (tests run many), and
            // refreshes are minutes apart anyway.
            Ok(Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(https))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The endpoint as sentences name it: scheme, host and path, never a query.
pub fn shown(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_owned()
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    /// A number by the RFC; a string from some endpoints (Entra's v1).
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// POST `form` to `url` (with `authorization`, for client_secret_basic) and read the token.
pub async fn exchange(
    url: &str,
    form: Zeroizing<String>,
    authorization: Option<HeaderValue>,
) -> Result<Minted, MintError> {
    let endpoint = shown(url);
    let unreachable = |message: String| MintError::Unreachable {
        endpoint: endpoint.clone(),
        message,
    };
    let client = client().map_err(unreachable)?;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("keyproxy/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(auth) = authorization {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let req = req
        .body(Full::new(Bytes::from(form.as_bytes().to_vec())))
        .map_err(|e| unreachable(format!("not a usable URL ({e})")))?;
    let exchange = async {
        let response = client.request(req).await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            unreachable(cause.to_string())
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
                // It was reached: what it said is no token answer.
                true => MintError::BadAnswer {
                    endpoint: endpoint.clone(),
                    status: status.as_u16(),
                    message: format!("the answer is longer than {} KiB", MAX_ANSWER / 1024),
                },
                false => unreachable(format!("the answer could not be read ({e})")),
            })?
            .to_bytes();
        Ok::<_, MintError>((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", TIMEOUT.as_secs())))??;
    read_answer(&endpoint, status.as_u16(), &body, SystemTime::now())
}

/// A token, or the endpoint's refusal read from its OAuth error body.
fn read_answer(
    endpoint: &str,
    status: u16,
    body: &[u8],
    now: SystemTime,
) -> Result<Minted, MintError> {
    let bad = |message: &str| MintError::BadAnswer {
        endpoint: endpoint.to_owned(),
        status,
        message: message.to_owned(),
    };
    if !(200..300).contains(&status) {
        let answer: ErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
        let description = answer.error_description.unwrap_or_default();
        let mut description = crate::redact::mask(description.trim()).into_owned();
        if description.len() > MAX_DESCRIPTION {
            let cut = (0..=MAX_DESCRIPTION)
                .rev()
                .find(|i| description.is_char_boundary(*i))
                .unwrap_or(0);
            description.truncate(cut);
            description.push('…');
        }
        // The first line says it; Entra appends trace and correlation ids on the next ones.
        if let Some(first) = description.lines().next() {
            description = first.trim_end().to_owned();
        }
        return Err(MintError::Refused {
            endpoint: endpoint.to_owned(),
            status,
            error: answer.error.unwrap_or_default().to_ascii_lowercase(),
            description,
            codes: answer.error_codes,
        });
    }
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|_| bad("the answer is not a JSON object"))?;
    let token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("the answer has no access_token"))?;
    let token = Secret::new(token);
    let lifetime = match answer.expires_in {
        None => DEFAULT_LIFETIME,
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::try_from_secs_f64(s).unwrap_or(MAX_LIFETIME))
            .ok_or_else(|| bad("expires_in is not a positive number of seconds"))?
            .min(MAX_LIFETIME),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| bad("expires_in is not a positive number of seconds"))?
            .min(MAX_LIFETIME),
        Some(_) => return Err(bad("expires_in is not a positive number of seconds")),
    };
    Ok(Minted {
        token,
        expires_at: now + lifetime,
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_refusals_are_read_from_the_answer() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ok = read_answer(
            "https://t/token",
            200,
            br#"{"access_token":"eyJ.tok.en","expires_in":"3599","token_type":"Bearer"}"#,
            now,
        )
        .unwrap();
        assert_eq!(ok.token.expose(), "eyJ.tok.en");
        assert_eq!(ok.lifetime, Duration::from_secs(3599));
        assert_eq!(ok.expires_at, now + Duration::from_secs(3599));
        let default = read_answer("u", 200, br#"{"access_token":"a"}"#, now).unwrap();
        assert_eq!(default.lifetime, DEFAULT_LIFETIME);
        let refused = read_answer(
            "https://login/t",
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app '1' are expired.\r\nTrace ID: abc","error_codes":[7000222]}"#,
            now,
        )
        .unwrap_err();
        match &refused {
            MintError::Refused {
                error,
                codes,
                description,
                status,
                ..
            } => {
                assert_eq!(
                    (error.as_str(), codes.as_slice(), *status),
                    ("invalid_client", &[7000222][..], 401)
                );
                assert!(!description.contains("Trace ID"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_answer("u", 200, b"<html>", now),
            Err(MintError::BadAnswer { .. })
        ));
        assert!(matches!(
            read_answer("u", 200, br#"{"access_token":"a","expires_in":-5}"#, now),
            Err(MintError::BadAnswer { .. })
        ));
        assert!(matches!(
            read_answer("u", 502, b"bad gateway", now),
            Err(MintError::Refused { status: 502, .. })
        ));
    }
}
