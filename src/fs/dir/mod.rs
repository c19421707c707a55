//! Directories: asking every provider that may hold entries of one (with hedging and coverage), the merged
//! listing, `opendir` and `readdir`.
//!
//! This file holds the merged listing and the open directory; `ask` asks the providers.

mod ask;
mod stream;

use super::*;
pub(super) use ask::{ask_each, list_one, Asked, Outcome};
pub(crate) use stream::DirListing;
use stream::Progress;

impl Filesystem {
    /// Opens a directory: its listing is taken now, or streamed from now on (see `stream`), and served to
    /// readdir from this snapshot.
    pub async fn opendir(self: &Arc<Self>, ino: Ino) -> FsResult<u64> {
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        let entries = match self.listings.get(&path) {
            Some(entries) => entries,
            None => {
                if let Some(streamed) = self.stream_dir(&path).await {
                    return Ok(self.add_handle(ino, Handle::Dir { listing: streamed? }));
                }
                let asked = self.inodes.clock();
                let (entries, partial, _) = self.list_dir(&path, Heads::Small).await?;
                let entries = Arc::new(entries);
                if partial.is_none() {
                    let listings = &self.listings;
                    self.inodes.if_unchanged(&path, asked, || {
                        listings.insert(path.clone(), entries.clone());
                    });
                }
                entries
            }
        };
        let entries = self.with_staged(&path, entries);
        let (_, listing) = tokio::sync::watch::channel(Progress::whole(entries));
        Ok(self.add_handle(ino, Handle::Dir { listing }))
    }

