//! Verified copies between two providers: what `zmount migrate` and `zmount sync` are made of.
//!
//! Works on each provider's own objects below its prefix (paths are the same on both sides, as routes never
//! rename), not through routes, so a whole provider can be moved whatever the routing says. Every copy streams (an
//! object larger than one part is never held in memory whole), carries the content type, user metadata and tags
//! (the tag mirror, plus provider tags where the target has them), and is verified before it counts: the target's
//! size, and the SHA-256 of a fresh read of the target against the SHA-256 of the bytes read from the source
//! (ETags of different providers are not comparable). An interrupted copy leaves nothing on the target: objects
//! appear only when their upload completes.
//!
//! "Already there" (for resuming and for sync) means: the target holds the path with the same size and a
//! last-modified time not older than the source's — it was written after the source last changed.

use crate::providers::Provider;
use crate::storage::{decode_tags, StorageError, TAGS_MIRROR_KEY, UPLOAD_PART_SIZE};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{
    Attribute, Attributes, ObjectStoreExt, PutMultipartOptions, PutOptions, TagSet,
};
use std::collections::BTreeMap;

/// One object on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: DateTime<Utc>,
}

/// Every object of `provider` (below its prefix) whose path `pattern` matches, by path.
pub async fn inventory(
    provider: &Provider,
    pattern: Option<&globset::GlobMatcher>,
) -> Result<BTreeMap<String, Item>, StorageError> {
    let key = (!provider.prefix.is_empty()).then(|| provider.key_for(""));
    let fail = |e| StorageError::from_store(provider, "", e);
    let metas: Vec<_> = provider
        .store
        .list(key.as_ref())
        .try_collect()
        .await
        .map_err(fail)?;
    Ok(metas
        .into_iter()
        .filter_map(|meta| {
            let path = provider.path_of(&meta.location)?;
            pattern.is_none_or(|p| p.is_match(&path)).then(|| {
                let item = Item {
                    path: path.clone(),
                    size: meta.size,
                    etag: meta.e_tag.clone(),
                    last_modified: meta.last_modified,
                };
                (path, item)
            })
        })
        .collect())
}

/// A glob over whole paths; `*` also crosses `/` (as in routes), so `*.jpg` matches `a/b.jpg`.
pub fn pattern(glob: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(glob.trim_start_matches('/'))
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid --pattern {glob:?}: {}", e.kind()))
}

/// Whether `target` already holds what `source` describes (see the module note).
pub fn already_there(source: &Item, target: Option<&Item>) -> bool {
    target.is_some_and(|t| t.size == source.size && t.last_modified >= source.last_modified)
}

/// The version of a source object a copy was made from: deleting the source is safe only while it is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: DateTime<Utc>,
}

impl Version {
    fn of(meta: &object_store::ObjectMeta) -> Self {
        Version {
            size: meta.size,
            etag: meta.e_tag.clone(),
            last_modified: meta.last_modified,
        }
    }
}

