//! Bytes in, bytes out: decoding under limits, EXIF orientation, resizing and encoding. No I/O, no async: the
//! worker runs these on blocking threads, and unit tests call them directly.

use crate::config::{Fit, ImageSettings, OutputFormat, Transform};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::borrow::Cow;
use std::io::Cursor;

/// JPEG quality when a transform gives none: visually lossless for photos at a third of quality 100's size.
pub const DEFAULT_JPEG_QUALITY: u8 = 85;

/// Why an image was not processed: the file's fault (logged and skipped, see [`ImageError::is_bad_input`]), or a
/// provider's, an encoder's or ours.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("refused: {width}x{height} is {} pixels, over settings.images.max_pixels = {limit}", *width as u64 * *height as u64)]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("refused: processing it needs about {needed} bytes of memory, over settings.images.max_memory = {limit} bytes")]
    TooMuchMemory { needed: u64, limit: u64 },
    #[error("refused: the file is {size} bytes, over settings.images.max_memory = {limit} bytes")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("refused by {0}")]
    Refused(String),
    #[error("cannot encode {format:?}: {message}")]
    Encode {
        format: OutputFormat,
        message: String,
    },
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    /// A provider did not answer: worth trying again later.
    pub fn is_outage(&self) -> bool {
        matches!(self, ImageError::Storage(e) if e.is_unavailable())
    }

    /// The file itself is the problem (skipped, not retried): as opposed to a provider or encoder failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImageError::NotAnImage(_)
                | ImageError::Corrupt(_)
                | ImageError::TooManyPixels { .. }
                | ImageError::TooMuchMemory { .. }
                | ImageError::FileTooLarge { .. }
                | ImageError::Unsupported(_)
                | ImageError::Refused(_)
        )
    }
}

/// A decoded image, upright (EXIF orientation applied), the format it came in, and what it carries that
/// re-encoding must keep or respect.
pub struct Decoded {
    pub image: DynamicImage,
    pub format: OutputFormat,
    /// Colour profile, written into every output (without it, wide-gamut photos look washed out).
    pub icc: Option<Vec<u8>>,
    /// An animated PNG or WebP: outputs would keep only the first frame.
    pub animated: bool,
}

/// Decodes `bytes`, refusing before decoding any pixel when the header announces more than the limits allow.
/// Memory: the file, the decoded pixels and one more copy of them (rotation, conversion, cropping) must fit in
/// `max_memory`; resizing down adds only the output, and upscaling (`cover` of a small image) is bounded by the
/// box limit checked at load.
pub fn decode(bytes: &[u8], limits: &ImageSettings) -> Result<Decoded, ImageError> {
    let memory = limits.max_memory.0;
    let file = bytes.len() as u64;
    if file > memory {
        return Err(ImageError::FileTooLarge {
            size: file,
            limit: memory,
        });
    }
    let format = sniff(bytes)?;
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(match format {
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Webp => ImageFormat::WebP,
    });
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(memory);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, memory))?;
    let (width, height) = decoder.dimensions();
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    let needed = file.saturating_add(decoder.total_bytes().saturating_mul(2));
    if needed > memory {
        return Err(ImageError::TooMuchMemory {
            needed,
            limit: memory,
        });
    }
    // A broken EXIF block or colour profile is not worth losing the image over: it is used as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, memory))?;
    image.apply_orientation(orientation);
    Ok(Decoded {
        image,
        format,
        icc,
        animated: is_animated(bytes, format),
    })
}

