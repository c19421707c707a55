//! `mount.toml`: what the user writes, parsed strictly.
//!
//! Owns the config schema (providers, routes, global settings), `${ENV}` expansion and validation that needs the
//! whole file (a route naming a provider that does not exist). Unknown keys are errors everywhere: a typo must not
//! silently fall back to a default. Parsing happens in two stages so that errors keep their context: the file
//! first (TOML syntax, global settings, with line/column), then each provider table once its `kind` is known.
//! Relative paths (local provider roots, cache dir, credential files) are resolved against the config file's folder,
//! so a config behaves the same from any working directory.

mod error;
mod images;
mod secret;
mod size;

pub use error::ConfigError;

/// The block cache's block size: 1 MiB. Large enough that a sequential read is a few hundred requests per GiB,
/// small enough that a random 4 KiB read does not drag in much more than it needs. Cache sizes are checked against
/// it here.
pub const BLOCK_SIZE: u64 = 1024 * 1024;
pub use images::{Fit, ImageSettings, OutputFormat, RouteImages, Transform};
use secret::expand_env_if_set;
pub use secret::{expand_env, Redactor, Secret};
pub use size::{parse_size, ByteSize};

use error::{describe_serde_error, line_col};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fully parsed and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub file: PathBuf,
    pub settings: Settings,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routing rules in file order; the first that matches a path wins.
    pub routes: Vec<RouteConfig>,
    /// Where paths no rule matches go; without it such paths are refused.
    pub default: Option<RouteConfig>,
}

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
        }
    }
}

/// One provider as configured; the variant is its `kind`.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    S3(S3Config),
    Wasabi(S3Config),
    Gcs(GcsConfig),
    Azure(AzureConfig),
    Local(LocalConfig),
}

impl ProviderConfig {
    pub const KINDS: [&'static str; 5] = ["s3", "wasabi", "gcs", "azure", "local"];

    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::S3(_) => "s3",
            ProviderConfig::Wasabi(_) => "wasabi",
            ProviderConfig::Gcs(_) => "gcs",
            ProviderConfig::Azure(_) => "azure",
            ProviderConfig::Local(_) => "local",
        }
    }

    pub fn common(&self) -> CommonOptions {
        let (prefix, read_only) = match self {
            ProviderConfig::S3(c) | ProviderConfig::Wasabi(c) => (&c.prefix, c.read_only),
            ProviderConfig::Gcs(c) => (&c.prefix, c.read_only),
            ProviderConfig::Azure(c) => (&c.prefix, c.read_only),
            ProviderConfig::Local(c) => (&c.prefix, c.read_only),
        };
        CommonOptions {
            prefix: prefix.clone(),
            read_only,
        }
    }
}

/// Keys every provider kind accepts (`prefix`, `read_only`), whatever its kind.
#[derive(Debug, Clone, Default)]
pub struct CommonOptions {
    pub prefix: String,
    pub read_only: bool,
}

/// `s3` and `wasabi` (Wasabi is S3 with an endpoint derived from its region).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    #[serde(default = "S3Config::default_region")]
    pub region: String,
    /// For S3-compatible stores (MinIO, R2, SeaweedFS...); for Wasabi, overrides the derived endpoint.
    pub endpoint: Option<String>,
    pub access_key: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Use `bucket.host` URLs instead of `host/bucket`.
    #[serde(default)]
    pub virtual_hosted: bool,
    /// Key prefix inside the bucket/container/folder; every object key is `prefix/path`.
    #[serde(default)]
    pub prefix: String,
    /// Never write to this provider (`zmount check` skips its write probe).
    #[serde(default)]
    pub read_only: bool,
}

