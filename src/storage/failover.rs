//! Failover between a route's providers: which provider a read asks first, where a write goes when the primary is
//! down, and the heal that copies failover writes back to their primary.
//!
//! Reads ask the route's providers in order (primary, then fallbacks) and take the first that holds the object;
//! a provider that has not answered within its hedge delay is raced by the next one, and a provider marked slow is
//! asked last (see `crate::providers::hedge`).
//! "Not found" and "unavailable" both move on to the next provider; when none has the object, an answer ("not
//! found") beats an outage, so a file can be created while its primary is down. A path with a pending heal is read
//! from the fallback that holds its newest bytes first.
//!
//! Writes on a `write = "failover"` route that find the primary unavailable go to the first fallback that takes
//! them. A heal record (`<cache_dir>/heal/<id>.json`, written and fsynced before the write is acknowledged) says
//! which fallback holds the file; [`Heals`] keeps them in memory too. A heal pass copies each file back to the
//! primary once it answers, checks the size, then removes the fallback copy (unless `keep_fallback_copy`).
//!
//! Lock order: a path's lock from [`Heals::lock_of`] (tokio mutex, held across the upload of that path; a rename
//! holds two, taken in path order by `Storage::lock_paths`), then `Heals::pending` or `Heals::locks` (std mutexes,
//! never held across an await, never both at once).

use super::{Result, StorageError};
use crate::providers::hedge::{race, Raced};
use crate::providers::{Attempts, Provider, ProviderClient};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A file written to a fallback because its primary was down.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealRecord {
    /// Mount path.
    pub path: String,
    /// The fallback provider holding the file.
    pub holder: String,
    /// The primary it belongs on.
    pub primary: String,
    /// When the failover write finished (milliseconds since the epoch, local clock).
    pub written_at_ms: i64,
    #[serde(skip)]
    file: PathBuf,
}

/// The pending heals, on disk and in memory.
#[derive(Debug)]
pub struct Heals {
    dir: PathBuf,
    pending: Mutex<HashMap<String, HealRecord>>,
    /// One lock per path with a heal pending or a write in progress: held by a write (or delete) through its
    /// upload, and tried by the heal of that path, so a heal never copies old bytes over a newer write.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

static NEXT_RECORD: AtomicU64 = AtomicU64::new(0);

impl Heals {
    /// Loads the records in `dir` (a previous mount's pending heals). Record files are named by creation time,
    /// so when a crash left two for one path, the newer wins and the older is removed.
    pub fn open(dir: &Path) -> Heals {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        files.sort();
        let mut pending: HashMap<String, HealRecord> = HashMap::new();
        for file in files {
            let record = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<HealRecord>(&b).ok());
            if let Some(mut record) = record {
                record.file = file;
                if let Some(older) = pending.insert(record.path.clone(), record) {
                    let _ = std::fs::remove_file(older.file);
                }
            }
        }
        Heals {
            dir: dir.to_path_buf(),
            pending: Mutex::new(pending),
            locks: Mutex::default(),
        }
    }

    /// The fallback that holds the newest bytes of `path`, if a heal is pending.
    pub fn holder_of(&self, path: &str) -> Option<String> {
        self.pending
            .lock()
            .unwrap()
            .get(path)
            .map(|r| r.holder.clone())
    }

    pub fn is_pending(&self, path: &str) -> bool {
        self.pending.lock().unwrap().contains_key(path)
    }

    /// Providers holding pending heals at or below directory `dir`: a listing of `dir` cannot do without them.
    pub fn holders_under(&self, dir: &str) -> Vec<String> {
        let pending = self.pending.lock().unwrap();
        let mut holders: Vec<String> = pending
            .values()
            .filter(|r| crate::routing::is_within(&r.path, dir))
            .map(|r| r.holder.clone())
            .collect();
        holders.sort();
        holders.dedup();
        holders
    }

    pub fn records(&self) -> Vec<HealRecord> {
        self.pending.lock().unwrap().values().cloned().collect()
    }

    /// The lock of `path` (see [`Heals::locks`]).
    pub fn lock_of(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap();
        // Locks nobody holds or waits for are dropped, so the map stays as small as the work in flight.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(path.to_string()).or_default().clone()
    }

