//! Rotation by file: a notify watch on each key file's directory — so editors' rename-over,
//! `echo > file` rewrites and the Kubernetes Secret volume's `..data` symlink swap are all seen —
//! with bursts coalesced, plus a periodic re-read in case an event is lost.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::lifecycle::{KeyLifecycle, KeyProbe};
use super::rotation::Trigger;
use super::KeySource;

/// The key lifecycles to watch, each with the probe that vouches for its candidates.
pub trait Watched: Send + Sync + 'static {
    fn lifecycles(&self) -> Vec<(&KeyLifecycle, &dyn KeyProbe)>;
}

/// Writers touch a file several times in a row (truncate, write, rename); wait for quiet.
const SETTLE: Duration = Duration::from_millis(100);

/// Watch every file key source until the returned task is aborted.
pub fn spawn<W: Watched>(watched: Arc<W>, reread_every: Duration) -> tokio::task::JoinHandle<()> {
    let dirs: BTreeSet<PathBuf> = watched
        .lifecycles()
        .into_iter()
        .filter_map(|(key, _)| match key.source() {
            KeySource::File(path) => Some(
                path.parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
            ),
            _ => None,
        })
        .collect();
    let (tx, mut events) = mpsc::unbounded_channel::<()>();
    let watcher = if dirs.is_empty() {
        None
    } else {
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        }) {
            Ok(mut watcher) => {
                for dir in &dirs {
                    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(
                            dir = %dir.display(),
                            "cannot watch the key file's directory ({e}); changes are picked up by the periodic re-read every {}",
                            humantime::format_duration(reread_every)
                        );
                    }
                }
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!(
                    "file watching is unavailable ({e}); key files are re-read periodically"
                );
                None
            }
        }
    };
    tokio::spawn(async move {
        let _keep_watching = watcher;
        let mut reread = tokio::time::interval(reread_every);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reread.tick().await;
        loop {
            let trigger = tokio::select! {
                Some(()) = events.recv() => {
                    let settle = tokio::time::sleep(SETTLE);
                    tokio::pin!(settle);
                    loop {
                        tokio::select! {
                            _ = &mut settle => break,
                            more = events.recv() => if more.is_none() { break },
                        }
                    }
                    Trigger::File
                }
                _ = reread.tick() => Trigger::Periodic,
            };
            for (key, probe) in watched.lifecycles() {
                if matches!(key.source(), KeySource::File(_)) {
                    key.reload(trigger, false, probe).await;
                }
            }
        }
    })
}
