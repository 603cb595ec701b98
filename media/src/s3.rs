//! The S3 store (`[media] location = "s3://bucket/prefix"`): the bytes go
//! straight between clients and the bucket through pre-signed URLs; the
//! chat servers only read an upload to check it and write its cleaned copy
//! and thumbnail. Tested against SeaweedFS, which checks signatures.
//!
//! Happy path of an upload:
//!
//! 1. `upload` pre-signs a `PutObject` of `{prefix}/{mediaId}/original.incoming`
//!    with its `Content-Length` and `Content-Type` among the signed
//!    headers: the bucket refuses any other length or type (the signature
//!    no longer matches) and any use after the expiry.
//! 2. A file above `multipart_threshold_bytes` is offered in parts too: a
//!    multipart upload is created now, and each part (`part_bytes`, the
//!    last one shorter) gets a pre-signed `UploadPart` URL with its own
//!    length signed. The client may use either the one URL or the parts.
//! 3. `finish_upload` (on `complete`) asks the bucket for the incoming
//!    object; when it is not there, it lists the parts of the multipart
//!    upload (every page) and, when every part is in with its expected
//!    size, completes it. Either way the object is then copied to
//!    `{mediaId}/original`, which no client URL can write (an upload URL
//!    still works until it expires, after `complete` too, and S3 cannot
//!    refuse it: what it writes then is never read, and goes with the
//!    upload), the incoming object and any unused multipart upload go, and
//!    the copy's size is compared with the declaration.
//! 4. Downloads are pre-signed `GetObject` URLs that also make the bucket
//!    answer with the checked type, the `Content-Disposition` and a cache
//!    header (`response-content-type` and friends are signed too).
//!
//! Failures: a part missing or of the wrong size leaves the upload
//! incomplete (`complete` is 409 and can be repeated once the part is
//! sent); a bucket that cannot be reached is `Store` (503, and moderation
//! retries). `X-Content-Type-Options: nosniff` cannot be set on a pre-signed
//! S3 answer: a CDN in front of the bucket should add it (SECURITY.md).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use crate::store::{object as object_name, MediaStore, Served, Upload, UploadPart, Variant};
use crate::{Error, Result};

pub struct S3Store {
    client: Client,
    bucket: String,
    /// The folder in the bucket, without a trailing `/` (may be empty).
    prefix: String,
    multipart_threshold: u64,
    part_bytes: u64,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("S3Store").field("location", &self.location()).finish()
    }
}

/// A storage option, by its upper-case name or its lower-case one (the
/// history's options are spelled both ways).
fn option<'a>(options: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    options.get(name).or_else(|| options.get(&name.to_ascii_lowercase())).map(String::as_str).filter(|value| !value.is_empty())
}

/// The storage options this store understands.
pub const OPTIONS: [&str; 7] =
    ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_S3_ADDRESSING_STYLE", "AWS_ALLOW_HTTP"];