impl S3Config {
    fn default_region() -> String {
        "us-east-1".to_string()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    pub bucket: String,
    /// Path to a service-account JSON file (or the JSON itself); unset means application-default credentials.
    pub credentials: Option<Secret>,
    pub project: Option<String>,
    /// Key prefix inside the bucket/container/folder; every object key is `prefix/path`.
    #[serde(default)]
    pub prefix: String,
    /// Never write to this provider (`zmount check` skips its write probe).
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    pub container: String,
    /// `DefaultEndpointsProtocol=...;AccountName=...;AccountKey=...;BlobEndpoint=...`
    pub connection_string: Option<Secret>,
    pub account: Option<String>,
    pub key: Option<Secret>,
    /// Blob endpoint including the account for emulators, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    /// Without `key` or `connection_string`: authenticate with the machine's Azure identity (managed identity,
    /// through the instance metadata service).
    #[serde(default)]
    pub managed_identity: bool,
    /// Key prefix inside the bucket/container/folder; every object key is `prefix/path`.
    #[serde(default)]
    pub prefix: String,
    /// Never write to this provider (`zmount check` skips its write probe).
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Root folder; created if missing.
    pub path: PathBuf,
    /// URL the folder is served at, for `get_url` (e.g. `http://localhost:8000/media`).
    pub base_url: Option<String>,
    /// Key prefix inside the bucket/container/folder; every object key is `prefix/path`.
    #[serde(default)]
    pub prefix: String,
    /// Never write to this provider (`zmount check` skips its write probe).
    #[serde(default)]
    pub read_only: bool,
}

/// What happens to writes when a route's primary is down (used by failover).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritePolicy {
    #[default]
    Primary,
    Failover,
}

/// One `[[routes]]` entry (exactly one of `prefix`/`pattern`), or the `[default]` table (neither).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Matches the path itself and everything below it, on whole path components.
    pub prefix: Option<String>,
    /// Glob on the whole path; `|` separates alternatives; `*` also crosses `/`.
    pub pattern: Option<String>,
    pub provider: String,
    /// Ordered fallback providers.
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub write: WritePolicy,
    pub max_file_size: Option<ByteSize>,
    /// `close` returns once the data is durably staged on local disk; uploads run in the background (many at
    /// once). `fsync` still waits for the upload, and unmounting waits for the queue.
    #[serde(default)]
    pub write_back: bool,
    /// User metadata every new file of the route gets (keys lowercased).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Tags every new file of the route gets.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Applied to each image file of the route itself after it is written (see `src/images`).
    pub transforms: Option<Transform>,
    /// Named sizes/formats written as separate objects beside each image (`photo.<name>.jpg`).
    #[serde(default)]
    pub variants: BTreeMap<String, Transform>,
    /// Folder the variants go under instead of beside the original (`<folder>/<original's path>`).
    pub variants_under: Option<String>,
}

