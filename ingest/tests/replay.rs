//! Replayed equals served, with the store: random commands run against a
//! state with caches of one entry (so every read goes through eviction and
//! reload), restarted now and then from its store plus the log after its
//! checkpoint, sometimes after a crash that kept only part of what was not
//! persisted. At the end, everything it serves equals what a fresh state
//! rebuilt from the whole log serves.

use std::sync::Arc;

use confab_ingest::store::fjall_store::{FjallOptions, FjallStore};
use confab_ingest::store::memory::MemoryStore;
use confab_ingest::store::Store;
use confab_ingest::{Caller, Ingest, Limits, NewConversation, NewMessage, StateConfig};
use confab_log::{FileLog, Log, LogConfig};
use confab_schemas::events::{ConversationType, DeliveryReceipt, LogEvent};
use proptest::prelude::*;

const USERS: usize = 4;
const CONVERSATIONS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Send {
        user: usize,
        conversation: usize,
        key: u8,
    },
    Edit {
        user: usize,
        nth: usize,
    },
    Delete {
        user: usize,
        nth: usize,
    },
    Add {
        by: usize,
        conversation: usize,
        user: usize,
    },
    Remove {
        by: usize,
        conversation: usize,
        user: usize,
    },
    Read {
        user: usize,
        conversation: usize,
        seq: u64,
    },
    Delivered {
        user: usize,
        conversation: usize,
        seq: u64,
    },
    Checkpoint,
    /// Restart; for the memory store, a crash keeping this many unpersisted batches.
    Restart {
        kept: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let conversation = 0..CONVERSATIONS;
    prop_oneof![
        8 => (user.clone(), conversation.clone(), 0u8..12).prop_map(|(user, conversation, key)| Op::Send { user, conversation, key }),
        1 => (user.clone(), 0usize..64).prop_map(|(user, nth)| Op::Edit { user, nth }),
        1 => (user.clone(), 0usize..64).prop_map(|(user, nth)| Op::Delete { user, nth }),
        1 => (user.clone(), conversation.clone(), user.clone()).prop_map(|(by, conversation, user)| Op::Add { by, conversation, user }),
        1 => (user.clone(), conversation.clone(), user.clone()).prop_map(|(by, conversation, user)| Op::Remove { by, conversation, user }),
        2 => (user.clone(), conversation.clone(), 1u64..20).prop_map(|(user, conversation, seq)| Op::Read { user, conversation, seq }),
        2 => (user.clone(), conversation.clone(), 1u64..20).prop_map(|(user, conversation, seq)| Op::Delivered { user, conversation, seq }),
        1 => Just(Op::Checkpoint),
        1 => (0usize..6).prop_map(|kept| Op::Restart { kept }),
    ]
}

/// The first observation that differs, both ways, for a readable failure.
fn first_difference(left: &[String], right: &[String]) -> String {
    match left.iter().zip(right).position(|(left, right)| left != right) {
        Some(index) => format!("served:   {}\nreplayed: {}", left[index], right[index]),
        None => format!("{} observations against {}", left.len(), right.len()),
    }
}

fn tiny_caches() -> StateConfig {
    StateConfig {
        conversations_cached_max: 1,
        recent_messages_per_conversation: 1,
        users_cached_max: 1,
        devices_cached_max: 1,
        cache_max_bytes: 1024 * 1024,
        memtable_max_bytes: 1024 * 1024,
        ..StateConfig::default()
    }
}

fn log_at(dir: &std::path::Path) -> Arc<FileLog> {
    let config = LogConfig { partitions: 2, segment_max_bytes: 4_096, ..LogConfig::default() };
    Arc::new(FileLog::open(dir, config).unwrap())
}

/// What every user sees, as text (IDs come from the log, so two states
/// built from one log answer identically).
fn observe(ingest: &Ingest, callers: &[Caller], conversations: &[String]) -> Vec<String> {
    let mut seen = Vec::new();
    for caller in callers {
        seen.push(format!("{:?}", ingest.list_conversations(caller).unwrap()));
        for limit in [1000, 3] {
            let mut cursor: Option<String> = None;
            let mut events = Vec::new();
            loop {
                let page = ingest.sync(caller, cursor.as_deref(), limit).unwrap();
                events.extend(page.events.into_iter().map(|event| format!("{:?}", event.event)));
                cursor = Some(page.next_cursor);
                if !page.has_more {
                    break;
                }
            }
            seen.push(events.join("\n"));
        }
        for conversation_id in conversations {
            seen.push(format!("{:?}", ingest.history(caller, conversation_id, None, 200).map_err(|error| error.to_string())));
            seen.push(format!("{:?}", ingest.members(caller, conversation_id).map_err(|error| error.to_string())));
        }
    }
    seen
}

