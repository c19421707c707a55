//! Extended attributes: an object's user metadata, tags and a few facts about it, through `getfattr`/`setfattr`.
//!
//! Names (all in the `user.` namespace, which any program may use):
//! - `user.meta.<key>`: user metadata. Keys are stored lowercase on every provider (`user.meta.Owner` is set and
//!   listed as `user.meta.owner`): ASCII letters, digits and `_`, starting with a letter or `_`; values are
//!   printable ASCII. The s3fs mode/owner/time keys are not shown here (they are the file's stat).
//! - `user.tag.<key>`: tags — the provider's own tags on S3, Wasabi and Azure (mirrored in metadata, which is what
//!   zmount reads back), the mirror alone on local; ENOTSUP on GCS.
//! - `user.zmount.content_type`: the stored content type (writable).
//! - `user.zmount.provider`, `user.zmount.etag`, `user.zmount.url` (read-only: setting them is EPERM; answered by
//!   name, never listed, so copies do not carry them). The URL is what `zmount url` prints (CDN, signed for an
//!   hour, or a local provider's `base_url`).
//! - any other `user.<name>` (what `rsync -X`, `cp --preserve=xattr` and desktop tools set): stored in object
//!   metadata as `zx_<hex of name>` = base64 of the value, a form every provider's metadata rules accept (Azure
//!   takes only identifier-like names, S3 and Azure only ASCII values). All metadata of an object must fit the
//!   provider's limit (2 KiB on S3 and Wasabi, 8 KiB on Azure and GCS, 3 KiB locally): past it, E2BIG.
//!
//! Directories have none. Changing metadata, tags or content type of a closed file uploads it again (a GET and a
//! PUT of the whole object); on a file open for writing the change rides along with its upload.

use super::error::{FsError, FsResult};
use super::inode::{Ino, Kind};
use super::Filesystem;
use crate::storage::{check_metadata_value, check_tag, normalize_metadata_key};
use crate::write::FileAttrs;
use std::time::Duration;

const META: &str = "user.meta.";
const TAG: &str = "user.tag.";
const CONTENT_TYPE: &str = "user.zmount.content_type";
const PROVIDER: &str = "user.zmount.provider";
const ETAG: &str = "user.zmount.etag";
const URL: &str = "user.zmount.url";

/// How long the URL in `user.zmount.url` stays valid when it is signed.
const URL_LIFETIME: Duration = Duration::from_secs(3600);

/// Metadata keys that hold arbitrary `user.*` attributes.
pub const USER_PREFIX: &str = "zx_";

enum Name<'a> {
    /// An arbitrary `user.<name>`: its name without `user.`.
    User(&'a str),
    Meta(&'a str),
    Tag(&'a str),
    ContentType,
    Provider,
    Etag,
    Url,
}

fn parse(name: &str) -> Option<Name<'_>> {
    if let Some(key) = name.strip_prefix(META) {
        return Some(Name::Meta(key));
    }
    if let Some(key) = name.strip_prefix(TAG) {
        return Some(Name::Tag(key));
    }
    match name {
        CONTENT_TYPE => Some(Name::ContentType),
        PROVIDER => Some(Name::Provider),
        ETAG => Some(Name::Etag),
        URL => Some(Name::Url),
        _ if name.starts_with("user.zmount.") => None,
        _ => name
            .strip_prefix("user.")
            .filter(|n| !n.is_empty())
            .map(Name::User),
    }
}

/// Whether zmount serves extended attribute `name` at all. Others (`security.selinux`, `system.posix_acl_access`,
/// which `ls -l` asks for) are answered ENOTSUP at once, without touching a provider.
pub fn serves(name: &str) -> bool {
    parse(name).is_some()
}

/// How `setxattr` may treat an existing attribute (XATTR_CREATE / XATTR_REPLACE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Any,
    CreateOnly,
    ReplaceOnly,
}

/// What a file carries now, and where.
struct Facts {
    attrs: FileAttrs,
    provider: String,
    etag: Option<String>,
}

