//! Bytes in, bytes out: decoding under limits, EXIF orientation, resizing and encoding. No I/O, no async: the
//! worker runs these on blocking threads, and unit tests call them directly.

use crate::config::{Fit, ImageSettings, OutputFormat, Transform};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// JPEG quality when a transform gives none: visually lossless for photos at a third of quality 100's size.
pub const DEFAULT_JPEG_QUALITY: u8 = 85;

/// Why an image was not processed. The first four are the file's fault (logged and skipped); the rest are ours.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("refused: {width}x{height} is {} pixels, over settings.images.max_pixels = {limit}", *width as u64 * *height as u64)]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error(
        "refused: needs {needed} bytes of memory, over settings.images.max_memory = {limit} bytes"
    )]
    TooMuchMemory { needed: u64, limit: u64 },
    #[error("refused by {0}")]
    Refused(String),
    #[error("cannot encode {format:?}: {message}")]
    Encode {
        format: OutputFormat,
        message: String,
    },
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
}

impl ImageError {
    /// The file itself is the problem (skipped, not retried): as opposed to a provider or encoder failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImageError::NotAnImage(_)
                | ImageError::Corrupt(_)
                | ImageError::TooManyPixels { .. }
                | ImageError::TooMuchMemory { .. }
                | ImageError::Refused(_)
        )
    }
}

/// A decoded image, upright (EXIF orientation applied), and the format it came in.
pub struct Decoded {
    pub image: DynamicImage,
    pub format: OutputFormat,
}

/// Decodes `bytes`, refusing before decoding any pixel when the header announces more than the limits allow.
pub fn decode(bytes: &[u8], limits: &ImageSettings) -> Result<Decoded, ImageError> {
    let memory = limits.max_memory.0;
    if bytes.len() as u64 > memory {
        return Err(ImageError::TooMuchMemory {
            needed: bytes.len() as u64,
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
    if decoder.total_bytes() > memory {
        return Err(ImageError::TooMuchMemory {
            needed: decoder.total_bytes(),
            limit: memory,
        });
    }
    // A broken EXIF block is not worth losing the image over: it is shown as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, memory))?;
    image.apply_orientation(orientation);
    Ok(Decoded { image, format })
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
        image::ImageError::Unsupported(u) => ImageError::NotAnImage(u.to_string()),
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

/// Applies one transform's resize (format and quality are the encoder's business).
pub fn resize(image: &DynamicImage, transform: &Transform) -> DynamicImage {
    let Some((box_w, box_h)) = transform.resize else {
        return image.clone();
    };
    let (w, h) = (image.width(), image.height());
    match transform.fit {
        Fit::Inside => {
            let (nw, nh) = fit_inside(w, h, box_w, box_h);
            if (nw, nh) == (w, h) {
                image.clone()
            } else {
                scale_to(image, nw, nh)
            }
        }
        Fit::Cover => {
            let scale = f64::max(box_w as f64 / w as f64, box_h as f64 / h as f64);
            let nw = ((w as f64 * scale).ceil() as u32).max(box_w);
            let nh = ((h as f64 * scale).ceil() as u32).max(box_h);
            let scaled = scale_to(image, nw, nh);
            scaled.crop_imm((nw - box_w) / 2, (nh - box_h) / 2, box_w, box_h)
        }
    }
}

/// High-quality scaling that stays fast for big reductions: a cheap box reduction to twice the target first
/// (Lanczos' cost grows with the reduction factor), then Lanczos3 for the last step.
fn scale_to(image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    if image.width() >= width * 4 && image.height() >= height * 4 {
        let rough = image.thumbnail_exact(width * 2, height * 2);
        return rough.resize_exact(width, height, FilterType::Lanczos3);
    }
    image.resize_exact(width, height, FilterType::Lanczos3)
}

/// Encodes in `format`; JPEG output of an image with transparency is flattened onto white.
pub fn encode(
    image: &DynamicImage,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let fail = |e: image::ImageError| ImageError::Encode {
        format,
        message: e.to_string(),
    };
    match format {
        OutputFormat::Jpeg => {
            let rgb = flatten_on_white(image);
            let quality = quality.unwrap_or(DEFAULT_JPEG_QUALITY);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .encode_image(&rgb)
                .map_err(fail)?;
        }
        // Stored images are written once and read many times: worth the slower, smaller setting.
        OutputFormat::Png => image
            .write_with_encoder(image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Best,
                image::codecs::png::FilterType::Adaptive,
            ))
            .map_err(fail)?,
        OutputFormat::Webp => {
            let eight_bit = match image.color().has_alpha() {
                true => DynamicImage::ImageRgba8(image.to_rgba8()),
                false => DynamicImage::ImageRgb8(image.to_rgb8()),
            };
            eight_bit
                .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out))
                .map_err(fail)?;
        }
    }
    Ok(out)
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
        encode(&img, OutputFormat::Png, None).unwrap()
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
            let bytes = encode(&decoded.image, format, Some(90)).unwrap();
            let back = decode(&bytes, &ImageSettings::default()).unwrap();
            assert_eq!(back.format, format);
            assert_eq!((back.image.width(), back.image.height()), (32, 16));
        }
    }
}