    /// A listing of `dir` with the files written here as they are now (a cached listing may be older than
    /// their last write): the kernel takes the sizes a listing gives as the truth.
    pub(super) fn with_staged(&self, dir: &str, entries: Arc<Vec<DirEntry>>) -> Arc<Vec<DirEntry>> {
        let staged = self.uploads.children(dir);
        if staged.is_empty() {
            return entries;
        }
        let mut entries = (*entries).clone();
        for (child, file) in staged {
            let name = child.rsplit('/').next().unwrap_or(&child).to_string();
            let known = self.inodes.find(&child).map(|(_, e, _)| e);
            let entry = Self::staged_entry(&file, known);
            let (ino, entry) = self.inodes.record_shown(&child, entry);
            let listed = DirEntry {
                name: name.clone(),
                attr: self.attr(ino, &entry),
            };
            match entries.iter_mut().find(|e| e.name == name) {
                Some(e) if e.attr.kind == Kind::Dir => {}
                Some(e) => *e = listed,
                None => entries.push(listed),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Arc::new(entries)
    }

    /// Entries of an open directory from position `offset` on ("." and ".." included), each with the offset of
    /// the next; produced as they are taken (the kernel takes a few dozen per call from listings of thousands).
    /// None: the listing has not got there yet (see [`Filesystem::readdir`]).
    pub fn readdir_now(&self, ino: Ino, fh: u64, offset: u64) -> FsResult<Option<DirPage>> {
        let handle = self.handle(fh)?;
        let Handle::Dir { listing } = &*handle else {
            return Err(FsError::NotADirectory);
        };
        let progress = listing.borrow().clone();
        if !progress.answers(offset as usize) {
            return Ok(None);
        }
        self.dir_page(ino, offset, progress.at(offset)?).map(Some)
    }

    /// [`Filesystem::readdir_now`], waiting for a streamed listing to get to `offset`.
    pub async fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> FsResult<DirPage> {
        let handle = self.handle(fh)?;
        let Handle::Dir { listing } = &*handle else {
            return Err(FsError::NotADirectory);
        };
        let progress = Self::listing_at(listing, offset).await?;
        self.dir_page(ino, offset, progress)
    }

    fn dir_page(&self, ino: Ino, offset: u64, progress: Progress) -> FsResult<DirPage> {
        let (path, entry, _) = self.path_of(ino)?;
        let parent_ino = self.parent_ino(&path);
        let parent_entry = Entry::dir(self.mounted_at);
        let dots =
            [(".", ino, &entry), ("..", parent_ino, &parent_entry)].map(|(name, i, e)| DirEntry {
                name: name.to_string(),
                attr: self.attr(i, e),
            });
        Ok(DirPage {
            dots,
            progress,
            next: offset as usize,
        })
    }

    pub(super) fn parent_ino(&self, path: &str) -> Ino {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        self.inodes.find(parent).map_or(ROOT, |(ino, _, _)| ino)
    }

    /// The merged listing of directory `path`, each name once; records every entry's attributes. Also returns
    /// the outage of a provider that did not answer while a fallback stood in for it: such a listing may lack
    /// files only that provider has, so it is not cached (and `rmdir` does not trust it).
    pub(super) async fn list_dir(
        &self,
        path: &str,
        heads: Heads,
    ) -> FsResult<(Vec<DirEntry>, Option<StorageError>, HashSet<String>)> {
        let asked = self.inodes.clock();
        let providers = self.providers_under(path);
        let list = |provider: &Arc<Provider>| {
            let provider = provider.clone();
            let attempts = self.dir_attempts(path, &provider);
            let path = path.to_string();
            Box::pin(async move { list_one(&provider.client(attempts), &path).await })
                as Asked<ListResult>
        };
        let listings = self.ask_all(path, &providers, list, |_| false).await;
        let mut outcome = Outcome::of(&providers, listings)?;
        let partial = self.check_covered(path, &mut outcome)?;
        let mut gathered = Gathered::default();
        for (listing, provider) in outcome.answered {
            self.gather(path, listing, provider, &mut gathered);
        }
        let (mut dirs, unasked) = self.settle(gathered, heads).await;
        let written = self.made_here(path, asked, &mut dirs, |_| false);
        let entries = self.record_listing(path, dirs, &written, asked);
        Ok((entries, partial, unasked))
    }

    /// Adds to a listing of `path` (asked at `asked`) the names made here while it was asked (a write-back upload
    /// published meanwhile: the listing may lack them) and the files written here as they are now (also before
    /// their first upload), except names `given` already; returns the files written here.
    pub(super) fn made_here(
        &self,
        path: &str,
        asked: inode::Asked,
        dirs: &mut BTreeMap<String, Entry>,
        given: impl Fn(&str) -> bool,
    ) -> HashSet<String> {
        // Names made here while the listing was asked (a write-back upload published meanwhile): the listing may
        // lack them.
        for child in self.inodes.changed_in(path, asked) {
            if given(&child) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = dirs.entry(child) {
                if let Some((_, entry)) = self.current(slot.key()) {
                    slot.insert(entry);
                }
            }
        }
        // Files written here: what they are now, also before their first upload.
        let mut written = HashSet::new();
        for (child, staged) in self.uploads.children(path) {
            if given(&child) {
                continue;
            }
            let known = dirs.remove(&child);
            if known.as_ref().is_some_and(|e| e.kind == Kind::Dir) {
                dirs.insert(child, known.unwrap());
                continue;
            }
            dirs.insert(child.clone(), Self::staged_entry(&staged, known));
            written.insert(child);
        }
        written
    }

    /// Adds one provider's answer about directory `path` to `into`: its folders, and each file from the provider
    /// that ranks first for it in read order.
    pub(super) fn gather(
        &self,
        path: &str,
        listing: ListResult,
        provider: &Arc<Provider>,
        into: &mut Gathered,
    ) {
        let router = self.storage.router();
        let Gathered { dirs, files } = into;
        for sub in listing.common_prefixes {
            let Some(child) = provider.path_of(&sub) else {
                continue;
            };
            if router
                .providers_under(&child)
                .contains(&provider.name.as_str())
            {
                dirs.insert(child, Entry::dir(self.mounted_at));
            }
        }
        for meta in listing.objects {
            let Some(child) = provider.path_of(&meta.location) else {
                continue;
            };
            let marker = child.rsplit('/').next() == Some(DIR_MARKER);
            if marker || child == path {
                continue;
            }
            let Some(rank) = self.storage.read_rank(&child, &provider.name) else {
                continue; // no route sends this name to this provider
            };
            if files.get(&child).is_none_or(|(r, _)| rank < *r) {
                let entry = Entry {
                    kind: Kind::File,
                    size: meta.size,
                    mtime: meta.last_modified.into(),
                    etag: meta.e_tag.or(meta.version),
                    posix: None,
                    source: Some(provider.name.clone()),
                };
                files.insert(child, (rank, entry));
            }
        }
    }

    /// Asks what a listing cannot say (folders' stored attributes; files' types and attributes, as `heads`
    /// says) and merges folders and files, a folder winning over a file of the same name. Also returns the files
    /// not asked for their attributes.
    pub(super) async fn settle(
        &self,
        gathered: Gathered,
        heads: Heads,
    ) -> (BTreeMap<String, Entry>, HashSet<String>) {
        // Subdirectories: their mode, owner and times are on their markers, which a listing does not show (the
        // kernel takes a listing's attributes as the truth). Asked once per directory this mount has not seen.
        let Gathered {
            mut dirs,
            mut files,
        } = gathered;
        let unknown: Vec<String> = dirs
            .keys()
            .filter(|d| {
                self.inodes
                    .find(d)
                    .is_none_or(|(_, known, _)| known.kind != Kind::Dir)
            })
            .cloned()
            .collect();
        let stored = ask_each(unknown, |dir| async move {
            let posix = self.dir_posix(&dir).await.ok().flatten();
            (dir, posix)
        })
        .await;
        for (dir, posix) in stored {
            if let Some(entry) = dirs.get_mut(&dir) {
                entry.posix = posix;
            }
        }
        // Small objects this mount has not seen may be symlinks, fifos, sockets or device nodes, which only their
        // metadata says (a listing carries none, and the kernel takes a listing's file type as the truth): asked
        // once each, up to SMALL_HEADS per listing; in a larger listing of small objects they show as files until
        // looked up by name.
        // A listing taken for lookups asks every file it has not seen (up to LISTED_HEADS), as a lookup by name
        // would have.
        let mut unseen: Vec<(&String, u64)> = files
            .iter()
            .filter(|(child, (_, listed))| {
                let known = self.inodes.known_version(child);
                known.is_none() || known != listed.etag
            })
            .map(|(child, (_, listed))| (child, listed.size))
            .collect();
        if heads == Heads::Folders {
            unseen.clear();
        }
        let only_small = heads == Heads::Small || unseen.len() > LISTED_HEADS;
        let mut small: Vec<&String> = unseen
            .iter()
            .filter(|(_, size)| !only_small || *size < SMALL_OBJECT)
            .map(|(child, _)| *child)
            .collect();
        if small.len() > SMALL_HEADS {
            tracing::debug!(
                "{} small objects not asked for their type (more than {SMALL_HEADS})",
                small.len()
            );
            small.clear();
        }
        let small: Vec<String> = small.into_iter().cloned().collect();
        let mut unasked: HashSet<String> =
            unseen.into_iter().map(|(child, _)| child.clone()).collect();
        let headed = ask_each(small, |child| async move {
            let entry = self.head(&child).await.ok().flatten();
            (child, entry)
        })
        .await;
        for (child, entry) in headed {
            if let (Some(entry), Some((_, listed))) = (entry, files.get_mut(&child)) {
                *listed = entry;
                unasked.remove(&child);
            }
        }
        for (child, (_, entry)) in files {
            dirs.entry(child).or_insert(entry); // a directory wins over a file of the same name
        }
        (dirs, unasked)
    }

    /// Records a listing's entries of directory `path` (asked at `asked`; `written`: files written here, shown
    /// as they are now) and returns them as the kernel is given them.
    pub(super) fn record_listing(
        &self,
        path: &str,
        dirs: BTreeMap<String, Entry>,
        written: &HashSet<String>,
        asked: inode::Asked,
    ) -> Vec<DirEntry> {
        let (shown, listed): (Vec<_>, Vec<_>) = dirs
            .into_iter()
            .filter(|(child, _)| is_within(child, path))
            .partition(|(child, _)| written.contains(child));
        let shown = shown.into_iter().map(|(child, entry)| {
            let (ino, entry) = self.inodes.record_shown(&child, entry);
            Some((child, ino, entry))
        });
        let listed = self
            .inodes
            .record_listed_all(listed, asked)
            .into_iter()
            .map(|(child, answer)| {
                // Listed before a change made here (an upload finishing, a rename, an unlink): the tree's own
                // entry is newer than the listing's (none: the name is gone). A name the tree does not know (a
                // change of many names, a directory rename, made the answer suspect) is taken as listed.
                let (ino, entry) = match answer {
                    inode::Answer::Recorded(ino, shown) => (ino, shown),
                    inode::Answer::Stale(listed) => match self.current(&child) {
                        Some(known) => known,
                        None if self.negative.contains_key(&child) => return None,
                        None => self.inodes.observed(&child, listed, self.inodes.clock())?,
                    },
                };
                Some((child, ino, entry))
            });
        let mut entries: Vec<DirEntry> = shown
            .chain(listed)
            .flatten()
            .map(|(child, ino, entry)| DirEntry {
                name: child.rsplit('/').next().unwrap_or(&child).to_string(),
                attr: self.attr(ino, &entry),
            })
            .collect();
        if !written.is_empty() {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
        }
        entries
    }
}

/// What [`Filesystem::readdir`] returns: the entries of an open directory from an offset on, cloned one by one as
/// they are taken.
pub struct DirPage {
    dots: [DirEntry; 2],
    progress: Progress,
    next: usize,
}

impl Iterator for DirPage {
    type Item = (u64, DirEntry);

    fn next(&mut self) -> Option<(u64, DirEntry)> {
        let at = self.next;
        let entry = match at {
            0 | 1 => self.dots[at].clone(),
            _ => self.progress.get(at - 2)?.clone(),
        };
        self.next += 1;
        Some((at as u64 + 1, entry))
    }
}

/// Objects smaller than this may be symlinks (a target is at most PATH_MAX - 1 bytes) or special files.
pub(super) const SMALL_OBJECT: u64 = 4096;
/// Small objects a listing asks for their type at most (16 at a time).
pub(super) const SMALL_HEADS: usize = 1000;

/// The path of `name` in directory `dir` (the root is "").
pub(super) fn child_of(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_string(),
        dir => format!("{dir}/{name}"),
    }
}

/// Files a listing taken for lookups asks for their attributes at most (16 at a time).
pub(super) const LISTED_HEADS: usize = 1000;
/// Entries a listing may have and still answer lookups (a larger directory is asked name by name).
pub(super) const LISTED_MAX: usize = 5000;

/// Which files a listing asks for their attributes: small ones (which may be symlinks or special files), or every
/// one it has not seen (a listing taken to answer lookups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Heads {
    Small,
    All,
    /// Only folders: a streamed listing of more small objects than [`SMALL_HEADS`] (see `stream`).
    Folders,
}

/// A listing's folders and files before they are asked about and merged (see [`Filesystem::settle`]).
#[derive(Default)]
pub(super) struct Gathered {
    pub(super) dirs: BTreeMap<String, Entry>,
    /// Files: each name with the read rank of the provider it was taken from.
    pub(super) files: BTreeMap<String, (usize, Entry)>,
}

/// The marker object of directory `path` (the root's is routed like a file `.zmount-dir` at the top).
pub(crate) fn marker_of(path: &str) -> String {
    match path {
        "" => DIR_MARKER.to_string(),
        dir => format!("{dir}/{DIR_MARKER}"),
    }
}
