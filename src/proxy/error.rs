//! `ProxyError`: every refusal keyproxy makes itself on the forwarding path, in one type. Each
//! variant carries what a person needs to fix it; the status, the reason code, the metric label
//! and the response are decided here and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Response, StatusCode};

use crate::http1::ClientFault;
use crate::key::store::Unavailable;
use crate::metrics::{ClientError, UpstreamError};
use crate::provider::Provider;
use crate::proxy::guard;
use crate::proxy::reply::{self, ReplyBody};
use crate::reason::Reason;
use crate::upstream::pool::SendError;

#[derive(Debug)]
pub enum ProxyError {
    /// The browser guard refused the request (foreign `Host`, web origin).
    Guard(guard::Refusal),
    /// `CONNECT`: keyproxy is a reverse proxy, not a forward one.
    Connect,
    /// `[[clients]]` are configured and the request carries none of their tokens.
    ClientUnauthorized,
    /// A `.`/`..` segment (decoded once or twice) or a path-parameter trick.
    UncleanPath,
    NoRoute {
        path: String,
        /// The configured prefixes, to show which paths do route.
        prefixes: Vec<String>,
    },
    /// The upstream has no usable key (startup or a refused first key).
    NoKey {
        upstream: Arc<str>,
        provider: Provider,
        why: Unavailable,
    },
    /// Every key of the upstream's pool is quarantined, cooling or unloaded.
    KeysExhausted {
        upstream: Arc<str>,
        provider: Provider,
        /// Each key's name, fingerprint, state, cause and until-when.
        keys: String,
        /// Some key is only cooling: a later retry can work.
        cooling: bool,
    },
    /// The request could not be rewritten for the upstream (an invalid URI after the prefix).
    BadUpstreamRequest(http::uri::InvalidUri),
    /// No response head from the upstream: connect, TLS or a connection lost.
    Unreachable {
        upstream: Arc<str>,
        provider: Provider,
        authority: Authority,
        error: SendError,
    },
    /// No response head within `response_header_timeout`.
    Timeout {
        upstream: Arc<str>,
        provider: Provider,
        after: Duration,
    },
    /// The app failed to deliver its request, or left before the answer: its fault, not the
    /// upstream's (no reason code: nothing about keys or upstreams to explain).
    Client(ClientFault),
    /// A body too large to be read whole for its SigV4 signature (`key = { aws = … }` only).
    BodyTooLarge {
        upstream: Arc<str>,
        provider: Provider,
        limit: usize,
    },
    /// The request could not be signed (no AWS credentials in the snapshot, or the signer refused).
    Unsigned {
        upstream: Arc<str>,
        provider: Provider,
        message: String,
    },
}

