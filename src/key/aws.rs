//! Amazon Bedrock's two credentials. `key = { aws = { … } }`: IAM or STS credentials that sign each
//! request with SigV4 (the `aws-sigv4` crate does the signing); each part is a key source of its
//! own, and the parts travel through the key machinery (store, rotation, watch) as one secret, the
//! *bundle*, so a rotated STS session is swapped in whole. And Bedrock API keys (a plain key
//! source, sent as Bearer): a short-term key (`bedrock-api-key-…`) carries its own expiry in the
//! presigned URL it encodes; a long-term one (`ABSK…`) does not expire by itself.
//!
//! Or the whole set from a `credential_process` (AWS's JSON: `aws configure export-credentials
//! --format process`, an SSO or vault helper): its `Expiration` is the key's expiry, and the
//! command is run again before it (see `renewal_due`).

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::lint::{Finding, LintCode, Severity};
use super::source::{KeyError, KeySource};
use super::Secret;

/// SigV4's name for Bedrock (runtime and control plane alike).
pub const SERVICE: &str = "bedrock";

/// The largest request body keyproxy reads whole to hash it for a signature; above it, 413.
/// Room for the images and documents apps send base64 in the body, and a bound on the memory
/// each request may hold.
pub const SIGNED_BODY_LIMIT: usize = 20 * 1024 * 1024;

/// What a bundle starts with: a JSON object follows, so any bytes a source holds survive the trip.
const BUNDLE: &str = "aws4:";

/// Short-term Bedrock API keys: this prefix, then a presigned URL in standard base64.
const SHORT_TERM: &str = "bedrock-api-key-";
/// Long-term Bedrock API keys.
const LONG_TERM: &str = "ABSK";

/// `key = { aws = { access_key_id = {…}, secret_access_key = {…}, session_token = {…}, region = "…" } }`,
/// or `key = { aws = { credential_process = ["aws", "configure", "export-credentials", "--format",
/// "process"], region = "…" } }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSpec {
    #[serde(default)]
    pub access_key_id: Option<KeySource>,
    #[serde(default)]
    pub secret_access_key: Option<KeySource>,
    #[serde(default)]
    pub session_token: Option<KeySource>,
    /// A command printing AWS's `credential_process` JSON (the whole set, and its expiry).
    #[serde(default, deserialize_with = "process")]
    pub credential_process: Option<KeySource>,
    /// Empty when the table has none: `incomplete` names it with an example.
    #[serde(default, deserialize_with = "region")]
    pub region: String,
}

fn process<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<KeySource>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    if argv.is_empty() {
        return Err(serde::de::Error::custom(
            "credential_process is the command to run, as [\"program\", \"arg\", ...]",
        ));
    }
    Ok(Some(KeySource::Command(argv)))
}

/// What `credential_process` prints (AWS's format, version 1).
/// Borrowed from the command's output (itself wiped when dropped), as the bundle's parts are.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Process<'a> {
    version: u32,
    #[serde(borrow)]
    access_key_id: Cow<'a, str>,
    #[serde(borrow)]
    secret_access_key: Cow<'a, str>,
    #[serde(borrow, default)]
    session_token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    expiration: Option<Cow<'a, str>>,
}

fn region<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let ok = !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(serde::de::Error::custom(
            "region is an AWS region name such as \"us-east-1\" (lowercase letters, digits and '-')",
        ));
    }
    Ok(text)
}

impl AwsSpec {
    /// Every part, with the name it has in the config.
    fn parts(&self) -> impl Iterator<Item = (&'static str, &KeySource)> {
        [
            ("access_key_id", self.access_key_id.as_ref()),
            ("secret_access_key", self.secret_access_key.as_ref()),
            ("session_token", self.session_token.as_ref()),
            ("credential_process", self.credential_process.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, source)| source.map(|s| (name, s)))
    }

    /// A part that is itself `{ aws = … }`: refused when the config is read.
    pub fn nested(&self) -> bool {
        self.parts()
            .any(|(_, s)| matches!(s, KeySource::Aws(_) | KeySource::Minted(_)))
    }

