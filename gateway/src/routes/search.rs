//! `GET /v1/search` (`shared/API.md`, Search). The search layer
//! (`confab-search`) parses, checks permissions and asks the index; this
//! only speaks HTTP.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use confab_search::{SearchPage, SearchParams};

use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::rate_limit::Limit;
use crate::routes::accounts::limit;
use crate::routes::messages::page_limit;
use crate::AppState;

/// `GET /v1/search?q=&conversationId=&limit=&cursor=` -> `{results: [{message, highlights}], nextCursor}`.
pub async fn search(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(mut params): ApiQuery<HashMap<String, String>>,
) -> ApiResult<Json<SearchPage>> {
    limit(&state, Limit::SearchesPerAccount, &caller.user_id)?;
    let limit = page_limit(&params, confab_search::service::PAGE_DEFAULT, confab_search::service::PAGE_MAX)?;
    let q = params.remove("q").ok_or_else(|| ApiError::bad_request("missing `q`: pass the words to search for, e.g. ?q=lunch"))?;
    let search = state.search.get().ok_or_else(|| ApiError::new(confab_schemas::ErrorCode::Unavailable, "search is not available yet; retry shortly"))?;
    let params = SearchParams { q, conversation_id: params.remove("conversationId"), limit, cursor: params.remove("cursor") };
    Ok(Json(search.search(&caller, params).await?))
}
