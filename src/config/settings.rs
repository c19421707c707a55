//! `[settings]`: the global settings (cache, retries, timeouts, failover, CDN, mount), each with its defaults.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Local folder for the block cache and write staging.
    #[serde(default = "Settings::default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Hard cap on the disk cache.
    #[serde(default = "Settings::default_cache_size")]
    pub cache_size: ByteSize,
    /// Largest file a write may produce; unset means the provider's own limit.
    pub max_file_size: Option<ByteSize>,
    #[serde(default)]
    pub retry: RetrySettings,
    #[serde(default)]
    pub timeouts: TimeoutSettings,
    #[serde(default)]
    pub failover: FailoverSettings,
    #[serde(default)]
    pub cdn: CdnSettings,
    #[serde(default)]
    pub mount: MountSettings,
    #[serde(default)]
    pub images: ImageSettings,
}

impl Settings {
    fn default_cache_dir() -> PathBuf {
        PathBuf::from(".zmount-data/cache")
    }
    /// 10 GiB: large enough to hold the working set of most interactive use, small enough for a laptop disk.
    fn default_cache_size() -> ByteSize {
        ByteSize::gib(10)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_dir: Self::default_cache_dir(),
            cache_size: Self::default_cache_size(),
            max_file_size: None,
            retry: RetrySettings::default(),
            timeouts: TimeoutSettings::default(),
            failover: FailoverSettings::default(),
            cdn: CdnSettings::default(),
            mount: MountSettings::default(),
            images: ImageSettings::default(),
        }
    }
}

/// The proposal's STORAGE_RETRY_ATTEMPTS / _DELAY / _EXPONENTIAL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Total attempts per request, the first one included.
    #[serde(default = "RetrySettings::default_attempts")]
    pub attempts: u32,
    /// Seconds before the first retry.
    #[serde(default = "RetrySettings::default_delay")]
    pub delay: f64,
    /// Double the delay after every retry.
    #[serde(default = "RetrySettings::default_exponential")]
    pub exponential: bool,
    /// Seconds from a request's first attempt after which no new attempt starts (the attempt under way still gets
    /// its timeout): the time a request may spend riding out errors.
    #[serde(default = "RetrySettings::default_budget")]
    pub budget: f64,
}

impl RetrySettings {
    /// 10: with 1 request in 10 failing (a 503 burst), ten failures in a row are a one-in-ten-billion event, so a
    /// copy of thousands of files goes through; the budget bounds how long that may take.
    fn default_attempts() -> u32 {
        10
    }
    /// 0.1 s, doubling: 0.1, 0.2, 0.4 ... (with jitter), so a lone 503 costs a tenth of a second and nine retries
    /// fit in the default budget.
    fn default_delay() -> f64 {
        0.1
    }
    /// 30 s: what a program blocked on one file operation can reasonably wait through a provider's bad minute.
    fn default_budget() -> f64 {
        30.0
    }
    fn default_exponential() -> bool {
        true
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            attempts: Self::default_attempts(),
            delay: Self::default_delay(),
            exponential: Self::default_exponential(),
            budget: Self::default_budget(),
        }
    }
}

/// Per-request timeouts, in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    /// Establishing a connection. 5 s: a healthy endpoint answers in milliseconds; anything slower is down.
    #[serde(default = "TimeoutSettings::default_connect")]
    pub connect: f64,
    /// Longest silence while waiting for response bytes. 30 s tolerates a slow first byte on a cold object.
    #[serde(default = "TimeoutSettings::default_read")]
    pub read: f64,
    /// Longest wait for a response to begin (the headers of a GET, HEAD, LIST, DELETE or COPY), per attempt. 10 s:
    /// a healthy store answers in milliseconds even for large objects; a provider that accepts connections and
    /// then says nothing (stalled) is detected after this long and its reads go to a fallback.
    #[serde(default = "TimeoutSettings::default_first_byte")]
    pub first_byte: f64,
    /// Longest one attempt of a whole request may take, body included (an upload part, a PUT, one cached block
    /// read). 120 s: an 8 MiB part needs only 0.7 Mbit/s to finish in time.
    #[serde(default = "TimeoutSettings::default_total")]
    pub total: f64,
}

impl TimeoutSettings {
    fn default_connect() -> f64 {
        5.0
    }
    fn default_read() -> f64 {
        30.0
    }
    fn default_first_byte() -> f64 {
        10.0
    }
    fn default_total() -> f64 {
        120.0
    }
    pub fn first_byte(&self) -> Duration {
        Duration::from_secs_f64(self.first_byte)
    }
    pub fn total(&self) -> Duration {
        Duration::from_secs_f64(self.total)
    }
    pub fn connect(&self) -> Duration {
        Duration::from_secs_f64(self.connect)
    }
    pub fn read(&self) -> Duration {
        Duration::from_secs_f64(self.read)
    }
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        TimeoutSettings {
            connect: Self::default_connect(),
            read: Self::default_read(),
            first_byte: Self::default_first_byte(),
            total: Self::default_total(),
        }
    }
}

