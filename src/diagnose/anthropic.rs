//! Anthropic errors: `{"type":"error","error":{"type":"authentication_error","message"},"request_id"}`
//! (the outer `type` is sometimes missing behind gateways).

use serde_json::Value;

use super::ErrorFacts;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let error = v.get("error")?;
    let kind = error.get("type")?.as_str()?;
    let anthropic_shape = v.get("type").and_then(Value::as_str) == Some("error")
        || (error.get("code").is_none() && error.get("param").is_none());
    if !anthropic_shape {
        return None;
    }
    Some(ErrorFacts {
        code: String::new(),
        kind: kind.to_ascii_lowercase(),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        reasons: Vec::new(),
    })
}