impl Filesystem {
    async fn facts(&self, ino: Ino) -> FsResult<Option<(String, Facts)>> {
        let (path, entry, _) = self.path_of(ino)?;
        if entry.kind == Kind::Dir {
            return Ok(None);
        }
        if let Some(staged) = self.uploads.get(&path) {
            let (_, _, primary) = self.storage.resolve(&path)?;
            let facts = Facts {
                attrs: staged.attrs(),
                provider: primary.name.clone(),
                etag: None,
            };
            return Ok(Some((path, facts)));
        }
        let info = self.storage.get_info(&path).await?;
        let facts = Facts {
            provider: info.provider.clone(),
            etag: info.etag.clone(),
            attrs: FileAttrs::of_info(&self.storage, info, entry.posix.unwrap_or_default()),
        };
        Ok(Some((path, facts)))
    }

    /// The value of extended attribute `name` (ENODATA when the file has none by that name).
    pub async fn getxattr(&self, ino: Ino, name: &str) -> FsResult<Vec<u8>> {
        let Some(name) = parse(name) else {
            return Err(FsError::ForeignAttribute); // e.g. security.* or system.posix_acl_*
        };
        let Some((path, facts)) = self.facts(ino).await? else {
            return Err(FsError::NoAttribute);
        };
        if let Name::User(user) = name {
            use base64::Engine;
            let stored = facts.attrs.metadata.get(&user_key(user));
            return stored
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .ok_or(FsError::NoAttribute);
        }
        let value = match name {
            Name::User(_) => None,
            Name::Meta(key) => facts.attrs.metadata.get(&key.to_ascii_lowercase()).cloned(),
            Name::Tag(key) => facts.attrs.tags.get(key).cloned(),
            Name::ContentType => Some(
                facts
                    .attrs
                    .content_type
                    .unwrap_or_else(|| crate::storage::guess_content_type(&path)),
            ),
            Name::Provider => Some(facts.provider),
            Name::Etag => facts.etag,
            Name::Url => self.storage.get_url(&path, URL_LIFETIME).await.ok(),
        };
        value.map(String::into_bytes).ok_or(FsError::NoAttribute)
    }

    /// Names of the file's extended attributes.
    pub async fn listxattr(&self, ino: Ino) -> FsResult<Vec<String>> {
        let Some((path, facts)) = self.facts(ino).await? else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = facts
            .attrs
            .metadata
            .keys()
            .map(|k| match user_name(k) {
                Some(user) => format!("user.{user}"),
                None => format!("{META}{k}"),
            })
            .collect();
        names.extend(facts.attrs.tags.keys().map(|k| format!("{TAG}{k}")));
        // The read-only facts (provider, ETag, URL) are answered by name but not listed: `cp -a`, `rsync -X` and
        // `tar --xattrs` copy every listed attribute, and a live signed URL must not land in copies and backups.
        // The content type is listed only when it is not the one its name gives: `rsync -aX` and `cp -a` would
        // otherwise see an attribute the source lacks on every file, and remove it on every run.
        let derived = crate::storage::guess_content_type(&path);
        if facts
            .attrs
            .content_type
            .as_deref()
            .is_some_and(|t| !crate::storage::same_content_type(t, &derived))
        {
            names.push(CONTENT_TYPE.into());
        }
        Ok(names)
    }