/// Copies `path` from `from` to `to` with its attributes, then verifies it; returns the version copied.
/// `on_bytes` is told of every chunk read, for progress.
pub async fn copy_verified(
    from: &Provider,
    to: &Provider,
    path: &str,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Version, StorageError> {
    let source = from
        .store
        .get(&from.key_for(path))
        .await
        .map_err(|e| StorageError::from_store(from, path, e))?;
    let version = Version::of(&source.meta);
    let size = source.meta.size;
    let (attributes, tags) = carried(&source.attributes, to);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let chunks = source
        .into_stream()
        .map_err(|e| StorageError::from_store(from, path, e))
        .inspect_ok(|chunk| {
            hasher.update(chunk);
            on_bytes(chunk.len() as u64);
        });
    write(to, path, chunks, size, attributes, tags).await?;
    let expected = hasher.finish();
    let (written, actual) = digest_of(to, path).await?;
    if written != size || actual.as_ref() != expected.as_ref() {
        return Err(StorageError::Invalid {
            path: path.to_string(),
            what: "copy",
            reason: format!(
                "verification failed on `{}`: {written} bytes (expected {size}), checksum {}",
                to.name,
                if actual.as_ref() == expected.as_ref() {
                    "equal"
                } else {
                    "differs"
                }
            ),
        });
    }
    Ok(version)
}

/// Deletes the source object only if it is still `version` (not rewritten since it was copied).
pub async fn delete_if_unchanged(
    provider: &Provider,
    path: &str,
    version: &Version,
) -> Result<(), StorageError> {
    let key = provider.key_for(path);
    let fail = |e| StorageError::from_store(provider, path, e);
    let now = match provider.store.head(&key).await {
        Ok(meta) => Version::of(&meta),
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(fail(e)),
    };
    if now != *version {
        return Err(StorageError::Precondition {
            provider: provider.name.clone(),
            path: path.to_string(),
            message: "changed after it was copied; the source is kept".into(),
        });
    }
    match provider.store.delete(&key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

/// Whether `a` and `b` are the same storage or one holds the other (same kind and location with one prefix at or
/// below the other; for local providers, one folder at or inside the other): copying between them could delete
/// what it copies.
pub fn overlap(a: &Provider, b: &Provider) -> bool {
    if a.kind != b.kind {
        return false;
    }
    let root = |p: &Provider| {
        let base = match p.kind {
            "local" => p.location.trim_end_matches('/').to_string(),
            _ => format!("{}//", p.location),
        };
        match p.prefix.is_empty() {
            true => base,
            false => format!("{base}/{}", p.prefix),
        }
    };
    let (ra, rb) = (root(a), root(b));
    let within =
        |x: &str, y: &str| x == y || x.starts_with(&format!("{}/", y.trim_end_matches('/')));
    within(&ra, &rb) || within(&rb, &ra)
}

/// Whether both providers hold the same bytes at `path` (size and SHA-256 of a full read of each).
pub async fn same_bytes(a: &Provider, b: &Provider, path: &str) -> Result<bool, StorageError> {
    let ((size_a, hash_a), (size_b, hash_b)) =
        futures::try_join!(digest_of(a, path), digest_of(b, path))?;
    Ok(size_a == size_b && hash_a.as_ref() == hash_b.as_ref())
}

/// Size and SHA-256 of the object, read in full.
async fn digest_of(
    provider: &Provider,
    path: &str,
) -> Result<(u64, ring::digest::Digest), StorageError> {
    let fail = |e| StorageError::from_store(provider, path, e);
    let mut stream = provider
        .store
        .get(&provider.key_for(path))
        .await
        .map_err(fail)?
        .into_stream();
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(fail)?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hasher.finish()))
}

/// The attributes a copy keeps (content type, metadata with the tag mirror) and the provider tags it gets.
// The tag-mirror arm must match (and drop the mirror) even when the target has no tags: collapsing its `if` into
// the guard would hand the mirror to the next arm, which keeps it.
#[allow(clippy::collapsible_match)]
fn carried(attributes: &Attributes, to: &Provider) -> (Attributes, TagSet) {
    let mut kept = Attributes::new();
    let mut tags = TagSet::default();
    for (key, value) in attributes.iter() {
        match key {
            // A target without tags gets no tag mirror either (its files could not be written back with it).
            Attribute::Metadata(k) if k.eq_ignore_ascii_case(TAGS_MIRROR_KEY) => {
                if to.supports_tags() {
                    kept.insert(key.clone(), value.clone());
                    for (tk, tv) in decode_tags(value) {
                        tags.push(&tk, &tv);
                    }
                }
            }
            Attribute::ContentType | Attribute::Metadata(_) => {
                kept.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    (kept, tags)
}

/// Writes a stream to `to`: one PUT when it fits in a part, else a multipart upload.
async fn write(
    to: &Provider,
    path: &str,
    mut chunks: impl futures::Stream<Item = Result<Bytes, StorageError>> + Unpin,
    size: u64,
    attributes: Attributes,
    tags: TagSet,
) -> Result<(), StorageError> {
    let key = to.key_for(path);
    let fail = |e| StorageError::from_store(to, path, e);
    if size <= UPLOAD_PART_SIZE as u64 {
        let mut data = Vec::with_capacity(size as usize);
        while let Some(chunk) = chunks.next().await {
            data.extend_from_slice(&chunk?);
        }
        let opts = PutOptions {
            attributes,
            tags,
            ..Default::default()
        };
        to.store
            .put_opts(&key, data.into(), opts)
            .await
            .map_err(fail)?;
        return Ok(());
    }
    let opts = PutMultipartOptions {
        attributes,
        tags,
        ..Default::default()
    };
    crate::storage::put_multipart(to, path, opts, chunks, None).await?;
    Ok(())
}
