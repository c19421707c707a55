//! The filesystem core: the merged tree over all routed providers, independent of FUSE.
//!
//! Every method is async, takes inode numbers and names, and returns [`FsError`]; `src/fuse/` only translates.
//! A directory exists when any provider that a rule can route into it holds an object below it; a listing is the
//! union of those providers' entries, each name shown once, from the provider its rule names, and a directory wins
//! over a file of the same name. Attributes, listings and "no such file" answers are trusted for the configured
//! TTLs, then asked again, so changes made directly on a provider appear after at most that long.
//!
//! Lock order: see [`crate::write`] (the one place it is written down).

pub mod error;
pub mod inode;
pub use crate::meta::posix;
mod write_ops;
pub mod xattr;

pub use write_ops::DIR_MARKER;

use crate::cache::{disk::DiskCache, BlockCache};
use crate::config::{Config, MountSettings};
use crate::providers::guard::{with_fallback, Fallback};
use crate::providers::Provider;
use crate::read::{ObjectVersion, ReadState, Reader};
use crate::routing::is_within;
use crate::storage::failover::first_holder;
use crate::storage::{Storage, StorageError};
use error::{FsError, FsResult};
use inode::{Entry, Ino, Inodes, Kind, ROOT};
use object_store::{ListResult, ObjectStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use write_ops::parent_of;

/// Attributes of one entry as a program sees them.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks, consistent with size (tools compare the two to find sparse files).
    pub blocks: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
}

/// One directory entry in a listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

enum Handle {
    File {
        object: ObjectVersion,
        state: Mutex<ReadState>,
    },
    /// A file written in this mount or waiting for its upload: reads and writes go to it whatever its name is
    /// now. `writable`: opened for writing (only such handles publish at `close`); `opener`: the process that
    /// opened it (see [`Filesystem::flush`]).
    Write {
        staged: Arc<crate::write::Staged>,
        writable: bool,
        opener: u32,
    },
    Dir {
        entries: Arc<Vec<DirEntry>>,
    },
}

pub struct Filesystem {
    storage: Arc<Storage>,
    settings: MountSettings,
    uid: u32,
    gid: u32,
    inodes: Inodes,
    negative: moka::sync::Cache<String, ()>,
    /// Directory listings, trusted for the attribute TTL (a second `ls` does not list the providers again).
    listings: moka::sync::Cache<String, Arc<Vec<DirEntry>>>,
    /// Lookups of names not known yet, per directory, within the TTL (see [`Filesystem::lookup_listed`]).
    lookup_misses: moka::sync::Cache<String, Arc<AtomicU64>>,
    /// The names of a directory a run of lookups listed; None when the listing could not answer lookups
    /// (incomplete, or too large). At most one listing per directory per TTL.
    looked_up: moka::future::Cache<String, Option<Arc<HashSet<String>>>>,
    /// Symlink targets by path, with the object version they were read from.
    links: moka::sync::Cache<String, (Option<String>, String)>,
    /// Open handles and the inode each was opened on.
    handles: Mutex<HashMap<u64, (Ino, Arc<Handle>)>>,
    /// The object version whose bytes the kernel's page cache holds for an inode, when only one version has been
    /// read since the kernel last dropped its pages (see [`Filesystem::keep_pages`]).
    page_versions: Mutex<HashMap<Ino, String>>,
    next_handle: AtomicU64,
    reader: Reader,
    mounted_at: SystemTime,
    read_only: bool,
    /// Files written in this mount until their bytes are on the provider; the only publisher of them.
    pub uploads: Arc<crate::write::Uploads>,
    /// Image transforms and variants, when a route has them.
    pub images: Option<Arc<crate::images::ImageWorker>>,
}

