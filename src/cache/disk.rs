//! The disk tier of the block cache: one file per block under `<cache_dir>/blocks/`, a hard size cap, and LRU
//! eviction. Space is reserved (evicting as needed) *before* a block is written, so the folder never holds more
//! than the cap, counting files being written. Each file starts with the full block key, checked on every read,
//! so a hash collision or a file from another version can never serve wrong bytes. The index is rebuilt from the
//! folder at start-up (oldest modification first), so cached blocks survive a remount; blocks are keyed by ETag,
//! so a block of a changed object is never found again.

use super::block_file::{open_block, read_block, read_range, write_block};
use super::BlockKey;
use bytes::Bytes;
use lru::LruCache;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct DiskCache {
    dir: PathBuf,
    cap: u64,
    /// Blocks removed to make room, since the mount started.
    pub evictions: std::sync::atomic::AtomicU64,
    /// File name → size on disk, least recently used first out.
    state: Mutex<DiskState>,
    /// Block files recently read at random, open and checked (file, offset of the data): a small read is then one
    /// `pread`. Never locked while `state` is. A name leaves here before its file is removed, so an open
    /// file never keeps an evicted block's disk space beyond the eviction.
    open_files: Mutex<LruCache<String, Arc<(std::fs::File, u64)>>>,
}

/// Block files kept open for random reads at most: 2 GiB of blocks, enough for a file read at random to be read
/// with one `pread` per read (opening and checking a block file per read cost a fifth of such reads here).
const OPEN_FILES: usize = 2048;

/// Block files this process may keep open: [`OPEN_FILES`], or a quarter of its open-file limit when that is lower
/// (the rest is for staged files, connections and the kernel channel).
fn open_files_budget() -> std::num::NonZeroUsize {
    let soft =
        open_file_limit().map_or(1024, |l| usize::try_from(l.rlim_cur).unwrap_or(usize::MAX));
    std::num::NonZeroUsize::new((soft / 4).min(OPEN_FILES)).unwrap_or(std::num::NonZeroUsize::MIN)
}

