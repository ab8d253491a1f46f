//! Rotation by file: a notify watch on each key file's directory — so editors' rename-over,
//! `echo > file` rewrites and the Kubernetes Secret volume's `..data` symlink swap are all seen —
//! with bursts coalesced, plus a periodic re-read in case an event is lost (which also runs an aws
//! `credential_process` again when the set it gave is near its expiry).
//!
//! A file replaced by rename (the atomic way, and Kubernetes' `..data` swap) is whole the moment
//! it appears, so it is read at once. A file written in place may be half-written: it is read only
//! once its bytes have stayed the same for `key_settle`, so a truncated key is never installed.
//! A credential read from several files (an `aws` table's id, secret and session token) is read
//! only once all of them have stayed the same for `key_settle` after any one changed, so a set
//! half replaced (the new id with the old secret, which AWS refuses) is never installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::lifecycle::{KeyLifecycle, KeyProbe};
use super::rotation::Trigger;

/// The key lifecycles to watch, each with the probe that vouches for its candidates.
pub trait Watched: Send + Sync + 'static {
    fn lifecycles(&self) -> Vec<(&KeyLifecycle, &dyn KeyProbe)>;
    /// After each round of re-reads (a pool's picture follows its keys' generations).
    fn reloaded(&self) {}
}

/// Writers touch a file several times in a row (truncate, write, rename): events this close
/// together are one change.
const SETTLE: Duration = Duration::from_millis(100);

/// What a file event says about a key file: replaced whole (created, renamed over), or written in
/// place (and maybe not finished). Writes to other files in the directory (a temporary file about
/// to be renamed over the key file) do not count.
fn written_in_place(event: &notify::Event, files: &[PathBuf]) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    if !event.paths.iter().any(|p| files.contains(p)) {
        return false;
    }
    match event.kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
            false
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Modify(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Access(_) => false,
    }
}

/// Whether what an event touched must stay the same for `key_settle` before it is read: a key
/// file written in place, or one part of a credential read from several files. A writer replaces
/// those one after another (a script, `aws configure export-credentials` into three files), and
/// reading after the first would install the new access key id with the old secret: every
/// request would be refused as an invalid signature until the next read. Kubernetes' `..data`
/// swap changes all the parts at once and touches none of their paths, so it is read at once.
fn must_settle(event: &notify::Event, files: &[PathBuf], parts: &[PathBuf]) -> bool {
    written_in_place(event, files) || event.paths.iter().any(|p| parts.contains(p))
}

/// A key file as file events name it: by its absolute, resolved directory.
fn as_events_name(f: &Path) -> PathBuf {
    let dir = f.parent().and_then(|d| {
        std::fs::canonicalize(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .ok()
    });
    match (dir, f.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => f.to_path_buf(),
    }
}

/// The bytes of every watched key file (as digests), to tell when they stop changing.
fn contents(files: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    files
        .iter()
        .map(|f| {
            std::fs::read(f).ok().map(|mut bytes| {
                let d = super::store::digest(&String::from_utf8_lossy(&bytes));
                zeroize::Zeroize::zeroize(&mut bytes);
                d
            })
        })
        .collect()
}

/// Changed less than `key_settle` ago: maybe still being written; the file event will come.
fn recently_written(path: &Path, key_settle: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .is_some_and(|age| age < key_settle)
}

/// Wait until the key files' bytes have stayed the same, with no event, for `key_settle`.
async fn settle(
    events: &mut mpsc::UnboundedReceiver<bool>,
    files: &[PathBuf],
    key_settle: Duration,
) {
    loop {
        let before = contents(files);
        let quiet = tokio::time::sleep(key_settle);
        tokio::pin!(quiet);
        let mut touched = false;
        loop {
            tokio::select! {
                _ = &mut quiet => break,
                more = events.recv() => match more {
                    Some(_) => touched = true,
                    None => return,
                },
            }
        }
        if !touched && contents(files) == before {
            return;
        }
    }
}

/// The files of every key source read from more than one (as file events name them).
fn watched_parts<W: Watched>(watched: &W) -> Vec<PathBuf> {
    watched
        .lifecycles()
        .into_iter()
        .map(|(key, _)| key.source().files())
        .filter(|files| files.len() > 1)
        .flatten()
        .map(as_events_name)
        .collect()
}

/// Watch every file key source until the returned task is aborted.
pub fn spawn<W: Watched>(
    watched: Arc<W>,
    reread_every: Duration,
    key_settle: Duration,
) -> tokio::task::JoinHandle<()> {
    let files: Vec<PathBuf> = watched
        .lifecycles()
        .into_iter()
        .flat_map(|(key, _)| key.source().files())
        .map(Path::to_path_buf)
        .collect();
    let dirs: BTreeSet<PathBuf> = watched
        .lifecycles()
        .into_iter()
        .flat_map(|(key, _)| key.source().files())
        .map(|path| {
            path.parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
        })
        .collect();
    let (tx, mut events) = mpsc::unbounded_channel::<bool>();
    let watcher = if dirs.is_empty() {
        None
    } else {
        let files: Vec<PathBuf> = files.iter().map(|f| as_events_name(f)).collect();
        let parts = watched_parts(&*watched);
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reads (ours included) change nothing; only a write that closes the file counts.
            let read_only = |e: &notify::Event| matches!(e.kind, notify::EventKind::Access(a) if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write));
            if let Ok(event) = event {
                if !read_only(&event) {
                    let _ = tx.send(must_settle(&event, &files, &parts));
                }
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
                Some(first) = events.recv() => {
                    let mut unsettled = first;
                    let burst = tokio::time::sleep(SETTLE);
                    tokio::pin!(burst);
                    loop {
                        tokio::select! {
                            _ = &mut burst => break,
                            more = events.recv() => match more {
                                Some(w) => unsettled |= w,
                                None => break,
                            },
                        }
                    }
                    if unsettled {
                        settle(&mut events, &files, key_settle).await;
                    }
                    Trigger::File
                }
                _ = reread.tick() => Trigger::Periodic,
            };
            let now = SystemTime::now();
            for (key, probe) in watched.lifecycles() {
                let files = key.source().files();
                // A source without files is read again on this schedule only to renew a set
                // about to expire (an aws credential_process).
                let due = trigger == Trigger::Periodic && key.renewal_due(now);
                if files.is_empty() && !due {
                    continue;
                }
                if trigger == Trigger::Periodic
                    && files.iter().any(|f| recently_written(f, key_settle))
                {
                    continue;
                }
                key.reload(trigger, false, probe).await;
            }
            watched.reloaded();
        }
    })
}
