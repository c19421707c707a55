//! Recording entries: a provider's answer (kept unless stale), a change made here, and the entries of a
//! listing, which keep the attributes already known for the same object version.

use super::{Answer, Asked, Entry, Ino, Inodes, Kind, Node, Table};
use std::time::Instant;

impl Inodes {
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
                copied: false,
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
}
