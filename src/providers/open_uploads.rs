//! Multipart uploads in progress, journaled so none is left open on a provider: an open multipart upload is
//! invisible and billed until it is completed or aborted. Each upload started through a provider's low-level
//! multipart API (S3 and S3-compatible stores) gets a record `<cache_dir>/uploads/<pid>-<n>.json`, written durably
//! *before* the upload is created (provider, key and the time) and again once the server has given its id; it is
//! removed once the upload is completed or aborted. An upload that fails is aborted at once (best effort);
//! records left by a killed process, or by an abort that failed, are aborted by [`OpenUploads::abort_orphans`] at
//! the next start and at every maintenance pass. A record without an id (the process died while the upload was
//! being created, or the create's answer was lost) is settled by listing the uploads of its key and aborting
//! those created within [`ID_UNKNOWN_WINDOW`] of the record (the server's clock may differ from ours), except the
//! uploads of that key this process is running (the same file written again after the lost answer). Records
//! name the process that started the upload: those of another process still running (a `zmount migrate` sharing
//! the cache dir) are left alone.
//!
//! Azure needs none of this (uncommitted blocks are discarded by the service after a week, and object_store's
//! abort is a no-op there); local folders have no multipart uploads.

use super::Provider;
use object_store::path::Path as ObjectPath;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct OpenUploads {
    dir: PathBuf,
    next: AtomicU64,
    /// Records of uploads running in this process (never aborted as orphans), with what they hold.
    live: Mutex<HashMap<PathBuf, Record>>,
    /// When this process started (see [`Record::process_started`]).
    process_started: Option<u64>,
}

/// How far from a record's time an upload of its key may have been created to count as the record's, when the
/// record has no upload id.
pub const ID_UNKNOWN_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    provider: String,
    key: String,
    /// None until the server has answered the create.
    #[serde(default)]
    upload_id: Option<String>,
    /// When the record was first written (seconds since the epoch).
    #[serde(default)]
    since: Option<i64>,
    /// When the writing process started (clock ticks since boot, `/proc/<pid>/stat`), so that another process
    /// given the same id later is not taken for it.
    #[serde(default)]
    process_started: Option<u64>,
}

impl OpenUploads {
    pub fn new(dir: &Path) -> OpenUploads {
        OpenUploads {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
            live: Mutex::default(),
            process_started: process_started(std::process::id()),
        }
    }

    /// An upload of `key` on `provider` is about to be created: its record, written durably, and marked as
    /// running in this process.
    pub(crate) fn starting(&self, provider: &str, key: &ObjectPath) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("{}-{n}.json", std::process::id()));
        let record = Record {
            provider: provider.to_string(),
            key: key.to_string(),
            upload_id: None,
            since: Some(chrono::Utc::now().timestamp()),
            process_started: self.process_started,
        };
        self.live
            .lock()
            .unwrap()
            .insert(file.clone(), record.clone());
        let written =
            crate::meta::write_durably(&file, &serde_json::to_vec(&record).expect("serializes"));
        if written.is_err() {
            self.live.lock().unwrap().remove(&file);
        }
        written.map(|_| file)
    }

    /// The upload of `record` was created with id `id`: the record names it from now on.
    pub(crate) fn started(&self, record: &Path, id: &str) -> std::io::Result<()> {
        let body = {
            let mut live = self.live.lock().unwrap();
            let body = live.get_mut(record).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such upload record")
            })?;
            body.upload_id = Some(id.to_string());
            serde_json::to_vec(body).expect("serializes")
        };
        crate::meta::write_durably(record, &body)
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
            .filter(|f| !self.live.lock().unwrap().contains_key(f))
            .collect();
        let mut aborted = 0;
        for file in files {
            let Some(record) = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            else {
                // Unreadable: half written by a process that died (records are renamed into place, so this is
                // damage); nothing can be done with it.
                if !started_by_another_live_process(&file, None) {
                    let _ = std::fs::remove_file(&file);
                }
                continue;
            };
            if started_by_another_live_process(&file, record.process_started) {
                continue;
            }
            let provider = providers(&record.provider);
            let Some(multipart) = provider.and_then(|p| p.client(super::Attempts::Sole).parts())
            else {
                tracing::warn!(
                    "an unfinished multipart upload of `{}` on provider `{}` (upload id {}) cannot be aborted: the provider is no longer configured",
                    record.key,
                    record.provider,
                    record.upload_id.as_deref().unwrap_or("unknown")
                );
                continue;
            };
            let key = ObjectPath::from(record.key.as_str());
            let ids = match &record.upload_id {
                Some(id) => vec![id.clone()],
                None => match self.ids_near_not_live(provider, &record).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(
                            "cannot list the multipart uploads of `{}` on `{}` yet (tried again later): {e}",
                            record.key,
                            record.provider
                        );
                        continue;
                    }
                },
            };
            let mut settled = true;
            for id in ids {
                match multipart.abort_multipart(&key, &id).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        tracing::info!(
                            "aborted an unfinished multipart upload of `{}` on `{}`",
                            record.key,
                            record.provider
                        );
                        aborted += 1;
                    }
                    Err(e) => {
                        settled = false;
                        tracing::warn!(
                            "cannot abort the unfinished multipart upload of `{}` on `{}` yet (tried again later): {e}",
                            record.key,
                            record.provider
                        )
                    }
                }
            }
            if settled {
                let _ = std::fs::remove_file(&file);
            }
        }
        aborted
    }

    /// [`ids_near`], leaving out the uploads of the same key that run in this process: a program that writes a
    /// file again after a failed create (its record stays, without an id) is streaming into a new upload of the
    /// same key, which the listing shows too, and aborting it would fail that write. While such an upload is
    /// still being created (its id not known yet), the record waits for a later pass.
    async fn ids_near_not_live(
        &self,
        provider: Option<&Arc<Provider>>,
        record: &Record,
    ) -> Result<Vec<String>, String> {
        let live_ids = || -> Result<Vec<String>, String> {
            let live = self.live.lock().unwrap();
            let same_key = live
                .values()
                .filter(|r| r.provider == record.provider && r.key == record.key);
            let mut ids = Vec::new();
            for r in same_key {
                match &r.upload_id {
                    Some(id) => ids.push(id.clone()),
                    None => return Err("an upload of the same key is being created".to_string()),
                }
            }
            Ok(ids)
        };
        live_ids()?;
        let found = ids_near(provider, record).await?;
        // Asked again after the listing: an upload created meanwhile is live by now, or still being created.
        let live = live_ids()?;
        Ok(found.into_iter().filter(|id| !live.contains(id)).collect())
    }
}

