//! The HTML status page (`GET /` on the admin listener): first whether keyproxy is ready and, if
//! not, why; then per upstream which key is live, when it expires, the requests by status and the
//! tokens of the last hour, the last rotation, the rotated-out keys and whether apps still send
//! them, and recent refusals with their sentence. One self-contained page, no external assets,
//! built from the same document as `/status`.

use std::fmt::Write;

use serde_json::Value;

/// Days before expiry from which the page highlights a key.
const SOON_DAYS: f64 = 30.0;

pub fn render(status: &Value) -> String {
    let mut page = String::with_capacity(8 * 1024);
    page.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"15\"><title>keyproxy status</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2430;background:#fafbfc}",
        "h1{font-size:1.4rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}",
        "table{border-collapse:collapse;margin:.3rem 0 1rem}td,th{padding:.25rem .7rem;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}",
        "th{font-weight:600;color:#55606e}code{font-family:ui-monospace,monospace}",
        ".ok{color:#18794e}.warn{background:#fff4d6;color:#8a5a00;font-weight:600}.bad{background:#ffe3e3;color:#b42318;font-weight:600}",
        ".muted{color:#7a8594}",
        ".banner{padding:.7rem 1rem;border-radius:6px;font-size:1.1rem;font-weight:600}",
        ".banner.ready{background:#e3f6ea;color:#18794e}.banner.not-ready{background:#ffe3e3;color:#b42318}",
        "</style></head><body>"
    ));
    let _ = write!(
        page,
        "<h1>keyproxy {}</h1><p class=\"muted\">up {} · started {}</p>",
        esc(str_of(&status["version"])),
        uptime(status["uptime_seconds"].as_u64().unwrap_or(0)),
        esc(str_of(&status["started_at"]))
    );
    banner(&mut page, status);
    for up in status["upstreams"].as_array().into_iter().flatten() {
        upstream(&mut page, up);
    }
    page.push_str("</body></html>");
    page
}

/// Ready (every upstream has a usable key: what /readyz says) or not, and why, before any detail.
fn banner(page: &mut String, status: &Value) {
    let unusable: Vec<&Value> = status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|up| up["key"]["usable"] != true)
        .collect();
    if unusable.is_empty() {
        page.push_str(
            "<p class=\"banner ready\" id=\"banner\">Ready: every upstream has a usable key.</p>",
        );
        return;
    }
    page.push_str("<div class=\"banner not-ready\" id=\"banner\">Not ready: requests to these upstreams get 503.<ul>");
    for up in unusable {
        let _ = write!(
            page,
            "<li>{}: no usable key ({}): {}</li>",
            esc(str_of(&up["name"])),
            esc(str_of(&up["key"]["problem"]["reason"])),
            esc(str_of(&up["key"]["problem"]["message"]))
        );
    }
    page.push_str("</ul></div>");
}

