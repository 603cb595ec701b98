//! Uploads (`shared/API.md`, Media): what the state keeps of each, and who
//! may see it. The bytes never pass through here: `confab-media` signs the
//! URLs, checks the store and runs moderation; this file only records, as
//! log events in the conversation's partition, what was declared, that the
//! bytes arrived, and what moderation decided, so that an upload replays in
//! order with the messages that carry it.
//!
//! Who may see an upload: its uploader while a member, and any member who
//! may read one of the messages that carry it (the history-visibility
//! rule). Everyone else is told it does not exist.

use confab_schemas::events::{HistoryVisibility, LogEvent, MediaVerdict};
use confab_schemas::ids::{new_id, now_ms};
use serde_json::Value;

use crate::commands::{Caller, Ingest};
use crate::rows::{MediaRow, MediaState};
use crate::{Error, Result};

const FILENAME_MAX_CHARS: usize = 255;
const CONTENT_TYPE_MAX_BYTES: usize = 127;
/// Messages one upload may be attached to (re-shares in its conversation).
const CARRIERS_MAX: usize = 100;

/// An upload being declared.
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub conversation_id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// What the media layer's config allows this declaration.
#[derive(Debug, Clone, Copy)]
pub struct MediaAllowance {
    /// Largest size for its content type.
    pub max_bytes: u64,
    /// Bytes one user may keep in uploads in all.
    pub quota_bytes: u64,
    /// When the upload URL stops working.
    pub upload_expires_at: i64,
}

/// What moderation decided about an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaCheck {
    pub verdict: MediaVerdict,
    pub reason: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub served_content_type: Option<String>,
    pub thumbnail: bool,
}

fn check_declaration(new: &NewMedia) -> Result<()> {
    let chars = new.filename.chars().count();
    if chars == 0 || chars > FILENAME_MAX_CHARS {
        return Err(Error::invalid("filename", format!("must be 1 to {FILENAME_MAX_CHARS} characters")));
    }
    if new.filename.contains(['/', '\\']) || new.filename == "." || new.filename == ".." {
        return Err(Error::invalid("filename", "must be a file's name, without `/` or `\\`"));
    }
    crate::commands::check_chars("filename", &new.filename, FILENAME_MAX_CHARS)?;
    if !is_content_type(&new.content_type) {
        return Err(Error::invalid("contentType", format!("`{}` is not a media type such as `image/jpeg` (lowercase, no parameters)", new.content_type)));
    }
    if new.size == 0 {
        return Err(Error::invalid("size", "must be 1 or more bytes"));
    }
    if new.sha256.len() != 64 || !new.sha256.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)) {
        return Err(Error::invalid("sha256", "must be the lowercase hex SHA-256 of the bytes (64 characters)"));
    }
    Ok(())
}

/// `type/subtype`, lowercase token characters only.
pub fn is_content_type(text: &str) -> bool {
    let token = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"!#$&-^_.+".contains(&byte));
    text.len() <= CONTENT_TYPE_MAX_BYTES && text.split_once('/').is_some_and(|(kind, subtype)| token(kind) && token(subtype))
}

impl Ingest {
    /// Declares an upload in a conversation the caller is a member of.
    pub async fn declare_media(&self, caller: &Caller, new: NewMedia, allowance: MediaAllowance) -> Result<(String, MediaRow)> {
        check_declaration(&new)?;
        if new.size > allowance.max_bytes {
            return Err(Error::TooLarge { field: "size", size: new.size as usize, max: allowance.max_bytes as usize });
        }
        let partition = self.partition_of(&new.conversation_id);
        let _writer = partition.writer.lock().await;
        let pin = self.pinned_conversation(&new.conversation_id)?;
        if !pin.0.state.read().is_member(&caller.user_id) {
            return Err(Error::NotMember(new.conversation_id.clone()));
        }
        let (kept, _) = self.state.uploaded_by(&caller.user_id)?;
        if kept.saturating_add(new.size) > allowance.quota_bytes {
            return Err(Error::QuotaExceeded { kept, size: new.size, quota: allowance.quota_bytes });
        }
        let ts = now_ms();
        let media_id = new_id("f", ts);
        let event = LogEvent::MediaDeclared {
            media_id: media_id.clone(),
            conversation_id: new.conversation_id,
            uploader_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            filename: new.filename,
            content_type: new.content_type,
            size: new.size,
            sha256: new.sha256,
            upload_expires_at: allowance.upload_expires_at,
            ts,
        };
        self.commit_locked(partition, vec![event], Some(pin)).await?;
        let row = self.state.media(&media_id)?.ok_or(Error::StateFailed)?;
        Ok((media_id, row))
    }