/// Lets the process keep more files open (the soft limit raised toward the hard one, up to 65,536, as services
/// commonly do), so the disk tier can keep block files open: call before the cache is opened.
pub fn raise_open_file_limit() {
    let Some(mut limit) = open_file_limit() else {
        return;
    };
    let wanted = limit.rlim_max.min(1 << 16);
    if limit.rlim_cur >= wanted {
        return;
    }
    limit.rlim_cur = wanted;
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        tracing::debug!(
            "cannot raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The process's open-file limits (soft and hard).
fn open_file_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

struct DiskState {
    lru: LruCache<String, u64>,
    total: u64,
    /// Blocks whose files are being written: never evicted mid-write (their bytes are on disk already, counted or
    /// not, so evicting them would let the folder pass its cap).
    writing: std::collections::HashSet<String>,
}

impl DiskCache {
    /// Opens (creating) `<cache_dir>/blocks` and indexes what is already there.
    pub fn open(cache_dir: &Path, cap: u64) -> std::io::Result<DiskCache> {
        let dir = cache_dir.join("blocks");
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for shard in std::fs::read_dir(&dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(shard.path())? {
                let file = file?;
                let meta = file.metadata()?;
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(file.path()); // left by a crash mid-write
                } else if meta.is_file() {
                    found.push((meta.modified().ok(), name, meta.len()));
                }
            }
        }
        found.sort();
        let cache = DiskCache {
            dir,
            cap,
            evictions: Default::default(),
            state: Mutex::new(DiskState {
                lru: LruCache::unbounded(),
                total: 0,
                writing: Default::default(),
            }),
            open_files: Mutex::new(LruCache::new(open_files_budget())),
        };
        let mut evict = Vec::new();
        {
            let mut state = cache.state.lock().unwrap();
            for (_, name, size) in found {
                state.lru.put(name, size);
                state.total += size;
            }
            while state.total > cap {
                let Some((name, size)) = state.lru.pop_lru() else {
                    break;
                };
                state.total -= size;
                evict.push(name);
            }
        }
        for name in evict {
            let _ = std::fs::remove_file(cache.path_of(&name));
        }
        Ok(cache)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(&name[..2]).join(name)
    }

    /// Bytes currently accounted to cached blocks.
    pub fn used(&self) -> u64 {
        self.state.lock().unwrap().total
    }

    /// Bytes `range` of a cached block (fewer at its end), without reading the rest of it: a small random read
    /// must not cost a whole block read from disk.
    pub fn get_range(&self, key: &BlockKey, range: std::ops::Range<usize>) -> Option<Bytes> {
        let name = key.file_name();
        if !self.indexed(&name) {
            return None;
        }
        let cached = self.open_files.lock().unwrap().get(&name).cloned();
        let file = match cached {
            Some(file) => file,
            None => {
                let Some(file) = open_block(&self.path_of(&name), key) else {
                    self.forget(&name);
                    return None;
                };
                let file = Arc::new(file);
                self.open_files
                    .lock()
                    .unwrap()
                    .put(name.clone(), file.clone());
                // Evicted meanwhile: its removal may have missed the entry just made.
                if !self.state.lock().unwrap().lru.contains(&name) {
                    self.open_files.lock().unwrap().pop(&name);
                }
                file
            }
        };
        match read_range(&file.0, file.1, range) {
            Some(data) => Some(data),
            None => {
                self.forget(&name);
                None
            }
        }
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let name = key.file_name();
        if !self.indexed(&name) {
            return None;
        }
        match read_block(&self.path_of(&name), key) {
            Some(data) => Some(data),
            None => {
                self.forget(&name);
                None
            }
        }
    }

    /// Whether block `name` is cached and written (marked as used); a block still being written is not, and
    /// reading it must not make it forgotten.
    fn indexed(&self, name: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        !state.writing.contains(name) && state.lru.get(name).is_some()
    }

    /// Whether block `key` is cached (or being written), without marking it as used.
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.state.lock().unwrap().lru.contains(&key.file_name())
    }

    /// The most bytes this tier holds.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn put(&self, key: &BlockKey, data: &[u8]) {
        let name = key.file_name();
        let header = key.header();
        let size = (4 + header.len() + data.len()) as u64;
        if size > self.cap || !self.reserve(&name, size) {
            return;
        }
        let written = write_block(&self.path_of(&name), &header, data);
        self.state.lock().unwrap().writing.remove(&name);
        if let Err(e) = written {
            tracing::warn!(
                "disk cache: cannot write block to {}: {e}",
                self.dir.display()
            );
            self.forget(&name);
        }
    }

    /// Makes room for `size` bytes and records the block; false if it is already cached.
    fn reserve(&self, name: &str, size: u64) -> bool {
        let mut evict = Vec::new();
        {
            let mut state = self.state.lock().unwrap();
            if state.lru.contains(name) {
                return false;
            }
            let mut busy = Vec::new();
            while state.total + size > self.cap {
                let Some((old, old_size)) = state.lru.pop_lru() else {
                    break;
                };
                if state.writing.contains(&old) {
                    busy.push((old, old_size));
                    continue;
                }
                state.total -= old_size;
                evict.push(old);
            }
            if state.total + size > self.cap {
                // Only blocks being written are left to evict: skip this one rather than pass the cap.
                for (old, old_size) in busy {
                    state.lru.put(old, old_size);
                }
                drop(state);
                self.remove_files(evict);
                return false;
            }
            for (old, old_size) in busy {
                state.lru.put(old, old_size);
            }
            state.lru.put(name.to_string(), size);
            state.total += size;
            state.writing.insert(name.to_string());
        }
        self.remove_files(evict);
        true
    }

    fn remove_files(&self, evicted: Vec<String>) {
        self.evictions
            .fetch_add(evicted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for old in evicted {
            self.open_files.lock().unwrap().pop(&old);
            let _ = std::fs::remove_file(self.path_of(&old));
        }
    }

    /// Removes least recently used blocks until at least `bytes` were freed (or the tier is empty): staged writes
    /// that found the disk full get room before they are refused. Returns the bytes freed.
    pub fn evict(&self, bytes: u64) -> u64 {
        let mut evict = Vec::new();
        let mut freed = 0;
        {
            let mut state = self.state.lock().unwrap();
            let mut busy = Vec::new();
            while freed < bytes {
                let Some((old, old_size)) = state.lru.pop_lru() else {
                    break;
                };
                if state.writing.contains(&old) {
                    busy.push((old, old_size));
                    continue;
                }
                state.total -= old_size;
                freed += old_size;
                evict.push(old);
            }
            for (old, old_size) in busy {
                state.lru.put(old, old_size);
            }
        }
        self.remove_files(evict);
        freed
    }

    fn forget(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(size) = state.lru.pop(name) {
            state.total -= size;
        }
        drop(state);
        self.open_files.lock().unwrap().pop(name);
        let _ = std::fs::remove_file(self.path_of(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockKey {
        BlockKey::new("p", "obj", "etag", i)
    }

    #[test]
    fn ranges_are_read_without_the_rest_of_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let block: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        cache.put(&key(1), &block);
        assert_eq!(
            cache.get_range(&key(1), 100..4196).as_deref(),
            Some(&block[100..4196])
        );
        assert_eq!(
            cache.get_range(&key(1), 4900..6000).as_deref(),
            Some(&block[4900..]),
            "short at the block's end"
        );
        assert!(cache.get_range(&key(2), 0..10).is_none(), "not cached");
        let other = BlockKey::new("p", "obj", "other-etag", 1);
        assert!(
            cache.get_range(&other, 0..10).is_none(),
            "another version's block is never served"
        );
    }

    /// A shard folder is made when a block first needs it, and made again if something removed it meanwhile.
    #[test]
    fn a_removed_shard_folder_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let block = vec![3u8; 3000];
        cache.put(&key(1), &block);
        let shard = cache.path_of(&key(1).file_name());
        let shard = shard.parent().unwrap();
        std::fs::remove_dir_all(shard).unwrap();
        cache.forget(&key(1).file_name());
        cache.put(&key(1), &block);
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&block[..]));
        assert!(shard.is_dir());
    }

    #[test]
    fn never_exceeds_cap_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![7u8; 1000];
        let cap = 3500;
        let cache = DiskCache::open(dir.path(), cap).unwrap();
        for i in 0..10 {
            cache.put(&key(i), &block);
            assert!(cache.used() <= cap);
        }
        assert!(cache.get(&key(0)).is_none(), "oldest evicted");
        assert_eq!(cache.get(&key(9)).as_deref(), Some(&block[..]));
        let reopened = DiskCache::open(dir.path(), cap).unwrap();
        assert_eq!(
            reopened.get(&key(9)).as_deref(),
            Some(&block[..]),
            "survives reopen"
        );
        assert!(
            reopened
                .get(&BlockKey::new("p", "obj", "other-etag", 9))
                .is_none(),
            "keyed by etag"
        );
        let on_disk: u64 = walk(dir.path());
        assert!(on_disk <= cap, "{on_disk} bytes on disk");
    }

    #[test]
    fn an_evicted_block_is_not_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![7u8; 1000];
        let cache = DiskCache::open(dir.path(), 3500).unwrap();
        cache.put(&key(0), &block);
        assert_eq!(
            cache.get_range(&key(0), 0..10).as_deref(),
            Some(&block[..10])
        );
        assert!(cache
            .open_files
            .lock()
            .unwrap()
            .contains(&key(0).file_name()));
        for i in 1..4 {
            cache.put(&key(i), &block); // the fourth pushes block 0 out
        }
        assert!(cache.get_range(&key(0), 0..10).is_none(), "evicted");
        assert!(
            !cache
                .open_files
                .lock()
                .unwrap()
                .contains(&key(0).file_name()),
            "an evicted block's file is closed, so its space is free"
        );
        assert_eq!(
            cache.get_range(&key(3), 5..15).as_deref(),
            Some(&block[5..15])
        );
        assert!(cache.evict(u64::MAX) >= 3000);
        assert_eq!(cache.used(), 0);
        assert!(
            cache.open_files.lock().unwrap().is_empty(),
            "evict closes what it removes"
        );
    }

    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
    }
}