fn upstream(page: &mut String, up: &Value) {
    let key = &up["key"];
    let _ = write!(
        page,
        "<h2>{} <span class=\"muted\">{} · {} · prefix <code>{}</code></span></h2><table>",
        esc(str_of(&up["name"])),
        esc(str_of(&up["provider"])),
        esc(str_of(&up["base_url"])),
        esc(str_of(&up["prefix"]))
    );
    if key["usable"] == true {
        let _ = write!(
            page,
            "<tr><th>key</th><td class=\"ok\"><code>{}</code> (generation {})</td></tr>\
             <tr><th>source</th><td>{}</td></tr><tr><th>loaded</th><td>{} ({} ago)</td></tr>",
            esc(str_of(&key["fingerprint"])),
            key["generation"],
            esc(str_of(&key["source"])),
            esc(str_of(&key["loaded_at"])),
            uptime(key["age_seconds"].as_u64().unwrap_or(0))
        );
        if let Some(kind) = key["credential"].as_str() {
            let region = match key["region"].as_str() {
                Some(r) => format!(", region {}", esc(r)),
                None => String::new(),
            };
            let _ = write!(
                page,
                "<tr><th>credential</th><td>{}{region}</td></tr>",
                esc(kind)
            );
        }
        match key["days_to_expiry"].as_f64() {
            Some(days) => {
                let class = if days < 0.0 {
                    "bad"
                } else if days < SOON_DAYS {
                    "warn"
                } else {
                    "ok"
                };
                let text = if days < 0.0 {
                    format!("expired {:.0} days ago", -days)
                } else if days < 1.0 {
                    // Short-lived credentials (a Bedrock short-term API key lasts 12 hours at most).
                    format!("in {:.1} hours", days * 24.0)
                } else {
                    format!("in {days:.0} days")
                };
                let _ = write!(
                    page,
                    "<tr><th>expires</th><td class=\"{class}\">{text} ({})</td></tr>",
                    esc(str_of(&key["expires_at"]))
                );
            }
            None => page.push_str("<tr><th>expires</th><td class=\"muted\">unknown (set expires_at or max_age)</td></tr>"),
        }
        for w in key["warnings"].as_array().into_iter().flatten() {
            let _ = write!(
                page,
                "<tr><th>lint</th><td class=\"warn\">{}</td></tr>",
                esc(str_of(&w["message"]))
            );
        }
    } else {
        let _ = write!(
            page,
            "<tr><th>key</th><td class=\"bad\">no usable key ({}): {}</td></tr>",
            esc(str_of(&key["problem"]["reason"])),
            esc(str_of(&key["problem"]["message"]))
        );
    }
    token_refresh(page, &up["token_refresh"]);
    let last = &up["last_rotation"];
    if last.is_object() {
        let class = if last["result"] == "applied" {
            "ok"
        } else {
            "bad"
        };
        let _ = write!(
            page,
            "<tr><th>last rotation</th><td class=\"{class}\">{} by {} at {}{}</td></tr>",
            esc(str_of(&last["result"])),
            esc(str_of(&last["trigger"])),
            esc(str_of(&last["at"])),
            last["finding"]
                .as_str()
                .map_or(String::new(), |f| format!(": {}", esc(f)))
        );
    }
    let last = &up["last_hour"];
    let by_status: Vec<String> = last["by_status"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(status, n)| {
            let class = match status.as_bytes().first() {
                Some(b'2') | Some(b'1') | Some(b'3') => "ok",
                Some(b'4') if status == "429" => "warn",
                _ => "bad",
            };
            format!("<span class=\"{class}\">{} × {n}</span>", esc(status))
        })
        .collect();
    let _ = write!(
        page,
        "<tr><th>requests, last hour</th><td>{} <span class=\"muted\">(since {}; {} since start, {} refused by the provider)</span></td></tr>",
        if by_status.is_empty() { "none".to_owned() } else { by_status.join(" · ") },
        esc(str_of(&last["since"])),
        up["requests"]["total"],
        up["requests"]["auth_failures"]
    );
    let _ = write!(
        page,
        "<tr><th>tokens, last hour</th><td>{} in · {} out <span class=\"muted\">({} in · {} out since start)</span></td></tr>",
        last["tokens"]["input"], last["tokens"]["output"], up["tokens"]["input"], up["tokens"]["output"]
    );
    pool(page, up);
    retired(page, up);
    page.push_str("</table>");
    let recent: Vec<&Value> = up["recent_diagnoses"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(10)
        .collect();
    if recent.is_empty() {
        page.push_str("<p class=\"muted\">No refusals by the provider recently.</p>");
        return;
    }
    page.push_str("<table><tr><th>when</th><th>status</th><th>reason</th><th>what to do</th></tr>");
    for d in recent {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"bad\"><code>{}</code></td><td>{}</td></tr>",
            esc(str_of(&d["at"])),
            d["status"],
            esc(str_of(&d["reason"])),
            esc(str_of(&d["message"]))
        );
    }
    page.push_str("</table>");
}

/// A token credential (its kind is the key's `credential` row): the client and token endpoint,
/// when the token expires, the last refresh.
fn token_refresh(page: &mut String, c: &Value) {
    if !c.is_object() {
        return;
    }
    let class = match c["last_result"].as_str() {
        Some("ok") => "ok",
        Some(_) => "bad",
        None => "muted",
    };
    let _ = write!(
        page,
        "<tr><th>token endpoint</th><td>{} (client <code>{}</code>)</td></tr>\
         <tr><th>token expires</th><td>{}</td></tr>\
         <tr><th>last refresh</th><td class=\"{class}\">{} at {}{}; next at {}</td></tr>",
        esc(str_of(&c["endpoint"])),
        esc(str_of(&c["client"])),
        esc(str_of(&c["token_expires_at"])),
        esc(c["last_result"].as_str().unwrap_or("none yet")),
        esc(str_of(&c["last_refresh_at"])),
        match c["problem"]["message"].as_str() {
            Some(m) => format!(": {} ({})", esc(m), esc(str_of(&c["problem"]["reason"]))),
            None => String::new(),
        },
        esc(str_of(&c["next_refresh_at"])),
    );
}

