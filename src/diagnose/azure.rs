//! Azure OpenAI / Azure AI services errors: `{"error":{"code":"401"|"PermissionDenied"|...,"message"}}`
//! with no `type`; sometimes `innererror.code`.

use serde_json::Value;

use super::ErrorFacts;

pub fn read(v: &Value) -> Option<ErrorFacts> {
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
