//! The `[media]` table of the config file.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Where the files live: `local` (under `<data_dir>/media`, served by
    /// Confab itself) or `s3://bucket/prefix`.
    pub location: String,
    /// For S3: endpoint, keys, region, as for the history.
    pub storage_options: HashMap<String, String>,
    /// The base of local signed URLs, as clients reach this server
    /// (`https://chat.example.com`); by default the listen address.
    pub public_url: Option<String>,
    /// Largest upload of any type.
    pub max_bytes: u64,
    /// Smaller limits per content type or type prefix (`"image/"`).
    pub max_bytes_by_type: HashMap<String, u64>,
    /// Bytes one user may keep in uploads in all.
    pub quota_bytes: u64,
    /// How long an upload URL works.
    pub upload_url_ttl_secs: u64,
    /// How long a download URL works.
    pub download_url_ttl_secs: u64,
    /// Uploads never completed are removed this long after their upload
    /// URL expired (their bytes, and the record).
    pub incomplete_ttl_secs: u64,
    /// Completed uploads that no message carries (never sent, or their
    /// messages deleted) are removed this long after they were declared.
    pub unattached_ttl_secs: u64,
    /// How often the server looks for such uploads.
    pub sweep_interval_secs: u64,
    /// Content types that may be uploaded.
    pub allowed_types: Vec<String>,
    /// Images with more pixels are blocked before they are decoded.
    pub image_max_pixels: u64,
    /// Memory one image decode may take.
    pub image_max_alloc_bytes: u64,
    /// The longer side of a thumbnail.
    pub thumbnail_px: u32,
    /// SHA-256 (lowercase hex) of files that are always blocked.
    pub blocked_sha256: Vec<String>,
    /// Uploads checked at once (each holds its bytes in memory), each on
    /// a thread of its own.
    pub moderation_concurrency: usize,
    /// The priority of those threads (0 to 19): the checks are CPU work
    /// that should wait for the cores while the chat path does not.
    pub moderation_nice: i32,
    /// Above this size an S3 upload is offered in parts too.
    pub multipart_threshold_bytes: u64,
    /// The size of each part of a multipart upload.
    pub part_bytes: u64,
    pub clamav: Option<ClamavConfig>,
}

/// A ClamAV daemon to scan every upload with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClamavConfig {
    /// clamd's local (unix) socket.
    pub socket: std::path::PathBuf,
    #[serde(default = "default_clamav_timeout")]
    pub timeout_ms: u64,
}

fn default_clamav_timeout() -> u64 {
    30_000
}

const MIB: u64 = 1024 * 1024;

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            location: "local".into(),
            storage_options: HashMap::new(),
            public_url: None,
            max_bytes: 100 * MIB,
            max_bytes_by_type: HashMap::from([("image/".to_string(), 30 * MIB)]),
            quota_bytes: 10 * 1024 * MIB,
            upload_url_ttl_secs: 3_600,
            download_url_ttl_secs: 600,
            incomplete_ttl_secs: 24 * 3_600,
            unattached_ttl_secs: 7 * 24 * 3_600,
            sweep_interval_secs: 600,
            allowed_types: [
                "image/jpeg",
                "image/png",
                "image/gif",
                "image/webp",
                "video/mp4",
                "video/quicktime",
                "audio/mpeg",
                "audio/mp4",
                "audio/ogg",
                "application/pdf",
                "application/zip",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            image_max_pixels: 50_000_000,
            image_max_alloc_bytes: 512 * MIB,
            thumbnail_px: 320,
            blocked_sha256: Vec::new(),
            moderation_concurrency: 2,
            moderation_nice: 19,
            multipart_threshold_bytes: 16 * MIB,
            part_bytes: 8 * MIB,
            clamav: None,
        }
    }
}

impl MediaConfig {
    /// The limit for one content type: the most specific entry, else `max_bytes`.
    pub fn max_bytes_for(&self, content_type: &str) -> u64 {
        let specific = self.max_bytes_by_type.iter().filter(|(prefix, _)| content_type.starts_with(prefix.as_str())).max_by_key(|(prefix, _)| prefix.len());
        specific.map_or(self.max_bytes, |(_, max)| (*max).min(self.max_bytes))
    }

    pub fn is_s3(&self) -> bool {
        self.location.starts_with("s3://")
    }

