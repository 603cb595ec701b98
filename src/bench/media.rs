//! `confab bench media`: uploads through the local store's signed URLs,
//! moderation, and what they cost the live send path.
//!
//! 1. **Baseline**: `--send-rate` sends per second (open loop, over
//!    `--senders` connections) for `--seconds`: the send p50/p99 on a quiet
//!    server.
//! 2. **Under uploads**: the same sends while `--uploaders` clients each
//!    declare, PUT and complete uploads in a loop (a `--file-mib` file,
//!    and one in `--jpeg-every` a 5 MB JPEG that moderation decodes,
//!    re-encodes and thumbnails), so moderation runs throughout: upload
//!    throughput (MB/s of PUT bodies) and the send p50/p99 meanwhile.
//! 3. **Complete → ready**: once moderation has caught up, `--jpegs` 5 MB
//!    JPEGs one at a time: time from `complete` to the media object's
//!    `ready` (polled every 2 ms), p50/p99.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::Digest;

use super::{account, post, summarize, RawHttp};

pub(crate) struct MediaOptions {
    pub(crate) uploaders: usize,
    pub(crate) seconds: u64,
    pub(crate) file_mib: u64,
    pub(crate) jpegs: usize,
    pub(crate) send_rate: f64,
    pub(crate) senders: usize,
    /// All uploaders together send at most this many MB/s (0: as fast as
    /// they can).
    pub(crate) upload_mbps: f64,
    /// One upload in this many is the JPEG (0: none).
    pub(crate) jpeg_every: usize,
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A photo-sized JPEG (4000 × 3000, about 5 MB): smooth gradients under
/// enough noise that it compresses like a phone picture.
fn photo() -> anyhow::Result<Vec<u8>> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let image = image::RgbImage::from_fn(4000, 3000, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed % 23) as u32;
        image::Rgb([((x / 16 + noise) % 256) as u8, ((y / 12 + noise) % 256) as u8, (((x + y) / 28 + noise) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(image).write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 88))?;
    Ok(bytes)
}

struct Uploader {
    http: reqwest::Client,
    base: String,
    token: String,
    conversation_id: String,
}

impl Uploader {
    /// Declares and PUTs one file; its id.
    async fn send(&self, filename: &str, content_type: &str, bytes: &bytes::Bytes, sha: &str) -> anyhow::Result<String> {
        let declared = post(
            &self.http,
            &format!("{}/v1/media", self.base),
            Some(&self.token),
            json!({"conversationId": self.conversation_id, "filename": filename, "contentType": content_type, "size": bytes.len(), "sha256": sha}),
        )
        .await?;
        let media_id = declared["mediaId"].as_str().context("no mediaId")?.to_string();
        let upload = &declared["upload"];
        let mut request = self.http.put(upload["url"].as_str().context("no upload URL")?).body(bytes.clone());
        for (name, value) in upload["headers"].as_object().into_iter().flatten() {
            request = request.header(name.as_str(), value.as_str().unwrap_or_default());
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!("the upload answered {}: {}", response.status(), response.text().await.unwrap_or_default());
        }
        Ok(media_id)
    }

    async fn complete(&self, media_id: &str) -> anyhow::Result<()> {
        post(&self.http, &format!("{}/v1/media/{media_id}/complete", self.base), Some(&self.token), json!({})).await?;
        Ok(())
    }