/// nginx's "client closed request": logged and counted for a request whose app left before the
/// response (nobody receives it).
pub const CLIENT_CLOSED: u16 = 499;

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Guard(refusal) => refusal.status,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientUnauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::UncleanPath | ProxyError::BadUpstreamRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoKey { .. } | ProxyError::KeysExhausted { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Client(ClientFault::Malformed(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Client(ClientFault::BodyTimeout(_) | ClientFault::HeaderTimeout) => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::Client(ClientFault::Disconnected) => {
                StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Unsigned { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable reason code, for the refusals that have one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ProxyError::Guard(refusal) => Some(refusal.reason),
            ProxyError::ClientUnauthorized => Some(Reason::ClientUnauthorized),
            ProxyError::NoRoute { .. } => Some(Reason::NoRoute),
            ProxyError::NoKey { why, .. } => Some(why.reason),
            ProxyError::KeysExhausted { .. } => Some(Reason::KeysExhausted),
            ProxyError::Unreachable { .. } => Some(Reason::UpstreamUnreachable),
            ProxyError::Timeout { .. } => Some(Reason::UpstreamTimeout),
            ProxyError::Connect
            | ProxyError::UncleanPath
            | ProxyError::BadUpstreamRequest(_)
            | ProxyError::Client(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::Unsigned { .. } => None,
        }
    }

    /// The provider whose error shape the app's SDK expects: the upstream's once routed, OpenAI's
    /// before (the most common SDK shape, and what OpenAI-compatible clients read).
    pub fn provider(&self) -> Provider {
        match self {
            ProxyError::NoKey { provider, .. }
            | ProxyError::KeysExhausted { provider, .. }
            | ProxyError::Unreachable { provider, .. }
            | ProxyError::Timeout { provider, .. }
            | ProxyError::BodyTooLarge { provider, .. }
            | ProxyError::Unsigned { provider, .. } => *provider,
            _ => Provider::Openai,
        }
    }

    /// `x-should-retry`: nothing keyproxy refuses itself gets better by retrying, except an
    /// upstream that could not be reached or was slow (the SDK's own rules decide those).
    pub fn should_retry(&self) -> Option<bool> {
        match self {
            ProxyError::Unreachable { .. } | ProxyError::Timeout { .. } => None,
            // A cool-down ends by itself; the SDK's own backoff decides when to try again.
            ProxyError::KeysExhausted { cooling: true, .. } => None,
            _ => Some(false),
        }
    }

    /// Which `keyproxy_upstream_errors_total{kind}` series an upstream failure counts in.
    pub fn upstream_error(&self) -> Option<UpstreamError> {
        match self {
            ProxyError::Unreachable { error, .. } if error.is_tls() => Some(UpstreamError::Tls),
            ProxyError::Unreachable {
                error: SendError::Connect(_),
                ..
            } => Some(UpstreamError::Connect),
            ProxyError::Unreachable { .. } => Some(UpstreamError::Reset),
            ProxyError::Timeout { .. } => Some(UpstreamError::Timeout),
            _ => None,
        }
    }

    /// Which `keyproxy_client_errors_total{kind}` series an app's failure counts in.
    pub fn client_error(&self) -> Option<ClientError> {
        match self {
            ProxyError::Client(fault) => Some(match fault {
                ClientFault::Malformed(_) => ClientError::MalformedBody,
                ClientFault::BodyTimeout(_) => ClientError::BodyTimeout,
                ClientFault::Disconnected => ClientError::Disconnected,
                ClientFault::HeaderTimeout => ClientError::HeaderTimeout,
            }),
            _ => None,
        }
    }

    /// The sentence a person reads: what happened and what to do.
    pub fn message(&self) -> String {
        match self {
            ProxyError::Guard(refusal) => refusal.message.clone(),
            ProxyError::Connect => "keyproxy is not a forward proxy: CONNECT is not supported; send requests to it directly".into(),
            ProxyError::ClientUnauthorized => "keyproxy needs this app's client token: configure the app with the token from its [[clients]] entry as its API key (it is sent as Authorization: Bearer or x-api-key); keyproxy then adds the real provider key".into(),
            ProxyError::UncleanPath => "the request path has '.' or '..' segments; keyproxy does not forward them".into(),
            ProxyError::NoRoute { path, prefixes } => {
                let shown: String = path.chars().take(200).collect();
                let configured = prefixes.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
                format!("no upstream is configured for the path {shown:?}; the configured prefixes are {configured} (the prefix = setting of each [[upstreams]] entry in the keyproxy config)")
            }
            ProxyError::NoKey { upstream, why, .. } => format!(
                "keyproxy has no usable key for upstream {upstream}: {}",
                why.message
            ),
            ProxyError::KeysExhausted { upstream, keys, .. } => format!(
                "no key of upstream {upstream} can be used now: {keys}. A quarantined key comes back when its source yields another key or with POST /keys/{upstream}/NAME/reinstate; a rate-limited one by itself"
            ),
            ProxyError::BadUpstreamRequest(e) => format!("cannot build the upstream request: {e}"),
            ProxyError::Unreachable {
                upstream,
                authority,
                error,
                ..
            } => {
                let chain = error_chain(error);
                match self.upstream_error() {
                    Some(UpstreamError::Tls) => format!("the TLS handshake with upstream {upstream} at {authority} failed: {chain}"),
                    Some(UpstreamError::Connect) => format!("keyproxy could not connect to upstream {upstream} at {authority}: {chain}"),
                    _ => format!("keyproxy lost the connection to upstream {upstream} at {authority} before the response headers: {chain}"),
                }
            }
            ProxyError::Timeout { upstream, after, .. } => format!(
                "upstream {upstream} sent no response headers within {} (response_header_timeout)",
                crate::time::human_duration(*after)
            ),
            ProxyError::Client(fault) => fault.to_string(),
            ProxyError::BodyTooLarge { upstream, limit, .. } => format!(
                "the request body is larger than {} MiB: upstream {upstream} signs each request with AWS SigV4, which hashes the whole body, so keyproxy reads at most that much; send a smaller request (fewer or smaller images and documents)",
                limit / (1024 * 1024)
            ),
            ProxyError::Unsigned { upstream, message, .. } => format!(
                "keyproxy could not sign the request for upstream {upstream}: {message}"
            ),
        }
    }

    /// Log the refusal (one line per request: a warning when an upstream is unusable, the rest
    /// at info) and answer with it.
    pub fn refuse(
        self,
        request_id: &str,
        method: &http::Method,
        path: &str,
    ) -> Response<ReplyBody> {
        let status = self.status().as_u16();
        let reason = self.reason().map_or("", Reason::as_str);
        let path = crate::redact::mask(path);
        match &self {
            ProxyError::NoKey { upstream, .. } | ProxyError::KeysExhausted { upstream, .. } => {
                tracing::warn!(request_id, %method, %path, %upstream, status, reason, "{}", self.message())
            }
            _ => tracing::info!(request_id, %method, %path, status, reason, "{}", self.message()),
        }
        self.into_response()
    }

    /// The answer the app gets: the status, `x-keyproxy-reason`, `x-should-retry` and the error
    /// body in the shape of the upstream's provider.
    pub fn into_response(self) -> Response<ReplyBody> {
        let message = self.message();
        reply::refusal(
            self.provider(),
            self.status(),
            self.reason(),
            &message,
            self.should_retry(),
        )
    }
}

impl From<guard::Refusal> for ProxyError {
    fn from(refusal: guard::Refusal) -> Self {
        ProxyError::Guard(refusal)
    }
}

/// "error: cause: root cause", the way people need to read a connection failure.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}