/// APNG announces itself with an `acTL` chunk before the image data; animated WebP with a flag in its `VP8X`
/// header.
fn is_animated(bytes: &[u8], format: OutputFormat) -> bool {
    match format {
        OutputFormat::Png => {
            let head = &bytes[..bytes.len().min(64 << 10)];
            let data_at = find(head, b"IDAT").unwrap_or(head.len());
            find(&head[..data_at], b"acTL").is_some()
        }
        OutputFormat::Webp => {
            bytes.get(12..16) == Some(b"VP8X") && bytes.get(20).is_some_and(|f| f & 0x02 != 0)
        }
        OutputFormat::Jpeg => false,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes needed to tell the format from the start of a file (WebP's signature is the longest, 12 bytes).
pub const SIGNATURE_BYTES: u64 = 16;

/// The format the first bytes of a file announce.
pub fn sniff(start: &[u8]) -> Result<OutputFormat, ImageError> {
    match image::guess_format(start) {
        Ok(ImageFormat::Jpeg) => Ok(OutputFormat::Jpeg),
        Ok(ImageFormat::Png) => Ok(OutputFormat::Png),
        Ok(ImageFormat::WebP) => Ok(OutputFormat::Webp),
        Ok(other) => Err(ImageError::NotAnImage(format!(
            "{other:?} is not read (JPEG, PNG and WebP are)"
        ))),
        Err(_) => Err(ImageError::NotAnImage(
            "the content is not JPEG, PNG or WebP".into(),
        )),
    }
}

fn classify(e: image::ImageError, memory: u64) -> ImageError {
    match e {
        image::ImageError::Limits(l) => ImageError::Refused(format!(
            "the decoder's memory limit (settings.images.max_memory = {memory} bytes): {l}"
        )),
        image::ImageError::Unsupported(u) => ImageError::Unsupported(u.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// The size an image of `width`×`height` gets in a box of `box_w`×`box_h` with fit `inside`: scaled down to fit,
/// aspect ratio kept (rounded to whole pixels), never enlarged.
pub fn fit_inside(width: u32, height: u32, box_w: u32, box_h: u32) -> (u32, u32) {
    if width <= box_w && height <= box_h {
        return (width, height);
    }
    let scale = f64::min(box_w as f64 / width as f64, box_h as f64 / height as f64);
    let scaled = |n: u32, max: u32| ((n as f64 * scale).round() as u32).clamp(1, max);
    (scaled(width, box_w), scaled(height, box_h))
}

/// Applies one transform's resize (format and quality are the encoder's business). Reductions average the
/// source pixels each output pixel covers (sharp, no aliasing, no buffer beyond the output); only `cover` of an
/// image smaller than its box enlarges, by interpolation.
pub fn resize<'a>(image: &'a DynamicImage, transform: &Transform) -> Cow<'a, DynamicImage> {
    let Some((box_w, box_h)) = transform.resize else {
        return Cow::Borrowed(image);
    };
    let (w, h) = (image.width(), image.height());
    match transform.fit {
        Fit::Inside => {
            let (nw, nh) = fit_inside(w, h, box_w, box_h);
            match (nw, nh) == (w, h) {
                true => Cow::Borrowed(image),
                false => Cow::Owned(image.thumbnail_exact(nw, nh)),
            }
        }
        Fit::Cover => {
            // Crop the centred region with the box's aspect ratio first, then scale only that to the box.
            let (cw, ch) = cover_region(w, h, box_w, box_h);
            let region = image.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch);
            Cow::Owned(if (cw, ch) == (box_w, box_h) {
                region
            } else if cw >= box_w {
                region.thumbnail_exact(box_w, box_h)
            } else {
                region.resize_exact(box_w, box_h, FilterType::CatmullRom)
            })
        }
    }
}

/// The largest centred region of a `width`×`height` image with the aspect ratio of `box_w`×`box_h`.
pub fn cover_region(width: u32, height: u32, box_w: u32, box_h: u32) -> (u32, u32) {
    let (w, h, bw, bh) = (width as u64, height as u64, box_w as u64, box_h as u64);
    if w * bh > h * bw {
        (((h * bw + bh / 2) / bh).clamp(1, w) as u32, height)
    } else {
        (width, ((w * bh + bw / 2) / bw).clamp(1, h) as u32)
    }
}

/// Encodes in `format` with colour profile `icc`; JPEG output of an image with transparency is flattened onto
/// white.
pub fn encode(
    image: &DynamicImage,
    format: OutputFormat,
    quality: Option<u8>,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>, ImageError> {
    use image::codecs::{jpeg, png, webp};
    let mut out = Vec::new();
    let fail = |e: image::ImageError| ImageError::Encode {
        format,
        message: e.to_string(),
    };
    match format {
        OutputFormat::Jpeg => {
            let quality = quality.unwrap_or(DEFAULT_JPEG_QUALITY);
            let rgb = DynamicImage::ImageRgb8(flatten_on_white(image));
            let encoder = with_icc(jpeg::JpegEncoder::new_with_quality(&mut out, quality), icc);
            rgb.write_with_encoder(encoder).map_err(fail)?;
        }
        // Stored images are written once and read many times: worth the slower, smaller setting.
        OutputFormat::Png => {
            let (best, adaptive) = (png::CompressionType::Best, png::FilterType::Adaptive);
            let encoder = with_icc(
                png::PngEncoder::new_with_quality(&mut out, best, adaptive),
                icc,
            );
            image.write_with_encoder(encoder).map_err(fail)?;
        }
        OutputFormat::Webp => {
            let eight_bit = match image.color().has_alpha() {
                true => DynamicImage::ImageRgba8(image.to_rgba8()),
                false => DynamicImage::ImageRgb8(image.to_rgb8()),
            };
            let encoder = with_icc(webp::WebPEncoder::new_lossless(&mut out), icc);
            eight_bit.write_with_encoder(encoder).map_err(fail)?;
        }
    }
    Ok(out)
}

/// An encoder that writes `icc` as the output's colour profile (where the encoder can).
fn with_icc<E: image::ImageEncoder>(mut encoder: E, icc: Option<&[u8]>) -> E {
    if let Some(icc) = icc {
        let _ = encoder.set_icc_profile(icc.to_vec());
    }
    encoder
}

fn flatten_on_white(image: &DynamicImage) -> image::RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| ((c as u16 * a as u16 + 255 * (255 - a as u16)) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// The MIME type stored with an output.
pub fn content_type(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Jpeg => "image/jpeg",
        OutputFormat::Png => "image/png",
        OutputFormat::Webp => "image/webp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }));
        encode(&img, OutputFormat::Png, None, None).unwrap()
    }

    #[test]
    fn fit_keeps_aspect_and_never_enlarges() {
        assert_eq!(fit_inside(800, 600, 400, 300), (400, 300));
        assert_eq!(fit_inside(800, 600, 150, 150), (150, 113));
        assert_eq!(fit_inside(600, 800, 400, 300), (225, 300));
        assert_eq!(fit_inside(100, 50, 400, 300), (100, 50));
        assert_eq!(fit_inside(10_000, 1, 100, 100), (100, 1));
    }

    #[test]
    fn cover_is_exactly_the_box() {
        let decoded = decode(&png(800, 600), &ImageSettings::default()).unwrap();
        let t = Transform {
            resize: Some((150, 150)),
            fit: Fit::Cover,
            ..Transform::default()
        };
        let out = resize(&decoded.image, &t);
        assert_eq!((out.width(), out.height()), (150, 150));
    }

    #[test]
    fn header_over_the_pixel_limit_is_refused_before_decoding() {
        let limits = ImageSettings {
            max_pixels: 1000,
            ..ImageSettings::default()
        };
        let err = decode(&png(40, 30), &limits).err().unwrap();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels {
                    width: 40,
                    height: 30,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_an_image_and_truncation_is_corrupt() {
        let err = decode(b"hello, world", &ImageSettings::default())
            .err()
            .unwrap();
        assert!(matches!(err, ImageError::NotAnImage(_)), "{err}");
        let whole = png(64, 64);
        let err = decode(&whole[..whole.len() / 2], &ImageSettings::default())
            .err()
            .unwrap();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err}");
    }

    /// A JPEG stored 80×60 whose EXIF says "rotate 90° clockwise" (orientation 6) is 60×80 upright.
    #[test]
    fn exif_orientation_is_applied() {
        use image::ImageEncoder;
        let tiff: Vec<u8> = [
            &b"MM\0*"[..],
            &8u32.to_be_bytes(),
            &1u16.to_be_bytes(),
            &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0],
            &0u32.to_be_bytes(),
        ]
        .concat();
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new(&mut jpeg);
        encoder.set_exif_metadata(tiff).unwrap();
        let pixels = vec![128u8; 80 * 60 * 3];
        encoder
            .write_image(&pixels, 80, 60, image::ExtendedColorType::Rgb8)
            .unwrap();
        let decoded = decode(&jpeg, &ImageSettings::default()).unwrap();
        assert_eq!((decoded.image.width(), decoded.image.height()), (60, 80));
    }

    #[test]
    fn every_output_format_decodes_back() {
        let decoded = decode(&png(32, 16), &ImageSettings::default()).unwrap();
        for format in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
            let bytes = encode(&decoded.image, format, Some(90), None).unwrap();
            let back = decode(&bytes, &ImageSettings::default()).unwrap();
            assert_eq!(back.format, format);
            assert_eq!((back.image.width(), back.image.height()), (32, 16));
        }
    }
}
