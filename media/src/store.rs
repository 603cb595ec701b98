//! The port the files are kept behind. Two stores implement it: the local
//! one (files under the data directory, URLs served by `confab serve`
//! itself, [`crate::local`]) and S3 ([`crate::s3`]). Every upload is a few
//! objects named `{mediaId}/{variant}`: the bytes as uploaded, the cleaned
//! copy that is served instead (an image re-encoded without its EXIF data),
//! and a thumbnail.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Result;

/// One of an upload's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The bytes as uploaded.
    Original,
    /// The cleaned copy that is served, when moderation made one.
    Clean,
    Thumbnail,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Original, Variant::Clean, Variant::Thumbnail];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Clean => "clean",
            Variant::Thumbnail => "thumbnail",
        }
    }

    pub fn parse(text: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|variant| variant.name() == text)
    }
}

/// An object's name in the store.
pub fn object(media_id: &str, variant: Variant) -> String {
    format!("{media_id}/{}", variant.name())
}

/// Whether `media_id` is one the server made (`f_` and base-32): the
/// local store builds paths from it.
pub fn is_media_id(media_id: &str) -> bool {
    media_id.len() == 22 && media_id.starts_with("f_") && media_id[2..].bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// How a client sends the bytes (`upload` in `POST /v1/media`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Large S3 uploads may also go in parts (an extension): each part's
    /// bytes PUT to its URL, in any order, then `complete`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<UploadPart>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadPart {
    pub part_number: u32,
    /// Where the part starts in the file.
    pub offset: u64,
    pub size: u64,
    pub url: String,
}

/// How a download is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served<'a> {
    pub content_type: &'a str,
    pub filename: &'a str,
    /// `inline` for images shown in the chat, else `attachment`.
    pub inline: bool,
}

/// The `Content-Disposition` of a download: the name quoted for old
/// clients (ASCII only) and in full as RFC 6266's `filename*`.
pub fn content_disposition(served: &Served<'_>) -> String {
    let kind = if served.inline { "inline" } else { "attachment" };
    let ascii: String = served.filename.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let encoded: String = served
        .filename
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[async_trait::async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// Where it keeps the files, for messages.
    fn location(&self) -> String;

    /// How to upload exactly `size` bytes of `content_type` to `object`
    /// until `expires_at` (ms).
    async fn upload(&self, object: &str, size: u64, content_type: &str, expires_at: i64) -> Result<Upload>;

    /// A URL that serves `object` until `expires_at`.
    async fn download_url(&self, object: &str, served: &Served<'_>, expires_at: i64) -> Result<String>;

    /// The size of `object` once its upload is finished (a multipart
    /// upload of the declared `size` is completed here, once every part is
    /// in); `None` while nothing is there.
    async fn finish_upload(&self, object: &str, size: u64) -> Result<Option<u64>>;

    /// The bytes of `object`, refusing more than `max_bytes`.
    async fn read(&self, object: &str, max_bytes: u64) -> Result<Vec<u8>>;

    async fn write(&self, object: &str, bytes: Vec<u8>, content_type: &str) -> Result<()>;

    /// Removes every object of an upload (and an unfinished upload of it).
    async fn delete_media(&self, media_id: &str) -> Result<()>;

    /// Every object's name (tests and the janitor).
    async fn list(&self) -> Result<Vec<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_quote_names_safely() {
        let served = Served { content_type: "image/png", filename: "a \"b\".png", inline: true };
        assert_eq!(content_disposition(&served), "inline; filename=\"a _b_.png\"; filename*=UTF-8''a%20%22b%22.png");
        let served = Served { content_type: "application/pdf", filename: "Zoë.pdf", inline: false };
        assert_eq!(content_disposition(&served), "attachment; filename=\"Zo_.pdf\"; filename*=UTF-8''Zo%C3%AB.pdf");
    }

    #[test]
    fn only_server_made_ids_name_objects() {
        assert!(is_media_id("f_01j9z3abcdefghjkmnpq"));
        assert!(!is_media_id("f_../../etc/passwdxxxx"));
        assert!(!is_media_id("m_01j9z3abcdefghjkmnpq"));
    }
}
