//! What moderation checks in an upload's bytes, without I/O (so it is
//! tested on bytes alone and runs on a blocking thread):
//!
//! 1. the length and SHA-256 are what was declared;
//! 2. the SHA-256 is not on the block list;
//! 3. the declared type is allowed, and the bytes are that type (magic
//!    numbers, `infer`): a `.jpg` that is really an executable is blocked;
//! 4. an image's header is read first: more pixels than the limit is
//!    blocked before anything is decoded (a decompression bomb is refused,
//!    not run), and the decode itself runs under `image`'s memory limits;
//! 5. an image is re-encoded (which drops EXIF, GPS and XMP data: the
//!    encoders write pixels only), turned upright by its EXIF orientation
//!    first, and a thumbnail is made.
//!
//! The outcome names the first problem found as its reason.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use sha2::{Digest, Sha256};

use crate::signing::hex;

/// What the checks need from the config.
#[derive(Debug, Clone)]
pub struct Rules {
    pub allowed_types: Vec<String>,
    pub blocked_sha256: Vec<String>,
    pub image_max_pixels: u64,
    pub image_max_alloc_bytes: u64,
    pub thumbnail_px: u32,
}

/// What was declared of an upload.
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    pub size: u64,
    pub sha256: &'a str,
    pub content_type: &'a str,
}

/// An image's cleaned copy and thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// The re-encoded image; `None` when the upload is served as it is
    /// (a GIF, which carries no EXIF data).
    pub copy: Option<(Vec<u8>, &'static str)>,
    pub thumbnail: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; images come with their cleaned copy.
    Passed {
        image: Option<Cleaned>,
    },
    Blocked {
        reason: &'static str,
    },
}

/// Types that have no magic number: the bytes must be UTF-8 text.
const TEXT_TYPES: [&str; 4] = ["text/plain", "text/csv", "text/markdown", "application/json"];

/// The declared type and what `infer` may call the same bytes.
fn same_type(declared: &str, sniffed: &str) -> bool {
    declared == sniffed
        || matches!(
            (declared, sniffed),
            ("audio/mp4", "audio/m4a" | "video/mp4") | ("audio/x-m4a", "audio/m4a") | ("audio/wav", "audio/x-wav") | ("image/jpg", "image/jpeg")
        )
}

fn image_format(content_type: &str) -> Option<ImageFormat> {
    match content_type {
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Runs the checks over an upload's bytes.
pub fn inspect(bytes: &[u8], declared: &Declared<'_>, rules: &Rules) -> Outcome {
    if bytes.len() as u64 != declared.size {
        return Outcome::Blocked { reason: "size_mismatch" };
    }
    let sha256 = sha256_hex(bytes);
    if sha256 != declared.sha256 {
        return Outcome::Blocked { reason: "checksum_mismatch" };
    }
    if rules.blocked_sha256.contains(&sha256) {
        return Outcome::Blocked { reason: "blocklisted" };
    }
    if !rules.allowed_types.iter().any(|allowed| allowed == declared.content_type) {
        return Outcome::Blocked { reason: "type_not_allowed" };
    }
    match infer::get(bytes) {
        Some(sniffed) if same_type(declared.content_type, sniffed.mime_type()) => {}
        Some(_) => return Outcome::Blocked { reason: "type_mismatch" },
        None if TEXT_TYPES.contains(&declared.content_type) => {
            if std::str::from_utf8(bytes).is_err() || bytes.contains(&0) {
                return Outcome::Blocked { reason: "type_mismatch" };
            }
        }
        None => return Outcome::Blocked { reason: "type_mismatch" },
    }
    match image_format(declared.content_type) {
        None => Outcome::Passed { image: None },
        Some(format) => match clean_image(bytes, format, rules) {
            Ok(cleaned) => Outcome::Passed { image: Some(cleaned) },
            Err(reason) => Outcome::Blocked { reason },
        },
    }
}

/// Decodes (within the limits), turns upright, re-encodes, and thumbnails.
fn clean_image(bytes: &[u8], format: ImageFormat, rules: &Rules) -> Result<Cleaned, &'static str> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(rules.image_max_alloc_bytes);
    reader.limits(limits);
    // Only the header is read here.
    let mut decoder = reader.into_decoder().map_err(|_| "image_unreadable")?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > rules.image_max_pixels {
        return Err("too_many_pixels");
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|error| match error {
        image::ImageError::Limits(_) => "too_many_pixels",
        _ => "image_unreadable",
    })?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let copy = match format {
        ImageFormat::Jpeg => Some((encode_jpeg(&image)?, "image/jpeg")),
        ImageFormat::Png | ImageFormat::WebP => Some((encode_png(&image)?, "image/png")),
        // GIF carries no EXIF; re-encoding would lose its animation.
        _ => None,
    };
    let thumbnail = encode_jpeg(&image.thumbnail(rules.thumbnail_px, rules.thumbnail_px))?;
    Ok(Cleaned { copy, thumbnail, width, height })
}

fn encode_jpeg(image: &DynamicImage) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    DynamicImage::ImageRgb8(image.to_rgb8()).write_with_encoder(encoder).map_err(|_| "image_unreadable")?;
    Ok(out)
}

