//! A token endpoint's refusal (OAuth2 client credentials, Entra ID, Google's service-account
//! grant) → a reason and a sentence that says what to change and where. Entra's `AADSTS` number
//! decides first, then the endpoint's documented wording, then the OAuth `error` family
//! (RFC 6749 §5.2) alone. Every reason is `credential_refresh_failed` except an expired client
//! secret, which is `expired_key`: the secret is the key a person manages here.

use crate::key::minted::{ExplainMint, Explained, MintError, MintedSource};
use crate::reason::Reason;

const AADSTS: &str =
    "https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes";
const GOOGLE: &str =
    "https://developers.google.com/identity/protocols/oauth2/service-account#error-codes";
const RFC6749: &str = "https://datatracker.ietf.org/doc/html/rfc6749#section-5.2";

/// What a row looks for in a refusal.
#[derive(Debug, Clone, Copy)]
pub enum On {
    /// An Entra `error_codes` entry (or `AADSTS…` in the description).
    Entra(u64),
    /// Words of the endpoint's description (ASCII case-insensitive).
    Phrase(&'static str),
    /// The OAuth `error` family.
    Error(&'static str),
}

/// One documented refusal: `{client}`, `{secret}` and `{endpoint}` are filled in.
pub struct Row {
    pub on: On,
    pub reason: Reason,
    pub says: &'static str,
    /// Where the endpoint documents it.
    pub source: &'static str,
}

const fn row(on: On, reason: Reason, says: &'static str, source: &'static str) -> Row {
    Row {
        on,
        reason,
        says,
        source,
    }
}

const FAILED: Reason = Reason::CredentialRefreshFailed;

pub static ROWS: &[Row] = &[
    row(On::Entra(7000222), Reason::ExpiredKey, "the client secret of app {client} has expired (Entra AADSTS7000222): create a new one (Entra ID → App registrations → the app → Certificates & secrets → New client secret) and put its Value in {secret}", AADSTS),
    row(On::Entra(7000215), FAILED, "Entra refused the client secret of app {client} (AADSTS7000215, invalid client secret): {secret} must hold the secret's Value (shown once, when it was created), not its Secret ID", AADSTS),
    row(On::Entra(700016), FAILED, "Entra found no app with client id {client} in the tenant (AADSTS700016): check azure_ad.client_id and azure_ad.tenant_id (the app's Overview page shows both), or whether the app was deleted", AADSTS),
    row(On::Entra(90002), FAILED, "Entra does not know the tenant in azure_ad.tenant_id (AADSTS90002): use the Directory (tenant) ID from the app's Overview page", AADSTS),
    row(On::Entra(900023), FAILED, "azure_ad.tenant_id is not a tenant id or domain Entra accepts (AADSTS900023): use the Directory (tenant) ID from the app's Overview page", AADSTS),
    row(On::Entra(70011), FAILED, "Entra refused the scope (AADSTS70011): for Azure OpenAI it is https://cognitiveservices.azure.com/.default", AADSTS),
    row(On::Entra(7000112), FAILED, "app {client} is disabled in Entra ID (AADSTS7000112): enable it, or use another app registration", AADSTS),
    row(On::Phrase("invalid jwt signature"), FAILED, "Google refused the signature of the JWT assertion for {client}: the key in {secret} was deleted or disabled in IAM (or the file was edited); create a new key (IAM → Service accounts → Keys → Add key → JSON) and replace the file", GOOGLE),
    row(On::Phrase("reasonable timeframe"), FAILED, "Google refused the JWT assertion's times: this machine's clock is off by minutes; synchronise it (NTP) and the next refresh goes through", GOOGLE),
    row(On::Phrase("account not found"), FAILED, "Google does not know the service account {client}: it was deleted; create a key for an existing service account and replace {secret}", GOOGLE),
    row(On::Error("invalid_grant"), FAILED, "the token endpoint refused the grant (invalid_grant): for a Google service account, the key in {secret} was deleted or disabled, its signature does not verify, or this machine's clock is off by minutes", GOOGLE),
    row(On::Error("invalid_client"), FAILED, "the token endpoint did not accept client {client} (invalid_client): the client secret in {secret} is wrong or expired, or the client id is not known there", RFC6749),
    row(On::Error("unauthorized_client"), FAILED, "client {client} is not allowed the client-credentials grant at this endpoint (unauthorized_client): allow it for the app at the identity provider", RFC6749),
    row(On::Error("invalid_scope"), FAILED, "the token endpoint refused the scope (invalid_scope): check the scope (or scopes) configured for this credential", RFC6749),
    row(On::Error("invalid_request"), FAILED, "the token endpoint found the request malformed (invalid_request): check token_url and the credential's settings", RFC6749),
];

/// The Entra numbers a refusal carries: `error_codes`, else `AADSTS…` in the description.
fn entra_codes(codes: &[u64], description: &str) -> Vec<u64> {
    if !codes.is_empty() {
        return codes.to_vec();
    }
    description
        .match_indices("AADSTS")
        .filter_map(|(i, _)| {
            let digits: String = description[i + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

fn matching<'a>(error: &str, description: &str, codes: &[u64]) -> Option<&'a Row> {
    let said = description.to_ascii_lowercase();
    let entra = entra_codes(codes, description);
    let decisive = ROWS
        .iter()
        .find(|r| matches!(r.on, On::Entra(n) if entra.contains(&n)));
    let worded = || {
        ROWS.iter()
            .find(|r| matches!(r.on, On::Phrase(p) if said.contains(p)))
    };
    let family = || {
        ROWS.iter()
            .find(|r| matches!(r.on, On::Error(e) if e == error))
    };
    decisive.or_else(worded).or_else(family)
}

/// The explainer the server attaches to every token credential.
pub struct TokenEndpoint;

impl ExplainMint for TokenEndpoint {
    fn explain(&self, source: &MintedSource, error: &MintError) -> Explained {
        let fill = |says: &str, endpoint: &str| {
            says.replace("{client}", &source.client())
                .replace("{secret}", &source.secret_source())
                .replace("{endpoint}", endpoint)
        };
        let (reason, sentence) = match error {
            // (`oauth_error`, not `error`: the sentences below name the whole refusal.)
            MintError::Refused {
                endpoint,
                status,
                error: oauth_error,
                description,
                codes,
            } => match matching(oauth_error, description, codes) {
                Some(row) => {
                    let said = match description.is_empty() {
                        true => String::new(),
                        false => format!(" (the token endpoint said: {description})"),
                    };
                    (row.reason, format!("{}{said}", fill(row.says, endpoint)))
                }
                None if *status >= 500 || *status == 429 => (
                    FAILED,
                    format!("{error}; keyproxy retries (1 s, doubling to 60 s) and keeps the token in service until it expires"),
                ),
                None if (300..400).contains(status) => (
                    FAILED,
                    format!("the token endpoint {endpoint} answered {status}, a redirect, which keyproxy does not follow (the client's credentials would go with it): set the token URL (or authority) to the address it redirects to"),
                ),
                None => (FAILED, error.to_string()),
            },
            MintError::Unreachable { .. } => (
                FAILED,
                format!("{error}; check the URL and that this machine can reach it (DNS, firewall, HTTPS proxy). keyproxy retries and keeps the token in service until it expires"),
            ),
            MintError::Secret(_) | MintError::ServiceAccount(_) | MintError::BadAnswer { .. } => {
                (FAILED, error.to_string())
            }
        };
        Explained { reason, sentence }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::minted::google::ServiceAccountFile;
    use crate::key::minted::oauth2::{ClientAuth, ClientCredentials};
    use crate::key::minted::CredentialKind;
    use crate::key::KeySource;

    fn azure() -> MintedSource {
        MintedSource::ClientCredentials {
            kind: CredentialKind::AzureAd,
            grant: ClientCredentials {
                token_url: "https://login.microsoftonline.com/t/oauth2/v2.0/token".into(),
                client_id: "1111-app".into(),
                client_secret: KeySource::Env("AZURE_CLIENT_SECRET".into()),
                scope: None,
                auth: ClientAuth::Body,
            },
        }
    }

    fn refused(error: &str, description: &str, codes: &[u64]) -> MintError {
        MintError::Refused {
            endpoint: "https://e/token".into(),
            status: 400,
            error: error.into(),
            description: description.into(),
            codes: codes.to_vec(),
        }
    }

    #[test]
    fn entra_numbers_decide_before_the_oauth_family() {
        let e = TokenEndpoint.explain(
            &azure(),
            &refused(
                "invalid_client",
                "AADSTS7000222: The provided client secret keys for app '1111-app' are expired.",
                &[7000222],
            ),
        );
        assert_eq!(e.reason, Reason::ExpiredKey);
        assert!(
            e.sentence.contains("has expired") && e.sentence.contains("env AZURE_CLIENT_SECRET"),
            "{}",
            e.sentence
        );
        let e = TokenEndpoint.explain(
            &azure(),
            &refused(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
                &[],
            ),
        );
        assert_eq!(e.reason, Reason::CredentialRefreshFailed);
        assert!(
            e.sentence.contains("Value") && e.sentence.contains("AADSTS7000215"),
            "{}",
            e.sentence
        );
        let e = TokenEndpoint.explain(
            &azure(),
            &refused(
                "unauthorized_client",
                "AADSTS700016: Application not found",
                &[700016],
            ),
        );
        assert!(
            e.sentence.contains("no app with client id 1111-app"),
            "{}",
            e.sentence
        );
        let e = TokenEndpoint.explain(&azure(), &refused("invalid_client", "", &[]));
        assert!(e.sentence.contains("(invalid_client)"), "{}", e.sentence);
        let e = TokenEndpoint.explain(&azure(), &refused("unauthorized_client", "", &[]));
        assert!(
            e.sentence
                .contains("not allowed the client-credentials grant"),
            "{}",
            e.sentence
        );
    }

    #[test]
    fn google_wording_says_which_invalid_grant() {
        let sa = MintedSource::ServiceAccount(ServiceAccountFile {
            path: "/nonexistent/sa.json".into(),
            scopes: vec![],
        });
        let e = TokenEndpoint.explain(
            &sa,
            &refused("invalid_grant", "Invalid JWT Signature.", &[]),
        );
        assert!(
            e.sentence.contains("deleted or disabled in IAM"),
            "{}",
            e.sentence
        );
        let e = TokenEndpoint.explain(&sa, &refused("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.", &[]));
        assert!(e.sentence.contains("clock"), "{}", e.sentence);
        let e = TokenEndpoint.explain(&sa, &refused("invalid_grant", "", &[]));
        assert!(e.sentence.contains("(invalid_grant)"), "{}", e.sentence);
        let down = MintError::Unreachable {
            endpoint: "https://e/token".into(),
            message: "connection refused".into(),
        };
        let e = TokenEndpoint.explain(&sa, &down);
        assert_eq!(e.reason, Reason::CredentialRefreshFailed);
        assert!(
            e.sentence.contains("could not be reached"),
            "{}",
            e.sentence
        );
    }

    #[test]
    fn every_row_names_its_source() {
        assert!(ROWS.iter().all(|r| r.source.starts_with("https://")));
    }
}
