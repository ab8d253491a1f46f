//! "In the last hour" for the status page, without a cost per request: the counters keyproxy
//! keeps anyway are remembered once a minute, when /status is asked (the page asks every 15 s
//! while it is open), and the last hour is the difference from the snapshot of an hour ago. When
//! there is none that old, the window starts at the oldest kept (or at startup) and says so.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);
const EVERY: Duration = Duration::from_secs(60);

/// Per upstream: requests by status and (input, output) tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub by_status: Vec<(u16, u64)>,
    pub tokens: (u64, u64),
}

/// The counts of every upstream at one moment.
type Snapshot = (SystemTime, Vec<Counts>);

pub struct Recent {
    started_at: SystemTime,
    kept: Mutex<VecDeque<Snapshot>>,
}

impl Recent {
    pub fn new(started_at: SystemTime) -> Recent {
        Recent {
            started_at,
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// What changed since the start of the window (about an hour ago), per upstream, and when
    /// the window starts. Remembers `now` for later windows.
    pub fn since_an_hour_ago(
        &self,
        now: SystemTime,
        current: &[Counts],
    ) -> (SystemTime, Vec<Counts>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let hour_ago = now.checked_sub(HOUR).unwrap_or(self.started_at);
        // Keep the one snapshot older than an hour that starts the window, drop the rest.
        while kept.len() > 1 && kept.get(1).is_some_and(|(at, _)| *at <= hour_ago) {
            kept.pop_front();
        }
        let (since, base) = match kept.front() {
            _ if self.started_at >= hour_ago => (self.started_at, None),
            Some((at, counts)) => (*at, Some(counts.clone())),
            None => (self.started_at, None),
        };
        let due = match kept.back() {
            Some((at, _)) => now.duration_since(*at).unwrap_or_default() >= EVERY,
            None => true,
        };
        if due {
            kept.push_back((now, current.to_vec()));
        }
        let window = current
            .iter()
            .enumerate()
            .map(|(i, now)| match base.as_ref().and_then(|b| b.get(i)) {
                Some(then) => difference(now, then),
                None => now.clone(),
            })
            .collect();
        (since, window)
    }
}

fn difference(now: &Counts, then: &Counts) -> Counts {
    let before = |status: u16| {
        then.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    Counts {
        by_status: now
            .by_status
            .iter()
            .map(|(s, n)| (*s, n.saturating_sub(before(*s))))
            .filter(|(_, n)| *n > 0)
            .collect(),
        tokens: (
            now.tokens.0.saturating_sub(then.tokens.0),
            now.tokens.1.saturating_sub(then.tokens.1),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ok: u64, refused: u64, tokens: u64) -> Vec<Counts> {
        vec![Counts {
            by_status: vec![(200, ok), (503, refused)],
            tokens: (tokens, tokens),
        }]
    }

    #[test]
    fn the_window_is_the_last_hour_once_there_is_an_hour_to_look_back_on() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let recent = Recent::new(start);
        let at = |mins: u64| start + Duration::from_secs(mins * 60);
        // Younger than an hour: everything since startup.
        let (since, w) = recent.since_an_hour_ago(at(10), &counts(5, 1, 10));
        assert_eq!((since, w), (start, counts(5, 1, 10)));
        recent.since_an_hour_ago(at(30), &counts(8, 1, 20));
        recent.since_an_hour_ago(at(70), &counts(9, 3, 30));
        // At 95 minutes the window starts at the 30-minute snapshot (the newest an hour or more old
        // is gone once a younger one is an hour old too).
        let (since, w) = recent.since_an_hour_ago(at(95), &counts(12, 3, 40));
        assert_eq!(since, at(30));
        assert_eq!(w[0].by_status, vec![(200, 4), (503, 2)]);
        assert_eq!(w[0].tokens, (20, 20));
    }
}
