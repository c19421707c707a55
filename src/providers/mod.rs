//! Providers: one configured storage endpoint each (a bucket, container or folder), built into an object_store
//! client plus what zmount needs beside it — where it is (for messages), how to sign URLs, which strings are
//! secrets, and how a mount path becomes an object key. One file per kind.
//!
//! Above this layer every request goes through [`ProviderClient`] (`client.rs`: mount paths in, [`StorageError`]
//! out, and the [`Attempts`] each request gets as an argument); the object_store client itself is private. Beside
//! the kinds: `guard/` (retries, timeouts, circuit breaker, counters), `hedge` (racing a slow provider),
//! `listing` (one directory level despite odd keys), `uploads` and `open_uploads` (journaled multipart uploads),
//! `error` (the one error type of providers and storage).

mod azure;
mod client;
pub mod error;
mod gcs;
pub mod guard;
pub mod hedge;
pub mod listing;
mod local;
pub mod open_uploads;
mod s3;
mod uploads;

pub use client::{Object, ProviderClient, UPLOAD_CONCURRENCY, UPLOAD_PART_SIZE};
pub use error::{Result, StorageError};
pub use guard::Attempts;
pub use local::{set_user_umask, LocalStore};
pub use open_uploads::OpenUploads;
pub use s3::{encode_key as encode_s3_key, wasabi_endpoint, Replaced, COPY_MAX};

use crate::config::{ProviderConfig, Redactor, Settings, TimeoutSettings};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How clients talk HTTP: retries and timeouts, from `[settings]`.
#[derive(Debug, Clone)]
pub struct ClientTuning {
    /// object_store's own retry: off, because [`guard::Guarded`] retries (it must see every failed attempt).
    pub retry: RetryConfig,
    pub timeouts: TimeoutSettings,
    pub guard: guard::GuardPolicy,
}

impl ClientTuning {
    pub fn from_settings(settings: &Settings) -> Self {
        ClientTuning {
            retry: RetryConfig {
                max_retries: 0,
                backoff: BackoffConfig::default(),
                retry_timeout: Duration::ZERO,
            },
            timeouts: settings.timeouts.clone(),
            guard: guard::GuardPolicy::new(&settings.retry, &settings.timeouts, &settings.failover),
        }
    }

    /// One attempt: for probing whether a provider answers at all (`zmount check`).
    pub fn probe(settings: &Settings) -> Self {
        let mut tuning = Self::from_settings(settings);
        tuning.guard.attempts = 1;
        tuning
    }

    /// Client options for an endpoint; plain `http://` is allowed only when the endpoint asks for it.
    pub fn client(&self, endpoint: Option<&str>) -> ClientOptions {
        ClientOptions::new()
            .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
            .with_connect_timeout(self.timeouts.connect())
            .with_read_timeout(self.timeouts.read())
            .with_timeout_disabled()
    }
}

/// What a kind's builder hands back.
pub(crate) struct BuiltStore {
    pub store: Arc<dyn ObjectStore>,
    /// The low-level multipart API, where uploads left open cost the user (S3 and S3-compatible stores).
    pub multipart: Option<Arc<dyn object_store::multipart::MultipartStore>>,
    /// Paginated listings with a start key (see [`listing`]).
    pub paginated: Option<Arc<dyn object_store::list::PaginatedListStore>>,
    /// Requests object_store cannot make: s3fs's directory objects, metadata-replacing copies (S3 and S3-compatible
    /// stores).
    pub s3_direct: Option<Arc<s3::S3Direct>>,
    pub signer: Option<Arc<dyn Signer>>,
    pub location: String,
    pub redactor: Redactor,
}

