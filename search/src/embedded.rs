//! The embedded engine: a tantivy index under `<data_dir>/search`.
//!
//! Happy path. The indexing pipeline calls [`Embedded::apply`] with a batch
//! of changes: an add adds the message's document; an upsert deletes the
//! documents matching its conversation key and seq (both indexed: no term
//! is unique to one message, since a term per message would cost about
//! 30 bytes each, a third of the index) and adds it; a removal deletes; one commit makes them and
//! the pipeline's log positions (the commit's payload) durable together,
//! then the reader reloads and the batch is searchable. A search is one
//! boolean query (the terms, phrases and prefixes of the query, the sender
//! and attachment terms, the time range on the fast field `ts`, and for a
//! scope of up to `SCOPE_TERMS_MAX` conversations their term set) into a
//! collector that keeps the newest `limit` by `(ts, tiebreak)` and checks,
//! by fast fields, the conversation (for larger scopes, where a term set of
//! thousands of conversations would cost more than it saves) and the first
//! seq the caller may read in `joined` conversations. Segments are searched
//! newest first (by the largest `ts` of each), and once the page is full a
//! segment whose newest message is older than the page's oldest is skipped:
//! the pipeline indexes in log order, so segments hold time ranges and a
//! common word over a big scope reads only the newest segments.
//!
//! The index stores no document: hits are `(conversation key, seq)` read
//! from fast fields, mapped back to conversation ids through the request's
//! scope, and rendered from the state, so the index never serves a stale
//! body and holds no message text but its terms. Its schema is derived
//! data: an index with another schema (an older version) is deleted and
//! rebuilt from the log and the state.
//!
//! Failures. A crash before a commit loses the uncommitted batch and its
//! positions together: the pipeline re-reads from the last payload.
//! tantivy's own merges run in the background on committed segments. A
//! deleted message's terms stay in its segment until that segment is
//! merged; [`Embedded::purge`] (after erasure and retention) merges every
//! segment holding deleted documents at once and collects the old files,
//! so erased text leaves the disk when the operation ends (the merger
//! writes no term whose documents are all deleted).

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query as TantivyQuery, RangeQuery, TermQuery, TermSetQuery};
use tantivy::schema::{Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::DocSet as _;
use tantivy::{DocId, Index, IndexReader, IndexWriter, ReloadPolicy, SegmentReader, TantivyDocument, Term};

use crate::engine::{fnv1a, Change, Engine, EngineError, EngineResult, Hit, Positions, Request, SortKey};
use crate::query::Clause;
use crate::text;

/// Memory the writer may use before it flushes a segment.
const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Scopes up to this many conversations are a term set in the query;
/// larger ones are checked per match in the collector.
const SCOPE_TERMS_MAX: usize = 8;
/// Most terms one prefix expands to inside a phrase.
const PHRASE_PREFIX_EXPANSIONS: u32 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Fields {
    seq: Field,
    sender: Field,
    attachment: Field,
    ts: Field,
    conversation_key: Field,
    body: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Nothing is scored, so no field keeps norms; nothing is stored.
    let body_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(text::TOKENIZER_NAME).set_fieldnorms(false).set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let sender_options = TextOptions::default()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer("raw").set_fieldnorms(false).set_index_option(IndexRecordOption::Basic));
    let fields = Fields {
        conversation_key: builder.add_u64_field("conversation_key", NumericOptions::default().set_indexed().set_fast()),
        seq: builder.add_u64_field("seq", NumericOptions::default().set_indexed().set_fast()),
        sender: builder.add_text_field("sender", sender_options),
        attachment: builder.add_u64_field("attachment", NumericOptions::default().set_indexed()),
        ts: builder.add_i64_field("ts", FAST),
        body: builder.add_text_field("body", body_options),
    };
    (builder.build(), fields)
}

pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    index: Index,
    fields: Fields,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    reader: IndexReader,
    /// Per segment, its newest `ts` (the search order of segments).
    newest: Mutex<HashMap<tantivy::index::SegmentId, i64>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Embedded").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

