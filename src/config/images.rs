//! Image options of a route (`transforms`, `variants`, `variants_under`) and `[settings.images]`.
//!
//! A transform is written either as a size string (`"150x150"`: fit inside 150×150) or as a table
//! (`{ resize = "400x300", fit = "cover", format = "webp", quality = 80 }`). Everything that can be checked without
//! an image is checked at load, so a typo never turns into a failure in the background later.

use super::ByteSize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Limits and concurrency of image work in the mount and in `zmount variants`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// Largest image (width × height) that is decoded; larger ones are refused from their header alone, before
    /// any pixel is decoded. 100 megapixels covers current camera sensors; decompression bombs claim far more.
    #[serde(default = "ImageSettings::default_max_pixels")]
    pub max_pixels: u64,
    /// Most memory one image may take: its file plus twice its decoded pixels (one copy while it is rotated,
    /// converted or cropped). Checked from the header, before decoding; resized outputs are small beside it.
    #[serde(default = "ImageSettings::default_max_memory")]
    pub max_memory: ByteSize,
    /// Images processed at once. Image work is CPU-bound: two keeps a small machine responsive.
    #[serde(default = "ImageSettings::default_workers")]
    pub workers: usize,
}

impl ImageSettings {
    fn default_max_pixels() -> u64 {
        100_000_000
    }
    /// A 100-megapixel RGB photo: 300 MB decoded, twice, plus its file.
    fn default_max_memory() -> ByteSize {
        ByteSize(1 << 30)
    }
    fn default_workers() -> usize {
        2
    }
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            max_pixels: Self::default_max_pixels(),
            max_memory: Self::default_max_memory(),
            workers: Self::default_workers(),
        }
    }
}

/// Output formats the pure-Rust encoders write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[serde(alias = "jpg")]
    Jpeg,
    Png,
    /// Lossless WebP (the pure-Rust encoder has no lossy mode).
    Webp,
}

impl OutputFormat {
    /// The file extension variants of this format get when the original's cannot be kept.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
        }
    }
}

/// How a resize fits the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scaled down to fit inside the box, aspect ratio kept; never enlarged.
    #[default]
    Inside,
    /// Scaled (up or down) to cover the box and cropped to it from the centre: exactly the box's size.
    Cover,
}

/// One set of transforms: resize, format, quality (each optional).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transform {
    /// Box (width, height) to fit.
    pub resize: Option<(u32, u32)>,
    pub fit: Fit,
    /// Output format; the input's own format when unset.
    pub format: Option<OutputFormat>,
    /// JPEG quality 1-100 (JPEG output only); 85 when unset.
    pub quality: Option<u8>,
}

/// Largest `cover` box: `cover` enlarges images smaller than its box, and enlarging needs about 16 bytes per output
/// pixel while it runs (256 MiB at this size). `inside` never enlarges, so its boxes have no such limit.
const MAX_COVER_PIXELS: u64 = 4096 * 4096;

/// The table form, strictly typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformTable {
    resize: Option<String>,
    #[serde(default)]
    fit: Fit,
    format: Option<OutputFormat>,
    quality: Option<u8>,
}

impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TransformVisitor;
        impl<'de> Visitor<'de> for TransformVisitor {
            type Value = Transform;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"150x150\" or a table { resize, fit, format, quality }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Transform, E> {
                Ok(Transform {
                    resize: Some(parse_box(v).map_err(E::custom)?),
                    ..Transform::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Transform, A::Error> {
                let t = TransformTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let resize = t
                    .resize
                    .as_deref()
                    .map(parse_box)
                    .transpose()
                    .map_err(de::Error::custom)?;
                Ok(Transform {
                    resize,
                    fit: t.fit,
                    format: t.format,
                    quality: t.quality,
                })
            }
        }
        deserializer.deserialize_any(TransformVisitor)
    }
}