/// Provider health and what happens when a route's primary fails (see docs/SEMANTICS.md, "Failover").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSettings {
    /// Failed attempts in a row (after which a provider counts as down): its requests then go straight to the
    /// fallbacks for `cooldown` seconds. 5: one unlucky request (a 503, a dropped connection) never trips it.
    #[serde(default = "FailoverSettings::default_failure_threshold")]
    pub failure_threshold: u32,
    /// Seconds a down provider is skipped before one probe request may try it again.
    #[serde(default = "FailoverSettings::default_cooldown")]
    pub cooldown: f64,
    /// Seconds between background passes that retry staged uploads and copy failover writes back to their
    /// primary ("heal").
    #[serde(default = "FailoverSettings::default_heal_interval")]
    pub heal_interval: f64,
    /// After a heal, keep the copy on the fallback instead of removing it.
    #[serde(default)]
    pub keep_fallback_copy: bool,
    /// Attempts a read makes on a provider before moving on to the next one that may hold the object (the last
    /// one always gets `retry.attempts`). 1: the fallback is the retry, so a dead primary costs one failed
    /// attempt, not the backoff schedule. Set it to `retry.attempts` to retry the primary first.
    #[serde(default = "FailoverSettings::default_primary_read_attempts")]
    pub primary_read_attempts: u32,
}

impl FailoverSettings {
    fn default_failure_threshold() -> u32 {
        5
    }
    fn default_cooldown() -> f64 {
        10.0
    }
    fn default_heal_interval() -> f64 {
        15.0
    }
    fn default_primary_read_attempts() -> u32 {
        1
    }
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs_f64(self.cooldown.max(0.0))
    }
    pub fn heal_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heal_interval.max(0.1))
    }
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            failure_threshold: Self::default_failure_threshold(),
            cooldown: Self::default_cooldown(),
            heal_interval: Self::default_heal_interval(),
            keep_fallback_copy: false,
            primary_read_attempts: Self::default_primary_read_attempts(),
        }
    }
}

/// The proposal's STORAGE_CDN_ENABLED / STORAGE_CDN_DOMAIN: `get_url` returns `https://<domain>/<path>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdnSettings {
    #[serde(default)]
    pub enabled: bool,
    pub domain: Option<String>,
}

/// How the mounted tree looks and caches: `[settings.mount]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountSettings {
    /// Seconds a file's or directory's attributes (and a directory listing) are trusted before the provider is
    /// asked again. Changes made behind the mount's back show up after at most this long.
    pub attr_ttl: f64,
    /// Seconds a "no such file" answer is trusted.
    pub negative_ttl: f64,
    /// Owner and group shown for every entry (default: the user running zmount).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits for files and directories without stored modes.
    pub file_mode: u32,
    pub dir_mode: u32,
    /// In-memory block cache (recently read and read-ahead blocks).
    pub memory_cache_size: ByteSize,
    /// Largest read-ahead window of one sequential reader.
    pub read_ahead: ByteSize,
    /// Seconds a write-back route waits after a file's `close` before uploading it, so that what programs do
    /// right after writing (set times and mode, rename into place) joins that one upload.
    pub write_back_delay: f64,
    /// Threads taking requests from the kernel. Most requests are handed to the async core at once; a read of cached
    /// bytes and `readdir` are answered on the thread that took them.
    pub threads: u32,
    /// Entries per page of a directory listing handed to the kernel as it arrives (S3 and GCS send 1,000 at most).
    pub list_page: u32,
}

impl Default for MountSettings {
    fn default() -> Self {
        MountSettings {
            attr_ttl: 5.0,
            negative_ttl: 5.0,
            uid: None,
            gid: None,
            file_mode: 0o644,
            dir_mode: 0o755,
            // 32 MiB: room for read-ahead to hand blocks to their readers; the warm working set lives on disk. The
            // daemon's peak resident memory over scripts/bench/compare.sh's workloads is about 100 MiB with it (48
            // MiB read 15% faster cold here and peaked higher).
            memory_cache_size: ByteSize::mib(32),
            // 32 MiB: enough requests in flight to fill a fast link; the memory cache must hold several of these.
            read_ahead: ByteSize::mib(32),
            // 1 s: rsync, cp -p and tar set a file's times and mode and rename it within milliseconds of its close.
            write_back_delay: 1.0,
            // 2: a reader and the thread answering it then sit on one CPU more often; a random 4 KiB read of cached
            // bytes went from ~70 µs to ~45 µs on a 2-core machine (4 threads: no faster). See BENCHMARKS.notes.md.
            threads: 2,
            // The most S3 and GCS send in one page: the fewest requests for a large directory.
            list_page: 1000,
        }
    }
}
