//! Uploads through the signed URLs, exactly as a mobile client sends them
//! (a plain HTTP PUT of the bytes), checked by the moderation workflow,
//! and served only to those who may read the conversation.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::{assert_error, poll_sql, Client, TestServer};

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Declares an upload of `bytes`; the answer of `POST /v1/media`.
async fn declare(client: &Client, conversation_id: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Value {
    let (status, body) = client
        .post(
            "/v1/media",
            json!({"conversationId": conversation_id, "filename": filename, "contentType": content_type, "size": bytes.len(), "sha256": sha256(bytes)}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Sends `bytes` as the upload says: its method, URL and headers, nothing else.
async fn put_bytes(upload: &Value, bytes: Vec<u8>) -> (u16, String) {
    assert_eq!(upload["method"], "PUT");
    let mut request = reqwest::Client::new().put(upload["url"].as_str().unwrap()).body(bytes);
    for (name, value) in upload["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Declares, uploads and completes; the media id.
pub(crate) async fn upload(client: &Client, conversation_id: &str, filename: &str, content_type: &str, bytes: &[u8]) -> String {
    let declared = declare(client, conversation_id, filename, content_type, bytes).await;
    let (status, text) = put_bytes(&declared["upload"], bytes.to_vec()).await;
    assert_eq!(status, 200, "{text}");
    let media_id = declared["mediaId"].as_str().unwrap().to_string();
    let (status, body) = client.post(&format!("/v1/media/{media_id}/complete"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["mediaId"], media_id.as_str());
    media_id
}

/// Polls the media object until moderation has decided.
pub(crate) async fn decided(client: &Client, media_id: &str) -> Value {
    for _ in 0..200 {
        let (status, media) = client.get(&format!("/v1/media/{media_id}")).await;
        assert_eq!(status, 200, "{media}");
        if media["status"] != "pending" {
            return media;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moderation of `{media_id}` never decided");
}

async fn download(url: &str, range: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.unwrap()
}

/// A small JPEG carrying an EXIF block with a (made-up) location in it.
fn jpeg_with_exif(secret: &str) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])));
    let mut plain = Vec::new();
    image.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90)).unwrap();
    // APP1 "Exif": a big-endian TIFF header, an empty IFD, then the text.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\0\0\0\0\0".to_vec();
    exif.extend_from_slice(secret.as_bytes());
    let mut bytes = plain[..2].to_vec();
    bytes.extend_from_slice(&[0xFF, 0xE1]);
    bytes.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    bytes.extend_from_slice(&exif);
    bytes.extend_from_slice(&plain[2..]);
    bytes
}

/// A PNG whose header claims 100,000 × 100,000 pixels (40 GB decoded).
fn png_bomb() -> Vec<u8> {
    let mut bytes = Vec::new();
    image::DynamicImage::new_luma8(1, 1).write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes)).unwrap();
    // Signature (8), length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test]
async fn a_file_goes_up_and_down_through_signed_urls_for_members_only() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;
    let bytes = b"minutes of the meeting\n".repeat(1_000);

    assert_error(
        &carol.post("/v1/media", json!({"conversationId": group, "filename": "a.txt", "contentType": "text/plain", "size": 3, "sha256": sha256(b"abc")})).await,
        403,
        "forbidden",
    );
    let too_big = json!({"conversationId": group, "filename": "a.txt", "contentType": "text/plain", "size": 200u64 << 20, "sha256": sha256(b"abc")});
    assert_error(&alice.post("/v1/media", too_big).await, 413, "too_large");

    let declared = declare(&alice, &group, "minutes.txt", "text/plain", &bytes).await;
    let media_id = declared["mediaId"].as_str().unwrap().to_string();
    assert_error(&alice.post(&format!("/v1/media/{media_id}/complete"), json!({})).await, 409, "conflict");
    // The store takes exactly the declared length, through an unforged URL.
    let (status, _) = put_bytes(&declared["upload"], bytes[1..].to_vec()).await;
    assert_eq!(status, 400, "a short body is refused");
    let mut forged = declared["upload"].clone();
    forged["url"] = json!(forged["url"].as_str().unwrap().replace("signature=", "signature=0"));
    assert_eq!(put_bytes(&forged, bytes.clone()).await.0, 403, "a forged signature is refused");
    assert_eq!(put_bytes(&declared["upload"], bytes.clone()).await.0, 200);
    let (status, body) = alice.post(&format!("/v1/media/{media_id}/complete"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let media = decided(&alice, &media_id).await;
    assert_eq!(media["status"], "ready", "{media}");
    assert_eq!(media["size"], bytes.len());
    assert_eq!(put_bytes(&declared["upload"], bytes.clone()).await.0, 409, "a completed upload's bytes stay");

    // Not attached to anything yet: only the uploader sees it.
    assert_error(&bob.get(&format!("/v1/media/{media_id}")).await, 404, "not_found");
    let (status, message) =
        alice.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "m1", "body": "", "attachments": [{"mediaId": media_id}]})).await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["attachments"][0]["mediaId"], media_id.as_str());
    assert_eq!(message["attachments"][0]["status"], "ready");
    let (status, media) = bob.get(&format!("/v1/media/{media_id}")).await;
    assert_eq!(status, 200, "a member who may read the message sees it: {media}");
    assert_error(&carol.get(&format!("/v1/media/{media_id}")).await, 404, "not_found");
    let (status, _) =
        carol.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "c1", "body": "x", "attachments": [{"mediaId": media_id}]})).await;
    assert_eq!(status, 403, "a stranger cannot send into the group, with or without the file");

    let url = media["url"].as_str().unwrap();
    let response = download(url, None).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["content-disposition"].to_str().unwrap().contains("minutes.txt"), "{headers:?}");
    assert!(headers["cache-control"].to_str().unwrap().contains("max-age"), "{headers:?}");
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let ranged = download(url, Some("bytes=0-9")).await;
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &bytes[..10]);
    assert_eq!(download(&url.replace("signature=", "signature=0"), None).await.status(), 403, "a forged download URL");
    let later = url.split("expires=").nth(1).unwrap().split('&').next().unwrap();
    let stretched = url.replace(&format!("expires={later}"), &format!("expires={}", later.parse::<i64>().unwrap() + 3_600_000));
    assert_eq!(download(&stretched, None).await.status(), 403, "an expiry moved later breaks the signature");

    // A URL signed with the server's own key stops working at its expiry.
    let key = std::fs::read(server.data_dir.join("secrets").join("media.key")).unwrap();
    let signer = confab_media::signing::Signer::new(key);
    let object = format!("{media_id}/original");
    let expired = confab_schemas::ids::now_ms() - 1_000;
    let signature = signer.sign(&confab_media::signing::Grant::Get { object: &object }, expired);
    let base = url.split("/v1/media/objects/").next().unwrap();
    let old = format!("{base}/v1/media/objects/{object}?expires={expired}&signature={signature}");
    assert_eq!(download(&old, None).await.status(), 403, "an expired URL");
}

