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

use crate::providers::{Attempts, Provider, ProviderClient};
use crate::storage::{decode_tags, StorageError, TAGS_MIRROR_KEY};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{Attribute, Attributes, GetOptions, PutMultipartOptions, TagSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A transfer talks to the two providers it was given and nowhere else: every request is tried in full.
const ATTEMPTS: Attempts = Attempts::Sole;

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
    provider: &Arc<Provider>,
    pattern: Option<&globset::GlobMatcher>,
) -> Result<BTreeMap<String, Item>, StorageError> {
    let metas: Vec<_> = provider.client(ATTEMPTS).list("").try_collect().await?;
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
    from: &Arc<Provider>,
    to: &Arc<Provider>,
    path: &str,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Version, StorageError> {
    let source = from
        .client(ATTEMPTS)
        .get(path, GetOptions::default())
        .await?;
    let version = Version::of(source.meta());
    let size = source.meta().size;
    let (attributes, tags) = carried(source.attributes(), to);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let chunks = source.into_stream().inspect_ok(|chunk| {
        hasher.update(chunk);
        on_bytes(chunk.len() as u64);
    });
    write(&to.client(ATTEMPTS), path, chunks, size, attributes, tags).await?;
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
    provider: &Arc<Provider>,
    path: &str,
    version: &Version,
) -> Result<(), StorageError> {
    let client = provider.client(ATTEMPTS);
    let now = match client.head(path).await {
        Ok(meta) => Version::of(&meta),
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    if now != *version {
        return Err(StorageError::Precondition {
            provider: provider.name.clone(),
            path: path.to_string(),
            message: "changed after it was copied; the source is kept".into(),
        });
    }
    client.delete(path).await
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
pub async fn same_bytes(
    a: &Arc<Provider>,
    b: &Arc<Provider>,
    path: &str,
) -> Result<bool, StorageError> {
    let ((size_a, hash_a), (size_b, hash_b)) =
        futures::try_join!(digest_of(a, path), digest_of(b, path))?;
    Ok(size_a == size_b && hash_a.as_ref() == hash_b.as_ref())
}

/// Size and SHA-256 of the object, read in full.
async fn digest_of(
    provider: &Arc<Provider>,
    path: &str,
) -> Result<(u64, ring::digest::Digest), StorageError> {
    let client = provider.client(ATTEMPTS);
    let mut stream = client.get(path, GetOptions::default()).await?.into_stream();
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
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
    to: &ProviderClient<'_>,
    path: &str,
    chunks: impl futures::Stream<Item = Result<Bytes, StorageError>> + Unpin,
    size: u64,
    attributes: Attributes,
    tags: TagSet,
) -> Result<(), StorageError> {
    let opts = PutMultipartOptions {
        attributes,
        tags,
        ..Default::default()
    };
    to.put_stream(path, opts, chunks, Some(size), None).await?;
    Ok(())
}
