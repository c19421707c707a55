//! The GETs behind reads: one block, a run of blocks cut from one streamed GET (read-ahead), and the background
//! fetch of a whole object into the disk tier (random readers). Every request is pinned to the version the file was
//! opened at (If-Match), and a block reaches the cache only whole.

use super::copies::{Copy, ObjectVersion};
use super::{ReadError, ReadResult, FILL_RUNS, RUN_BLOCKS};
use crate::cache::{BlockCache, BlockKey, BLOCK_SIZE};
use crate::providers::Attempts;
use bytes::{Bytes, BytesMut};
use object_store::{GetOptions, GetRange};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// How hard read-ahead and whole-object fills try: fully, but not while the provider is marked down — they are
/// speculative, and the reader that needs a block fetches it itself, with the open file's failover.
const AHEAD: Attempts = Attempts::Full;

pub(super) fn block_key(copy: &Copy, index: u64) -> BlockKey {
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
pub(super) async fn fetch_run(
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
                    Err(_) => fetch_block(&object, &copy, index, AHEAD).await,
                }
            };
            let _ = cache.prefetch(block_key(&copy, index), arrived).await;
        });
    }
    let mut senders = senders.into_iter();
    stream_run(&object, &copy, run, AHEAD, |_, block| {
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
pub(super) async fn fill(
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
            let got = stream_run(object, copy, run.clone(), AHEAD, |i, block| {
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
pub(super) async fn stream_run(
    object: &ObjectVersion,
    copy: &Copy,
    run: std::ops::Range<u64>,
    attempts: Attempts,
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
    let client = copy.provider.client(attempts);
    let Ok(result) = client.get(&object.path, options).await else {
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
pub(super) async fn fetch_block(
    object: &ObjectVersion,
    copy: &Copy,
    index: u64,
    attempts: Attempts,
) -> ReadResult<Bytes> {
    let start = index * BLOCK_SIZE;
    let range = start..(start + BLOCK_SIZE).min(object.size);
    let data = fetch_range(object, copy, range, attempts).await?;
    tracing::trace!(provider = %copy.provider.name, path = %object.path, block = index, "fetched block");
    Ok(data)
}

/// One ranged GET of bytes `range` of the object, pinned to the version the file was opened at.
pub(super) async fn fetch_range(
    object: &ObjectVersion,
    copy: &Copy,
    range: std::ops::Range<u64>,
    attempts: Attempts,
) -> ReadResult<Bytes> {
    let wanted = range.end - range.start;
    let options = GetOptions {
        range: Some(GetRange::Bounded(range)),
        if_match: copy.etag.clone(),
        ..Default::default()
    };
    let client = copy.provider.client(attempts);
    let data = client.get(&object.path, options).await?.bytes().await?;
    if data.len() as u64 != wanted {
        return Err(ReadError::Stale); // the object is shorter than when it was opened
    }
    Ok(data)
}