#[tokio::test]
async fn images_are_cleaned_and_bombs_and_lies_are_blocked() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;

    let photo = jpeg_with_exif("GPS 48.8584N 2.2945E SECRET");
    assert!(contains(&photo, b"SECRET"));
    let photo_id = upload(&alice, &dm, "tower.jpg", "image/jpeg", &photo).await;
    let media = decided(&alice, &photo_id).await;
    assert_eq!(media["status"], "ready", "{media}");
    assert_eq!((media["width"].as_u64(), media["height"].as_u64()), (Some(640), Some(480)));
    let served = download(media["url"].as_str().unwrap(), None).await;
    assert_eq!(served.headers()["content-type"], "image/jpeg");
    let served = served.bytes().await.unwrap();
    assert!(!contains(&served, b"SECRET") && !contains(&served, b"Exif"), "the EXIF block is gone");
    assert_eq!(image::load_from_memory(&served).unwrap().width(), 640);
    let thumbnail = download(media["thumbnailUrl"].as_str().unwrap(), None).await.bytes().await.unwrap();
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert!(thumbnail.width() <= 320 && thumbnail.height() <= 320, "{}x{}", thumbnail.width(), thumbnail.height());
    assert_eq!(media["sha256"], sha256(&photo), "size and sha256 describe the upload");

    let bomb_id = upload(&alice, &dm, "bomb.png", "image/png", &png_bomb()).await;
    let bomb = decided(&alice, &bomb_id).await;
    assert_eq!((bomb["status"].as_str(), bomb["reason"].as_str()), (Some("blocked"), Some("too_many_pixels")), "{bomb}");
    assert!(bomb["url"].is_null() && bomb["thumbnailUrl"].is_null(), "a blocked file has no URL: {bomb}");

    let lie = b"#!/bin/sh\necho not a picture\n".to_vec();
    let lie_id = upload(&alice, &dm, "cat.png", "image/png", &lie).await;
    let lie = decided(&alice, &lie_id).await;
    assert_eq!((lie["status"].as_str(), lie["reason"].as_str()), (Some("blocked"), Some("type_mismatch")), "{lie}");

    // Even a well-signed URL never serves a blocked file.
    let key = std::fs::read(server.data_dir.join("secrets").join("media.key")).unwrap();
    let signer = confab_media::signing::Signer::new(key);
    let object = format!("{lie_id}/original");
    let expires = confab_schemas::ids::now_ms() + 60_000;
    let signature = signer.sign(&confab_media::signing::Grant::Get { object: &object }, expires);
    let url = format!("{}/v1/media/objects/{object}?expires={expires}&signature={signature}", server.base);
    assert_eq!(download(&url, None).await.status(), 404);
    let (status, message) =
        alice.post("/v1/messages", json!({"conversationId": dm, "clientMsgId": "b1", "body": "look", "attachments": [{"mediaId": lie_id}]})).await;
    assert_eq!(status, 400, "a blocked upload cannot be attached: {message}");

    // The blocks are audited, and every step is in the history's `media` table.
    let (status, _) = alice.post("/v1/admin/roles", json!({"userId": alice.user_id, "role": "compliance"})).await;
    assert_eq!(status, 204);
    let sql = format!("SELECT event_type, reason FROM media WHERE media_id = '{bomb_id}' ORDER BY ts, event_type");
    poll_sql(&alice, &sql, |rows| rows.as_array().is_some_and(|rows| rows.iter().any(|row| row[0] == "blocked" && row[1] == "too_many_pixels"))).await;
}

