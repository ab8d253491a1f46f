//! The HTML status page (`GET /` on the admin listener): which key is live for each upstream, when it
//! expires, the last rotation, and recent refusals with their sentence. One self-contained page,
//! no external assets, built from the same document as `/status`.

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
        "</style></head><body>"
    ));
    let _ = write!(
        page,
        "<h1>keyproxy {}</h1><p class=\"muted\">up {} · started {}</p>",
        esc(str_of(&status["version"])),
        uptime(status["uptime_seconds"].as_u64().unwrap_or(0)),
        esc(str_of(&status["started_at"]))
    );
    for up in status["upstreams"].as_array().into_iter().flatten() {
        upstream(&mut page, up);
    }
    page.push_str("</body></html>");
    page
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
    let _ = write!(
        page,
        "<tr><th>requests</th><td>{} ({} refused by the provider)</td></tr></table>",
        up["requests"]["total"], up["requests"]["auth_failures"]
    );
    retired_keys(page, up);
    let recent: Vec<&Value> = up["recent_diagnoses"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(10)
        .collect();
    if recent.is_empty() {
        page.push_str("<p class=\"muted\">No auth failures recently.</p>");
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

/// Each retired key and the apps still sending it (app names come from requests: escaped).
fn retired_keys(page: &mut String, up: &Value) {
    let retired: Vec<&Value> = up["retired_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if retired.is_empty() {
        return;
    }
    page.push_str("<table><tr><th>retired key</th><th>retired at</th><th>still sent by</th></tr>");
    for r in retired {
        let apps: Vec<String> = r["sightings"]
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
        let (class, apps) = if apps.is_empty() {
            ("ok", "no app seen".to_owned())
        } else {
            ("bad", apps.join("<br>"))
        };
        let _ = write!(
            page,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"{class}\">{apps}</td></tr>",
            esc(str_of(&r["fingerprint"])),
            esc(str_of(&r["retired_at"]))
        );
    }
    page.push_str("</table>");
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
                "recent_diagnoses": [{"at": "2026-11-27T00:00:01Z", "status": 401, "reason": "invalid_key", "message": "<script>alert(1)</script>"}],
                "retired_keys": [{"fingerprint": "sk-proj-…Ab12:0badf00d", "retired_at": "2026-11-26T00:00:00Z",
                                  "sightings": [{"app": "user-agent <img onerror=x>", "count": 4, "last_seen": "2026-11-27T00:00:02Z"}]}],
            }]
        });
        let page = render(&status);
        assert!(page.contains("sk-proj-…Xy7Q:1a2b3c4d"));
        assert!(page.contains("class=\"warn\">in 7 days"));
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("quotes &lt;b&gt;"));
        assert!(
            page.contains("sk-proj-…Ab12:0badf00d")
                && page
                    .contains("user-agent &lt;img onerror=x&gt; (4×, last 2026-11-27T00:00:02Z)"),
            "{page}"
        );
        assert!(!page.contains("<img"));
        assert!(
            !page.contains("http://") && !page.contains("src="),
            "no external assets"
        );
    }
}
