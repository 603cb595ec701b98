//! `GET /v1/search`: the query side, and what erasure and retention ask of the index.
//!
//! Happy path: parse the query (400 on a bad one), work out what the
//! caller may read now (`Ingest::search_scope`: current memberships, and
//! in `joined` conversations only from the first message of their current
//! membership), resolve `from:` to a user, ask the engine for one more
//! than a page, newest first, then check every hit again against the state
//! (`Ingest::readable_messages`) and against the message's current text:
//! an index that lags an edit, a delete or a removal by a moment shows
//! fewer results, never a forbidden or stale one. The page's cursor is the
//! sort key of its last message, so the next page starts strictly after.
//!
//! Failures: hits dropped by the checks leave a short page; it is refilled
//! from after the last hit, a few rounds at most (a page may then come back
//! short with a cursor, which is still correct). An unreachable engine is
//! 503 (`unavailable`), with nothing partial shown.

use std::sync::Arc;
use std::time::Duration;

use confab_ingest::{Caller, Ingest};
use confab_log::Log;
use confab_schemas::{api, ErrorCode};
use serde::Serialize;

use crate::engine::{Engine, EngineError, Positions, Request, SortKey};
use crate::highlight::{highlights, matches_all};
use crate::indexer::{Indexer, IndexerConfig, IndexerError};
use crate::query::{Query, QueryError};

/// A page holds at most this many results.
pub const PAGE_MAX: usize = 100;
pub const PAGE_DEFAULT: usize = 20;
/// Engine round trips per page when the checks drop hits.
const REFILL_ROUNDS: usize = 4;
/// How long erasure and retention wait for the index to see their deletes before purging.
const PURGE_CATCH_UP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("invalid `cursor`: pass the `nextCursor` of the previous page unchanged")]
    Cursor,
    #[error(transparent)]
    State(#[from] confab_ingest::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the search index has not caught up with the deletes yet; the run is retried")]
    Behind,
}

impl SearchError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SearchError::Query(_) | SearchError::Cursor => ErrorCode::BadRequest,
            SearchError::State(error) => error.code(),
            SearchError::Engine(EngineError::Unavailable(_)) | SearchError::Behind => ErrorCode::Unavailable,
            SearchError::Engine(EngineError::Index(_)) => ErrorCode::Internal,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    pub message: api::Message,
    pub highlights: Vec<[usize; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchPage {
    pub results: Vec<SearchResult>,
    pub next_cursor: Option<String>,
}

impl SearchPage {
    fn empty() -> SearchPage {
        SearchPage { results: Vec::new(), next_cursor: None }
    }
}

/// One search as the route received it.
#[derive(Debug, Clone)]
pub struct SearchParams {
    pub q: String,
    pub conversation_id: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

pub struct Search {
    engine: Arc<dyn Engine>,
    ingest: Arc<Ingest>,
    log: Arc<dyn Log>,
    indexer: Indexer,
    /// A purge failed: the next erasure or retention run purges even if it deletes nothing new.
    purge_pending: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Search {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Search").field("indexer", &self.indexer).finish_non_exhaustive()
    }
}

impl Search {
    /// Starts the indexing pipeline (rebuilding the index first if it must).
    pub async fn start(engine: Arc<dyn Engine>, ingest: Arc<Ingest>, log: Arc<dyn Log>, config: IndexerConfig) -> Result<Search, IndexerError> {
        let indexer = Indexer::start(engine.clone(), ingest.clone(), log.clone(), config).await?;
        Ok(Search { engine, ingest, log, indexer, purge_pending: std::sync::atomic::AtomicBool::new(false) })
    }

    pub async fn search(&self, caller: &Caller, params: SearchParams) -> Result<SearchPage, SearchError> {
        let query = Query::parse(&params.q)?;
        let mut after = match &params.cursor {
            Some(cursor) => Some(SortKey::decode(cursor).ok_or(SearchError::Cursor)?),
            None => None,
        };
        let limit = params.limit.clamp(1, PAGE_MAX);
        let scope = self.ingest.search_scope(caller, params.conversation_id.as_deref())?;
        if scope.is_empty() {
            return Ok(SearchPage::empty());
        }
        let sender_id = match &query.from {
            Some(username) => match self.ingest.user_id_by_name(username)? {
                Some(user_id) => Some(user_id),
                None => return Ok(SearchPage::empty()),
            },
            None => None,
        };
        let mut request = Request { query, scope, sender_id, after, limit: limit + 1 };
        let mut results: Vec<(SortKey, SearchResult)> = Vec::with_capacity(limit + 1);
        let mut exhausted = false;
        for _ in 0..REFILL_ROUNDS {
            request.after = after;
            let hits = self.engine.search(&request).await?;
            exhausted = hits.len() < request.limit;
            let Some(last) = hits.last() else { break };
            after = Some(last.key);
            let found: Vec<(String, u64)> = hits.iter().map(|hit| (hit.conversation_id.clone(), hit.seq)).collect();
            for message in self.ingest.readable_messages(caller, &found)? {
                if let Some(result) = self.matching(&request.query, message) {
                    results.push(result);
                }
            }
            if results.len() > limit || exhausted {
                break;
            }
        }
        let more = results.len() > limit || !exhausted;
        results.truncate(limit);
        let next_cursor = if more { results.last().map(|(key, _)| key.encode()).or_else(|| after.map(|key| key.encode())) } else { None };
        Ok(SearchPage { results: results.into_iter().map(|(_, result)| result).collect(), next_cursor })
    }

    /// The result for a message the engine found, if its current state still matches the query.
    fn matching(&self, query: &Query, message: api::Message) -> Option<(SortKey, SearchResult)> {
        // Every clause must be in the current body: the index may hold an
        // older text for a moment, and an engine may find a superset (the
        // ClickHouse engine matches a phrase's words, not their order).
        if !matches_all(query, &message.body) || !query.in_time(message.ts) || (query.has_attachment && message.attachments.is_empty()) {
            return None;
        }
        let highlights = highlights(query, &message.body);
        Some((SortKey::of(message.ts, &message.conversation_id, message.seq), SearchResult { message, highlights }))
    }

    /// After erasure or retention deleted messages: waits until the index
    /// has seen every delete written so far, then rewrites what still held
    /// them, so their text leaves the index's files. Returns the documents dropped.
    pub async fn purge_removed(&self) -> Result<u64, SearchError> {
        use std::sync::atomic::Ordering;
        self.purge_pending.store(true, Ordering::SeqCst);
        let dropped = self.purge_now().await?;
        self.purge_pending.store(false, Ordering::SeqCst);
        Ok(dropped)
    }

    /// Whether a purge failed since the last one that succeeded (its run is retried).
    pub fn purge_pending(&self) -> bool {
        self.purge_pending.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn purge_now(&self) -> Result<u64, SearchError> {
        let mut targets = Positions::new();
        for partition in 0..self.log.partition_count() {
            let end = self.log.durable_end(partition).map_err(|error| EngineError::Index(error.to_string()))?;
            targets.insert(partition, end);
        }
        if !self.indexer.caught_up(&targets, PURGE_CATCH_UP).await {
            return Err(SearchError::Behind);
        }
        Ok(self.engine.purge().await?)
    }

    pub async fn shutdown(&self) {
        self.indexer.shutdown().await;
    }
}
