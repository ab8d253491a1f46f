//! `keyproxy explain`: diagnose one refusal offline, from a status and a body (a file or standard
//! input), exactly as the proxy would, and show which documented catalogue row decided it. The
//! quickest way for a user to report a miss, and for a developer to test one. Nothing here reads a
//! config or a key; the provider's words are masked before they are printed.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use keyproxy::diagnose::catalogue::{Entry, On, CATALOGUES};
use keyproxy::diagnose::message::{self, Context};
use keyproxy::diagnose::PEEK_LIMIT;
use keyproxy::diagnose::{self, Knowledge};
use keyproxy::provider::Provider;

#[derive(clap::Args)]
pub struct Args {
    /// The HTTP status the provider answered with.
    #[arg(long)]
    status: u16,
    /// Who answered (openai, anthropic, azure, gemini, vertex, bedrock, openrouter, groq, mistral,
    /// deepseek, together, cohere, fireworks, xai, ...): only the advice depends on it.
    #[arg(long, default_value = "generic")]
    provider: String,
    /// A response header as `name: value` (repeatable); Bedrock's `x-amzn-ErrorType` names its error.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The response body; `-` or nothing reads standard input.
    file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let status = StatusCode::from_u16(args.status)
        .with_context(|| format!("--status {} is not an HTTP status", args.status))?;
    let headers = parse_headers(&args.headers)?;
    let body = read_body(args.file.as_deref())?;
    let facts = diagnose::facts_with_headers(&body, &headers);
    let reason = diagnose::classify(
        status,
        facts.as_ref(),
        &Knowledge::default(),
        SystemTime::now(),
    );
    let rule = facts.as_ref().and_then(diagnose::matched_rule);
    let (provider, auth_header) = provider_of(&args.provider);
    let said = facts
        .as_ref()
        .map(|f| message::quote(&f.message))
        .unwrap_or_default();
    let sentence = reason.map(|r| {
        message::explain(
            r,
            &Context {
                upstream: &args.provider,
                provider,
                status: status.as_u16(),
                key: None,
                provider_message: facts.as_ref().map_or("", |f| f.message.as_str()),
                client_org: None,
                client_project: None,
                retry_after: headers.get("retry-after").and_then(|v| v.to_str().ok()),
                last_attempt: None,
                base_url: "the upstream's base_url",
                auth_header,
                rotate_command: false,
                now: SystemTime::now(),
            },
        )
    });
    if args.json {
        let out = json!({
            "status": status.as_u16(),
            "provider": args.provider,
            "reason": reason.map(|r| r.as_str()),
            "message": sentence,
            "provider_said": said,
            "rule": rule.map(rule_json),
        });
        println!("{out}");
    } else {
        match (reason, sentence) {
            (Some(r), Some(s)) => {
                println!("reason: {r}");
                println!("rule: {}", rule.map_or_else(no_rule, describe));
                println!("{s}");
            }
            _ => {
                println!("reason: none");
                println!(
                    "keyproxy gives no reason to a {} that is not about the key (an ordinary request error or a server error) and passes it on unchanged.",
                    status.as_u16()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_headers(raw: &[String]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?} is not NAME:VALUE"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("--header {h:?}: bad header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("--header {h:?}: bad header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// At most what the proxy itself reads of an error body.
fn read_body(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let limit = PEEK_LIMIT as u64;
    match file {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?
                .take(limit)
                .read_to_end(&mut body)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut body)
                .context("cannot read standard input")?;
        }
    }
    Ok(body)
}

/// keyproxy's provider setting for a name, and the header it would put the key in.
fn provider_of(name: &str) -> (Provider, &'static str) {
    match name.to_ascii_lowercase().as_str() {
        "openai" => (Provider::Openai, "authorization"),
        "anthropic" => (Provider::Anthropic, "x-api-key"),
        "azure" | "azure_openai" | "azure-openai" => (Provider::Azure, "api-key"),
        "gemini" | "vertex" | "google" => (Provider::Gemini, "x-goog-api-key"),
        "bedrock" | "aws" => (Provider::Bedrock, "authorization"),
        _ => (Provider::Generic, "authorization"),
    }
}

fn matcher(e: &Entry) -> (&'static str, &'static str) {
    match e.on {
        On::Code(v) => ("code", v),
        On::Type(v) => ("type", v),
        On::GoogleReason(v) => ("google_reason", v),
        On::Phrase(v) => ("phrase", v),
    }
}

fn catalogue_of(e: &Entry) -> &'static str {
    CATALOGUES
        .iter()
        .find(|(_, table)| table.iter().any(|row| std::ptr::eq(row, e)))
        .map_or("?", |(name, _)| name)
}

fn describe(e: &Entry) -> String {
    let (kind, value) = matcher(e);
    format!(
        "{kind} {value:?} ({} catalogue, {})",
        catalogue_of(e),
        e.source
    )
}

fn no_rule() -> String {
    "no catalogue row matched; the status decided".to_owned()
}

fn rule_json(e: &Entry) -> serde_json::Value {
    let (kind, value) = matcher(e);
    json!({"matches": kind, "value": value, "catalogue": catalogue_of(e), "source": e.source})
}
