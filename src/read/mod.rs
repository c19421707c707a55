//! Reads of an open file: byte ranges become cached blocks, and sequential readers get read-ahead.
//!
//! Each open file has a [`ReadState`]. A read that starts where the previous one ended is sequential: the
//! read-ahead window doubles (1, 2, 4... blocks up to `read_ahead`), and blocks inside the window that are not yet
//! requested are fetched in the background, several ranged GETs in flight. A read anywhere else is random: the
//! window resets and only the touched blocks are fetched. Read-ahead requests across all files are capped by a
//! semaphore, so memory used by read-ahead is bounded by config, whatever the file sizes.
//!
//! Failover: an open file reads one provider's copy. When that provider stops answering (or the copy vanishes,
//! e.g. healed back to its primary), the file continues from the next provider in the route's read order that
//! holds a copy of the same size, pinned to that copy's ETag. Copies on different providers have unrelated ETags,
//! so "same size" is the only check possible: zmount relies on fallbacks holding the same bytes (SEMANTICS.md).

use crate::cache::{BlockCache, BlockKey, BLOCK_SIZE};
use crate::providers::guard::{with_fallback, Fallback};
use crate::providers::hedge::{race, Raced};
use crate::providers::Provider;
use crate::storage::StorageError;
use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange};
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

/// How far a read may start from where the previous one ended and still count as sequential: a few times the
/// kernel's largest FUSE read (128 KiB to 1 MiB), so its concurrent read-ahead requests do not look random.
const SEQUENTIAL_SLACK: u64 = 4 * 1024 * 1024;

/// Blocks read-ahead asks for with one GET at most: 8 MiB, cut into blocks as it arrives.
const RUN_BLOCKS: u64 = 8;

/// The object an open file reads: which copy (provider + ETag) it reads now, and where to go if that fails.
#[derive(Clone, Debug)]
pub struct ObjectVersion {
    pub path: String,
    pub size: u64,
    copy: Arc<Mutex<Copy>>,
    /// Providers to try, in order, when the current copy's provider fails.
    others: Arc<[Arc<Provider>]>,
    /// Held while switching copies, so concurrent failing reads switch once.
    switching: Arc<tokio::sync::Mutex<()>>,
}

/// One provider's copy of the object, pinned to the version seen when it was chosen: every block request carries
/// its ETag (If-Match), so bytes of two versions are never mixed.
#[derive(Clone, Debug)]
pub struct Copy {
    pub provider: Arc<Provider>,
    pub key: ObjectPath,
    pub etag: Option<String>,
    /// Stands in for the ETag in cache keys when the provider gives none.
    pub version_tag: String,
    /// Index in `others` of the next provider to try.
    next: usize,
}

