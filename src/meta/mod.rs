//! What objects carry besides their bytes, as every layer agrees on it: the POSIX attributes stored in object
//! metadata ([`posix`]), the metadata keys zmount keeps for itself (tags mirror, image markers), the validators of
//! user metadata and tags (so a config, an xattr and an upload accept the same things), and the durable write of
//! the small JSON records zmount keeps beside the cache. The bottom layer with `config`: it uses nothing of the
//! crate.

pub mod posix;

use std::io::Write;
use std::path::Path;

/// Metadata entry that mirrors an object's tags: object_store writes provider tags but cannot read them back, so
/// zmount reads the mirror. Hidden from [`FileInfo::metadata`]; tags set by other tools directly on the provider
/// are not seen.
pub const TAGS_MIRROR_KEY: &str = "zmount_tags";

/// Metadata a variant carries: which variant it is (`thumbnail`) and the path of its original.
pub const VARIANT_KEY: &str = "variant";
pub const VARIANT_OF_KEY: &str = "variant_of";
/// Metadata of a transformed stored file: SHA-256 (hex) of the bytes the transform wrote.
pub const TRANSFORMED_KEY: &str = "zmount_transformed";
/// The metadata keys image work writes: not settable by users, dropped when a file's bytes are replaced.
pub const MARKER_KEYS: [&str; 3] = [VARIANT_KEY, VARIANT_OF_KEY, TRANSFORMED_KEY];

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

/// Writes `body` to `file` so that after a crash the file is either absent or complete: a `.tmp` sibling is
/// written and fsynced, renamed over `file`, and the folder is fsynced so the rename itself survives.
pub fn write_durably(file: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("json.tmp");
    let out = std::fs::File::create(&tmp)?;
    (&out).write_all(body)?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