/// The file's top level, before provider tables are typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    settings: Settings,
    #[serde(default)]
    providers: BTreeMap<String, toml::Table>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    default: Option<RouteConfig>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, UnsetSecrets::Refuse)
    }

    /// [`Config::load`] for commands that make no requests (`explain`): a secret whose environment variable is
    /// not set is left out instead of refused.
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, UnsetSecrets::LeaveOut)
    }

    fn load_with(path: &Path, unset: UnsetSecrets) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot read config file: {e}")))?;
        // Anchor relative paths in the config to an absolute folder: a daemon may change directory later.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self::parse_with(&text, &absolute, unset)
    }

    /// Parses config text; `file` names it in errors and anchors relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, file, UnsetSecrets::Refuse)
    }

    fn parse_with(text: &str, file: &Path, unset: UnsetSecrets) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let inner = e.inner();
                let (key, message) = describe_serde_error(&e.path().to_string(), inner.message());
                let mut err = ConfigError::new(file, key, message);
                err.position = inner.span().map(|s| line_col(text, s.start));
                if err.key.is_empty() && err.position.is_some() {
                    err.message = format!("TOML syntax error: {}", err.message);
                }
                err
            })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut providers = BTreeMap::new();
        for (name, table) in raw.providers {
            let provider = parse_provider(file, &name, table, unset).map_err(|mut e| {
                if e.position.is_none() {
                    e.position = locate_provider_key(text, &name, &e.key);
                }
                e
            })?;
            providers.insert(name, resolve_provider_paths(provider, &base));
        }
        let mut settings = raw.settings;
        settings.cache_dir = base.join(&settings.cache_dir);
        let config = Config {
            file: file.to_path_buf(),
            settings,
            providers,
            routes: raw.routes,
            default: raw.default,
        };
        config.validate().map_err(|mut e| {
            if let Some(name) = e
                .key
                .strip_prefix("providers.")
                .and_then(|k| k.split('.').next())
            {
                e.position = e
                    .position
                    .or_else(|| locate_provider_key(text, name, &e.key));
            }
            e
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: String, msg: String| Err(ConfigError::new(&self.file, key, msg));
        if self.providers.is_empty() {
            return err(
                "providers".into(),
                "no providers defined; add at least one [providers.NAME] table".into(),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            match (&route.prefix, &route.pattern) {
                (Some(_), Some(_)) => {
                    return err(key, "give either `prefix` or `pattern`, not both".into())
                }
                (None, None) => return err(key, "missing `prefix` or `pattern`".into()),
                _ => {}
            }
            self.check_route_providers(&key, route)?;
        }
        if let Some(default) = &self.default {
            if default.prefix.is_some() || default.pattern.is_some() {
                return err(
                    "default".into(),
                    "the default route takes no `prefix` or `pattern`".into(),
                );
            }
            self.check_route_providers("default", default)?;
        }
        self.check_ranges()?;
        for (name, provider) in &self.providers {
            self.check_provider(name, provider)?;
        }
        if self.settings.images.workers == 0 || self.settings.images.max_pixels == 0 {
            return err(
                "settings.images".into(),
                "`workers` and `max_pixels` must be at least 1".into(),
            );
        }
        if self.settings.cdn.enabled && self.settings.cdn.domain.is_none() {
            return err(
                "settings.cdn.domain".into(),
                "required when settings.cdn.enabled = true".into(),
            );
        }
        Ok(())
    }

    /// What a mount (and `zmount check`) needs beyond a valid file: some path must lead somewhere. A config of
    /// providers only is fine for `migrate`/`sync`/`url`, which name providers themselves.
    pub fn check_mountable(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() && self.default.is_none() {
            return Err(ConfigError::new(
                &self.file,
                "default",
                "no [[routes]] and no [default]: every path of the mount would be refused; add `[default]` with `provider = \"NAME\"`",
            ));
        }
        Ok(())
    }

    /// Every number of `[settings]` within the range where the feature it tunes works: finite, not negative, below a
    /// ceiling past which it is surely a typo (a `nan` or a `1e300` would otherwise reach a panic or a hang later).
    fn check_ranges(&self) -> Result<(), ConfigError> {
        const DAY: f64 = 86_400.0;
        let s = &self.settings;
        let (t, f, m) = (&s.timeouts, &s.failover, &s.mount);
        // (key, value, smallest allowed, is the smallest itself allowed, largest)
        let seconds = [
            ("settings.timeouts.connect", t.connect, 0.0, false, 3_600.0),
            ("settings.timeouts.read", t.read, 0.0, false, 3_600.0),
            (
                "settings.timeouts.first_byte",
                t.first_byte,
                0.0,
                false,
                3_600.0,
            ),
            ("settings.timeouts.total", t.total, 0.0, false, DAY),
            ("settings.retry.delay", s.retry.delay, 0.0, true, 600.0),
            ("settings.retry.budget", s.retry.budget, 0.0, false, DAY),
            ("settings.failover.cooldown", f.cooldown, 0.0, false, DAY),
            (
                "settings.failover.heal_interval",
                f.heal_interval,
                0.0,
                false,
                DAY,
            ),
            ("settings.mount.attr_ttl", m.attr_ttl, 0.0, true, DAY),
            (
                "settings.mount.negative_ttl",
                m.negative_ttl,
                0.0,
                true,
                DAY,
            ),
            (
                "settings.mount.write_back_delay",
                m.write_back_delay,
                0.0,
                true,
                3_600.0,
            ),
        ];
        for (key, value, min, min_ok, max) in seconds {
            let above = if min_ok { value >= min } else { value > min };
            if !(value.is_finite() && above && value <= max) {
                let low = if min_ok { "at least" } else { "more than" };
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!(
                        "must be a number of seconds, {low} {min} and at most {max}; got {value}"
                    ),
                ));
            }
        }
        let counts = [
            ("settings.retry.attempts", s.retry.attempts, 100),
            (
                "settings.failover.failure_threshold",
                f.failure_threshold,
                1_000_000,
            ),
            (
                "settings.failover.primary_read_attempts",
                f.primary_read_attempts,
                100,
            ),
        ];
        for (key, value, max) in counts {
            if value == 0 || value > max {
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!("must be from 1 to {max}; got {value}"),
                ));
            }
        }
        let block = BLOCK_SIZE;
        let sizes = [
            // The disk cache holds blocks of the files being read: a few blocks at least.
            ("settings.cache_size", s.cache_size.0, 4 * block, 1 << 50),
            // Read-ahead hands blocks through the memory cache: it needs room for more than one.
            (
                "settings.mount.memory_cache_size",
                m.memory_cache_size.0,
                2 * block,
                64 << 30,
            ),
            (
                "settings.mount.read_ahead",
                m.read_ahead.0,
                block,
                m.memory_cache_size.0.max(block),
            ),
        ];
        for (key, value, min, max) in sizes {
            if value < min || value > max {
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!(
                        "must be from {} to {}; got {}",
                        ByteSize(min),
                        ByteSize(max),
                        ByteSize(value)
                    ),
                ));
            }
        }
        for (key, mode) in [
            ("settings.mount.file_mode", m.file_mode),
            ("settings.mount.dir_mode", m.dir_mode),
        ] {
            if mode > 0o7777 {
                return Err(ConfigError::new(
                    &self.file,
                    key,
                    format!("must be permission bits, at most 0o7777 (4095); got {mode} (write it as 0o644)"),
                ));
            }
        }
        if s.cache_dir.is_file() {
            return Err(ConfigError::new(
                &self.file,
                "settings.cache_dir",
                format!(
                    "{} is a file; it must be a folder (it is created if missing)",
                    s.cache_dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// A provider's required strings are not empty and its endpoint is a URL zmount can talk to.
    fn check_provider(&self, name: &str, provider: &ProviderConfig) -> Result<(), ConfigError> {
        let key = |field: &str| format!("providers.{name}.{field}");
        let (required, endpoint): (Vec<(&str, &str)>, Option<&str>) = match provider {
            ProviderConfig::S3(c) | ProviderConfig::Wasabi(c) => (
                vec![("bucket", &c.bucket), ("region", &c.region)],
                c.endpoint.as_deref(),
            ),
            ProviderConfig::Gcs(c) => (vec![("bucket", &c.bucket)], None),
            ProviderConfig::Azure(c) => (vec![("container", &c.container)], c.endpoint.as_deref()),
            ProviderConfig::Local(_) => (vec![], None),
        };
        for (field, value) in required {
            if value.trim().is_empty() {
                return Err(ConfigError::new(
                    &self.file,
                    key(field),
                    "must not be empty",
                ));
            }
        }
        if let ProviderConfig::Local(c) = provider {
            if c.path.as_os_str().is_empty() || c.path.is_file() {
                return Err(ConfigError::new(
                    &self.file,
                    key("path"),
                    format!(
                        "must be a folder (created if missing); {} is not",
                        c.path.display()
                    ),
                ));
            }
        }
        if let Some(endpoint) = endpoint {
            check_endpoint(endpoint)
                .map_err(|m| ConfigError::new(&self.file, key("endpoint"), m))?;
        }
        Ok(())
    }

    fn check_route_providers(&self, key: &str, route: &RouteConfig) -> Result<(), ConfigError> {
        let defined = self
            .providers
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let named = std::iter::once(("provider".to_string(), &route.provider)).chain(
            route
                .fallback
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("fallback[{i}]"), f)),
        );
        for (field, name) in named {
            if !self.providers.contains_key(name) {
                return Err(ConfigError::new(
                    &self.file,
                    format!("{key}.{field}"),
                    format!("no provider named `{name}`; defined providers: {defined}"),
                ));
            }
        }
        let mut seen = vec![&route.provider];
        for (i, name) in route.fallback.iter().enumerate() {
            if seen.contains(&name) {
                return Err(ConfigError::new(
                    &self.file,
                    format!("{key}.fallback[{i}]"),
                    format!("`{name}` is already named earlier in this route; each provider may appear once"),
                ));
            }
            seen.push(name);
        }
        self.check_route_attributes(key, route)?;
        images::check_route_images(
            route.transforms.as_ref(),
            &route.variants,
            route.variants_under.as_deref(),
        )
        .map_err(|(field, m)| ConfigError::new(&self.file, format!("{key}.{field}"), m))?;
        if route.write == WritePolicy::Failover && route.fallback.is_empty() {
            return Err(ConfigError::new(
                &self.file,
                format!("{key}.write"),
                "`failover` needs at least one provider in `fallback`".to_string(),
            ));
        }
        Ok(())
    }

    /// A route's default `metadata` and `tags` must be what every upload accepts, so new files never fail late.
    fn check_route_attributes(&self, key: &str, route: &RouteConfig) -> Result<(), ConfigError> {
        use crate::meta::{
            check_metadata_value, check_tag, normalize_metadata_key, TAGS_MIRROR_KEY,
        };
        for (k, v) in &route.metadata {
            let checked = normalize_metadata_key(k).and_then(|lower| {
                let reserved = crate::meta::posix::KEYS.contains(&lower.as_str())
                    || crate::meta::MARKER_KEYS.contains(&lower.as_str())
                    || lower == TAGS_MIRROR_KEY;
                match reserved {
                    true => Err(format!("`{lower}` is kept by zmount itself")),
                    false => check_metadata_value(&lower, v),
                }
            });
            checked.map_err(|m| ConfigError::new(&self.file, format!("{key}.metadata.{k}"), m))?;
        }
        for (k, v) in &route.tags {
            check_tag(k, v)
                .map_err(|m| ConfigError::new(&self.file, format!("{key}.tags.{k}"), m))?;
        }
        let primary_kind = self.providers.get(&route.provider).map(|p| p.kind());
        if !route.tags.is_empty() && primary_kind == Some("gcs") {
            return Err(ConfigError::new(
                &self.file,
                format!("{key}.tags"),
                format!("provider `{}` (gcs) has no object tags", route.provider),
            ));
        }
        Ok(())
    }

    /// Names of the providers that routes actually use (in config order of first use).
    pub fn provider_names(&self) -> impl Iterator<Item = &String> {
        self.providers.keys()
    }
}

/// An endpoint is an absolute `http://` or `https://` URL with a host (`http://127.0.0.1:9000`,
/// `https://s3.eu-central-2.wasabisys.com`); anything else is refused at load, with what was expected.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let expected = "expected a URL such as `https://s3.example.com` or `http://127.0.0.1:9000`";
    match url::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => Err(format!(
            "`{endpoint}` has no http:// or https:// scheme; {expected}"
        )),
        Ok(_) => Err(format!("`{endpoint}` names no host; {expected}")),
        Err(url::ParseError::RelativeUrlWithoutBase) => Err(format!(
            "`{endpoint}` has no http:// or https:// scheme; {expected}"
        )),
        Err(e) => Err(format!("`{endpoint}` is not a URL ({e}); {expected}")),
    }
}