#[tokio::test]
async fn a_scanner_verdict_reaches_members_as_media_update() {
    let temporary = tempfile::tempdir().unwrap();
    let socket = temporary.path().join("clamd.sock");
    let (release, released) = tokio::sync::watch::channel(false);
    confab_media::clamav::fake::serve(&socket, Some(released)).unwrap();
    let mut config = crate::harness::test_config(&temporary.path().join("data"));
    config.media.clamav = Some(confab_media::ClamavConfig { socket, timeout_ms: 30_000 });
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let mut bob_ws = crate::ws::Ws::connect(&bob, None).await;
    let media_id = upload(&alice, &dm, "notes.txt", "text/plain", b"harmless words, then EVIL! at the end\n").await;
    let (status, message) =
        alice.post("/v1/messages", json!({"conversationId": dm, "clientMsgId": "u1", "body": "", "attachments": [{"mediaId": media_id}]})).await;
    assert_eq!(status, 201, "a pending upload can be sent: {message}");
    assert_eq!(message["attachments"][0]["status"], "pending");
    assert!(message["attachments"][0]["url"].is_null(), "a message stores no URL: {message}");
    assert_eq!(bob_ws.next_of("message.new").await["message"]["attachments"][0]["status"], "pending");
    release.send_replace(true);
    let update = bob_ws.next_of("media.update").await;
    assert_eq!(update["messageId"], message["messageId"]);
    assert_eq!(update["conversationId"], dm.as_str());
    assert_eq!((update["media"]["status"].as_str(), update["media"]["reason"].as_str()), (Some("blocked"), Some("malware")), "{update}");
    let (_, page) = bob.get("/v1/sync?limit=100").await;
    let synced = page["events"].as_array().unwrap().iter().find(|event| event["type"] == "media.update").cloned().expect("media.update in sync");
    assert_eq!(synced["media"]["status"], "blocked");
    let (_, history) = bob.get(&format!("/v1/conversations/{dm}/messages")).await;
    assert_eq!(history["messages"][0]["attachments"][0]["status"], "blocked", "the stored message carries the verdict");
    // A clean file through the same scanner is ready.
    let clean_id = upload(&alice, &dm, "ok.txt", "text/plain", b"nothing to see\n").await;
    assert_eq!(decided(&alice, &clean_id).await["status"], "ready");
}

