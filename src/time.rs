//! Time as keyproxy reads and writes it (a leaf): RFC 3339 timestamps in and out, durations in
//! config, "in 5 days" for people, Unix seconds for metrics.

use std::time::{Duration, SystemTime};

use serde::Serializer;

const DAY: f64 = 86_400.0;

/// `2027-11-27T09:00:00Z`, to the second.
pub fn rfc3339_string(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Serde `serialize_with` for a `SystemTime` as RFC 3339.
pub fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_string(*t))
}

/// `rfc3339` for an optional time (`null` when unknown).
pub fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Parse a date (`"2027-11-27"`, midnight UTC) or an RFC 3339 timestamp with `Z` or a `+HH:MM`
/// offset.
pub fn parse_timestamp(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if text.len() == 10 {
        return humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|e| e.to_string());
    }
    let (local, offset_secs) = match text
        .len()
        .checked_sub(6)
        .and_then(|i| text.get(i..).map(|o| (i, o)))
    {
        Some((i, o)) if (o.starts_with('+') || o.starts_with('-')) && o.as_bytes()[3] == b':' => {
            let hours: u64 = o[1..3].parse().map_err(|_| "bad UTC offset".to_string())?;
            let minutes: u64 = o[4..6].parse().map_err(|_| "bad UTC offset".to_string())?;
            let secs = (hours * 3600 + minutes * 60) as i64;
            (&text[..i], if o.starts_with('+') { secs } else { -secs })
        }
        _ => (text.trim_end_matches(['Z', 'z']), 0),
    };
    let utc_as_if = humantime::parse_rfc3339_weak(local).map_err(|e| e.to_string())?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    let t = if offset_secs >= 0 {
        utc_as_if.checked_sub(shift)
    } else {
        utc_as_if.checked_add(shift)
    };
    t.ok_or_else(|| "out of range".to_string())
}

/// `"30s"`, `"5m"`, `"365d"`, with a sentence that shows how to write one when it isn't.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write e.g. \"30s\", \"5m\" or \"365d\"")
    })
}

/// `30s`, `5m`, `365days`: a duration as people read it.
pub fn human_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Days until `at` (negative once past).
pub fn days_left(at: SystemTime, now: SystemTime) -> f64 {
    match at.duration_since(now) {
        Ok(d) => d.as_secs_f64() / DAY,
        Err(e) => -(e.duration().as_secs_f64() / DAY),
    }
}

/// "in 5 days (2027-11-27T00:00:00Z)" / "2 days ago (...)".
pub fn describe(at: SystemTime, now: SystemTime) -> String {
    let days = days_left(at, now);
    let when = rfc3339_string(at);
    if days >= 1.0 {
        format!("in {} days ({when})", days.floor() as i64)
    } else if days >= 0.0 {
        let hours = (days * 24.0).floor() as i64;
        format!("in {hours} hours ({when})")
    } else if days > -1.0 {
        format!("today ({when})")
    } else {
        format!("{} days ago ({when})", (-days).floor() as i64)
    }
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_offsets_and_dates() {
        let z = parse_timestamp("2027-11-27T09:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2027-11-27T11:00:00+02:00").unwrap(), z);
        assert_eq!(parse_timestamp("2027-11-27T04:00:00-05:00").unwrap(), z);
        assert_eq!(
            parse_timestamp("2027-11-27").unwrap() + Duration::from_secs(9 * 3600),
            z
        );
        assert!(parse_timestamp("tomorrow").is_err());
        assert_eq!(rfc3339_string(z), "2027-11-27T09:00:00Z");
    }

    #[test]
    fn durations_say_how_to_write_them() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").unwrap_err().contains("\"30s\""));
    }
}
