//! Administration and compliance: roles, and read-only SQL over the history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use confab_schemas::events::AccountRole;
use confab_schemas::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::AppState;

/// Largest SQL text accepted.
const SQL_MAX_BYTES: usize = 64 * 1024;
/// Largest result returned over HTTP; bigger ones need a LIMIT (or `confab sql`).
const RESULT_MAX_ROWS: usize = 100_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRole {
    user_id: String,
    role: String,
}

#[derive(Deserialize)]
pub struct SqlRequest {
    sql: String,
}

pub async fn grant_role(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiJson(request): ApiJson<GrantRole>) -> ApiResult<StatusCode> {
    let role = match request.role.as_str() {
        "admin" => AccountRole::Admin,
        "compliance" => AccountRole::Compliance,
        other => return Err(ApiError::bad_request(format!("invalid `role`: `{other}` is not one of admin, compliance"))),
    };
    state.ingest.grant_role(&caller, &request.user_id, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn query_error(error: confab_query::Error) -> ApiError {
    use confab_query::Error;
    match error {
        Error::NotAQuery { .. } | Error::StatementCount(_) | Error::Parse(_) | Error::Query(_) => ApiError::bad_request(error.to_string()),
        other => ApiError::internal("querying the history", other),
    }
}

/// Runs one read-only query for a compliance account. Every attempt,
/// refused or not, is written to the audit log first.
pub async fn sql(State(state): State<AppState>, Authenticated(caller): Authenticated, ApiJson(request): ApiJson<SqlRequest>) -> ApiResult<Json<Value>> {
    if !state.ingest.has_role(&caller.user_id, AccountRole::Compliance) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only compliance accounts may query the history; an administrator grants the role with POST /v1/admin/roles",
        ));
    }
    if request.sql.len() > SQL_MAX_BYTES {
        return Err(ApiError::new(ErrorCode::TooLarge, format!("`sql` is {} bytes; the limit is {SQL_MAX_BYTES}", request.sql.len())));
    }
    state.ingest.record_audit(&caller.user_id, "sql.query", json!({"sql": request.sql, "via": "http"}).to_string()).await?;
    confab_query::check_read_only(&request.sql).map_err(query_error)?;
    let output = state.history.query(&request.sql).await.map_err(query_error)?;
    let rows = confab_query::output::to_json_rows(&output).map_err(query_error)?;
    if rows.len() > RESULT_MAX_ROWS {
        return Err(ApiError::new(ErrorCode::TooLarge, format!("the result has {} rows; the limit is {RESULT_MAX_ROWS}: add a LIMIT", rows.len())));
    }
    Ok(Json(json!({"columns": output.columns, "rows": rows})))
}
