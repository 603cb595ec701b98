//! [`Media`]: the media routes as operations, and moderation's one step.
//! The gateway's handlers call only this, and the moderation workflow's
//! activity calls [`Media::moderate`].
//!
//! Happy path: `declare` checks the declaration (membership, type, size,
//! quota), records it and signs an upload URL; the client PUTs the bytes
//! to the store; `complete` asks the store whether exactly that many bytes
//! are there, records it, and starts the `media_moderation` flow through
//! the [`StartModeration`] port (the binary implements it over the
//! workflow engine); `moderate` reads the bytes, runs the checks
//! (`crate::checks`) and ClamAV, writes the cleaned copy and the thumbnail,
//! and records the verdict, which the conversation's members receive as
//! `media.update`; `view` signs download URLs for those who may read.
//!
//! Failures: `complete` before the bytes are stored is 409 and can be
//! repeated; a failed flow start is 503 and `complete` can be repeated (the
//! flow id is the upload's, so it starts once). A store or ClamAV that
//! fails makes `moderate` fail as retryable: the flow tries again later,
//! and after its last try records the upload as blocked (`unchecked`), so
//! nothing unchecked is ever served.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use confab_ingest::{Caller, Ingest, MediaAllowance, MediaCheck, MediaRow, MediaState, NewMedia};
use confab_schemas::api;
use confab_schemas::events::MediaVerdict;
use confab_schemas::ids::now_ms;
use serde::Serialize;

use crate::checks::{self, Outcome, Rules};
use crate::clamav::{Clamav, Scan};
use crate::config::MediaConfig;
use crate::local::LocalStore;
use crate::store::{object, MediaStore, Served, Upload, Variant};
use crate::{Error, Result};

/// Starts moderation of an upload (once per upload, however often asked).
#[async_trait::async_trait]
pub trait StartModeration: Send + Sync {
    async fn start(&self, media_id: &str) -> std::result::Result<(), String>;
}

/// The answer to `POST /v1/media`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Declared {
    pub media_id: String,
    pub upload: Upload,
    pub expires_at: i64,
}

/// The media layer.
pub struct Media {
    ingest: Arc<Ingest>,
    store: Arc<dyn MediaStore>,
    /// The local store, when it is the store (its routes serve the URLs).
    local: Option<Arc<LocalStore>>,
    config: MediaConfig,
    rules: Rules,
    clamav: Option<Clamav>,
    moderation: OnceLock<Arc<dyn StartModeration>>,
    /// Uploads checked at once: each holds its bytes in memory.
    checking: tokio::sync::Semaphore,
    /// The threads the checks run on.
    checkers: Checkers,
}

/// A job for the check threads.
type Job = Box<dyn FnOnce() + Send>;

/// The checks' own threads (`moderation_concurrency` of them, named
/// `confab-media-check`), at `moderation_nice`: decoding, re-encoding and
/// hashing are all CPU, and on a small machine they must wait for the
/// cores while the chat path does not (the benchmark measured the send
/// p99 going from 3 to 40 ms at nice 10 on two cores). They end when the
/// media layer is dropped.
struct Checkers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Checkers {
    fn start(threads: usize, nice: i32) -> Checkers {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(parking_lot::Mutex::new(receiver));
        for _ in 0..threads.max(1) {
            let receiver = receiver.clone();
            let started = std::thread::Builder::new().name("confab-media-check".into()).spawn(move || {
                if nice != 0 {
                    // Linux: the calling thread only. Best effort: a refusal changes nothing.
                    let _ = rustix::process::setpriority_process(None, nice);
                }
                loop {
                    let job = receiver.lock().recv();
                    match job {
                        // A panic fails that check (its caller is told) and the thread goes on.
                        Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                        Err(_) => return,
                    }
                }
            });
            if let Err(error) = started {
                tracing::error!(%error, "could not start a media check thread");
            }
        }
        Checkers { jobs: sender }
    }

    /// Runs `work` on a check thread; its result.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        if self.jobs.send(job).is_err() {
            return Err(Error::Scanner("the check threads have stopped".into()));
        }
        result.await.map_err(|_| Error::Scanner("the checks panicked".into()))
    }
}

