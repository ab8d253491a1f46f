//! Configuration pipeline: TOML text -> `Raw*` structs (serde; unknown fields refused) -> validated `Config`.
//! Every error names the file, line:column and the field, so a person can go straight to the mistake.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::Uri;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use toml::Spanned;

use crate::key::expiry::ExpiryPolicy;
use crate::key::lint::LintMode;
use crate::key::minted::MintedSource;
use crate::key::source::{resolve, KeySource};
use crate::provider::Provider;

/// A validated configuration, ready to build the runtime from.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// Apps allowed to use the proxy; empty means any app that can connect.
    pub clients: Vec<ClientConfig>,
}

/// `[[clients]]`: an app's own token ("virtual key"), which it sends instead of a provider key.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub token: KeySource,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
    /// Bearer token that admin mutations (POST /keys/...) require; none means they are refused.
    pub admin_token: Option<KeySource>,
    /// Fallback re-read of file and command key sources, for file events that never arrive.
    pub key_reload_interval: Duration,
    /// A client must send its request headers within this long.
    pub client_header_timeout: Duration,
    /// The longest wait between two reads of a request body (an upload that keeps moving is
    /// never cut).
    pub client_body_timeout: Duration,
    /// Listen beyond loopback without client tokens (something else restricts who connects).
    pub allow_unauthenticated: bool,
    /// Event-loop threads serving the proxy port: 0 (the default) one per core, or N.
    pub workers: usize,
    /// Names besides loopback that requests may carry in `Host` (lowercase; `name` or `name:port`).
    pub allowed_hosts: Vec<String>,
    /// Web origins (`scheme://host[:port]`, lowercase) whose pages may call the proxy port.
    pub allowed_origins: Vec<String>,
    /// Where `keyproxy.db` lives; `None` when no default could be found (no `$HOME`).
    pub state_dir: Option<PathBuf>,
    /// After a key file changes in place, its bytes must stay the same this long before it is read.
    pub key_settle: Duration,
}

/// More event loops than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub provider: Provider,
    pub base_url: Uri,
    /// Normalised: starts with `/`, no trailing `/` unless it is exactly `/`.
    pub prefix: String,
    /// The first key's source (`key = …`, or the first of `keys = [...]`).
    pub key: KeySource,
    /// Every key the upstream may use: `key = …` is a pool of one.
    pub keys: Vec<PoolKeyConfig>,
    /// How long a rate-limited key rests when the provider names no `Retry-After`.
    pub cooldown: Duration,
    /// How long a key replaced with `mode=add&retire=…` keeps serving (`grace`; default: none).
    pub grace: Option<Duration>,
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub auth_header: Option<HeaderName>,
    pub auth_prefix: Option<String>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub expiry: ExpiryPolicy,
    pub validate_on_rotate: bool,
    /// Path of the cheapest authenticated endpoint, for probes (generic upstreams).
    pub probe_path: Option<String>,
    pub lint: LintMode,
    /// An open response stream with no byte for this long is cut (a stalled upstream).
    pub stream_idle_timeout: Duration,
}

/// One entry of `keys = [...]` (or the single `key = …`).
#[derive(Debug, Clone)]
pub struct PoolKeyConfig {
    /// Unique within the upstream; in logs, metrics and admin paths.
    pub name: String,
    /// Its share of the requests (smooth weighted round-robin).
    pub weight: u32,
    pub source: KeySource,
    pub expiry: ExpiryPolicy,
}

/// Heavier than this is a typo: the schedule holds one slot per unit of weight.
const MAX_WEIGHT: i64 = 1000;
/// Keys a pool may hold (they are indexed by `u16` on the request path; far more than needed).
const MAX_POOL_KEYS: usize = 64;
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        // Not `source`: the sentence already says it, and an error chain would say it twice.
        cause: std::io::Error,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default, deserialize_with = "upstream_tables")]
    upstreams: Vec<RawUpstream>,
    #[serde(default, deserialize_with = "client_tables")]
    clients: Vec<RawClient>,
}

fn upstream_tables<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RawUpstream>, D::Error> {
    array_of_tables(d, "upstreams")
}

fn client_tables<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RawClient>, D::Error> {
    array_of_tables(d, "clients")
}

