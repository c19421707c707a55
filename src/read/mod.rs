//! Reads of an open file: byte ranges become cached blocks, and sequential readers get read-ahead.
//!
//! Each open file has a [`ReadState`]. A read that starts where the previous one ended is sequential: the
//! read-ahead window doubles (1, 2, 4... blocks up to `read_ahead` and three quarters of the memory tier), and once
//! a run's worth of the window is not yet requested it is fetched in the background with one GET ([`fetch`]). A
//! read anywhere else is random: the window resets and only the touched blocks are fetched; after a few such misses
//! the whole object is fetched into the disk tier in the background. Read-ahead requests across all files are
//! capped by a semaphore, so memory used by read-ahead is bounded by config, whatever the file sizes.
//!
//! Failover: an open file reads one provider's copy ([`copies`]). When that provider stops answering (or the copy
//! vanishes, e.g. healed back to its primary), the file continues from the next provider in the route's read order
//! that holds a copy of the same size, pinned to that copy's ETag. Copies on different providers have unrelated
//! ETags, so "same size" is the only check possible: zmount relies on fallbacks holding the same bytes
//! (SEMANTICS.md).

mod copies;
mod fetch;
mod plan;

pub use copies::{Copy, ObjectVersion};

use crate::cache::{BlockCache, BlockKey, BLOCK_SIZE};
use crate::providers::Attempts;
use crate::storage::StorageError;
use bytes::{Bytes, BytesMut};
use copies::block;
use fetch::{block_key, fetch_range, fetch_run, fill};
pub use plan::ReadState;
use plan::{run_len, RUN_BLOCKS};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Why a read failed. The filesystem maps it to errno (`fs/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object is no longer the version the file was opened at (shorter, or replaced).
    #[error("stale file handle: the object changed since the file was opened")]
    Stale,
    /// One failure shared by every read that waited on the same fetch.
    #[error(transparent)]
    Shared(Arc<ReadError>),
}

impl ReadError {
    /// The provider could not answer (see [`StorageError::is_unavailable`]); another copy may.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ReadError::Storage(e) => e.is_unavailable(),
            ReadError::Shared(inner) => inner.is_unavailable(),
            ReadError::Stale => false,
        }
    }

    /// No such object on the provider asked.
    pub fn is_not_found(&self) -> bool {
        match self {
            ReadError::Storage(e) => e.is_not_found(),
            ReadError::Shared(inner) => inner.is_not_found(),
            ReadError::Stale => false,
        }
    }
}

type ReadResult<T> = Result<T, ReadError>;

pub struct Reader {
    cache: Arc<BlockCache>,
    max_window: u64,
    read_ahead_permits: Arc<Semaphore>,
    /// The permits `read_ahead_permits` started with.
    read_ahead_capacity: usize,
    /// GETs of whole-object fills in flight, over all files.
    fill_permits: Arc<Semaphore>,
    /// Object versions being filled (provider, key, version), so two handles do not fill one twice.
    filling: Arc<Mutex<std::collections::HashSet<(String, String, String)>>>,
}

/// What names an object version among the fills running: provider, key and version.
fn fill_id(copy: &Copy) -> (String, String, String) {
    (
        copy.provider.name.clone(),
        copy.key.to_string(),
        copy.version_tag.clone(),
    )
}

/// Random reads of one handle that miss both cache tiers before the whole object is fetched in the background.
const FILL_AFTER: u32 = 3;
/// Run GETs in flight for whole-object fills (each holds up to [`RUN_BLOCKS`] blocks in memory).
const FILL_RUNS: usize = 4;

impl Reader {
    /// A reader over `cache`, whose memory tier holds `memory_bytes`: one reader's window is at most `read_ahead_bytes`
    /// and three quarters of the memory tier, and read-ahead of all files together at most that much, so blocks
    /// fetched ahead are still in memory when their reader gets there (else each is fetched twice): the tier drops
    /// its least recently used blocks first, those readers are done with. (Half the tier, as before, left a cold
    /// 1 GiB read at 360–395 MiB/s here; three quarters: 390–460, the same bytes fetched, peak RSS 80–95 MiB.)
    pub fn new(cache: Arc<BlockCache>, read_ahead_bytes: u64, memory_bytes: u64) -> Self {
        let ahead = (memory_bytes * 3 / 4 / BLOCK_SIZE).max(1);
        let max_window = (read_ahead_bytes / BLOCK_SIZE).clamp(1, ahead);
        let permits = ahead as usize;
        Reader {
            cache,
            max_window,
            read_ahead_permits: Arc::new(Semaphore::new(permits)),
            read_ahead_capacity: permits,
            fill_permits: Arc::new(Semaphore::new(FILL_RUNS)),
            filling: Default::default(),
        }
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// Up to `len` bytes at `offset` (fewer at end of file).
    pub async fn read(
        &self,
        object: &ObjectVersion,
        state: &Mutex<ReadState>,
        offset: u64,
        len: u32,
    ) -> ReadResult<Bytes> {
        let end = (offset + u64::from(len)).min(object.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        self.read_ahead(object, state, offset, end, last);
        if first == last {
            let from = (offset - first * BLOCK_SIZE) as usize;
            let to = (end - first * BLOCK_SIZE) as usize;
            // A random read of a block on disk but not in memory: just these bytes (a 4 KiB read must not cost a
            // 1 MiB one). Sequential readers take the whole block into memory, as they will read all of it.
            if state.lock().unwrap().window == 0 {
                let key = block_key(&object.current(), first);
                self.note_random_read(object, state, &key);
                if !self.cache.contains(&key) {
                    if let Some(bytes) = self.cache.disk_range(&key, from..to).await {
                        if bytes.len() == to - from {
                            return Ok(bytes);
                        }
                    }
                    // Not cached, and a whole-object fill is on its way: just these bytes (the fill brings the
                    // block). Any failure takes the block's own path, which knows the other copies.
                    let copy = object.current();
                    if !self.cache.holds(&key)
                        && self.filling.lock().unwrap().contains(&fill_id(&copy))
                    {
                        let fetch = fetch_range(object, &copy, offset..end, Attempts::Fast);
                        if let Ok(bytes) = fetch.await {
                            return Ok(bytes);
                        }
                    }
                }
            }
            // The common case (the kernel reads at most 128 KiB at a time): a zero-copy slice of one block.
            let block = self.block(object, first).await?;
            let to = to.min(block.len());
            return Ok(block.slice(from.min(to)..to));
        }
        let blocks =
            futures::future::try_join_all((first..=last).map(|i| self.block(object, i))).await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, block) in (first..=last).zip(blocks) {
            let block_start = i * BLOCK_SIZE;
            let from = offset.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            if from < to {
                out.extend_from_slice(&block[from..to]);
            }
        }
        Ok(out.freeze())
    }

    /// A random read answered on the caller's thread when its bytes are in the disk tier and not in memory (one
    /// `pread`, no task and no thread hop: most of a small read's cost otherwise). None: [`Reader::read`] answers
    /// it (a read near the last one, spanning blocks, in memory, or not cached).
    pub fn read_on_disk_now(
        &self,
        object: &ObjectVersion,
        state: &Mutex<ReadState>,
        offset: u64,
        len: u32,
    ) -> Option<Bytes> {
        let end = (offset + u64::from(len)).min(object.size);
        let (first, last) = (offset / BLOCK_SIZE, end.checked_sub(1)? / BLOCK_SIZE);
        if offset >= end || first != last {
            return None;
        }
        let mut st = state.lock().unwrap();
        if st.continues(offset, end - offset) {
            return None; // sequential: read-ahead's path
        }
        let key = block_key(&object.current(), first);
        if self.cache.contains(&key) {
            return None;
        }
        let range = (offset - first * BLOCK_SIZE) as usize..(end - first * BLOCK_SIZE) as usize;
        let wanted = range.len();
        let bytes = self.cache.disk_range_now(&key, range)?;
        if bytes.len() != wanted {
            return None;
        }
        // What the read does to the handle's state; a random read has nothing to read ahead.
        let ahead = st.plan(offset, end, last, object.size, self.max_window);
        debug_assert!(ahead.is_empty(), "a random read planned read-ahead");
        Some(bytes)
    }

    /// A random read of block `key`: after [`FILL_AFTER`] of them missed the cache, the whole object is fetched
    /// into the disk tier in the background (large GETs, several in flight), as s3fs does, so a file read at random
    /// soon reads at cache speed instead of paying a round trip per block. Only objects that take at most a
    /// quarter of the disk tier; the fill ends when the handle that started it is closed.
    fn note_random_read(&self, object: &ObjectVersion, state: &Mutex<ReadState>, key: &BlockKey) {
        // Past the count (a fill started, or the object is not one to fill): nothing more to note.
        if state.lock().unwrap().random_misses >= FILL_AFTER || self.cache.holds(key) {
            return;
        }
        let token = {
            let mut st = state.lock().unwrap();
            st.random_misses += 1;
            if st.random_misses != FILL_AFTER
                || object.size <= 2 * BLOCK_SIZE
                || object.size > self.cache.disk_capacity() / 4
            {
                return;
            }
            let token = Arc::new(());
            st.fill = Some(token.clone());
            Arc::downgrade(&token)
        };
        let copy = object.current();
        let id = fill_id(&copy);
        if !self.filling.lock().unwrap().insert(id.clone()) {
            return;
        }
        let (cache, object, permits) = (
            self.cache.clone(),
            object.clone(),
            self.fill_permits.clone(),
        );
        let filling = self.filling.clone();
        tokio::spawn(async move {
            fill(&cache, &object, &copy, &permits, token).await;
            filling.lock().unwrap().remove(&id);
        });
    }

    /// Updates the window and requests what read-ahead should now. Blocks it could not request for want of
    /// permits stay unrequested in the handle's state, so a later read asks for them (planning and requesting under
    /// the handle's lock: the kernel's concurrent reads of one file do not both ask for one block).
    fn read_ahead(
        &self,
        object: &ObjectVersion,
        state: &Mutex<ReadState>,
        offset: u64,
        end: u64,
        last: u64,
    ) {
        let mut st = state.lock().unwrap();
        let ahead = st.plan(offset, end, last, object.size, self.max_window);
        let until = self.spawn_read_ahead(object, ahead);
        st.unrequest_from(until);
    }

    /// Fetches the blocks of `ahead` not yet cached in the background, consecutive ones together: one GET per
    /// run of up to [`RUN_BLOCKS`] blocks, never across a multiple of it, cut into blocks as it streams in (a 1 MiB
    /// ranged GET costs about as much in round trips as it moves data). Each block takes a read-ahead permit until
    /// it is cached. Returns the first block not requested: `ahead.end`, or where permits ran short ([`run_len`]).
    fn spawn_read_ahead(&self, object: &ObjectVersion, ahead: std::ops::Range<u64>) -> u64 {
        let copy = object.current();
        let mut index = ahead.start;
        while index < ahead.end {
            let key = block_key(&copy, index);
            if self.cache.contains(&key) {
                index += 1;
                continue;
            }
            // A block on disk is loaded on its own; a run gathers blocks neither tier holds.
            let mut end = index + 1;
            if !self.cache.holds(&key) {
                while end < ahead.end
                    && !end.is_multiple_of(RUN_BLOCKS)
                    && !self.cache.holds(&block_key(&copy, end))
                {
                    end += 1;
                }
            }
            let len = run_len(
                end - index,
                self.read_ahead_permits.available_permits(),
                self.read_ahead_capacity,
            );
            if len == 0 {
                return index;
            }
            let Ok(permits) = self
                .read_ahead_permits
                .clone()
                .try_acquire_many_owned(len as u32)
            else {
                return index;
            };
            let run = index..index + len;
            index = run.end;
            let (cache, object) = (self.cache.clone(), object.clone());
            if run.end - run.start == 1 {
                tokio::spawn(async move {
                    let _ = block(&cache, &object, run.start).await;
                    drop(permits);
                });
            } else {
                tokio::spawn(fetch_run(cache, object, copy.clone(), run, permits));
            }
        }
        ahead.end
    }

    async fn block(&self, object: &ObjectVersion, index: u64) -> ReadResult<Bytes> {
        block(&self.cache, object, index).await
    }
}
