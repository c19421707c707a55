//! Listings handed to `readdir` as their pages arrive, for a directory held by one provider with paginated
//! listings: the kernel and the program reading the directory (`ls -l` of 10,000 objects) work on the first pages
//! while the later ones are asked, and each page is asked while the one before it is recorded.
//!
//! A streamed listing shows what a whole one ([`Filesystem::list_dir`]) would:
//! - A file is held back until the listing has passed the key a folder of the same name would have (`NAME/`
//!   sorts after `NAME` and after `NAME-x`), since a folder wins over a file of its name. Each name is given once.
//! - Small objects are asked for their type only in a listing with at most [`SMALL_HEADS`] unseen ones: pages
//!   are held until the listing has more than that (then none is asked, as in a whole listing) or has ended (then
//!   it is settled as a whole listing is).
//! - Names made here while it was listed, and files written here meanwhile, come last. A directory holding files
//!   written here when it is opened is listed whole (they are merged in name order).
//! - A page that fails ends the listing with that error at the offset `readdir` has reached: a listing never ends
//!   early in silence. Only a listing that ran to its end is kept for the TTL (sorted by name, as whole ones are).
//! - Nothing reads it once its directory handle is closed: the listing stops asking.

use super::*;
use crate::providers::listing::{DirPages, Page};
use object_store::ObjectMeta;
use tokio::sync::watch;

/// An open directory's entries as far as its listing has got, and how the listing ended.
#[derive(Clone, Default)]
pub(crate) struct Progress {
    chunks: Vec<Arc<Vec<DirEntry>>>,
    len: usize,
    end: Option<Result<(), Arc<FsError>>>,
}

impl Progress {
    /// A listing taken whole.
    pub(crate) fn whole(entries: Arc<Vec<DirEntry>>) -> Self {
        Progress {
            len: entries.len(),
            chunks: vec![entries],
            end: Some(Ok(())),
        }
    }

    /// Whether `readdir` at `offset` can be answered: an entry is there, or the listing has ended.
    pub(super) fn answers(&self, offset: usize) -> bool {
        self.len + 2 > offset || self.end.is_some()
    }

    /// Entry `at` (0: the first after "." and "..").
    pub(super) fn get(&self, mut at: usize) -> Option<&DirEntry> {
        for chunk in &self.chunks {
            if at < chunk.len() {
                return Some(&chunk[at]);
            }
            at -= chunk.len();
        }
        None
    }
}

/// The listing an open directory reads from.
pub(crate) type DirListing = watch::Receiver<Progress>;

/// Where a streamed listing stands between pages.
struct Stream<'a> {
    path: &'a str,
    provider: &'a Arc<Provider>,
    asked: inode::Asked,
    /// Files not handed out yet because a folder of their name may follow.
    pending: Vec<ObjectMeta>,
    /// What is held until the listing knows whether it asks small objects for their type.
    held: Gathered,
    /// Small objects this mount has not seen, so far.
    small: usize,
    given: HashSet<String>,
    all: Vec<DirEntry>,
}

impl Filesystem {
    /// A listing of directory `path` that `readdir` reads as its pages arrive, once its first entries are there
    /// (or it has ended); None where a directory is listed whole (several providers, a local folder, files
    /// written here waiting in it).
    pub(super) async fn stream_dir(self: &Arc<Self>, path: &str) -> Option<FsResult<DirListing>> {
        let providers = self.providers_under(path);
        let [provider] = &providers[..] else {
            return None;
        };
        if !provider.lists_in_pages() || !self.uploads.children(path).is_empty() {
            return None;
        }
        let (tx, mut rx) = watch::channel(Progress::default());
        let (fs, provider, path) = (self.clone(), provider.clone(), path.to_string());
        tokio::spawn(async move {
            let ended = fs.stream_pages(&path, &provider, &tx).await;
            tx.send_modify(|p| p.end = Some(ended.map_err(Arc::new)));
        });
        let first = rx.wait_for(|p| p.answers(2)).await.ok()?.clone();
        match first.end {
            Some(Err(e)) if first.len == 0 => Some(Err(FsError::Shared(e))),
            _ => Some(Ok(rx)),
        }
    }