    /// Sets extended attribute `name`; see the module note for what may be set.
    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &str,
        value: &[u8],
        mode: SetMode,
    ) -> FsResult<()> {
        self.change_xattr(ino, name, Some(value.to_vec()), mode)
            .await
    }

    pub async fn removexattr(&self, ino: Ino, name: &str) -> FsResult<()> {
        self.change_xattr(ino, name, None, SetMode::ReplaceOnly)
            .await
    }

    async fn change_xattr(
        &self,
        ino: Ino,
        name: &str,
        value: Option<Vec<u8>>,
        mode: SetMode,
    ) -> FsResult<()> {
        let parsed = parse(name).ok_or_else(|| {
            FsError::NotSupported(format!(
                "extended attribute {name:?}: zmount stores user.* attributes only"
            ))
        })?;
        let bytes = value;
        let value = match (&parsed, &bytes) {
            (Name::User(_), _) | (_, None) => None,
            (_, Some(b)) => Some(
                std::str::from_utf8(b)
                    .map_err(|_| FsError::Invalid(format!("{name}: the value is not UTF-8")))?
                    .to_string(),
            ),
        };
        let Some((path, facts)) = self.facts(ino).await? else {
            return Err(FsError::NotSupported(format!(
                "{name} on a directory: directories are not objects"
            )));
        };
        self.check_writable(&path)?;
        let (_, _, primary) = self.storage.resolve(&path)?;
        let invalid = |reason: String| FsError::Invalid(format!("{name}: {reason}"));
        let current = &facts.attrs;
        let change: std::sync::Arc<dyn Fn(&mut FileAttrs) + Send + Sync> = match parsed {
            Name::User(user) => {
                use base64::Engine;
                let key = user_key(user);
                check_mode(current.metadata.contains_key(&key), mode)?;
                let encoded = bytes.map(|b| base64::engine::general_purpose::STANDARD.encode(b));
                let mut after = current.metadata.clone();
                set_entry(&mut after, key.clone(), encoded.clone());
                let used: usize = after
                    .iter()
                    .chain(&current.posix.to_metadata())
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                let limit = metadata_limit(primary.kind);
                if used > limit {
                    return Err(FsError::AttributesTooLarge(format!(
                        "{name}: the file's metadata would take {used} bytes; provider `{}` ({}) holds {limit}",
                        primary.name, primary.kind
                    )));
                }
                std::sync::Arc::new(move |a| {
                    set_entry(&mut a.metadata, key.clone(), encoded.clone())
                })
            }
            Name::Meta(key) => {
                let key = normalize_metadata_key(key).map_err(invalid)?;
                let reserved = crate::fs::posix::KEYS.contains(&key.as_str())
                    || key.starts_with(USER_PREFIX)
                    || crate::images::MARKER_KEYS.contains(&key.as_str())
                    || key == crate::storage::TAGS_MIRROR_KEY;
                if reserved {
                    return Err(invalid(format!(
                        "`{key}` is kept by zmount itself (chmod/chown/touch set mode, owner and times)"
                    )));
                }
                if let Some(v) = &value {
                    check_metadata_value(&key, v).map_err(invalid)?;
                }
                check_mode(current.metadata.contains_key(&key), mode)?;
                std::sync::Arc::new(move |a| set_entry(&mut a.metadata, key.clone(), value.clone()))
            }
            Name::Tag(key) => {
                if !primary.supports_tags() {
                    return Err(FsError::NotSupported(format!(
                        "{name}: provider `{}` ({}) has no object tags",
                        primary.name, primary.kind
                    )));
                }
                if let Some(v) = &value {
                    check_tag(key, v).map_err(invalid)?;
                }
                check_mode(current.tags.contains_key(key), mode)?;
                let key = key.to_string();
                std::sync::Arc::new(move |a| set_entry(&mut a.tags, key.clone(), value.clone()))
            }
            Name::ContentType => {
                check_mode(current.content_type.is_some(), mode)?;
                std::sync::Arc::new(move |a| a.content_type = value.clone())
            }
            Name::Provider | Name::Etag | Name::Url => {
                return Err(FsError::ReadOnlyAttribute(name.to_string()))
            }
        };
        let (_, entry, _) = self.path_of(ino)?;
        let posix = entry.posix.unwrap_or_default();
        self.change_file(&path, posix, move |a: &mut FileAttrs| change(a))
            .await
    }
}

/// The metadata key of `user.<name>`.
fn user_key(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{USER_PREFIX}{hex}")
}

/// The `user.*` name a metadata key holds, if it is one of those.
fn user_name(key: &str) -> Option<String> {
    let hex = key.strip_prefix(USER_PREFIX)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Bytes of user metadata (keys and values) an object of a provider of `kind` holds.
fn metadata_limit(kind: &str) -> usize {
    match kind {
        "s3" | "wasabi" => 2 * 1024,
        "azure" | "gcs" => 8 * 1024,
        // Local folders keep metadata as the file's own xattrs: ext4 holds them in one 4 KiB block.
        _ => 3 * 1024,
    }
}

/// Sets (Some) or removes (None) `key`.
fn set_entry(
    map: &mut std::collections::BTreeMap<String, String>,
    key: String,
    value: Option<String>,
) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

/// XATTR_CREATE of an existing name is EEXIST; XATTR_REPLACE (and removal) of a missing one is ENODATA.
fn check_mode(exists: bool, mode: SetMode) -> FsResult<()> {
    match (mode, exists) {
        (SetMode::CreateOnly, true) => Err(FsError::Exists),
        (SetMode::ReplaceOnly, false) => Err(FsError::NoAttribute),
        _ => Ok(()),
    }
}