impl ObjectVersion {
    /// An object read from `copy` on `provider` first, then from `others` in order.
    pub fn new(
        path: String,
        size: u64,
        provider: Arc<Provider>,
        etag: Option<String>,
        version_tag: String,
        others: Vec<Arc<Provider>>,
    ) -> Self {
        let copy = Copy {
            key: provider.key_for(&path),
            provider,
            etag,
            version_tag,
            next: 0,
        };
        ObjectVersion {
            path,
            size,
            copy: Arc::new(Mutex::new(copy)),
            others: others.into(),
            switching: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The copy being read now.
    pub fn current(&self) -> Copy {
        self.copy.lock().unwrap().clone()
    }

    /// Moves on from `failed` to the next provider that holds a copy of the same size. False when none does.
    async fn switch_from(&self, failed: &Copy, error: &ReadError) -> bool {
        let _one_at_a_time = self.switching.lock().await;
        let now = self.current();
        if now.provider.name != failed.provider.name || now.version_tag != failed.version_tag {
            return true; // another read already switched
        }
        for (i, provider) in self.others.iter().enumerate().skip(failed.next) {
            let key = provider.key_for(&self.path);
            let head = provider
                .store
                .get_opts(
                    &key,
                    GetOptions {
                        head: true,
                        ..Default::default()
                    },
                )
                .await;
            let Ok(head) = head else { continue };
            if head.meta.size != self.size {
                continue;
            }
            tracing::warn!(
                "{}: `{}` failed mid-read ({error}); continuing from `{}`",
                self.path,
                failed.provider.name,
                provider.name
            );
            provider
                .health
                .counters
                .served_as_fallback
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let etag = head.meta.e_tag.or(head.meta.version);
            *self.copy.lock().unwrap() = Copy {
                provider: provider.clone(),
                key,
                version_tag: etag.clone().unwrap_or_else(|| failed.version_tag.clone()),
                etag,
                next: i + 1,
            };
            return true;
        }
        false
    }
}

/// Per-open-file read-ahead state.
#[derive(Debug, Default)]
pub struct ReadState {
    next_offset: u64,
    window: u64,
    /// Blocks below this index were already requested by read-ahead.
    requested_until: u64,
    /// Random reads of this handle that found their block in neither cache tier.
    random_misses: u32,
    /// Held while a whole-object fill started by this handle may go on: the fill stops once the handle is gone.
    fill: Option<Arc<()>>,
}

pub struct Reader {
    cache: Arc<BlockCache>,
    max_window: u64,
    read_ahead_permits: Arc<Semaphore>,
    /// GETs of whole-object fills in flight, over all files.
    fill_permits: Arc<Semaphore>,
    /// Object versions being filled (provider, key, version), so two handles do not fill one twice.
    filling: Arc<Mutex<std::collections::HashSet<(String, String, String)>>>,
}

/// Random reads of one handle that miss both cache tiers before the whole object is fetched in the background.
const FILL_AFTER: u32 = 3;
/// Run GETs in flight for whole-object fills (each holds up to [`RUN_BLOCKS`] blocks in memory).
const FILL_RUNS: usize = 4;

impl Reader {
    /// A reader over `cache`, whose memory tier holds `memory_bytes`: one reader's window is at most `read_ahead_bytes`
    /// and half the memory tier, and read-ahead of all files together at most half of it, so blocks fetched ahead
    /// are still in memory when their reader gets there (else each is fetched twice).
    pub fn new(cache: Arc<BlockCache>, read_ahead_bytes: u64, memory_bytes: u64) -> Self {
        let half = (memory_bytes / 2 / BLOCK_SIZE).max(1);
        let max_window = (read_ahead_bytes / BLOCK_SIZE).clamp(1, half);
        let permits = half as usize;
        Reader {
            cache,
            max_window,
            read_ahead_permits: Arc::new(Semaphore::new(permits)),
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
        let ahead = self.plan_read_ahead(state, offset, end, last, object.size);
        self.spawn_read_ahead(object, ahead);
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

    /// A random read of block `key`: after [`FILL_AFTER`] of them missed the cache, the whole object is fetched
    /// into the disk tier in the background (large GETs, several in flight), as s3fs does, so a file read at random
    /// soon reads at cache speed instead of paying a round trip per block. Only objects that take at most a
    /// quarter of the disk tier; the fill ends when the handle that started it is closed.
    fn note_random_read(&self, object: &ObjectVersion, state: &Mutex<ReadState>, key: &BlockKey) {
        if self.cache.holds(key) {
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
        let id = (
            copy.provider.name.clone(),
            copy.key.to_string(),
            copy.version_tag.clone(),
        );
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

    /// Updates the window and returns the blocks read-ahead should request now.
    fn plan_read_ahead(
        &self,
        state: &Mutex<ReadState>,
        offset: u64,
        end: u64,
        last: u64,
        size: u64,
    ) -> std::ops::Range<u64> {
        let mut st = state.lock().unwrap();
        // The kernel's own read-ahead sends several reads at once and they may be served out of order, so a read
        // that lands near where the last one ended still counts as sequential.
        if offset.abs_diff(st.next_offset) <= SEQUENTIAL_SLACK {
            st.window = (st.window * 2).clamp(1, self.max_window);
            st.next_offset = st.next_offset.max(end);
        } else {
            st.window = 0;
            st.requested_until = 0;
            st.next_offset = end;
        }
        let blocks_in_file = size.div_ceil(BLOCK_SIZE);
        let from = st.requested_until.max(last + 1);
        let to = (last + 1 + st.window).min(blocks_in_file);
        // Asked for in runs: once a run's worth of the window is free (or the file ends), not a block per read.
        if to <= from || (to - from < RUN_BLOCKS.min(st.window) && to < blocks_in_file) {
            return from..from;
        }
        st.requested_until = to;
        from..to
    }

    /// Fetches the blocks of `ahead` not yet cached in the background, consecutive ones together: one GET per
    /// run of up to [`RUN_BLOCKS`] blocks, cut into blocks as it streams in (a 1 MiB ranged GET costs about as
    /// much in round trips as it moves data). Each block takes a read-ahead permit until it is cached.
    fn spawn_read_ahead(&self, object: &ObjectVersion, ahead: std::ops::Range<u64>) {
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
                    && end - index < RUN_BLOCKS
                    && !self.cache.holds(&block_key(&copy, end))
                {
                    end += 1;
                }
            }
            // Read-ahead budget spent: the reader fetches blocks itself when it gets there.
            let budget = (self.read_ahead_permits.available_permits() as u64).min(end - index);
            if budget == 0 {
                return;
            }
            let Ok(permits) = self
                .read_ahead_permits
                .clone()
                .try_acquire_many_owned(budget as u32)
            else {
                return;
            };
            let run = index..index + budget;
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
    }

    async fn block(&self, object: &ObjectVersion, index: u64) -> ReadResult<Bytes> {
        block(&self.cache, object, index).await
    }
}

/// Block `index` from the cache or the current copy; when the copy's provider fails (or the copy is gone), from
/// the next copy. While another copy may exist, the current one gets `primary_read_attempts`; when no other copy
/// turns out to exist, it gets the full retry schedule after all.
async fn block(cache: &BlockCache, object: &ObjectVersion, index: u64) -> ReadResult<Bytes> {
    let mut no_other_copy = false;
    loop {
        let copy = object.current();
        let fetch = fetch_block(object, &copy, index);
        let fallback = match copy.next < object.others.len() && !no_other_copy {
            true => Fallback::AtOnce,
            false => Fallback::None,
        };
        let first = async {
            let fetch = with_fallback(fallback, fetch);
            let got = cache.get_or_fetch(block_key(&copy, index), fetch).await;
            got.map_err(ReadError::Shared)
        };
        // A copy that does not answer within its provider's hedge delay: the open file moves on to the next copy
        // and this block is asked of it too; the first to answer wins (see crate::providers::hedge).
        let hedge = || {
            (fallback == Fallback::AtOnce).then_some(async {
                let stalled = ReadError::from(StorageError::Unavailable {
                    provider: copy.provider.name.clone(),
                    location: copy.provider.location.clone(),
                    path: object.path.clone(),
                    message: "no answer within the hedge delay".into(),
                });
                if !object.switch_from(&copy, &stalled).await {
                    return Err(stalled);
                }
                let now = object.current();
                let fetch = fetch_block(object, &now, index);
                let got = cache.get_or_fetch(block_key(&now, index), fetch).await;
                got.map_err(ReadError::Shared)
            })
        };
        let outcome = match race(
            &copy.provider.health,
            first,
            hedge,
            |r: &ReadResult<Bytes>| r.is_ok(),
        )
        .await
        {
            Raced::Alone(r) | Raced::First(r) | Raced::Second(r) => r,
            Raced::Neither(r, _) => r,
        };
        match outcome {
            Err(e) if e.is_unavailable() || e.is_not_found() => {
                if object.switch_from(&copy, &e).await {
                    continue;
                }
                if fallback == Fallback::AtOnce && e.is_unavailable() {
                    no_other_copy = true; // retry this copy in earnest
                    continue;
                }
                return Err(e);
            }
            other => return other,
        }
    }
}

fn block_key(copy: &Copy, index: u64) -> BlockKey {
    BlockKey::new(
        &copy.provider.name,
        copy.key.as_ref(),
        &copy.version_tag,
        index,
    )
}

/// Read-ahead of the blocks `run` (not yet cached) with one GET of their whole range, pinned to `copy`'s version.
/// Each block is put in the cache as soon as its bytes have arrived, through the cache's shared fetch, so a reader
/// asking for it meanwhile waits for this GET instead of sending its own. A block this GET cannot deliver (the
/// stream broke, the object changed) is fetched on its own; a provider that fails is then the reader's to handle.
async fn fetch_run(
    cache: Arc<BlockCache>,
    object: ObjectVersion,
    copy: Copy,
    run: std::ops::Range<u64>,
    permits: tokio::sync::OwnedSemaphorePermit,
) {
    let mut senders = Vec::new();
    let mut waiting = tokio::task::JoinSet::new();
    for index in run.clone() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Bytes>();
        senders.push(tx);
        let (cache, object, copy) = (cache.clone(), object.clone(), copy.clone());
        waiting.spawn(async move {
            let arrived = async {
                match rx.await {
                    Ok(bytes) => Ok(bytes),
                    Err(_) => fetch_block(&object, &copy, index).await,
                }
            };
            let _ = cache.get_or_fetch(block_key(&copy, index), arrived).await;
        });
    }
    let mut senders = senders.into_iter();
    stream_run(&object, &copy, run, |_, block| {
        if let Some(tx) = senders.next() {
            let _ = tx.send(block);
        }
    })
    .await;
    drop(senders);
    while waiting.join_next().await.is_some() {}
    drop(permits);
}

/// Fetches every block of `copy` not yet cached into the disk tier, [`RUN_BLOCKS`] per GET, [`FILL_RUNS`] GETs in
/// flight over all fills; stops early when `alive` is gone (the handle closed) or a GET fails.
async fn fill(
    cache: &Arc<BlockCache>,
    object: &ObjectVersion,
    copy: &Copy,
    permits: &Arc<Semaphore>,
    alive: std::sync::Weak<()>,
) {
    use futures::StreamExt;
    let blocks = object.size.div_ceil(BLOCK_SIZE);
    let runs = (0..blocks).step_by(RUN_BLOCKS as usize).map(|start| {
        let run = start..(start + RUN_BLOCKS).min(blocks);
        let alive = alive.clone();
        async move {
            let _permit = permits.acquire().await.ok()?;
            alive.upgrade()?;
            let missing: Vec<u64> = run
                .clone()
                .filter(|i| !cache.holds(&block_key(copy, *i)))
                .collect();
            let (Some(first), Some(last)) = (missing.first(), missing.last()) else {
                return Some(());
            };
            let run = *first..*last + 1;
            let mut arrived = Vec::new();
            let got = stream_run(object, copy, run.clone(), |i, block| {
                arrived.push((i, block))
            })
            .await;
            for (i, block) in arrived {
                cache.put_on_disk(block_key(copy, i), block).await;
            }
            (got == run.end - run.start).then_some(())
        }
    });
    let mut runs = futures::stream::iter(runs).buffered(FILL_RUNS);
    while let Some(done) = runs.next().await {
        if done.is_none() {
            tracing::debug!(path = %object.path, "whole-object fill stopped");
            return;
        }
    }
    cache
        .stats
        .fills
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// One GET of the blocks `run` of `copy`, handing each complete block to `deliver` as it arrives (in order). Returns
/// how many blocks were delivered: fewer than asked when the request or the stream failed (never a partial block).
async fn stream_run(
    object: &ObjectVersion,
    copy: &Copy,
    run: std::ops::Range<u64>,
    mut deliver: impl FnMut(u64, Bytes),
) -> u64 {
    let start = run.start * BLOCK_SIZE;
    let end = (run.end * BLOCK_SIZE).min(object.size);
    if start >= end {
        return 0;
    }
    let options = GetOptions {
        range: Some(GetRange::Bounded(start..end)),
        if_match: copy.etag.clone(),
        ..Default::default()
    };
    let Ok(result) = copy.provider.store.get_opts(&copy.key, options).await else {
        return 0;
    };
    let mut stream = result.into_stream();
    let mut block = BytesMut::with_capacity(BLOCK_SIZE as usize);
    let mut index = run.start;
    let mut at = start;
    let mut want = BLOCK_SIZE.min(end - at) as usize;
    while let Some(Ok(mut chunk)) = futures::StreamExt::next(&mut stream).await {
        while !chunk.is_empty() && at < end {
            let take = (want - block.len()).min(chunk.len());
            block.extend_from_slice(&chunk.split_to(take));
            if block.len() == want {
                let full =
                    std::mem::replace(&mut block, BytesMut::with_capacity(BLOCK_SIZE as usize));
                deliver(index, full.freeze());
                index += 1;
                at += want as u64;
                want = BLOCK_SIZE.min(end.saturating_sub(at)) as usize;
            }
        }
        if at >= end {
            break;
        }
    }
    index - run.start
}

/// One ranged GET for block `index`, pinned to the version the file was opened at.
async fn fetch_block(object: &ObjectVersion, copy: &Copy, index: u64) -> ReadResult<Bytes> {
    let start = index * BLOCK_SIZE;
    let end = (start + BLOCK_SIZE).min(object.size);
    let options = GetOptions {
        range: Some(GetRange::Bounded(start..end)),
        if_match: copy.etag.clone(),
        ..Default::default()
    };
    let provider = &copy.provider;
    let fail = |e| ReadError::from(StorageError::from_store(provider, &object.path, e));
    let result = provider
        .store
        .get_opts(&copy.key, options)
        .await
        .map_err(fail)?;
    let data = result.bytes().await.map_err(fail)?;
    if data.len() as u64 != end - start {
        return Err(ReadError::Stale); // the object is shorter than when it was opened
    }
    tracing::trace!(provider = %provider.name, path = %object.path, block = index, "fetched block");
    Ok(data)
}