/// `"WIDTHxHEIGHT"`, both 1..=65535.
fn parse_box(text: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=65535).contains(n))
    };
    match text.split_once(['x', 'X']) {
        Some((w, h)) => match (parse(w), parse(h)) {
            (Some(w), Some(h)) => Ok((w, h)),
            _ => Err(format!(
                "size {text:?}: width and height must be whole numbers from 1 to 65535"
            )),
        },
        None => Err(format!(
            "size {text:?}: expected WIDTHxHEIGHT, like \"150x150\""
        )),
    }
}

impl Transform {
    /// What cannot be expressed by the types: quality only where it applies, something to do at all.
    pub fn check(&self) -> Result<(), String> {
        if self.resize.is_none() && self.format.is_none() && self.quality.is_none() {
            return Err("nothing to do: give `resize`, `format` or `quality`".into());
        }
        if let (Fit::Cover, Some((w, h))) = (self.fit, self.resize) {
            if w as u64 * h as u64 > MAX_COVER_PIXELS {
                return Err(format!(
                    "a `cover` box may have at most {MAX_COVER_PIXELS} pixels (4096x4096): it can enlarge images"
                ));
            }
        }
        if let Some(q) = self.quality {
            if !(1..=100).contains(&q) {
                return Err(format!("quality {q}: must be from 1 to 100"));
            }
            if matches!(self.format, Some(OutputFormat::Png | OutputFormat::Webp)) {
                return Err(
                    "`quality` applies to JPEG output only (PNG and WebP are written lossless)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// What a route does to its images, as the router hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteImages {
    pub transforms: Option<Transform>,
    pub variants: BTreeMap<String, Transform>,
    /// Folder variants go under (no leading or trailing `/`), instead of beside the original.
    pub variants_under: Option<String>,
}

impl RouteImages {
    pub fn of(route: &super::RouteConfig) -> Option<RouteImages> {
        (route.transforms.is_some() || !route.variants.is_empty()).then(|| RouteImages {
            transforms: route.transforms.clone(),
            variants: route.variants.clone(),
            variants_under: route
                .variants_under
                .as_deref()
                .map(|u| u.trim_matches('/').to_string()),
        })
    }
}

/// A route's image options, checked.
pub fn check_route_images(
    transforms: Option<&Transform>,
    variants: &BTreeMap<String, Transform>,
    variants_under: Option<&str>,
) -> Result<(), (String, String)> {
    if let Some(t) = transforms {
        t.check().map_err(|m| ("transforms".to_string(), m))?;
    }
    for (name, t) in variants {
        check_variant_name(name).map_err(|m| (format!("variants.{name}"), m))?;
        t.check().map_err(|m| (format!("variants.{name}"), m))?;
    }
    if let Some(under) = variants_under {
        let bad =
            under.trim_matches('/').is_empty() || under.split('/').any(|c| c == "." || c == "..");
        if bad {
            return Err((
                "variants_under".into(),
                format!("{under:?}: expected a folder of the tree, like \"thumbs\""),
            ));
        }
        if variants.is_empty() {
            return Err(("variants_under".into(), "set without any `variants`".into()));
        }
    }
    Ok(())
}

/// Variant names become part of file names: lowercase letters, digits, `_` and `-`.
fn check_variant_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 32 || !name.chars().all(ok) {
        return Err(format!(
            "variant name {name:?}: use 1-32 lowercase letters, digits, `_` or `-` (it becomes part of file names)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(parse_box("150x150"), Ok((150, 150)));
        assert_eq!(parse_box("400X300"), Ok((400, 300)));
        assert!(parse_box("150").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_box("0x10").unwrap_err().contains("1 to 65535"));
        assert!(parse_box("ax10").is_err());
    }

    #[test]
    fn quality_only_for_jpeg() {
        let t = Transform {
            format: Some(OutputFormat::Webp),
            quality: Some(80),
            ..Transform::default()
        };
        assert!(t.check().unwrap_err().contains("JPEG output only"));
        assert!(Transform::default()
            .check()
            .unwrap_err()
            .contains("nothing to do"));
    }
}