    /// Durably records that `holder` has the newest bytes of `path`.
    pub fn record(&self, path: &str, holder: &str, primary: &str) -> std::io::Result<()> {
        let id = NEXT_RECORD.fetch_add(1, Ordering::Relaxed);
        let now = chrono::Utc::now();
        let file = self.dir.join(format!(
            "{:020}-{}-{id:06}.json",
            now.timestamp_nanos_opt().unwrap_or_default(),
            std::process::id()
        ));
        let record = HealRecord {
            path: path.to_string(),
            holder: holder.to_string(),
            primary: primary.to_string(),
            written_at_ms: now.timestamp_millis(),
            file: file.clone(),
        };
        std::fs::create_dir_all(&self.dir)?;
        crate::meta::write_durably(&file, &serde_json::to_vec(&record)?)?;
        let old = self
            .pending
            .lock()
            .unwrap()
            .insert(path.to_string(), record);
        if let Some(old) = old {
            let _ = std::fs::remove_file(old.file);
        }
        Ok(())
    }

    /// Forgets the heal of `path` (made moot by a newer write or a delete).
    pub fn forget(&self, path: &str) -> Option<HealRecord> {
        let record = self.pending.lock().unwrap().remove(path)?;
        let _ = std::fs::remove_file(&record.file);
        Some(record)
    }

    /// Forgets `record` if it is still the pending heal of its path (a newer failover write replaces it).
    pub fn forget_done(&self, record: &HealRecord) -> bool {
        let mut pending = self.pending.lock().unwrap();
        if pending
            .get(&record.path)
            .is_some_and(|r| r.file == record.file)
        {
            pending.remove(&record.path);
            drop(pending);
            let _ = std::fs::remove_file(&record.file);
            return true;
        }
        false
    }
}

/// What one heal pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HealReport {
    /// Paths copied back to their primary.
    pub healed: Vec<String>,
    /// Paths whose heal must wait (primary still down, or a copy failed).
    pub waiting: Vec<String>,
}

