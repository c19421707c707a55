//! Image transforms and variants of a route: after an image's upload completes, the stored file itself is
//! transformed (`transforms`) and each configured variant is written as its own object (`variants`).
//!
//! This module owns what one image job does ([`process`]), how variants are named ([`variant_path`]) and what they
//! carry; [`worker`] runs jobs in the background of a mount with bounded concurrency; `zmount variants` runs the
//! same jobs on demand. Image work never delays or fails the original's upload: it starts after that upload
//! succeeded, and a failure is logged, counted and left at that (the file stays as written).
//!
//! Loop guards: variants and transformed files are written through [`Storage`], never through the mount's write
//! path, so they do not start jobs of their own; a file named like a variant of its route (`photo.thumbnail.jpg`),
//! a file under the route's `variants_under` folder or an object carrying [`VARIANT_KEY`] is never treated as an
//! original; a stored file whose bytes are the ones a transform produced (their SHA-256 is in
//! [`TRANSFORMED_KEY`]) is not transformed again.

pub mod codec;
pub mod worker;

pub use codec::ImageError;
pub use worker::{ImageCounters, ImageWorker};

use crate::config::{ImageSettings, OutputFormat, RouteImages, Transform};
use crate::storage::{normalize_metadata_key, FileInfo, Storage, UploadOptions};
use bytes::Bytes;
use std::collections::BTreeMap;

pub use crate::meta::{MARKER_KEYS, TRANSFORMED_KEY, VARIANT_KEY, VARIANT_OF_KEY};

/// What one job did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The stored file was replaced by its transformed version.
    pub transformed: bool,
    /// Paths of the variants written.
    pub variants: Vec<String>,
    /// Variant paths holding a file that is not this original's variant: left alone.
    pub not_overwritten: Vec<String>,
    /// Why the stored file was not transformed although the route has `transforms` (e.g. it is animated).
    pub not_transformed_because: Option<&'static str>,
    /// Why nothing was done, when nothing was (not an image route, a variant itself, already done, changed).
    pub nothing_because: Option<&'static str>,
}

impl Report {
    fn nothing(why: &'static str) -> Report {
        Report {
            nothing_because: Some(why),
            ..Report::default()
        }
    }
}

/// The path of variant `name` of `original` in output `format`: `dir/photo.jpg` → `dir/photo.thumbnail.jpg`,
/// or `<under>/dir/photo.thumbnail.jpg` with `variants_under`. The original's extension is kept when it names the
/// output format (`.JPEG` stays `.JPEG`); otherwise the format's own (`jpg`, `png`, `webp`).
pub fn variant_path(
    original: &str,
    name: &str,
    format: OutputFormat,
    under: Option<&str>,
) -> String {
    let (dir, file) = original.rsplit_once('/').unwrap_or(("", original));
    let (stem, ext) = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && names_format(ext, format) => (stem, ext),
        Some((stem, _)) if !stem.is_empty() => (stem, format.extension()),
        _ => (file, format.extension()),
    };
    let name = format!("{stem}.{name}.{ext}");
    let rel = if dir.is_empty() {
        name
    } else {
        format!("{dir}/{name}")
    };
    match under {
        Some(under) => format!("{under}/{rel}"),
        None => rel,
    }
}

fn names_format(ext: &str, format: OutputFormat) -> bool {
    let ext = ext.to_ascii_lowercase();
    match format {
        OutputFormat::Jpeg => ext == "jpg" || ext == "jpeg",
        OutputFormat::Png => ext == "png",
        OutputFormat::Webp => ext == "webp",
    }
}

/// Whether `path` is (named like) a variant of its route rather than an original.
pub fn is_variant(path: &str, images: &RouteImages) -> bool {
    if let Some(under) = &images.variants_under {
        if path
            .strip_prefix(under.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return true;
        }
    }
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    stem.rsplit_once('.')
        .is_some_and(|(_, last)| images.variants.contains_key(last))
}

/// Names starting with `.`: rsync and editors write such temporary files and rename them into place (the rename
/// starts the job for the final name).
pub fn is_hidden(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with('.'))
}

