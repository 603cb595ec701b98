//! Confab's search; see `README.md` beside this crate.

pub mod bench;
pub mod clickhouse;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod highlight;
pub mod indexer;
pub mod query;
pub mod service;
pub mod text;

pub use config::{EngineKind, SearchConfig};
pub use engine::{Change, Engine, EngineError, Hit, Positions, Request, Scope, SortKey};
pub use indexer::{Indexer, IndexerConfig, IndexerError};
pub use query::{Query, QueryError};
pub use service::{Search, SearchError, SearchPage, SearchParams, SearchResult};
