//! `POST /keys/{upstream}?mode=add|retire`: who is in a pool. `mode=add&name=…` (body: the key)
//! adds a key; with `retire=<old name>` the old key leaves once the new one serves — after a
//! grace period (`grace=24h`, or the upstream's `grace`) during which both serve, retired then by
//! a timer that a restart re-arms. `mode=retire&name=…` takes a key out now.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{admin_error, json_response, Admin};
use crate::key::history;
use crate::key::lifecycle::RotateOptions;
use crate::key::rotation::{Refusal, Trigger};
use crate::key::Secret;
use crate::proxy::Proxy;
use crate::time::rfc3339_string;
use crate::upstream::keys::Membership;
use crate::upstream::members::Addition;
use crate::upstream::Upstream;

/// The heaviest weight a key added at run time may take (as in the config).
const MAX_WEIGHT: u32 = 1000;

/// `at`, when RFC 3339 can write it (before the year 10000): a duration from a request or the
/// config must not end where no timestamp can say.
pub fn writable(at: Option<SystemTime>) -> Option<SystemTime> {
    const YEAR_10000: std::time::Duration = std::time::Duration::from_secs(253_402_300_800);
    at.filter(|t| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|d| d < YEAR_10000)
    })
}

/// The value of `field` in a query string (`name=value`).
pub fn param<'q>(query: &'q str, field: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(field)?.strip_prefix('='))
}

