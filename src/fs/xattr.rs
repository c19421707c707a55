//! Extended attributes: an object's user metadata, tags and a few facts about it, through `getfattr`/`setfattr`.
//!
//! Names (all in the `user.` namespace, which any program may use):
//! - `user.meta.<key>`: user metadata. Keys are stored lowercase on every provider (`user.meta.Owner` is set and
//!   listed as `user.meta.owner`): ASCII letters, digits and `_`, starting with a letter or `_`; values are
//!   printable ASCII. The s3fs mode/owner/time keys are not shown here (they are the file's stat).
//! - `user.tag.<key>`: tags — the provider's own tags on S3, Wasabi and Azure (mirrored in metadata, which is what
//!   zmount reads back), the mirror alone on local; ENOTSUP on GCS.
//! - `user.zmount.content_type`: the stored content type (writable).
//! - `user.zmount.provider`, `user.zmount.etag`, `user.zmount.url` (read-only: setting them is EPERM). The URL is
//!   what `zmount url` prints (CDN, signed for an hour, or a local provider's `base_url`).
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

enum Name<'a> {
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
        _ => None,
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
        let value = match name {
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
            .map(|k| format!("{META}{k}"))
            .collect();
        names.extend(facts.attrs.tags.keys().map(|k| format!("{TAG}{k}")));
        names.extend([CONTENT_TYPE, PROVIDER].map(String::from));
        if facts.etag.is_some() {
            names.push(ETAG.into());
        }
        if self.storage.can_make_url(&path) {
            names.push(URL.into());
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
        let value = std::str::from_utf8(value)
            .map_err(|_| FsError::Invalid(format!("{name}: the value is not UTF-8")))?
            .to_string();
        self.change_xattr(ino, name, Some(value), mode).await
    }

    pub async fn removexattr(&self, ino: Ino, name: &str) -> FsResult<()> {
        self.change_xattr(ino, name, None, SetMode::ReplaceOnly)
            .await
    }

    async fn change_xattr(
        &self,
        ino: Ino,
        name: &str,
        value: Option<String>,
        mode: SetMode,
    ) -> FsResult<()> {
        let parsed = parse(name).ok_or_else(|| {
            FsError::NotSupported(format!(
                "extended attribute {name:?}: zmount stores only user.meta.*, user.tag.* and user.zmount.content_type"
            ))
        })?;
        let Some((path, facts)) = self.facts(ino).await? else {
            return Err(FsError::NotSupported(format!(
                "{name} on a directory: directories are not objects"
            )));
        };
        self.check_writable(&path)?;
        let (_, _, primary) = self.storage.resolve(&path)?;
        let invalid = |reason: String| FsError::Invalid(format!("{name}: {reason}"));
        let current = &facts.attrs;
        let change: Box<dyn FnOnce(&mut FileAttrs) + Send> = match parsed {
            Name::Meta(key) => {
                let key = normalize_metadata_key(key).map_err(invalid)?;
                let reserved = crate::fs::posix::KEYS.contains(&key.as_str())
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
                Box::new(move |a| set_entry(&mut a.metadata, key, value))
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
                Box::new(move |a| set_entry(&mut a.tags, key, value))
            }
            Name::ContentType => {
                check_mode(current.content_type.is_some(), mode)?;
                Box::new(move |a| a.content_type = value)
            }
            Name::Provider | Name::Etag | Name::Url => {
                return Err(FsError::ReadOnlyAttribute(name.to_string()))
            }
        };
        let (_, entry, _) = self.path_of(ino)?;
        let posix = entry.posix.unwrap_or_default();
        self.change_file(&path, posix, change).await
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