/// Types one `[providers.NAME]` table by its `kind`, expanding `${ENV}` references first.
/// What to do with a secret whose `${VAR}` is not set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UnsetSecrets {
    Refuse,
    LeaveOut,
}

/// Provider keys that hold secrets (the [`Secret`] fields).
const SECRET_KEYS: [&str; 6] = [
    "access_key",
    "secret_key",
    "session_token",
    "credentials",
    "connection_string",
    "key",
];

/// `line:col` of key `key` (`providers.NAME.FIELD`, or the table itself) in the `[providers.NAME]` table of
/// `text`: provider tables are read as plain tables (their `kind` decides the type), which keep no positions.
fn locate_provider_key(text: &str, name: &str, key: &str) -> Option<(usize, usize)> {
    let field = key
        .strip_prefix(&format!("providers.{name}"))?
        .trim_start_matches('.');
    let field = field.split('.').next().unwrap_or_default();
    let header = |line: &str| {
        let inner = line.trim().strip_prefix('[')?.strip_suffix(']')?;
        let (table, table_name) = inner.split_once('.')?;
        (table.trim() == "providers" && table_name.trim().trim_matches('"') == name).then_some(())
    };
    let mut lines = text.lines().enumerate();
    let (start, _) = lines.find(|(_, line)| header(line).is_some())?;
    if field.is_empty() {
        return Some((start + 1, 1));
    }
    for (i, line) in lines {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            break;
        }
        let written = trimmed.split('=').next().unwrap_or_default().trim();
        if written.trim_matches('"') == field {
            return Some((i + 1, line.len() - trimmed.len() + 1));
        }
    }
    Some((start + 1, 1)) // a missing key: the table that lacks it
}