    async fn stream_pages(
        &self,
        path: &str,
        provider: &Arc<Provider>,
        tx: &watch::Sender<Progress>,
    ) -> FsResult<()> {
        let asked = self.inodes.clock();
        let mut pages = self.fetch_pages(path, provider);
        let mut stream = Stream {
            path,
            provider,
            asked,
            pending: Vec::new(),
            held: Gathered::default(),
            small: 0,
            given: HashSet::new(),
            all: Vec::new(),
        };
        loop {
            let this = match pages.recv().await {
                Some(page) => page?,
                None => {
                    return Err(FsError::Local(std::io::Error::other(
                        "the directory's listing stopped",
                    )))
                }
            };
            let Some(this) = this else { break };
            if tx.is_closed() {
                return Ok(()); // the directory was closed: nobody reads on
            }
            self.take_page(&mut stream, this, tx).await;
        }
        // Names made here while the listing was asked, and files written here meanwhile, that it did not give.
        let mut dirs = BTreeMap::new();
        let written = self.made_here(path, asked, &mut dirs, |child| stream.given.contains(child));
        let last = self.record_listing(path, dirs, &written, asked);
        stream.all.extend(last.iter().cloned());
        if !last.is_empty() {
            tx.send_modify(|p| p.push(last));
        }
        let mut all = stream.all;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let all = Arc::new(all);
        let listings = &self.listings;
        self.inodes.if_unchanged(path, asked, || {
            listings.insert(path.to_string(), all);
        });
        Ok(())
    }

    /// The pages of directory `path` on `provider`, asked by a task of their own: the next page is asked as
    /// soon as this one's continuation is read, on another thread than the one recording this page and handing
    /// it to `readdir`. It runs at most two pages ahead of what is taken (one waiting, one being asked) and stops
    /// once nobody takes them; the last item is `Ok(None)` (the listing ended) or an error.
    fn fetch_pages(
        &self,
        path: &str,
        provider: &Arc<Provider>,
    ) -> tokio::sync::mpsc::Receiver<FsResult<Option<Page>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let attempts = self.dir_attempts(path, provider);
        let page_size = self.settings.list_page as usize;
        let (provider, path) = (provider.clone(), path.to_string());
        tokio::spawn(async move {
            let fail = |e| FsError::Storage(StorageError::from_store(&provider, &path, e));
            let client = provider.client(attempts);
            let Some(mut pages) = DirPages::new(&client, provider.listing_key(&path), page_size)
            else {
                let unlisted = FsError::NotSupported("paginated listing".into());
                let _ = tx.send(Err(unlisted)).await;
                return;
            };
            loop {
                let page = pages.next().await.map_err(fail);
                let last = !matches!(page, Ok(Some(_)));
                if tx.send(page).await.is_err() || last {
                    return;
                }
            }
        });
        rx
    }

    /// Takes one page into the listing and hands out what can be.
    async fn take_page(&self, stream: &mut Stream<'_>, page: Page, tx: &watch::Sender<Progress>) {
        let Page { result, through } = page;
        stream.small += result
            .objects
            .iter()
            .filter(|meta| meta.size < SMALL_OBJECT)
            .filter(|meta| {
                stream.provider.path_of(&meta.location).is_none_or(|child| {
                    let known = self.inodes.known_version(&child);
                    known.is_none() || known != meta.e_tag.clone().or(meta.version.clone())
                })
            })
            .count();
        let ready = release(&mut stream.pending, result.objects, through.as_deref());
        let ready = ListResult {
            common_prefixes: result.common_prefixes,
            objects: ready,
            extensions: Default::default(),
        };
        self.gather(stream.path, ready, stream.provider, &mut stream.held);
        let heads = match stream.small > SMALL_HEADS {
            true => Heads::Folders,
            false if through.is_none() => Heads::Small,
            false => return, // whether small objects are asked for their type is not known yet
        };
        let (mut dirs, _) = self.settle(std::mem::take(&mut stream.held), heads).await;
        dirs.retain(|child, _| stream.given.insert(child.clone()));
        let entries = self.record_listing(stream.path, dirs, &HashSet::new(), stream.asked);
        if !entries.is_empty() {
            stream.all.extend(entries.iter().cloned());
            tx.send_modify(|p| p.push(entries));
        }
    }

    /// `readdir` of an open directory at `offset`, once its listing has an entry there or has ended; a listing
    /// that failed before reaching `offset` fails it.
    pub(super) async fn listing_at(listing: &DirListing, offset: u64) -> FsResult<Progress> {
        let mut listing = listing.clone();
        let offset = offset as usize;
        let waited = listing
            .wait_for(|p| p.answers(offset))
            .await
            .map(|progress| progress.clone());
        let progress = waited.unwrap_or_else(|_| listing.borrow().clone());
        progress.at(offset as u64)
    }
}

/// The files of `pending` and `objects` that may be handed out once the listing has passed the raw key `through`
/// (None: it has ended); the others stay in `pending`. A file may go once the listing has passed where a folder of
/// its name would be (`NAME/`), since the folder wins over it.
fn release(
    pending: &mut Vec<ObjectMeta>,
    objects: Vec<ObjectMeta>,
    through: Option<&str>,
) -> Vec<ObjectMeta> {
    let mut all = std::mem::take(pending);
    all.extend(objects);
    let (ready, later) = all.into_iter().partition(|meta| {
        through.is_none_or(|t| format!("{}/", meta.location.as_ref()).as_str() <= t)
    });
    *pending = later;
    ready
}