fn index_error(error: impl std::fmt::Display) -> EngineError {
    EngineError::Index(error.to_string())
}

impl Embedded {
    /// Opens (or creates) the index in `dir`.
    pub fn open(dir: &Path) -> EngineResult<Embedded> {
        std::fs::create_dir_all(dir).map_err(|error| EngineError::Index(format!("creating {}: {error}", dir.display())))?;
        let (schema, fields) = schema();
        let open = |dir: &Path| MmapDirectory::open(dir).map_err(|error| EngineError::Index(format!("opening {}: {error}", dir.display())));
        let directory = open(dir)?;
        if Index::exists(&directory).map_err(index_error)? {
            let existing = Index::open(directory.clone()).map_err(index_error)?;
            if existing.schema() != schema {
                // Derived data: the pipeline rebuilds it from the log and the state.
                tracing::warn!(dir = %dir.display(), "the search index has another schema (another version): deleting it; it is rebuilt");
                drop(existing);
                std::fs::remove_dir_all(dir).and_then(|()| std::fs::create_dir_all(dir)).map_err(index_error)?;
            }
        }
        let directory = open(dir)?;
        let index = Index::open_or_create(directory, schema).map_err(|error| {
            EngineError::Index(format!("opening the search index in {}: {error} (delete the folder: it is rebuilt from the log and the state)", dir.display()))
        })?;
        index.tokenizers().register(text::TOKENIZER_NAME, text::analyzer());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES).map_err(|error| {
            EngineError::Index(format!("locking the search index in {}: {error} (is another confab serving this data directory?)", dir.display()))
        })?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(index_error)?;
        Ok(Embedded {
            inner: Arc::new(Inner { dir: dir.to_path_buf(), index, fields, writer: Mutex::new(writer), reader, newest: Mutex::new(HashMap::new()) }),
        })
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Inner) -> EngineResult<T> + Send + 'static) -> EngineResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner)).await.map_err(|error| EngineError::Index(format!("the index task failed: {error}")))?
    }
}

#[async_trait::async_trait]
impl Engine for Embedded {
    async fn positions(&self) -> EngineResult<Positions> {
        self.blocking(|inner| {
            let metas = inner.index.load_metas().map_err(index_error)?;
            match metas.payload {
                None => Ok(Positions::new()),
                Some(payload) => serde_json::from_str::<Payload>(&payload)
                    .map(|payload| payload.positions)
                    .map_err(|error| EngineError::Index(format!("the index's commit payload is unreadable: {error}"))),
            }
        })
        .await
    }

    async fn apply(&self, changes: Vec<Change>, positions: Positions) -> EngineResult<()> {
        self.blocking(move |inner| inner.apply(changes, &positions)).await
    }

    async fn search(&self, request: &Request) -> EngineResult<Vec<Hit>> {
        let request = request.clone();
        self.blocking(move |inner| inner.search(&request)).await
    }

    async fn purge(&self) -> EngineResult<u64> {
        self.blocking(Inner::purge).await
    }

    async fn clear(&self) -> EngineResult<()> {
        self.blocking(Inner::clear).await
    }

    async fn size_bytes(&self) -> EngineResult<u64> {
        self.blocking(|inner| Ok(dir_size(&inner.dir))).await
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    positions: Positions,
}

impl Inner {
    fn apply(&self, changes: Vec<Change>, positions: &Positions) -> EngineResult<()> {
        let fields = self.fields;
        let mut writer = self.writer.lock();
        for change in changes {
            let replace = matches!(change, Change::Upsert(_));
            match change {
                Change::Add(doc) | Change::Upsert(doc) => {
                    let conversation_key = fnv1a(doc.conversation_id.as_bytes());
                    if replace {
                        writer.delete_query(message_query(fields, conversation_key, doc.seq)).map_err(index_error)?;
                    }
                    let mut document = TantivyDocument::default();
                    document.add_u64(fields.conversation_key, conversation_key);
                    document.add_u64(fields.seq, doc.seq);
                    document.add_text(fields.sender, &doc.sender_id);
                    document.add_u64(fields.attachment, u64::from(doc.has_attachments));
                    document.add_i64(fields.ts, doc.ts);
                    document.add_text(fields.body, &doc.body);
                    writer.add_document(document).map_err(index_error)?;
                }
                Change::Remove { conversation_id, seq } => {
                    writer.delete_query(message_query(fields, fnv1a(conversation_id.as_bytes()), seq)).map_err(index_error)?;
                }
            }
        }
        let payload = serde_json::to_string(&Payload { positions: positions.clone() }).map_err(index_error)?;
        commit_with_payload(&mut writer, Some(&payload))?;
        drop(writer);
        self.reader.reload().map_err(index_error)
    }

