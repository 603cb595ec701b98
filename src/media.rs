//! Media, wired: the store `[media] location` chose, the media layer over
//! it, the moderation workflow's activities over [`Media::moderate`], and
//! the [`StartModeration`] port over the workflow engine.
//!
//! `complete` starts the flow `media:{mediaId}` (a second start of the
//! same id does nothing); its `media.check` activity runs the checks and
//! records the verdict, and `media.give_up` records an upload that could
//! not be checked as blocked. See `media/README.md`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use confab_ingest::Ingest;
use confab_media::local::LocalStore;
use confab_media::s3::S3Store;
use confab_media::signing::Signer;
use confab_media::{Media, MediaConfig, MediaStore, StartModeration};
use confab_workflows::moderation::{MediaModeration, ModerationInput, CHECK, GIVE_UP};
use confab_workflows::{Activities, ActivityCall, Failure};
use serde_json::{json, Value};

use crate::workflows::Workflows;

/// Opens the configured store and the media layer on it. The local
/// store's URLs point at `base_url` until [`set_base_url`] knows better.
pub async fn open(config: &MediaConfig, data_dir: &Path, ingest: Arc<Ingest>) -> anyhow::Result<Arc<Media>> {
    let problems = config.problems();
    if !problems.is_empty() {
        anyhow::bail!("the configuration has {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    if config.is_s3() {
        let store = S3Store::open(&config.location, &config.storage_options, config.multipart_threshold_bytes, config.part_bytes)
            .await
            .with_context(|| format!("[media] location: could not open `{}`", config.location))?;
        // Refused keys or a missing bucket stop the start, not the first upload.
        store.check().await.with_context(|| format!("[media] location: `{}` cannot be listed; check the bucket and storage_options", config.location))?;
        let store: Arc<dyn MediaStore> = Arc::new(store);
        return Ok(Arc::new(Media::new(ingest, store, None, config.clone())));
    }
    let key = crate::server::load_or_create_secret(&data_dir.join("secrets").join("media.key"))?;
    let root = data_dir.join("media");
    let base_url = config.public_url.clone().unwrap_or_else(|| "http://127.0.0.1".into());
    let local =
        Arc::new(LocalStore::open(&root, Signer::new(key), base_url).with_context(|| format!("could not open the media store in `{}`", root.display()))?);
    let store: Arc<dyn MediaStore> = local.clone();
    Ok(Arc::new(Media::new(ingest, store, Some(local), config.clone())))
}

/// Points the local store's URLs at the address clients reach: the
/// configured `public_url`, else the address the server is bound to.
pub fn set_base_url(media: &Media, bound: std::net::SocketAddr, tls: bool) {
    if let Some(local) = media.local() {
        let base = media.config().public_url.clone().unwrap_or_else(|| format!("{}://{bound}", if tls { "https" } else { "http" }));
        local.set_base_url(base);
    }
}

/// The moderation flow's activities. They hold the media layer weakly:
/// the media layer holds the engine (to start flows), and the engine its
/// activities, so a strong reference would be a cycle that keeps the state
/// store open after the server stops.
pub struct ModerationActivities(pub std::sync::Weak<Media>);

fn failure(error: confab_media::Error) -> Failure {
    use confab_schemas::ErrorCode;
    match error.code() {
        // The store, the scanner or the state's disk: worth another try.
        ErrorCode::Unavailable | ErrorCode::Internal => Failure::retryable(error.to_string(), None),
        _ => Failure::permanent(error.to_string()),
    }
}

#[async_trait::async_trait]
impl Activities for ModerationActivities {
    async fn run(&self, call: &ActivityCall, _id: u32) -> Result<Value, Failure> {
        let media = self.0.upgrade().ok_or_else(|| Failure::retryable("the server is stopping", None))?;
        let media_id = call.input["mediaId"].as_str().ok_or_else(|| Failure::permanent("the activity's input names no `mediaId`"))?;
        match call.name.as_str() {
            CHECK => match media.moderate(media_id).await.map_err(failure)? {
                Some(check) => Ok(json!({"status": check.verdict, "reason": check.reason})),
                None => Ok(json!({"status": "decided"})),
            },
            GIVE_UP => {
                let reason = call.input["reason"].as_str().unwrap_or("the checks failed");
                media.give_up(media_id, reason).await.map_err(failure)?;
                Ok(json!({"status": "blocked", "reason": "unchecked"}))
            }
            other => Err(Failure::permanent(format!("no activity `{other}`"))),
        }
    }
}

/// Starts moderation as the flow `media:{mediaId}`.
pub struct EngineModeration(pub Workflows);

#[async_trait::async_trait]
impl StartModeration for EngineModeration {
    async fn start(&self, media_id: &str) -> Result<(), String> {
        let input = ModerationInput { media_id: media_id.to_string() };
        self.0.start::<MediaModeration>(&format!("media:{media_id}"), input).await.map(|_| ()).map_err(|error| format!("{error:#}"))
    }
}