/// A refused change to a pool, as the admin API answers it.
pub fn membership_error(upstream: &Upstream, refused: Membership) -> Response<Full<Bytes>> {
    match refused {
        Membership::NotFound(message) => {
            admin_error(StatusCode::NOT_FOUND, "unknown_key", &message)
        }
        Membership::Conflict { code, message } => admin_error(StatusCode::CONFLICT, code, &message),
        Membership::Failed(message) => {
            admin_error(StatusCode::INTERNAL_SERVER_ERROR, "not_recorded", &message)
        }
        Membership::Refused(refusal) => {
            let status = match &refusal {
                Refusal::ProbeFailed { .. } => StatusCode::BAD_GATEWAY,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json_response(
                status,
                &json!({
                    "error": {"message": refusal.to_string(), "type": "key_rejected", "code": refusal.code()},
                    "upstream": &*upstream.name,
                }),
            )
        }
    }
}

/// `mode=add&name=…[&weight=2][&retire=old[&grace=24h]]`.
pub async fn add(
    admin: &Admin,
    upstream: &Upstream,
    query: &str,
    secret: Secret,
    options: RotateOptions,
) -> Response<Full<Bytes>> {
    let bad = |message: String| admin_error(StatusCode::BAD_REQUEST, "bad_parameter", &message);
    let Some(name) = param(query, "name") else {
        return bad(
            "mode=add needs name=<the new key's name> (letters, digits, '-' and '_')".into(),
        );
    };
    let weight = match param(query, "weight").map(str::parse::<u32>) {
        None => 1,
        Some(Ok(w)) if (1..=MAX_WEIGHT).contains(&w) => w,
        Some(_) => return bad(format!("weight: a whole number from 1 to {MAX_WEIGHT}")),
    };
    let grace = match param(query, "grace").map(crate::time::parse_duration) {
        None => upstream.keys.grace,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return bad(format!("grace: {e}; write e.g. 24h")),
    };
    let old = param(query, "retire");
    if param(query, "grace").is_some() && old.is_none() {
        return bad("grace= says how long the key this one replaces keeps serving: give retire=<its name> too".into());
    }
    if let Some(old) = old {
        if upstream.keys.position(old).is_none() {
            return membership_error(upstream, upstream.unknown_key(old));
        }
    }
    // Everything that can be wrong with the request is said before the key joins.
    let grace = grace.filter(|g| !g.is_zero() && old.is_some());
    let due = match grace.map(|g| (g, writable(SystemTime::now().checked_add(g)))) {
        None => None,
        Some((g, Some(at))) => Some((g, at)),
        Some((_, None)) => {
            let raw = param(query, "grace").unwrap_or_default();
            return bad(format!(
                "grace={raw:?} ends beyond any date; write e.g. 24h"
            ));
        }
    };
    if let Err(why) = &admin.state {
        return admin_error(
            StatusCode::CONFLICT,
            "no_state_store",
            &format!("adding a key needs the state store (the key is kept in a 0600 file under [server] state_dir and named there, so it outlives a restart): {why}"),
        );
    }
    let addition = Addition {
        name: name.to_owned(),
        weight,
        secret,
        options,
    };
    let added = match upstream.add_key(addition, upstream).await {
        Ok(added) => added,
        Err(refused) => return membership_error(upstream, refused),
    };
    let mut answer = json!({
        "upstream": &*upstream.name,
        "key": name,
        "mode": "add",
        "result": "added",
        "fingerprint": added.fingerprint.as_str(),
        "generation": added.generation,
        "weight": weight,
        "expires_at": upstream.keys.position(name).and_then(|i| upstream.lifecycle(i).current().snapshot().and_then(|k| k.expires_at)).map(rfc3339_string),
        "warnings": added.warnings.iter().map(|w| json!({"code": w.code.as_str(), "message": w.message})).collect::<Vec<_>>(),
    });
    if let Some(old) = old {
        let who = history::who(Trigger::Admin, options.from_cli);
        answer["retires"] = match due {
            None => match upstream
                .retire_key(old, who, &format!("replaced by {name}"))
                .await
            {
                Ok(r) => {
                    json!({"key": old, "fingerprint": r.as_ref().map(|r| r.fingerprint.as_str()), "retired_at": rfc3339_string(SystemTime::now())})
                }
                Err(e) => json!({"key": old, "error": e.to_string()}),
            },
            Some((grace, at)) => match upstream.retire_later(old, Some(at)) {
                Ok(()) => {
                    arm_retirement(&admin.proxy, &upstream.name, old.into(), at);
                    tracing::info!(upstream = %upstream.name, key = old, "key {old} retires at {} (grace {}): {name} and {old} serve together until then", rfc3339_string(at), humantime::format_duration(grace));
                    json!({"key": old, "at": rfc3339_string(at)})
                }
                Err(e) => json!({"key": old, "error": e.to_string()}),
            },
        };
    }
    json_response(StatusCode::OK, &answer)
}

/// `mode=retire&name=…`: the key leaves the pool now.
pub async fn retire(upstream: &Upstream, query: &str, from_cli: bool) -> Response<Full<Bytes>> {
    let Some(name) = param(query, "name") else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            "mode=retire needs name=<the key to retire>",
        );
    };
    let who = history::who(Trigger::Admin, from_cli);
    match upstream
        .retire_key(name, who, &format!("retired by the {who}"))
        .await
    {
        Ok(r) => json_response(
            StatusCode::OK,
            &json!({
                "upstream": &*upstream.name,
                "key": name,
                "mode": "retire",
                "result": "retired",
                "fingerprint": r.as_ref().map(|r| r.fingerprint.as_str()),
                "generation": r.as_ref().map(|r| r.generation),
                "retired_at": rfc3339_string(r.map_or_else(SystemTime::now, |r| r.retired_at)),
            }),
        ),
        Err(refused) => membership_error(upstream, refused),
    }
}

/// Retire key `name` of `upstream` at `at`, unless that appointment changed meanwhile.
fn arm_retirement(proxy: &Arc<Proxy>, upstream: &str, name: Arc<str>, at: SystemTime) {
    let proxy = Arc::clone(proxy);
    let upstream: Arc<str> = upstream.into();
    tokio::spawn(async move {
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let Some(u) = proxy.upstream(&upstream) else {
            return;
        };
        if !u
            .keys
            .retiring()
            .iter()
            .any(|(n, a)| *n == name && *a == at)
        {
            return;
        }
        if let Err(e) = u.retire_key(&name, "grace", "its grace period ended").await {
            tracing::warn!(upstream = %upstream, key = %name, "key {name} was due to retire at {} and stays: {e}", rfc3339_string(at));
            let _ = u.retire_later(&name, None);
        }
    });
}

/// Startup: grace periods that were running when keyproxy stopped run on (one already over
/// retires its key now).
pub fn resume_retirements(proxy: &Arc<Proxy>) {
    for upstream in &proxy.upstreams {
        for (name, at) in upstream.keys.retiring() {
            arm_retirement(proxy, &upstream.name, name, at);
        }
    }
}
