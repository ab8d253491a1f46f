//! OpenAI's shape and the OpenAI-compatible hosts' variations (OpenRouter, Groq, DeepSeek, Mistral,
//! Together, Cohere): `{"error":{"message","type","param","code"}}`, the same without the `error`
//! wrapper (gateways strip it), `{"detail":{...}}`, `{"error":"text"}`, or a bare `{"message"}`.

use serde_json::Value;

use super::ErrorFacts;

pub fn read(v: &Value) -> Option<ErrorFacts> {
    let inner = match (v.get("error"), v.get("detail")) {
        (Some(e @ Value::Object(_)), _) | (None, Some(e @ Value::Object(_))) => e,
        (Some(Value::String(text)), _) | (None, Some(Value::String(text))) => {
            return Some(ErrorFacts {
                message: text.clone(),
                ..ErrorFacts::default()
            })
        }
        _ => v,
    };
    let message = inner
        .get("message")
        .or_else(|| inner.get("msg"))
        .and_then(Value::as_str);
    let code = inner.get("code").map(text).unwrap_or_default();
    let kind = inner.get("type").map(text).unwrap_or_default();
    if message.is_none() && code.is_empty() && kind.is_empty() {
        return None;
    }
    Some(ErrorFacts {
        code: code.to_ascii_lowercase(),
        kind: kind.to_ascii_lowercase(),
        message: message.unwrap_or("").to_owned(),
        reasons: Vec::new(),
    })
}

/// A JSON scalar as text (`"invalid_api_key"`, `401`); null is empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}
