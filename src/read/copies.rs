//! Which copy of an object an open file reads, and failover between copies: [`ObjectVersion`] pins the copy (a
//! provider and an ETag), and [`block`] fetches a block through the cache from it, hedging a slow provider with the
//! next copy and moving the open file on when its provider fails or its copy is gone.

use super::fetch::{block_key, fetch_block};
use super::{ReadError, ReadResult};
use crate::cache::BlockCache;
use crate::providers::hedge::{race, Raced};
use crate::providers::{Attempts, Provider};
use crate::storage::StorageError;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::GetOptions;
use std::sync::{Arc, Mutex};

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
            let options = GetOptions {
                head: true,
                ..Default::default()
            };
            // Each candidate is asked in earnest (a copy found here is where the reader goes next).
            let head = provider
                .client(Attempts::Sole)
                .get(&self.path, options)
                .await;
            let Ok(head) = head else { continue };
            if head.meta().size != self.size {
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
            let etag = head.meta().e_tag.clone().or(head.meta().version.clone());
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

/// Block `index` from the cache or the current copy; when the copy's provider fails (or the copy is gone), from
/// the next copy. While another copy may exist, the current one gets `primary_read_attempts`; when no other copy
/// turns out to exist, it gets the full retry schedule after all.
pub(super) async fn block(
    cache: &BlockCache,
    object: &ObjectVersion,
    index: u64,
) -> ReadResult<Bytes> {
    let mut no_other_copy = false;
    loop {
        let copy = object.current();
        let other_copy = copy.next < object.others.len() && !no_other_copy;
        let fallback = Attempts::unless_sole(other_copy, Attempts::Fast);
        let fetch = fetch_block(object, &copy, index, fallback);
        let first = async {
            let got = cache.get_or_fetch(block_key(&copy, index), fetch).await;
            got.map_err(ReadError::Shared)
        };
        // A copy that does not answer within its provider's hedge delay: the open file moves on to the next copy
        // and this block is asked of it too; the first to answer wins (see crate::providers::hedge).
        let hedge = || {
            (fallback == Attempts::Fast).then_some(async {
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
                let fetch = fetch_block(object, &now, index, Attempts::Sole);
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
                if fallback == Attempts::Fast && e.is_unavailable() {
                    no_other_copy = true; // retry this copy in earnest
                    continue;
                }
                return Err(e);
            }
            other => return other,
        }
    }
}
