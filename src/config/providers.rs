//! `[providers.NAME]`: each provider's table, typed once its `kind` is known, with its secrets and paths.

use super::*;

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

/// An endpoint is an absolute `http://` or `https://` URL with a host (`http://127.0.0.1:9000`,
/// `https://s3.eu-central-2.wasabisys.com`); anything else is refused at load, with what was expected.
pub(super) fn check_endpoint(endpoint: &str) -> Result<(), String> {
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
pub(super) enum UnsetSecrets {
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
pub(super) fn locate_provider_key(text: &str, name: &str, key: &str) -> Option<(usize, usize)> {
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

pub(super) fn parse_provider(
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

pub(super) fn resolve_provider_paths(provider: ProviderConfig, base: &Path) -> ProviderConfig {
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