    /// Deletes every document and forgets the positions (a stale index about to be rebuilt).
    fn clear(&self) -> EngineResult<()> {
        let mut writer = self.writer.lock();
        writer.delete_all_documents().map_err(index_error)?;
        commit_with_payload(&mut writer, None)?;
        writer.garbage_collect_files().wait().map_err(index_error)?;
        drop(writer);
        self.reader.reload().map_err(index_error)
    }

    fn search(&self, request: &Request) -> EngineResult<Vec<Hit>> {
        let fields = self.fields;
        if request.scope.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        let mut must: Vec<(Occur, Box<dyn TantivyQuery>)> = Vec::new();
        for clause in &request.query.clauses {
            must.push((Occur::Must, clause_query(fields.body, clause)?));
        }
        // Conversation key -> (its id, the first seq the caller may read).
        let scope: HashMap<u64, (&str, u64)> =
            request.scope.iter().map(|scope| (fnv1a(scope.conversation_id.as_bytes()), (scope.conversation_id.as_str(), scope.from_seq))).collect();
        let scope_in_query = scope.len() <= SCOPE_TERMS_MAX;
        if scope_in_query {
            let term = |key: u64| Term::from_field_u64(fields.conversation_key, key);
            let in_scope: Box<dyn TantivyQuery> = match scope.len() {
                1 => Box::new(TermQuery::new(term(*scope.keys().next().unwrap_or(&0)), IndexRecordOption::Basic)),
                _ => Box::new(TermSetQuery::new(scope.keys().map(|key| term(*key)))),
            };
            must.push((Occur::Must, in_scope));
        }
        if let Some(sender) = &request.sender_id {
            must.push((Occur::Must, Box::new(TermQuery::new(Term::from_field_text(fields.sender, sender), IndexRecordOption::Basic))));
        }
        if request.query.has_attachment {
            must.push((Occur::Must, Box::new(TermQuery::new(Term::from_field_u64(fields.attachment, 1), IndexRecordOption::Basic))));
        }
        let lower = request.query.after_ms.map_or(Bound::Unbounded, |after| Bound::Included(Term::from_field_i64(fields.ts, after)));
        let upper = match upper_bound(request.query.before_ms, request.after.map(|cursor| cursor.ts)) {
            Bound::Included(ts) => Bound::Included(Term::from_field_i64(fields.ts, ts)),
            Bound::Excluded(ts) => Bound::Excluded(Term::from_field_i64(fields.ts, ts)),
            Bound::Unbounded => Bound::Unbounded,
        };
        if !matches!((&lower, &upper), (Bound::Unbounded, Bound::Unbounded)) {
            must.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        if request.query.clauses.is_empty() {
            must.push((Occur::Must, Box::new(AllQuery)));
        }
        let query = BooleanQuery::new(must);
        // What the collector checks per match: every conversation when the
        // query does not, else only those with a first readable seq.
        let checks: HashMap<u64, u64> =
            scope.iter().filter(|(_, (_, from_seq))| !scope_in_query || *from_seq > 1).map(|(key, (_, from_seq))| (*key, *from_seq)).collect();
        let filter = ScopeFilter { checks, required: !scope_in_query };
        let searcher = self.reader.searcher();
        let weight = query.weight(tantivy::query::EnableScoring::disabled_from_searcher(&searcher)).map_err(index_error)?;
        // Newest segments first; stop once no older segment can enter the page.
        let mut segments: Vec<(i64, usize)> =
            searcher.segment_readers().iter().enumerate().map(|(ordinal, reader)| (self.newest_in(reader), ordinal)).collect();
        segments.sort_unstable_by(|a, b| b.cmp(a));
        let mut page = Page { limit: request.limit, before: request.after, heap: std::collections::BinaryHeap::with_capacity(request.limit + 1) };
        for (newest, ordinal) in segments {
            if page.full_before(newest) {
                break;
            }
            let reader = &searcher.segment_readers()[ordinal];
            let mut scorer = weight.scorer(reader, 1.0).map_err(index_error)?;
            if scorer.doc() == tantivy::TERMINATED {
                // No match here: no need to open its columns.
                continue;
            }
            let columns = Columns::of(reader).map_err(index_error)?;
            let alive = reader.alive_bitset();
            let mut doc = scorer.doc();
            while doc != tantivy::TERMINATED {
                if alive.is_none_or(|alive| alive.is_alive(doc)) {
                    page.offer(&columns, &filter, doc);
                }
                doc = scorer.advance();
            }
        }
        let mut found: Vec<(SortKey, u64, u64)> = page.heap.into_iter().map(|std::cmp::Reverse(entry)| entry).collect();
        found.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        Ok(found
            .into_iter()
            .filter_map(|(key, conversation_key, seq)| {
                scope.get(&conversation_key).map(|(conversation_id, _)| Hit { conversation_id: conversation_id.to_string(), seq, key })
            })
            .collect())
    }

    /// The newest `ts` of a segment (remembered: segments never change).
    fn newest_in(&self, reader: &SegmentReader) -> i64 {
        let id = reader.segment_id();
        if let Some(newest) = self.newest.lock().get(&id) {
            return *newest;
        }
        let newest = reader.fast_fields().i64("ts").map_or(i64::MAX, |ts| ts.max_value());
        let mut cache = self.newest.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(id, newest);
        newest
    }

    /// Merges every segment that holds deleted documents, then deletes the
    /// files no commit uses. Returns the documents dropped.
    fn purge(&self) -> EngineResult<u64> {
        let mut writer = self.writer.lock();
        // Pending deletes are committed first (the pipeline commits every
        // batch, so this is normally a no-op), keeping the positions: a
        // commit without a payload would forget them, and the next start
        // would rebuild the whole index.
        let payload = self.index.load_metas().map_err(index_error)?.payload;
        commit_with_payload(&mut writer, payload.as_deref())?;
        let mut dropped = 0;
        for attempt in 0..20 {
            let metas = self.index.searchable_segment_metas().map_err(index_error)?;
            let with_deletes: Vec<_> = metas.iter().filter(|meta| meta.has_deletes()).collect();
            if with_deletes.is_empty() {
                break;
            }
            let ids: Vec<_> = with_deletes.iter().map(|meta| meta.id()).collect();
            let deleted: u64 = with_deletes.iter().map(|meta| u64::from(meta.num_deleted_docs())).sum();
            match writer.merge(&ids).wait() {
                Ok(_) => dropped += deleted,
                // A background merge holds one of them: wait for it and look again.
                Err(error) if attempt < 19 => {
                    tracing::debug!(%error, "a segment to purge is being merged; trying again");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(error) => return Err(index_error(error)),
            }
        }
        writer.garbage_collect_files().wait().map_err(index_error)?;
        drop(writer);
        self.reader.reload().map_err(index_error)?;
        Ok(dropped)
    }
}

/// Commits what the writer holds with `payload` (the log positions) as the commit's payload.
fn commit_with_payload(writer: &mut IndexWriter<TantivyDocument>, payload: Option<&str>) -> EngineResult<()> {
    let mut commit = writer.prepare_commit().map_err(index_error)?;
    if let Some(payload) = payload {
        commit.set_payload(payload);
    }
    commit.commit().map_err(index_error)?;
    Ok(())
}

/// The tighter of "before `before`" and "at or before the cursor's time".
fn upper_bound(before: Option<i64>, cursor_ts: Option<i64>) -> Bound<i64> {
    match (before, cursor_ts) {
        (Some(before), Some(cursor)) if before <= cursor => Bound::Excluded(before),
        (_, Some(cursor)) => Bound::Included(cursor),
        (Some(before), None) => Bound::Excluded(before),
        (None, None) => Bound::Unbounded,
    }
}

fn clause_query(body: Field, clause: &Clause) -> EngineResult<Box<dyn TantivyQuery>> {
    let term = |text: &str| Term::from_field_text(body, text);
    Ok(match clause {
        Clause::Terms(words) if words.len() == 1 => Box::new(TermQuery::new(term(&words[0]), IndexRecordOption::Basic)),
        Clause::Terms(words) => Box::new(PhraseQuery::new(words.iter().map(|word| term(word)).collect())),
        // A range of the term dictionary (cheaper than an automaton over it).
        Clause::Prefix { leading, prefix } if leading.is_empty() => match text::prefix_end(prefix) {
            Some(end) => Box::new(RangeQuery::new(Bound::Included(term(prefix)), Bound::Excluded(Term::from_field_bytes(body, &end)))),
            None => Box::new(RangeQuery::new(Bound::Included(term(prefix)), Bound::Unbounded)),
        },
        Clause::Prefix { leading, prefix } => {
            let mut query = PhrasePrefixQuery::new(leading.iter().chain(std::iter::once(prefix)).map(|word| term(word)).collect());
            query.set_max_expansions(PHRASE_PREFIX_EXPANSIONS);
            Box::new(query)
        }
    })
}

/// The message at `seq` in the conversation with this key (two short posting lists, intersected).
fn message_query(fields: Fields, conversation_key: u64, seq: u64) -> Box<dyn TantivyQuery> {
    Box::new(BooleanQuery::new(vec![
        (
            Occur::Must,
            Box::new(TermQuery::new(Term::from_field_u64(fields.conversation_key, conversation_key), IndexRecordOption::Basic)) as Box<dyn TantivyQuery>,
        ),
        (Occur::Must, Box::new(TermQuery::new(Term::from_field_u64(fields.seq, seq), IndexRecordOption::Basic))),
    ]))
}

/// The fast fields a match is judged by.
struct Columns {
    ts: tantivy::columnar::Column<i64>,
    conversation_key: tantivy::columnar::Column<u64>,
    seq: tantivy::columnar::Column<u64>,
}

impl Columns {
    fn of(reader: &SegmentReader) -> tantivy::Result<Columns> {
        let fast = reader.fast_fields();
        Ok(Columns { ts: fast.i64("ts")?, conversation_key: fast.u64("conversation_key")?, seq: fast.u64("seq")? })
    }
}

/// Conversation key -> the first seq the caller may read; `required`: a
/// match in a conversation not listed is out of scope.
struct ScopeFilter {
    checks: HashMap<u64, u64>,
    required: bool,
}

/// The newest `limit` matches before the cursor: a min-heap by key of
/// `(key, conversation key, seq)`.
struct Page {
    limit: usize,
    before: Option<SortKey>,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(SortKey, u64, u64)>>,
}

impl Page {
    /// Whether the page is full of messages newer than any at or before `ts`.
    fn full_before(&self, ts: i64) -> bool {
        self.heap.len() >= self.limit && self.heap.peek().is_some_and(|oldest| ts < oldest.0 .0.ts)
    }

    fn offer(&mut self, columns: &Columns, filter: &ScopeFilter, doc: DocId) {
        let conversation_key = columns.conversation_key.first(doc).unwrap_or_default();
        let seq = columns.seq.first(doc).unwrap_or_default();
        let key = SortKey { ts: columns.ts.first(doc).unwrap_or_default(), tiebreak: conversation_key ^ seq };
        if self.before.is_some_and(|before| key >= before) {
            return;
        }
        if self.heap.len() >= self.limit && self.heap.peek().is_some_and(|oldest| key <= oldest.0 .0) {
            return;
        }
        match filter.checks.get(&conversation_key) {
            None if filter.required => return,
            Some(&from_seq) if seq < from_seq => return,
            _ => {}
        }
        self.heap.push(std::cmp::Reverse((key, conversation_key, seq)));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }
}

/// Every word in the term dictionaries of the message bodies in the
/// index's files, read from every `.term` file in the folder (also those of
/// segments no commit uses any more but not yet deleted). The dictionaries
/// are finite-state transducers, which do not hold a word as contiguous
/// bytes, so a byte search of the files cannot tell whether a word is
/// there: this reads them. For tests and operators checking an erasure.
pub fn terms_in_files(dir: &Path) -> EngineResult<std::collections::BTreeSet<String>> {
    use tantivy::directory::{CompositeFile, Directory};
    let index = Index::open_in_dir(dir).map_err(index_error)?;
    let (_, fields) = schema();
    let mut terms = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(index_error)? {
        let name = entry.map_err(index_error)?.file_name();
        if !name.to_string_lossy().ends_with(".term") {
            continue;
        }
        let slice = index.directory().open_read(Path::new(&name)).map_err(index_error)?;
        let composite = CompositeFile::open(&slice).map_err(index_error)?;
        let Some(body) = composite.open_read(fields.body) else { continue };
        let dictionary = tantivy::termdict::TermDictionary::open(body).map_err(index_error)?;
        let mut stream = dictionary.stream().map_err(index_error)?;
        while stream.advance() {
            terms.insert(String::from_utf8_lossy(stream.key()).into_owned());
        }
    }
    Ok(terms)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|entry| entry.ok()?.metadata().ok()).filter(|metadata| metadata.is_file()).map(|metadata| metadata.len()).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Doc, Scope};
    use crate::query::Query;