fn parse_provider(
    file: &Path,
    name: &str,
    mut table: toml::Table,
    unset: UnsetSecrets,
) -> Result<ProviderConfig, ConfigError> {
    let key = format!("providers.{name}");
    let kinds = ProviderConfig::KINDS.join(", ");
    let kind = match table.remove("kind") {
        Some(toml::Value::String(kind)) => kind,
        Some(_) => {
            return Err(ConfigError::new(
                file,
                format!("{key}.kind"),
                format!("expected a string, one of: {kinds}"),
            ))
        }
        None => {
            return Err(ConfigError::new(
                file,
                format!("{key}.kind"),
                format!("missing required key; expected one of: {kinds}"),
            ))
        }
    };
    let mut left_out = Vec::new();
    for (field, value) in table.iter_mut() {
        if let toml::Value::String(text) = value {
            let error = |m| ConfigError::new(file, format!("{key}.{field}"), m);
            match expand_env_if_set(text).map_err(error)? {
                Some(expanded) => *text = expanded,
                None if unset == UnsetSecrets::LeaveOut
                    && SECRET_KEYS.contains(&field.as_str()) =>
                {
                    left_out.push(field.clone())
                }
                None => return Err(error(expand_env(text).unwrap_err())),
            }
        }
    }
    table.retain(|field, _| !left_out.iter().any(|f| f == field));
    fn typed<T: DeserializeOwned>(
        file: &Path,
        key: &str,
        table: toml::Table,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                key.to_string()
            } else {
                format!("{key}.{path}")
            };
            let (k, m) = describe_serde_error(&path, &e.inner().to_string());
            ConfigError::new(file, k, m)
        })
    }
    Ok(match kind.as_str() {
        "s3" => ProviderConfig::S3(typed(file, &key, table)?),
        "wasabi" => ProviderConfig::Wasabi(typed(file, &key, table)?),
        "gcs" => ProviderConfig::Gcs(typed(file, &key, table)?),
        "azure" => {
            let c: AzureConfig = typed(file, &key, table)?;
            let missing = |field: &str, message: &str| {
                Err(ConfigError::new(
                    file,
                    format!("{key}.{field}"),
                    message.to_string(),
                ))
            };
            if c.connection_string.is_none() && !left_out.iter().any(|f| f == "connection_string") {
                if c.account.is_none() {
                    return missing(
                        "account",
                        "missing: Azure needs `account` (the storage account name) and `key`, or `connection_string`",
                    );
                }
                if c.key.is_none() && !c.managed_identity && !left_out.iter().any(|f| f == "key") {
                    return missing(
                        "key",
                        "missing: Azure needs `key` (the storage account key), or `connection_string`, or `managed_identity = true` to take a token from the machine's Azure identity",
                    );
                }
            }
            ProviderConfig::Azure(c)
        }
        "local" => ProviderConfig::Local(typed(file, &key, table)?),
        other => {
            return Err(ConfigError::new(
                file,
                format!("{key}.kind"),
                format!("unknown provider kind `{other}`; expected one of: {kinds}"),
            ))
        }
    })
}