/// `[[name]]` entries; a single `[name]` table is the common slip, named as such.
fn array_of_tables<'de, D, T>(d: D, name: &'static str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Tables<T>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Tables<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "[[{}]] tables", self.0)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Vec<T>, A::Error> {
            let name = self.0;
            Err(serde::de::Error::custom(format!(
                "[{name}] is a single table: use [[{name}]] (an array of tables, double brackets), one per entry"
            )))
        }
    }
    d.deserialize_any(Tables(name, std::marker::PhantomData))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Spanned<String>,
    token: Spanned<KeySource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<Spanned<SocketAddr>>,
    admin_listen: Spanned<SocketAddr>,
    shutdown_grace: Spanned<HumanDuration>,
    admin_token: Option<Spanned<KeySource>>,
    key_reload_interval: Spanned<HumanDuration>,
    client_header_timeout: Spanned<HumanDuration>,
    client_body_timeout: Spanned<HumanDuration>,
    allow_unauthenticated: Spanned<bool>,
    workers: Spanned<usize>,
    allowed_hosts: Vec<Spanned<String>>,
    allowed_origins: Vec<Spanned<String>>,
    state_dir: Option<Spanned<PathBuf>>,
    key_settle: Spanned<HumanDuration>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: None,
            admin_listen: unset(SocketAddr::from(([127, 0, 0, 1], 8788))),
            shutdown_grace: unset(HumanDuration(Duration::from_secs(30))),
            admin_token: None,
            key_reload_interval: unset(HumanDuration(Duration::from_secs(30))),
            client_header_timeout: unset(HumanDuration(Duration::from_secs(30))),
            client_body_timeout: unset(HumanDuration(Duration::from_secs(60))),
            allow_unauthenticated: unset(false),
            workers: unset(0),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            state_dir: None,
            key_settle: unset(HumanDuration(Duration::from_secs(1))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    provider: Spanned<Provider>,
    /// Optional only so that its absence is named at its table, not at the table above.
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<KeySource>>,
    /// A pool: each entry a key source plus optional `name`, `weight`, `expires_at`, `max_age`.
    /// Kept as a TOML value so that nothing in it is echoed by a type error (it may be a pasted
    /// key) and the source part is read by `KeySource`'s own rules.
    #[serde(default)]
    keys: Option<Spanned<toml::Value>>,
    #[serde(default)]
    cooldown: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    grace: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    auth_header: Option<Spanned<String>>,
    #[serde(default)]
    auth_prefix: Option<Spanned<String>>,
    #[serde(default)]
    connect_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    response_header_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    expires_at: Option<Spanned<ExpiresAt>>,
    #[serde(default)]
    issued_at: Option<Spanned<Timestamp>>,
    #[serde(default)]
    max_age: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    validate_on_rotate: Option<Spanned<bool>>,
    #[serde(default)]
    probe_path: Option<Spanned<String>>,
    #[serde(default)]
    lint: Option<Spanned<LintMode>>,
    #[serde(default)]
    stream_idle_timeout: Option<Spanned<HumanDuration>>,
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A default for a field the file did not set (it has no place in the text).
fn unset<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// An optional duration field's value, or its default.
fn duration_or(field: &Option<Spanned<HumanDuration>>, default: Duration) -> Duration {
    field.as_ref().map_or(default, |d| d.get_ref().0)
}

/// `"30s"`, `"5m"`, `"365d"`: humantime durations.
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                crate::time::parse_duration(text)
                    .map(HumanDuration)
                    .map_err(E::custom)
            }
            // A bare number has no unit; say which string the person most likely meant.
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "durations are strings with a unit: write \"{n}s\" (or \"{n}m\", \"{n}h\", \"{n}d\")"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "durations are strings with a unit: write \"{}ms\"",
                    (n * 1000.0).round()
                )))
            }
        }
        d.deserialize_any(Text)
    }
}

/// `"2027-11-27"` (midnight UTC) or RFC 3339 (`"2027-11-27T09:00:00Z"`, `"...+02:00"`).
#[derive(Debug, Clone, Copy)]
struct Timestamp(SystemTime);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Timestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a date such as \"2027-11-27\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                crate::time::parse_timestamp(text).map(Timestamp).map_err(|e| {
                    E::custom(format!(
                        "invalid date {text:?} ({e}); write \"2027-11-27\" or \"2027-11-27T09:00:00Z\""
                    ))
                })
            }
            // An unquoted TOML date arrives as toml's datetime (a one-entry map): the person
            // wrote the right date, only without quotes.
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Timestamp, A::Error> {
                let written = match map.next_entry::<String, String>() {
                    Ok(Some((_, value))) => value,
                    _ => "2027-11-27".to_owned(),
                };
                Err(unquoted_date(&written))
            }
        }
        d.deserialize_any(Text)
    }
}

/// How toml hands over an unquoted date: a one-entry map under this key.
const TOML_DATETIME: &str = "$__toml_private_datetime";

/// The person wrote the right date, only without quotes.
fn unquoted_date<E: serde::de::Error>(written: &str) -> E {
    E::custom(format!(
        "dates are strings here: write \"{written}\" (with the quotes)"
    ))
}

/// `expires_at = "2027-01-01"` (the key in the source) or `expires_at = { "sk-proj-…abcd" =
/// "2027-01-01" }` (keys by fingerprint, whenever they come in).
#[derive(Debug, Clone)]
enum ExpiresAt {
    TheSourcesKey(Timestamp),
    ByFingerprint(Vec<(String, SystemTime)>),
}