/// A pool's keys (more than one), each with its state and why (and a token credential's last
/// refresh: each key of a pool refreshes on its own).
fn pool(page: &mut String, up: &Value) {
    let keys = up["keys"].as_array().map_or(&[][..], Vec::as_slice);
    if keys.len() < 2 {
        return;
    }
    let rows: Vec<String> = keys
        .iter()
        .map(|k| {
            let state = str_of(&k["state"]);
            let class = if state == "active" { "ok" } else { "bad" };
            let why = match (
                k["cause"].as_str(),
                k["until"].as_str(),
                k["since"].as_str(),
            ) {
                (Some(cause), Some(until), _) => format!(" ({} until {})", esc(cause), esc(until)),
                (Some(cause), None, Some(since)) => {
                    format!(" ({} since {})", esc(cause), esc(since))
                }
                (Some(cause), None, None) => format!(" ({})", esc(cause)),
                (None, None, Some(since)) => format!(" (since {})", esc(since)),
                _ => String::new(),
            };
            let why = match k["retires_at"].as_str() {
                Some(at) => format!("{why}, retires at {}", esc(at)),
                None => why,
            };
            let token = &k["token_refresh"];
            let why = match token["last_result"].as_str() {
                Some(result) => format!(
                    "{why}; token refresh {}, token expires {}",
                    esc(result),
                    esc(str_of(&token["token_expires_at"]))
                ),
                None => why,
            };
            format!(
                "{} <code>{}</code> <span class=\"{class}\">{}</span>{why}",
                esc(str_of(&k["name"])),
                esc(str_of(&k["fingerprint"])),
                esc(state)
            )
        })
        .collect();
    let _ = write!(page, "<tr><th>keys</th><td>{}</td></tr>", rows.join("<br>"));
}