    /// Every problem of the section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.location != "local" && !self.is_s3() {
            problems.push(format!("[media] location: `{}` is neither \"local\" nor an `s3://bucket/prefix` URL", self.location));
        }
        if self.is_s3() && self.location.trim_start_matches("s3://").split('/').next().is_none_or(str::is_empty) {
            problems.push("[media] location: an S3 location names its bucket, `s3://bucket/prefix`".into());
        }
        if !self.is_s3() && !self.storage_options.is_empty() {
            problems.push("[media] storage_options: only used with an `s3://` location; remove them or set the location".into());
        }
        if self.is_s3() {
            let mut unknown: Vec<&String> =
                self.storage_options.keys().filter(|key| !crate::s3::OPTIONS.contains(&key.to_ascii_uppercase().as_str())).collect();
            unknown.sort();
            for key in unknown {
                problems.push(format!("[media] storage_options: `{key}` is not one of {}", crate::s3::OPTIONS.join(", ")));
            }
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.ends_with('/') {
                problems.push(format!("[media] public_url: `{url}` must be an http(s) URL without a trailing `/`, e.g. \"https://chat.example.com\""));
            }
        }
        for (value, name) in [
            (self.max_bytes, "max_bytes"),
            (self.quota_bytes, "quota_bytes"),
            (self.upload_url_ttl_secs, "upload_url_ttl_secs"),
            (self.download_url_ttl_secs, "download_url_ttl_secs"),
            (self.incomplete_ttl_secs, "incomplete_ttl_secs"),
            (self.unattached_ttl_secs, "unattached_ttl_secs"),
            (self.sweep_interval_secs, "sweep_interval_secs"),
            (self.image_max_pixels, "image_max_pixels"),
            (self.image_max_alloc_bytes, "image_max_alloc_bytes"),
            (u64::from(self.thumbnail_px), "thumbnail_px"),
            (self.moderation_concurrency as u64, "moderation_concurrency"),
        ] {
            if value == 0 {
                problems.push(format!("[media] {name} must be over 0"));
            }
        }
        if !(0..=19).contains(&self.moderation_nice) {
            problems.push(format!("[media] moderation_nice: {} is not between 0 and 19", self.moderation_nice));
        }
        // S3 parts are 5 MiB at least (but the last), 10,000 at most.
        if self.part_bytes < 5 * MIB {
            problems.push(format!("[media] part_bytes: {} is under S3's smallest part, 5 MiB (5242880)", self.part_bytes));
        } else if self.max_bytes / self.part_bytes >= 10_000 {
            problems.push("[media] part_bytes: max_bytes would need more than 10,000 parts; raise part_bytes".into());
        }
        for prefix in self.max_bytes_by_type.keys() {
            if prefix.is_empty() {
                problems.push("[media] max_bytes_by_type: an empty type; name a type (`image/png`) or prefix (`image/`)".into());
            }
        }
        for content_type in &self.allowed_types {
            if !confab_ingest::is_content_type(content_type) {
                problems.push(format!("[media] allowed_types: `{content_type}` is not a media type such as `image/jpeg`"));
            }
        }
        for hash in &self.blocked_sha256 {
            if hash.len() != 64 || !hash.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)) {
                problems.push(format!("[media] blocked_sha256: `{hash}` is not a lowercase hex SHA-256"));
            }
        }
        if let Some(clamav) = &self.clamav {
            if clamav.timeout_ms == 0 {
                problems.push("[media.clamav] timeout_ms must be over 0".into());
            }
            if clamav.socket.as_os_str().is_empty() {
                problems.push("[media.clamav] socket: the path of clamd's LocalSocket".into());
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_by_field() {
        assert!(MediaConfig::default().problems().is_empty());
        let config: MediaConfig = toml::from_str(
            "location = \"ftp://x\"\nmax_bytes = 0\npublic_url = \"chat.example.com/\"\nallowed_types = [\"Image/JPEG\"]\nblocked_sha256 = [\"abc\"]\npart_bytes = 1024",
        )
        .unwrap();
        let problems = config.problems();
        for field in ["location", "max_bytes", "public_url", "allowed_types", "blocked_sha256", "part_bytes"] {
            assert!(problems.iter().any(|problem| problem.contains(field)), "{field}: {problems:?}");
        }
        assert!(toml::from_str::<MediaConfig>("max_byte = 1").is_err(), "a misspelt field is refused");
    }

    #[test]
    fn the_most_specific_type_limit_wins() {
        let mut config = MediaConfig::default();
        config.max_bytes_by_type.insert("image/gif".into(), 1000);
        assert_eq!(config.max_bytes_for("image/gif"), 1000);
        assert_eq!(config.max_bytes_for("image/png"), 30 * MIB);
        assert_eq!(config.max_bytes_for("video/mp4"), 100 * MIB);
    }
}