impl<'de> Deserialize<'de> for ExpiresAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ExpiresAt;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a date (\"2027-11-27\") or a table of fingerprints and dates ({ \"sk-proj-…abcd\" = \"2027-11-27\" })")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ExpiresAt, E> {
                Timestamp::deserialize(serde::de::value::StrDeserializer::<E>::new(v))
                    .map(ExpiresAt::TheSourcesKey)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ExpiresAt, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == TOML_DATETIME {
                        let written: String = map.next_value()?;
                        return Err(unquoted_date(&written));
                    }
                    // A fingerprint shows `…` (or `...` typed by hand); anything else may be the key itself.
                    let name = name.replace("...", "…");
                    if !name.contains('…') {
                        return Err(serde::de::Error::custom("name each key by its fingerprint as keyproxy shows it (\"sk-proj-…abcd\"), never by the key itself"));
                    }
                    let at: Timestamp = map.next_value()?;
                    entries.push((name, at.0));
                }
                Ok(ExpiresAt::ByFingerprint(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
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
        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        // prefix -> (upstream, the line its prefix was set on)
        let mut prefixes: HashMap<String, (String, usize)> = HashMap::new();
        for (i, up) in raw.upstreams.into_iter().enumerate() {
            let name_span = up.name.span();
            // Without a `prefix` line the upstream's default "/" is its own table's doing.
            let prefix_span = up.prefix.as_ref().map_or(name_span.clone(), Spanned::span);
            let prefix_line = ctx.line_col(prefix_span.start).0;
            let up = validate_upstream(&ctx, i, up)?;
            if !names.insert(up.name.clone()) {
                return Err(ctx.error(
                    name_span,
                    format!("upstreams[{i}].name"),
                    &format!(
                        "duplicate upstream name {:?}; names must be unique",
                        up.name
                    ),
                ));
            }
            let entry = (up.name.clone(), prefix_line);
            if let Some((other, line)) = prefixes.insert(up.prefix.clone(), entry) {
                return Err(ctx.error(
                    prefix_span,
                    format!("upstreams[{i}].prefix"),
                    &format!(
                        "prefix {:?} is already used by upstream {other:?} (line {line}); give each upstream its own prefix (e.g. prefix = \"/{}\")",
                        up.prefix, up.name
                    ),
                ));
            }
            upstreams.push(up);
        }
        let clients = validate_clients(&ctx, raw.clients)?;
        if *raw.server.workers.get_ref() > MAX_WORKERS {
            return Err(ctx.error(
                raw.server.workers.span(),
                "server.workers".into(),
                &format!(
                    "{} event-loop threads is more than keyproxy runs ({MAX_WORKERS} at most); use 0 for one per core",
                    raw.server.workers.get_ref()
                ),
            ));
        }
        let listen = raw
            .server
            .listen
            .as_ref()
            .map_or(DEFAULT_LISTEN, |l| *l.get_ref());
        let allow_unauthenticated = *raw.server.allow_unauthenticated.get_ref();
        if !listen.ip().is_loopback() && clients.is_empty() && !allow_unauthenticated {
            let span = raw.server.listen.as_ref().map_or(0..0, Spanned::span);
            return Err(ctx.error(
                span,
                "server.listen".into(),
                &format!(
                    "refusing to listen on {listen} without client tokens: anyone who can reach that address could spend your API key. \
                     Listen on 127.0.0.1, or add [[clients]] with a token for each app (apps send it as their API key), \
                     or set [server] allow_unauthenticated = true if something else (a firewall, a container's port mapping, a pod network) decides who can connect"
                ),
            ));
        }
        let allowed_hosts = validate_list(
            &ctx,
            "allowed_hosts",
            &raw.server.allowed_hosts,
            allowed_host,
        )?;
        let allowed_origins = validate_list(
            &ctx,
            "allowed_origins",
            &raw.server.allowed_origins,
            allowed_origin,
        )?;
        Ok(Config {
            path: path.to_owned(),
            clients,
            server: ServerConfig {
                listen,
                admin_listen: *raw.server.admin_listen.get_ref(),
                shutdown_grace: raw.server.shutdown_grace.get_ref().0,
                admin_token: raw
                    .server
                    .admin_token
                    .map(|t| t.into_inner().resolved(path)),
                key_reload_interval: raw.server.key_reload_interval.get_ref().0,
                client_header_timeout: raw.server.client_header_timeout.get_ref().0,
                client_body_timeout: raw.server.client_body_timeout.get_ref().0,
                allow_unauthenticated,
                workers: *raw.server.workers.get_ref(),
                allowed_hosts,
                allowed_origins,
                state_dir: match &raw.server.state_dir {
                    Some(dir) => Some(resolve(path, dir.get_ref())),
                    None => default_state_dir(),
                },
                key_settle: raw.server.key_settle.get_ref().0,
            },
            upstreams,
        })
    }
}

/// The region an AWS endpoint host names (`bedrock-runtime.us-west-2.amazonaws.com`,
/// `bedrock-runtime-fips.us-east-1.amazonaws.com`); `None` for any other host.
fn aws_host_region(host: &str) -> Option<&str> {
    let rest = host.strip_suffix(".amazonaws.com")?;
    let (_, region) = rest.rsplit_once('.')?;
    region.contains('-').then_some(region)
}

/// Names of upstreams, clients and keys: non-empty, letters, digits, '-' and '_' (they appear in
/// logs, metric labels and admin paths as they are).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `$KEYPROXY_STATE_DIR`, else `$XDG_STATE_HOME/keyproxy`, else `$HOME/.local/state/keyproxy`.
pub fn default_state_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("KEYPROXY_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("keyproxy")))
        .or_else(|| var("HOME").map(|d| d.join(".local/state/keyproxy")))
}

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8787);

/// Each entry of a `[server]` list, checked and normalised by `check`, or the error at its line.
fn validate_list(
    ctx: &Ctx,
    field: &str,
    raw: &[Spanned<String>],
    check: fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, entry)| {
            check(entry.get_ref())
                .map_err(|m| ctx.error(entry.span(), format!("server.{field}[{i}]"), &m))
        })
        .collect()
}

