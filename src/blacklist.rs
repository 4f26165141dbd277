//! Beside the path: uids answered 4003 (`blacklist.file`).
//!
//! In: a text file, one uid a line (blank lines and `#` comments skipped).
//! Out: `contains(uid)`, asked by the event loop for every attempt.
//! Invariants: a change to the file (content, replacement, removal) is seen
//! within 1 s: a thread looks at its modification time, size and inode every
//! `POLL`; a missing or unreadable file counts as empty and is logged once
//! per change of state, not once per look. With no entries, `contains` is one
//! atomic load.
//! Never: reads the file on an event loop thread.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(250);

/// The current set of blocked uids. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Blacklist {
    // Mirrors `uids.is_empty()`, so the common case takes no lock.
    empty: Arc<AtomicBool>,
    uids: Arc<RwLock<HashSet<String>>>,
}

/// What the watcher saw of the file last time.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Seen {
    Never,
    Missing,
    File(Option<SystemTime>, u64, u64),
}

impl Blacklist {
    /// An empty blacklist.
    pub(crate) fn new() -> Self {
        Blacklist {
            empty: Arc::new(AtomicBool::new(true)),
            uids: Arc::default(),
        }
    }

    /// Whether `uid` is blocked.
    pub(crate) fn contains(&self, uid: &str) -> bool {
        !self.empty.load(Ordering::Relaxed) && self.uids.read().contains(uid)
    }

    /// Replaces the set from the file's text.
    pub fn set_from_text(&self, text: &str) {
        let uids: HashSet<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        let empty = uids.is_empty();
        *self.uids.write() = uids;
        self.empty.store(empty, Ordering::Relaxed);
    }

    /// Watches `path` on a thread of its own until `stop`.
    pub(crate) fn watch(&self, path: PathBuf, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let list = self.clone();
        let mut seen = Seen::Never;
        seen = list.look(&path, seen);
        std::thread::Builder::new()
            .name("seckill-blacklist".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(POLL);
                    seen = list.look(&path, seen);
                }
            })?;
        Ok(())
    }

    fn look(&self, path: &PathBuf, seen: Seen) -> Seen {
        use std::os::unix::fs::MetadataExt;
        let now = match std::fs::metadata(path) {
            Ok(m) => Seen::File(m.modified().ok(), m.len(), m.ino()),
            Err(_) => Seen::Missing,
        };
        if now == seen {
            return seen;
        }
        match (now, std::fs::read_to_string(path)) {
            (Seen::File(..), Ok(text)) => {
                self.set_from_text(&text);
                log::info!(
                    "blacklist {}: {} uids",
                    path.display(),
                    self.uids.read().len()
                );
                now
            }
            (_, Err(e)) => {
                self.set_from_text("");
                if seen != Seen::Missing {
                    log::warn!(
                        "blacklist {}: {e}; treated as empty until it can be read",
                        path.display()
                    );
                }
                Seen::Missing
            }
            (Seen::Missing | Seen::Never, Ok(_)) => Seen::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_blanks() {
        let b = Blacklist::new();
        assert!(!b.contains("bot1"));
        b.set_from_text("bot1\n  bot2  \n\n# bot3\n");
        assert!(b.contains("bot1"));
        assert!(b.contains("bot2"));
        assert!(!b.contains("bot3"));
        assert!(!b.contains("# bot3"));
        b.set_from_text("");
        assert!(!b.contains("bot1"));
    }
}
