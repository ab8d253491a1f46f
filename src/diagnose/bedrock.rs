//! Amazon Bedrock (AWS JSON protocol) errors: `{"message":"..."}` with the error type in the
//! `x-amzn-ErrorType` header (`ThrottlingException:http://internal.amazon.com/...`), or the type in the
//! body as `__type` (`com.amazon.coral.service#UnrecognizedClientException`), sometimes `Message`.
//! Below the reader: Bedrock's documented common and runtime errors.

use serde_json::Value;

use super::catalogue::{Entry, On};
use super::ErrorFacts;
use crate::reason::Reason;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let kind = v.get("__type").and_then(Value::as_str);
    let capital = v.get("Message").and_then(Value::as_str);
    if kind.is_none() && capital.is_none() {
        return None;
    }
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .or(capital)
        .unwrap_or("");
    Some(ErrorFacts {
        code: kind.map(error_type).unwrap_or_default(),
        message: message.to_owned(),
        ..ErrorFacts::default()
    })
}

/// `com.amazon.coral.service#ExpiredTokenException` or `ThrottlingException:http://...` as
/// `expiredtokenexception` / `throttlingexception`.
pub fn error_type(raw: &str) -> String {
    let name = raw.rsplit('#').next().unwrap_or(raw);
    let name = name.split(':').next().unwrap_or(name);
    name.trim().to_ascii_lowercase()
}

const COMMON: &str = "https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html";
const INVOKE: &str =
    "https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html#API_runtime_InvokeModel_Errors";
const MODEL_ACCESS: &str = "https://docs.aws.amazon.com/bedrock/latest/userguide/model-access.html";
const STS: &str = "https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html";

pub const CATALOGUE: &[Entry] = &[
    // The access key id is unknown to AWS.
    Entry::decisive(
        On::Code("unrecognizedclientexception"),
        Reason::InvalidKey,
        COMMON,
    ),
    Entry::decisive(On::Code("invalidclienttokenid"), Reason::InvalidKey, COMMON),
    // The secret does not match the key id (or the request was re-signed along the way).
    Entry::decisive(
        On::Code("invalidsignatureexception"),
        Reason::InvalidKey,
        COMMON,
    ),
    Entry::decisive(
        On::Code("signaturedoesnotmatch"),
        Reason::InvalidKey,
        COMMON,
    ),
    Entry::decisive(
        On::Code("incompletesignature"),
        Reason::MalformedKey,
        COMMON,
    ),
    Entry::decisive(
        On::Code("missingauthenticationtoken"),
        Reason::MissingKey,
        COMMON,
    ),
    Entry::decisive(
        On::Code("missingauthenticationtokenexception"),
        Reason::MissingKey,
        COMMON,
    ),
    // Temporary (STS/SSO) credentials past their expiry.
    Entry::decisive(
        On::Code("expiredtokenexception"),
        Reason::ExpiredKey,
        COMMON,
    ),
    Entry::decisive(On::Code("expiredtoken"), Reason::ExpiredKey, STS),
    // IAM policy, or model access not granted in this account and region.
    Entry::decisive(
        On::Code("accessdeniedexception"),
        Reason::InsufficientPermissions,
        INVOKE,
    ),
    Entry::decisive(
        On::Code("notauthorized"),
        Reason::InsufficientPermissions,
        COMMON,
    ),
    Entry::decisive(
        On::Code("optinrequired"),
        Reason::InsufficientPermissions,
        COMMON,
    ),
    Entry::decisive(On::Code("throttlingexception"), Reason::RateLimited, INVOKE),
    Entry::decisive(
        On::Code("servicequotaexceededexception"),
        Reason::QuotaExhausted,
        INVOKE,
    ),
    Entry::says(
        "security token included in the request is invalid",
        Reason::InvalidKey,
        COMMON,
    ),
    Entry::says(
        "security token included in the request is expired",
        Reason::ExpiredKey,
        COMMON,
    ),
    Entry::says(
        "request signature we calculated does not match",
        Reason::InvalidKey,
        COMMON,
    ),
    Entry::says(
        "you don't have access to the model",
        Reason::InsufficientPermissions,
        MODEL_ACCESS,
    ),
    Entry::says(
        "model access is denied",
        Reason::InsufficientPermissions,
        MODEL_ACCESS,
    ),
    Entry::says(
        "is not authorized to perform",
        Reason::InsufficientPermissions,
        INVOKE,
    ),
    Entry::says(
        "please wait before trying again",
        Reason::RateLimited,
        INVOKE,
    ),
    Entry::says("missing authentication token", Reason::MissingKey, COMMON),
];