impl std::fmt::Debug for Media {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Media").field("store", &self.store.location()).finish()
    }
}

impl Media {
    pub fn new(ingest: Arc<Ingest>, store: Arc<dyn MediaStore>, local: Option<Arc<LocalStore>>, config: MediaConfig) -> Media {
        let rules = Rules {
            allowed_types: config.allowed_types.clone(),
            blocked_sha256: config.blocked_sha256.clone(),
            image_max_pixels: config.image_max_pixels,
            image_max_alloc_bytes: config.image_max_alloc_bytes,
            thumbnail_px: config.thumbnail_px,
        };
        let clamav = config.clamav.as_ref().map(|clamav| Clamav { socket: clamav.socket.clone(), timeout: Duration::from_millis(clamav.timeout_ms) });
        let checking = tokio::sync::Semaphore::new(config.moderation_concurrency.max(1));
        let checkers = Checkers::start(config.moderation_concurrency, config.moderation_nice);
        Media { ingest, store, local, config, rules, clamav, moderation: OnceLock::new(), checking, checkers }
    }

    /// Sets the port that starts moderation (once, when the engine is up).
    pub fn set_moderation(&self, moderation: Arc<dyn StartModeration>) {
        let _ = self.moderation.set(moderation);
    }

    pub fn config(&self) -> &MediaConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn MediaStore> {
        &self.store
    }

    pub fn local(&self) -> Option<&Arc<LocalStore>> {
        self.local.as_ref()
    }

    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// `POST /v1/media`: records the declaration and signs its upload URL.
    pub async fn declare(&self, caller: &Caller, new: NewMedia) -> Result<Declared> {
        let now = now_ms();
        let expires_at = now + (self.config.upload_url_ttl_secs * 1000) as i64;
        let allowance =
            MediaAllowance { max_bytes: self.config.max_bytes_for(&new.content_type), quota_bytes: self.config.quota_bytes, upload_expires_at: expires_at };
        let (media_id, row) = self.ingest.declare_media(caller, new, allowance).await?;
        let upload = self.store.upload(&object(&media_id, Variant::Original), row.size, &row.content_type, expires_at).await?;
        Ok(Declared { media_id, upload, expires_at })
    }

