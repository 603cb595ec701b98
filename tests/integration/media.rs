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
async fn upload(client: &Client, conversation_id: &str, filename: &str, content_type: &str, bytes: &[u8]) -> String {
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
async fn decided(client: &Client, media_id: &str) -> Value {
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
    for _ in 0..100 {
        if !folder.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!folder.exists(), "the abandoned upload's directory is gone");
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