/// One configured provider, ready for requests.
pub struct Provider {
    /// The name it has in mount.toml (`[providers.NAME]`).
    pub name: String,
    pub kind: &'static str,
    /// Where it is, for messages: endpoint and bucket/container/folder; never a secret.
    pub location: String,
    /// The client, wrapped in [`guard::Guarded`] (retries, timeouts, circuit breaker); requests go through
    /// [`Provider::client`], which says how hard each is tried.
    guarded: guard::Guarded,
    /// See [`BuiltStore::multipart`]; uploads through it are journaled in `open_uploads`.
    multipart: Option<Arc<dyn object_store::multipart::MultipartStore>>,
    /// Where multipart uploads in progress are recorded, so one cut short is aborted later (set by storage).
    pub open_uploads: Option<Arc<OpenUploads>>,
    /// See [`BuiltStore::paginated`]; under the store's attempts and counters ([`guard::GuardedPages`]).
    paginated: Option<Arc<dyn object_store::list::PaginatedListStore>>,
    /// See [`BuiltStore::s3_direct`].
    pub s3_direct: Option<Arc<s3::S3Direct>>,
    pub signer: Option<Arc<dyn Signer>>,
    pub health: Arc<guard::Health>,
    /// Key prefix, without leading or trailing `/`.
    pub prefix: String,
    pub read_only: bool,
    /// `local` only: the URL the folder is served at.
    pub base_url: Option<String>,
    pub redactor: Redactor,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Provider({} {} at {})",
            self.name, self.kind, self.location
        )
    }
}