impl Filesystem {
    pub fn new(config: &Config, storage: Arc<Storage>, read_only: bool) -> FsResult<Filesystem> {
        let settings = config.settings.mount.clone();
        let disk = DiskCache::open(&config.settings.cache_dir, config.settings.cache_size.0)?;
        let cache = Arc::new(BlockCache::new(settings.memory_cache_size.0, Some(disk)));
        let space: crate::write::Space = {
            let cache = cache.clone();
            Arc::new(move |bytes| cache.evict_disk(bytes))
        };
        let uploads = Arc::new(
            crate::write::Uploads::new(
                storage.clone(),
                &config.settings.cache_dir.join("staging"),
                Some(space),
            )
            .settle_for(Duration::from_secs_f64(settings.write_back_delay)),
        );
        let negative = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs_f64(settings.negative_ttl.max(0.0)))
            .build();
        let listings = moka::sync::Cache::builder()
            .max_capacity(1024)
            .time_to_live(Duration::from_secs_f64(settings.attr_ttl.max(0.0)))
            .build();
        let lookup_ttl = settings.attr_ttl.min(settings.negative_ttl).max(0.0);
        let lookup_misses = moka::sync::Cache::builder()
            .max_capacity(4096)
            .time_to_live(Duration::from_secs_f64(lookup_ttl))
            .build();
        let looked_up = moka::future::Cache::builder()
            .max_capacity(1024)
            .time_to_live(Duration::from_secs_f64(lookup_ttl))
            .build();
        let mounted_at = SystemTime::now();
        let has_images = config
            .routes
            .iter()
            .chain(&config.default)
            .any(|r| crate::config::RouteImages::of(r).is_some());
        let images = has_images.then(|| {
            crate::images::ImageWorker::new(
                storage.clone(),
                config.settings.images.clone(),
                config.settings.cache_dir.join("images"),
            )
        });
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(Filesystem {
            reader: Reader::new(cache, settings.read_ahead.0, settings.memory_cache_size.0),
            uid: settings.uid.unwrap_or(uid),
            gid: settings.gid.unwrap_or(gid),
            settings,
            storage,
            inodes: Inodes::new(mounted_at),
            negative,
            listings,
            lookup_misses,
            looked_up,
            links: moka::sync::Cache::new(10_000),
            handles: Mutex::new(HashMap::new()),
            page_versions: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_at,
            read_only,
            uploads,
            images,
        })
    }

    /// Before serving: drops staged data no program finished writing, then uploads every file whose data was
    /// acknowledged (close/fsync) but not yet uploaded when the previous mount stopped.
    pub async fn replay_journal(&self) -> crate::write::Replay {
        // The root's mode, owner and times (it is never looked up).
        match self.dir_posix("").await {
            Ok(posix) => {
                let root = Entry {
                    posix,
                    ..Entry::dir(self.mounted_at)
                };
                self.inodes.record("", root);
            }
            Err(e) => tracing::debug!("the root's stored attributes cannot be read: {e}"),
        }
        let aborted = self.storage.abort_orphaned_uploads().await;
        if aborted > 0 {
            tracing::warn!("aborted {aborted} multipart uploads the last run left unfinished");
        }
        let discarded = self.uploads.recover();
        if discarded > 0 {
            tracing::warn!(
                "journal: discarded {discarded} staged files that were never closed or fsynced"
            );
        }
        self.retry_pending_uploads().await
    }

    /// Retries journaled uploads whose files are not open in this mount (failed uploads are kept and retried).
    pub async fn retry_pending_uploads(&self) -> crate::write::Replay {
        self.storage.abort_orphaned_uploads().await;
        self.uploads.retry().await
    }

    /// Copies failover writes back to their primaries (see [`crate::storage::failover`]); healed paths are
    /// looked up again.
    pub async fn heal(&self) -> crate::storage::HealReport {
        let report = self
            .storage
            .heal_pending(|path| self.uploads.get(path).is_some())
            .await;
        for path in &report.healed {
            self.changed_on_provider(path);
            if let Some(images) = &self.images {
                images.submit(path); // transforms wait for the primary's copy
            }
        }
        report
    }

    /// Uploads whose data waits in the journal for a retry.
    pub fn journaled_uploads(&self) -> usize {
        self.uploads.pending()
    }

    /// Background uploads in progress.
    pub fn background_uploads(&self) -> usize {
        self.uploads.running()
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Forgets what is cached about `path` and its parent's listing.
    fn changed_on_provider(&self, path: &str) {
        self.inodes.expire(path);
        self.negative.invalidate(path);
        self.listings
            .invalidate(path.rsplit_once('/').map_or("", |(p, _)| p));
    }

    /// Lets the upload queue and image jobs tell the mount's caches about the files they publish (call once the
    /// filesystem is shared, before the journal is replayed).
    pub fn connect(self: &Arc<Self>) {
        let fs = Arc::downgrade(self);
        self.uploads.on_published(move |done| {
            if let Some(fs) = fs.upgrade() {
                fs.published(done);
            }
        });
        if let Some(images) = &self.images {
            let fs = Arc::downgrade(self);
            images.set_on_change(move |path| {
                if let Some(fs) = fs.upgrade() {
                    fs.changed_on_provider(path);
                }
            });
        }
    }

    pub fn attr_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.settings.attr_ttl.max(0.0))
    }

    pub fn block_cache(&self) -> &Arc<BlockCache> {
        self.reader.cache()
    }

    /// A version just put on its provider: its attributes are what the tree shows from now on.
    fn published(&self, done: crate::write::Published) {
        let posix = done.posix;
        let entry = Entry {
            kind: Kind::of_file(Some(&posix)),
            size: done.info.size,
            mtime: done.modified,
            etag: done.info.etag.clone(),
            posix: (!posix.is_empty()).then_some(posix),
            source: Some(done.info.provider.clone()),
        };
        self.inodes.record(&done.path, entry);
        self.negative.invalidate(&done.path);
        self.listings
            .invalidate(done.path.rsplit_once('/').map_or("", |(p, _)| p));
        if let Some(images) = &self.images {
            images.uploaded(&done.path, done.info.size);
        }
    }

    /// The entry of a file written here; `known` supplies what the provider said of its last version.
    fn staged_entry(staged: &crate::write::Staged, known: Option<Entry>) -> Entry {
        let posix = staged.posix();
        let known = known.filter(|e| e.kind != Kind::Dir);
        Entry {
            kind: Kind::of_file(Some(&posix)),
            size: staged.size(),
            mtime: staged.modified(),
            etag: known.as_ref().and_then(|e| e.etag.clone()),
            posix: (!posix.is_empty()).then_some(posix),
            source: known.and_then(|e| e.source),
        }
    }

    /// Records what was just learned of `path` and answers with the attributes shown (see
    /// [`Inodes::record_shown`]).
    fn recorded(&self, path: &str, entry: Entry) -> Attr {
        let (ino, shown) = self.inodes.record_shown(path, entry);
        self.attr(ino, &shown)
    }

    fn attr(&self, ino: Ino, entry: &Entry) -> Attr {
        let (perm, nlink) = match entry.kind {
            Kind::File | Kind::Special(_) => (self.settings.file_mode, 1),
            Kind::Dir => (self.settings.dir_mode, 2),
        };
        let stored = entry.posix.unwrap_or_default();
        let mtime = stored.mtime.unwrap_or(entry.mtime);
        Attr {
            ino,
            kind: entry.kind,
            size: entry.size,
            blocks: entry.size.div_ceil(512),
            mtime,
            atime: stored.atime.unwrap_or(mtime),
            ctime: stored.ctime.map_or(mtime, |c| c.max(mtime)),
            perm: (stored.mode.unwrap_or(perm) & 0o7777) as u16,
            nlink,
            uid: stored.uid.unwrap_or(self.uid),
            gid: stored.gid.unwrap_or(self.gid),
            rdev: stored.rdev.unwrap_or(0),
        }
    }

    fn path_of(&self, ino: Ino) -> FsResult<(String, Entry, Duration)> {
        self.inodes.get(ino).ok_or(FsError::StaleHandle)
    }

    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if name == DIR_MARKER {
            return Err(FsError::NotFound);
        }
        if let Some(staged) = self.uploads.get(&path) {
            let known = self.inodes.find(&path).map(|(_, e, _)| e);
            let entry = Self::staged_entry(&staged, known);
            return Ok(self.recorded(&path, entry));
        }
        if let Some((ino, entry, age)) = self.inodes.find(&path) {
            if age < self.attr_ttl() {
                return Ok(self.attr(ino, &entry));
            }
        }
        if self.negative.contains_key(&path) {
            return Err(FsError::NotFound);
        }
        if let Some(answer) = self.lookup_listed(&path, name).await {
            return answer;
        }
        self.refresh(&path).await
    }

    /// A lookup answered from a listing of its directory, taken on the second lookup of an unknown name there
    /// within the TTL: a run of lookups (`stat` of every file, `git status`, `ls` of files one by one) then costs
    /// one listing, which asks each file it shows for its attributes (at most [`LISTED_HEADS`]), instead of a HEAD
    /// and a LIST per name. A name the listing lacks is still asked for (another client may have just made it:
    /// such a name is found at once, as without the listing). None: ask the providers.
    async fn lookup_listed(&self, path: &str, name: &str) -> Option<FsResult<Attr>> {
        let dir = parent_of(path);
        let misses = self
            .lookup_misses
            .get_with(dir.to_string(), Default::default)
            .fetch_add(1, Ordering::Relaxed);
        if misses == 0 && !self.looked_up.contains_key(dir) {
            return None;
        }
        let names = self
            .looked_up
            .get_with(dir.to_string(), async {
                let asked = self.inodes.clock();
                match self.list_dir(dir, Heads::All).await {
                    Ok((entries, None, unasked)) if entries.len() <= LISTED_MAX => {
                        // Files whose attributes could not be asked are looked up by name.
                        let names = entries
                            .iter()
                            .filter(|e| !unasked.contains(&child_of(dir, &e.name)))
                            .map(|e| e.name.clone())
                            .collect();
                        let entries = Arc::new(entries);
                        let listings = &self.listings;
                        self.inodes.if_unchanged(dir, asked, || {
                            listings.insert(dir.to_string(), entries.clone());
                        });
                        Some(Arc::new(names))
                    }
                    _ => None,
                }
            })
            .await?;
        if !names.contains(name) {
            return None;
        }
        // Recorded by the listing (or newer, when changed here since); a name unlinked since is asked for.
        let (ino, entry, _) = self.inodes.find(path)?;
        Some(Ok(self.attr(ino, &entry)))
    }

    /// Asks the providers what is at `path` and records the answer. An answer older than a change made here
    /// meanwhile (a background upload finishing, a rename, a create) is not recorded and the question is asked
    /// again; after a few such rounds the tree's own entry, the newest, is the answer.
    async fn refresh(&self, path: &str) -> FsResult<Attr> {
        for _ in 0..3 {
            let asked = self.inodes.clock();
            match self.stat_path(path).await {
                Ok(entry) => {
                    if let Some((ino, shown)) = self.inodes.observed(path, entry, asked) {
                        return Ok(self.attr(ino, &shown));
                    }
                }
                Err(FsError::NotFound) => {
                    let negative = &self.negative;
                    let gone = self.inodes.observed_gone(path, asked, || {
                        negative.insert(path.to_string(), ());
                    });
                    if gone {
                        return Err(FsError::NotFound);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let (ino, entry) = self.current(path).ok_or(FsError::NotFound)?;
        Ok(self.attr(ino, &entry))
    }

    /// The path of `name` in directory `parent`.
    fn child_path(&self, parent: Ino, name: &str) -> FsResult<String> {
        let (dir, entry, _) = self.path_of(parent)?;
        if entry.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        if name.contains('/') || name == "." || name == ".." || name.is_empty() {
            return Err(FsError::Invalid(format!("name {name:?}")));
        }
        let path = child_of(&dir, name);
        self.check_name_length(&path, name)?;
        Ok(path)
    }

    /// ENAMETOOLONG before anything is asked or written: a component or a whole key (with the provider's prefix
    /// and room for a directory marker below it) longer than the provider holding `path` stores.
    fn check_name_length(&self, path: &str, name: &str) -> FsResult<()> {
        let Ok((_, _, provider)) = self.storage.resolve(path) else {
            return Ok(()); // unrouted: answered elsewhere
        };
        let key = provider.prefix.len() + 1 + path.len() + 1 + DIR_MARKER.len();
        if name.len() > provider.name_max() || key > provider.key_max() {
            return Err(FsError::NameTooLong(format!(
                "{path}: provider `{}` ({}) stores names up to {} bytes and keys up to {} bytes",
                provider.name,
                provider.kind,
                provider.name_max(),
                provider.key_max()
            )));
        }
        Ok(())
    }

    /// The longest name component every provider of the mount stores (`statfs`'s f_namelen).
    pub fn name_max(&self) -> usize {
        self.storage
            .providers()
            // A name may become a directory: its marker's key (`prefix/name/.zmount-dir`) must fit too, as
            // `check_name_length` requires.
            .map(|p| {
                p.name_max()
                    .min(p.key_max() - p.prefix.len() - 2 - DIR_MARKER.len())
            })
            .min()
            .unwrap_or(255)
    }

    /// Attributes of `ino` (through the open handle `fh` when given: an unlinked open file still has them, with
    /// no links), asking the provider again once they are older than the TTL.
    pub async fn getattr(&self, ino: Ino, fh: Option<u64>) -> FsResult<Attr> {
        if let Some(handle) = fh.and_then(|fh| self.handle(fh).ok()) {
            if let Handle::Write { staged, .. } = &*handle {
                let known = self.inodes.get(ino).map(|(_, e, _)| e);
                let mut attr = self.attr(ino, &Self::staged_entry(staged, known));
                if staged.path().is_none() {
                    attr.nlink = 0;
                }
                return Ok(attr);
            }
        }
        let (path, entry, age) = self.path_of(ino)?;
        if !self.inodes.is_linked(ino) {
            // `fstat` of a file whose name is gone (some kernels ask without the handle): its open handles still
            // reach it; it has no links.
            if let Some(handle) = self.open_on(ino) {
                let mut attr = match &*handle {
                    Handle::Write { staged, .. } => {
                        self.attr(ino, &Self::staged_entry(staged, Some(entry)))
                    }
                    _ => self.attr(ino, &entry),
                };
                attr.nlink = 0;
                return Ok(attr);
            }
        }
        if let Some(staged) = self.uploads.get(&path) {
            // the staged copy is the truth
            return Ok(self.attr(ino, &Self::staged_entry(&staged, Some(entry))));
        }
        if ino == ROOT || age < self.attr_ttl() {
            return Ok(self.attr(ino, &entry));
        }
        self.refresh(&path).await
    }

    /// What is at `path` now: a directory if any provider holds objects below it, else the routed object.
    async fn stat_path(&self, path: &str) -> FsResult<Entry> {
        if let Some(staged) = self.uploads.get(path) {
            return Ok(Self::staged_entry(&staged, None));
        }
        // A directory wins over a file of the same name: once some provider shows objects below `path`, the
        // answer does not wait for the file lookup (whose "not found" may wait on a stalled primary).
        let (file, dir) = {
            let (mut file, mut dir) = (
                std::pin::pin!(self.head(path)),
                std::pin::pin!(self.dir_exists(path)),
            );
            tokio::select! {
                found = &mut dir => match found {
                    Ok(true) => (Ok(None), Ok(true)),
                    other => ((&mut file).await, other),
                },
                head = &mut file => (head, (&mut dir).await),
            }
        };
        match (dir, file) {
            (Ok(true), _) => {
                let posix = self.dir_posix(path).await?;
                Ok(Entry {
                    posix,
                    ..Entry::dir(self.mounted_at)
                })
            }
            (_, Ok(Some(entry))) => Ok(entry),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(false), Ok(None)) => Err(FsError::NotFound),
        }
    }

    /// Mode, owner and times of directory `path`, stored on its marker object (none: the defaults).
    pub(crate) async fn dir_posix(&self, path: &str) -> FsResult<Option<posix::Posix>> {
        match self.storage.get_info_or_defaults(&marker_of(path)).await {
            Ok(info) => Ok(posix::Posix::from_metadata(&info.metadata)),
            Err(e) if e.is_not_found() => Ok(self.s3fs_dir_posix(path).await),
            Err(e) => Err(e.into()),
        }
    }

    /// The mode, owner and times s3fs stores on its directory object `path/` (on S3 and S3-compatible stores),
    /// for a directory without a marker of zmount's own. Best effort: no such object, or no answer, is "defaults".
    async fn s3fs_dir_posix(&self, path: &str) -> Option<posix::Posix> {
        if path.is_empty() {
            return None;
        }
        let (_, _, provider) = self.storage.resolve(path).ok()?;
        let dirs = provider.s3_direct.as_ref()?;
        let started = std::time::Instant::now();
        let key = provider.key_for(path);
        let ask = dirs.metadata(key.as_ref());
        // Best effort: where fallbacks stand in for this provider, it gets its hedge delay, not its timeouts.
        let answer = match self.read_fallback(path, provider) {
            Fallback::None => ask.await,
            _ => match tokio::time::timeout(provider.health.pace.delay(), ask).await {
                Ok(answer) => answer,
                Err(_) => {
                    crate::providers::hedge::given_up(&provider.health);
                    return None;
                }
            },
        };
        let head = crate::providers::guard::Op::Head;
        provider.health.counters.record(head, started.elapsed());
        match answer {
            Ok(metadata) => posix::Posix::from_metadata(&metadata?),
            Err(e) => {
                tracing::debug!("{path}: s3fs directory object not read: {e}");
                None
            }
        }
    }

    /// The file at `path` from the first provider in read order that holds it (primary, then fallbacks).
    async fn head(&self, path: &str) -> FsResult<Option<Entry>> {
        let (path, resolved, _) = self.storage.resolve(path)?;
        let order = self.storage.read_order(&path, resolved.route);
        let found = first_holder(&order, &resolved.route.provider, &path, |provider| {
            head_one(provider, &path)
        })
        .await;
        match found {
            Ok((entry, _)) => Ok(Some(entry)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether any provider that may hold entries below `path` has at least one object there. Providers that
    /// cannot be reached are left out when an answering fallback stands in for them, else the check fails.
    async fn dir_exists(&self, path: &str) -> FsResult<bool> {
        let providers = self.providers_under(path);
        let check = |provider: &Arc<Provider>| {
            let provider = provider.clone();
            let fallback = self.read_fallback(path, &provider);
            let path = path.to_string();
            let check = async move {
                let mut listing = provider.store.list(Some(&provider.key_for(&path)));
                match futures::StreamExt::next(&mut listing).await {
                    // An object whose key no path can name is still something below `path`.
                    Some(Ok(_)) | Some(Err(object_store::Error::InvalidPath { .. })) => Ok(true),
                    None | Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
                    Some(Err(e)) => Err(StorageError::from_store(&provider, &path, e)),
                }
            };
            Box::pin(with_fallback(fallback, check)) as Asked<bool>
        };
        let found = self
            .ask_all(path, &providers, check, |found| matches!(found, Ok(true)))
            .await;
        if found.iter().any(|r| matches!(r, Ok(true))) {
            return Ok(true);
        }
        let mut outcome = Outcome::of(&providers, found)?;
        self.check_covered(path, &mut outcome)?;
        Ok(false)
    }

    /// Asks every provider of `providers` about directory `dir` at once, answers in their order. Stops early when
    /// an answer satisfies `enough` (the others are dropped). Providers still out once the answered ones make the
    /// listing complete without them (their fallbacks answered) are given up after their hedge delay: a stalled
    /// primary costs a listing its hedge delay, not its timeouts (see crate::providers::hedge). They count as
    /// unavailable, so such a listing is not cached.
    async fn ask_all<T>(
        &self,
        dir: &str,
        providers: &[Arc<Provider>],
        ask: impl Fn(&Arc<Provider>) -> Asked<T>,
        enough: impl Fn(&Result<T, StorageError>) -> bool,
    ) -> Vec<Result<T, StorageError>> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let started = tokio::time::Instant::now();
        let mut answers: Vec<Option<Result<T, StorageError>>> =
            providers.iter().map(|_| None).collect();
        let mut out: FuturesUnordered<_> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let asked = ask(p);
                async move { (i, asked.await) }
            })
            .collect();
        let gave_up = |provider: &Provider| StorageError::Unavailable {
            provider: provider.name.clone(),
            location: provider.location.clone(),
            path: dir.to_string(),
            message: "no answer within the hedge delay while its fallbacks answered".into(),
        };
        while !out.is_empty() {
            let missing: Vec<&str> = providers
                .iter()
                .zip(&answers)
                .filter(|(_, a)| !matches!(a, Some(Ok(_))))
                .map(|(p, _)| p.name.as_str())
                .collect();
            let answered = answers.iter().any(|a| matches!(a, Some(Ok(_))));
            let deadline =
                (answered && self.storage.listing_complete_without(dir, &missing)).then(|| {
                    let waited = providers
                        .iter()
                        .zip(&answers)
                        .filter(|(_, a)| a.is_none())
                        .map(|(p, _)| p.health.pace.delay())
                        .max()
                        .unwrap_or_default();
                    started + waited
                });
            tokio::select! {
                Some((i, answer)) = out.next() => {
                    let done = enough(&answer);
                    answers[i] = Some(answer);
                    if done {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    for (provider, answer) in providers.iter().zip(answers.iter_mut()) {
                        if answer.is_none() {
                            crate::providers::hedge::given_up(&provider.health);
                            *answer = Some(Err(gave_up(provider)));
                        }
                    }
                    break;
                }
            }
        }
        providers
            .iter()
            .zip(answers)
            .map(|(p, a)| a.unwrap_or_else(|| Err(gave_up(p))))
            .collect()
    }

    /// How hard a listing of `dir` tries `provider`: a listing that can do without it (see
    /// [`Storage::listing_complete_without`]) still retries fully, but skips it while it is marked down.
    fn read_fallback(&self, dir: &str, provider: &Provider) -> Fallback {
        match self
            .storage
            .listing_complete_without(dir, &[provider.name.as_str()])
        {
            true => Fallback::AfterRetries,
            false => Fallback::None,
        }
    }

    /// Fails when providers that did not answer hold entries of `dir` that no answering fallback stands in for;
    /// returns the outage that was tolerated, if any.
    fn check_covered<T>(
        &self,
        dir: &str,
        outcome: &mut Outcome<'_, T>,
    ) -> FsResult<Option<StorageError>> {
        let Some(outage) = outcome.first_outage.take() else {
            return Ok(None);
        };
        if !self.storage.listing_complete_without(dir, &outcome.failed) {
            return Err(FsError::Storage(outage));
        }
        tracing::debug!(
            "{dir:?}: answered without {:?}, whose fallbacks stand in",
            outcome.failed
        );
        Ok(Some(outage))
    }

    fn providers_under(&self, dir: &str) -> Vec<Arc<Provider>> {
        self.storage
            .router()
            .providers_under(dir)
            .into_iter()
            .filter_map(|name| self.storage.provider(name).cloned())
            .collect()
    }

    /// Opens a directory: its listing is taken now and served to readdir from this snapshot.
    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind != Kind::Dir {
            return Err(FsError::NotADirectory);
        }
        let entries = match self.listings.get(&path) {
            Some(entries) => entries,
            None => {
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
        Ok(self.add_handle(ino, Handle::Dir { entries }))
    }

    /// A listing of `dir` with the files written here as they are now (a cached listing may be older than
    /// their last write): the kernel takes the sizes a listing gives as the truth.
    fn with_staged(&self, dir: &str, entries: Arc<Vec<DirEntry>>) -> Arc<Vec<DirEntry>> {
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

    /// Entries of an open directory from position `offset` on ("." and ".." included).
    pub fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let handle = self.handle(fh)?;
        let Handle::Dir { entries } = &*handle else {
            return Err(FsError::NotADirectory);
        };
        let (path, entry, _) = self.path_of(ino)?;
        let parent_ino = self.parent_ino(&path);
        let parent_entry = Entry::dir(self.mounted_at);
        let dots =
            [(".", ino, &entry), ("..", parent_ino, &parent_entry)].map(|(name, i, e)| DirEntry {
                name: name.to_string(),
                attr: self.attr(i, e),
            });
        Ok(dots
            .into_iter()
            .chain(entries.iter().cloned())
            .enumerate()
            .skip(offset as usize)
            .map(|(i, e)| (i as u64 + 1, e))
            .collect())
    }

    fn parent_ino(&self, path: &str) -> Ino {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        self.inodes.find(parent).map_or(ROOT, |(ino, _, _)| ino)
    }

    /// The merged listing of directory `path`, each name once; records every entry's attributes. Also returns
    /// the outage of a provider that did not answer while a fallback stood in for it: such a listing may lack
    /// files only that provider has, so it is not cached (and `rmdir` does not trust it).
    async fn list_dir(
        &self,
        path: &str,
        heads: Heads,
    ) -> FsResult<(Vec<DirEntry>, Option<StorageError>, HashSet<String>)> {
        let asked = self.inodes.clock();
        let providers = self.providers_under(path);
        let list = |provider: &Arc<Provider>| {
            let provider = provider.clone();
            let fallback = self.read_fallback(path, &provider);
            let path = path.to_string();
            Box::pin(with_fallback(fallback, async move {
                list_one(&provider, &path).await
            })) as Asked<ListResult>
        };
        let listings = self.ask_all(path, &providers, list, |_| false).await;
        let mut outcome = Outcome::of(&providers, listings)?;
        let partial = self.check_covered(path, &mut outcome)?;
        let router = self.storage.router();
        let mut dirs: BTreeMap<String, Entry> = BTreeMap::new();
        // Files: each name from the provider that ranks first for it in read order.
        let mut files: BTreeMap<String, (usize, Entry)> = BTreeMap::new();
        for (listing, provider) in outcome.answered {
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
        // Subdirectories: their mode, owner and times are on their markers, which a listing does not show (the
        // kernel takes a listing's attributes as the truth). Asked once per directory this mount has not seen.
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
        let unseen = |child: &String| {
            self.inodes.find(child).is_none_or(|(_, known, _)| {
                known.etag.is_none() || known.etag.as_ref() != files[child].1.etag.as_ref()
            })
        };
        let mut unasked: HashSet<String> = files.keys().filter(|c| unseen(c)).cloned().collect();
        let mut small: Vec<String> = unasked.iter().cloned().collect();
        if heads == Heads::Small || small.len() > LISTED_HEADS {
            small.retain(|child| files[child].1.size < SMALL_OBJECT);
        }
        if small.len() > SMALL_HEADS {
            tracing::debug!(
                "{path:?}: {} small objects not asked for their type (more than {SMALL_HEADS})",
                small.len()
            );
            small.clear();
        }
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
        // Names made here while the listing was asked (a write-back upload published meanwhile): the listing may
        // lack them.
        for child in self.inodes.changed_in(path, asked) {
            if let std::collections::btree_map::Entry::Vacant(slot) = dirs.entry(child) {
                if let Some((_, entry)) = self.current(slot.key()) {
                    slot.insert(entry);
                }
            }
        }
        // Files written here: what they are now, also before their first upload.
        let mut written = HashSet::new();
        for (child, staged) in self.uploads.children(path) {
            let known = dirs.remove(&child);
            if known.as_ref().is_some_and(|e| e.kind == Kind::Dir) {
                dirs.insert(child, known.unwrap());
                continue;
            }
            dirs.insert(child.clone(), Self::staged_entry(&staged, known));
            written.insert(child);
        }
        let entries = dirs
            .into_iter()
            .filter(|(child, _)| is_within(child, path))
            .filter_map(|(child, entry)| {
                let (ino, entry) = if written.contains(&child) {
                    self.inodes.record_shown(&child, entry)
                } else {
                    // Listed before a change made here (an upload finishing, a rename, an unlink): the tree's own
                    // entry is newer than the listing's (none: the name is gone). A name the tree does not know
                    // (a change of many names, a directory rename, made the answer suspect) is taken as listed.
                    match self.inodes.record_listed(&child, entry, asked) {
                        inode::Answer::Recorded(ino, shown) => (ino, shown),
                        inode::Answer::Stale(listed) => match self.current(&child) {
                            Some(known) => known,
                            None if self.negative.contains_key(&child) => return None,
                            None => self.inodes.observed(&child, listed, self.inodes.clock())?,
                        },
                    }
                };
                let name = child.rsplit('/').next().unwrap_or(&child).to_string();
                Some(DirEntry {
                    name,
                    attr: self.attr(ino, &entry),
                })
            })
            .collect();
        Ok((entries, partial, unasked))
    }

    /// What the tree knows of `path` now, unless it is known to be gone.
    fn current(&self, path: &str) -> Option<(Ino, Entry)> {
        if self.negative.contains_key(path) {
            return None;
        }
        self.inodes.find(path).map(|(ino, entry, _)| (ino, entry))
    }

    /// The target of symlink `ino`: the object's bytes (s3fs's form), or gcsfuse's metadata key; kept per version.
    pub async fn readlink(&self, ino: Ino) -> FsResult<String> {
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind != Kind::Special(libc::S_IFLNK) {
            return Err(FsError::Invalid(format!("{path} is not a symlink")));
        }
        if let Some((etag, target)) = self.links.get(&path) {
            if etag.is_some() && etag == entry.etag {
                return Ok(target);
            }
        }
        let data = self.storage.download(&path).await?;
        let target = match data.is_empty() {
            true => {
                let info = self.storage.get_info(&path).await?;
                info.metadata.get(GCSFUSE_LINK).cloned().unwrap_or_default()
            }
            false => String::from_utf8_lossy(&data).into_owned(),
        };
        self.links.insert(path, (entry.etag, target.clone()));
        Ok(target)
    }

    /// Remembers the target of a symlink made here (object version `etag`).
    pub(super) fn remember_link(&self, path: &str, etag: Option<String>, target: &str) {
        self.links
            .insert(path.to_string(), (etag, target.to_string()));
    }

    /// Opens a file for reading, pinned to the object version it has now (or, while the file is being written
    /// in this mount, to the staged bytes).
    pub async fn open_read(&self, ino: Ino) -> FsResult<u64> {
        let attr = self.getattr(ino, None).await?;
        if let Some(staged) = self.uploads.open_read(&self.path_of(ino)?.0) {
            return Ok(self.add_handle(
                ino,
                Handle::Write {
                    staged,
                    writable: false,
                    opener: 0,
                },
            ));
        }
        if attr.kind == Kind::Dir {
            return Err(FsError::IsADirectory);
        }
        let (path, entry, _) = self.path_of(ino)?;
        let (_, resolved, primary) = self.storage.resolve(&path)?;
        let holder = entry
            .source
            .as_deref()
            .and_then(|name| self.storage.provider(name))
            .unwrap_or(primary)
            .clone();
        let others = self
            .storage
            .read_order(&path, resolved.route)
            .into_iter()
            .filter(|p| p.name != holder.name)
            .cloned()
            .collect();
        let version_tag = entry.etag.clone().unwrap_or_else(|| {
            let mtime = entry
                .mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}-{}", entry.size, mtime.as_nanos())
        });
        tracing::debug!("open {path}: reading the copy on `{}`", holder.name);
        let object = ObjectVersion::new(path, entry.size, holder, entry.etag, version_tag, others);
        Ok(self.add_handle(
            ino,
            Handle::File {
                object,
                state: Mutex::new(ReadState::default()),
            },
        ))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<bytes::Bytes> {
        let handle = self.handle(fh)?;
        match &*handle {
            Handle::File { object, state } => {
                Ok(self.reader.read(object, state, offset, size).await?)
            }
            Handle::Write { staged, .. } => Ok(staged.read(offset, size).await?),
            Handle::Dir { .. } => Err(FsError::IsADirectory),
        }
    }

    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().unwrap().remove(&fh).map(|(_, h)| h);
        if let Some(Handle::Write { staged, .. }) = handle.as_deref() {
            self.uploads.release(staged);
        }
    }

    fn add_handle(&self, ino: Ino, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap()
            .insert(fh, (ino, Arc::new(handle)));
        fh
    }

    /// Whether the kernel may keep the pages it cached of the file `fh` was just opened on (FOPEN_KEEP_CACHE), so
    /// a second read of a file, by the next program, comes from memory: only when the handle reads an object
    /// version, and the pages were filled from that same version alone. Any other open of the inode (another
    /// version, a file being written, a staged copy) makes the next open drop them. Called once per open.
    pub fn keep_pages(&self, fh: u64) -> bool {
        let handles = self.handles.lock().unwrap();
        let Some((ino, handle)) = handles.get(&fh) else {
            return false;
        };
        let version_of = |handle: &Handle| match handle {
            Handle::File { object, .. } => {
                let copy = object.current();
                Some(format!("{}\n{}", copy.provider.name, copy.version_tag))
            }
            _ => None,
        };
        let version = version_of(handle);
        let alone = handles
            .iter()
            .filter(|(other, (i, _))| **other != fh && i == ino)
            .all(|(_, (_, h))| version.is_some() && version_of(h) == version);
        let mut pages = self.page_versions.lock().unwrap();
        let keep = version.is_some() && pages.get(ino) == version.as_ref();
        match version {
            Some(version) if alone => pages.insert(*ino, version),
            _ => pages.remove(ino),
        };
        keep
    }

    /// A handle still open on `ino` (a file whose name is gone is reached through its handles only); one on the
    /// file written here when there is one, as that is the truth.
    fn open_on(&self, ino: Ino) -> Option<Arc<Handle>> {
        let handles = self.handles.lock().unwrap();
        handles
            .values()
            .filter(|(i, _)| *i == ino)
            .map(|(_, h)| h)
            .max_by_key(|h| matches!(&***h, Handle::Write { .. }))
            .cloned()
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .map(|(_, h)| h.clone())
            .ok_or(FsError::StaleHandle)
    }
}

/// Runs `ask` for every path, 16 requests in flight (what a listing asks beyond the LIST itself).
async fn ask_each<T, F, Fut>(paths: Vec<String>, ask: F) -> Vec<(String, T)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (String, T)>,
{
    use futures::StreamExt;
    futures::stream::iter(paths.into_iter().map(ask))
        .buffer_unordered(16)
        .collect()
        .await
}

/// Objects smaller than this may be symlinks (a target is at most PATH_MAX - 1 bytes) or special files.
const SMALL_OBJECT: u64 = 4096;
/// Small objects a listing asks for their type at most (16 at a time).
const SMALL_HEADS: usize = 1000;

/// The path of `name` in directory `dir` (the root is "").
fn child_of(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_string(),
        dir => format!("{dir}/{name}"),
    }
}

/// Files a listing taken for lookups asks for their attributes at most (16 at a time).
const LISTED_HEADS: usize = 1000;
/// Entries a listing may have and still answer lookups (a larger directory is asked name by name).
const LISTED_MAX: usize = 5000;

/// Which files a listing asks for their attributes: small ones (which may be symlinks or special files), or every
/// one it has not seen (a listing taken to answer lookups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Heads {
    Small,
    All,
}

/// The marker object of directory `path` (the root's is routed like a file `.zmount-dir` at the top).
pub(crate) fn marker_of(path: &str) -> String {
    match path {
        "" => DIR_MARKER.to_string(),
        dir => format!("{dir}/{DIR_MARKER}"),
    }
}

/// Results of asking several providers: the answers, and which providers could not answer.
struct Outcome<'a, T> {
    answered: Vec<(T, &'a Arc<Provider>)>,
    failed: Vec<&'a str>,
    first_outage: Option<StorageError>,
}

impl<'a, T> Outcome<'a, T> {
    /// Sorts `results` (one per provider); an error other than an outage is returned at once.
    fn of(providers: &'a [Arc<Provider>], results: Vec<Result<T, StorageError>>) -> FsResult<Self> {
        let mut outcome = Outcome {
            answered: Vec::new(),
            failed: Vec::new(),
            first_outage: None,
        };
        for (provider, result) in providers.iter().zip(results) {
            match result {
                Ok(value) => outcome.answered.push((value, provider)),
                Err(e) if e.is_unavailable() => {
                    outcome.failed.push(provider.name.as_str());
                    outcome.first_outage.get_or_insert(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(outcome)
    }
}

/// Content types that mark an object as a directory.
const DIRECTORY_TYPES: [&str; 2] = ["application/x-directory", "httpd/unix-directory"];

/// The metadata key gcsfuse keeps a symlink's target in (its object is empty).
const GCSFUSE_LINK: &str = "gcsfuse_symlink_target";

/// HEAD of one provider's copy of `path`, with the user metadata that carries mode, owner and mtime.
async fn head_one(provider: &Arc<Provider>, path: &str) -> Result<Entry, StorageError> {
    let options = object_store::GetOptions {
        head: true,
        ..Default::default()
    };
    let result = provider
        .store
        .get_opts(&provider.key_for(path), options)
        .await
        .map_err(|e| StorageError::from_store(provider, path, e))?;
    let mut posix = posix::Posix::from_attributes(&result.attributes);
    let gcsfuse_link = object_store::Attribute::Metadata(GCSFUSE_LINK.into());
    if result.attributes.get(&gcsfuse_link).is_some() {
        let stored = posix.get_or_insert_with(Default::default);
        stored.kind = Some(libc::S_IFLNK);
        stored.mode = stored.mode.or(Some(0o777));
    }
    // Older tools (and consoles) write a directory as an object `dir` with a directory content type.
    let directory = result
        .attributes
        .get(&object_store::Attribute::ContentType)
        .is_some_and(|t| DIRECTORY_TYPES.iter().any(|d| t.as_ref().starts_with(d)));
    Ok(Entry {
        kind: match directory {
            true => Kind::Dir,
            false => Kind::of_file(posix.as_ref()),
        },
        size: result.meta.size,
        mtime: result.meta.last_modified.into(),
        etag: result.meta.e_tag.or(result.meta.version),
        posix,
        source: Some(provider.name.clone()),
    })
}

/// One provider's answer about a directory, as [`Filesystem::ask_all`] runs it.
type Asked<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StorageError>> + Send>>;

/// One provider's entries directly in `path` (an empty listing when it has none).
async fn list_one(provider: &Provider, path: &str) -> Result<ListResult, StorageError> {
    let key = (!path.is_empty() || !provider.prefix.is_empty()).then(|| provider.key_for(path));
    match crate::providers::listing::list_dir(provider, key.as_ref()).await {
        Ok(listing) => Ok(listing),
        Err(object_store::Error::NotFound { .. }) => Ok(ListResult {
            common_prefixes: vec![],
            objects: vec![],
            extensions: Default::default(),
        }),
        Err(e) => Err(StorageError::from_store(provider, path, e)),
    }
}
