//! The logical clock of changes made here: each change marks its path (and its parent's listing), and an answer
//! asked before a change of its path is stale. Old marks are pruned; answers asked before a pruned one are stale.

use super::{Asked, Inodes, Table, CHANGES_KEPT, CHANGES_PRUNED_PAST};
use std::time::Instant;

impl Table {
    pub(super) fn mark(&mut self, path: &str) {
        self.clock += 1;
        let now = Instant::now();
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        for p in [path, parent] {
            self.changes.insert(p.to_string(), (self.clock, now));
        }
        if self.changes.len() > self.prune_at {
            let mut forgotten = self.forgotten;
            self.changes.retain(|_, (stamp, at)| {
                let keep = at.elapsed() < CHANGES_KEPT;
                if !keep {
                    forgotten = forgotten.max(*stamp);
                }
                keep
            });
            self.forgotten = forgotten;
            self.prune_at = (2 * self.changes.len()).max(CHANGES_PRUNED_PAST);
        }
    }

    /// Whether `path` changed here after `asked`.
    pub(super) fn changed_since(&self, path: &str, asked: Asked) -> bool {
        self.all_changed > asked.0
            || self.forgotten > asked.0
            || self
                .changes
                .get(path)
                .is_some_and(|(stamp, _)| *stamp > asked.0)
    }
}

impl Inodes {
    /// The clock to read before asking a provider about a path: its answer is recorded only if nothing changed
    /// the path here since.
    pub fn clock(&self) -> Asked {
        Asked(self.inner.lock().unwrap().clock)
    }

    /// A change made here to `path` (and so to its parent's listing): answers asked before it are stale. Call it
    /// before clearing caches of `path`.
    pub fn mark(&self, path: &str) {
        self.inner.lock().unwrap().mark(path);
    }

    /// Runs `fill` (filling a cache of answers about `path`) unless `path` changed here since `asked`; whether it
    /// ran. Runs under the table's lock: `fill` must not call back into the table.
    pub fn if_unchanged(&self, path: &str, asked: Asked, fill: impl FnOnce()) -> bool {
        let t = self.inner.lock().unwrap();
        if t.changed_since(path, asked) {
            return false;
        }
        fill();
        true
    }

    /// Paths directly in `dir` that changed here after `asked` (files published or made while a listing of `dir`
    /// was being asked, which it may lack).
    pub fn changed_in(&self, dir: &str, asked: Asked) -> Vec<String> {
        let t = self.inner.lock().unwrap();
        if t.clock <= asked.0 {
            return Vec::new();
        }
        t.changes
            .iter()
            .filter(|(p, (stamp, _))| {
                *stamp > asked.0
                    && !p.is_empty()
                    && p.as_str() != dir
                    && p.rsplit_once('/').map_or("", |(parent, _)| parent) == dir
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// A provider said nothing is at `path` (asked at `asked`): unless a change made here since makes that stale,
    /// the entry expires and `fill` runs (under the table's lock, as in [`Inodes::if_unchanged`]); whether it did.
    pub fn observed_gone(&self, path: &str, asked: Asked, fill: impl FnOnce()) -> bool {
        let mut t = self.inner.lock().unwrap();
        if t.changed_since(path, asked) {
            return false;
        }
        if let Some(ino) = t.by_path.get(path).copied() {
            if let Some(node) = t.by_ino.get_mut(&ino) {
                node.seen = None;
            }
        }
        fill();
        true
    }
}
