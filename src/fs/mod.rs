//! The filesystem core: the merged tree over all routed providers, independent of FUSE.
//!
//! Every method is async, takes inode numbers and names, and returns [`FsError`]; `src/fuse/` only translates.
//! A directory exists when any provider that a rule can route into it holds an object below it; a listing is the
//! union of those providers' entries, each name shown once, from the provider its rule names, and a directory wins
//! over a file of the same name. Attributes, listings and "no such file" answers are trusted for the configured
//! TTLs, then asked again, so changes made directly on a provider appear after at most that long.
//!
//! Lock order: see [`crate::write`] (the one place it is written down).

mod dir;
pub mod error;
mod handles;
pub mod inode;
mod lookup;
mod maintenance;
pub use crate::meta::posix;
mod namespace;
mod write_ops;
pub mod xattr;

pub use dir::DirPage;
pub use write_ops::DIR_MARKER;

use crate::cache::{disk::DiskCache, BlockCache};
use crate::config::{Config, MountSettings};
use crate::providers::Provider;
use crate::providers::{Attempts, ProviderClient};
use crate::read::{ObjectVersion, ReadState, Reader};
use crate::routing::is_within;
use crate::storage::failover::first_holder;
use crate::storage::{Storage, StorageError};
use dir::*;
use error::{FsError, FsResult};
use inode::{Entry, Ino, Inodes, Kind, ROOT};
use lookup::*;
use object_store::ListResult;
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
        listing: dir::DirListing,
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
    looked_up: moka::future::Cache<String, Option<Arc<lookup::Listed>>>,
    /// Directories too large to answer lookups from a listing, not listed for that again for ten minutes.
    unlistable: moka::sync::Cache<String, ()>,
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
    uploads: Arc<crate::write::Uploads>,
    /// Image transforms and variants, when a route has them.
    images: Option<Arc<crate::images::ImageWorker>>,
}

/// Counts of work in hand, from [`Filesystem::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Files acknowledged (closed or fsynced) whose data waits in the journal for its upload.
    pub journaled_uploads: usize,
    /// Background uploads in progress.
    pub background_uploads: usize,
    /// Failover writes waiting to be copied back to their primary.
    pub pending_heals: usize,
}

impl Filesystem {
    /// The filesystem of `config` over `storage`, with its block cache in memory and in `cache_dir`.
    pub fn new(config: &Config, storage: Arc<Storage>, read_only: bool) -> FsResult<Filesystem> {
        let disk = DiskCache::open(&config.settings.cache_dir, config.settings.cache_size.0)?;
        let memory = config.settings.mount.memory_cache_size.0;
        let cache = Arc::new(BlockCache::new(memory, Some(disk)));
        Ok(Self::with_parts(config, storage, cache, read_only))
    }

    /// [`Filesystem::new`] with the block cache handed in (a memory-only one, for a core without a disk tier).
    pub fn with_parts(
        config: &Config,
        storage: Arc<Storage>,
        cache: Arc<BlockCache>,
        read_only: bool,
    ) -> Filesystem {
        let settings = config.settings.mount.clone();
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
        Filesystem {
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
            unlistable: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(600))
                .build(),
            links: moka::sync::Cache::new(10_000),
            handles: Mutex::new(HashMap::new()),
            page_versions: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_at,
            read_only,
            uploads,
            images,
        }
    }

    /// What the mount has in hand now, for metrics and tests.
    pub fn stats(&self) -> FsStats {
        FsStats {
            journaled_uploads: self.uploads.pending(),
            background_uploads: self.uploads.running(),
            pending_heals: self.storage.heals().records().len(),
        }
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
}
