//! Conversations and their members.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use confab_ingest::NewConversation;
use confab_schemas::events::ConversationType;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Authenticated, ClientIp};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::rate_limit::Write;
use crate::routes::accounts::{ip_key, limit_write};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateConversation {
    #[serde(rename = "type")]
    conversation_type: String,
    member_ids: Vec<String>,
    title: Option<String>,
    history_visibility: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddMembers {
    user_ids: Vec<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiJson(request): ApiJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<impl serde::Serialize>)> {
    limit_write(&state, Write::CreateConversation { members: request.member_ids.len() }, &caller.user_id, &ip_key(&ip), None)?;
    let conversation_type = ConversationType::parse(&request.conversation_type)
        .ok_or_else(|| ApiError::bad_request(format!("invalid `type`: `{}` is not one of dm, group, channel", request.conversation_type)))?;
    let history_visibility = match request.history_visibility.as_deref() {
        None => None,
        Some(text) => Some(
            confab_schemas::events::HistoryVisibility::parse(text)
                .ok_or_else(|| ApiError::bad_request(format!("invalid `historyVisibility`: `{text}` is not one of shared, joined")))?,
        ),
    };
    let new = NewConversation { conversation_type, member_ids: request.member_ids, title: request.title, history_visibility };
    let (conversation, created) = state.ingest.create_conversation(&caller, new).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(conversation)))
}

pub async fn list(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"conversations": state.ingest.list_conversations(&caller)?})))
}

pub async fn add_members(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(request): ApiJson<AddMembers>,
) -> ApiResult<StatusCode> {
    // Only members take from the conversation's limit (others are refused anyway).
    let member = state.ingest.is_member(&caller, &conversation_id)?.then_some(conversation_id.as_str());
    limit_write(&state, Write::AddMembers { members: request.user_ids.len() }, &caller.user_id, &ip_key(&ip), member)?;
    state.ingest.add_members(&caller, &conversation_id, request.user_ids).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ip: ClientIp,
    ApiPath((conversation_id, user_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let member = state.ingest.is_member(&caller, &conversation_id)?.then_some(conversation_id.as_str());
    limit_write(&state, Write::RemoveMember, &caller.user_id, &ip_key(&ip), member)?;
    state.ingest.remove_member(&caller, &conversation_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn members(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiPath(conversation_id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let members = state.ingest.members(&caller, &conversation_id)?;
    Ok(Json(json!({"members": members})))
}