/// The ids of the uploads of `record`'s key created near the record's time: those its process may have created
/// without living to record the id. An error when they cannot be listed.
async fn ids_near(
    provider: Option<&Arc<Provider>>,
    record: &Record,
) -> Result<Vec<String>, String> {
    let Some(direct) = provider.and_then(|p| p.s3_direct.as_ref()) else {
        return Err("the provider cannot list multipart uploads".to_string());
    };
    let since = record
        .since
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .ok_or("the record has no time")?;
    let window = chrono::Duration::from_std(ID_UNKNOWN_WINDOW).expect("fits");
    Ok(direct
        .uploads_of(&record.key)
        .await?
        .into_iter()
        .filter(|u| {
            u.initiated
                .is_some_and(|t| t >= since - window && t <= since + window)
        })
        .map(|u| u.upload_id)
        .collect())
}

/// Whether record `file` (named `<pid>-<n>.json`) belongs to another process that is still running — a
/// `zmount migrate` beside the mount, sharing its cache dir: its uploads are not orphans. A process is the
/// record's when its start time is the recorded one (ids are reused); a zombie is not running.
fn started_by_another_live_process(file: &Path, started: Option<u64>) -> bool {
    let pid = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid != std::process::id() => match (process_started(pid), started) {
            (None, _) => false,
            (Some(now), Some(recorded)) => now == recorded,
            (Some(_), None) => true,
        },
        _ => false,
    }
}

/// When process `pid` started (clock ticks since boot), None when it is not running (or a zombie).
fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, the fields after the last `)` do not.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_record_of_an_earlier_holder_of_its_id_is_not_its() {
        let me = std::process::id();
        assert!(process_started(me).is_some(), "this process runs");
        assert!(process_started(u32::MAX - 1).is_none());
        // A child of this process, as another process would be.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let file = PathBuf::from(format!("/x/{}-0.json", child.id()));
        let child_started = process_started(child.id()).expect("child runs");
        assert!(started_by_another_live_process(&file, Some(child_started)));
        assert!(started_by_another_live_process(&file, None));
        assert!(!started_by_another_live_process(
            &file,
            Some(child_started + 1)
        ));
        child.kill().unwrap();
        // Killed but not yet reaped: a zombie, not running.
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !started_by_another_live_process(&file, Some(child_started))
        });
        child.wait().unwrap();
        assert!(
            zombie,
            "a killed child is still taken for a running process"
        );
        assert!(!started_by_another_live_process(&file, Some(child_started)));
    }
}