    async fn status(&self, media_id: &str) -> anyhow::Result<String> {
        let response = self.http.get(format!("{}/v1/media/{media_id}", self.base)).bearer_auth(&self.token).send().await?;
        let media: Value = response.json().await?;
        Ok(media["status"].as_str().unwrap_or_default().to_string())
    }
}

/// Open-loop sends until `deadline`; the latencies in µs from each send's
/// scheduled time.
async fn sends(base: &str, accounts: &[(String, String)], rate: f64, deadline: Instant) -> anyhow::Result<Vec<u64>> {
    let mut tasks = Vec::new();
    for (token, conversation_id) in accounts {
        let (token, conversation_id) = (token.clone(), conversation_id.clone());
        let address = base.trim_start_matches("http://").to_string();
        let interval = Duration::from_secs_f64(accounts.len() as f64 / rate);
        tasks.push(tokio::spawn(async move {
            let mut connection = RawHttp::connect(&address).await?;
            let mut latencies = Vec::new();
            let mut scheduled = Instant::now() + interval.mul_f64(fastrand::f64());
            let mut counter = 0u64;
            while scheduled < deadline {
                tokio::time::sleep_until(scheduled.into()).await;
                let at = scheduled;
                scheduled += interval;
                counter += 1;
                let request = json!({"conversationId": conversation_id, "clientMsgId": format!("{}-{counter}", fastrand::u64(..)), "body": "x".repeat(200)});
                let status = connection.post("/v1/messages", &token, &serde_json::to_vec(&request)?).await?;
                if status != 201 {
                    bail!("send answered {status}");
                }
                latencies.push(at.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies)
        }));
    }
    super::join_latencies(tasks).await
}

pub(crate) async fn run(options: MediaOptions) -> anyhow::Result<()> {
    let photo = bytes::Bytes::from(photo()?);
    let photo_sha = sha256(&photo);
    let file: bytes::Bytes = (0..options.file_mib << 20).map(|index| b"abcdefghijklmnopqrstuvwxyz\n"[(index % 27) as usize]).collect::<Vec<u8>>().into();
    let file_sha = sha256(&file);
    let server = super::start_bench_server_with(1, "").await?;
    let base = server.url.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(options.uploaders * 2).build()?;
    let pacing = match options.upload_mbps {
        rate if rate > 0.0 => format!("at {rate:.0} MB/s in all"),
        _ => "as fast as they can".to_string(),
    };
    println!(
        "media benchmark: {} uploaders {pacing} ({} MiB files, one in {} a {:.1} MB JPEG), {} s per round, sends at {:.0}/s over {} connections, server {base}",
        options.uploaders,
        options.file_mib,
        options.jpeg_every,
        photo.len() as f64 / 1e6,
        options.seconds,
        options.send_rate,
        options.senders
    );

    let mut senders = Vec::new();
    for index in 0..options.senders {
        let (_, token) = account(&http, &base, &format!("sender{index}")).await?;
        let conversation = post(&http, &format!("{base}/v1/conversations"), Some(&token), json!({"type": "group", "memberIds": [], "title": "bench"})).await?;
        senders.push((token, conversation["conversationId"].as_str().unwrap_or_default().to_string()));
    }
    let mut uploaders = Vec::new();
    for index in 0..options.uploaders {
        let (_, token) = account(&http, &base, &format!("uploader{index}")).await?;
        let conversation = post(&http, &format!("{base}/v1/conversations"), Some(&token), json!({"type": "group", "memberIds": [], "title": "files"})).await?;
        let conversation_id = conversation["conversationId"].as_str().unwrap_or_default().to_string();
        uploaders.push(std::sync::Arc::new(Uploader { http: http.clone(), base: base.clone(), token, conversation_id }));
    }

    // 1. The send path alone.
    let quiet = summarize(sends(&base, &senders, options.send_rate, Instant::now() + Duration::from_secs(options.seconds)).await?);
    println!("sends alone:              {:>7} sends, p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>7.2} ms", quiet.count, quiet.p50_ms, quiet.p99_ms, quiet.max_ms);

    // 2. The same sends while the uploaders upload and moderation runs.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    let per_client_bps = options.upload_mbps * 1e6 / options.uploaders.max(1) as f64;
    let jpeg_every = options.jpeg_every;
    for (index, uploader) in uploaders.iter().enumerate() {
        let (uploader, photo, photo_sha, file, file_sha) = (uploader.clone(), photo.clone(), photo_sha.clone(), file.clone(), file_sha.clone());
        tasks.push(tokio::spawn(async move {
            let (mut bytes_put, mut uploads, mut ids) = (0u64, 0u64, Vec::new());
            let mut turn = index;
            while Instant::now() < deadline {
                let (name, content_type, bytes, sha) = match jpeg_every > 0 && turn % jpeg_every == 0 {
                    true => ("photo.jpg", "image/jpeg", &photo, &photo_sha),
                    false => ("file.txt", "text/plain", &file, &file_sha),
                };
                turn += 1;
                let media_id = uploader.send(name, content_type, bytes, sha).await?;
                uploader.complete(&media_id).await?;
                bytes_put += bytes.len() as u64;
                uploads += 1;
                ids.push((index, media_id));
                if per_client_bps > 0.0 {
                    // Paced: this client's bytes so far, at its share of the rate.
                    let due = started + Duration::from_secs_f64(bytes_put as f64 / per_client_bps);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            anyhow::Ok((bytes_put, uploads, ids))
        }));
    }
    let loaded = summarize(sends(&base, &senders, options.send_rate, deadline).await?);
    let (mut bytes_put, mut uploads, mut pending) = (0u64, 0u64, Vec::new());
    for task in tasks {
        let (bytes, count, ids) = task.await??;
        bytes_put += bytes;
        uploads += count;
        pending.extend(ids);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "uploads:                  {uploads:>7} uploads, {:.0} MB in {elapsed:.1} s = {:.1} MB/s through the signed URLs",
        bytes_put as f64 / 1e6,
        bytes_put as f64 / 1e6 / elapsed
    );
    println!(
        "sends during the uploads: {:>7} sends, p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>7.2} ms ({:+.0}% p99)",
        loaded.count,
        loaded.p50_ms,
        loaded.p99_ms,
        loaded.max_ms,
        (loaded.p99_ms / quiet.p99_ms - 1.0) * 100.0
    );

    // Moderation catches up before the timed JPEGs.
    let caught_up = Instant::now();
    for (index, media_id) in &pending {
        loop {
            match uploaders[*index].status(media_id).await?.as_str() {
                "pending" => tokio::time::sleep(Duration::from_millis(20)).await,
                "ready" => break,
                other => bail!("upload `{media_id}` ended {other}"),
            }
        }
    }
    println!("moderation caught up {:.1} s after the uploads stopped", caught_up.elapsed().as_secs_f64());

    // 3. Complete → ready for one JPEG at a time.
    let uploader = &uploaders[0];
    let mut latencies = Vec::new();
    for _ in 0..options.jpegs {
        let media_id = uploader.send("photo.jpg", "image/jpeg", &photo, &photo_sha).await?;
        let started = Instant::now();
        uploader.complete(&media_id).await?;
        loop {
            match uploader.status(&media_id).await?.as_str() {
                "pending" => tokio::time::sleep(Duration::from_millis(2)).await,
                "ready" => break,
                other => bail!("the JPEG ended {other}"),
            }
        }
        latencies.push(started.elapsed().as_micros() as u64);
    }
    let ready = summarize(latencies);
    println!(
        "{:.1} MB JPEG, complete -> ready: {} uploads, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        photo.len() as f64 / 1e6,
        ready.count,
        ready.p50_ms,
        ready.p99_ms,
        ready.max_ms
    );
    drop(server);
    Ok(())
}
