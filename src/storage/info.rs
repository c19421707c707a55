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

pub use crate::meta::{check_metadata_value, check_tag, normalize_metadata_key, TAGS_MIRROR_KEY};

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
