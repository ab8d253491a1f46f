//! Credentials minted from a longer-lived secret: the OAuth2 client-credentials grant (and Entra
//! ID's flavour of it) or a Google service account's signed JWT, exchanged at a token endpoint for
//! an access token that expires by design. The token is the key in service (`KeyStore`); the
//! client secret or service-account key stays in its own source and is read at each refresh, so
//! replacing it there is picked up by the next refresh. `refresh` decides when that is; explaining
//! a token endpoint's refusal is the diagnosis' job, passed in as `ExplainMint`.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::de::{self, MapAccess};

use super::{KeySource, Secret};
use crate::reason::Reason;

pub mod endpoint;
pub mod google;
pub mod oauth2;
pub mod refresh;

/// Which kind of minted credential: the config key it is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    #[serde(rename = "oauth2")]
    OAuth2,
    AzureAd,
    GoogleServiceAccount,
}

impl CredentialKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OAuth2 => "oauth2",
            CredentialKind::AzureAd => "azure_ad",
            CredentialKind::GoogleServiceAccount => "google_service_account",
        }
    }
}

/// `{ oauth2 = {…} }`, `{ azure_ad = {…} }` or `{ google_service_account = {…} }` in the config.
#[derive(Clone, PartialEq, Eq)]
pub enum MintedSource {
    ClientCredentials {
        kind: CredentialKind,
        grant: oauth2::ClientCredentials,
    },
    ServiceAccount(google::ServiceAccountFile),
}

/// A freshly minted access token.
#[derive(Debug)]
pub struct Minted {
    pub token: Secret,
    pub expires_at: SystemTime,
    /// What the endpoint granted (`expires_in`), the base of the refresh schedule.
    pub lifetime: Duration,
}

/// Why no token was minted. Never carries a secret: a refusal's description is the endpoint's
/// sentence, masked and cut short.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MintError {
    #[error("cannot read the client secret: {0}")]
    Secret(String),
    /// The service-account key file is unreadable or not one.
    #[error("{0}")]
    ServiceAccount(String),
    #[error("the token endpoint {endpoint} could not be reached: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("the token endpoint {endpoint} refused the credential ({status}{}{}){}", if error.is_empty() { "" } else { " " }, error, if description.is_empty() { String::new() } else { format!(": {description}") })]
    Refused {
        endpoint: String,
        status: u16,
        /// The OAuth `error` (`invalid_client`, `invalid_grant`...), lowercased; empty if none.
        error: String,
        description: String,
        /// Entra's `error_codes` (`7000222`...).
        codes: Vec<u64>,
    },
    #[error(
        "the token endpoint {endpoint} answered {status} without a usable access token: {message}"
    )]
    BadAnswer {
        endpoint: String,
        status: u16,
        message: String,
    },
}

/// A refusal, explained: its reason code and the sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub reason: Reason,
    pub sentence: String,
}

/// Turns a failed mint into a reason and a sentence (the diagnosis implements it; the key layer
/// cannot look at the catalogues, so it is passed in, as `KeyProbe` is).
pub trait ExplainMint: Send + Sync {
    fn explain(&self, source: &MintedSource, error: &MintError) -> Explained;
}

/// Until the diagnosis is attached: `credential_refresh_failed` and the error as it is.
pub struct Unexplained;

impl ExplainMint for Unexplained {
    fn explain(&self, _: &MintedSource, error: &MintError) -> Explained {
        Explained {
            reason: Reason::CredentialRefreshFailed,
            sentence: error.to_string(),
        }
    }
}

impl MintedSource {
    pub fn kind(&self) -> CredentialKind {
        match self {
            MintedSource::ClientCredentials { kind, .. } => *kind,
            MintedSource::ServiceAccount(_) => CredentialKind::GoogleServiceAccount,
        }
    }

    /// Ask the token endpoint for a new token.
    pub async fn mint(&self) -> Result<Minted, MintError> {
        match self {
            MintedSource::ClientCredentials { grant, .. } => grant.mint().await,
            MintedSource::ServiceAccount(account) => account.mint().await,
        }
    }