    fn doc(id: &str, conversation: &str, seq: u64, ts: i64, body: &str) -> Doc {
        Doc { message_id: id.into(), conversation_id: conversation.into(), seq, sender_id: "u_a".into(), ts, body: body.into(), has_attachments: false }
    }

    fn request(q: &str, scope: &[(&str, u64)]) -> Request {
        Request {
            query: Query::parse(q).unwrap(),
            scope: scope.iter().map(|(id, from_seq)| Scope { conversation_id: id.to_string(), from_seq: *from_seq }).collect(),
            sender_id: None,
            after: None,
            limit: 10,
        }
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|window| window == needle)
        })
    }

    #[tokio::test]
    async fn large_scopes_are_checked_per_match_across_segments_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Embedded::open(dir.path()).unwrap();
        // Three commits, three segments of consecutive times; 400 conversations.
        for batch in 0..3u64 {
            let changes = (0..200u64)
                .map(|index| {
                    let n = batch * 200 + index;
                    Change::Upsert(doc(&format!("m{n}"), &format!("c{}", n % 400), n / 400 + 1, n as i64, "common words here"))
                })
                .collect();
            engine.apply(changes, Positions::from([(0, batch + 1)])).await.unwrap();
        }
        // 300 conversations (checked in the collector), c399 joined from seq 2.
        let scope: Vec<(String, u64)> = (100..400).map(|c| (format!("c{c}"), if c == 399 { 2 } else { 1 })).collect();
        let scope: Vec<(&str, u64)> = scope.iter().map(|(id, from)| (id.as_str(), *from)).collect();
        let mut request = request("common", &scope);
        request.limit = 4;
        let found: Vec<(String, u64)> = engine.search(&request).await.unwrap().into_iter().map(|hit| (hit.conversation_id, hit.seq)).collect();
        // Newest first: m599 (c199, seq 2), m598, m597, m596; m399 is c399 seq 1, hidden.
        assert_eq!(found, vec![("c199".into(), 2), ("c198".into(), 2), ("c197".into(), 2), ("c196".into(), 2)]);
        request.scope.retain(|scope| scope.conversation_id == "c399" || scope.conversation_id == "c150");
        request.limit = 10;
        let found: Vec<(String, u64)> = engine.search(&request).await.unwrap().into_iter().map(|hit| (hit.conversation_id, hit.seq)).collect();
        assert_eq!(found, vec![("c150".into(), 2), ("c150".into(), 1)], "a small scope goes into the query; c399 has no seq 2");
    }

    #[tokio::test]
    async fn upserts_replace_removes_forget_and_purge_keeps_the_positions() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Embedded::open(dir.path()).unwrap();
        assert!(engine.positions().await.unwrap().is_empty());
        let changes = vec![
            Change::Upsert(doc("m1", "c1", 1, 1_000, "the walrus sings")),
            Change::Upsert(doc("m2", "c1", 2, 2_000, "zebrafishsecret walrus")),
            Change::Upsert(doc("m3", "c2", 1, 3_000, "walrus elsewhere")),
        ];
        engine.apply(changes, Positions::from([(0, 3)])).await.unwrap();
        let found = engine.search(&request("walrus", &[("c1", 1), ("c2", 1)])).await.unwrap();
        assert_eq!(found.iter().map(|hit| (hit.conversation_id.as_str(), hit.seq)).collect::<Vec<_>>(), vec![("c2", 1), ("c1", 2), ("c1", 1)]);
        // A joined conversation hides what came before the caller's membership.
        let found = engine.search(&request("walrus", &[("c1", 2)])).await.unwrap();
        assert_eq!(found.iter().map(|hit| hit.seq).collect::<Vec<_>>(), vec![2]);
        // The cursor continues strictly after the last hit.
        let mut paged = request("walrus", &[("c1", 1), ("c2", 1)]);
        paged.limit = 1;
        let first = engine.search(&paged).await.unwrap();
        paged.after = Some(first[0].key);
        assert_eq!(engine.search(&paged).await.unwrap()[0].seq, 2);

        // An edit replaces the text; a removal forgets the message.
        engine.apply(vec![Change::Upsert(doc("m1", "c1", 1, 1_000, "the narwhal sings"))], Positions::from([(0, 4)])).await.unwrap();
        assert_eq!(engine.search(&request("walrus", &[("c1", 1)])).await.unwrap().len(), 1);
        assert_eq!(engine.search(&request("narwhal", &[("c1", 1)])).await.unwrap().len(), 1);
        assert!(terms_in_files(dir.path()).unwrap().contains("zebrafishsecret"), "the positive control: the term is in the files");
        engine.apply(vec![Change::Remove { conversation_id: "c1".into(), seq: 2 }], Positions::from([(0, 5)])).await.unwrap();
        assert!(engine.search(&request("zebrafishsecret", &[("c1", 1)])).await.unwrap().is_empty());
        assert!(engine.purge().await.unwrap() >= 1);
        let terms = terms_in_files(dir.path()).unwrap();
        assert!(!terms.contains("zebrafishsecret") && terms.contains("walrus"), "the removed text left the files: {terms:?}");
        assert!(!files_contain(dir.path(), b"zebrafishsecret"));
        assert_eq!(engine.positions().await.unwrap(), Positions::from([(0, 5)]), "purging keeps the positions");
        assert_eq!(engine.search(&request("walrus", &[("c1", 1), ("c2", 1)])).await.unwrap().len(), 1);

        // Reopened, it holds the same; cleared, nothing.
        drop(engine);
        let engine = Embedded::open(dir.path()).unwrap();
        assert_eq!(engine.positions().await.unwrap(), Positions::from([(0, 5)]));
        assert_eq!(engine.search(&request("narwhal", &[("c1", 1)])).await.unwrap().len(), 1);
        engine.clear().await.unwrap();
        assert!(engine.positions().await.unwrap().is_empty());
        assert!(engine.search(&request("narwhal", &[("c1", 1)])).await.unwrap().is_empty());
    }
}