#[tokio::test]
async fn uploads_are_bounded_per_hour_and_by_quota() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    config.gateway.rate_limits.enabled = true;
    config.gateway.rate_limits.uploads_per_account = Some(confab_gateway::rate_limit::Rate { per_second: 0.001, burst: 3 });
    config.media.quota_bytes = 1_000;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    declare(&alice, &dm, "a.txt", "text/plain", &[b'a'; 600]).await;
    let over = json!({"conversationId": dm, "filename": "b.txt", "contentType": "text/plain", "size": 600, "sha256": sha256(&[b'b'; 600])});
    let message = assert_error(&alice.post("/v1/media", over).await, 413, "too_large");
    assert!(message.contains("quota"), "{message}");
    declare(&alice, &dm, "c.txt", "text/plain", &[b'c'; 300]).await;
    let limited =
        alice.post("/v1/media", json!({"conversationId": dm, "filename": "d.txt", "contentType": "text/plain", "size": 1, "sha256": sha256(b"d")})).await;
    assert_error(&limited, 429, "rate_limited");
    declare(&bob, &dm, "e.txt", "text/plain", b"e").await;
    // Files per message: `[limits] attachments_max_count` (10).
    let eleven: Vec<Value> = (0..11).map(|index| json!({"name": format!("link {index}")})).collect();
    let message = assert_error(&bob.post("/v1/messages", json!({"conversationId": dm, "clientMsgId": "many", "attachments": eleven})).await, 413, "too_large");
    assert!(message.contains("attachments") && message.contains("10"), "{message}");
}

#[tokio::test]
async fn uploads_never_completed_are_removed_with_their_bytes() {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    config.media.upload_url_ttl_secs = 1;
    config.media.incomplete_ttl_secs = 1;
    config.media.sweep_interval_secs = 1;
    config.media.quota_bytes = 1_000;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let bytes = vec![b'x'; 800];
    let abandoned = declare(&alice, &dm, "left.txt", "text/plain", &bytes).await;
    assert_eq!(put_bytes(&abandoned["upload"], bytes.clone()).await.0, 200, "the bytes arrive, but complete never comes");
    let media_id = abandoned["mediaId"].as_str().unwrap();
    let folder = server.data_dir.join("media").join("objects").join(media_id);
    assert!(folder.join("original").exists());
    let kept = upload(&alice, &dm, "kept.txt", "text/plain", b"kept").await;
    // Files that no upload record names (a crash between a removal's two
    // steps) go too.
    let orphan = server.data_dir.join("media").join("objects").join("f_0000000000orphaned00");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("original"), b"left behind").unwrap();
    for _ in 0..100 {
        if !folder.exists() && !orphan.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!folder.exists(), "the abandoned upload's directory is gone");
    assert!(!orphan.exists(), "files without a record are gone");
    assert_error(&alice.get(&format!("/v1/media/{media_id}")).await, 404, "not_found");
    assert_eq!(decided(&alice, &kept).await["status"], "ready", "a completed upload stays");
    assert!(server.data_dir.join("media").join("objects").join(&kept).exists());
    // Its quota is free again.
    declare(&alice, &dm, "again.txt", "text/plain", &bytes).await;
}