    /// The caller's own upload (for `complete`); others are not found.
    pub fn own_media(&self, caller: &Caller, media_id: &str) -> Result<MediaRow> {
        match self.state.media(media_id)? {
            Some(row) if row.uploader_id == caller.user_id => {
                self.member_conversation(caller, &row.conversation_id).map_err(|_| Error::MediaNotFound(media_id.to_string()))?;
                Ok(row)
            }
            _ => Err(Error::MediaNotFound(media_id.to_string())),
        }
    }

    /// Records that the bytes of the caller's upload are stored (the media
    /// layer checked the store); a repeat changes nothing.
    pub async fn media_uploaded(&self, caller: &Caller, media_id: &str) -> Result<MediaRow> {
        let row = self.own_media(caller, media_id)?;
        if row.state != MediaState::Declared {
            return Ok(row);
        }
        let event = LogEvent::MediaUploaded { media_id: media_id.to_string(), conversation_id: row.conversation_id.clone(), ts: now_ms() };
        self.commit(self.partition_of(&row.conversation_id), vec![event], None).await?;
        self.state.media(media_id)?.ok_or(Error::StateFailed)
    }

    /// An upload, if the caller may see it: its uploader while a member, or
    /// a member who may read a message that carries it.
    pub fn visible_media(&self, caller: &Caller, media_id: &str) -> Result<MediaRow> {
        let not_found = || Error::MediaNotFound(media_id.to_string());
        let row = self.state.media(media_id)?.ok_or_else(not_found)?;
        let handle = self.member_conversation(caller, &row.conversation_id).map_err(|_| not_found())?;
        if row.uploader_id == caller.user_id {
            return Ok(row);
        }
        let joined = {
            let conversation = handle.state.read();
            match conversation.history_visibility {
                HistoryVisibility::Shared => None,
                HistoryVisibility::Joined => conversation.members.get(&caller.user_id).map(|member| (member.intervals.clone(), conversation.last_seq)),
            }
        };
        let visible = match joined {
            None => !row.messages.is_empty(),
            Some((intervals, last_seq)) => {
                let ranges = self.visible_seqs(&row.conversation_id, &intervals, last_seq)?;
                row.messages.iter().any(|seq| ranges.iter().any(|&(low, high)| *seq >= low && *seq <= high))
            }
        };
        match visible {
            true => Ok(row),
            false => Err(not_found()),
        }
    }

    /// An upload by id, for the media layer's own work (moderation, serving
    /// a signed URL): no caller, no checks.
    pub fn media_row(&self, media_id: &str) -> Result<Option<MediaRow>> {
        Ok(self.state.media(media_id)?)
    }

    /// Records moderation's verdict; members of the messages that carry the
    /// upload get `media.update`. A second verdict changes nothing.
    pub async fn record_media_check(&self, media_id: &str, check: MediaCheck) -> Result<()> {
        let Some(row) = self.state.media(media_id)? else { return Ok(()) };
        if row.state.is_decided() {
            return Ok(());
        }
        let event = LogEvent::MediaChecked {
            media_id: media_id.to_string(),
            conversation_id: row.conversation_id.clone(),
            verdict: check.verdict,
            reason: check.reason,
            width: check.width,
            height: check.height,
            served_content_type: check.served_content_type,
            thumbnail: check.thumbnail,
            ts: now_ms(),
        };
        self.commit(self.partition_of(&row.conversation_id), vec![event], None).await
    }

    /// Forgets an upload (the media layer then deletes its files). With
    /// `unless_carried`, only if no message carries it, checked under the
    /// partition's writer lock, which sends take to attach it: a send in
    /// the meantime keeps the upload. Whether it was forgotten.
    pub async fn remove_media(&self, media_id: &str, reason: &str, unless_carried: bool) -> Result<bool> {
        let Some(row) = self.state.media(media_id)? else { return Ok(false) };
        let partition = self.partition_of(&row.conversation_id);
        let _writer = partition.writer.lock().await;
        let Some(row) = self.state.media(media_id)? else { return Ok(false) };
        if unless_carried && !row.messages.is_empty() {
            return Ok(false);
        }
        let event =
            LogEvent::MediaRemoved { media_id: media_id.to_string(), conversation_id: row.conversation_id.clone(), reason: reason.to_string(), ts: now_ms() };
        self.commit_locked(partition, vec![event], None).await?;
        Ok(true)
    }