/// Asks providers in order until one answers with the object; "not found" and "unavailable" move on (a provider
/// that has somewhere to send the caller gets `primary_read_attempts`). Before concluding that no provider has
/// the object, the providers that failed are asked again with the full retry schedule (unless marked down), so
/// a passing error never makes a file look missing. When none has it, "not found" wins over an outage (see the
/// module note).
pub async fn first_holder<'a, T, F, Fut>(
    order: &[&'a std::sync::Arc<Provider>],
    primary: &str,
    path: &str,
    op: F,
) -> Result<(T, &'a std::sync::Arc<Provider>)>
where
    F: FnMut(ProviderClient<'a>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    first_holder_with(order, primary, path, false, op).await
}

/// [`first_holder`]; with `missing_concludes`, a "not found" from a provider that answered a hedged request
/// concludes too (for lookups whose "not found" only means "defaults", such as a directory's marker: a stalled
/// primary must not hold up a directory's attributes for its timeouts).
pub async fn first_holder_with<'a, T, F, Fut>(
    order: &[&'a std::sync::Arc<Provider>],
    primary: &str,
    path: &str,
    missing_concludes: bool,
    mut op: F,
) -> Result<(T, &'a std::sync::Arc<Provider>)>
where
    F: FnMut(ProviderClient<'a>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    // A provider marked slow is asked after the others (see crate::providers::hedge).
    let mut order: Vec<&'a std::sync::Arc<Provider>> = order.to_vec();
    order.sort_by_key(|p| p.health.pace.is_slow());
    let (mut missing, mut down) = (None, None);
    let mut failed = Vec::new();
    let count = order.len();
    let first_pass = order
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, Attempts::unless_sole(i + 1 < count, Attempts::Fast)));
    let mut queue: std::collections::VecDeque<_> = first_pass.collect();
    while let Some((provider, fallback)) = queue.pop_front() {
        // In the first pass, a provider that does not answer within its hedge delay is raced by the next one.
        let next = match fallback {
            Attempts::Fast => queue.front().copied(),
            _ => None,
        };
        let raced = race(
            &provider.health,
            op(provider.client(fallback)),
            || next.map(|(p, f)| op(p.client(f))),
            |answer: &Result<T>| match answer {
                Ok(_) => true,
                Err(e) => missing_concludes && e.is_not_found(),
            },
        )
        .await;
        let answers = match raced {
            Raced::Alone(a) | Raced::First(a) => vec![(provider, fallback, a)],
            Raced::Second(b) => {
                let (p, f) = queue.pop_front().expect("the provider raced");
                vec![(p, f, b)]
            }
            Raced::Neither(a, b) => {
                let (p, f) = queue.pop_front().expect("the provider raced");
                vec![(provider, fallback, a), (p, f, b)]
            }
        };
        for (provider, fallback, answer) in answers {
            match answer {
                Ok(value) => {
                    if provider.name != primary {
                        provider
                            .health
                            .counters
                            .served_as_fallback
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("{path}: served by fallback `{}`", provider.name);
                    }
                    return Ok((value, provider));
                }
                Err(e) if e.is_not_found() => {
                    missing.get_or_insert(e);
                }
                Err(e) if e.is_unavailable() => {
                    if fallback == Attempts::Fast {
                        failed.push(provider);
                    }
                    down.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        // A "not found" that concludes anyway is not held up by providers marked slow (whose fallbacks answered).
        if missing_concludes
            && missing.is_some()
            && queue.iter().all(|(p, _)| p.health.pace.is_slow())
        {
            break;
        }
        if queue.is_empty() && missing.is_some() {
            // About to conclude "not found": the providers that failed quickly get their full retries first.
            queue.extend(failed.drain(..).map(|p| (p, Attempts::Full)));
        }
    }
    Err(missing.or(down).unwrap_or_else(|| StorageError::NoRoute {
        path: path.to_string(),
        config: "the config".to_string(), // no provider to ask: resolve refuses such paths first
    }))
}

use super::{Storage, UploadOptions};
use object_store::GetOptions;

impl Storage {
    /// Copies every pending failover write back to its primary (see [`failover`]); the ones that cannot be
    /// copied yet stay pending. Paths `busy` names (open for writing) and paths being written are left for the
    /// next pass.
    pub async fn heal_pending(&self, busy: impl Fn(&str) -> bool) -> HealReport {
        let mut report = HealReport::default();
        for record in self.heals.records() {
            let lock = self.heals.lock_of(&record.path);
            let Ok(_exclusive) = lock.try_lock() else {
                report.waiting.push(record.path);
                continue;
            };
            if busy(&record.path) {
                report.waiting.push(record.path);
                continue;
            }
            if self.heals.holder_of(&record.path).as_deref() != Some(record.holder.as_str()) {
                continue; // made moot, or replaced by a newer failover write, while this pass ran
            }
            match self.heal_one(&record).await {
                Ok(()) => {
                    self.heals.forget_done(&record);
                    report.healed.push(record.path);
                }
                Err(e) => {
                    tracing::debug!("heal of {} must wait: {e}", record.path);
                    report.waiting.push(record.path);
                }
            }
        }
        report
    }

    pub(super) async fn heal_one(&self, record: &HealRecord) -> Result<()> {
        let missing = |name: &str| StorageError::Invalid {
            path: record.path.clone(),
            what: "heal record",
            reason: format!("provider `{name}` is no longer configured"),
        };
        let holder = self
            .providers
            .get(&record.holder)
            .ok_or_else(|| missing(&record.holder))?;
        let primary = self
            .providers
            .get(&record.primary)
            .ok_or_else(|| missing(&record.primary))?;
        let path = &record.path;
        // A heal has somewhere to go when the primary does not answer: the next pass. So its requests fail at
        // once while a provider is marked down, instead of each record waiting out a timeout.
        let (on_primary, on_holder) = (
            primary.client(Attempts::Full),
            holder.client(Attempts::Full),
        );
        match on_primary.head(path).await {
            Ok(meta) if meta.last_modified.timestamp_millis() > record.written_at_ms => {
                // Written on the primary by someone else after the failover write: a conflict. The primary's copy
                // stays; the fallback's is kept too (never deleted on the strength of two clocks), and logged.
                tracing::warn!(
                    "{path}: `{}` has a copy newer than the failover write; keeping both: the failover write stays on `{}` ({}) at {}",
                    primary.name, holder.name, holder.location, holder.key_for(path)
                );
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let source = match on_holder.get(path, GetOptions::default()).await {
            Ok(source) => source,
            Err(e) if e.is_not_found() => return Ok(()), // deleted or moved meanwhile
            Err(e) => return Err(e),
        };
        let size = source.meta().size;
        let info = self.info_from(
            holder,
            path.clone(),
            source.meta(),
            Some(source.attributes()),
        );
        let options = UploadOptions {
            content_type: Some(info.content_type),
            metadata: info.metadata,
            tags: info.tags,
        };
        let chunks = futures::TryStreamExt::map_err(source.into_stream(), std::io::Error::other);
        let resolved = self.resolve(path)?.1;
        let written = self
            .upload_stream_to(on_primary, path, &resolved, chunks, options)
            .await?;
        if written.size != size {
            return Err(StorageError::Invalid {
                path: path.clone(),
                what: "heal",
                reason: format!("copied {} bytes of {size}", written.size),
            });
        }
        primary
            .health
            .counters
            .heals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "{path}: healed: copied {size} bytes from fallback `{}` back to `{}`",
            holder.name,
            primary.name
        );
        self.remove_fallback_copy(path, &holder.name).await;
        Ok(())
    }
}