#[tokio::test]
async fn moderation_runs_on_temporal_with_the_same_verdicts() {
    let Some(workflows) = crate::harness::temporal_workflows() else { return };
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    config.workflows = workflows;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let photo = jpeg_with_exif("SECRET");
    let photo_id = upload(&alice, &dm, "p.jpg", "image/jpeg", &photo).await;
    let bomb_id = upload(&alice, &dm, "b.png", "image/png", &png_bomb()).await;
    let photo = decided(&alice, &photo_id).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    let served = download(photo["url"].as_str().unwrap(), None).await.bytes().await.unwrap();
    assert!(!contains(&served, b"SECRET"));
    assert_eq!(decided(&alice, &bomb_id).await["reason"], "too_many_pixels");
    server.stop().await;
}

/// Where a test's uploads are, to list them as an operator would: the
/// directory of the local store, or the bucket (through SeaweedFS's filer,
/// not through Confab).
enum Listing<'a> {
    Local(&'a std::path::Path),
    Bucket(&'a crate::s3::S3, &'a str),
}

impl Listing<'_> {
    async fn objects_of(&self, media_id: &str) -> Vec<String> {
        match self {
            Listing::Local(data_dir) => match std::fs::read_dir(data_dir.join("media").join("objects").join(media_id)) {
                Ok(files) => files.flatten().map(|file| file.file_name().to_string_lossy().to_string()).collect(),
                Err(_) => Vec::new(),
            },
            Listing::Bucket(s3, prefix) => crate::s3::objects_under(s3, &format!("{prefix}/{media_id}")).await,
        }
    }
}

