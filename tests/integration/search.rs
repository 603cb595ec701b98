//! `GET /v1/search` against a live server: the query language, newest
//! first with cursors, highlights in code points, permissions at query time
//! (leave, removal, re-adding, both visibilities), edits and deletes,
//! erasure and retention reaching the index's files, restart and rebuild.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{assert_error, test_config, Client, TestServer};

/// Which index engine a test runs on: every test runs on both.
#[derive(Clone)]
enum Engine {
    Embedded,
    /// A database of its own on the server `tests/run` starts.
    Clickhouse {
        url: String,
        database: String,
        data: Option<std::path::PathBuf>,
    },
}

fn clickhouse() -> Option<Engine> {
    let Ok(url) = std::env::var("CONFAB_TEST_CLICKHOUSE_URL") else {
        assert!(std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(), "CONFAB_REQUIRE_EXTERNAL is set but CONFAB_TEST_CLICKHOUSE_URL is not");
        eprintln!("skipping: CONFAB_TEST_CLICKHOUSE_URL is not set (tests/run starts ClickHouse)");
        return None;
    };
    let database = format!("confab_test_{}_{}", std::process::id(), fastrand::u64(..));
    Some(Engine::Clickhouse { url, database, data: std::env::var_os("CONFAB_TEST_CLICKHOUSE_DATA").map(Into::into) })
}

/// Runs each test on the embedded engine and on ClickHouse.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Embedded).await
            })*
        }
        mod clickhouse {
            $(#[tokio::test]
            async fn $name() {
                if let Some(engine) = super::clickhouse() {
                    super::$name(engine).await
                }
            })*
        }
    };
}

on_both_engines!(
    words_phrases_prefixes_and_modifiers_find_the_right_messages_newest_first,
    pages_follow_the_cursor_newest_first_without_repeats,
    only_what_the_caller_may_read_now_is_found,
    edits_are_found_by_their_current_text_and_deletes_never,
    erasure_and_retention_take_the_text_out_of_the_index_files,
    the_index_continues_after_a_restart_and_rebuilds_when_lost,
);

/// A config on a fresh data directory with the engine's `[search]`.
fn config_for(engine: &Engine, data_dir: &Path) -> confab::config::Config {
    let mut config = test_config(data_dir);
    if let Engine::Clickhouse { url, database, .. } = engine {
        config.search.engine = confab_search::EngineKind::Clickhouse;
        config.search.clickhouse.url = url.clone();
        config.search.clickhouse.database = database.clone();
    }
    config
}

/// A server on a fresh data directory (kept as long as the returned guard).
async fn start(engine: &Engine) -> (TestServer, tempfile::TempDir) {
    let temporary = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config_for(engine, temporary.path())).await;
    (server, temporary)
}

/// Whether the engine's files hold this word: the embedded index's term
/// dictionaries, or any file of the ClickHouse database's tables.
fn index_holds(engine: &Engine, data_dir: &Path, word: &str) -> bool {
    match engine {
        Engine::Embedded => confab_search::embedded::terms_in_files(&data_dir.join("search")).unwrap().contains(word),
        Engine::Clickhouse { database, data, .. } => {
            let data = data.as_ref().expect("CONFAB_TEST_CLICKHOUSE_DATA names the server's data folder");
            clickhouse_files_contain(&data.join("data").join(database), word.as_bytes())
        }
    }
}

/// Whether any file under `dir` holds `needle`, column files (`.bin`)
/// decompressed first: ClickHouse compresses them with LZ4 by blocks, which
/// can cut a word into a back-reference (`zebrafishsecret` after `zebrafish`).
pub(crate) fn clickhouse_files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            return clickhouse_files_contain(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        let plain = if path.extension().is_some_and(|extension| extension == "bin") { decompress_blocks(&bytes) } else { bytes };
        plain.windows(needle.len()).any(|window| window == needle)
    })
}