/// Runs the route's image work for `path`: transforms the stored file (when configured and not done yet) and
/// writes every variant. `Ok` with `nothing_because` when there is nothing to do. Works from the file as it is
/// stored now: right after an upload, the bytes just written.
pub async fn process(
    storage: &Storage,
    limits: &ImageSettings,
    path: &str,
) -> Result<Report, ImageError> {
    let Some(images) = storage
        .router()
        .resolve(path)
        .and_then(|r| r.route.images.clone())
    else {
        return Ok(Report::nothing("its route has no image options"));
    };
    if is_variant(path, &images) {
        return Ok(Report::nothing("it is named like a variant"));
    }
    if is_hidden(path) {
        return Ok(Report::nothing(
            "hidden files (temporary files of rsync, editors) are left alone",
        ));
    }
    let info = match storage.get_info(path).await {
        Err(e) if e.is_not_found() => return Ok(Report::nothing("it no longer exists")),
        other => other?,
    };
    if info.metadata.contains_key(VARIANT_KEY) {
        return Ok(Report::nothing("it is a variant"));
    }
    if info.size > limits.max_memory.0 {
        return Err(ImageError::FileTooLarge {
            size: info.size,
            limit: limits.max_memory.0,
        });
    }
    if info.size == 0 {
        return Ok(Report::nothing("it is empty"));
    }
    // A large file that is no image is recognised from its first bytes, not downloaded whole.
    let start = storage
        .download_range(path, 0..info.size.min(codec::SIGNATURE_BYTES))
        .await?;
    codec::sniff(&start)?;
    let data = storage.download(path).await?;
    let transforms = images
        .transforms
        .clone()
        .filter(|_| info.metadata.get(TRANSFORMED_KEY) != Some(&sha256_hex(&data)));
    if transforms.is_none() && images.variants.is_empty() {
        return Ok(Report::nothing("it is already transformed"));
    }
    // Only the primary's copy is replaced: a copy read from a fallback during an outage may be older than the
    // primary's (the heal submits the file again once the primary has it).
    let primary = storage.resolve(path)?.1.route.provider.clone();
    let on_fallback = transforms.is_some() && info.provider != primary;
    let transforms = transforms.filter(|_| !on_fallback);
    let (limits, images, original) = (limits.clone(), images.clone(), path.to_string());
    let rendered = tokio::task::spawn_blocking(move || {
        render(data, &limits, transforms.as_ref(), &images, &original)
    })
    .await
    .map_err(|e| ImageError::Internal(format!("image task failed: {e}")))??;
    let mut report = store(storage, path, &info, rendered).await?;
    if on_fallback {
        report.not_transformed_because =
            Some("its newest copy is on a fallback; it is transformed once healed to the primary");
    }
    Ok(report)
}

/// Writes what [`render`] made: the transformed file only if the stored one is still the version that was read,
/// variants only where no other file is in the way.
async fn store(
    storage: &Storage,
    path: &str,
    info: &FileInfo,
    rendered: Rendered,
) -> Result<Report, ImageError> {
    let mut report = Report {
        not_transformed_because: rendered.not_transformed_because,
        ..Report::default()
    };
    let changed = || Ok(Report::nothing("it changed or moved while being processed"));
    if let Some((bytes, format)) = rendered.stored {
        let mut metadata = carried_metadata(info);
        metadata.insert(TRANSFORMED_KEY.into(), sha256_hex(&bytes));
        let options = upload_options(storage, path, info, metadata, format);
        let bytes = Bytes::from(bytes);
        // A newer write (or a rename, a delete) has a job of its own; these older bytes get nothing.
        match storage
            .upload_if_unchanged(path, bytes, options, Some(info))
            .await?
        {
            Some(_) => report.transformed = true,
            None => return changed(),
        }
    } else if !still_there(storage, path, info).await? {
        return changed();
    }
    for variant in rendered.variants {
        let Some(existing) = replaceable(storage, &variant.path, path).await? else {
            report.not_overwritten.push(variant.path);
            continue;
        };
        let mut metadata = carried_metadata(info);
        metadata.remove("mtime");
        metadata.remove(TRANSFORMED_KEY);
        metadata.insert(VARIANT_KEY.into(), variant.name.clone());
        metadata.insert(VARIANT_OF_KEY.into(), path.to_string());
        let options = upload_options(storage, &variant.path, info, metadata, variant.format);
        let bytes = Bytes::from(variant.bytes);
        let written = storage
            .upload_if_unchanged(&variant.path, bytes, options, existing.as_ref())
            .await?;
        match written {
            Some(_) => report.variants.push(variant.path),
            None => report.not_overwritten.push(variant.path),
        }
    }
    Ok(report)
}