    /// `POST /v1/media/{id}/complete`: once the store holds the bytes,
    /// records it and starts moderation; returns the status.
    pub async fn complete(&self, caller: &Caller, media_id: &str) -> Result<&'static str> {
        let row = self.ingest.own_media(caller, media_id)?;
        if row.state == MediaState::Declared {
            match self.store.finish_upload(&object(media_id, Variant::Original), row.size).await? {
                Some(size) if size == row.size => {}
                _ => return Err(Error::NotUploaded(media_id.to_string())),
            }
        }
        let row = self.ingest.media_uploaded(caller, media_id).await?;
        if row.state == MediaState::Uploaded {
            let moderation = self.moderation.get().ok_or_else(|| Error::Scanner("moderation is not running yet; retry shortly".into()))?;
            moderation.start(media_id).await.map_err(|error| {
                tracing::error!(%error, media_id, "could not start moderation");
                Error::Scanner("could not start checking the upload; complete it again shortly".into())
            })?;
        }
        Ok(row.state.status())
    }

    /// `GET /v1/media/{id}`: the media object, with signed download URLs
    /// when it is ready (only to those who may read it).
    pub async fn view(&self, caller: &Caller, media_id: &str) -> Result<api::Media> {
        let row = self.ingest.visible_media(caller, media_id)?;
        let mut media = row.render(media_id);
        if row.state == MediaState::Ready {
            let expires_at = now_ms() + (self.config.download_url_ttl_secs * 1000) as i64;
            let (variant, content_type) = served_variant(&row);
            let served = Served { content_type, filename: &row.filename, inline: content_type.starts_with("image/") };
            media.url = Some(self.store.download_url(&object(media_id, variant), &served, expires_at).await?);
            if row.thumbnail {
                let thumbnail = Served { content_type: "image/jpeg", filename: &row.filename, inline: true };
                media.thumbnail_url = Some(self.store.download_url(&object(media_id, Variant::Thumbnail), &thumbnail, expires_at).await?);
            }
            media.url_expires_at = Some(expires_at);
        }
        Ok(media)
    }

    /// Moderation's step: checks the upload and records the verdict. Safe
    /// to repeat (a decided upload is left as it is). A failure is worth
    /// retrying (the store or the scanner).
    pub async fn moderate(&self, media_id: &str) -> Result<Option<MediaCheck>> {
        let Some(row) = self.ingest.media_row(media_id)? else { return Ok(None) };
        if row.state.is_decided() {
            return Ok(None);
        }
        let _permit = self.checking.acquire().await.expect("the semaphore is never closed");
        // One byte more than declared: a longer object is told apart.
        let bytes = self.store.read(&object(media_id, Variant::Original), row.size + 1).await?;
        let rules = self.rules.clone();
        let (size, sha256, content_type) = (row.size, row.sha256.clone(), row.content_type.clone());
        let (outcome, bytes) = self
            .checkers
            .run(move || {
                let outcome = checks::inspect(&bytes, &checks::Declared { size, sha256: &sha256, content_type: &content_type }, &rules);
                (outcome, bytes)
            })
            .await?;
        let outcome = match (outcome, &self.clamav) {
            (Outcome::Passed { image }, Some(clamav)) => match clamav.scan(&bytes).await? {
                Scan::Clean => Outcome::Passed { image },
                Scan::Infected(name) => {
                    tracing::warn!(media_id, signature = name, "ClamAV found malware in an upload");
                    Outcome::Blocked { reason: "malware" }
                }
            },
            (outcome, _) => outcome,
        };
        drop(bytes);
        let check = match outcome {
            Outcome::Blocked { reason } => blocked(reason),
            Outcome::Passed { image: None } => {
                MediaCheck { verdict: MediaVerdict::Ready, reason: None, width: None, height: None, served_content_type: None, thumbnail: false }
            }
            Outcome::Passed { image: Some(cleaned) } => {
                let served_content_type = match cleaned.copy {
                    Some((copy, content_type)) => {
                        self.store.write(&object(media_id, Variant::Clean), copy, content_type).await?;
                        Some(content_type.to_string())
                    }
                    None => None,
                };
                self.store.write(&object(media_id, Variant::Thumbnail), cleaned.thumbnail, "image/jpeg").await?;
                MediaCheck {
                    verdict: MediaVerdict::Ready,
                    reason: None,
                    width: Some(cleaned.width),
                    height: Some(cleaned.height),
                    served_content_type,
                    thumbnail: true,
                }
            }
        };
        self.record(media_id, &row, check.clone()).await?;
        Ok(Some(check))
    }

    /// Blocks an upload that could not be checked (the flow's last try failed).
    pub async fn give_up(&self, media_id: &str, reason: &str) -> Result<()> {
        let Some(row) = self.ingest.media_row(media_id)? else { return Ok(()) };
        let mut check = blocked("unchecked");
        check.reason = Some(format!("unchecked: {reason}"));
        self.record(media_id, &row, check).await
    }

    /// Audits a block first, then records the verdict.
    async fn record(&self, media_id: &str, row: &MediaRow, check: MediaCheck) -> Result<()> {
        if check.verdict == MediaVerdict::Blocked {
            let details = serde_json::json!({
                "mediaId": media_id,
                "conversationId": row.conversation_id,
                "uploaderId": row.uploader_id,
                "sha256": row.sha256,
                "reason": check.reason,
            });
            self.ingest.record_audit("moderation", "media.block", details.to_string()).await?;
        }
        self.ingest.record_media_check(media_id, check).await?;
        Ok(())
    }

    /// Removes the uploads that no message carries any more after
    /// retention or erasure deleted their messages (`reason` is
    /// `retention` or `erasure`, in the history's `media` table): the
    /// record first (only if still carried by nothing, checked under the
    /// writer lock that sends take; an erasure takes every upload of the
    /// user), then the files. A crash or failure between the two leaves
    /// files without a record, which the sweep's janitor pass deletes.
    pub async fn release(&self, media_ids: &[String], reason: &str) -> Result<usize> {
        let mut removed = 0;
        for media_id in media_ids {
            if self.ingest.remove_media(media_id, reason, reason != "erasure").await? {
                self.store.delete_media(media_id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The sweep: removes the uploads never completed, `incomplete_ttl_secs`
    /// after their upload URL expired, and the decided ones that no message
    /// carries (never sent, or their messages deleted since),
    /// `unattached_ttl_secs` after they were declared; the record first
    /// (under the writer lock, so a send in the meantime keeps the upload),
    /// then the files. Then a janitor pass deletes files that have no
    /// record (a crash between the two steps, or a cleaned copy written by
    /// a check that raced a removal). One upload that fails is logged and
    /// the sweep goes on. How many were removed.
    pub async fn sweep_once(&self, now: i64) -> Result<usize> {
        let ingest = self.ingest.clone();
        let uploads = tokio::task::spawn_blocking(move || ingest.all_media())
            .await
            .map_err(|error| Error::store(&self.store.location(), format!("the scan stopped: {error}")))??;
        let grace = (self.config.incomplete_ttl_secs * 1000) as i64;
        let unattached = (self.config.unattached_ttl_secs * 1000) as i64;
        let mut removed = 0;
        for (media_id, row) in &uploads {
            let reason = match row.state {
                MediaState::Declared if row.upload_expires_at.saturating_add(grace) <= now => "incomplete",
                _ if row.state.is_decided() && row.messages.is_empty() && row.created_at.saturating_add(unattached) <= now => "unattached",
                _ => continue,
            };
            let outcome = async {
                if self.ingest.remove_media(media_id, reason, true).await? {
                    self.store.delete_media(media_id).await?;
                    return Ok::<bool, Error>(true);
                }
                Ok(false)
            };
            match outcome.await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, media_id, "could not remove an upload; the next sweep tries again"),
            }
        }
        // Files whose record is gone.
        let mut orphans: Vec<String> = self.store.list().await?.into_iter().filter_map(|object| object.split('/').next().map(str::to_string)).collect();
        orphans.dedup();
        for media_id in orphans {
            if crate::store::is_media_id(&media_id) && self.ingest.media_row(&media_id)?.is_none() {
                match self.store.delete_media(&media_id).await {
                    Ok(()) => tracing::info!(media_id, "deleted files that no upload record names"),
                    Err(error) => tracing::warn!(%error, media_id, "could not delete files that no upload record names"),
                }
            }
        }
        Ok(removed)
    }

    /// Runs [`Media::sweep_once`] every `sweep_interval_secs`.
    pub fn sweep(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(self.config.sweep_interval_secs.max(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match self.sweep_once(now_ms()).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "removed uploads never completed or carried by no message"),
                    Err(error) => tracing::warn!(%error, "could not remove uploads never completed or carried by no message; the next sweep tries again"),
                }
            }
        })
    }

    /// Whether a download of `variant` may be served now, and how: only a
    /// ready upload's objects (never a blocked or unchecked one's).
    pub fn servable(&self, media_id: &str, variant: Variant) -> Result<(MediaRow, String)> {
        let row = self.ingest.media_row(media_id)?.filter(|row| row.state == MediaState::Ready).ok_or(Error::NotServed)?;
        let content_type = match (variant, &row.served_content_type) {
            (Variant::Thumbnail, _) if row.thumbnail => "image/jpeg".to_string(),
            (Variant::Clean, Some(content_type)) => content_type.clone(),
            (Variant::Original, None) => row.content_type.clone(),
            _ => return Err(Error::NotServed),
        };
        Ok((row, content_type))
    }
}

/// The object a ready upload is served from, and its type.
fn served_variant(row: &MediaRow) -> (Variant, &str) {
    match row.served_content_type.as_deref() {
        Some(content_type) => (Variant::Clean, content_type),
        None => (Variant::Original, &row.content_type),
    }
}

fn blocked(reason: &str) -> MediaCheck {
    MediaCheck { verdict: MediaVerdict::Blocked, reason: Some(reason.to_string()), width: None, height: None, served_content_type: None, thumbnail: false }
}