fn resolve_provider_paths(provider: ProviderConfig, base: &Path) -> ProviderConfig {
    match provider {
        ProviderConfig::Local(mut c) => {
            c.path = base.join(&c.path);
            ProviderConfig::Local(c)
        }
        ProviderConfig::Gcs(mut c) => {
            if let Some(cred) = &c.credentials {
                let text = cred.expose();
                if !text.trim_start().starts_with('{') && Path::new(text).is_relative() {
                    c.credentials =
                        Some(Secret::new(base.join(text).to_string_lossy().into_owned()));
                }
            }
            ProviderConfig::Gcs(c)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/zmount/mount.toml"))
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("[providers.l]\nkind = \"local\"\npath = \"data\"\n").unwrap();
        match &c.providers["l"] {
            ProviderConfig::Local(l) => assert_eq!(l.path, Path::new("/etc/zmount/data")),
            _ => panic!("wrong kind"),
        }
        assert_eq!(
            c.settings.cache_dir,
            Path::new("/etc/zmount/.zmount-data/cache")
        );
    }

    #[test]
    fn flattened_common_keys_and_unknown_keys() {
        let c = parse(
            "[providers.l]\nkind = \"local\"\npath = \"d\"\nprefix = \"p\"\nread_only = true\n",
        )
        .unwrap();
        assert!(c.providers["l"].common().read_only);
        let e =
            parse("[providers.l]\nkind = \"local\"\npath = \"d\"\nbase_ur = \"x\"\n").unwrap_err();
        assert_eq!(e.key, "providers.l.base_ur", "{e}");
    }
}
