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

use super::Provider;
use object_store::path::Path as ObjectPath;
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

    pub(crate) fn started(
        &self,
        provider: &str,
        key: &ObjectPath,
        id: &str,
    ) -> std::io::Result<PathBuf> {
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
    pub(crate) fn ended(&self, record: &Path, settled: bool) {
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