/// Retention and erasure delete the files of the messages they delete;
/// what a kept message carries stays.
async fn retention_and_erasure_take_the_files_along(server: &TestServer, admin: &Client, listing: Listing<'_>) {
    let admin = admin.clone();
    let bob = server.user("sam").await;
    let carol = server.user("officer").await;
    assert_eq!(admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await.0, 204);
    let group = admin.conversation("group", &[&bob]).await;
    let send = |client: &Client, id: &str, media_id: &str| {
        let body = json!({"conversationId": group, "clientMsgId": id, "body": "", "attachments": [{"mediaId": media_id}]});
        let client = client.clone();
        async move {
            let (status, message) = client.post("/v1/messages", body).await;
            assert_eq!(status, 201, "{message}");
        }
    };
    let old = upload(&admin, &group, "old.txt", "text/plain", b"an old file").await;
    send(&admin, "a1", &old).await;
    let bobs = upload(&bob, &group, "bob.txt", "text/plain", b"bob's file").await;
    send(&bob, "b1", &bobs).await;
    let unsent = upload(&bob, &group, "draft.txt", "text/plain", b"bob's draft").await;
    for (uploader, media_id) in [(&admin, &old), (&bob, &bobs), (&bob, &unsent)] {
        assert_eq!(decided(uploader, media_id).await["status"], "ready");
        assert!(!listing.objects_of(media_id).await.is_empty(), "`{media_id}` is stored");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = confab_schemas::ids::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let kept = upload(&admin, &group, "kept.txt", "text/plain", b"a newer file").await;
    send(&admin, "a2", &kept).await;

    let (status, outcome) = carol.post("/v1/admin/retention", json!({"conversationId": group, "before": cutoff})).await;
    assert_eq!(status, 200, "{outcome}");
    assert!(listing.objects_of(&old).await.is_empty(), "retention deleted the file of the message it deleted");
    assert_error(&admin.get(&format!("/v1/media/{old}")).await, 404, "not_found");
    assert!(!listing.objects_of(&kept).await.is_empty(), "a newer message's file stays");
    assert_eq!(decided(&bob, &kept).await["status"], "ready");

    // Bob's own messages went with retention; erasure takes his draft too.
    assert!(!listing.objects_of(&unsent).await.is_empty(), "an upload no message carried is not retention's");
    let (status, erased) = carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await;
    assert_eq!(status, 200, "{erased}");
    assert!(listing.objects_of(&unsent).await.is_empty(), "erasure deleted every upload of the user");
    assert!(listing.objects_of(&bobs).await.is_empty());
    assert!(!listing.objects_of(&kept).await.is_empty());

    // A message deleted by its sender takes its file along too.
    let regretted = upload(&admin, &group, "oops.txt", "text/plain", b"sent by mistake").await;
    assert_eq!(decided(&admin, &regretted).await["status"], "ready");
    let (status, message) =
        admin.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "a3", "body": "", "attachments": [{"mediaId": regretted}]})).await;
    assert_eq!(status, 201, "{message}");
    let (status, _) = admin.delete(&format!("/v1/messages/{}", message["messageId"].as_str().unwrap())).await;
    assert_eq!(status, 204);
    for _ in 0..100 {
        if listing.objects_of(&regretted).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listing.objects_of(&regretted).await.is_empty(), "the deleted message's file is gone");
    assert_error(&admin.get(&format!("/v1/media/{regretted}")).await, 404, "not_found");

    let sql = format!("SELECT media_id, reason FROM media WHERE event_type = 'removed' AND conversation_id = '{group}' ORDER BY media_id");
    let mut expected = vec![json!([old, "retention"]), json!([bobs, "retention"]), json!([unsent, "erasure"]), json!([regretted, "deleted"])];
    expected.sort_by_key(|row| row[0].as_str().unwrap().to_string());
    poll_sql(&carol, &sql, |rows| rows.as_array() == Some(&expected)).await;
}

#[tokio::test]
async fn retention_and_erasure_delete_the_files_of_what_they_delete() {
    let server = TestServer::start().await;
    let admin = server.user("admin").await;
    retention_and_erasure_take_the_files_along(&server, &admin, Listing::Local(&server.data_dir)).await;
}