    /// The token endpoint, for sentences (for a service account: read from its file, so `None`
    /// when the file cannot be read).
    pub fn endpoint(&self) -> Option<String> {
        match self {
            MintedSource::ClientCredentials { grant, .. } => Some(grant.token_url.clone()),
            MintedSource::ServiceAccount(account) => account.token_uri(),
        }
    }

    /// Where the long-lived secret lives, for advice ("update env AZURE_CLIENT_SECRET").
    pub fn secret_source(&self) -> String {
        match self {
            MintedSource::ClientCredentials { grant, .. } => grant.client_secret.to_string(),
            MintedSource::ServiceAccount(account) => {
                format!("file {}", account.path.display())
            }
        }
    }

    /// The client or account the tokens are minted for (an id, never a secret).
    pub fn client(&self) -> String {
        match self {
            MintedSource::ClientCredentials { grant, .. } => grant.client_id.clone(),
            MintedSource::ServiceAccount(account) => account
                .client_email()
                .unwrap_or_else(|| "(unreadable)".into()),
        }
    }

    /// Relative paths are relative to the config file.
    pub fn resolved(&self, config_path: &Path) -> MintedSource {
        match self {
            MintedSource::ClientCredentials { kind, grant } => MintedSource::ClientCredentials {
                kind: *kind,
                grant: oauth2::ClientCredentials {
                    client_secret: grant.client_secret.clone().resolved(config_path),
                    ..grant.clone()
                },
            },
            MintedSource::ServiceAccount(account) => {
                MintedSource::ServiceAccount(google::ServiceAccountFile {
                    path: super::source::resolve(config_path, &account.path),
                    scopes: account.scopes.clone(),
                })
            }
        }
    }

    /// Read `{ oauth2 = {…} }` and its siblings from the key source's table (`kind` is its key).
    pub(crate) fn parse<'de, A: MapAccess<'de>>(
        kind: &str,
        map: &mut A,
    ) -> Result<MintedSource, A::Error> {
        match kind {
            "oauth2" => {
                let raw: oauth2::RawOAuth2 = map.next_value()?;
                Ok(MintedSource::ClientCredentials {
                    kind: CredentialKind::OAuth2,
                    grant: raw.validate().map_err(de::Error::custom)?,
                })
            }
            "azure_ad" => {
                let raw: oauth2::RawAzureAd = map.next_value()?;
                Ok(MintedSource::ClientCredentials {
                    kind: CredentialKind::AzureAd,
                    grant: raw.validate().map_err(de::Error::custom)?,
                })
            }
            _ => {
                let raw: google::RawServiceAccount = map.next_value()?;
                Ok(MintedSource::ServiceAccount(
                    raw.validate().map_err(de::Error::custom)?,
                ))
            }
        }
    }
}

/// The kinds a key source table may start with besides `env`, `file` and `command`.
pub const KINDS: [&str; 3] = ["oauth2", "azure_ad", "google_service_account"];

impl fmt::Display for MintedSource {
    /// `azure_ad client 1111… at https://login…/token`: the kind, the client, the endpoint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintedSource::ClientCredentials { kind, grant } => write!(
                f,
                "{} client {} at {}",
                kind.as_str(),
                grant.client_id,
                grant.token_url
            ),
            MintedSource::ServiceAccount(account) => {
                write!(f, "google_service_account file {}", account.path.display())
            }
        }
    }
}

impl fmt::Debug for MintedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MintedSource({self})")
    }
}

/// A client secret is itself a key source, and only a plain one (a token minted from a token is
/// not a thing).
fn plain_source(source: KeySource, field: &str) -> Result<KeySource, String> {
    match source {
        KeySource::Minted(_) | KeySource::Aws(_) => Err(format!(
            "{field} is read from {{ env = \"…\" }}, {{ file = \"…\" }} or {{ command = [\"…\"] }}"
        )),
        plain => Ok(plain),
    }
}

/// An endpoint URL keyproxy may post a secret to: `https://`, or `http://` (loopback stand-ins,
/// a local identity proxy).
fn endpoint_url(url: &str, field: &str) -> Result<String, String> {
    let ok = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some());
    match ok {
        Some(_) => Ok(url.to_owned()),
        None => Err(format!(
            "{field} must be an https:// URL, e.g. https://login.example.com/oauth2/token"
        )),
    }
}