/// AWS's `Signature expired: … is now earlier than …` (or later than): the signing clock is off.
pub fn clock_skew(reason: Reason, said: &str) -> bool {
    reason == Reason::InvalidKey && said.to_ascii_lowercase().contains("signature expired")
}

/// What to do about AWS credentials, after the reason's own sentence: `signed` is whether keyproxy
/// signed with `key = { aws = … }` or sent a Bedrock API key (`None`: not known, `keyproxy explain`).
pub fn advice(reason: Reason, said: &str, signed: Option<bool>) -> Option<&'static str> {
    let said = said.to_ascii_lowercase();
    Some(match reason {
        _ if clock_skew(reason, &said) => {
            "AWS refused the signature's time: this machine's clock is more than 5 minutes off (AWS's message names both times). Sync the clock (NTP: chrony, systemd-timesyncd); the credentials themselves may be fine."
        }
        Reason::InvalidKey if signed != Some(false) && said.contains("signature") => {
            "The secret access key does not belong to the access key id: keyproxy signs with the pair its aws table names, so put the secret of that same access key (or of the same STS response) in secret_access_key."
        }
        Reason::InvalidKey if signed == Some(true) => {
            "AWS does not know this access key id: it was deleted or deactivated in IAM, or temporary (ASIA…) credentials came with another session's token. Put current credentials in the aws table's sources; keyproxy re-reads key files as they change."
        }
        Reason::InvalidKey if signed == Some(false) => {
            "The Bedrock API key was deleted or belongs to another account: generate a new one on Bedrock's API keys page (or use IAM credentials with key = { aws = … })."
        }
        Reason::ExpiredKey if signed == Some(true) => {
            "These are temporary (STS) credentials and their session has ended: refresh them (aws sts assume-role, aws sso login, or whatever writes the files the aws table names); keyproxy re-reads them as they change and swaps the new ones in without a restart."
        }
        Reason::ExpiredKey if signed == Some(false) => {
            "Bedrock short-term API keys last 12 hours at most: generate a new one, or use a long-term key or IAM credentials (key = { aws = … }), which keyproxy signs with itself."
        }
        Reason::ExpiredKey => {
            "Temporary (STS) credentials and short-term Bedrock API keys expire by design: refresh the credentials (aws sts assume-role, aws sso login) or generate a new API key, and put them where keyproxy reads them; files are re-read as they change."
        }
        Reason::InsufficientPermissions => {
            "On Bedrock that is IAM and model access: the principal needs bedrock:InvokeModel (and bedrock:InvokeModelWithResponseStream to stream) on the model's ARN, and the model must be enabled for the account in this region (Bedrock console, Model access)."
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_fits_the_credential_that_was_sent() {
        let sts = advice(Reason::ExpiredKey, "", Some(true)).unwrap();
        assert!(sts.contains("STS"));
        let api_key = advice(Reason::ExpiredKey, "", Some(false)).unwrap();
        assert!(api_key.contains("12 hours"));
        assert!(advice(Reason::ExpiredKey, "", None)
            .unwrap()
            .contains("expire by design"));
        let skew = "Signature expired: 20261206T000000Z is now earlier than 20261206T010000Z";
        assert!(clock_skew(Reason::InvalidKey, skew));
        for signed in [None, Some(true), Some(false)] {
            assert!(advice(Reason::InvalidKey, skew, signed)
                .unwrap()
                .contains("clock"));
        }
        let mismatch = "The request signature we calculated does not match";
        assert!(advice(Reason::InvalidKey, mismatch, Some(true))
            .unwrap()
            .contains("secret access key"));
        assert!(
            advice(Reason::InvalidKey, "", None).is_none(),
            "offline, nothing is guessed"
        );
        assert!(advice(Reason::RateLimited, "", Some(true)).is_none());
    }

    #[test]
    fn aws_error_types_are_read_from_body_and_header_forms() {
        assert_eq!(
            error_type("com.amazon.coral.service#UnrecognizedClientException"),
            "unrecognizedclientexception"
        );
        assert_eq!(
            error_type("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            "throttlingexception"
        );
        let v = serde_json::json!({"__type":"ExpiredTokenException","message":"The security token included in the request is expired"});
        let f = read(&v).unwrap();
        assert_eq!(f.code, "expiredtokenexception");
        assert!(read(&serde_json::json!({"message":"x"})).is_none());
    }
}