/// The `[media]` section of a server whose files live in the test bucket.
fn s3_media(s3: &crate::s3::S3, prefix: &str, secret_key: &str) -> confab_media::MediaConfig {
    let mut media = confab_media::MediaConfig { location: format!("s3://{}/{prefix}", s3.bucket), ..Default::default() };
    media.storage_options = crate::s3::storage_options(s3, secret_key);
    media
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_in_an_s3_bucket_goes_through_its_signatures() {
    let Some(s3) = crate::s3::s3_server() else { return };
    let temporary = tempfile::tempdir().unwrap();
    let prefix = confab_schemas::ids::new_id("media", confab_schemas::ids::now_ms());

    // A wrong secret is refused by the bucket: no start.
    let mut refused = crate::harness::test_config(temporary.path());
    refused.media = s3_media(&s3, &prefix, "not-the-secret");
    let error = match confab::server::start(refused).await {
        Ok(_) => panic!("a server with a wrong S3 secret for its media started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("[media]") && error.contains("SignatureDoesNotMatch") || error.contains("403"), "{error}");

    let mut config = crate::harness::test_config(temporary.path());
    config.media = s3_media(&s3, &prefix, &s3.secret_key);
    config.media.download_url_ttl_secs = 3;
    config.media.multipart_threshold_bytes = 6 << 20;
    config.media.part_bytes = 5 << 20;
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let group = alice.conversation("group", &[&bob]).await;

    let bytes = b"minutes kept in a bucket\n".repeat(400);
    let declared = declare(&alice, &group, "minutes.txt", "text/plain", &bytes).await;
    assert!(declared["upload"]["parts"].is_null(), "a small file goes in one PUT: {declared}");
    let url = declared["upload"]["url"].as_str().unwrap();
    assert!(url.starts_with(&s3.endpoint) && url.contains("X-Amz-Signature="), "the client talks to the bucket: {url}");
    let media_id = declared["mediaId"].as_str().unwrap().to_string();
    let (status, _) = put_bytes(&declared["upload"], bytes[1..].to_vec()).await;
    assert_eq!(status, 403, "the bucket refuses a length other than the signed one");
    let mut forged = declared["upload"].clone();
    forged["url"] = json!(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"));
    assert_eq!(put_bytes(&forged, bytes.clone()).await.0, 403, "the bucket refuses a forged signature");
    assert_error(&alice.post(&format!("/v1/media/{media_id}/complete"), json!({})).await, 409, "conflict");
    assert_eq!(put_bytes(&declared["upload"], bytes.clone()).await.0, 200);
    assert_eq!(alice.post(&format!("/v1/media/{media_id}/complete"), json!({})).await.0, 202);
    assert_eq!(decided(&alice, &media_id).await["status"], "ready");
    let (status, message) =
        alice.post("/v1/messages", json!({"conversationId": group, "clientMsgId": "m1", "body": "", "attachments": [{"mediaId": media_id}]})).await;
    assert_eq!(status, 201, "{message}");
    assert_error(&carol.get(&format!("/v1/media/{media_id}")).await, 404, "not_found");
    let (status, media) = bob.get(&format!("/v1/media/{media_id}")).await;
    assert_eq!(status, 200, "{media}");
    let download_url = media["url"].as_str().unwrap().to_string();
    assert!(download_url.starts_with(&s3.endpoint), "{download_url}");
    let response = download(&download_url, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert!(response.headers()["content-disposition"].to_str().unwrap().contains("minutes.txt"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(download(&download_url, Some("bytes=0-6")).await.bytes().await.unwrap().as_ref(), b"minutes");
    // The upload URL still works at the bucket after `complete`, but what
    // it writes then is never what is checked and served.
    let swapped: Vec<u8> = bytes.iter().map(|byte| if *byte == b'm' { b'M' } else { *byte }).collect();
    put_bytes(&declared["upload"], swapped).await;
    assert_eq!(download(&download_url, None).await.bytes().await.unwrap().as_ref(), bytes.as_slice(), "the checked bytes are served");
    let tampered = download_url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(download(&tampered, None).await.status(), 403, "a forged download URL");

    // Images are cleaned on the way through the bucket too.
    let photo = jpeg_with_exif("GPS 48.8584N 2.2945E SECRET");
    let photo_id = upload(&alice, &group, "tower.jpg", "image/jpeg", &photo).await;
    let media = decided(&alice, &photo_id).await;
    assert_eq!(media["status"], "ready", "{media}");
    let served = download(media["url"].as_str().unwrap(), None).await.bytes().await.unwrap();
    assert!(!contains(&served, b"SECRET") && image::load_from_memory(&served).is_ok(), "the clean copy is served");
    let mut stored = crate::s3::objects_under(&s3, &format!("{prefix}/{photo_id}")).await;
    stored.sort();
    let names: Vec<&str> = stored.iter().map(|path| path.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["clean", "original", "thumbnail"], "{stored:?}");

    // A file above the threshold may go up in parts, each signed with its length.
    let large: Vec<u8> = (0..(11u32 << 20)).map(|index| b"abcdefghijklmnopqrstuvwxyz\n"[(index % 27) as usize]).collect();
    let declared = declare(&alice, &group, "large.txt", "text/plain", &large).await;
    let large_id = declared["mediaId"].as_str().unwrap().to_string();
    let parts = declared["upload"]["parts"].as_array().expect("parts for a large file").clone();
    let sizes: Vec<u64> = parts.iter().map(|part| part["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [5 << 20, 5 << 20, 1 << 20]);
    let put_part = |part: &Value, bytes: Vec<u8>| {
        let url = part["url"].as_str().unwrap().to_string();
        async move { reqwest::Client::new().put(url).body(bytes).send().await.unwrap().status().as_u16() }
    };
    let slice = |part: &Value| {
        let (offset, size) = (part["offset"].as_u64().unwrap() as usize, part["size"].as_u64().unwrap() as usize);
        large[offset..offset + size].to_vec()
    };
    assert_eq!(put_part(&parts[1], slice(&parts[1])[1..].to_vec()).await, 403, "a part of another length is refused");
    assert_eq!(put_part(&parts[0], slice(&parts[0])).await, 200);
    assert_eq!(put_part(&parts[2], slice(&parts[2])).await, 200);
    assert_error(&alice.post(&format!("/v1/media/{large_id}/complete"), json!({})).await, 409, "conflict");
    assert_eq!(put_part(&parts[1], slice(&parts[1])).await, 200);
    let (status, body) = alice.post(&format!("/v1/media/{large_id}/complete"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let media = decided(&alice, &large_id).await;
    assert_eq!(media["status"], "ready", "the parts make the declared file: {media}");
    let fetched = download(media["url"].as_str().unwrap(), None).await.bytes().await.unwrap();
    assert_eq!(sha256(&fetched), sha256(&large));

    // A download URL stops working when it expires.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(download(&download_url, None).await.status(), 403, "an expired download URL");

    // Alice, the first account, is the administrator.
    retention_and_erasure_take_the_files_along(&server, &alice, Listing::Bucket(&s3, &prefix)).await;
}

/// The real clamd that `tests/run` starts, with a signature database
/// built by `sigtool` (see `tests/servers/clamav`).
fn clamd() -> Option<(std::path::PathBuf, Vec<u8>)> {
    match (std::env::var_os("CONFAB_TEST_CLAMD_SOCKET"), std::env::var_os("CONFAB_TEST_EICAR")) {
        (Some(socket), Some(eicar)) => Some((socket.into(), std::fs::read(eicar).unwrap())),
        _ if std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_some() => {
            panic!("CONFAB_TEST_CLAMD_SOCKET is not set: run the tests with tests/run, which starts clamd")
        }
        _ => {
            eprintln!("skipped: no clamd (CONFAB_TEST_CLAMD_SOCKET); tests/run starts one");
            None
        }
    }
}

#[tokio::test]
async fn clamav_blocks_the_eicar_file() {
    let Some((socket, eicar)) = clamd() else { return };
    let temporary = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(temporary.path());
    config.media.clamav = Some(confab_media::ClamavConfig { socket, timeout_ms: 30_000 });
    let server = TestServer::start_with(config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dm = alice.conversation("dm", &[&bob]).await;
    let infected = upload(&alice, &dm, "eicar.txt", "text/plain", &eicar).await;
    let media = decided(&alice, &infected).await;
    assert_eq!((media["status"].as_str(), media["reason"].as_str()), (Some("blocked"), Some("malware")), "{media}");
    assert!(media["url"].is_null());
    let photo = upload(&alice, &dm, "tower.jpg", "image/jpeg", &jpeg_with_exif("clean")).await;
    assert_eq!(decided(&alice, &photo).await["status"], "ready", "a clean file passes the same scanner");
    // The block is audited with the file's hash.
    assert_eq!(alice.post("/v1/admin/roles", json!({"userId": alice.user_id, "role": "compliance"})).await.0, 204);
    let sql = format!("SELECT action FROM audit WHERE action = 'media.block' AND details LIKE '%{infected}%'");
    poll_sql(&alice, &sql, |rows| rows.as_array().is_some_and(|rows| rows.len() == 1)).await;
}