    /// Those of `media_ids` that exist and that no message carries.
    pub(crate) fn uncarried(&self, mut media_ids: Vec<String>) -> Result<Vec<String>> {
        media_ids.sort();
        media_ids.dedup();
        let mut uncarried = Vec::new();
        for media_id in media_ids {
            if self.state.media(&media_id)?.is_some_and(|row| row.messages.is_empty()) {
                uncarried.push(media_id);
            }
        }
        Ok(uncarried)
    }

    /// Every upload (a scan: for the sweep), with its id.
    pub fn all_media(&self) -> Result<Vec<(String, MediaRow)>> {
        let mut found = Vec::new();
        for entry in self.state.store.range(crate::store::Space::Media, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, false) {
            let (key, value) = entry?;
            let Some(id) = crate::codec::Decoder::new(&key).id() else { continue };
            // The uploader index rows start with a user id; uploads with `f_`.
            if !id.starts_with("f_") {
                continue;
            }
            if let Some(row) = MediaRow::decode(&value) {
                found.push((id, row));
            }
        }
        Ok(found)
    }

    /// Resolves a message's `{mediaId}` attachments (under the partition's
    /// writer lock): each must be the sender's own upload in this
    /// conversation, complete and not blocked. They become the media object.
    pub(crate) fn resolve_attachments(&self, caller: &Caller, conversation_id: &str, attachments: Vec<Value>) -> Result<Vec<Value>> {
        let mut seen: Vec<String> = Vec::new();
        let mut resolved = Vec::with_capacity(attachments.len());
        for attachment in attachments {
            let Some(media_id) = attachment.get("mediaId") else {
                resolved.push(attachment);
                continue;
            };
            let Some(media_id) = media_id.as_str() else { return Err(Error::invalid("attachments", "`mediaId` must be a string")) };
            if seen.iter().any(|id| id == media_id) {
                return Err(Error::invalid("attachments", format!("upload `{media_id}` is attached twice")));
            }
            let row = match self.state.media(media_id)? {
                Some(row) if row.uploader_id == caller.user_id && row.conversation_id == conversation_id => row,
                _ => {
                    return Err(Error::invalid(
                        "attachments",
                        format!("upload `{media_id}` is not one of yours in this conversation; declare it with POST /v1/media first"),
                    ))
                }
            };
            match row.state {
                MediaState::Declared => {
                    return Err(Error::invalid("attachments", format!("upload `{media_id}` is not complete; POST /v1/media/{media_id}/complete first")))
                }
                MediaState::Blocked => {
                    let reason = row.reason.as_deref().unwrap_or("blocked");
                    return Err(Error::invalid("attachments", format!("upload `{media_id}` was blocked ({reason}) and cannot be sent")));
                }
                MediaState::Uploaded | MediaState::Ready => {}
            }
            if row.messages.len() >= CARRIERS_MAX {
                return Err(Error::invalid("attachments", format!("upload `{media_id}` is already in {CARRIERS_MAX} messages; upload it again")));
            }
            resolved.push(serde_json::to_value(row.render(media_id)).expect("a media object serializes"));
            seen.push(media_id.to_string());
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_checked_field_by_field() {
        let good = NewMedia { conversation_id: "c_1".into(), filename: "cat.jpg".into(), content_type: "image/jpeg".into(), size: 10, sha256: "a".repeat(64) };
        assert!(check_declaration(&good).is_ok());
        for (change, field) in [
            (NewMedia { filename: "../etc/passwd".into(), ..good.clone() }, "filename"),
            (NewMedia { filename: String::new(), ..good.clone() }, "filename"),
            (NewMedia { filename: "evil\u{202E}gpj.exe".into(), ..good.clone() }, "filename"),
            (NewMedia { content_type: "Image/JPEG".into(), ..good.clone() }, "contentType"),
            (NewMedia { content_type: "image/jpeg; charset=x".into(), ..good.clone() }, "contentType"),
            (NewMedia { size: 0, ..good.clone() }, "size"),
            (NewMedia { sha256: "A".repeat(64), ..good.clone() }, "sha256"),
            (NewMedia { sha256: "ab".into(), ..good.clone() }, "sha256"),
        ] {
            let error = check_declaration(&change).unwrap_err().to_string();
            assert!(error.contains(&format!("`{field}`")), "{error}");
        }
    }
}
