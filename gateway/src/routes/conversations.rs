//! Conversations and their members.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use confab_ingest::NewConversation;
use confab_schemas::events::ConversationType;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateConversation {
    #[serde(rename = "type")]
    conversation_type: String,
    member_ids: Vec<String>,
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddMembers {
    user_ids: Vec<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(request): ApiJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<impl serde::Serialize>)> {
    let conversation_type = ConversationType::parse(&request.conversation_type)
        .ok_or_else(|| ApiError::bad_request(format!("invalid `type`: `{}` is not one of dm, group, channel", request.conversation_type)))?;
    let new = NewConversation { conversation_type, member_ids: request.member_ids, title: request.title };
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
    Path(conversation_id): Path<String>,
    ApiJson(request): ApiJson<AddMembers>,
) -> ApiResult<StatusCode> {
    state.ingest.add_members(&caller, &conversation_id, request.user_ids).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((conversation_id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.ingest.remove_member(&caller, &conversation_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn members(State(state): State<AppState>, Authenticated(caller): Authenticated, Path(conversation_id): Path<String>) -> ApiResult<Json<Value>> {
    let members = state.ingest.members(&caller, &conversation_id)?;
    Ok(Json(json!({"members": members})))
}
