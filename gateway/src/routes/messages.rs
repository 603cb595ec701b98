//! Messages: send, history, edit, delete, read cursors, and sync.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use confab_ingest::{NewMessage, PAGE_DEFAULT, PAGE_MAX, SYNC_PAGE_MAX};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Authenticated, ClientIp};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::rate_limit::{Limit, Write};
use crate::routes::accounts::{ip_key, limit, limit_write};
use crate::trace::SendSpan;
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    conversation_id: String,
    client_msg_id: String,
    /// May be empty (or absent) when the message has attachments.
    #[serde(default)]
    body: String,
    #[serde(default)]
    attachments: Vec<Value>,
}

#[derive(Deserialize)]
pub struct EditMessage {
    body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkRead {
    last_read_message_id: String,
}

pub async fn send(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SendMessage>,
) -> ApiResult<(StatusCode, Json<impl serde::Serialize>)> {
    let started = std::time::Instant::now();
    let span = SendSpan::http(&headers, &request.conversation_id);
    let sent = async {
        limit(&state, Limit::SendPerAccount, &caller.user_id)?;
        limit(&state, Limit::SendPerIp, &ip_key(&ip))?;
        let new = NewMessage {
            conversation_id: request.conversation_id,
            client_msg_id: request.client_msg_id,
            body: request.body,
            attachments: request.attachments,
            trace: span.context(),
        };
        Ok::<_, ApiError>(state.ingest.send_message(&caller, new).await?)
    }
    .await;
    let status = |created: bool| if created { StatusCode::CREATED } else { StatusCode::OK };
    match &sent {
        Ok((message, created)) => span.finish(Ok(message), Some(status(*created).as_u16())),
        Err(error) => span.finish(Err(error), Some(error.code.http_status())),
    }
    let (message, created) = sent?;
    state.metrics.observe_send(crate::metrics::Transport::Http, started.elapsed());
    Ok((status(created), Json(message)))
}

/// A positive integer query parameter, or a 400 naming it.
fn number_param(params: &HashMap<String, String>, name: &'static str) -> ApiResult<Option<u64>> {
    params
        .get(name)
        .map(|text| text.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid `{name}`: `{text}` is not a non-negative integer"))))
        .transpose()
}

pub(crate) fn page_limit(params: &HashMap<String, String>, default: usize, max: usize) -> ApiResult<usize> {
    match number_param(params, "limit")? {
        None => Ok(default),
        Some(limit) if (1..=max as u64).contains(&limit) => Ok(limit as usize),
        Some(limit) => Err(ApiError::bad_request(format!("invalid `limit`: `{limit}` is not between 1 and {max}"))),
    }
}

pub async fn history(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(conversation_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let before = number_param(&params, "before")?;
    let limit = page_limit(&params, PAGE_DEFAULT, PAGE_MAX)?;
    let (messages, has_more) = state.ingest.history(&caller, &conversation_id, before, limit)?;
    Ok(Json(json!({"messages": messages, "hasMore": has_more})))
}

pub async fn edit(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiPath(message_id): ApiPath<String>,
    ApiJson(request): ApiJson<EditMessage>,
) -> ApiResult<Json<confab_schemas::api::Message>> {
    let conversation_id = state.ingest.message_conversation(&caller, &message_id)?;
    limit_write(&state, Write::Edit, &caller.user_id, &ip_key(&ip), Some(&conversation_id))?;
    let message = state.ingest.edit_message(&caller, &message_id, request.body).await?;
    Ok(Json(message))
}

pub async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiPath(message_id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let conversation_id = state.ingest.message_conversation(&caller, &message_id)?;
    limit_write(&state, Write::Delete, &caller.user_id, &ip_key(&ip), Some(&conversation_id))?;
    let released = state.ingest.delete_message(&caller, &message_id).await?;
    // The files of uploads no message carries now go in the background (a
    // failure leaves them to the sweep, `unattached_ttl_secs` later).
    if let (false, Some(media)) = (released.is_empty(), state.media.get().cloned()) {
        tokio::spawn(async move {
            if let Err(error) = media.release(&released, "deleted").await {
                tracing::warn!(%error, "could not remove the media of a deleted message; the sweep will");
            }
        });
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn mark_read(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(request): ApiJson<MarkRead>,
) -> ApiResult<StatusCode> {
    limit_write(&state, Write::Read, &caller.user_id, &ip_key(&ip), Some(&conversation_id))?;
    state.ingest.mark_read(&caller, &conversation_id, &request.last_read_message_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn sync(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(&params, PAGE_MAX, SYNC_PAGE_MAX)?;
    let page = state.ingest.sync(&caller, params.get("cursor").map(String::as_str), limit)?;
    crate::ws::note_delivered(&state, &caller, &page.events);
    Ok(Json(json!({"events": page.events, "nextCursor": page.next_cursor, "hasMore": page.has_more})))
}