fn encode_png(image: &DynamicImage) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut out);
    image.write_with_encoder(encoder).map_err(|_| "image_unreadable")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rules() -> Rules {
        Rules {
            allowed_types: ["image/jpeg", "image/png", "text/plain", "application/pdf"].map(String::from).to_vec(),
            blocked_sha256: Vec::new(),
            image_max_pixels: 10_000_000,
            image_max_alloc_bytes: 256 * 1024 * 1024,
            thumbnail_px: 64,
        }
    }

    fn declared<'a>(bytes: &[u8], sha256: &'a str, content_type: &'a str) -> Declared<'a> {
        Declared { size: bytes.len() as u64, sha256, content_type }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::new_rgb8(width, height);
        encode_png(&image).unwrap()
    }

    #[test]
    fn a_png_passes_with_its_size_and_a_thumbnail() {
        let bytes = png(200, 100);
        let hash = sha256_hex(&bytes);
        let Outcome::Passed { image: Some(cleaned) } = inspect(&bytes, &declared(&bytes, &hash, "image/png"), &rules()) else { panic!("passes") };
        assert_eq!((cleaned.width, cleaned.height), (200, 100));
        let thumbnail = image::load_from_memory(&cleaned.thumbnail).unwrap();
        assert_eq!((thumbnail.width(), thumbnail.height()), (64, 32));
    }

    #[test]
    fn each_problem_blocks_with_its_reason() {
        let bytes = png(4, 4);
        let hash = sha256_hex(&bytes);
        let check = |bytes: &[u8], declared: Declared<'_>, rules: &Rules| inspect(bytes, &declared, rules);
        let blocked = |reason| Outcome::Blocked { reason };
        assert_eq!(check(&bytes, Declared { size: 3, ..declared(&bytes, &hash, "image/png") }, &rules()), blocked("size_mismatch"));
        assert_eq!(check(&bytes, declared(&bytes, &"0".repeat(64), "image/png"), &rules()), blocked("checksum_mismatch"));
        let mut listed = rules();
        listed.blocked_sha256.push(hash.clone());
        assert_eq!(check(&bytes, declared(&bytes, &hash, "image/png"), &listed), blocked("blocklisted"));
        assert_eq!(check(&bytes, declared(&bytes, &hash, "image/gif"), &rules()), blocked("type_not_allowed"));
        assert_eq!(check(&bytes, declared(&bytes, &hash, "image/jpeg"), &rules()), blocked("type_mismatch"));
        assert_eq!(check(&bytes, declared(&bytes, &hash, "text/plain"), &rules()), blocked("type_mismatch"), "a PNG is not text");
        let text = "plain words\n".as_bytes();
        let text_hash = sha256_hex(text);
        assert_eq!(check(text, declared(text, &text_hash, "text/plain"), &rules()), Outcome::Passed { image: None });
        assert_eq!(check(text, declared(text, &text_hash, "application/pdf"), &rules()), blocked("type_mismatch"));
        let mut small = rules();
        small.image_max_pixels = 15;
        assert_eq!(check(&bytes, declared(&bytes, &hash, "image/png"), &small), blocked("too_many_pixels"));
    }
}
