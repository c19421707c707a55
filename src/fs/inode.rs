//! Inode numbers for paths: stable while mounted (a path keeps its number even after its attributes are
//! refreshed), with the attributes last seen and when, for TTL checks.
//!
//! Numbers are never reused during a mount; entries stay until unmount (a path seen once costs one entry).
//!
//! Answers from providers race with changes made here: a listing or HEAD sent before a background upload finished
//! (or a rename, unlink, create) answers after it with what the provider held before. The table keeps a logical
//! clock of the changes made here, per path; a provider's answer carries the clock read before it was asked
//! ([`Asked`]), and an answer older than a change of its path is not recorded (see [`Inodes::observed`]). The
//! caches beside the table (negative lookups, listings) are filled through [`Inodes::if_unchanged`] under the
//! same lock, and changes are marked before those caches are cleared, so a stale answer never lands after a change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symlink (an object holding the target, as s3fs stores it), fifo, socket or device node (empty objects):
    /// the object's stored `mode` says which (its `S_IFMT` bits here).
    Special(u32),
}

impl Kind {
    /// The kind a file object's stored attributes describe.
    pub fn of_file(posix: Option<&super::posix::Posix>) -> Kind {
        match posix.and_then(|p| p.kind) {
            Some(bits)
                if [
                    libc::S_IFLNK,
                    libc::S_IFIFO,
                    libc::S_IFSOCK,
                    libc::S_IFCHR,
                    libc::S_IFBLK,
                ]
                .contains(&bits) =>
            {
                Kind::Special(bits)
            }
            _ => Kind::File,
        }
    }
}

/// What the tree knows about one path.
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
    /// Mode, owner and times stored with the object, when known (see [`super::posix`]).
    pub posix: Option<super::posix::Posix>,
    /// The provider holding the file (a fallback while its primary is down), when known.
    pub source: Option<String>,
}

impl Entry {
    pub fn dir(mtime: SystemTime) -> Self {
        Entry {
            kind: Kind::Dir,
            size: 0,
            mtime,
            etag: None,
            posix: None,
            source: None,
        }
    }
}

struct Node {
    path: String,
    entry: Entry,
    /// A directory whose entries changed while mounted: its mtime from then on (kept across refreshes).
    touched: Option<SystemTime>,
    /// When the entry was renamed while mounted: its ctime from then on, unless a stored one is newer (a rename
    /// stores nothing; kept across refreshes of the same node).
    renamed: Option<SystemTime>,
    /// When the entry was last confirmed by a provider; None once expired.
    seen: Option<Instant>,
}

pub struct Inodes {
    inner: Mutex<Table>,
}

struct Table {
    by_ino: HashMap<Ino, Node>,
    by_path: HashMap<String, Ino>,
    next: Ino,
    /// Logical clock of changes made here; each change takes the next value.
    clock: u64,
    /// The last change made here to each path (and to the listing of its parent), with when, for pruning.
    changes: HashMap<String, (u64, Instant)>,
    /// A change of every path (a directory rename moves names below it).
    all_changed: u64,
    /// The newest change forgotten by pruning: answers asked before it are treated as stale.
    forgotten: u64,
    /// `changes` is pruned when it grows past this (twice what pruning left, at least CHANGES_PRUNED_PAST).
    prune_at: usize,
}

/// A provider's answer offered to the table: recorded (inode and entry as shown), or handed back as stale.
pub enum Answer {
    Recorded(Ino, Entry),
    Stale(Entry),
}

/// The clock read before a provider was asked (see [`Inodes::clock`]).
#[derive(Clone, Copy, Debug)]
pub struct Asked(u64);

/// Changes remembered at least this long: an answer that took longer is asked again.
const CHANGES_KEPT: std::time::Duration = std::time::Duration::from_secs(600);
/// Pruning starts past this many remembered changes.
const CHANGES_PRUNED_PAST: usize = 4096;

impl Table {
    fn mark(&mut self, path: &str) {
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
    fn changed_since(&self, path: &str, asked: Asked) -> bool {
        self.all_changed > asked.0
            || self.forgotten > asked.0
            || self
                .changes
                .get(path)
                .is_some_and(|(stamp, _)| *stamp > asked.0)
    }
}

impl Inodes {
    pub fn new(root_mtime: SystemTime) -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            ROOT,
            Node {
                path: String::new(),
                entry: Entry::dir(root_mtime),
                touched: None,
                renamed: None,
                seen: Some(Instant::now()),
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT);
        Inodes {
            inner: Mutex::new(Table {
                by_ino,
                by_path,
                next: ROOT + 1,
                clock: 0,
                changes: HashMap::new(),
                all_changed: 0,
                forgotten: 0,
                prune_at: CHANGES_PRUNED_PAST,
            }),
        }
    }

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

