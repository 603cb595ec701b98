//! Confab's search; see `README.md` beside this crate.

pub mod embedded;
pub mod engine;
pub mod highlight;
pub mod query;
pub mod text;

pub use engine::{Change, Engine, EngineError, Hit, Positions, Request, Scope, SortKey};
pub use query::{Query, QueryError};