/// `keyproxy.internal` or `keyproxy.internal:8787`; no wildcards (each name is a decision).
fn allowed_host(entry: &str) -> Result<String, String> {
    let host = entry.trim().trim_end_matches('.').to_ascii_lowercase();
    let (name, port) = match host.strip_prefix('[') {
        // `[fd00::1]` or `[fd00::1]:8787`
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => (addr, rest.strip_prefix(':')),
            None => ("", None),
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host.as_str(), None),
        },
    };
    let port_ok = port.map_or(true, |p| p.parse::<u16>().is_ok());
    let name_ok = name.parse::<std::net::IpAddr>().is_ok()
        || (!name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !name_ok || !port_ok {
        return Err(format!(
            "{entry:?} is not a host name: write the name apps use to reach keyproxy, e.g. \"keyproxy.internal\" (any port) or \"keyproxy.internal:8787\"; wildcards are not accepted, list each name"
        ));
    }
    Ok(host)
}

/// `http://localhost:3000`: a web origin exactly as a browser sends it (scheme, host, optional
/// port, nothing else). `null` and `*` would let any page in.
fn allowed_origin(entry: &str) -> Result<String, String> {
    let origin = entry.trim().to_ascii_lowercase();
    if origin == "null" || origin.contains('*') {
        return Err(format!(
            "{entry:?} would let any web page use your key (sandboxed pages and local files send Origin: null); list the exact origins of your own pages, e.g. \"http://localhost:3000\""
        ));
    }
    let well_formed = origin.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
            && !rest.contains(['/', '?', '#', '@'])
            && allowed_host(rest).is_ok()
    });
    if !well_formed {
        let hint = origin
            .split_once("://")
            .and_then(|(scheme, rest)| {
                let host = rest
                    .split(['/', '?', '#'])
                    .next()
                    .filter(|h| !h.is_empty())?;
                Some(format!("; write it as \"{scheme}://{host}\""))
            })
            .unwrap_or_default();
        return Err(format!(
            "{entry:?} is not an origin: an origin is scheme://host[:port] with no path, exactly as the browser sends it in the Origin header (e.g. \"http://localhost:3000\"){hint}"
        ));
    }
    Ok(origin)
}

fn validate_clients(ctx: &Ctx, raw: Vec<RawClient>) -> Result<Vec<ClientConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut clients = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let name = c.name.get_ref();
        if !valid_name(name) || !names.insert(name.clone()) {
            return Err(ctx.error(
                c.name.span(),
                format!("clients[{i}].name"),
                "client names must be unique and use only letters, digits, '-' and '_' (they appear in logs and metrics)",
            ));
        }
        clients.push(ClientConfig {
            name: c.name.into_inner(),
            token: c.token.into_inner().resolved(ctx.path),
        });
    }
    Ok(clients)
}

