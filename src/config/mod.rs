//! `mount.toml`: what the user writes, parsed strictly.
//!
//! Owns the config schema (providers, routes, global settings), `${ENV}` expansion and validation that needs the
//! whole file (a route naming a provider that does not exist). Unknown keys are errors everywhere: a typo must not
//! silently fall back to a default. Parsing happens in two stages so that errors keep their context: the file
//! first (TOML syntax, global settings, with line/column), then each provider table once its `kind` is known.
//! Relative paths (local provider roots, cache dir, credential files) are resolved against the config file's folder,
//! so a config behaves the same from any working directory.
//!
//! This file holds the whole file's schema and parsing; `validate` its validation; `settings` the `[settings]`
//! tables with their defaults, `providers` each provider's table (typed by `kind`), `images` route transforms,
//! `secret` `${ENV}` expansion and redaction, `size` byte sizes, `error` the messages with line and column;
//! `builder` a config built in code from typed parts.

mod builder;
mod error;
mod images;
mod providers;
mod secret;
mod settings;
mod size;
mod validate;

pub use builder::{ConfigBuilder, RouteBuilder};
pub use error::ConfigError;
use providers::{locate_provider_key, parse_provider, resolve_provider_paths, UnsetSecrets};
pub use providers::{AzureConfig, CommonOptions, GcsConfig, LocalConfig, ProviderConfig, S3Config};
pub use settings::{
    CdnSettings, FailoverSettings, MountSettings, RetrySettings, Settings, TimeoutSettings,
};

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

    /// Names of the providers that routes actually use (in config order of first use).
    pub fn provider_names(&self) -> impl Iterator<Item = &String> {
        self.providers.keys()
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