    /// Which parts are missing or too many, refused when the config is read.
    pub fn incomplete(&self) -> Option<&'static str> {
        let parts = self.access_key_id.is_some() || self.secret_access_key.is_some();
        match (&self.credential_process, parts || self.session_token.is_some()) {
            (Some(_), true) => Some("credential_process prints the whole set (id, secret, session token): remove access_key_id, secret_access_key and session_token from the aws table, or credential_process"),
            (None, _) if self.access_key_id.is_none() || self.secret_access_key.is_none() => Some("the aws table needs access_key_id and secret_access_key (each a source: { env }, { file } or { command }), or credential_process = [\"aws\", \"configure\", \"export-credentials\", \"--format\", \"process\"]"),
            _ if self.region.is_empty() => Some("the aws table needs region, the AWS region keyproxy signs for: the one in base_url (region = \"us-east-1\" for https://bedrock-runtime.us-east-1.amazonaws.com)"),
            _ => None,
        }
    }

    /// The set comes from a command that says when it expires, and is fetched again before then.
    pub fn renews_itself(&self) -> bool {
        self.credential_process.is_some()
    }

    pub fn resolved(&self, config_path: &Path) -> AwsSpec {
        AwsSpec {
            access_key_id: self.access_key_id.clone().map(|s| s.resolved(config_path)),
            secret_access_key: self
                .secret_access_key
                .clone()
                .map(|s| s.resolved(config_path)),
            session_token: self.session_token.clone().map(|s| s.resolved(config_path)),
            credential_process: self.credential_process.clone(),
            region: self.region.clone(),
        }
    }

    /// The key files among the parts (watched like any key file).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.parts().filter_map(|(_, s)| match s {
            KeySource::File(p) => Some(p.as_path()),
            _ => None,
        })
    }

    pub fn permission_warning(&self) -> Option<String> {
        self.parts().find_map(|(_, s)| s.permission_warning())
    }

    /// Read every part and make the bundle. A part's own failure names the part.
    pub async fn read(&self) -> Result<Secret, KeyError> {
        let part = |name: &'static str, e: KeyError| KeyError::AwsPart {
            part: name,
            cause: Box::new(e),
        };
        if let Some(KeySource::Command(argv)) = &self.credential_process {
            // Not read as a secret whole: the redactor would mask its public glue (the field
            // names, the expiry's date) wherever it appears. Each secret in it is registered.
            let printed = Zeroizing::new(
                super::source::run_command(argv)
                    .await
                    .map_err(|e| part("credential_process", e))?,
            );
            // Its own words never: they hold the secret.
            let set: Process<'_> = serde_json::from_slice(&printed)
                .map_err(|_| part("credential_process", KeyError::AwsProcessOutput))?;
            if set.version != 1 {
                return Err(part("credential_process", KeyError::AwsProcessOutput));
            }
            crate::redact::register(&set.access_key_id);
            crate::redact::register(&set.secret_access_key);
            if let Some(token) = &set.session_token {
                crate::redact::register(token);
            }
            return Ok(bundle(Wire {
                region: Cow::Borrowed(&self.region),
                id: set.access_key_id,
                secret: set.secret_access_key,
                token: set.session_token,
                expires: set.expiration,
            }));
        }
        let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) else {
            return Err(KeyError::AwsIncomplete);
        };
        let id = id.read().await.map_err(|e| part("access_key_id", e))?;
        let secret = secret
            .read()
            .await
            .map_err(|e| part("secret_access_key", e))?;
        let token = match &self.session_token {
            Some(source) => Some(source.read().await.map_err(|e| part("session_token", e))?),
            None => None,
        };
        Ok(bundle(Wire {
            region: Cow::Borrowed(&self.region),
            id: Cow::Borrowed(id.expose()),
            secret: Cow::Borrowed(secret.expose()),
            token: token.as_ref().map(|t| Cow::Borrowed(t.expose())),
            expires: None,
        }))
    }
}

/// The bundle of a set of parts.
fn bundle(wire: Wire<'_>) -> Secret {
    // Serializing strings into a String cannot fail.
    let json = Zeroizing::new(serde_json::to_string(&wire).unwrap_or_default());
    // Sized once: a growing String would leave copies of the secret behind in freed memory.
    let mut text = String::with_capacity(BUNDLE.len() + json.len());
    text.push_str(BUNDLE);
    text.push_str(&json);
    Secret::bundle(text)
}