    /// Records a provider's answer about `path`, asked at `asked`, and returns the inode and entry as shown; None
    /// when a change made here since makes the answer stale (nothing is recorded then).
    pub fn observed(&self, path: &str, entry: Entry, asked: Asked) -> Option<(Ino, Entry)> {
        match self.put_unless_stale(path, entry, asked) {
            Answer::Recorded(ino, shown) => Some((ino, shown)),
            Answer::Stale(_) => None,
        }
    }

    fn put_unless_stale(&self, path: &str, entry: Entry, asked: Asked) -> Answer {
        let mut t = self.inner.lock().unwrap();
        if t.changed_since(path, asked) {
            return Answer::Stale(entry);
        }
        let ino = Self::put(&mut t, path, entry);
        Answer::Recorded(ino, t.by_ino[&ino].shown())
    }

    /// Records what a change made here makes `path` now; returns its (stable) inode number.
    pub fn record(&self, path: &str, entry: Entry) -> Ino {
        let mut t = self.inner.lock().unwrap();
        t.mark(path);
        Self::put(&mut t, path, entry)
    }

    fn put(t: &mut Table, path: &str, entry: Entry) -> Ino {
        Self::put_at(t, path, entry, Instant::now())
    }

    /// [`Inodes::put`], the entry seen at `now`.
    fn put_at(t: &mut Table, path: &str, entry: Entry, now: Instant) -> Ino {
        let ino = match t.by_path.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = t.next;
                t.next += 1;
                t.by_path.insert(path.to_string(), ino);
                ino
            }
        };
        let old = t.by_ino.get(&ino);
        let touched = old
            .filter(|old| old.entry.kind == Kind::Dir && entry.kind == Kind::Dir)
            .and_then(|old| old.touched);
        let renamed = old.and_then(|old| old.renamed);
        t.by_ino.insert(
            ino,
            Node {
                path: path.to_string(),
                entry,
                touched,
                renamed,
                seen: Some(now),
            },
        );
        ino
    }

    /// [`Inodes::record`], returning the entry as shown: what a directory's changes while mounted (its mtime) and
    /// a rename (ctime) put over the stored attributes, which a refresh from the provider does not know.
    pub fn record_shown(&self, path: &str, entry: Entry) -> (Ino, Entry) {
        let mut t = self.inner.lock().unwrap();
        t.mark(path);
        let ino = Self::put(&mut t, path, entry);
        (ino, t.by_ino[&ino].shown())
    }

    /// Records an entry seen in a listing asked at `asked` (see [`Inodes::observed`]): listings carry no
    /// metadata, so POSIX attributes already known for the same object version are kept. A stale entry is not
    /// recorded and comes back.
    pub fn record_listed(&self, path: &str, entry: Entry, asked: Asked) -> Answer {
        let mut t = self.inner.lock().unwrap();
        Self::listed_into(&mut t, path, entry, asked, Instant::now())
    }

    /// [`Inodes::record_listed`] for every entry of a listing, under one lock (a listing may hold thousands).
    pub fn record_listed_all(
        &self,
        listed: Vec<(String, Entry)>,
        asked: Asked,
    ) -> Vec<(String, Answer)> {
        let now = Instant::now();
        let mut t = self.inner.lock().unwrap();
        t.by_path.reserve(listed.len());
        t.by_ino.reserve(listed.len());
        listed
            .into_iter()
            .map(|(path, entry)| {
                let answer = Self::listed_into(&mut t, &path, entry, asked, now);
                (path, answer)
            })
            .collect()
    }

    fn listed_into(
        t: &mut Table,
        path: &str,
        mut entry: Entry,
        asked: Asked,
        now: Instant,
    ) -> Answer {
        if let Some(node) = t.by_path.get(path).and_then(|ino| t.by_ino.get(ino)) {
            let same_version =
                entry.posix.is_none() && node.entry.etag.is_some() && node.entry.etag == entry.etag;
            let both_dirs = entry.kind == Kind::Dir && node.entry.kind == Kind::Dir;
            if same_version || both_dirs {
                let known = node.shown();
                if same_version {
                    entry.posix = known.posix;
                    entry.kind = known.kind; // a symlink, special file or directory object, learned by a HEAD
                }
                // A directory's mode, owner and times are on its marker, which listings do not show.
                if entry.kind == Kind::Dir && known.kind == Kind::Dir {
                    entry.posix = known.posix;
                    entry.mtime = known.mtime;
                }
            }
        }
        if t.changed_since(path, asked) {
            return Answer::Stale(entry);
        }
        let ino = Self::put_at(t, path, entry, now);
        Answer::Recorded(ino, t.by_ino[&ino].shown())
    }

    /// Path, entry, and how long ago it was refreshed.
    pub fn get(&self, ino: Ino) -> Option<(String, Entry, std::time::Duration)> {
        let t = self.inner.lock().unwrap();
        t.by_ino
            .get(&ino)
            .map(|n| (n.path.clone(), n.shown(), age(n.seen)))
    }

    /// Inode and entry of a path already known, with its age.
    pub fn find(&self, path: &str) -> Option<(Ino, Entry, std::time::Duration)> {
        let t = self.inner.lock().unwrap();
        let ino = *t.by_path.get(path)?;
        t.by_ino.get(&ino).map(|n| (ino, n.shown(), age(n.seen)))
    }

    /// `unlink`: the name leaves the table (a file created there next gets a new number), the number stays for
    /// the handles still open on it.
    pub fn unlink(&self, path: &str) {
        let mut t = self.inner.lock().unwrap();
        t.mark(path);
        if let Some(ino) = t.by_path.remove(path) {
            if let Some(node) = t.by_ino.get_mut(&ino) {
                node.seen = None;
            }
        }
    }

    /// Whether `ino` still has its name (an unlinked file keeps its number for the handles open on it).
    pub fn is_linked(&self, ino: Ino) -> bool {
        let t = self.inner.lock().unwrap();
        t.by_ino
            .get(&ino)
            .is_some_and(|node| t.by_path.get(&node.path) == Some(&ino))
    }

    /// A directory's entries changed: its mtime (and ctime) move, as on a local filesystem (kept while mounted).
    pub fn touch_dir(&self, path: &str, now: SystemTime) {
        let mut t = self.inner.lock().unwrap();
        let Some(ino) = t.by_path.get(path).copied() else {
            return;
        };
        if let Some(node) = t.by_ino.get_mut(&ino) {
            if node.entry.kind == Kind::Dir {
                node.touched = Some(now);
            }
        }
    }

    /// `utimensat` of a directory: its stored time stands again.
    pub fn untouch(&self, path: &str) {
        let mut t = self.inner.lock().unwrap();
        if let Some(ino) = t.by_path.get(path).copied() {
            if let Some(node) = t.by_ino.get_mut(&ino) {
                node.touched = None;
            }
        }
    }

    /// Marks a path as changed here and gone: the next lookup asks the provider again.
    pub fn expire(&self, path: &str) {
        let mut t = self.inner.lock().unwrap();
        t.mark(path);
        if let Some(ino) = t.by_path.get(path).copied() {
            if let Some(node) = t.by_ino.get_mut(&ino) {
                node.seen = None;
            }
        }
    }
}

