//! Google RPC errors (Gemini): `{"error":{"code","message","status","details":[{"reason"}]}}`,
//! sometimes with `errors[].reason` too, sometimes wrapped in an array (handled by the caller).

use serde_json::Value;

use super::ErrorFacts;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let error = v.get("error")?;
    let status = error.get("status")?.as_str()?;
    let mut reasons = Vec::new();
    for list in ["details", "errors"] {
        for item in error
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = item.get("reason").and_then(Value::as_str) {
                reasons.push(r.to_owned());
            }
        }
    }
    Some(ErrorFacts {
        code: error
            .get("code")
            .map(super::openai::text)
            .unwrap_or_default(),
        kind: status.to_ascii_lowercase(),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        reasons,
    })
}
