//! Reads of an open file: byte ranges become cached blocks, and sequential readers get read-ahead.
//!
//! Each open file has a [`ReadState`]. A read that starts where the previous one ended is sequential: the
//! read-ahead window doubles (1, 2, 4... blocks up to `read_ahead`), and blocks inside the window that are not yet
//! requested are fetched in the background, several ranged GETs in flight. A read anywhere else is random: the
//! window resets and only the touched blocks are fetched. Read-ahead requests across all files are capped by a
//! semaphore, so memory used by read-ahead is bounded by config, whatever the file sizes.

use crate::cache::{BlockCache, BlockKey, BLOCK_SIZE};
use crate::fs::error::{FsError, FsResult};
use crate::providers::Provider;
use crate::storage::StorageError;
use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// How far a read may start from where the previous one ended and still count as sequential: a few times the
/// kernel's largest FUSE read (128 KiB to 1 MiB), so its concurrent read-ahead requests do not look random.
const SEQUENTIAL_SLACK: u64 = 4 * 1024 * 1024;

/// The version of an object an open file reads: every block request carries its ETag (If-Match), so bytes of two
/// versions are never mixed in one file handle.
#[derive(Clone, Debug)]
pub struct ObjectVersion {
    pub provider: Arc<Provider>,
    pub path: String,
    pub key: ObjectPath,
    pub etag: Option<String>,
    /// Stands in for the ETag in cache keys when the provider gives none.
    pub version_tag: String,
    pub size: u64,
}

/// Per-open-file read-ahead state.
#[derive(Debug, Default)]
pub struct ReadState {
    next_offset: u64,
    window: u64,
    /// Blocks below this index were already requested by read-ahead.
    requested_until: u64,
}

pub struct Reader {
    cache: Arc<BlockCache>,
    max_window: u64,
    read_ahead_permits: Arc<Semaphore>,
}

impl Reader {
    pub fn new(cache: Arc<BlockCache>, read_ahead_bytes: u64) -> Self {
        let max_window = (read_ahead_bytes / BLOCK_SIZE).max(1);
        // Twice one window in flight overall: two sequential readers at full speed, or many at reduced windows.
        let permits = (2 * max_window) as usize;
        Reader {
            cache,
            max_window,
            read_ahead_permits: Arc::new(Semaphore::new(permits)),
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
    ) -> FsResult<Bytes> {
        let end = (offset + u64::from(len)).min(object.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let ahead = self.plan_read_ahead(state, offset, end, last, object.size);
        for index in ahead {
            self.spawn_read_ahead(object, index);
        }
        if first == last {
            // The common case (the kernel reads at most 128 KiB at a time): a zero-copy slice of one block.
            let block = self.block(object, first).await?;
            let from = (offset - first * BLOCK_SIZE) as usize;
            let to = ((end - first * BLOCK_SIZE) as usize).min(block.len());
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
        if from < to {
            st.requested_until = to;
        }
        from..to.max(from)
    }

    fn spawn_read_ahead(&self, object: &ObjectVersion, index: u64) {
        let key = block_key(object, index);
        if self.cache.contains(&key) {
            return;
        }
        let Ok(permit) = self.read_ahead_permits.clone().try_acquire_owned() else {
            return; // read-ahead budget spent: the reader fetches the block itself when it gets there
        };
        let (cache, object) = (self.cache.clone(), object.clone());
        tokio::spawn(async move {
            let _ = cache.get_or_fetch(key, fetch_block(&object, index)).await;
            drop(permit);
        });
    }

    async fn block(&self, object: &ObjectVersion, index: u64) -> FsResult<Bytes> {
        self.cache
            .get_or_fetch(block_key(object, index), fetch_block(object, index))
            .await
    }
}

fn block_key(object: &ObjectVersion, index: u64) -> BlockKey {
    BlockKey::new(
        &object.provider.name,
        object.key.as_ref(),
        &object.version_tag,
        index,
    )
}

/// One ranged GET for block `index`, pinned to the version the file was opened at.
async fn fetch_block(object: &ObjectVersion, index: u64) -> FsResult<Bytes> {
    let start = index * BLOCK_SIZE;
    let end = (start + BLOCK_SIZE).min(object.size);
    let options = GetOptions {
        range: Some(GetRange::Bounded(start..end)),
        if_match: object.etag.clone(),
        ..Default::default()
    };
    let provider = &object.provider;
    let fail = |e| FsError::from(StorageError::from_store(provider, &object.path, e));
    let result = provider
        .store
        .get_opts(&object.key, options)
        .await
        .map_err(fail)?;
    let data = result.bytes().await.map_err(fail)?;
    if data.len() as u64 != end - start {
        return Err(FsError::StaleHandle); // the object is shorter than when it was opened
    }
    tracing::trace!(provider = %provider.name, path = %object.path, block = index, "fetched block");
    Ok(data)
}
