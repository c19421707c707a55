//! Multipart uploads in progress, journaled so none is left open on a provider: an open multipart upload is
//! invisible and billed until it is completed or aborted. Each upload started through a provider's low-level
//! multipart API (S3 and S3-compatible stores) gets a record `<cache_dir>/uploads/<n>.json` — provider, key and
//! upload id — written durably before its first part is sent and removed once it is completed or aborted. An
//! upload that fails is aborted at once (best effort); records left by a killed process, or by an abort that
//! failed, are aborted by [`OpenUploads::abort_orphans`] at the next start and at every maintenance pass. Records
//! name the process that started the upload: those of another process still running (a `zmount migrate` sharing
//! the cache dir) are left alone.
//!
//! Azure needs none of this (uncommitted blocks are discarded by the service after a week, and object_store's
//! abort is a no-op there); local folders have no multipart uploads.

use super::{Result, StorageError};
use crate::providers::Provider;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct OpenUploads {
    dir: PathBuf,
    next: AtomicU64,
    /// Records of uploads running in this process (never aborted as orphans).
    live: Mutex<HashSet<PathBuf>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    provider: String,
    key: String,
    upload_id: String,
}

impl OpenUploads {
    pub fn new(dir: &Path) -> OpenUploads {
        OpenUploads {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
            live: Mutex::default(),
        }
    }

    fn started(&self, provider: &str, key: &ObjectPath, id: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("{}-{n}.json", std::process::id()));
        let record = Record {
            provider: provider.to_string(),
            key: key.to_string(),
            upload_id: id.to_string(),
        };
        self.live.lock().unwrap().insert(file.clone());
        let written =
            crate::meta::write_durably(&file, &serde_json::to_vec(&record).expect("serializes"));
        if written.is_err() {
            self.live.lock().unwrap().remove(&file);
        }
        written.map(|_| file)
    }

    /// The upload of `record` ended; `settled`: completed or aborted (else the record stays for a later abort).
    fn ended(&self, record: &Path, settled: bool) {
        if settled {
            let _ = std::fs::remove_file(record);
        }
        self.live.lock().unwrap().remove(record);
    }

    /// Aborts every recorded upload not running in this process; returns how many were aborted. Records whose
    /// provider is no longer configured are kept (and named), those whose abort fails stay for the next pass.
    pub async fn abort_orphans<'a>(
        &self,
        providers: impl Fn(&str) -> Option<&'a Arc<Provider>>,
    ) -> usize {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let files: Vec<PathBuf> = listing
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().and_then(|e| e.to_str()) == Some("json"))
            .filter(|f| !self.live.lock().unwrap().contains(f))
            .filter(|f| !started_by_another_live_process(f))
            .collect();
        let mut aborted = 0;
        for file in files {
            let Some(record) = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            else {
                let _ = std::fs::remove_file(&file);
                continue;
            };
            let Some(multipart) = providers(&record.provider).and_then(|p| p.multipart.clone())
            else {
                tracing::warn!(
                    "an unfinished multipart upload of `{}` on provider `{}` (upload id {}) cannot be aborted: the provider is no longer configured",
                    record.key,
                    record.provider,
                    record.upload_id
                );
                continue;
            };
            let key = ObjectPath::from(record.key.as_str());
            match multipart.abort_multipart(&key, &record.upload_id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(
                        "aborted an unfinished multipart upload of `{}` on `{}`",
                        record.key,
                        record.provider
                    );
                    let _ = std::fs::remove_file(&file);
                    aborted += 1;
                }
                Err(e) => tracing::warn!(
                    "cannot abort the unfinished multipart upload of `{}` on `{}` yet (tried again later): {e}",
                    record.key,
                    record.provider
                ),
            }
        }
        aborted
    }
}

/// Whether record `file` (named `<pid>-<n>.json`) belongs to another process that is still running — a
/// `zmount migrate` beside the mount, sharing its cache dir: its uploads are not orphans.
fn started_by_another_live_process(file: &Path) -> bool {
    let pid = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid != std::process::id() => Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

/// Streams `chunks` into a journaled multipart upload of `key` through the provider's low-level API: parts of at
/// least `part_size` bytes, `concurrency` in flight, refusing to grow past `limit`. Any failure aborts the upload
/// (and keeps its record when the abort fails too).
#[allow(clippy::too_many_arguments)]
pub(super) async fn put_journaled<S>(
    provider: &Provider,
    multipart: &Arc<dyn MultipartStore>,
    journal: &OpenUploads,
    path: &str,
    opts: object_store::PutMultipartOptions,
    mut chunks: S,
    limit: Option<u64>,
    (part_size, concurrency): (usize, usize),
) -> Result<(u64, Option<String>)>
where
    S: futures::Stream<Item = Result<Bytes>> + Unpin,
{
    let fail = |e| StorageError::from_store(provider, path, e);
    let key = provider.key_for(path);
    let id = multipart
        .create_multipart_opts(&key, opts)
        .await
        .map_err(fail)?;
    let record = match journal.started(&provider.name, &key, &id) {
        Ok(record) => record,
        Err(e) => {
            let _ = multipart.abort_multipart(&key, &id).await;
            return Err(StorageError::Invalid {
                path: path.to_string(),
                what: "multipart upload record",
                reason: e.to_string(),
            });
        }
    };
    let mut size = 0u64;
    let outcome: Result<object_store::PutResult> = async {
        let mut parts: Vec<PartId> = Vec::new();
        let mut in_flight = FuturesOrdered::new();
        let mut buffer: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        let mut index = 0usize;
        let mut ended = false;
        while !ended {
            match chunks.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    size += chunk.len() as u64;
                    if let Some(limit) = limit.filter(|l| size > *l) {
                        let path = path.to_string();
                        return Err(StorageError::TooLarge { path, size, limit });
                    }
                    buffered += chunk.len();
                    buffer.push(chunk);
                }
                None => ended = true,
            }
            let last = ended && (buffered > 0 || index == 0);
            if buffered >= part_size || last {
                let payload: PutPayload = std::mem::take(&mut buffer).into_iter().collect();
                buffered = 0;
                let (key, id, multipart) = (key.clone(), id.clone(), multipart.clone());
                let part = index;
                index += 1;
                in_flight
                    .push_back(async move { multipart.put_part(&key, &id, part, payload).await });
                while in_flight.len() >= concurrency {
                    let done = in_flight.next().await.expect("not empty");
                    parts.push(done.map_err(fail)?);
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            parts.push(done.map_err(fail)?);
        }
        multipart
            .complete_multipart(&key, &id, parts)
            .await
            .map_err(fail)
    }
    .await;
    match outcome {
        Ok(result) => {
            journal.ended(&record, true);
            Ok((size, result.e_tag))
        }
        Err(e) => {
            let aborted = match multipart.abort_multipart(&key, &id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
                Err(abort) => {
                    tracing::warn!(
                        "{path}: cannot abort the failed multipart upload on `{}` now (tried again later): {abort}",
                        provider.name
                    );
                    false
                }
            };
            journal.ended(&record, aborted);
            Err(e)
        }
    }
}