/// Makes ring the process's TLS provider (once; the HTTP clients of every provider use it). Called before any
/// client is built; a program that builds its own `reqwest` clients beside zmount's calls it first too.
pub fn use_ring_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a provider was installed already (by the program using this library), which is then used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Provider {
    pub fn build(
        name: &str,
        config: &ProviderConfig,
        tuning: &ClientTuning,
    ) -> Result<Provider, String> {
        use_ring_tls();
        let mut base_url = None;
        let built = match config {
            ProviderConfig::S3(c) => s3::build(c, false, tuning)?,
            ProviderConfig::Wasabi(c) => s3::build(c, true, tuning)?,
            ProviderConfig::Gcs(c) => gcs::build(c, tuning)?,
            ProviderConfig::Azure(c) => azure::build(c, tuning)?,
            ProviderConfig::Local(c) => {
                base_url = c.base_url.clone();
                let store = local::build(c)?;
                BuiltStore {
                    store,
                    multipart: None,
                    paginated: None,
                    s3_direct: None,
                    signer: None,
                    location: c.path.display().to_string(),
                    redactor: Redactor::default(),
                }
            }
        };
        let common = config.common();
        let health = Arc::new(guard::Health::new(name, &built.location, &tuning.guard));
        let mut store = guard::Guarded::new(built.store, health.clone(), tuning.guard.clone());
        if matches!(config, ProviderConfig::Local(_)) {
            store = store.with_native_rename();
        }
        Ok(Provider {
            name: name.to_string(),
            kind: config.kind(),
            location: built.location,
            guarded: store,
            multipart: built.multipart,
            open_uploads: None,
            paginated: built.paginated,
            s3_direct: built.s3_direct,
            health,
            signer: built.signer,
            prefix: common.prefix.trim_matches('/').to_string(),
            read_only: common.read_only,
            base_url,
            redactor: built.redactor,
        })
    }

    /// A provider over any object_store client, named `name` (kind "memory": no prefix, no signed URLs, no
    /// multipart API of its own), under the same guard as every configured provider. For tests and programs that
    /// bring their own store (object_store's `InMemory`, a wrapper that injects failures); see
    /// [`crate::Storage::from_parts`].
    pub fn from_store(name: &str, store: Arc<dyn ObjectStore>, tuning: &ClientTuning) -> Provider {
        let location = format!("{store}");
        let health = Arc::new(guard::Health::new(name, &location, &tuning.guard));
        Provider {
            name: name.to_string(),
            kind: "memory",
            location,
            guarded: guard::Guarded::new(store, health.clone(), tuning.guard.clone()),
            multipart: None,
            open_uploads: None,
            paginated: None,
            s3_direct: None,
            signer: None,
            health,
            prefix: String::new(),
            read_only: false,
            base_url: None,
            redactor: Redactor::default(),
        }
    }

    /// The object key of a (normalized) mount path: the provider's prefix, then the path, byte for byte, so names
    /// with spaces, `%`, brackets or UTF-8 are stored as written and objects from other tools keep their names.
    /// (Only ASCII control characters, which object keys cannot hold portably, are percent-encoded.)
    /// Longest name component this provider stores: a local folder's NAME_MAX (255) less the `#<n>` suffix of the
    /// temporary file object_store writes first (up to 11 bytes); object stores limit only the whole key.
    pub fn name_max(&self) -> usize {
        match self.kind {
            "local" => 255 - 11,
            _ => Self::KEY_MAX,
        }
    }

    /// Longest key (prefix included) this provider stores, in bytes: 1,024 on S3, GCS and Azure. A local folder is
    /// reached one name at a time (see `local.rs`), so only each name is limited there, not the whole path: a
    /// generous 64 KiB stands for "no limit" (the kernel refuses paths past PATH_MAX before zmount sees them).
    pub fn key_max(&self) -> usize {
        match self.kind {
            "local" => 65_536,
            _ => Self::KEY_MAX,
        }
    }

    const KEY_MAX: usize = 1024;

    /// Whether listings of this provider come page by page (S3, GCS, Azure; not a local folder), so that a
    /// listing can be handed out as it arrives (see [`listing::DirPages`]).
    pub fn lists_in_pages(&self) -> bool {
        self.paginated.is_some()
    }

    /// Whether `path` is stored under a key spelled as the path is: one that no key can hold as it is (a control
    /// character) is percent-encoded by [`Provider::key_for`], and listings then show it encoded.
    pub fn key_is_verbatim(path: &str) -> bool {
        ObjectPath::parse(path).is_ok()
    }

    pub fn key_for(&self, path: &str) -> ObjectPath {
        let key = match (self.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{path}", self.prefix),
        };
        ObjectPath::parse(&key).unwrap_or_else(|_| ObjectPath::from(key.as_str()))
    }

    /// The key a listing of directory `path` starts from: None for the whole provider (no prefix, the root).
    pub fn listing_key(&self, path: &str) -> Option<ObjectPath> {
        (!path.is_empty() || !self.prefix.is_empty()).then(|| self.key_for(path))
    }

    /// Whether objects here can carry tags: S3, Wasabi and Azure natively; local through zmount's tag mirror
    /// (see [`crate::storage::TAGS_MIRROR_KEY`]); GCS has none that object_store can write.
    pub fn supports_tags(&self) -> bool {
        self.kind != "gcs"
    }

    /// The mount path of an object key, or None when the key is outside this provider's prefix.
    pub fn path_of(&self, key: &ObjectPath) -> Option<String> {
        let key = key.as_ref();
        if self.prefix.is_empty() {
            return Some(key.to_string());
        }
        key.strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn keys_are_prefix_plus_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[providers.l]\nkind = \"local\"\npath = {:?}\nprefix = \"/team/\"\n",
            dir.path()
        );
        let config = Config::parse(&text, std::path::Path::new("m.toml")).unwrap();
        let tuning = ClientTuning::from_settings(&config.settings);
        let p = Provider::build("l", &config.providers["l"], &tuning).unwrap();
        assert_eq!(p.key_for("a/b.txt").as_ref(), "team/a/b.txt");
        assert_eq!(
            p.path_of(&ObjectPath::from("team/a/b.txt")).as_deref(),
            Some("a/b.txt")
        );
        assert_eq!(p.path_of(&ObjectPath::from("teamx/a")), None);
        assert_eq!(
            p.key_for("ünï/50% [1].txt").as_ref(),
            "team/ünï/50% [1].txt",
            "names are kept byte for byte"
        );
    }
}
