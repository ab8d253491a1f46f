//! Configuration pipeline: TOML text -> `Raw*` structs (serde; unknown fields refused) -> validated `Config`.
//! Every error names the file, line:column and the field, so a person can go straight to the mistake.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use toml::Spanned;

use crate::key::source::KeySource;
use crate::upstream::Provider;

/// A validated configuration, ready to build the runtime from.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub provider: Provider,
    pub base_url: Uri,
    /// Normalised: starts with `/`, no trailing `/` unless it is exactly `/`.
    pub prefix: String,
    pub key: KeySource,
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub auth_header: Option<HeaderName>,
    pub auth_prefix: Option<String>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

impl ConfigError {
    /// The dotted field the error is about (`server.listen`, `upstreams[1].base_url`).
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Read { .. } => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    #[serde(with = "duration")]
    shutdown_grace: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8788)),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    provider: Provider,
    base_url: Spanned<String>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    key: KeySource,
    #[serde(default)]
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    auth_header: Option<Spanned<String>>,
    #[serde(default)]
    auth_prefix: Option<Spanned<String>>,
    #[serde(default = "default_connect_timeout", with = "duration")]
    connect_timeout: Duration,
    #[serde(default = "default_response_header_timeout", with = "duration")]
    response_header_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_response_header_timeout() -> Duration {
    Duration::from_secs(120)
}

/// `"30s"`, `"5m"`, `"365d"`: humantime durations.
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"30s\", \"5m\" or \"365d\""
            ))
        })
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validate config text; `path` is only used in error messages and to resolve relative files.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let ctx = Ctx { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ctx.error(span.clone(), ctx.field_at(span.start), e.message().trim())
        })?;
        if raw.upstreams.is_empty() {
            return Err(ctx.error(
                0..0,
                "upstreams".into(),
                "no [[upstreams]] configured; add at least one (see config/keyproxy.toml)",
            ));
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        for (i, up) in raw.upstreams.into_iter().enumerate() {
            let up = validate_upstream(&ctx, i, up)?;
            if !names.insert(up.name.clone()) {
                return Err(ctx.error(
                    ctx.find_value(i, "name"),
                    format!("upstreams[{i}].name"),
                    &format!(
                        "duplicate upstream name {:?}; names must be unique",
                        up.name
                    ),
                ));
            }
            if !prefixes.insert(up.prefix.clone()) {
                return Err(ctx.error(
                    ctx.find_value(i, "prefix"),
                    format!("upstreams[{i}].prefix"),
                    &format!(
                        "prefix {:?} is already used by another upstream; give each upstream its own prefix",
                        up.prefix
                    ),
                ));
            }
            upstreams.push(up);
        }
        Ok(Config {
            path: path.to_owned(),
            server: ServerConfig {
                listen: raw.server.listen,
                admin_listen: raw.server.admin_listen,
                shutdown_grace: raw.server.shutdown_grace,
            },
            upstreams,
        })
    }
}

fn validate_upstream(ctx: &Ctx, i: usize, up: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let field = |f: &str| format!("upstreams[{i}].{f}");
    let name = up.name.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ctx.error(
            up.name.span(),
            field("name"),
            "name must be non-empty and use only letters, digits, '-' and '_' (it appears in metrics and admin paths)",
        ));
    }
    let base_url = parse_base_url(up.base_url.get_ref())
        .map_err(|m| ctx.error(up.base_url.span(), field("base_url"), &m))?;
    let prefix = match &up.prefix {
        None => "/".to_owned(),
        Some(p) => normalise_prefix(p.get_ref())
            .ok_or_else(|| ctx.error(p.span(), field("prefix"), "prefix must start with '/' and must not contain '?', '#', '.' or '..' segments, or '//'"))?,
    };
    let ca_certs = match &up.ca_file {
        None => Vec::new(),
        Some(f) => {
            let file = resolve(ctx.path, f.get_ref());
            read_ca_file(&file).map_err(|m| ctx.error(f.span(), field("ca_file"), &m))?
        }
    };
    let generic_only = |v: &Option<Spanned<String>>, name: &str| -> Result<(), ConfigError> {
        match v {
            Some(s) if up.provider != Provider::Generic => Err(ctx.error(
                s.span(),
                field(name),
                &format!(
                    "{name} applies only to provider = \"generic\"; provider {} uses its own scheme",
                    up.provider.as_str()
                ),
            )),
            _ => Ok(()),
        }
    };
    generic_only(&up.auth_header, "auth_header")?;
    generic_only(&up.auth_prefix, "auth_prefix")?;
    let auth_header = match &up.auth_header {
        None => None,
        Some(h) => Some(HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
            ctx.error(
                h.span(),
                field("auth_header"),
                "not a valid HTTP header name",
            )
        })?),
    };
    if let Some(p) = &up.auth_prefix {
        if http::HeaderValue::from_str(p.get_ref()).is_err() {
            return Err(ctx.error(
                p.span(),
                field("auth_prefix"),
                "auth_prefix must be printable ASCII",
            ));
        }
    }
    let key = up.key.resolved(ctx.path);
    Ok(UpstreamConfig {
        name: up.name.into_inner(),
        provider: up.provider,
        base_url,
        prefix,
        key,
        ca_certs,
        auth_header,
        auth_prefix: up.auth_prefix.map(Spanned::into_inner),
        connect_timeout: up.connect_timeout,
        response_header_timeout: up.response_header_timeout,
    })
}

fn parse_base_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "base_url {text:?} must start with https:// or http://"
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(format!("base_url {text:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "base_url {text:?} must not have a query string; put only scheme, host and an optional path"
        ));
    }
    Ok(uri)
}

