//! The block cache every read goes through: a bounded memory tier (moka, weighed in bytes) in front of a bounded
//! disk tier ([`disk::DiskCache`]). Blocks are fixed-size slices of an object, keyed by provider, object key, ETag
//! and block index, so a changed object (new ETag) never matches old blocks. Concurrent requests for the same block
//! share one fetch (moka's `try_get_with`), which also makes read-ahead and the reader it serves cooperate.

mod block_file;
pub mod disk;

use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Block size (defined with the settings it bounds, [`crate::config::BLOCK_SIZE`]).
pub const BLOCK_SIZE: u64 = crate::config::BLOCK_SIZE;

/// Makes `cache_dir` and everything under it private to the user running zmount: folders 0700, files 0600 (what
/// an older version or a wide umask left readable). Links are not followed. Returns how many entries were tightened.
pub fn make_private(cache_dir: &std::path::Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut tightened = 0;
    let mut pending = vec![cache_dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = if meta.is_dir() {
            mode & 0o700
        } else if meta.is_file() {
            mode & 0o600
        } else {
            continue;
        };
        if mode != wanted {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))?;
            tightened += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(tightened)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BlockKey {
    provider: Arc<str>,
    key: Arc<str>,
    etag: Arc<str>,
    pub index: u64,
}

impl BlockKey {
    pub fn new(provider: &str, key: &str, etag: &str, index: u64) -> Self {
        BlockKey {
            provider: provider.into(),
            key: key.into(),
            etag: etag.into(),
            index,
        }
    }

    /// The full key as stored at the head of a disk block.
    fn header(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}",
            self.provider, self.key, self.etag, self.index
        )
        .into_bytes()
    }

    /// A file name derived from the key: 128 bits of FNV-1a (two differently seeded 64-bit passes), in hex.
    fn file_name(&self) -> String {
        let header = self.header();
        let fnv = |seed: u64| {
            header.iter().fold(seed, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            })
        };
        format!(
            "{:016x}{:016x}",
            fnv(0xcbf2_9ce4_8422_2325),
            fnv(0x6c62_272e_07bb_0142)
        )
    }
}

/// What the cache did, since the mount started (for metrics).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    /// Blocks fetched from a provider.
    pub misses: AtomicU64,
    /// Blocks dropped from the memory tier to make room.
    pub memory_evictions: Arc<AtomicU64>,
    /// Whole-object fills that completed (every block of the object in the disk tier).
    pub fills: AtomicU64,
}

pub struct BlockCache {
    pub stats: CacheStats,
    memory: moka::future::Cache<BlockKey, Bytes>,
    disk: Option<Arc<disk::DiskCache>>,
    /// Blocks waiting to be written to disk hold memory: when the disk falls this far behind, new blocks skip the
    /// disk tier instead of queueing without bound.
    disk_writes: Arc<tokio::sync::Semaphore>,
}

/// Disk writes queued at most (each holds one block in memory).
const MAX_PENDING_DISK_WRITES: usize = 16;

impl BlockCache {
    pub fn new(memory_bytes: u64, disk: Option<disk::DiskCache>) -> Self {
        let stats = CacheStats::default();
        let evictions = stats.memory_evictions.clone();
        let memory = moka::future::Cache::builder()
            .max_capacity(memory_bytes)
            // Least recently used out, every new block in: read-ahead blocks are read soon after they arrive, and an
            // admission policy that turns new blocks away makes a sequential reader fetch them twice.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_k: &BlockKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause.was_evicted() {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        BlockCache {
            stats,
            memory,
            disk: disk.map(Arc::new),
            disk_writes: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_DISK_WRITES)),
        }
    }

    /// The block, from memory, disk, or `fetch` (whose result is then cached in both tiers). Requests for a block
    /// being fetched wait for that fetch and share its outcome; a failure is shared, not cached.
    pub async fn get_or_fetch<F, E>(&self, key: BlockKey, fetch: F) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        self.load(key, fetch, true).await
    }

    /// [`BlockCache::get_or_fetch`] for read-ahead: a block found in memory (or being fetched by a reader) is not a
    /// hit, as no read was served; its loads still count as disk hits or misses. (Counted as a hit, it would be
    /// counted whenever the read-ahead task next ran, possibly after the reader it served was answered.)
    pub async fn prefetch<F, E>(&self, key: BlockKey, fetch: F) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        self.load(key, fetch, false).await
    }

    async fn load<F, E>(&self, key: BlockKey, fetch: F, count_hit: bool) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        let disk = self.disk.clone();
        let disk_key = key.clone();
        let disk_writes = self.disk_writes.clone();
        let stats = &self.stats;
        let loaded = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .memory
            .try_get_with(key, async {
                loaded.swap(true, Ordering::Relaxed);
                if let Some(disk) = &disk {
                    let (d, k) = (disk.clone(), disk_key.clone());
                    if let Some(hit) = tokio::task::spawn_blocking(move || d.get(&k))
                        .await
                        .ok()
                        .flatten()
                    {
                        stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(hit);
                    }
                }
                stats.misses.fetch_add(1, Ordering::Relaxed);
                let data = fetch.await?;
                if let (Some(disk), Ok(permit)) = (disk, disk_writes.try_acquire_owned()) {
                    let stored = data.clone();
                    // Writing to disk is off the read's critical path; a failure only costs a future refetch.
                    tokio::task::spawn_blocking(move || {
                        disk.put(&disk_key, &stored);
                        drop(permit);
                    });
                }
                Ok(data)
            })
            .await;
        if count_hit && !loaded.load(Ordering::Relaxed) && result.is_ok() {
            stats.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub fn disk_evictions(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.evictions.load(Ordering::Relaxed))
    }

    /// Bytes `range` of a block that is in the disk tier but not in memory, read without loading the whole block
    /// (which a random small read would otherwise cost); None when the block is not on disk.
    pub async fn disk_range(&self, key: &BlockKey, range: std::ops::Range<usize>) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let key = key.clone();
        let hit = tokio::task::spawn_blocking(move || disk.get_range(&key, range))
            .await
            .ok()
            .flatten();
        if hit.is_some() {
            self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// [`BlockCache::disk_range`] on the caller's thread: for a reader that must not wait for a task (a read of
    /// a few KiB from the disk tier takes microseconds; handing it to another thread costs more than that).
    pub fn disk_range_now(&self, key: &BlockKey, range: std::ops::Range<usize>) -> Option<Bytes> {
        let hit = self.disk.as_ref()?.get_range(key, range);
        if hit.is_some() {
            self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.memory.contains_key(key)
    }

    /// Whether block `key` is in either tier (or being written to disk).
    pub fn holds(&self, key: &BlockKey) -> bool {
        self.memory.contains_key(key) || self.disk.as_ref().is_some_and(|d| d.contains(key))
    }

    /// Bytes the disk tier holds at most (0 without one).
    pub fn disk_capacity(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.cap())
    }

    /// Puts a fetched block straight into the disk tier, waiting for the write: for a whole-object fill, whose
    /// blocks must neither push the blocks readers use out of memory nor be skipped when the disk is behind.
    pub async fn put_on_disk(&self, key: BlockKey, data: Bytes) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || disk.put(&key, &data)).await;
    }

    /// Frees at least `bytes` of the disk tier if it holds that much (see [`disk::DiskCache::evict`]).
    pub fn evict_disk(&self, bytes: u64) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.evict(bytes))
    }

    pub fn disk_used(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.used())
    }
}