impl Node {
    /// The entry with a directory's in-mount mtime over the stored one.
    fn shown(&self) -> Entry {
        let mut entry = self.entry.clone();
        if let Some(renamed) = self.renamed {
            let posix = entry.posix.get_or_insert_with(Default::default);
            posix.ctime = Some(posix.ctime.map_or(renamed, |c| c.max(renamed)));
        }
        if let Some(touched) = self.touched {
            entry.mtime = touched;
            if let Some(posix) = &mut entry.posix {
                posix.mtime = Some(touched);
            }
        }
        entry
    }
}

fn age(seen: Option<Instant>) -> std::time::Duration {
    seen.map_or(std::time::Duration::MAX, |s| s.elapsed())
}

impl Inodes {
    /// Moves `from` (and, for a directory, everything below it) to `to`, keeping inode numbers: the kernel keeps
    /// using the numbers it knows after a rename. The moved entry's ctime moves (in memory, see `Node::renamed`).
    pub fn rename(&self, from: &str, to: &str) {
        let now = SystemTime::now();
        let mut t = self.inner.lock().unwrap();
        t.mark(from);
        t.mark(to);
        let file = t
            .by_path
            .get(from)
            .and_then(|ino| t.by_ino.get(ino))
            .is_some_and(|node| node.entry.kind != Kind::Dir);
        if !file {
            t.all_changed = t.clock; // names below a directory moved, including ones this table never saw
        }
        let moved: Vec<(String, Ino)> = t
            .by_path
            .iter()
            .filter(|(p, _)| crate::routing::is_within(p, from) && !from.is_empty())
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        if let Some(old) = t.by_path.remove(to) {
            t.by_ino.remove(&old);
        }
        for (old_path, ino) in moved {
            let new_path = format!("{to}{}", &old_path[from.len()..]);
            t.by_path.remove(&old_path);
            t.by_path.insert(new_path.clone(), ino);
            if let Some(node) = t.by_ino.get_mut(&ino) {
                if old_path == from {
                    node.renamed = Some(now);
                }
                node.path = new_path;
                node.seen = None; // a copied object may have a new ETag: ask the provider on next use
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, etag: &str) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime: SystemTime::UNIX_EPOCH,
            etag: Some(etag.into()),
            posix: None,
            source: None,
        }
    }