impl fmt::Display for AwsSpec {
    /// `aws us-east-1 (access_key_id env AWS_ACCESS_KEY_ID, …)`: where each part comes from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aws {} (", self.region)?;
        for (i, (name, source)) in self.parts().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} {source}")?;
        }
        f.write_str(")")
    }
}

/// The bundle's JSON.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    secret: Cow<'a, str>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    /// The set's `Expiration` (RFC 3339), when its source says.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    expires: Option<Cow<'a, str>>,
}

/// Credentials ready to sign with, built once per key load (never per request).
pub struct Credentials {
    pub region: String,
    pub access_key_id: String,
    identity: Identity,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials({} in {}, *****)",
            self.access_key_id.get(..4).unwrap_or(""),
            self.region
        )
    }
}

/// What a bundle holds, for lint (the parts as they were read).
struct Parts {
    id: Zeroizing<String>,
    secret: Zeroizing<String>,
    token: Option<Zeroizing<String>>,
    expires: Option<SystemTime>,
}

fn parts(bundle: &str) -> Option<(String, Parts)> {
    let json = bundle.strip_prefix(BUNDLE)?;
    let wire: Wire<'_> = serde_json::from_str(json).ok()?;
    Some((
        wire.region.into_owned(),
        Parts {
            id: Zeroizing::new(wire.id.into_owned()),
            secret: Zeroizing::new(wire.secret.into_owned()),
            token: wire.token.map(|t| Zeroizing::new(t.into_owned())),
            expires: wire
                .expires
                .and_then(|at| crate::time::parse_timestamp(&at).ok()),
        },
    ))
}

/// True for a bundle of AWS credentials (what `{ aws = … }` reads).
pub fn is_bundle(key: &str) -> bool {
    key.starts_with(BUNDLE)
}

/// The access key id a bundle carries: what its fingerprint shows.
pub fn access_key_id(key: &str) -> Option<String> {
    parts(key).map(|(_, p)| p.id.to_string())
}

/// When a key stops working by itself: a short-term Bedrock API key's, or a set of session
/// credentials' `Expiration` (from `credential_process`).
pub fn expires_at(key: &str) -> Option<SystemTime> {
    api_key_expires_at(key).or_else(|| parts(key)?.1.expires)
}

/// The region a bundle signs for.
pub fn region_of(key: &str) -> Option<String> {
    parts(key).map(|(region, _)| region)
}

impl Credentials {
    /// The signing credentials in a bundle; `None` for anything else.
    pub fn from_bundle(key: &str) -> Option<Arc<Credentials>> {
        let (region, p) = parts(key)?;
        let creds = aws_credential_types::Credentials::new(
            p.id.as_str(),
            p.secret.as_str(),
            p.token.as_ref().map(|t| t.to_string()),
            None,
            "keyproxy",
        );
        Some(Arc::new(Credentials {
            region,
            access_key_id: p.id.to_string(),
            identity: creds.into(),
        }))
    }

    /// Sign a request. `url` is what is actually sent: the upstream's scheme and `Host`, and the
    /// rewritten path and query. `headers`: the request's headers after the app's credentials
    /// were stripped; only `content-type` and the `x-amz-*` headers are signed (besides `host`),
    /// so nothing a hop may legitimately rewrite breaks the signature. Returns the headers to
    /// set: `authorization`, `x-amz-date` and (with a session) `x-amz-security-token`.
    pub fn sign<'a>(
        &self,
        method: &'a str,
        url: &'a str,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        body: &'a [u8],
        now: SystemTime,
    ) -> Result<Vec<(&'static str, http::HeaderValue)>, SignError> {
        let signed = headers.filter(|(name, _)| is_signed(name));
        let request = SignableRequest::new(method, url, signed, SignableBody::Bytes(body))
            .map_err(|e| SignError(e.to_string()))?;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(SERVICE)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SignError(e.to_string()))?
            .into();
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| SignError(e.to_string()))?
            .into_parts();
        let (headers, _params) = instructions.into_parts();
        headers
            .into_iter()
            .map(|h| {
                let mut value = http::HeaderValue::from_str(h.value())
                    .map_err(|_| SignError("a signed header is not a valid header value".into()))?;
                value.set_sensitive(h.sensitive() || h.name() == "authorization");
                Ok((h.name(), value))
            })
            .collect()
    }

    /// Sign `req` (origin-form URI) as it will go to `scheme://host`, with `body` as its body:
    /// the forwarding path and the probe alike.
    pub fn sign_request<B>(
        &self,
        req: &mut http::Request<B>,
        scheme: &str,
        host: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignError> {
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{scheme}://{host}{path}");
        let signed = self.sign(
            req.method().as_str(),
            &url,
            req.headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
            body,
            now,
        )?;
        let headers = req.headers_mut();
        for (name, value) in signed {
            headers.insert(name, value);
        }
        Ok(())
    }
}