/// ClickHouse's compressed file format: blocks of a 16-byte checksum, a
/// method byte (0x82 LZ4, 0x02 none), the compressed size (with the 9
/// header bytes) and the plain size, both u32 little-endian, then the data.
fn decompress_blocks(bytes: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    let mut at = 0;
    while at + 25 <= bytes.len() {
        let method = bytes[at + 16];
        let compressed = u32::from_le_bytes(bytes[at + 17..at + 21].try_into().unwrap()) as usize;
        let size = u32::from_le_bytes(bytes[at + 21..at + 25].try_into().unwrap()) as usize;
        let end = (at + 16 + compressed).min(bytes.len());
        let data = &bytes[at + 25..end];
        match method {
            0x82 => plain.extend(lz4_block(data, size)),
            0x02 => plain.extend_from_slice(data),
            other => panic!("a ClickHouse block compressed with method {other:#x}; only LZ4 and none are read here"),
        }
        at = end;
    }
    plain
}

/// One LZ4 block (the format's sequences of literals and back-references).
fn lz4_block(source: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut at = 0;
    let length = |at: &mut usize, mut value: usize| {
        if value == 15 {
            loop {
                let byte = source[*at];
                *at += 1;
                value += usize::from(byte);
                if byte != 255 {
                    break;
                }
            }
        }
        value
    };
    while at < source.len() {
        let token = source[at];
        at += 1;
        let literals = length(&mut at, usize::from(token >> 4));
        out.extend_from_slice(&source[at..at + literals]);
        at += literals;
        if at >= source.len() {
            break;
        }
        let offset = usize::from(u16::from_le_bytes([source[at], source[at + 1]]));
        at += 2;
        let matched = length(&mut at, usize::from(token & 15)) + 4;
        let start = out.len() - offset;
        for index in 0..matched {
            out.push(out[start + index]);
        }
    }
    out
}

/// Loses the index: the embedded folder, or the ClickHouse database.
async fn lose_index(engine: &Engine, data_dir: &Path) {
    match engine {
        Engine::Embedded => std::fs::remove_dir_all(data_dir.join("search")).unwrap(),
        Engine::Clickhouse { url, database, .. } => {
            let response = reqwest::Client::new().post(url.as_str()).body(format!("DROP DATABASE {database}")).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.text().await.unwrap());
        }
    }
}

/// `GET /v1/search` with `q` and the other parameters, URL-encoded.
async fn search(client: &Client, q: &str, more: &[(&str, &str)]) -> (u16, Value) {
    let mut url = reqwest::Url::parse("http://x/v1/search").unwrap();
    url.query_pairs_mut().append_pair("q", q);
    for (name, value) in more {
        url.query_pairs_mut().append_pair(name, value);
    }
    client.get(&format!("/v1/search?{}", url.query().unwrap())).await
}

/// The bodies found, in order.
async fn bodies(client: &Client, q: &str, more: &[(&str, &str)]) -> Vec<String> {
    let (status, page) = search(client, q, more).await;
    assert_eq!(status, 200, "{q}: {page}");
    page["results"].as_array().unwrap().iter().map(|result| result["message"]["body"].as_str().unwrap().to_string()).collect()
}