/// Splits `s3://bucket/prefix` into the bucket and the prefix.
pub fn parse_location(location: &str) -> Option<(String, String)> {
    let rest = location.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl S3Store {
    /// A client of the bucket `location` names, configured by the same
    /// storage options as the history (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// keys, `AWS_S3_ADDRESSING_STYLE = "path"`); without keys, the usual
    /// AWS chain (environment, profile, instance role).
    pub async fn open(location: &str, options: &HashMap<String, String>, multipart_threshold: u64, part_bytes: u64) -> Result<S3Store> {
        let (bucket, prefix) = parse_location(location).ok_or_else(|| Error::store(location, "not an `s3://bucket/prefix` location"))?;
        let mut builder = match (option(options, "AWS_ACCESS_KEY_ID"), option(options, "AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => {
                let token = option(options, "AWS_SESSION_TOKEN").map(str::to_string);
                aws_sdk_s3::config::Builder::new().behavior_version(BehaviorVersion::latest()).credentials_provider(Credentials::new(
                    key,
                    secret,
                    token,
                    None,
                    "confab storage_options",
                ))
            }
            _ => aws_sdk_s3::config::Builder::from(&aws_config::defaults(BehaviorVersion::latest()).load().await),
        };
        builder = builder.region(Region::new(option(options, "AWS_REGION").unwrap_or("us-east-1").to_string()));
        if let Some(endpoint) = option(options, "AWS_ENDPOINT_URL") {
            if endpoint.starts_with("http://") && option(options, "AWS_ALLOW_HTTP") != Some("true") {
                return Err(Error::store(location, format!("the endpoint `{endpoint}` is plain HTTP; set AWS_ALLOW_HTTP = \"true\" to allow it")));
            }
            builder = builder.endpoint_url(endpoint);
        }
        if option(options, "AWS_S3_ADDRESSING_STYLE") == Some("path") {
            builder = builder.force_path_style(true);
        }
        // No checksum headers of the SDK's own on pre-signed requests: a
        // client sends only the headers it is given.
        builder = builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        Ok(S3Store { client: Client::from_conf(builder.build()), bucket, prefix, multipart_threshold, part_bytes })
    }

    /// Fails unless the bucket answers with these credentials (at start).
    pub async fn check(&self) -> Result<()> {
        self.client.list_objects_v2().bucket(&self.bucket).prefix(self.key("")).max_keys(1).send().await.map_err(|error| self.error("list", error))?;
        Ok(())
    }

    /// Where a client's upload of `object` lands: a key of its own, copied
    /// to `object` at `complete`. The upload URL works until it expires,
    /// also after `complete`, and S3 cannot refuse it then; a PUT after
    /// `complete` lands where nothing is read or served (and is deleted
    /// with the upload).
    fn incoming_key(&self, object: &str) -> String {
        self.key(&format!("{object}.incoming"))
    }

    fn key(&self, object: &str) -> String {
        match self.prefix.is_empty() {
            true => object.to_string(),
            false => format!("{}/{object}", self.prefix),
        }
    }

    fn error<E, R>(&self, what: &str, error: aws_sdk_s3::error::SdkError<E, R>) -> Error
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let detail = match &error {
            aws_sdk_s3::error::SdkError::ServiceError(service) => format!("{}", aws_sdk_s3::error::DisplayErrorContext(service.err())),
            other => format!("{}", aws_sdk_s3::error::DisplayErrorContext(other)),
        };
        Error::store(&self.location(), format!("{what}: {detail}"))
    }

    fn presigning(&self, expires_at: i64) -> Result<PresigningConfig> {
        let now = SystemTime::now();
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64);
        let seconds = ((expires_at - now_ms).max(1_000) as u64).div_ceil(1000);
        PresigningConfig::builder()
            .start_time(now)
            .expires_in(Duration::from_secs(seconds))
            .build()
            .map_err(|error| Error::store(&self.location(), format!("cannot sign for {seconds} s: {error}")))
    }

    /// The multipart uploads under way for `key`.
    async fn multipart_uploads(&self, key: &str) -> Result<Vec<String>> {
        let listed = self.client.list_multipart_uploads().bucket(&self.bucket).prefix(key).send().await.map_err(|error| self.error("list uploads", error))?;
        Ok(listed.uploads().iter().filter(|upload| upload.key() == Some(key)).filter_map(|upload| upload.upload_id().map(str::to_string)).collect())
    }

    /// The object's size, or `None` when it is not there.
    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(error) if error.as_service_error().is_some_and(|service| service.is_not_found()) => Ok(None),
            Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 404) => Ok(None),
            Err(error) => Err(self.error("head", error)),
        }
    }

    /// Completes the multipart upload `upload_id` of `key` when each of
    /// its parts is in with the size it was signed for. Whether it did.
    async fn complete_parts(&self, key: &str, upload_id: &str, size: u64) -> Result<bool> {
        let expected = parts(size, self.part_bytes);
        // Up to 1,000 parts an answer: every page.
        let mut listed = Vec::new();
        let mut pages = self.client.list_parts().bucket(&self.bucket).key(key).upload_id(upload_id).into_paginator().send();
        while let Some(page) = pages.next().await {
            listed.extend(page.map_err(|error| self.error("list parts", error))?.parts().iter().cloned());
        }
        let mut completed = Vec::with_capacity(expected.len());
        for (number, _, part_size) in &expected {
            let Some(part) = listed.iter().find(|part| part.part_number() == Some(*number as i32)) else { return Ok(false) };
            if part.size() != Some(*part_size as i64) {
                return Ok(false);
            }
            completed.push(CompletedPart::builder().part_number(*number as i32).set_e_tag(part.e_tag().map(str::to_string)).build());
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|error| self.error("complete the parts", error))?;
        Ok(true)
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        match self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            // Completed or aborted meanwhile: nothing left to abort.
            Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 404) => Ok(()),
            Err(error) => Err(self.error("abort", error)),
        }
    }
}

/// The parts of a `size`-byte upload: `(number, offset, size)`.
pub fn parts(size: u64, part_bytes: u64) -> Vec<(u32, u64, u64)> {
    let part_bytes = part_bytes.max(1);
    (0..size.div_ceil(part_bytes)).map(|index| (index as u32 + 1, index * part_bytes, part_bytes.min(size - index * part_bytes))).collect()
}

/// The headers a client must send with a pre-signed request. The length
/// is signed but left out: every HTTP client sends it from the body (and
/// browsers refuse to be told it), and a body of another length does not
/// match the signature.
fn headers(presigned: &PresignedRequest) -> std::collections::BTreeMap<String, String> {
    presigned
        .headers()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("host"))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[async_trait::async_trait]