/// The headers keyproxy signs besides `host`.
fn is_signed(name: &str) -> bool {
    name == "content-type"
        || (name.starts_with("x-amz-") || name.starts_with("x-amzn-")) && name != "x-amzn-trace-id"
}

/// The app's own SigV4 headers, dropped before keyproxy signs (the app's `Authorization` goes
/// with every other upstream's credentials).
pub const APP_SIGV4_HEADERS: [&str; 3] =
    ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];

#[derive(Debug, thiserror::Error)]
#[error("the request could not be signed with SigV4: {0}")]
pub struct SignError(String);

/// A finding that refuses the credential.
fn error(out: &mut Vec<Finding>, code: LintCode, message: String) {
    out.push(Finding {
        code,
        severity: Severity::Error,
        message,
        belongs_to: None,
    });
}

/// Lint of a bundle: each part's shape, in sentences that name the part and its source, never
/// its value.
pub fn lint(key: &str, source: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some((_, p)) = parts(key) else {
        return out;
    };
    let mut error = |code, message| error(&mut out, code, message);
    let id = p.id.as_str();
    let well_formed_id = id.len() == 20
        && (id.starts_with("AKIA") || id.starts_with("ASIA"))
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    if !well_formed_id {
        let what = if id.trim() != id {
            "has whitespace around it; store it without"
        } else if id.starts_with("AKIA") || id.starts_with("ASIA") {
            "is not AKIA/ASIA followed by 16 characters from A-Z and 2-7; it was probably cut or copied with surrounding text"
        } else {
            "does not start with AKIA (an IAM user's access key) or ASIA (temporary STS credentials); it is not an access key id"
        };
        error(
            LintCode::AwsCredentials,
            format!("the AWS access key id from {source} {what}"),
        );
    }
    let secret = p.secret.as_str();
    if secret.len() != 40 {
        error(
            LintCode::WrongLength,
            format!(
                "the AWS secret access key from {source} is {} characters long, and secret access keys are exactly 40; copy it again (it is shown once, when the access key is created)",
                secret.chars().count()
            ),
        );
    } else if !secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        error(
            LintCode::BadCharacters,
            format!("the AWS secret access key from {source} has characters secret access keys never contain (only letters, digits, '+' and '/')"),
        );
    }
    if let Some(at) = p.expires.filter(|at| *at <= SystemTime::now()) {
        error(
            LintCode::Expired,
            format!("the AWS session credentials from {source} expired {} (their Expiration); the command must print a current set (for `aws configure export-credentials`, log in again: `aws sso login`)", crate::time::describe(at, SystemTime::now())),
        );
    }
    match &p.token {
        None if id.starts_with("ASIA") => error(
            LintCode::AwsCredentials,
            format!("the AWS access key id from {source} starts with ASIA: these are temporary (STS) credentials, which need their session token; add session_token = {{ env = \"AWS_SESSION_TOKEN\" }} (or a file or command) to the aws table"),
        ),
        Some(_) if id.starts_with("AKIA") => error(
            LintCode::AwsCredentials,
            format!("the AWS access key id from {source} starts with AKIA (an IAM user's long-term key), yet a session token is set: AWS refuses a session token with long-term keys (UnrecognizedClientException). Remove session_token, or use the ASIA... key id and secret that came with the token"),
        ),
        Some(t) if t.trim().is_empty() => error(
            LintCode::Empty,
            format!("the AWS session token from {source} is empty; put the session token there, or remove session_token for long-term (AKIA) keys"),
        ),
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => error(
            LintCode::BadCharacters,
            format!("the AWS session token from {source} has whitespace or non-ASCII characters in it; copy it again whole"),
        ),
        _ => {}
    }
    out
}

