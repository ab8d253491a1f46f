//! Each provider's facts in one place (a leaf: it imports nothing from the crate): how it wants
//! the key (header and scheme), what its keys look like, the cheap endpoint a probe asks, and the
//! pages a person is sent to for a new key or for billing.

use http::header::HeaderName;
use http::HeaderValue;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
    Azure,
    Gemini,
    /// Google Vertex AI: an OAuth access token (from a service account) as `Authorization: Bearer`.
    Vertex,
    /// Amazon Bedrock: SigV4-signed requests (`key = { aws = … }`) or a Bedrock API key as Bearer.
    Bedrock,
    Generic,
}

/// Anthropic refuses requests without a version header; keyproxy adds this one when the app didn't.
pub static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
pub const ANTHROPIC_DEFAULT_VERSION: HeaderValue = HeaderValue::from_static("2023-06-01");

/// What a provider's keys look like, for lint: a minimum length, an exact one where the format
/// fixes it, and the sentence that says so.
pub struct KeyLength {
    pub min: usize,
    pub exact: Option<usize>,
    pub expected: &'static str,
}

impl Provider {
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Azure => "azure",
            Provider::Gemini => "gemini",
            Provider::Vertex => "vertex",
            Provider::Bedrock => "bedrock",
            Provider::Generic => "generic",
        }
    }

    /// The name people know the provider by ("" for a generic upstream).
    pub const fn display_name(self) -> &'static str {
        match self {
            Provider::Openai => "OpenAI",
            Provider::Anthropic => "Anthropic",
            Provider::Azure => "Azure OpenAI",
            Provider::Gemini => "Google (Gemini)",
            Provider::Vertex => "Google Vertex AI",
            Provider::Bedrock => "Amazon Bedrock",
            Provider::Generic => "",
        }
    }

    /// The `provider = "…"` value for a display name, `generic` for one keyproxy has no setting for.
    pub fn setting_for(display_name: &str) -> &'static str {
        [
            Provider::Openai,
            Provider::Anthropic,
            Provider::Gemini,
            Provider::Azure,
            Provider::Vertex,
            Provider::Bedrock,
        ]
        .into_iter()
        .find(|p| p.display_name() == display_name)
        .unwrap_or(Provider::Generic)
        .as_str()
    }

    /// The header each provider reads the key from, and what goes before the key in it.
    pub fn auth_scheme(self) -> (HeaderName, &'static str) {
        match self {
            Provider::Openai | Provider::Vertex | Provider::Bedrock | Provider::Generic => {
                (http::header::AUTHORIZATION, "Bearer ")
            }
            Provider::Anthropic => (HeaderName::from_static("x-api-key"), ""),
            Provider::Azure => (HeaderName::from_static("api-key"), ""),
            Provider::Gemini => (HeaderName::from_static("x-goog-api-key"), ""),
        }
    }

    /// The endpoint each provider answers cheaply when the key is good (path, query). A generic
    /// upstream uses its configured `probe_path`.
    pub fn probe_target(self, probe_path: Option<&str>) -> (&str, Option<&'static str>) {
        match self {
            Provider::Openai | Provider::Anthropic => ("/v1/models", None),
            Provider::Gemini => ("/v1beta/models", None),
            Provider::Azure => ("/openai/models", Some("api-version=2024-10-21")),
            // Vertex's URL names the project and region, which keyproxy does not know: the
            // configured `probe_path` (for example `/v1/projects/P/locations/L/publishers/google/models`).
            Provider::Vertex => (probe_path.unwrap_or("/v1/publishers/google/models"), None),
            // The runtime host (`bedrock-runtime.`, where apps send their requests) answers
            // ListAsyncInvokes, a cheap signed GET; a policy without it still tells recognised
            // credentials (AccessDenied) from refused ones. `probe_path` for the control plane.
            Provider::Bedrock => match probe_path {
                Some(path) => (path, None),
                None => ("/async-invoke", Some("maxResults=1")),
            },
            Provider::Generic => (probe_path.unwrap_or("/v1/models"), None),
        }
    }

    /// Where a person creates a new key.
    pub const fn keys_page(self) -> &'static str {
        match self {
            Provider::Openai => "https://platform.openai.com/api-keys",
            Provider::Anthropic => "https://console.anthropic.com/settings/keys",
            Provider::Gemini => "https://aistudio.google.com/apikey",
            Provider::Azure => "the Azure portal (your resource's Keys and Endpoint page)",
            Provider::Vertex => {
                "https://console.cloud.google.com/iam-admin/serviceaccounts (the service account's Keys tab)"
            }
            Provider::Bedrock => "the AWS console (IAM access keys, or Bedrock's API keys page)",
            Provider::Generic => "the provider's dashboard",
        }
    }

    /// Where a person adds credit or raises a quota.
    pub const fn billing_page(self) -> &'static str {
        match self {
            Provider::Openai => "https://platform.openai.com/settings/organization/billing",
            Provider::Anthropic => "https://console.anthropic.com/settings/billing",
            Provider::Gemini => {
                "https://aistudio.google.com/usage (or the Google Cloud billing account)"
            }
            Provider::Azure => "the Azure portal (quotas and billing of your subscription)",
            Provider::Vertex => "https://console.cloud.google.com/billing (and Vertex AI quotas)",
            Provider::Bedrock => "the AWS console (Billing, and Service Quotas for Bedrock)",
            Provider::Generic => "the provider's billing page",
        }
    }

    /// Does the key start the way this provider's keys do? (Azure and generic keys have no prefix.)
    pub fn has_known_prefix(self, key: &str) -> bool {
        match self {
            Provider::Openai => key.starts_with("sk-"),
            Provider::Anthropic => key.starts_with("sk-ant-"),
            Provider::Gemini => key.starts_with("AIza"),
            Provider::Azure | Provider::Vertex | Provider::Bedrock | Provider::Generic => true,
        }
    }

    /// The characters this provider's keys are made of: the test and its description.
    pub fn key_alphabet(self) -> (fn(u8) -> bool, &'static str) {
        match self {
            Provider::Azure => (|b: u8| b.is_ascii_alphanumeric(), "letters and digits"),
            // Bedrock API keys are base64 after their prefix.
            Provider::Bedrock => (
                |b: u8| b.is_ascii_alphanumeric() || b"-_+/=".contains(&b),
                "letters, digits, '-', '_', '+', '/' and '='",
            ),
            _ => (
                |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
                "letters, digits, '-' and '_'",
            ),
        }
    }

    /// How long this provider's keys are (the key decides between formats of one provider).
    pub fn key_length(self, key: &str) -> KeyLength {
        let (min, exact, expected) = match self {
            Provider::Openai
                if ["sk-proj-", "sk-svcacct-", "sk-admin-"]
                    .iter()
                    .any(|p| key.starts_with(p)) =>
            {
                (
                    80,
                    None,
                    "sk-proj-/sk-svcacct-/sk-admin- keys are over 100 characters",
                )
            }
            Provider::Openai => (40, None, "OpenAI keys are at least 51 characters"),
            Provider::Anthropic => (
                90,
                None,
                "Anthropic keys (sk-ant-api03-...) are about 108 characters",
            ),
            Provider::Gemini if key.starts_with("AIza") => (
                39,
                Some(39),
                "Gemini API keys are exactly 39 characters (AIza + 35)",
            ),
            Provider::Gemini => (30, None, "Gemini API keys are at least 39 characters"),
            Provider::Azure => (32, None, "Azure OpenAI keys are at least 32 characters"),
            // Tokens minted by keyproxy and Bedrock API keys: no fixed shape worth a lint.
            Provider::Vertex | Provider::Bedrock | Provider::Generic => (0, None, ""),
        };
        KeyLength {
            min,
            exact,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_map_back_to_settings() {
        for p in [
            Provider::Openai,
            Provider::Anthropic,
            Provider::Azure,
            Provider::Gemini,
        ] {
            assert_eq!(Provider::setting_for(p.display_name()), p.as_str());
        }
        assert_eq!(Provider::setting_for("OpenRouter"), "generic");
    }

    #[test]
    fn each_provider_has_its_header() {
        assert_eq!(Provider::Anthropic.auth_scheme().0.as_str(), "x-api-key");
        assert_eq!(Provider::Azure.auth_scheme().0.as_str(), "api-key");
        assert_eq!(Provider::Gemini.auth_scheme().0.as_str(), "x-goog-api-key");
        assert_eq!(Provider::Openai.auth_scheme().1, "Bearer ");
    }
}
