//! What the storage API says about an object, the same on every provider.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// One object, as `get_info` and `list` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path in the mounted tree (no leading `/`).
    pub path: String,
    pub size: u64,
    /// Stored content type, or one guessed from the name when the provider stores none.
    pub content_type: String,
    pub last_modified: DateTime<Utc>,
    pub etag: Option<String>,
    /// User metadata; keys are lowercase on every provider (see [`normalize_metadata_key`]).
    pub metadata: BTreeMap<String, String>,
    /// Tags (S3, Wasabi, Azure, local; see [`TAGS_MIRROR_KEY`]).
    pub tags: BTreeMap<String, String>,
    /// Public URL (CDN, or a local provider's `base_url`) when one is configured; signed URLs come from `get_url`.
    pub url: Option<String>,
    /// Name of the provider that holds it.
    pub provider: String,
}

/// Options for `upload`.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Detected from the file name when not given.
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Stored as the provider's own tags (where it has them) and mirrored in [`TAGS_MIRROR_KEY`].
    pub tags: BTreeMap<String, String>,
}

/// Metadata entry that mirrors an object's tags: object_store writes provider tags but cannot read them back, so
/// zmount reads the mirror. Hidden from [`FileInfo::metadata`]; tags set by other tools directly on the provider
/// are not seen.
pub const TAGS_MIRROR_KEY: &str = "zmount_tags";

/// Tags as one metadata value (`k=v&k2=v2`, form-encoded).
pub fn encode_tags(tags: &BTreeMap<String, String>) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(tags)
        .finish()
}

pub fn decode_tags(value: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(value.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Tag keys: like metadata keys, but case is kept (providers keep it) and `-`, `.`, `:` are allowed.
pub fn check_tag(key: &str, value: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:/ +=@".contains(c);
    if key.is_empty() || key.len() > 128 || !key.chars().all(allowed) {
        return Err(format!(
            "tag key {key:?}: use 1-128 ASCII letters, digits and _-.:/+=@ or space"
        ));
    }
    if value.len() > 256 || !value.chars().all(allowed) {
        return Err(format!(
            "tag value {value:?}: use up to 256 ASCII letters, digits and _-.:/+=@ or space"
        ));
    }
    Ok(())
}

/// Metadata keys come back lowercase from every server, so zmount lowercases them on the way in: what you read is
/// what you wrote. Keys must also be portable to every provider: Azure only accepts identifier-like names, so a
/// key is ASCII letters, digits and `_`, starting with a letter or `_`. Values must be printable ASCII (HTTP
/// headers carry them).
pub fn normalize_metadata_key(key: &str) -> Result<String, String> {
    let ok_start = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_start || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "metadata key {key:?} is not portable across providers: use ASCII letters, digits and `_`, starting with a letter"
        ));
    }
    Ok(key.to_ascii_lowercase())
}

pub fn check_metadata_value(key: &str, value: &str) -> Result<(), String> {
    if value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!("metadata value of {key:?} must be printable ASCII"))
    }
}

/// Whether two content types name the same type: parameters (`; charset=utf-8`, which some servers add) and case
/// aside.
pub fn same_content_type(a: &str, b: &str) -> bool {
    let essence = |t: &str| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    essence(a) == essence(b)
}

/// Content type for a path, from its extension.
pub fn guess_content_type(path: &str) -> String {
    mime_guess::from_path(path)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keys() {
        assert_eq!(
            normalize_metadata_key("Author_Name2").unwrap(),
            "author_name2"
        );
        assert!(normalize_metadata_key("x-y").is_err());
        assert!(normalize_metadata_key("9lives").is_err());
        assert!(check_metadata_value("k", "José").is_err());
        assert_eq!(guess_content_type("a/b.PNG"), "image/png");
        assert_eq!(guess_content_type("noext"), "application/octet-stream");
    }
}