/// The expiry a short-term Bedrock API key carries (`X-Amz-Date` + `X-Amz-Expires` of its
/// presigned URL). `None` for any other key.
pub fn api_key_expires_at(key: &str) -> Option<SystemTime> {
    let encoded = key.strip_prefix(SHORT_TERM)?;
    let url = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?,
    );
    let url = std::str::from_utf8(&url).ok()?;
    let query = url.split_once('?')?.1;
    let param = |name: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    };
    let date = param("X-Amz-Date")?;
    let expires: u64 = param("X-Amz-Expires")?.parse().ok()?;
    // 20250708T120000Z -> 2025-07-08T12:00:00Z
    if date.len() != 16 || !date.is_ascii() {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    let signed = crate::time::parse_timestamp(&rfc3339).ok()?;
    signed.checked_add(Duration::from_secs(expires))
}

/// Which Bedrock credential a key is, for status and `check`.
pub fn kind(key: &str) -> Option<&'static str> {
    if is_bundle(key) {
        Some("aws")
    } else if key.starts_with(SHORT_TERM) || key.starts_with(LONG_TERM) {
        Some("bedrock_api_key")
    } else {
        None
    }
}

/// Which Bedrock credential the key in service is, from what the snapshot keeps (never the key).
pub fn snapshot_kind(k: &super::KeySnapshot) -> Option<&'static str> {
    let shown = k.fingerprint.as_str();
    if k.aws.is_some() {
        Some("aws")
    } else if shown.starts_with(SHORT_TERM) || shown.starts_with(LONG_TERM) {
        Some("bedrock_api_key")
    } else {
        None
    }
}

