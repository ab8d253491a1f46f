//! Azure OpenAI / Azure AI services errors: `{"error":{"code":"401"|"PermissionDenied"|...,"message"}}`
//! with no `type`, sometimes `innererror.code`; and Microsoft Entra ID (Azure AD) token errors,
//! `{"error":"invalid_client","error_description":"AADSTS7000215: ...","error_codes":[7000215]}`,
//! which reach an app when keyproxy's Entra credential is refused. Below the readers: the documented
//! Azure OpenAI and Entra catalogues.

use serde_json::Value;

use super::catalogue::{Entry, On};
use super::ErrorFacts;
use crate::reason::Reason;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    read_entra(v).or_else(|| read_azure(v))
}

fn read_azure(v: &Value) -> Option<ErrorFacts> {
    let error = v.get("error")?;
    let code = error.get("code")?.as_str()?;
    if error.get("type").is_some() {
        return None;
    }
    let inner = error
        .pointer("/innererror/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    Some(ErrorFacts {
        code: code.to_ascii_lowercase(),
        kind: inner.to_ascii_lowercase(),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        reasons: Vec::new(),
    })
}

/// The OAuth 2 error shape of the Entra token endpoint. The `AADSTS` number is the documented,
/// specific part; the OAuth `error` (`invalid_client`) only names the family.
fn read_entra(v: &Value) -> Option<ErrorFacts> {
    let description = v.get("error_description")?.as_str()?;
    let family = v.get("error").and_then(Value::as_str).unwrap_or("");
    let number = v
        .get("error_codes")
        .and_then(Value::as_array)
        .and_then(|codes| codes.first())
        .and_then(Value::as_u64)
        .map(|n| n.to_string())
        .or_else(|| aadsts_number(description).map(str::to_owned));
    Some(ErrorFacts {
        code: number.map(|n| format!("aadsts{n}")).unwrap_or_default(),
        kind: family.to_ascii_lowercase(),
        message: description.to_owned(),
        reasons: Vec::new(),
    })
}

/// The digits after the first `AADSTS` in a description.
fn aadsts_number(text: &str) -> Option<&str> {
    let start = text.find("AADSTS")? + "AADSTS".len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

const ERRORS: &str =
    "https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#error-response";
const VNET: &str =
    "https://learn.microsoft.com/en-us/azure/ai-services/cognitive-services-virtual-networks";
const RBAC: &str =
    "https://learn.microsoft.com/en-us/azure/ai-services/openai/how-to/role-based-access-control";
const QUOTA: &str = "https://learn.microsoft.com/en-us/azure/ai-services/openai/quotas-limits";
const AADSTS: &str =
    "https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes";

pub const CATALOGUE: &[Entry] = &[
    // 401: the key or the endpoint (a key is bound to its resource's endpoint).
    Entry::says(
        "invalid subscription key or wrong api endpoint",
        Reason::WrongEndpoint,
        ERRORS,
    ),
    Entry::says("invalid subscription key", Reason::InvalidKey, ERRORS),
    // 401 from Entra-authenticated requests: the bearer token is missing, for another audience or old.
    Entry::says("access token is missing, invalid", Reason::InvalidKey, RBAC),
    // 403: network rules. A resource with a virtual network must be called at its custom-domain
    // endpoint; reaching it through the regional endpoint is a wrong endpoint, not a bad IP.
    Entry::decisive(
        On::Phrase("a virtual network is configured for this resource"),
        Reason::WrongEndpoint,
        VNET,
    ),
    Entry::says("virtual network/firewall rules", Reason::IpNotAllowed, VNET),
    Entry::says("public access is disabled", Reason::IpNotAllowed, VNET),
    Entry::says(
        "traffic is not from an approved private endpoint",
        Reason::IpNotAllowed,
        VNET,
    ),
    // 401/403 PermissionDenied: Entra principal without the Cognitive Services OpenAI User role.
    Entry::hint(
        On::Code("permissiondenied"),
        Reason::InsufficientPermissions,
        RBAC,
    ),
    Entry::says(
        "principal does not have access to api/operation",
        Reason::InsufficientPermissions,
        RBAC,
    ),
    Entry::says(
        "lacks the required data action",
        Reason::InsufficientPermissions,
        RBAC,
    ),
    // 403: the resource was blocked (abuse, unpaid subscription).
    Entry::says(
        "resource has been temporarily blocked",
        Reason::AccountInactive,
        ERRORS,
    ),
    // 429: tokens-per-minute and requests-per-minute quota of a deployment.
    Entry::says("exceeded token rate limit", Reason::RateLimited, QUOTA),
    Entry::says("exceeded call rate limit", Reason::RateLimited, QUOTA),
];

/// Microsoft Entra ID sign-in errors an app meets when its credential (client secret or
/// certificate) is refused; `AADSTS` codes from the Entra error reference.
pub const ENTRA: &[Entry] = &[
    Entry::decisive(On::Code("aadsts7000215"), Reason::InvalidKey, AADSTS),
    Entry::decisive(On::Code("aadsts7000222"), Reason::ExpiredKey, AADSTS),
    Entry::decisive(On::Code("aadsts700016"), Reason::InvalidKey, AADSTS),
    Entry::decisive(On::Code("aadsts90002"), Reason::InvalidKey, AADSTS),
    Entry::decisive(On::Code("aadsts900023"), Reason::InvalidKey, AADSTS),
    Entry::decisive(On::Code("aadsts50012"), Reason::InvalidKey, AADSTS),
    Entry::decisive(On::Code("aadsts700027"), Reason::InvalidKey, AADSTS),
    Entry::decisive(On::Code("aadsts700024"), Reason::ExpiredKey, AADSTS),
    Entry::decisive(On::Code("aadsts700082"), Reason::ExpiredKey, AADSTS),
    Entry::decisive(On::Code("aadsts50173"), Reason::ExpiredKey, AADSTS),
    Entry::decisive(
        On::Code("aadsts70011"),
        Reason::InsufficientPermissions,
        AADSTS,
    ),
    Entry::decisive(
        On::Code("aadsts65001"),
        Reason::InsufficientPermissions,
        AADSTS,
    ),
    Entry::decisive(
        On::Code("aadsts53003"),
        Reason::InsufficientPermissions,
        AADSTS,
    ),
    Entry::decisive(On::Code("aadsts50057"), Reason::AccountInactive, AADSTS),
    Entry::decisive(On::Code("aadsts50053"), Reason::AccountInactive, AADSTS),
    Entry::decisive(On::Code("aadsts7000112"), Reason::AccountInactive, AADSTS),
    Entry::says("invalid client secret", Reason::InvalidKey, AADSTS),
    Entry::says("client secret keys are expired", Reason::ExpiredKey, AADSTS),
    // The OAuth family alone: the client credential was refused.
    Entry::hint(On::Type("invalid_client"), Reason::InvalidKey, AADSTS),
    Entry::hint(
        On::Type("unauthorized_client"),
        Reason::InsufficientPermissions,
        AADSTS,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_numbers_come_from_the_codes_or_the_description() {
        assert_eq!(
            aadsts_number("AADSTS7000215: Invalid client"),
            Some("7000215")
        );
        assert_eq!(aadsts_number("x AADSTS50012: y"), Some("50012"));
        assert_eq!(aadsts_number("AADSTS: none"), None);
        assert_eq!(aadsts_number("nothing"), None);
        let v: Value = serde_json::json!({"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired."});
        let f = read(&v).unwrap();
        assert_eq!(f.code, "aadsts7000222");
        assert_eq!(f.kind, "invalid_client");
    }
}
