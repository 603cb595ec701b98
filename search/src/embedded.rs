//! The embedded engine: a tantivy index under `<data_dir>/search`.
//!
//! Happy path. The indexing pipeline calls [`Embedded::apply`] with a batch
//! of changes: each upsert deletes the message's id term and adds its
//! document, each removal deletes the id term; one commit makes them and
//! the pipeline's log positions (the commit's payload) durable together,
//! then the reader reloads and the batch is searchable. A search is one
//! boolean query (the terms, phrases and prefixes of the query, the
//! caller's conversations as a term set, the sender and attachment terms,
//! the time range on the fast field `ts`) into a collector that keeps the
//! newest `limit` by `(ts, tiebreak)` and drops, by fast fields, messages
//! before the caller's `from_seq` in `joined` conversations.
//!
//! The documents store only ids (`message_id`, `conversation_id`, `seq`):
//! results are rendered from the state, so the index never serves a
//! stale body and holds no message text but its terms.
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
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query as TantivyQuery, RangeQuery, RegexQuery, TermQuery, TermSetQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED, STRING};
use tantivy::{DocAddress, DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term};

use crate::engine::{fnv1a, Change, Engine, EngineError, EngineResult, Hit, Positions, Request, SortKey};
use crate::query::Clause;
use crate::text;

/// Memory the writer may use before it flushes a segment.
const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Most terms one prefix expands to inside a phrase.
const PHRASE_PREFIX_EXPANSIONS: u32 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Fields {
    message_id: Field,
    conversation_id: Field,
    seq: Field,
    sender: Field,
    attachment: Field,
    ts: Field,
    tiebreak: Field,
    conversation_key: Field,
    body: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let body_options = TextOptions::default()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer(text::TOKENIZER_NAME).set_index_option(IndexRecordOption::WithFreqsAndPositions));
    let fields = Fields {
        message_id: builder.add_text_field("message_id", STRING | STORED),
        conversation_id: builder.add_text_field("conversation_id", STRING | STORED),
        seq: builder.add_u64_field("seq", STORED | FAST),
        sender: builder.add_text_field("sender", STRING),
        attachment: builder.add_u64_field("attachment", INDEXED),
        ts: builder.add_i64_field("ts", FAST),
        tiebreak: builder.add_u64_field("tiebreak", FAST),
        conversation_key: builder.add_u64_field("conversation_key", FAST),
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
        let directory = MmapDirectory::open(dir).map_err(|error| EngineError::Index(format!("opening {}: {error}", dir.display())))?;
        let index = Index::open_or_create(directory, schema).map_err(|error| {
            EngineError::Index(format!(
                "opening the search index in {}: {error} (if its schema is from another version, delete the folder: it is rebuilt from the log and the state)",
                dir.display()
            ))
        })?;
        index.tokenizers().register(text::TOKENIZER_NAME, text::analyzer());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES).map_err(|error| {
            EngineError::Index(format!("locking the search index in {}: {error} (is another confab serving this data directory?)", dir.display()))
        })?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(index_error)?;
        Ok(Embedded { inner: Arc::new(Inner { dir: dir.to_path_buf(), index, fields, writer: Mutex::new(writer), reader }) })
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
            match change {
                Change::Upsert(doc) => {
                    writer.delete_term(Term::from_field_text(fields.message_id, &doc.message_id));
                    let mut document = TantivyDocument::default();
                    document.add_text(fields.message_id, &doc.message_id);
                    document.add_text(fields.conversation_id, &doc.conversation_id);
                    document.add_u64(fields.seq, doc.seq);
                    document.add_text(fields.sender, &doc.sender_id);
                    document.add_u64(fields.attachment, u64::from(doc.has_attachments));
                    document.add_i64(fields.ts, doc.ts);
                    document.add_u64(fields.tiebreak, SortKey::of(doc.ts, &doc.message_id).tiebreak);
                    document.add_u64(fields.conversation_key, fnv1a(doc.conversation_id.as_bytes()));
                    document.add_text(fields.body, &doc.body);
                    writer.add_document(document).map_err(index_error)?;
                }
                Change::Remove { message_id } => {
                    writer.delete_term(Term::from_field_text(fields.message_id, &message_id));
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
        let scope: Box<dyn TantivyQuery> = match request.scope.as_slice() {
            [one] => Box::new(TermQuery::new(Term::from_field_text(fields.conversation_id, &one.conversation_id), IndexRecordOption::Basic)),
            many => Box::new(TermSetQuery::new(many.iter().map(|scope| Term::from_field_text(fields.conversation_id, &scope.conversation_id)))),
        };
        must.push((Occur::Must, scope));
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
        let joined: HashMap<u64, u64> =
            request.scope.iter().filter(|scope| scope.from_seq > 1).map(|scope| (fnv1a(scope.conversation_id.as_bytes()), scope.from_seq)).collect();
        let collector = Newest { limit: request.limit, before: request.after, joined: Arc::new(joined) };
        let searcher = self.reader.searcher();
        let found = searcher.search(&query, &collector).map_err(index_error)?;
        let mut hits = Vec::with_capacity(found.len());
        for (key, address) in found {
            let document: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            let conversation_id = document.get_first(fields.conversation_id).and_then(|value| value.as_str()).unwrap_or_default().to_string();
            let seq = document.get_first(fields.seq).and_then(|value| value.as_u64()).unwrap_or_default();
            hits.push(Hit { conversation_id, seq, key });
        }
        Ok(hits)
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
        Clause::Prefix { leading, prefix } if leading.is_empty() => {
            Box::new(RegexQuery::from_pattern(&format!("{}.*", regex_escape(prefix)), body).map_err(index_error)?)
        }
        Clause::Prefix { leading, prefix } => {
            let mut query = PhrasePrefixQuery::new(leading.iter().chain(std::iter::once(prefix)).map(|word| term(word)).collect());
            query.set_max_expansions(PHRASE_PREFIX_EXPANSIONS);
            Box::new(query)
        }
    })
}