/// Lint of a Bedrock API key (a plain key on `provider = "bedrock"`).
pub fn api_key_findings(key: &str, source: &str, now: SystemTime, out: &mut Vec<Finding>) {
    if !key.starts_with(SHORT_TERM) {
        return;
    }
    let mut error = |code, message| error(out, code, message);
    match api_key_expires_at(key) {
        None => error(
            LintCode::WrongLength,
            format!("the key from {source} starts like a Bedrock short-term API key (bedrock-api-key-…) but does not hold the presigned URL such keys are made of; it was probably cut when copied: generate a new one"),
        ),
        Some(at) if at <= now => error(
            LintCode::Expired,
            format!(
                "the Bedrock short-term API key from {source} expired {} (short-term keys last at most 12 hours); generate a new one (the console's API keys page or aws-bedrock-token-generator), or use IAM credentials with key = {{ aws = … }} so nothing expires by surprise",
                crate::time::describe(at, now)
            ),
        ),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ID: &str = "AKIAIOSFODNN7EXAMPLE";
    pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn bundle(id: &str, secret: &str, token: Option<&str>) -> String {
        let wire = Wire {
            region: "us-east-1".into(),
            id: id.into(),
            secret: secret.into(),
            token: token.map(Into::into),
            expires: None,
        };
        format!("{BUNDLE}{}", serde_json::to_string(&wire).unwrap())
    }

    #[test]
    fn a_sessions_expiration_is_the_keys_and_an_expired_one_is_refused() {
        let with = |at: &str| {
            let wire = Wire {
                region: "us-east-1".into(),
                id: "ASIAIOSFODNN7EXAMPLE".into(),
                secret: SECRET.into(),
                token: Some("FwoGZXIvYXdzEXAMPLETOKEN".into()),
                expires: Some(at.into()),
            };
            format!("{BUNDLE}{}", serde_json::to_string(&wire).unwrap())
        };
        let later = with("2999-01-01T00:00:00Z");
        assert_eq!(
            expires_at(&later)
                .map(crate::time::rfc3339_string)
                .as_deref(),
            Some("2999-01-01T00:00:00Z")
        );
        assert!(lint(&later, "aws x").is_empty());
        let past = lint(&with("2020-01-01T00:00:00.5+00:00"), "aws x");
        assert_eq!(past[0].code, LintCode::Expired, "{past:?}");
        assert!(past[0].message.contains("expired"));
        assert_eq!(expires_at(&bundle(ID, SECRET, None)), None);
    }

    #[test]
    fn a_bundle_round_trips_and_signs() {
        let b = bundle(ID, SECRET, Some("FwoGZXIvYXdzEXAMPLETOKEN"));
        assert!(is_bundle(&b));
        assert_eq!(access_key_id(&b).as_deref(), Some(ID));
        let creds = Credentials::from_bundle(&b).unwrap();
        assert!(!format!("{creds:?}").contains("EXAMPLEKEY"));
        let headers = creds
            .sign(
                "POST",
                "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke",
                [("content-type", "application/json"), ("accept", "*/*")].into_iter(),
                b"{}",
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )
            .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        let auth = get("authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20231114/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="), "{auth}");
        assert_eq!(get("x-amz-date").unwrap(), "20231114T221320Z");
        assert_eq!(
            get("x-amz-security-token").unwrap(),
            "FwoGZXIvYXdzEXAMPLETOKEN"
        );
    }

    #[test]
    fn lint_names_the_part_and_never_the_secret() {
        assert!(lint(&bundle(ID, SECRET, None), "aws").is_empty());
        let short = lint(&bundle(ID, "wJalrXUtnFEMI/K7MDENG", None), "aws x");
        assert_eq!(short[0].code, LintCode::WrongLength);
        assert!(short[0].message.contains("exactly 40"));
        assert!(!short[0].message.contains("wJalr"));
        let session = lint(&bundle("ASIAIOSFODNN7EXAMPLE", SECRET, None), "aws x");
        assert!(session[0].message.contains("session token"), "{session:?}");
        assert_eq!(session[0].code, LintCode::AwsCredentials);
        assert_eq!(session[0].code.as_str(), "aws_credentials");
        let odd = lint(&bundle("AKIAIOSFODNN7EXAMPL1", SECRET, None), "aws x");
        assert!(odd[0].message.contains("A-Z and 2-7"), "{odd:?}");
        let long_term_with_token = lint(
            &bundle(ID, SECRET, Some("FwoGZXIvYXdzEXAMPLETOKEN")),
            "aws x",
        );
        assert_eq!(long_term_with_token[0].code, LintCode::AwsCredentials);
        assert!(long_term_with_token[0]
            .message
            .contains("Remove session_token"));
        assert!(!long_term_with_token[0].message.contains("FwoGZ"));
        let not_one = lint(&bundle("AIDAIOSFODNN7EXAMPLE", SECRET, None), "aws x");
        assert!(not_one[0].message.contains("AKIA"));
    }

    fn short_term(date: &str, expires: u32) -> String {
        let url = format!("bedrock.amazonaws.com/?Action=CallWithBearerToken&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAIOSFODNN7EXAMPLE%2F20250101%2Fus-east-1%2Fbedrock%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE&X-Amz-Signature=abcdef0123456789&X-Amz-SignedHeaders=host&Version=1");
        format!(
            "{SHORT_TERM}{}",
            base64::engine::general_purpose::STANDARD.encode(url)
        )
    }

    #[test]
    fn a_short_term_api_key_carries_its_expiry() {
        let key = short_term("20250708T120000Z", 43200);
        let at = api_key_expires_at(&key).unwrap();
        assert_eq!(crate::time::rfc3339_string(at), "2025-07-09T00:00:00Z");
        assert_eq!(kind(&key), Some("bedrock_api_key"));
        assert_eq!(
            kind("ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"),
            Some("bedrock_api_key")
        );
        assert_eq!(api_key_expires_at("ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"), None);
        let mut found = Vec::new();
        api_key_findings(&key, "env K", SystemTime::now(), &mut found);
        assert!(found[0].message.contains("expired"), "{found:?}");
        let mut found = Vec::new();
        api_key_findings(
            "bedrock-api-key-!!!",
            "env K",
            SystemTime::now(),
            &mut found,
        );
        assert!(found[0].message.contains("presigned URL"));
        let mut found = Vec::new();
        api_key_findings(&key, "env K", at - Duration::from_secs(60), &mut found);
        assert!(found.is_empty());
    }
}