fn validate_upstream(ctx: &Ctx, i: usize, up: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let field = |f: &str| format!("upstreams[{i}].{f}");
    let name = up.name.get_ref();
    if !valid_name(name) {
        return Err(ctx.error(
            up.name.span(),
            field("name"),
            "name must be non-empty and use only letters, digits, '-' and '_' (it appears in metrics and admin paths)",
        ));
    }
    let Some(base_url) = &up.base_url else {
        return Err(ctx.error(
            up.name.span(),
            field("base_url"),
            &format!(
                "upstream {name:?} has no base_url: write base_url under [[upstreams]] (e.g. base_url = \"{}\")",
                provider_example_url(*up.provider.get_ref())
            ),
        ));
    };
    let base_url = parse_base_url(base_url.get_ref())
        .map_err(|m| ctx.error(base_url.span(), field("base_url"), &m))?;
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
    let provider = *up.provider.get_ref();
    let generic_only = |v: &Option<Spanned<String>>, name: &str| -> Result<(), ConfigError> {
        match v {
            Some(s) if provider != Provider::Generic => Err(ctx.error(
                s.span(),
                field(name),
                &format!(
                    "{name} applies only to provider = \"generic\"; provider {} uses its own scheme",
                    provider.as_str()
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
    if let (Some(_), Some(max_age)) = (&up.expires_at, &up.max_age) {
        return Err(ctx.error(
            max_age.span(),
            field("max_age"),
            "set either expires_at or max_age, not both",
        ));
    }
    if let (Some(issued_at), None) = (&up.issued_at, &up.max_age) {
        return Err(ctx.error(
            issued_at.span(),
            field("issued_at"),
            "issued_at only counts with max_age; add max_age = \"365d\" or use expires_at",
        ));
    }
    let probe_path = match &up.probe_path {
        Some(p) if !p.get_ref().starts_with('/') => {
            return Err(ctx.error(
                p.span(),
                field("probe_path"),
                "probe_path must start with '/'",
            ));
        }
        Some(p) => Some(p.get_ref().clone()),
        None => None,
    };
    let expiry = ExpiryPolicy {
        expires_at: match up.expires_at.as_ref().map(Spanned::get_ref) {
            Some(ExpiresAt::TheSourcesKey(at)) => Some(at.0),
            _ => None,
        },
        expires_at_by_key: match up.expires_at.map(Spanned::into_inner) {
            Some(ExpiresAt::ByFingerprint(entries)) => entries,
            _ => Vec::new(),
        },
        issued_at: up.issued_at.map(|t| t.get_ref().0),
        max_age: up.max_age.map(|d| d.get_ref().0),
    };
    if let Some(key) = &up.key {
        if matches!(key.get_ref(), KeySource::Aws(_)) && provider != Provider::Bedrock {
            return Err(ctx.error(
                key.span(),
                field("key"),
                "key = { aws = … } signs requests with SigV4 for Amazon Bedrock: set provider = \"bedrock\"",
            ));
        }
        if let (KeySource::Aws(spec), Some(host)) = (key.get_ref(), base_url.host()) {
            if let Some(at) = aws_host_region(host).filter(|r| *r != spec.region) {
                return Err(ctx.error(
                    key.span(),
                    field("key"),
                    &format!("aws.region is {:?} but base_url is in {at:?} ({host}): AWS refuses a signature made for another region; make them the same", spec.region),
                ));
            }
        }
    }
    let keys = match (up.key, up.keys) {
        (Some(key), None) => vec![PoolKeyConfig {
            name: name.clone(),
            weight: 1,
            source: key.into_inner().resolved(ctx.path),
            expiry: expiry.clone(),
        }],
        (None, Some(keys)) => pool_keys(ctx, i, keys, &expiry)?,
        (Some(_), Some(keys)) => {
            return Err(ctx.error(
                keys.span(),
                field("keys"),
                "set either key (one key) or keys (a pool), not both",
            ))
        }
        (None, None) => {
            return Err(ctx.error(
                up.name.span(),
                field("key"),
                &format!("upstream {name:?} has no key: write key = {{ env = \"OPENAI_API_KEY\" }} (or keys = [ {{ file = \"…\" }}, {{ env = \"…\" }} ] for a pool)"),
            ))
        }
    };
    // One auth header per upstream: a pool's keys are all token credentials or none.
    if keys.iter().any(|k| k.source.minted().is_some())
        && keys.iter().any(|k| k.source.minted().is_none())
    {
        return Err(ctx.error(
            up.name.span(),
            field("keys"),
            "a pool mixes token credentials (oauth2, azure_ad, google_service_account) with plain keys; they go in different headers, so make them separate upstreams",
        ));
    }
    Ok(UpstreamConfig {
        name: up.name.into_inner(),
        provider,
        base_url,
        prefix,
        key: keys[0].source.clone(),
        keys,
        cooldown: duration_or(&up.cooldown, DEFAULT_COOLDOWN),
        grace: up.grace.as_ref().map(|d| d.get_ref().0),
        ca_certs,
        auth_header,
        auth_prefix: up.auth_prefix.map(Spanned::into_inner),
        connect_timeout: duration_or(&up.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
        response_header_timeout: duration_or(
            &up.response_header_timeout,
            DEFAULT_RESPONSE_HEADER_TIMEOUT,
        ),
        expiry,
        validate_on_rotate: up.validate_on_rotate.is_some_and(|v| *v.get_ref()),
        probe_path,
        lint: up.lint.map(Spanned::into_inner).unwrap_or_default(),
        stream_idle_timeout: duration_or(&up.stream_idle_timeout, DEFAULT_STREAM_IDLE_TIMEOUT),
    })
}

/// `keys = [ { file = "…", name = "a", weight = 2 }, … ]`: each entry's own settings taken out,
/// the rest read as a key source by its own rules (so a pasted secret is refused, not echoed).
fn pool_keys(
    ctx: &Ctx,
    i: usize,
    keys: Spanned<toml::Value>,
    upstream_expiry: &ExpiryPolicy,
) -> Result<Vec<PoolKeyConfig>, ConfigError> {
    let span = keys.span();
    let keys = match keys.into_inner() {
        toml::Value::Array(keys) if !keys.is_empty() && keys.len() <= MAX_POOL_KEYS => keys,
        _ => {
            return Err(ctx.error(
                span,
                format!("upstreams[{i}].keys"),
                &format!("keys is a list of 1 to {MAX_POOL_KEYS} key sources, e.g. keys = [ {{ file = \"/run/secrets/a\" }}, {{ env = \"KEY_B\", weight = 2 }} ]"),
            ))
        }
    };
    let mut names = HashSet::new();
    let mut pool = Vec::with_capacity(keys.len());
    for (j, mut value) in keys.into_iter().enumerate() {
        let err = |f: &str, m: &str| {
            let field = match f {
                "" => format!("upstreams[{i}].keys[{j}]"),
                f => format!("upstreams[{i}].keys[{j}].{f}"),
            };
            ctx.error(span.clone(), field, m)
        };
        let mut take = |k: &str| match &mut value {
            toml::Value::Table(t) => t.remove(k),
            _ => None,
        };
        let name = match take("name") {
            None => format!("key-{}", j + 1),
            Some(toml::Value::String(n)) => n,
            Some(_) => return Err(err("name", "name is a string")),
        };
        if !valid_name(&name) || !names.insert(name.clone()) {
            return Err(err("name", "key names must be unique within the upstream and use only letters, digits, '-' and '_' (they appear in logs, metrics and admin paths)"));
        }
        let weight = match take("weight") {
            None => 1,
            Some(toml::Value::Integer(w)) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(_) => {
                return Err(err(
                    "weight",
                    &format!(
                    "weight is a whole number from 1 to {MAX_WEIGHT} (its share of the requests)"
                ),
                ))
            }
        };
        let expires_at = match take("expires_at") {
            None => None,
            Some(toml::Value::String(t)) => {
                Some(crate::time::parse_timestamp(&t).map_err(|e| {
                    err(
                        "expires_at",
                        &format!(
                            "invalid date ({e}); write \"2027-11-27\" or \"2027-11-27T09:00:00Z\""
                        ),
                    )
                })?)
            }
            Some(_) => {
                return Err(err(
                    "expires_at",
                    "dates are strings here: write \"2027-11-27\" (with the quotes)",
                ))
            }
        };
        let max_age = match take("max_age") {
            None => None,
            Some(toml::Value::String(t)) => {
                Some(crate::time::parse_duration(&t).map_err(|e| err("max_age", &e))?)
            }
            Some(_) => {
                return Err(err(
                    "max_age",
                    "durations are strings with a unit, e.g. \"90d\"",
                ))
            }
        };
        if expires_at.is_some() && max_age.is_some() {
            return Err(err("max_age", "set either expires_at or max_age, not both"));
        }
        let source = KeySource::deserialize(value)
            .map_err(|e| err("", e.message()))?
            .resolved(ctx.path);
        if matches!(source, KeySource::Aws(_)) {
            return Err(err("", "AWS credentials sign for one upstream: write key = { aws = … } instead of a pool of keys"));
        }
        let expiry = if expires_at.is_some() || max_age.is_some() {
            ExpiryPolicy {
                expires_at,
                max_age,
                ..ExpiryPolicy::default()
            }
        } else {
            upstream_expiry.clone()
        };
        pool.push(PoolKeyConfig {
            name,
            weight,
            source,
            expiry,
        });
    }
    Ok(pool)
}

impl UpstreamConfig {
    /// Configured with `keys = [...]` (a `key = …` upstream is one key named after the upstream).
    pub fn is_pool(&self) -> bool {
        self.keys.len() != 1 || self.keys.iter().any(|k| k.name != self.name)
    }

    /// Settings that are valid but most likely not what the person meant: `check` shows each as
    /// a ⚠ line and `run` logs it at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut found = Vec::new();
        let url = &self.base_url;
        let path = url.path().trim_end_matches('/');
        let last = path.rsplit('/').next().unwrap_or("");
        if self.provider != Provider::Azure && is_version_segment(last) {
            let without = format!(
                "{}://{}{}",
                url.scheme_str().unwrap_or("https"),
                url.authority().map_or("", |a| a.as_str()),
                &path[..path.len() - last.len() - 1]
            );
            found.push(format!(
                "base_url {url} ends in /{last}, which the apps add themselves (an SDK's base_url is http://127.0.0.1:8787/{last}): every request would go to /{last}/{last}/… and fail with 404. Write base_url = \"{without}\" (unless the apps leave /{last} out of their paths)"
            ));
        }
        // A deployment's whole URL pasted from the portal: the SDKs add /openai/deployments/… too.
        if self.provider == Provider::Azure && path.contains("/openai/deployments") {
            found.push(format!(
                "base_url {url} names a deployment, which the apps' paths name themselves (AzureOpenAI sends /openai/deployments/NAME/…): every request would go to {path}/openai/deployments/… and fail with 404. Write base_url = \"{}://{}\"",
                url.scheme_str().unwrap_or("https"),
                url.authority().map_or("", |a| a.as_str()),
            ));
        }
        if let Some(host) = beyond_this_machine_in_clear(url) {
            found.push(format!(
                "base_url {url} is plain http:// to {host}, beyond this machine: the API key would travel unencrypted. Use https://"
            ));
        }
        found
    }

    /// Like `warnings`, about the token endpoints of token credentials (`check` shows each as a
    /// `token_url` line).
    pub fn token_warnings(&self) -> Vec<String> {
        let token_urls = self.keys.iter().filter_map(|k| match k.source.minted() {
            Some(m) => match &**m {
                MintedSource::ClientCredentials { grant, .. } => Some(&grant.token_url),
                MintedSource::ServiceAccount(_) => None,
            },
            None => None,
        });
        token_urls
            .filter_map(|token_url| {
                let url = token_url.parse::<Uri>().ok()?;
                let host = beyond_this_machine_in_clear(&url)?;
                Some(format!(
                    "token_url {token_url} is plain http:// to {host}, beyond this machine: the client secret and the tokens would travel unencrypted. Use https://"
                ))
            })
            .collect()
    }
}

/// The host of an `http://` URL that is not this machine (where what is sent travels in clear).
fn beyond_this_machine_in_clear(url: &Uri) -> Option<&str> {
    let host = url.host().unwrap_or("").trim_matches(['[', ']']);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (url.scheme_str() == Some("http") && !loopback).then_some(host)
}

/// `v1`, `v2`, `v1beta`, `v1alpha2`: an API version segment that SDKs put in their own paths.
pub fn is_version_segment(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let tail = &rest[digits..];
    digits > 0
        && (tail.is_empty()
            || ["beta", "alpha"].iter().any(|t| {
                tail.strip_prefix(t)
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            }))
}

/// What `base_url` usually is for a provider, for the message that asks for one.
fn provider_example_url(provider: Provider) -> &'static str {
    match provider {
        Provider::Openai => "https://api.openai.com",
        Provider::Anthropic => "https://api.anthropic.com",
        Provider::Gemini => "https://generativelanguage.googleapis.com",
        Provider::Azure => "https://YOUR-RESOURCE.openai.azure.com",
        Provider::Vertex => "https://us-central1-aiplatform.googleapis.com",
        Provider::Bedrock => "https://bedrock-runtime.us-east-1.amazonaws.com",
        Provider::Generic => "https://api.example.com",
    }
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
        let mut client_index: Option<usize> = None;
        // A table header on the error's own line (a missing field, a table of the wrong kind)
        // names that table.
        let through = if key.is_empty() {
            line_start + line.len()
        } else {
            line_start
        };
        for l in self.text[..through].lines() {
            let l = l.trim();
            if l.starts_with("[[upstreams]]") {
                upstream_index = Some(upstream_index.map_or(0, |i| i + 1));
                table = format!("upstreams[{}]", upstream_index.unwrap_or(0));
            } else if l.starts_with("[[clients]]") {
                client_index = Some(client_index.map_or(0, |i| i + 1));
                table = format!("clients[{}]", client_index.unwrap_or(0));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_timestamp;

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
        assert_eq!(c.server.workers, 0, "one event loop per core by default");
        assert_eq!(c.server.client_header_timeout, Duration::from_secs(30));
        assert_eq!(c.server.client_body_timeout, Duration::from_secs(60));
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
    fn an_absurd_worker_count_names_line_and_field() {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:9000\"",
            "listen = \"127.0.0.1:9000\"\nworkers = 50000",
        );
        let (line, _, field, msg) = err(&text);
        assert_eq!((line, field.as_str()), (4, "server.workers"));
        assert!(msg.contains("1024 at most"), "{msg}");
        let text = GOOD.replace(
            "listen = \"127.0.0.1:9000\"",
            "listen = \"127.0.0.1:9000\"\nworkers = 4",
        );
        assert_eq!(parse(&text).unwrap().server.workers, 4);
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
    fn allowed_hosts_and_origins_are_normalised_or_refused_at_their_line() {
        let with = |lines: &str| GOOD.replace("[server]\n", &format!("[server]\n{lines}\n"));
        let c = parse(&with(
            "allowed_hosts = [\"KeyProxy.Internal\", \"svc:9000\", \"[fd00::1]\"]\nallowed_origins = [\"HTTP://localhost:3000\", \"chrome-extension://abcdef\"]",
        ))
        .unwrap();
        assert_eq!(
            c.server.allowed_hosts,
            ["keyproxy.internal", "svc:9000", "[fd00::1]"]
        );
        assert_eq!(
            c.server.allowed_origins,
            ["http://localhost:3000", "chrome-extension://abcdef"]
        );
        for (line, field, says) in [
            (
                "allowed_hosts = [\"ok\", \"*.example\"]",
                "server.allowed_hosts[1]",
                "wildcards",
            ),
            (
                "allowed_hosts = [\"a:b\"]",
                "server.allowed_hosts[0]",
                "not a host name",
            ),
            (
                "allowed_origins = [\"*\"]",
                "server.allowed_origins[0]",
                "any web page",
            ),
            (
                "allowed_origins = [\"null\"]",
                "server.allowed_origins[0]",
                "Origin: null",
            ),
            (
                "allowed_origins = [\"http://localhost:3000/\"]",
                "server.allowed_origins[0]",
                "write it as \"http://localhost:3000\"",
            ),
            (
                "allowed_origins = [\"localhost:3000\"]",
                "server.allowed_origins[0]",
                "scheme://host",
            ),
        ] {
            let e = parse(&with(line)).unwrap_err().to_string();
            assert!(e.starts_with("/etc/keyproxy.toml:3:"), "{e}");
            assert!(e.contains(field), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn no_upstreams_is_an_error() {
        let (_, _, field, _) = err("[server]\n");
        assert_eq!(field, "upstreams");
    }

    #[test]
    fn lifecycle_fields() {
        let text = r#"
[server]
admin_token = { env = "KEYPROXY_ADMIN_TOKEN" }
key_reload_interval = "5s"

[[upstreams]]
name = "a"
provider = "openai"
base_url = "https://api.openai.com"
key = { env = "A" }

[[upstreams]]
name = "b"
provider = "anthropic"
base_url = "https://api.anthropic.com"
prefix = "/anthropic"
key = { env = "B" }
max_age = "365d"
issued_at = "2026-01-01"
validate_on_rotate = true
lint = "warn"
"#;
        let c = parse(text).unwrap();
        assert_eq!(
            c.server.admin_token,
            Some(KeySource::Env("KEYPROXY_ADMIN_TOKEN".into()))
        );
        assert_eq!(c.server.key_reload_interval, Duration::from_secs(5));
        let up = &c.upstreams[1];
        assert_eq!(up.expiry.max_age, Some(Duration::from_secs(365 * 86400)));
        assert_eq!(
            up.expiry.issued_at,
            Some(parse_timestamp("2026-01-01T00:00:00Z").unwrap())
        );
        assert!(up.validate_on_rotate);
        assert_eq!(up.lint, LintMode::Warn);
        let c = parse(&GOOD.replace(
                "connect_timeout = \"2s\"",
                "expires_at = { \"sk-proj-...abcd\" = \"2027-01-01\", \"sk-ant-…wxyz:01020304\" = \"2027-06-01\" }",
            ),
        )
        .unwrap();
        let by_key = &c.upstreams[1].expiry.expires_at_by_key;
        assert_eq!(by_key.len(), 2);
        assert!(
            by_key.iter().any(|(name, _)| name == "sk-proj-…abcd"),
            "typed dots become the ellipsis keyproxy shows: {by_key:?}"
        );
        assert_eq!(c.upstreams[1].expiry.expires_at, None);
        let (_, _, field, message) = err(&GOOD.replace(
            "connect_timeout = \"2s\"",
            "expires_at = { \"sk-proj-REALKEYREALKEY\" = \"2027-01-01\" }",
        ));
        assert_eq!(field, "upstreams[1].expires_at");
        assert!(
            message.contains("fingerprint") && !message.contains("REALKEY"),
            "{message}"
        );
        let (_, _, field, _) =
            err(&GOOD.replace("connect_timeout = \"2s\"", "expires_at = \"2027-13-01\""));
        assert_eq!(field, "upstreams[1].expires_at");
        let (_, _, field, _) = err(&GOOD.replace(
            "connect_timeout = \"2s\"",
            "expires_at = \"2027-01-01\"\nmax_age = \"1d\"",
        ));
        assert_eq!(field, "upstreams[1].max_age");
    }

    #[test]
    fn beyond_loopback_needs_client_tokens_or_an_explicit_opt_out() {
        let open = GOOD.replace("127.0.0.1:9000", "0.0.0.0:9000");
        let (line, _, field, msg) = err(&open);
        assert_eq!((line, field.as_str()), (3, "server.listen"));
        assert!(
            msg.contains("[[clients]]") && msg.contains("allow_unauthenticated"),
            "{msg}"
        );
        let with_clients = format!(
            "{open}\n[[clients]]\nname = \"notebook\"\ntoken = {{ env = \"NOTEBOOK_TOKEN\" }}\n"
        );
        let c = parse(&with_clients).unwrap();
        assert_eq!(c.clients[0].name, "notebook");
        let opted_out = open.replace("[server]\n", "[server]\nallow_unauthenticated = true\n");
        assert!(parse(&opted_out).unwrap().server.allow_unauthenticated);
        let (_, _, field, _) = err(&format!(
            "{with_clients}[[clients]]\nname = \"notebook\"\ntoken = {{ env = \"X\" }}\n"
        ));
        assert_eq!(field, "clients[1].name");
    }

    /// Every field, given a value of the wrong type or range, is a clear error naming it.
    #[test]
    fn every_field_with_a_wrong_value_names_the_field() {
        const FULL: &str = r#"[server]
listen = "127.0.0.1:8787"
admin_listen = "127.0.0.1:8788"
shutdown_grace = "30s"
admin_token = { env = "T" }
key_reload_interval = "30s"
client_header_timeout = "30s"
client_body_timeout = "60s"
allow_unauthenticated = false
workers = 1

[[upstreams]]
name = "openai"
provider = "openai"
base_url = "https://api.openai.com"
prefix = "/"
key = { env = "K" }
connect_timeout = "5s"
response_header_timeout = "120s"
stream_idle_timeout = "300s"
expires_at = "2027-11-27"
validate_on_rotate = false
lint = "enforce"

[[upstreams]]
name = "gen"
provider = "generic"
base_url = "https://openrouter.ai/api"
prefix = "/gen"
key = { file = "k" }
auth_header = "authorization"
auth_prefix = "Bearer "
probe_path = "/v1/models"
max_age = "365d"
issued_at = "2026-11-27"

[[clients]]
name = "app"
token = { env = "C" }
"#;
        assert!(parse(FULL).is_ok(), "{:?}", parse(FULL).err());
        let wrong = [
            "12",
            "true",
            "[1, 2]",
            "{ a = 1 }",
            "\"\"",
            "\"nonsense value\"",
            "-1",
            "\"\\u0000\"",
        ];
        let mut checked = 0;
        for (n, line) in FULL.lines().enumerate() {
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            for value in wrong {
                let text: String = FULL
                    .lines()
                    .enumerate()
                    .map(|(i, l)| {
                        if i == n {
                            format!("{key} = {value}")
                        } else {
                            l.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                match parse(&text) {
                    Ok(_) => {} // e.g. "" is a fine prefix-less string somewhere; no panic is the point
                    Err(ConfigError::Invalid {
                        line,
                        field,
                        message,
                        ..
                    }) => {
                        assert!(
                            field.ends_with(key),
                            "{key} = {value}: error names {field}: {message}"
                        );
                        assert_eq!(line, n + 1, "{key} = {value}: {message}");
                        checked += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(checked > 150, "only {checked} wrong values were refused");
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        for (name, text) in [
            ("keyproxy.toml", include_str!("../config/keyproxy.toml")),
            (
                "keyproxy.docker.toml",
                include_str!("../config/keyproxy.docker.toml"),
            ),
        ] {
            let c = Config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.upstreams[0].key, KeySource::Env("OPENAI_API_KEY".into()));
        }
    }

    #[test]
    fn errors_found_after_parsing_point_at_their_own_line() {
        // Two upstreams on the default prefix: the second one's table, naming the first.
        let text = "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = { env = \"A\" }\n\
                    [[upstreams]]\nname = \"other\"\nprovider = \"openai\"\nbase_url = \"https://example.com\"\nkey = { env = \"B\" }\n";
        let (line, _, field, msg) = err(text);
        assert_eq!((line, field.as_str()), (7, "upstreams[1].prefix"), "{msg}");
        assert!(
            msg.contains("\"openai\""),
            "names the other upstream: {msg}"
        );
        assert!(msg.contains("prefix = \"/other\""), "suggests one: {msg}");

        let text = "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = { env = \"A\" }\n\
                    issued_at = \"2026-01-01\"\n";
        let (line, column, field, _) = err(text);
        assert_eq!(
            (line, column, field.as_str()),
            (6, 13, "upstreams[0].issued_at")
        );
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