/// The keys rotated out, and whether apps still send one of them themselves (a sighting).
fn retired(page: &mut String, up: &Value) {
    let keys: Vec<String> = up["retired_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            // Who still sends it, from the state store (app names come from requests: escaped).
            let apps: Vec<String> = k["sightings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{} ({}×, last {})",
                        esc(str_of(&s["app"])),
                        s["count"],
                        esc(str_of(&s["last_seen"]))
                    )
                })
                .collect();
            let by = if apps.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"bad\">still sent by {}</span>",
                    apps.join(", ")
                )
            };
            format!(
                "<code>{}</code> (generation {}, rotated out {}){by}",
                esc(str_of(&k["fingerprint"])),
                k["generation"],
                esc(str_of(&k["retired_at"]))
            )
        })
        .collect();
    if keys.is_empty() {
        return;
    }
    let sightings = up["client_credentials"]["retired"].as_u64().unwrap_or(0);
    let seen = if sightings == 0 {
        "<span class=\"ok\">no app has sent one since start: safe to delete in the dashboard</span>"
            .to_owned()
    } else {
        format!("<span class=\"warn\">apps sent a rotated-out key {sightings} times since start: find them before deleting it</span>")
    };
    let _ = write!(
        page,
        "<tr><th>rotated out</th><td>{}<br>{seen}</td></tr>",
        keys.join("<br>")
    );
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn uptime(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// HTML-escape text (provider messages can contain anything).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_highlights() {
        let status = serde_json::json!({
            "version": "1.0", "uptime_seconds": 5, "started_at": "2026-11-27T00:00:00Z",
            "upstreams": [{
                "name": "openai", "provider": "openai", "base_url": "https://api.openai.com/", "prefix": "/",
                "key": {"usable": true, "fingerprint": "sk-proj-…Xy7Q:1a2b3c4d", "generation": 2, "source": "file /k",
                        "loaded_at": "2026-11-27T00:00:00Z", "age_seconds": 60, "expires_at": "2026-12-04T00:00:00Z",
                        "days_to_expiry": 7.0, "warnings": []},
                "last_rotation": {"result": "rejected", "trigger": "file", "at": "2026-11-27T00:00:00Z", "finding": "quotes <b>"},
                "requests": {"total": 3, "auth_failures": 1},
                "last_hour": {"since": "2026-11-27T00:00:00Z", "by_status": {"200": 2, "401": 1}, "tokens": {"input": 5, "output": 7}},
                "tokens": {"input": 50, "output": 70},
                "retired_keys": [{"fingerprint": "sk-proj-…Ab12:0a0b0c0d", "generation": 1, "retired_at": "2026-11-26T00:00:00Z",
                                  "sightings": [{"app": "user-agent <img onerror=x>", "count": 4, "last_seen": "2026-11-27T00:00:02Z"}]}],
                "client_credentials": {"current": 0, "retired": 4, "unknown": 0},
                "recent_diagnoses": [{"at": "2026-11-27T00:00:01Z", "status": 401, "reason": "invalid_key", "message": "<script>alert(1)</script>"}],
            }]
        });
        let page = render(&status);
        assert!(page.contains("sk-proj-…Xy7Q:1a2b3c4d"));
        assert!(page.contains("class=\"warn\">in 7 days"));
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("quotes &lt;b&gt;"));
        assert!(page.contains("Ready: every upstream has a usable key."));
        assert!(
            page.contains("200 × 2") && page.contains("401 × 1"),
            "{page}"
        );
        assert!(page.contains("5 in · 7 out") && page.contains("50 in · 70 out"));
        assert!(page.contains("sk-proj-…Ab12:0a0b0c0d") && page.contains("4 times since start"));
        assert!(
            page.contains("user-agent &lt;img onerror=x&gt; (4×, last 2026-11-27T00:00:02Z)"),
            "{page}"
        );
        assert!(!page.contains("<img"));
        assert!(
            !page.contains("http://") && !page.contains("src="),
            "no external assets"
        );
    }

    #[test]
    fn a_token_credential_shows_its_kind_expiry_and_last_refresh() {
        let mut page = String::new();
        token_refresh(
            &mut page,
            &serde_json::json!({"kind": "azure_ad", "client": "app<1>", "endpoint": "https://login/t",
                "token_expires_at": "2026-12-06T23:00:00Z", "last_result": "failed",
                "last_refresh_at": "2026-12-06T22:00:00Z", "next_refresh_at": "2026-12-06T22:00:02Z",
                "problem": {"reason": "credential_refresh_failed", "message": "refused <b>"}}),
        );
        assert!(
            page.contains("https://login/t (client <code>app&lt;1&gt;</code>)"),
            "{page}"
        );
        assert!(page.contains("class=\"bad\">failed at 2026-12-06T22:00:00Z: refused &lt;b&gt; (credential_refresh_failed)"), "{page}");
        let mut none = String::new();
        token_refresh(&mut none, &serde_json::Value::Null);
        assert!(none.is_empty());
    }

    #[test]
    fn not_ready_says_which_upstream_and_why_first() {
        let status = serde_json::json!({
            "version": "1.0", "uptime_seconds": 5, "started_at": "2026-11-27T00:00:00Z",
            "upstreams": [{
                "name": "openai", "provider": "openai", "base_url": "https://api.openai.com/", "prefix": "/",
                "key": {"usable": false, "source": "env OPENAI_API_KEY",
                        "problem": {"reason": "missing_key", "message": "environment variable OPENAI_API_KEY is not set"}},
                "requests": {"total": 2, "auth_failures": 0},
                "last_hour": {"since": "2026-11-27T00:00:00Z", "by_status": {"503": 2}, "tokens": {"input": 0, "output": 0}},
                "tokens": {"input": 0, "output": 0},
            }]
        });
        let page = render(&status);
        let banner = page.find("Not ready").unwrap();
        assert!(
            banner < page.find("<h2>").unwrap(),
            "the banner comes first"
        );
        assert!(page.contains(
            "openai: no usable key (missing_key): environment variable OPENAI_API_KEY is not set"
        ));
        assert!(page.contains("class=\"bad\">503 × 2"), "{page}");
    }

    #[test]
    fn a_pool_shows_each_key_with_its_state_a_retirement_and_a_grace_period() {
        let mut page = String::new();
        pool(
            &mut page,
            &serde_json::json!({"keys": [
                {"name": "a", "fingerprint": "sk-…a", "state": "retired", "since": "2026-12-06T10:00:00Z"},
                {"name": "b", "fingerprint": "sk-…b", "state": "active", "retires_at": "2026-12-07T10:00:00Z"},
                {"name": "c", "fingerprint": "sk-…c", "state": "cooling", "cause": "rate_limited", "until": "2026-12-06T10:01:00Z"},
                {"name": "d", "fingerprint": "eyJ…d", "state": "active", "token_refresh": {"last_result": "failed", "token_expires_at": "2026-12-06T11:00:00Z"}},
            ]}),
        );
        assert!(
            page.contains(
                "active</span>; token refresh failed, token expires 2026-12-06T11:00:00Z"
            ),
            "{page}"
        );
        assert!(
            page.contains("class=\"bad\">retired</span> (since 2026-12-06T10:00:00Z)"),
            "{page}"
        );
        assert!(
            page.contains("class=\"ok\">active</span>, retires at 2026-12-07T10:00:00Z"),
            "{page}"
        );
        assert!(
            page.contains("(rate_limited until 2026-12-06T10:01:00Z)"),
            "{page}"
        );
    }
}