/// Polls until the search finds exactly `expected` (the index commits every half second).
async fn until_found(client: &Client, q: &str, more: &[(&str, &str)], expected: &[&str]) {
    let mut found = Vec::new();
    for _ in 0..200 {
        found = bodies(client, q, more).await;
        if found == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{q}` found {found:?}, expected {expected:?}");
}

/// `YYYY-MM-DD` of the UTC day `offset` days from today.
fn day(offset: i64) -> String {
    confab_query::rows::day_of(confab_schemas::ids::now_ms() + offset * 86_400_000)
}

async fn words_phrases_prefixes_and_modifiers_find_the_right_messages_newest_first(engine: Engine) {
    let (server, _data) = start(&engine).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let dm = alice.conversation("dm", &[&bob]).await;
    alice.say(&group, "a1", "Résumé du Café, ready at noon").await;
    bob.say(&group, "b1", "I'll bring the CAFE menu🍕and the résumés").await;
    alice.say(&dm, "a2", "東京都に行きます https://example.com/lunch?at=noon").await;
    bob.say(&dm, "b2", "cafeteria plans").await;
    until_found(&alice, "caf*", &[], &["cafeteria plans", "I'll bring the CAFE menu🍕and the résumés", "Résumé du Café, ready at noon"]).await;

    // Case and accents fold both ways; highlights are code points of the body.
    let (status, page) = search(&alice, "resume", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["results"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["results"][0]["message"]["body"], "Résumé du Café, ready at noon");
    assert_eq!(page["results"][0]["highlights"], json!([[0, 6]]));
    assert_eq!(page["nextCursor"], Value::Null);
    assert_eq!(bodies(&bob, "CAFÉ", &[]).await, vec!["I'll bring the CAFE menu🍕and the résumés", "Résumé du Café, ready at noon"]);
    let (_, page) = search(&alice, "cafe", &[]).await;
    assert_eq!(page["results"][1]["highlights"], json!([[10, 14]]));
    // An emoji glued to words separates them.
    assert_eq!(bodies(&alice, "menu", &[]).await, vec!["I'll bring the CAFE menu🍕and the résumés"]);
    // Phrases match in order only.
    let (_, page) = search(&alice, "\"du cafe\"", &[]).await;
    assert_eq!(page["results"][0]["highlights"], json!([[7, 14]]), "{page}");
    assert!(bodies(&alice, "\"cafe du\"", &[]).await.is_empty());
    // Chinese and Japanese by bigrams, highlighted in code points; URLs are words.
    let (_, page) = search(&alice, "東京", &[]).await;
    assert_eq!(page["results"][0]["message"]["body"], "東京都に行きます https://example.com/lunch?at=noon", "{page}");
    assert_eq!(page["results"][0]["highlights"], json!([[0, 2]]));
    assert_eq!(bodies(&alice, "noon", &[]).await.len(), 2);
    assert_eq!(bodies(&alice, "example.com", &[]).await.len(), 1);
    // Every word must match.
    assert_eq!(bodies(&alice, "cafe noon", &[]).await, vec!["Résumé du Café, ready at noon"]);

    // One conversation, or all of the caller's.
    assert_eq!(bodies(&alice, "caf*", &[("conversationId", &dm)]).await, vec!["cafeteria plans"]);
    // from: a username (with or without @); an unknown one finds nothing.
    assert_eq!(bodies(&alice, "from:bob cafe", &[]).await, vec!["I'll bring the CAFE menu🍕and the résumés"]);
    assert_eq!(bodies(&alice, "from:@bob caf*", &[]).await.len(), 2);
    let (status, page) = search(&alice, "from:nobody cafe", &[]).await;
    assert_eq!((status, page), (200, json!({"results": [], "nextCursor": null})));
    // before: and after: are UTC days and exclude the day named.
    assert_eq!(bodies(&alice, &format!("cafe after:{}", day(-1)), &[]).await.len(), 2);
    assert!(bodies(&alice, &format!("cafe after:{}", day(0)), &[]).await.is_empty());
    assert!(bodies(&alice, &format!("cafe before:{}", day(0)), &[]).await.is_empty());
    assert_eq!(bodies(&alice, &format!("cafe before:{}", day(1)), &[]).await.len(), 2);
    // has:attachment.
    let media_id = crate::media::upload(&alice, &group, "menu.txt", "text/plain", b"soup of the day\n").await;
    assert_eq!(crate::media::decided(&alice, &media_id).await["status"], "ready");
    let (status, sent) = alice
        .post("/v1/messages", json!({"conversationId": group, "clientMsgId": "a3", "body": "the cafe menu", "attachments": [{"mediaId": media_id}]}))
        .await;
    assert_eq!(status, 201, "{sent}");
    until_found(&alice, "cafe has:attachment", &[], &["the cafe menu"]).await;
    assert_eq!(bodies(&bob, "has:attachment", &[]).await, vec!["the cafe menu"], "a query of modifiers only");

    // Refusals, in the API's format.
    for q in ["", "   ", "color:red", "before:2026-13-01", "\"\""] {
        assert_error(&search(&alice, q, &[]).await, 400, "bad_request");
    }
    assert!(assert_error(&alice.get("/v1/search").await, 400, "bad_request").contains("`q`"));
    assert_error(&search(&alice, "cafe", &[("limit", "0")]).await, 400, "bad_request");
    assert_error(&search(&alice, "cafe", &[("limit", "101")]).await, 400, "bad_request");
    assert!(assert_error(&search(&alice, "cafe", &[("cursor", "not-a-cursor")]).await, 400, "bad_request").contains("`cursor`"));
    assert_error(&search(&alice, "cafe", &[("conversationId", "c_unknown")]).await, 404, "not_found");
    let carol = server.user("carol").await;
    assert_error(&search(&carol, "cafe", &[("conversationId", &group)]).await, 403, "forbidden");
    assert!(bodies(&carol, "cafe", &[]).await.is_empty(), "a stranger finds nothing");
    assert_error(&search(&server.client(), "cafe", &[]).await, 401, "unauthenticated");
}

async fn pages_follow_the_cursor_newest_first_without_repeats(engine: Engine) {
    let (server, _data) = start(&engine).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let other = bob.conversation("group", &[&alice]).await;
    for index in 0..25 {
        let conversation = if index % 3 == 0 { &other } else { &group };
        alice.say(conversation, &format!("p{index}"), &format!("ping number {index}")).await;
    }
    alice.say(&group, "quiet", "quiet now").await;
    until_found(&alice, "quiet", &[], &["quiet now"]).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut more = vec![("limit", "10")];
        if let Some(cursor) = &cursor {
            more.push(("cursor", cursor.as_str()));
        }
        let (status, page) = search(&alice, "ping", &more).await;
        assert_eq!(status, 200, "{page}");
        let results = page["results"].as_array().unwrap();
        pages.push(results.len());
        seen.extend(results.iter().map(|result| result["message"]["body"].as_str().unwrap().to_string()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, vec![10, 10, 5]);
    let expected: Vec<String> = (0..25).rev().map(|index| format!("ping number {index}")).collect();
    assert_eq!(seen, expected, "newest first, every message once");
}

async fn only_what_the_caller_may_read_now_is_found(engine: Engine) {
    let (server, _data) = start(&engine).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let dave = server.user("dave").await;
    let member = |conversation: &str, user: &Client| format!("/v1/conversations/{conversation}/members/{}", user.user_id);
    let add = |conversation: &str| format!("/v1/conversations/{conversation}/members");

    // Shared history: a member reads all of it, and nothing once gone.
    let (status, created) =
        alice.post("/v1/conversations", json!({"type": "group", "memberIds": [bob.user_id, carol.user_id], "historyVisibility": "shared"})).await;
    assert_eq!(status, 201, "{created}");
    let shared = created["conversationId"].as_str().unwrap().to_string();
    alice.say(&shared, "s1", "otter one").await;
    assert_eq!(alice.delete(&member(&shared, &carol)).await.0, 204, "carol is removed");
    assert_eq!(bob.delete(&member(&shared, &bob)).await.0, 204, "bob leaves");
    alice.say(&shared, "s2", "otter two").await;
    until_found(&alice, "otter", &[], &["otter two", "otter one"]).await;
    assert!(bodies(&carol, "otter", &[]).await.is_empty(), "removed: nothing");
    assert!(bodies(&bob, "otter", &[]).await.is_empty(), "left: nothing");
    assert_error(&search(&bob, "otter", &[("conversationId", &shared)]).await, 403, "forbidden");
    assert_eq!(alice.post(&add(&shared), json!({"userIds": [carol.user_id]})).await.0, 204);
    assert_eq!(bodies(&carol, "otter", &[]).await, vec!["otter two", "otter one"], "re-added to shared history: all of it");

    // Joined history: only from the current membership on.
    let (status, created) = alice.post("/v1/conversations", json!({"type": "group", "memberIds": [bob.user_id], "historyVisibility": "joined"})).await;
    assert_eq!(status, 201, "{created}");
    let joined = created["conversationId"].as_str().unwrap().to_string();
    alice.say(&joined, "j1", "heron before dave").await;
    assert_eq!(alice.post(&add(&joined), json!({"userIds": [dave.user_id]})).await.0, 204);
    alice.say(&joined, "j2", "heron with dave").await;
    until_found(&dave, "heron", &[], &["heron with dave"]).await;
    assert_eq!(alice.delete(&member(&joined, &dave)).await.0, 204);
    alice.say(&joined, "j3", "heron while dave is away").await;
    until_found(&bob, "heron", &[], &["heron while dave is away", "heron with dave", "heron before dave"]).await;
    assert!(bodies(&dave, "heron", &[]).await.is_empty(), "removed: nothing");
    assert_eq!(alice.post(&add(&joined), json!({"userIds": [dave.user_id]})).await.0, 204);
    alice.say(&joined, "j4", "heron after dave is back").await;
    until_found(&bob, "heron", &[("limit", "1")], &["heron after dave is back"]).await;
    assert_eq!(bodies(&dave, "heron", &[]).await, vec!["heron after dave is back"], "nothing from the time away (nor before)");
    assert_eq!(bodies(&dave, "heron", &[("conversationId", &joined)]).await, vec!["heron after dave is back"]);
    // The same rule as the history page.
    let history: Vec<Value> = dave.all_messages(&joined).await;
    assert_eq!(history.iter().filter(|message| message["body"].as_str().unwrap().contains("heron")).count(), 1);

    // Blocks do not hide messages.
    assert_eq!(alice.client_put(&format!("/v1/me/blocks/{}", bob.user_id)).await.0, 204);
    bob.say(&joined, "bb", "heron from a blocked bob").await;
    until_found(&alice, "blocked", &[], &["heron from a blocked bob"]).await;
}

async fn edits_are_found_by_their_current_text_and_deletes_never(engine: Engine) {
    let (server, _data) = start(&engine).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    let sent = alice.say(&group, "a1", "original walrus").await;
    let message_id = sent["messageId"].as_str().unwrap().to_string();
    until_found(&bob, "walrus", &[], &["original walrus"]).await;

    let (status, edited) = alice.patch(&format!("/v1/messages/{message_id}"), json!({"body": "updated narwhal"})).await;
    assert_eq!(status, 200, "{edited}");
    until_found(&bob, "narwhal", &[], &["updated narwhal"]).await;
    assert!(bodies(&bob, "walrus", &[]).await.is_empty(), "the old text is not found");
    let (_, page) = search(&bob, "narwhal", &[]).await;
    assert_eq!(page["results"][0]["message"]["edited"], true);
    assert_eq!(page["results"][0]["highlights"], json!([[8, 15]]));

    assert_eq!(alice.delete(&format!("/v1/messages/{message_id}")).await.0, 204);
    until_found(&bob, "narwhal", &[], &[]).await;
    alice.say(&group, "a2", "a narwhal again").await;
    until_found(&bob, "narwhal", &[], &["a narwhal again"]).await;
}

/// Whether any file under `dir` holds `needle`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            return files_contain(&path, needle);
        }
        std::fs::read(&path).unwrap_or_default().windows(needle.len()).any(|window| window == needle)
    })
}

async fn erasure_and_retention_take_the_text_out_of_the_index_files(engine: Engine) {
    let (server, _data) = start(&engine).await;
    let admin = server.user("admin").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    assert_eq!(admin.post("/v1/admin/roles", json!({"userId": carol.user_id, "role": "compliance"})).await.0, 204);
    let group = admin.conversation("group", &[&bob]).await;
    let other = admin.conversation("group", &[&bob]).await;
    bob.say(&group, "b1", "the zebrafishsecret plan").await;
    admin.say(&group, "a1", "zebrafish are fine").await;
    admin.say(&other, "a2", "quokkaretained notes").await;
    until_found(&admin, "quokkaretained", &[], &["quokkaretained notes"]).await;
    until_found(&admin, "zebrafish*", &[], &["zebrafish are fine", "the zebrafishsecret plan"]).await;
    let data_dir = server.data_dir.clone();
    assert!(
        index_holds(&engine, &data_dir, "zebrafishsecret") && index_holds(&engine, &data_dir, "quokkaretained"),
        "the positive control: the words are in the index's files"
    );

    let (status, erased) = carol.post("/v1/admin/erasure", json!({"userId": bob.user_id})).await;
    assert_eq!(status, 200, "{erased}");
    // Not only hidden: gone from the files when the erasure answers.
    assert!(bodies(&admin, "zebrafishsecret", &[]).await.is_empty());
    assert!(!index_holds(&engine, &data_dir, "zebrafishsecret"), "the erased word is still in the index's files");
    assert!(index_holds(&engine, &data_dir, "zebrafish"), "what others wrote stays");
    if let Engine::Embedded = engine {
        assert!(!files_contain(&data_dir.join("search"), b"zebrafishsecret"));
    }
    assert_eq!(bodies(&admin, "zebrafish", &[]).await, vec!["zebrafish are fine"]);

    // A cut after every message so far, and not in the future.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = confab_schemas::ids::now_ms();
    let (status, deleted) = carol.post("/v1/admin/retention", json!({"conversationId": other, "before": cut})).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(bodies(&admin, "quokkaretained", &[]).await.is_empty());
    assert!(!index_holds(&engine, &data_dir, "quokkaretained"), "retention leaves the files too");
}

async fn the_index_continues_after_a_restart_and_rebuilds_when_lost(engine: Engine) {
    let temporary = tempfile::tempdir().unwrap();
    let mut config = config_for(&engine, temporary.path());
    // Small segments removed as soon as every reader is past them, so the
    // log no longer holds the first messages when the index is lost.
    config.log.partitions = 1;
    config.log.segment_max_bytes = 2_048;
    config.log.retention_max_bytes = Some(1);
    config.log.retention_check_interval_ms = 50;
    config.state.checkpoint_interval_ms = 100;
    let mut server = TestServer::start_with(config.clone()).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let group = alice.conversation("group", &[&bob]).await;
    alice.say(&group, "a1", "pelican early").await;
    until_found(&alice, "pelican", &[], &["pelican early"]).await;

    // A restart continues from where the index stopped.
    server.server.take().unwrap().shutdown().await.unwrap();
    let mut server_again = TestServer::start_with(config.clone()).await;
    let alice = alice.with_base(&server_again.base);
    assert_eq!(bodies(&alice, "pelican", &[]).await, vec!["pelican early"]);
    alice.say(&group, "a2", "pelican after the restart").await;
    until_found(&alice, "pelican", &[], &["pelican after the restart", "pelican early"]).await;

    // Enough traffic that the log's first segment is removed.
    for index in 0..60 {
        alice.say(&group, &format!("f{index}"), &format!("filler message number {index} {}", "x".repeat(60))).await;
    }
    let first_segment = temporary.path().join("log").join("p-0000").join(format!("{:020}.seg", 0));
    for _ in 0..400 {
        if !first_segment.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!first_segment.exists(), "retention did not remove the first segment");
    server_again.server.take().unwrap().shutdown().await.unwrap();

    // The index is lost: it is rebuilt from the state (the log lost the start).
    lose_index(&engine, temporary.path()).await;
    server = TestServer::start_with(config).await;
    let alice = alice.with_base(&server.base);
    assert_eq!(bodies(&alice, "pelican", &[]).await, vec!["pelican after the restart", "pelican early"]);
    assert_eq!(bodies(&alice, "filler", &[("limit", "100")]).await.len(), 60);
    alice.say(&group, "a3", "pelican after the rebuild").await;
    until_found(&alice, "pelican", &[("limit", "1")], &["pelican after the rebuild"]).await;
    server.stop().await;
}
