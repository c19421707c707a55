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
//!
//! This file holds the table and its lookups; `changes` the clock of changes made here, `record` the recording
//! of answers and changes.

mod changes;
mod record;

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
    /// Moved on the provider by a copy since a provider last described it: the copy may have a new ETag (Azure and
    /// GCS always, S3 for objects uploaded in parts), so the entry's ETag only says which version was copied. It
    /// is not shown (nothing pins reads to it); a listing that shows the same ETag confirms the version.
    copied: bool,
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
                copied: false,
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

    /// Path, entry, and how long ago it was refreshed.
    pub fn get(&self, ino: Ino) -> Option<(String, Entry, std::time::Duration)> {
        let t = self.inner.lock().unwrap();
        t.by_ino
            .get(&ino)
            .map(|n| (n.path.clone(), n.shown(), age(n.seen)))
    }

    /// The ETag of the version of `path` this table knows: for an object copied on the provider (a rename), the
    /// version that was copied, which a listing showing the same ETag confirms (see `Node::copied`).
    pub fn known_version(&self, path: &str) -> Option<String> {
        let t = self.inner.lock().unwrap();
        let ino = t.by_path.get(path)?;
        t.by_ino.get(ino)?.entry.etag.clone()
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
        t.drop_name(path);
    }

    /// `rmdir`: the directory's name, and any name still known below it, leave the table, so a directory made
    /// there next gets a new number. The kernel keeps a removed directory's inode while a file opened in it is
    /// open, and marks it dead: were the new directory given the old number, the kernel would find that dead inode
    /// and refuse every file created in the new one (ENOENT).
    pub fn remove_dir(&self, path: &str) {
        let mut t = self.inner.lock().unwrap();
        t.mark(path);
        let names: Vec<String> = t
            .by_path
            .keys()
            .filter(|p| !path.is_empty() && crate::routing::is_within(p, path))
            .cloned()
            .collect();
        for name in names {
            t.drop_name(&name);
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

impl Table {
    /// `path` leaves the name map; its number stays (unseen) for the handles still open on it.
    fn drop_name(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(node) = self.by_ino.get_mut(&ino) {
                node.seen = None;
            }
        }
    }
}

impl Node {
    /// The entry with a directory's in-mount mtime over the stored one.
    fn shown(&self) -> Entry {
        let mut entry = self.entry.clone();
        if self.copied {
            entry.etag = None;
        }
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
                node.copied = true; // see `Node::copied`; the provider is asked on next use
                node.seen = None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