struct World {
    callers: Vec<Caller>,
    conversations: Vec<String>,
    sent: Vec<(usize, String)>,
}

async fn prelude(ingest: &Ingest) -> World {
    let mut callers = Vec::new();
    for index in 0..USERS {
        let user = ingest.create_user(&format!("user{index}"), None, "hash".into()).await.unwrap();
        let device_id = ingest.create_device(&user.user_id, None, None).await.unwrap();
        callers.push(Caller { user_id: user.user_id.clone(), device_id });
    }
    let ids: Vec<String> = callers.iter().map(|caller| caller.user_id.clone()).collect();
    let kinds = [
        (ConversationType::Group, vec![ids[1].clone(), ids[2].clone()]),
        (ConversationType::Dm, vec![ids[1].clone()]),
        (ConversationType::Channel, ids[1..].to_vec()),
    ];
    let mut conversations = Vec::new();
    for (conversation_type, member_ids) in kinds {
        let request = NewConversation { conversation_type, member_ids, title: None, history_visibility: None };
        conversations.push(ingest.create_conversation(&callers[0], request).await.unwrap().0.conversation_id);
    }
    World { callers, conversations, sent: Vec::new() }
}

async fn run(ingest: &Ingest, world: &mut World, op: &Op) {
    match op {
        Op::Send { user, conversation, key } => {
            let request = NewMessage {
                conversation_id: world.conversations[*conversation].clone(),
                client_msg_id: format!("k{key}"),
                body: format!("from {user} key {key}"),
                attachments: Vec::new(),
                trace: None,
            };
            if let Ok((message, true)) = ingest.send_message(&world.callers[*user], request).await {
                world.sent.push((*user, message.message_id));
            }
        }
        Op::Edit { user, nth } | Op::Delete { user, nth } if !world.sent.is_empty() => {
            let (_, message_id) = world.sent[nth % world.sent.len()].clone();
            let caller = &world.callers[*user];
            let _ = match op {
                Op::Edit { .. } => ingest.edit_message(caller, &message_id, format!("edited by {user}")).await.map(|_| ()),
                _ => ingest.delete_message(caller, &message_id).await.map(|_| ()),
            };
        }
        Op::Edit { .. } | Op::Delete { .. } => {}
        Op::Add { by, conversation, user } => {
            let _ = ingest.add_members(&world.callers[*by], &world.conversations[*conversation], vec![world.callers[*user].user_id.clone()]).await;
        }
        Op::Remove { by, conversation, user } => {
            let _ = ingest.remove_member(&world.callers[*by], &world.conversations[*conversation], &world.callers[*user].user_id).await;
        }
        Op::Read { user, conversation, seq } => {
            let _ = ingest.mark_read_seq(&world.callers[*user], &world.conversations[*conversation], *seq).await;
        }
        Op::Delivered { user, conversation, seq } => {
            let caller = &world.callers[*user];
            if ingest.check_receipt(caller, &world.conversations[*conversation], *seq).is_ok() {
                let receipt = DeliveryReceipt { user_id: caller.user_id.clone(), device_id: caller.device_id.clone(), seq: *seq };
                ingest.record_delivered(&world.conversations[*conversation], vec![receipt]).await.unwrap();
            }
        }
        Op::Checkpoint => ingest.checkpoint().unwrap(),
        Op::Restart { .. } => unreachable!("restarts are run by the caller"),
    }
}

fn served_history(log: &Arc<FileLog>, world: &World) -> Vec<confab_schemas::api::Message> {
    rebuilt(log).history(&world.callers[0], &world.conversations[1], None, 200).unwrap().0
}

fn served_last_seq(history: &[confab_schemas::api::Message], _conversation: usize) -> u64 {
    history.last().map_or(0, |message| message.seq)
}

/// A fresh state from the whole log, with default caches and a new store.
fn rebuilt(log: &Arc<FileLog>) -> Ingest {
    Ingest::open(log.clone(), Arc::new(MemoryStore::new()), Limits::default(), StateConfig::default()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn served_after_crashes_and_evictions_equals_replayed(ops in proptest::collection::vec(op(), 1..80)) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = log_at(dir.path());
            let mut store = Arc::new(MemoryStore::new());
            let open = |store: &Arc<MemoryStore>| Ingest::open(log.clone(), store.clone() as Arc<dyn Store>, Limits::default(), tiny_caches()).unwrap();
            let mut ingest = open(&store);
            let mut world = prelude(&ingest).await;
            for op in &ops {
                if let Op::Restart { kept } = op {
                    drop(ingest);
                    store = Arc::new(store.crash(*kept));
                    ingest = open(&store);
                } else {
                    run(&ingest, &mut world, op).await;
                }
            }
            let served = observe(&ingest, &world.callers, &world.conversations);
            let replayed = observe(&rebuilt(&log), &world.callers, &world.conversations);
            prop_assert!(served == replayed, "served and replayed differ:\n{}", first_difference(&served, &replayed));
            Ok(())
        })?;
    }
}

