//! Property tests (a short fuzz run on every `cargo test`): the lint, the classifier and the config
//! parser take any input without panicking, and the lint never echoes the key it judges.

use std::path::Path;
use std::time::SystemTime;

use http::StatusCode;
use keyproxy::config::Config;
use keyproxy::diagnose::{self, Knowledge};
use keyproxy::key::lint::{self, LintMode};
use keyproxy::provider::Provider;
use proptest::prelude::*;

const PROVIDERS: [Provider; 5] = [
    Provider::Openai,
    Provider::Anthropic,
    Provider::Azure,
    Provider::Gemini,
    Provider::Generic,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lint_takes_anything_and_never_echoes_the_key(key in "\\PC{0,200}", p in 0usize..5, warn in any::<bool>()) {
        let mode = if warn { LintMode::Warn } else { LintMode::Enforce };
        let findings = lint::lint(&key, PROVIDERS[p], "api.example.com", "env K", mode);
        let chars: Vec<char> = key.chars().collect();
        for f in &findings {
            prop_assert!(f.message.contains("env K"));
            for w in chars.windows(12) {
                let piece: String = w.iter().collect();
                prop_assert!(!f.message.contains(&piece), "{} echoes {:?}", f.message, piece);
            }
        }
    }

    #[test]
    fn lint_of_keylike_strings(key in "(sk-|sk-proj-|sk-ant-api03-|AIza)?[A-Za-z0-9_ \"'.*-]{0,180}", p in 0usize..5) {
        let _ = lint::lint(&key, PROVIDERS[p], "api.openai.com", "file /k", LintMode::Enforce);
    }

    #[test]
    fn classifier_takes_any_body(body in proptest::collection::vec(any::<u8>(), 0..2048), status in 100u16..600) {
        let status = StatusCode::from_u16(status).unwrap();
        let facts = diagnose::facts(&body);
        let _ = diagnose::classify(status, facts.as_ref(), &Knowledge::default(), SystemTime::now());
    }

    #[test]
    fn classifier_takes_any_json_error(code in "\\PC{0,30}", kind in "\\PC{0,30}", message in "\\PC{0,200}", status in prop::sample::select(vec![400u16, 401, 402, 403, 429])) {
        for body in [
            serde_json::json!({"error": {"code": code, "type": kind, "message": message}}),
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}),
            serde_json::json!([{"error": {"code": 400, "status": kind, "message": message, "details": [{"reason": code}]}}]),
            serde_json::json!({"message": message, "code": code}),
        ] {
            let bytes = body.to_string().into_bytes();
            let facts = diagnose::facts(&bytes);
            let reason = diagnose::classify(StatusCode::from_u16(status).unwrap(), facts.as_ref(), &Knowledge::default(), SystemTime::now());
            if matches!(status, 401 | 402 | 403 | 429) {
                prop_assert!(reason.is_some(), "a {} always gets a reason", status);
            }
        }
    }

    #[test]
    fn config_parser_takes_any_text(text in "\\PC{0,400}") {
        let _ = Config::parse(Path::new("fuzz.toml"), &text);
    }

    #[test]
    fn config_parser_takes_mutated_configs(cut in 0usize..600, insert in "[\\[\\]{}=\"#\\n a-z0-9.:]{0,12}") {
        let base = include_str!("../../config/keyproxy.toml");
        let at = (0..=cut.min(base.len())).rev().find(|i| base.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{insert}{}", &base[..at], &base[at..]);
        if let Err(e) = Config::parse(Path::new("fuzz.toml"), &text) {
            prop_assert!(e.to_string().starts_with("fuzz.toml:"), "{}", e);
        }
    }
}