    #[test]
    fn an_answer_older_than_a_change_here_is_not_recorded() {
        let inodes = Inodes::new(SystemTime::UNIX_EPOCH);
        let asked = inodes.clock();
        inodes.record("d/f", file(2, "new")); // published while the provider was being asked
        assert!(inodes.observed("d/f", file(1, "old"), asked).is_none());
        assert!(matches!(
            inodes.record_listed("d/f", file(1, "old"), asked),
            Answer::Stale(_)
        ));
        assert!(!inodes.observed_gone("d/f", asked, || panic!("filled")));
        assert!(!inodes.if_unchanged("d", asked, || panic!("filled"))); // the parent's listing changed too
        assert_eq!(inodes.find("d/f").unwrap().1.etag.as_deref(), Some("new"));
        // Asked after the change: recorded.
        let asked = inodes.clock();
        let (_, shown) = inodes.observed("d/f", file(3, "newer"), asked).unwrap();
        assert_eq!(shown.size, 3);
        assert!(inodes.if_unchanged("d", asked, || {}));
        // Other paths are not held back by a change of d/f.
        let asked_before = Asked(asked.0 - 1);
        assert!(inodes.observed("e/g", file(1, "x"), asked_before).is_some());
    }

    #[test]
    fn unlink_and_renames_make_older_answers_stale() {
        let inodes = Inodes::new(SystemTime::UNIX_EPOCH);
        inodes.record("a/f", file(1, "1"));
        inodes.record("a", Entry::dir(SystemTime::UNIX_EPOCH));
        let asked = inodes.clock();
        inodes.unlink("a/f");
        assert!(inodes.observed("a/f", file(1, "1"), asked).is_none());
        assert!(inodes.find("a/f").is_none(), "an unlinked name stays gone");

        inodes.record("a/g", file(1, "1"));
        let asked = inodes.clock();
        inodes.rename("a/g", "b/g"); // a file: both names change, nothing else
        assert!(inodes.observed("a/g", file(1, "1"), asked).is_none());
        assert!(inodes.observed("b/g", file(1, "1"), asked).is_none());
        assert!(inodes.observed("c/h", file(1, "1"), asked).is_some());

        let asked = inodes.clock();
        inodes.rename("a", "z"); // a directory: names below it move, seen here or not
        assert!(inodes.observed("c/h", file(1, "1"), asked).is_none());
        assert!(inodes
            .observed("a/never/seen", file(1, "1"), asked)
            .is_none());
    }

    #[test]
    fn pruned_changes_make_every_older_answer_stale() {
        let inodes = Inodes::new(SystemTime::UNIX_EPOCH);
        let asked = inodes.clock();
        inodes.mark("x");
        {
            let mut t = inodes.inner.lock().unwrap();
            let old = Instant::now() - CHANGES_KEPT - std::time::Duration::from_secs(1);
            for (_, at) in t.changes.values_mut() {
                *at = old;
            }
            for i in 0..=CHANGES_PRUNED_PAST {
                t.mark(&format!("p{i}"));
            }
            assert!(!t.changes.contains_key("x"), "pruned");
        }
        assert!(inodes.observed("y", file(1, "1"), asked).is_none());
        assert!(inodes.observed("y", file(1, "1"), inodes.clock()).is_some());
    }
}