/// `/anthropic/` -> `/anthropic`; `/` stays `/`. `None` when the prefix could never match safely.
pub(crate) fn normalise_prefix(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.contains(['?', '#']) || p.contains("//") {
        return None;
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.split('/').any(|s| s == "." || s == "..") {
        return None;
    }
    Some(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "CA file {} contains no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// Relative paths in the config are relative to the config file's directory.
pub(crate) fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_owned(),
    }
}

/// Error context: maps byte offsets to line:column and finds the dotted field at an offset.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn error(&self, span: Range<usize>, field: String, message: &str) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            field,
            message: message.to_owned(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, column)
    }

    /// The field at `offset`: the nearest table header above plus the key on that line,
    /// e.g. `upstreams[1].base_url` or `server.listen`.
    fn field_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[line_start..].lines().next().unwrap_or("");
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().to_owned())
            .filter(|k| !k.starts_with('['))
            .unwrap_or_default();
        let mut table = String::new();
        let mut upstream_index: Option<usize> = None;
        for l in self.text[..line_start].lines() {
            let l = l.trim();
            if l.starts_with("[[upstreams]]") {
                upstream_index = Some(upstream_index.map_or(0, |i| i + 1));
                table = format!("upstreams[{}]", upstream_index.unwrap_or(0));
            } else if let Some(t) = l.strip_prefix('[') {
                table = t.trim_end_matches(']').trim().to_owned();
            }
        }
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key,
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }

    /// The span of `field = ...` in the i-th `[[upstreams]]` table (for errors found after parsing).
    fn find_value(&self, i: usize, field: &str) -> Range<usize> {
        let mut seen = 0usize;
        let mut offset = 0usize;
        let mut inside = false;
        for l in self.text.split_inclusive('\n') {
            let t = l.trim();
            if t.starts_with("[[upstreams]]") {
                inside = seen == i;
                seen += 1;
            } else if t.starts_with('[') {
                inside = false;
            } else if inside && t.split_once('=').is_some_and(|(k, _)| k.trim() == field) {
                let start = offset + (l.len() - l.trim_start().len());
                return start..start + t.len();
            }
            offset += l.len();
        }
        0..0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/keyproxy.toml"), text)
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9000"

[[upstreams]]
name = "openai"
provider = "openai"
base_url = "https://api.openai.com"
key = { env = "OPENAI_API_KEY" }

[[upstreams]]
name = "claude"
provider = "anthropic"
base_url = "https://api.anthropic.com"
prefix = "/anthropic/"
key = { file = "keys/anthropic" }
connect_timeout = "2s"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.server.admin_listen.port(), 8788);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.upstreams[0].prefix, "/");
        assert_eq!(c.upstreams[1].prefix, "/anthropic");
        assert_eq!(c.upstreams[1].connect_timeout, Duration::from_secs(2));
        assert_eq!(
            c.upstreams[0].response_header_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(
            c.upstreams[1].key,
            KeySource::File(PathBuf::from("/etc/keys/anthropic"))
        );
    }

    fn err(text: &str) -> (usize, usize, String, String) {
        match parse(text).unwrap_err() {
            ConfigError::Invalid {
                line,
                column,
                field,
                message,
                ..
            } => (line, column, field, message),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = GOOD.replace("connect_timeout = \"2s\"", "conect_timeout = \"2s\"");
        let (line, col, field, msg) = err(&text);
        assert_eq!((line, col), (17, 1));
        assert_eq!(field, "upstreams[1].conect_timeout");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let (line, _, field, msg) = err(&GOOD.replace("\"127.0.0.1:9000\"", "9000"));
        assert_eq!(line, 3);
        assert_eq!(field, "server.listen");
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                GOOD.replace("https://api.openai.com", "ftp://x"),
                "upstreams[0].base_url",
                8,
            ),
            (
                GOOD.replace("provider = \"anthropic\"", "provider = \"antropic\""),
                "upstreams[1].provider",
                13,
            ),
            (
                GOOD.replace("\"2s\"", "\"two seconds\""),
                "upstreams[1].connect_timeout",
                17,
            ),
            (
                GOOD.replace("name = \"claude\"", "name = \"openai\""),
                "upstreams[1].name",
                12,
            ),
            (
                GOOD.replace("\"/anthropic/\"", "\"/\""),
                "upstreams[1].prefix",
                15,
            ),
            (
                GOOD.replace("{ file = \"keys/anthropic\" }", "{ vault = \"x\" }"),
                "upstreams[1].key",
                16,
            ),
            (
                GOOD.replace(
                    "key = { env = \"OPENAI_API_KEY\" }",
                    "key = { env = \"OPENAI_API_KEY\" }\nauth_header = \"x-key\"",
                ),
                "upstreams[0].auth_header",
                10,
            ),
        ];
        for (text, want_field, want_line) in cases {
            let (line, _, field, msg) = err(&text);
            assert_eq!(field, want_field, "{msg}");
            assert_eq!(line, want_line, "{field}: {msg}");
        }
    }

    #[test]
    fn error_display_is_file_line_col_field() {
        let e = parse(&GOOD.replace("\"127.0.0.1:9000\"", "\"nope\"")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/keyproxy.toml:3:"), "{s}");
        assert!(s.contains("server.listen"), "{s}");
    }

    #[test]
    fn no_upstreams_is_an_error() {
        let (_, _, field, _) = err("[server]\n");
        assert_eq!(field, "upstreams");
    }

    #[test]
    fn prefix_normalisation() {
        assert_eq!(normalise_prefix("/").as_deref(), Some("/"));
        assert_eq!(normalise_prefix("/a/b/").as_deref(), Some("/a/b"));
        assert_eq!(normalise_prefix("a"), None);
        assert_eq!(normalise_prefix("/a/../b"), None);
        assert_eq!(normalise_prefix("//a"), None);
    }
}
