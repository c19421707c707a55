//! The write journal: acknowledged versions that are not on their provider yet, on local disk under
//! `<cache_dir>/staging/`. Each version is a data file `<id>` and a record `<id>.json` beside it (the mount path it
//! belongs to and what the object gets besides its bytes). A record is written atomically and fsynced, after its
//! data was fsynced, before the version is acknowledged; it is removed once the version is on the provider or made
//! moot (unlinked, or superseded by a newer acknowledged version of the same file).
//!
//! Data files without a record are working copies of files open in this mount; at start-up the ones a previous
//! process left (bytes never acknowledged) are removed. One [`Journal`] per mount, owned by the upload queue.

use super::FileAttrs;
pub use crate::meta::write_durably;
use crate::storage::UploadOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Journal {
    dir: PathBuf,
    next_id: AtomicU64,
}

/// One acknowledged version found in the journal.
#[derive(Debug)]
pub struct Entry {
    /// The data file.
    pub local: PathBuf,
    pub path: String,
    pub attrs: FileAttrs,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// Mount path the staged data becomes.
    path: String,
    /// User metadata the object gets (mode, owner, times included).
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    content_type: Option<String>,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            next_id: AtomicU64::new(0),
        }
    }

    /// A number no earlier version of this mount had (tells a finished upload whether its version is current).
    pub fn next_generation(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty data file (a working copy), named so that names sort by creation time.
    pub fn new_file(&self) -> std::io::Result<(PathBuf, std::fs::File)> {
        std::fs::create_dir_all(&self.dir)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let local = self.dir.join(format!(
            "{:020}-{}-{id:06}",
            started.as_nanos(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&local)?;
        Ok((local, file))
    }

    /// Durably records that `local` (already fsynced) holds the acknowledged version of `path`.
    pub fn record(&self, local: &Path, path: &str, attrs: &FileAttrs) -> std::io::Result<()> {
        let options = attrs.upload_options();
        let body = serde_json::to_vec(&Record {
            path: path.to_string(),
            metadata: options.metadata,
            tags: options.tags,
            content_type: options.content_type,
        })
        .expect("a record serializes");
        write_durably(&record_of(local), &body)
    }

    /// Forgets the version in `local` (its record first, so a crash in between leaves unclaimed data, which the
    /// next start removes); `keep_data` keeps the data file (still a working copy).
    pub fn remove(&self, local: &Path, keep_data: bool) {
        let _ = std::fs::remove_file(record_of(local));
        if !keep_data {
            let _ = std::fs::remove_file(local);
        }
    }

    /// Every acknowledged version, oldest first. Removes what no record claims (never acknowledged) and records
    /// cut short; of two versions of one path (a crash between writing the newer and removing the older), only
    /// the newer is kept. Call once, before the mount serves.
    pub fn recover(&self) -> (Vec<Entry>, usize) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return (Vec::new(), 0);
        };
        let mut data = Vec::new();
        for entry in listing.flatten() {
            let file = entry.path();
            match file.extension().and_then(|e| e.to_str()) {
                Some("tmp") => {
                    let _ = std::fs::remove_file(&file);
                }
                None => data.push(file),
                _ => {}
            }
        }
        data.sort();
        let mut discarded = 0;
        let mut found: Vec<Entry> = Vec::new();
        for local in data {
            let record = std::fs::read(record_of(&local))
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            let Some(record) = record else {
                let _ = std::fs::remove_file(record_of(&local));
                let _ = std::fs::remove_file(&local);
                discarded += 1;
                continue;
            };
            if let Some(i) = found.iter().position(|e| e.path == record.path) {
                let older = found.remove(i);
                self.remove(&older.local, false);
            }
            let options = UploadOptions {
                content_type: record.content_type,
                metadata: record.metadata,
                tags: record.tags,
            };
            found.push(Entry {
                local,
                path: record.path,
                attrs: FileAttrs::from_options(options),
            });
        }
        // Records whose data file is gone cannot be uploaded; they are dropped with a loud message.
        if let Ok(listing) = std::fs::read_dir(&self.dir) {
            for entry in listing.flatten() {
                let record = entry.path();
                if record.extension().and_then(|e| e.to_str()) == Some("json")
                    && !record.with_extension("").exists()
                {
                    tracing::error!(
                        "journal: {} has no data file; the version it recorded is lost",
                        record.display()
                    );
                    let _ = std::fs::remove_file(&record);
                }
            }
        }
        (found, discarded)
    }

    /// Acknowledged versions waiting for their upload.
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
                .count()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The journal record beside a data file.
fn record_of(local: &Path) -> PathBuf {
    local.with_extension("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_keeps_acknowledged_versions_only_newest_per_path() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let attrs = FileAttrs::default();
        let (old, _) = journal.new_file().unwrap();
        journal.record(&old, "a", &attrs).unwrap();
        let (unacked, _) = journal.new_file().unwrap();
        let (new, _) = journal.new_file().unwrap();
        journal.record(&new, "a", &attrs).unwrap();
        let (other, _) = journal.new_file().unwrap();
        journal.record(&other, "b", &attrs).unwrap();
        let (found, discarded) = Journal::new(dir.path()).recover();
        assert_eq!(discarded, 1);
        let got: Vec<_> = found.iter().map(|e| (e.path.as_str(), &e.local)).collect();
        assert_eq!(got, vec![("a", &new), ("b", &other)]);
        assert!(!old.exists() && !unacked.exists());
        assert_eq!(journal.len(), 2);
    }
}
