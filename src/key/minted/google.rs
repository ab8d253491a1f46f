//! A Google service account's token: an RS256-signed JWT assertion (RFC 7523) with the account's
//! private key (`jsonwebtoken`), exchanged at the key file's `token_uri`. The key file is read at
//! each refresh, so a replaced key is picked up by the next one. What is wrong with a key file is
//! said without repeating any of it (the private key is in it).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{endpoint, endpoint_url, MintError, Minted};

/// What Vertex AI (and every Google Cloud API) accepts.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// A key file is a few KB.
const MAX_FILE: u64 = 64 * 1024;
/// Google accepts assertions of at most an hour.
const ASSERTION_LIFETIME: u64 = 3600;
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountFile {
    pub path: PathBuf,
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServiceAccount {
    file: PathBuf,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

impl RawServiceAccount {
    pub(crate) fn validate(self) -> Result<ServiceAccountFile, String> {
        if self.file.as_os_str().is_empty() {
            return Err(
                "google_service_account.file is the path of the service account's JSON key file"
                    .into(),
            );
        }
        let scopes = self
            .scopes
            .unwrap_or_else(|| vec![CLOUD_PLATFORM.to_owned()]);
        if scopes.is_empty() || scopes.iter().any(|s| s.trim().is_empty()) {
            return Err(format!(
                "google_service_account.scopes is a list of OAuth scopes, e.g. [\"{CLOUD_PLATFORM}\"]"
            ));
        }
        Ok(ServiceAccountFile {
            path: self.file,
            scopes,
        })
    }
}

/// The parts of a service-account key file that minting needs.
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    pub private_key_id: Option<String>,
    private_key: Zeroizing<String>,
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    token_uri: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    installed: Option<serde::de::IgnoredAny>,
    web: Option<serde::de::IgnoredAny>,
}

/// Read and judge a service-account key file. Every sentence names the file and a field, never
/// a value from it.
pub fn lint(path: &Path, text: &str) -> Result<ServiceAccount, String> {
    let shown = path.display();
    let file: KeyFile = serde_json::from_str(text).map_err(|e| {
        format!(
            "{shown} is not a JSON object (line {}, column {}); a service-account key file is the JSON downloaded from Google Cloud console → IAM → Service accounts → Keys → Add key",
            e.line(),
            e.column()
        )
    })?;
    if file.installed.is_some() || file.web.is_some() {
        return Err(format!("{shown} is an OAuth client file (for apps that sign users in), not a service-account key; create a key for a service account (IAM → Service accounts → Keys → Add key → JSON) and point google_service_account.file at it"));
    }
    match file.kind.as_deref() {
        Some("service_account") | None => {}
        Some("authorized_user") => return Err(format!("{shown} holds a user's credentials (gcloud auth application-default login), not a service account's key; create a service-account key (IAM → Service accounts → Keys) for keyproxy")),
        Some(other) => return Err(format!("{shown} is a credential of type \"{}\", not a service-account key (\"type\": \"service_account\")", other.escape_debug().to_string().chars().take(40).collect::<String>())),
    }
    let missing = |field: &str| {
        format!("{shown} has no {field}: it is not a whole service-account key file (download a new JSON key: IAM → Service accounts → Keys → Add key)")
    };
    let private_key = Zeroizing::new(file.private_key.ok_or_else(|| missing("private_key"))?);
    if !private_key.contains("-----BEGIN PRIVATE KEY-----")
        && !private_key.contains("-----BEGIN RSA PRIVATE KEY-----")
    {
        return Err(format!(
            "the private_key in {shown} is not a PEM private key (it should start with -----BEGIN PRIVATE KEY-----)"
        ));
    }
    let client_email = file
        .client_email
        .filter(|e| e.contains('@'))
        .ok_or_else(|| missing("client_email"))?;
    let token_uri = file.token_uri.ok_or_else(|| missing("token_uri"))?;
    let token_uri = endpoint_url(&token_uri, &format!("token_uri in {shown}"))?;
    Ok(ServiceAccount {
        client_email,
        token_uri,
        private_key_id: file.private_key_id,
        private_key,
    })
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl ServiceAccountFile {
    fn read(&self) -> Result<ServiceAccount, MintError> {
        use std::io::Read;
        let shown = self.path.display();
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(&self.path)
            .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
            .map_err(|e| {
                MintError::ServiceAccount(format!(
                    "cannot read the service-account key file {shown}: {e}"
                ))
            })?;
        if text.len() as u64 > MAX_FILE {
            return Err(MintError::ServiceAccount(format!(
                "{shown} is larger than {MAX_FILE} bytes; it is not a service-account key file"
            )));
        }
        lint(&self.path, &text).map_err(MintError::ServiceAccount)
    }

    /// The key file's `token_uri`, when it can be read.
    pub fn token_uri(&self) -> Option<String> {
        self.read().ok().map(|a| a.token_uri)
    }

    pub fn client_email(&self) -> Option<String> {
        self.read().ok().map(|a| a.client_email)
    }

    pub(crate) async fn mint(&self) -> Result<Minted, MintError> {
        let account = self.read()?;
        let assertion = self.assertion(&account, SystemTime::now())?;
        // A signed assertion mints tokens for its hour, so an endpoint repeating it must not get
        // it into any output: its signature (the part no one else can make) is masked like a key.
        if let Some(signature) = assertion.rsplit('.').next() {
            crate::redact::register(signature);
        }
        let form = Zeroizing::new(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", JWT_BEARER)
                .append_pair("assertion", &assertion)
                .finish(),
        );
        endpoint::exchange(&account.token_uri, form, None).await
    }

    /// The signed JWT (RFC 7523 §2.1): the account is the issuer, the token endpoint the audience.
    fn assertion(
        &self,
        account: &ServiceAccount,
        now: SystemTime,
    ) -> Result<Zeroizing<String>, MintError> {
        let shown = self.path.display();
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|_| {
            MintError::ServiceAccount(format!(
                "the private_key in {shown} is not an RSA private key keyproxy can sign with"
            ))
        })?;
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &account.client_email,
            scope: self.scopes.join(" "),
            aud: &account.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = account.private_key_id.clone();
        jsonwebtoken::encode(&header, &claims, &key)
            .map(Zeroizing::new)
            .map_err(|e| {
                MintError::ServiceAccount(format!(
                    "cannot sign the JWT assertion with the key in {shown} ({:?})",
                    e.kind()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC-SECRET-PART\n-----END PRIVATE KEY-----\n";

    fn lint_json(v: serde_json::Value) -> Result<ServiceAccount, String> {
        lint(Path::new("sa.json"), &v.to_string())
    }

    #[test]
    fn key_files_that_are_not_service_account_keys_are_named_without_their_contents() {
        let oauth_client =
            serde_json::json!({"installed": {"client_id": "x", "client_secret": "GOCSPX-SECRET"}});
        let e = lint_json(oauth_client).err().unwrap();
        assert!(e.contains("OAuth client file"), "{e}");
        assert!(!e.contains("GOCSPX"), "{e}");
        let user = serde_json::json!({"type": "authorized_user", "refresh_token": "1//SECRET"});
        assert!(lint_json(user)
            .err()
            .unwrap()
            .contains("user's credentials"));
        let e = lint_json(serde_json::json!({"type": "service_account", "client_email": "a@b", "token_uri": "https://oauth2.googleapis.com/token"})).err().unwrap();
        assert!(e.contains("no private_key"), "{e}");
        for field in ["client_email", "token_uri"] {
            let mut v = serde_json::json!({"type": "service_account", "private_key": PEM, "client_email": "a@b.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"});
            v.as_object_mut().unwrap().remove(field);
            let e = lint_json(v).err().unwrap();
            assert!(e.contains(&format!("no {field}")), "{e}");
            assert!(!e.contains("SECRET-PART"), "{e}");
        }
        let e = lint(
            Path::new("sa.json"),
            "{\"private_key\": \"-----BEGIN PRIVATE KEY-----SECRET-PART",
        )
        .err()
        .unwrap();
        assert!(
            e.contains("not a JSON object") && !e.contains("SECRET"),
            "{e}"
        );
        let not_pem = serde_json::json!({"type": "service_account", "private_key": "SECRET-PART", "client_email": "a@b", "token_uri": "https://oauth2.googleapis.com/token"});
        let e = lint_json(not_pem).err().unwrap();
        assert!(
            e.contains("not a PEM private key") && !e.contains("SECRET"),
            "{e}"
        );
        let ok = serde_json::json!({"type": "service_account", "private_key": PEM, "client_email": "a@b.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"});
        assert_eq!(
            lint_json(ok).unwrap().client_email,
            "a@b.iam.gserviceaccount.com"
        );
    }
}