impl MediaStore for S3Store {
    fn location(&self) -> String {
        match self.prefix.is_empty() {
            true => format!("s3://{}", self.bucket),
            false => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }

    async fn upload(&self, object: &str, size: u64, content_type: &str, expires_at: i64) -> Result<Upload> {
        let key = self.incoming_key(object);
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_length(size as i64)
            .content_type(content_type)
            .presigned(self.presigning(expires_at)?)
            .await
            .map_err(|error| self.error("sign the upload", error))?;
        let mut upload = Upload { method: "PUT".into(), url: put.uri().to_string(), headers: headers(&put), parts: None };
        if size > self.multipart_threshold {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .content_type(content_type)
                .send()
                .await
                .map_err(|error| self.error("start the parts", error))?;
            let upload_id = created.upload_id().ok_or_else(|| Error::store(&self.location(), "the bucket gave no upload id"))?;
            let mut signed = Vec::new();
            for (number, offset, part_size) in parts(size, self.part_bytes) {
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&key)
                    .upload_id(upload_id)
                    .part_number(number as i32)
                    .content_length(part_size as i64)
                    .presigned(self.presigning(expires_at)?)
                    .await
                    .map_err(|error| self.error("sign a part", error))?;
                signed.push(UploadPart { part_number: number, offset, size: part_size, url: part.uri().to_string() });
            }
            upload.parts = Some(signed);
        }
        Ok(upload)
    }

    async fn download_url(&self, object: &str, served: &Served<'_>, expires_at: i64) -> Result<String> {
        let max_age = ((expires_at - confab_schemas::ids::now_ms()).max(0) / 1000).to_string();
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(object))
            .response_content_type(served.content_type)
            .response_content_disposition(crate::store::content_disposition(served))
            .response_cache_control(format!("public, max-age={max_age}, immutable"))
            .presigned(self.presigning(expires_at)?)
            .await
            .map_err(|error| self.error("sign the download", error))?;
        Ok(get.uri().to_string())
    }

    async fn finish_upload(&self, object: &str, size: u64) -> Result<Option<u64>> {
        let key = self.key(object);
        if let Some(stored) = self.size(&key).await? {
            return Ok(Some(stored)); // Finished already (a repeated complete).
        }
        let incoming = self.incoming_key(object);
        if self.size(&incoming).await?.is_none() {
            let mut completed = false;
            for upload_id in self.multipart_uploads(&incoming).await? {
                if self.complete_parts(&incoming, &upload_id, size).await? {
                    completed = true;
                    break;
                }
            }
            if !completed {
                return Ok(None);
            }
        }
        // What is checked and served is a copy that no client URL can write.
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(&key)
            .copy_source(format!("{}/{incoming}", self.bucket))
            .send()
            .await
            .map_err(|error| self.error("copy the upload", error))?;
        self.client.delete_object().bucket(&self.bucket).key(&incoming).send().await.map_err(|error| self.error("delete", error))?;
        // Sent whole through the one URL, or completed: no parts are needed.
        for upload_id in self.multipart_uploads(&incoming).await? {
            self.abort(&incoming, &upload_id).await?;
        }
        self.size(&key).await
    }

    async fn read(&self, object: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let got = self.client.get_object().bucket(&self.bucket).key(self.key(object)).send().await.map_err(|error| self.error("read", error))?;
        let length = got.content_length().unwrap_or(0).max(0) as u64;
        if length > max_bytes {
            return Err(Error::store(&self.location(), format!("`{object}` is {length} bytes, over {max_bytes}")));
        }
        let mut body = got.body;
        let mut bytes = Vec::with_capacity(length as usize);
        while let Some(chunk) = body.try_next().await.map_err(|error| Error::store(&self.location(), format!("read `{object}`: {error}")))? {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(Error::store(&self.location(), format!("`{object}` is over {max_bytes} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    async fn write(&self, object: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(object))
            .content_type(content_type)
            .body(bytes.into())
            .send()
            .await
            .map_err(|error| self.error("write", error))?;
        Ok(())
    }

    async fn delete_media(&self, media_id: &str) -> Result<()> {
        let incoming = self.incoming_key(&object_name(media_id, Variant::Original));
        for upload_id in self.multipart_uploads(&incoming).await? {
            self.abort(&incoming, &upload_id).await?;
        }
        let keys = Variant::ALL.into_iter().map(|variant| self.key(&object_name(media_id, variant))).chain([incoming]);
        for key in keys {
            self.client.delete_object().bucket(&self.bucket).key(&key).send().await.map_err(|error| self.error("delete", error))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>> {
        let folder = self.key("");
        let mut names = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&folder).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.error("list", error))?;
            for listed in page.contents() {
                if let Some(name) = listed.key().and_then(|key| key.strip_prefix(&folder)) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_bucket_and_prefix() {
        assert_eq!(parse_location("s3://chat/media"), Some(("chat".into(), "media".into())));
        assert_eq!(parse_location("s3://chat/a/b/"), Some(("chat".into(), "a/b".into())));
        assert_eq!(parse_location("s3://chat"), Some(("chat".into(), String::new())));
        assert_eq!(parse_location("s3:///x"), None);
        assert_eq!(parse_location("local"), None);
    }

    #[test]
    fn parts_cover_the_file_once() {
        assert_eq!(parts(10, 4), vec![(1, 0, 4), (2, 4, 4), (3, 8, 2)]);
        assert_eq!(parts(8, 4), vec![(1, 0, 4), (2, 4, 4)]);
        assert_eq!(parts(0, 4), vec![]);
    }
}
