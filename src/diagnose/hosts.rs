//! The OpenAI-compatible hosts keyproxy names (OpenRouter, Groq, Mistral, DeepSeek, Together,
//! Cohere, xAI): they answer in OpenAI's shape (read by `openai.rs`) and reuse much of its wording;
//! each table here holds only what that host documents or says differently. Fireworks documents
//! statuses only (401 invalid key, 402 not on a paid plan, 429), which the status rules in
//! `rules.rs` already cover, so it has no table of its own.

use super::catalogue::{Entry, On};
use crate::reason::Reason;

const OPENROUTER_ERRORS: &str = "https://openrouter.ai/docs/api-reference/errors";

pub const OPENROUTER: &[Entry] = &[
    // 401 "Invalid credentials (OAuth session expired, disabled/invalid API key)". A deleted key
    // (or its deleted account) answers "User not found."
    Entry::says("user not found", Reason::InvalidKey, OPENROUTER_ERRORS),
    Entry::says(
        "no auth credentials found",
        Reason::MissingKey,
        OPENROUTER_ERRORS,
    ),
    Entry::says(
        "no cookie auth credentials found",
        Reason::MissingKey,
        OPENROUTER_ERRORS,
    ),
    Entry::says(
        "missing authentication header",
        Reason::MissingKey,
        OPENROUTER_ERRORS,
    ),
    // The combined sentence OpenRouter sends for a key it does not know: keyproxy always sends a
    // header, so the key is the part that is wrong.
    Entry::decisive(
        On::Phrase("missing authentication header or invalid api key"),
        Reason::InvalidKey,
        OPENROUTER_ERRORS,
    ),
    // 402 "Your account or API key has insufficient credits."
    Entry::says(
        "insufficient credits",
        Reason::QuotaExhausted,
        OPENROUTER_ERRORS,
    ),
    Entry::says(
        "requires more credits",
        Reason::QuotaExhausted,
        OPENROUTER_ERRORS,
    ),
    Entry::says(
        "more credits are required",
        Reason::QuotaExhausted,
        OPENROUTER_ERRORS,
    ),
    Entry::says(
        "key limit exceeded",
        Reason::QuotaExhausted,
        OPENROUTER_ERRORS,
    ),
];

const GROQ_ERRORS: &str = "https://console.groq.com/docs/errors";

pub const GROQ: &[Entry] = &[
    // An organization Groq has restricted (abuse, billing): no key of it works until support lifts it.
    Entry::decisive(
        On::Code("organization_restricted"),
        Reason::AccountInactive,
        GROQ_ERRORS,
    ),
    Entry::says(
        "organization has been restricted",
        Reason::AccountInactive,
        GROQ_ERRORS,
    ),
];

const MISTRAL_ERRORS: &str = "https://docs.mistral.ai/api/";

pub const MISTRAL: &[Entry] = &[
    // Mistral answers a bad key with a bare {"message":"Unauthorized"} (or {"detail":...}), which
    // the common wording covers; what it adds is its 429 sentence.
    Entry::says(
        "requests rate limit exceeded",
        Reason::RateLimited,
        MISTRAL_ERRORS,
    ),
];

const DEEPSEEK_ERRORS: &str = "https://api-docs.deepseek.com/quick_start/error_codes";

pub const DEEPSEEK: &[Entry] = &[
    // 401 Authentication Fails: "Authentication fails due to the wrong API key."
    Entry::says("authentication fails", Reason::InvalidKey, DEEPSEEK_ERRORS),
    Entry::says("no such user", Reason::InvalidKey, DEEPSEEK_ERRORS),
    Entry::says(
        "auth header format should be bearer",
        Reason::MalformedKey,
        DEEPSEEK_ERRORS,
    ),
    // 402 Insufficient Balance: "You have run out of balance."
    Entry::says(
        "insufficient balance",
        Reason::QuotaExhausted,
        DEEPSEEK_ERRORS,
    ),
];

const TOGETHER_ERRORS: &str = "https://docs.together.ai/docs/error-codes";

pub const TOGETHER: &[Entry] = &[
    // 401 "Missing or Invalid API Key".
    Entry::says(
        "invalid api key provided",
        Reason::InvalidKey,
        TOGETHER_ERRORS,
    ),
    // 402 "reached its maximum allowed monthly spending limit".
    Entry::says("spending limit", Reason::QuotaExhausted, TOGETHER_ERRORS),
];

const COHERE_ERRORS: &str = "https://docs.cohere.com/reference/errors";

pub const COHERE: &[Entry] = &[
    // 401: "no api key supplied", "invalid api token", "Your API key has expired."
    Entry::says("invalid api token", Reason::InvalidKey, COHERE_ERRORS),
    Entry::says("no api key supplied", Reason::MissingKey, COHERE_ERRORS),
    Entry::says(
        "your api key has expired",
        Reason::ExpiredKey,
        COHERE_ERRORS,
    ),
    // 429: trial keys are limited per minute and per month.
    Entry::says(
        "you are using a trial key",
        Reason::RateLimited,
        COHERE_ERRORS,
    ),
    Entry::says(
        "past the per minute request limit",
        Reason::RateLimited,
        COHERE_ERRORS,
    ),
    Entry::says(
        "trial token rate limit exceeded",
        Reason::RateLimited,
        COHERE_ERRORS,
    ),
];

const XAI_ERRORS: &str = "https://docs.x.ai/docs/key-information/debugging";

pub const XAI: &[Entry] = &[
    // 400 "An incorrect API key is supplied" uses OpenAI's sentence; 429 names the team's limit.
    Entry::says("your team's rate limit", Reason::RateLimited, XAI_ERRORS),
    Entry::says("too many tokens for team", Reason::RateLimited, XAI_ERRORS),
];