/// Whether `path` still holds the version `info` describes.
async fn still_there(storage: &Storage, path: &str, info: &FileInfo) -> Result<bool, ImageError> {
    match storage.get_info(path).await {
        Ok(now) => Ok((now.etag, now.size) == (info.etag.clone(), info.size)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What a variant path holds, when a variant of `original` may replace it: nothing (`Some(None)`), this
/// original's earlier variant, or the variant of an original that no longer exists (left behind by a rename).
/// `None` when it holds anything else (a user's own file, another original's variant): never replaced.
async fn replaceable(
    storage: &Storage,
    variant: &str,
    original: &str,
) -> Result<Option<Option<FileInfo>>, ImageError> {
    let existing = match storage.get_info(variant).await {
        Ok(existing) => existing,
        Err(e) if e.is_not_found() => return Ok(Some(None)),
        Err(e) => return Err(e.into()),
    };
    let Some(owner) = existing.metadata.get(VARIANT_OF_KEY) else {
        return Ok(None);
    };
    let orphan =
        owner != original && matches!(storage.get_info(owner).await, Err(e) if e.is_not_found());
    Ok((owner == original || orphan).then_some(Some(existing)))
}

/// One variant, encoded.
struct RenderedVariant {
    name: String,
    path: String,
    format: OutputFormat,
    bytes: Vec<u8>,
}

struct Rendered {
    /// The transformed stored file, when it changes.
    stored: Option<(Vec<u8>, OutputFormat)>,
    not_transformed_because: Option<&'static str>,
    variants: Vec<RenderedVariant>,
}

/// Decodes once (the file's bytes are freed right after), then encodes the transformed file and every variant
/// from the decoded image (variants do not inherit the transform's re-compression).
fn render(
    data: Bytes,
    limits: &ImageSettings,
    transforms: Option<&Transform>,
    images: &RouteImages,
    path: &str,
) -> Result<Rendered, ImageError> {
    let decoded = codec::decode(&data, limits)?;
    drop(data);
    let icc = decoded.icc.as_deref();
    let mut stored = None;
    let mut not_transformed_because = None;
    if let Some(t) = transforms {
        if decoded.animated {
            not_transformed_because = Some("animated images keep all their frames");
        } else {
            let resized = codec::resize(&decoded.image, t);
            let format = t.format.unwrap_or(decoded.format);
            let changes = (resized.width(), resized.height())
                != (decoded.image.width(), decoded.image.height())
                || format != decoded.format
                || (t.quality.is_some() && format == OutputFormat::Jpeg);
            if changes {
                stored = Some((codec::encode(&resized, format, t.quality, icc)?, format));
            }
        }
    }
    // Variants without a format of their own follow the route's: the transform's format when it sets one (so
    // they are named the same whether made from the original or, later, from the transformed file).
    let route_format = transforms
        .or(images.transforms.as_ref())
        .and_then(|t| t.format)
        .unwrap_or(decoded.format);
    let mut variants = Vec::new();
    for (name, t) in &images.variants {
        let format = t.format.unwrap_or(route_format);
        let image = codec::resize(&decoded.image, t);
        variants.push(RenderedVariant {
            name: name.clone(),
            path: variant_path(path, name, format, images.variants_under.as_deref()),
            format,
            bytes: codec::encode(&image, format, t.quality, icc)?,
        });
    }
    Ok(Rendered {
        stored,
        not_transformed_because,
        variants,
    })
}

/// The original's metadata that every provider accepts back (foreign keys such as `original-filename` are not).
fn carried_metadata(info: &FileInfo) -> BTreeMap<String, String> {
    info.metadata
        .iter()
        .filter(|(k, v)| {
            normalize_metadata_key(k)
                .and_then(|k| crate::storage::check_metadata_value(&k, v))
                .is_ok()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn upload_options(
    storage: &Storage,
    target: &str,
    original: &FileInfo,
    metadata: BTreeMap<String, String>,
    format: OutputFormat,
) -> UploadOptions {
    let tags_kept = storage
        .resolve(target)
        .is_ok_and(|(_, _, provider)| provider.supports_tags());
    UploadOptions {
        content_type: Some(codec::content_type(format).to_string()),
        metadata,
        tags: if tags_kept {
            original.tags.clone()
        } else {
            BTreeMap::new()
        },
    }
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(under: Option<&str>) -> RouteImages {
        RouteImages {
            transforms: None,
            variants: [("thumbnail".to_string(), Transform::default())].into(),
            variants_under: under.map(str::to_string),
        }
    }

    #[test]
    fn variant_names() {
        use OutputFormat::{Jpeg, Webp};
        let cases = [
            (
                "a/photo.jpg",
                "thumbnail",
                Jpeg,
                None,
                "a/photo.thumbnail.jpg",
            ),
            ("photo.JPEG", "small", Jpeg, None, "photo.small.JPEG"),
            (
                "a/photo.png",
                "small",
                Webp,
                Some("thumbs"),
                "thumbs/a/photo.small.webp",
            ),
            // A PNG whose stored bytes are JPEG now (a transform converted it): the name follows the bytes.
            ("a/big.png", "small", Jpeg, None, "a/big.small.jpg"),
            ("a/.hidden", "small", Jpeg, None, "a/.hidden.small.jpg"),
        ];
        for (original, name, format, under, expected) in cases {
            assert_eq!(variant_path(original, name, format, under), expected);
        }
    }

    #[test]
    fn variants_are_recognised() {
        assert!(is_variant("a/photo.thumbnail.jpg", &images(None)));
        assert!(!is_variant("a/photo.jpg", &images(None)));
        assert!(!is_variant("a/photo.medium.jpg", &images(None)));
        assert!(is_variant("thumbs/a/photo.jpg", &images(Some("thumbs"))));
        assert!(!is_variant("thumbsup/a.jpg", &images(Some("thumbs"))));
    }
}