impl Progress {
    /// This progress for `readdir` at `offset` (which it answers): a listing that ended in an error, or stopped,
    /// before it got there fails it.
    pub(super) fn at(self, offset: u64) -> FsResult<Progress> {
        match &self.end {
            _ if self.len + 2 > offset as usize => Ok(self),
            Some(Ok(())) => Ok(self),
            Some(Err(e)) => Err(FsError::Shared(e.clone())),
            None => Err(FsError::Local(std::io::Error::other(
                "the directory's listing stopped",
            ))),
        }
    }

    fn push(&mut self, entries: Vec<DirEntry>) {
        self.len += entries.len();
        self.chunks.push(Arc::new(entries));
    }
}

#[cfg(test)]
mod tests {
    //! The hold-back rule on hand-made pages: a level holding files, folders, and a file and a folder of one name
    //! with names sorting between them (`x`, `x-a`, `x.0`, `x/`), cut into pages of every shape, gives each name
    //! once, and the folder wins over a file of its name however far apart the pages put them.
    use super::release;
    use crate::providers::listing::last_key;
    use object_store::path::Path;
    use object_store::{ListResult, ObjectMeta};
    use std::collections::BTreeMap;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(key),
            last_modified: Default::default(),
            size: 1,
            e_tag: None,
            version: None,
        }
    }

    /// A deterministic stream of numbers below `n` (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Streams `entries` (raw keys in listing order; a folder's ends in `/`) in pages of the given sizes and
    /// returns each name given with whether it was given as a folder.
    fn stream(entries: &[String], sizes: &mut dyn FnMut() -> usize) -> BTreeMap<String, bool> {
        let name = |key: &str| {
            key.trim_end_matches('/')
                .trim_start_matches("p/")
                .to_string()
        };
        let mut pending = Vec::new();
        let mut given = BTreeMap::new();
        let mut rest = entries;
        while !rest.is_empty() {
            let (page, after) = rest.split_at(sizes().clamp(1, rest.len()));
            rest = after;
            let result = ListResult {
                objects: page
                    .iter()
                    .filter(|k| !k.ends_with('/'))
                    .map(|k| meta(k))
                    .collect(),
                common_prefixes: page
                    .iter()
                    .filter(|k| k.ends_with('/'))
                    .map(|k| Path::from(k.trim_end_matches('/')))
                    .collect(),
                extensions: Default::default(),
            };
            let through = match rest.is_empty() {
                true => None,
                false => last_key(&result),
            };
            let folders = result.common_prefixes.clone();
            let ready = release(&mut pending, result.objects, through.as_deref());
            // What one page hands out, merged as a listing merges: a folder wins over a file of its name.
            let mut batch = BTreeMap::new();
            for file in ready {
                batch.insert(name(file.location.as_ref()), false);
            }
            for folder in folders {
                batch.insert(name(folder.as_ref()), true);
            }
            for (n, folder) in batch {
                given.entry(n).or_insert(folder); // a name already given stays as it was given
            }
        }
        assert!(pending.is_empty(), "files never handed out: {pending:?}");
        given
    }

    #[test]
    fn files_wait_for_a_folder_of_their_name_on_any_page() {
        let alphabet = ['x', '-', '.', '0'];
        for seed in 1..=3000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            // Each name: 0 a file, 1 a folder, 2 both (the folder wins).
            let mut kinds = BTreeMap::new();
            for _ in 0..rng.below(12) + 1 {
                let n: String = (0..rng.below(3) + 1)
                    .map(|_| alphabet[rng.below(4)])
                    .collect();
                if !n.starts_with('.') {
                    kinds.insert(n, rng.below(3));
                }
            }
            let expected: BTreeMap<String, bool> =
                kinds.iter().map(|(n, k)| (n.clone(), *k != 0)).collect();
            // The level as a provider lists it: raw keys in byte order, folders as `KEY/`.
            let mut entries: Vec<String> = Vec::new();
            for (n, kind) in &kinds {
                if *kind != 1 {
                    entries.push(format!("p/{n}"));
                }
                if *kind != 0 {
                    entries.push(format!("p/{n}/"));
                }
            }
            entries.sort();
            let got = stream(&entries, &mut || rng.below(4) + 1);
            assert_eq!(got, expected, "seed {seed}, pages of {entries:?}");
            for size in 1..=entries.len() {
                assert_eq!(stream(&entries, &mut || size), expected, "pages of {size}");
            }
        }
    }
}