#[test]
fn the_fjall_store_restarts_to_what_it_served_and_keeps_idempotency() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = log_at(&dir.path().join("log"));
        let store_dir = dir.path().join("state");
        let options = FjallOptions { cache_max_bytes: 1024 * 1024, memtable_max_bytes: 1024 * 1024, ..FjallOptions::default() };
        let open = || {
            let store = FjallStore::open(&store_dir, options.clone()).unwrap();
            Ingest::open_with_report(log.clone(), Arc::new(store), Limits::default(), tiny_caches()).unwrap()
        };
        let (ingest, _) = open();
        let mut world = prelude(&ingest).await;
        for index in 0..300u64 {
            let op = Op::Send { user: (index % 2) as usize, conversation: (index % 3) as usize, key: (index % 200) as u8 };
            run(&ingest, &mut world, &op).await;
            if index % 40 == 0 {
                run(&ingest, &mut world, &Op::Read { user: 1, conversation: 0, seq: index / 6 + 1 }).await;
            }
        }
        ingest.checkpoint().unwrap();
        for index in 0..20u64 {
            // After the checkpoint: these are replayed from the log at the next start.
            run(&ingest, &mut world, &Op::Send { user: 1, conversation: 1, key: 200 + index as u8 % 50 }).await;
        }
        let served = observe(&ingest, &world.callers, &world.conversations);
        drop(ingest);
        let (reopened, report) = open();
        assert!(report.replayed < 200, "replayed {} records", report.replayed);
        assert!(observe(&reopened, &world.callers, &world.conversations) == served, "the reopened store serves what was served");
        assert!(observe(&rebuilt(&log), &world.callers, &world.conversations) == served, "a full replay serves what was served");
        drop(reopened);
        // A record the store never saw (appended while it was down, as a
        // crash between the log's fsync and the round's batch leaves it) is
        // replayed at the next start, and only it.
        let last_seq = served_last_seq(&served_history(&log, &world), 1);
        let missed = LogEvent::MessageCreated {
            message_id: "m_replayedafterthecheck".into(),
            conversation_id: world.conversations[1].clone(),
            seq: last_seq + 1,
            sender_id: world.callers[0].user_id.clone(),
            device_id: world.callers[0].device_id.clone(),
            client_msg_id: "written-while-down".into(),
            body: "replayed".into(),
            attachments: Vec::new(),
            ts: 1,
            mentions: Default::default(),
            trace: None,
        };
        let partition = (confab_schemas::ids::stable_hash(&world.conversations[1]) % log.partition_count() as u64) as u32;
        log.append(partition, vec![missed.encode()]).unwrap().durable().await.unwrap();
        let (reopened, report) = open();
        assert_eq!(report.replayed, 1, "only the record after the store's applied offset is replayed");
        let (history, _) = reopened.history(&world.callers[0], &world.conversations[1], None, 1).unwrap();
        assert_eq!((history[0].seq, history[0].body.as_str()), (last_seq + 1, "replayed"));
        // A retry of a key sent before the restart returns the original.
        let retry = NewMessage {
            conversation_id: world.conversations[1].clone(),
            client_msg_id: "k1".into(),
            body: "again".into(),
            attachments: Vec::new(),
            trace: None,
        };
        let (original, created) = reopened.send_message(&world.callers[1], retry).await.unwrap();
        assert!(!created);
        assert_eq!(original.body, "from 1 key 1");
        // The same key in another conversation is refused, naming the field.
        let elsewhere =
            NewMessage { conversation_id: world.conversations[0].clone(), client_msg_id: "k1".into(), body: "x".into(), attachments: Vec::new(), trace: None };
        let error = reopened.send_message(&world.callers[1], elsewhere).await.unwrap_err();
        assert_eq!(error.code(), confab_schemas::ErrorCode::Conflict);
        assert!(error.to_string().starts_with("`clientMsgId` `k1` was already used for a message in conversation"), "{error}");
        for partition in 0..log.partition_count() {
            let committed = log.committed_offset(confab_ingest::STATE_CONSUMER, partition).unwrap().unwrap();
            assert_eq!(committed, log.durable_end(partition).unwrap(), "the start checkpoints what it replayed");
        }
    });
}
