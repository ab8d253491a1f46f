//! The OAuth2 client-credentials grant (RFC 6749 §4.4): `grant_type=client_credentials`, the
//! client authenticated with HTTP Basic (`client_secret_basic`, §2.3.1: the default) or in the
//! form body (`client_secret_post`). `azure_ad` is the same grant against Entra ID's v2.0 endpoint
//! with the Azure OpenAI scope, credentials in the body as Microsoft documents it.

use base64::Engine;
use http::HeaderValue;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{endpoint, endpoint_url, plain_source, MintError, Minted};
use crate::key::{KeySource, Secret};

/// Entra ID's public cloud; `authority` names another (national clouds, tests).
pub const AZURE_AUTHORITY: &str = "https://login.microsoftonline.com";
/// What an Azure OpenAI (Cognitive Services) token is for.
pub const AZURE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// How the client proves who it is to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(id:secret)` (RFC 6749 §2.3.1; what every server must accept).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: KeySource,
    pub scope: Option<String>,
    pub auth: ClientAuth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth2 {
    token_url: String,
    client_id: String,
    client_secret: KeySource,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    auth: ClientAuth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAzureAd {
    tenant_id: String,
    client_id: String,
    client_secret: KeySource,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

fn nonempty(value: String, field: &str) -> Result<String, String> {
    match value.trim() {
        "" => Err(format!("{field} must not be empty")),
        v => Ok(v.to_owned()),
    }
}

/// An Entra id (tenant or client) as pasted: quotes or spaces inside are the paste's, never the
/// id's (OAuth2 client ids in general may hold them).
fn entra_id(value: String, field: &str) -> Result<String, String> {
    let id = nonempty(value, field)?;
    match id.contains(['"', '\'', ' ', '\t']) {
        true => Err(format!(
            "{field} has quotes or spaces in it, which came with the paste: write only the id"
        )),
        false => Ok(id),
    }
}

/// An Entra client secret that is a UUID is the secret's *Secret ID*, not its *Value* (the
/// portal shows both side by side; Entra answers AADSTS7000215). Said offline, by `check`.
pub fn secret_id_instead_of_value(secret: &str) -> bool {
    let s = secret.trim().as_bytes();
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl RawOAuth2 {
    pub(crate) fn validate(self) -> Result<ClientCredentials, String> {
        Ok(ClientCredentials {
            token_url: endpoint_url(&self.token_url, "oauth2.token_url")?,
            client_id: nonempty(self.client_id, "oauth2.client_id")?,
            client_secret: plain_source(self.client_secret, "oauth2.client_secret")?,
            scope: self.scope.filter(|s| !s.trim().is_empty()),
            auth: self.auth,
        })
    }
}

impl RawAzureAd {
    pub(crate) fn validate(self) -> Result<ClientCredentials, String> {
        let tenant = entra_id(self.tenant_id, "azure_ad.tenant_id")?;
        if !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("azure_ad.tenant_id is a directory (tenant) id like 72f988bf-86f1-41af-91ab-2d7cd011db47 or a domain like contoso.onmicrosoft.com".into());
        }
        let authority = self.authority.as_deref().unwrap_or(AZURE_AUTHORITY);
        let authority = endpoint_url(authority, "azure_ad.authority")?;
        Ok(ClientCredentials {
            token_url: format!(
                "{}/{tenant}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ),
            client_id: entra_id(self.client_id, "azure_ad.client_id")?,
            client_secret: plain_source(self.client_secret, "azure_ad.client_secret")?,
            scope: Some(self.scope.unwrap_or_else(|| AZURE_SCOPE.to_owned())),
            auth: ClientAuth::Body,
        })
    }
}

impl ClientCredentials {
    pub(crate) async fn mint(&self) -> Result<Minted, MintError> {
        let secret = self
            .client_secret
            .read()
            .await
            .map_err(|e| MintError::Secret(e.to_string()))?;
        if secret.expose().trim().is_empty() {
            return Err(MintError::Secret(format!(
                "{} is empty",
                self.client_secret
            )));
        }
        let (form, authorization) = self.request(&secret);
        endpoint::exchange(&self.token_url, form, authorization).await
    }
}

impl ClientCredentials {
    /// The form and, for `client_secret_basic`, the `Authorization` header. (Not in `mint`: the
    /// form serializer may not be held across an await.)
    fn request(&self, secret: &Secret) -> (Zeroizing<String>, Option<HeaderValue>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        let authorization = match self.auth {
            ClientAuth::Basic => Some(basic(&self.client_id, secret.expose())),
            ClientAuth::Body => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", secret.expose());
                None
            }
        };
        (Zeroizing::new(form.finish()), authorization)
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as RFC 6749 §2.3.1 says, marked sensitive.
fn basic(client_id: &str, secret: &str) -> HeaderValue {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = Zeroizing::new(format!("{}:{}", encode(client_id), encode(secret)));
    let value = Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ));
    // Base64 and a fixed prefix: always a valid header value.
    let mut header = HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Basic"));
    header.set_sensitive(true);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let h = basic("my client", "s3cr:t+");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(h.to_str().unwrap().strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my+client:s3cr%3At%2B");
        assert!(h.is_sensitive());
    }

    #[test]
    fn azure_ad_builds_the_v2_endpoint_and_scope() {
        let raw = RawAzureAd {
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "1111".into(),
            client_secret: KeySource::Env("S".into()),
            authority: None,
            scope: None,
        };
        let c = raw.validate().unwrap();
        assert_eq!(
            c.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(c.scope.as_deref(), Some(AZURE_SCOPE));
        assert_eq!(c.auth, ClientAuth::Body);
        let bad = RawAzureAd {
            tenant_id: "a/b".into(),
            client_id: "1".into(),
            client_secret: KeySource::Env("S".into()),
            authority: None,
            scope: None,
        };
        assert!(bad.validate().is_err());
    }
}