/// Escapes what tantivy's regex syntax would read as operators.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if !character.is_alphanumeric() {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// The newest `limit` documents before `before`, without those a `joined`
/// conversation hides from the caller.
struct Newest {
    limit: usize,
    before: Option<SortKey>,
    /// Conversation key → the first seq the caller may read.
    joined: Arc<HashMap<u64, u64>>,
}

struct SegmentNewest {
    segment: SegmentOrdinal,
    limit: usize,
    before: Option<SortKey>,
    joined: Arc<HashMap<u64, u64>>,
    ts: tantivy::columnar::Column<i64>,
    tiebreak: tantivy::columnar::Column<u64>,
    conversation_key: tantivy::columnar::Column<u64>,
    seq: tantivy::columnar::Column<u64>,
    /// A min-heap of the newest seen, by key.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(SortKey, DocId)>>,
}

impl Collector for Newest {
    type Fruit = Vec<(SortKey, DocAddress)>;
    type Child = SegmentNewest;

    fn for_segment(&self, segment: SegmentOrdinal, reader: &SegmentReader) -> tantivy::Result<SegmentNewest> {
        let fast = reader.fast_fields();
        Ok(SegmentNewest {
            segment,
            limit: self.limit,
            before: self.before,
            joined: self.joined.clone(),
            ts: fast.i64("ts")?,
            tiebreak: fast.u64("tiebreak")?,
            conversation_key: fast.u64("conversation_key")?,
            seq: fast.u64("seq")?,
            heap: std::collections::BinaryHeap::with_capacity(self.limit + 1),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(SortKey, DocAddress)>>) -> tantivy::Result<Self::Fruit> {
        let mut all: Vec<(SortKey, DocAddress)> = fruits.into_iter().flatten().collect();
        all.sort_unstable_by_key(|(key, _)| std::cmp::Reverse(*key));
        all.truncate(self.limit);
        Ok(all)
    }
}

impl SegmentCollector for SegmentNewest {
    type Fruit = Vec<(SortKey, DocAddress)>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let key = SortKey { ts: self.ts.first(doc).unwrap_or_default(), tiebreak: self.tiebreak.first(doc).unwrap_or_default() };
        if self.before.is_some_and(|before| key >= before) {
            return;
        }
        if self.heap.len() == self.limit && self.heap.peek().is_some_and(|oldest| key <= oldest.0 .0) {
            return;
        }
        if !self.joined.is_empty() {
            let conversation = self.conversation_key.first(doc).unwrap_or_default();
            if self.joined.get(&conversation).is_some_and(|&from| self.seq.first(doc).unwrap_or_default() < from) {
                return;
            }
        }
        self.heap.push(std::cmp::Reverse((key, doc)));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    fn harvest(self) -> Self::Fruit {
        let segment = self.segment;
        self.heap.into_iter().map(|std::cmp::Reverse((key, doc))| (key, DocAddress::new(segment, doc))).collect()
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
        engine.apply(vec![Change::Remove { message_id: "m2".into() }], Positions::from([(0, 5)])).await.unwrap();
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
