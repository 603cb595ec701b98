//! `confab bench state`: the state at scale. Loads millions of messages with
//! the traffic that comes with them (70% in dms, 30% in groups of 20, and the
//! delivered receipts and read cursors clients send), then measures at each
//! size: the server's resident memory, its start-up (process start to
//! `/healthz`, and to a first accepted send) after a clean stop and after
//! `kill -9`, history pages from a cold and a warm cache, and durable sends
//! at many senders.
//!
//! The load is written straight into the server's log while no server runs,
//! as the write path and the receipts pipeline would have appended it: the
//! same events, with the seqs, memberships and dm pairs the apply step
//! expects. The first start then applies all of it exactly as a start after a
//! long outage would, which measures the apply rate, and leaves the store as
//! years of real traffic would. Sending ten million messages over HTTP would
//! take hours on a small machine and measure the gateway, not the state.
//!
//! Each step tops the data up to its count. `bench-state.json` in the folder
//! records what was loaded (users, partitions, the generator's seed, the
//! messages and records so far), so a later step or a rerun with the same
//! `--dir` goes on from there instead of loading again. The generator keeps
//! one counter per conversation and nothing else: which conversation a
//! message goes to is a hash of its index, so the counters of a top-up are
//! recomputed from the count alone.
//!
//! The server runs the shipped pipelines but the history sink (its catching
//! up on millions of records would be measured instead of the state); the
//! other consumers of the log are moved past the load, as a server that had
//! delivered it long ago would have them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use confab_log::{AppendTicket, FileLog, Log, LogConfig};
use confab_schemas::events::{ConversationType, DeliveryReceipt, LogEvent};
use confab_schemas::ids::{now_ms, stable_hash};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{summarize, BenchServer, RawHttp, Summary};

pub struct StateOptions {
    pub dir: Option<PathBuf>,
    pub steps: Vec<u64>,
    pub users: u64,
    pub body_bytes: usize,
    pub senders: usize,
    pub seconds: u64,
    pub history_pages: usize,
    pub partitions: u32,
}

/// Every loaded user's password (they all share one hash).
const PASSWORD: &str = "bench-password";
/// Cheap argon2 parameters, for the loaded users' hash and the server's
/// config: the benchmark logs in as thousands of users.
pub(crate) const PASSWORD_HASH_MEMORY_KIB: u32 = 64;
pub(crate) const PASSWORD_HASH_ITERATIONS: u32 = 1;

/// The share of messages sent in dms; the rest go to groups.
const DM_PERCENT: u64 = 70;
const GROUP_SIZE: u64 = 20;
/// Each user opens this many dms (and is invited to about as many).
const DMS_PER_USER: u64 = 5;
/// Groups each user is a member of.
const GROUPS_PER_USER: u64 = 6;
/// Members online when a message arrives: their devices' delivered receipts
/// make one record per message (the receipts pipeline coalesces them).
const DELIVERED_PERCENT: u64 = 90;
/// A member reads up to the latest message after this many messages on
/// average (so one read cursor covers several messages).
const DM_READ_EVERY: u64 = 3;
const GROUP_READ_EVERY: u64 = 8;
/// The conversation of the first sends after a start: a group the generator
/// never writes to again, so the server's seqs there never meet the
/// generator's. It is loaded once with this many messages.
const FIRST_SEND_GROUP_MESSAGES: u64 = 100;
/// The user who makes the first sends (a member of that group).
const FIRST_SENDER: u64 = 0;

/// Records of one append, at most.
const BATCH_RECORDS: usize = 10_000;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Appended but not yet durable, at most: below the log's `pending_max_bytes`.
const PENDING_BYTES_MAX: usize = 32 * 1024 * 1024;
const PROGRESS_EVERY_MESSAGES: u64 = 1_000_000;

const LOGINS_IN_FLIGHT: usize = 16;
/// A stop takes a last checkpoint; a start may replay millions of records.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
const HEALTH_POLL: Duration = Duration::from_millis(2);

const STATE_FILE: &str = "bench-state.json";
const STATE_FILE_VERSION: u32 = 1;
/// The generator's seed: the same data for the same options, run after run.
const SEED: u64 = 0x00c0_fab5_7a7e_0001;

const WORDS: [&str; 24] = [
    "launch", "budget", "review", "meeting", "lunch", "deploy", "ticket", "invoice", "client", "draft", "deadline", "report", "call", "merge", "plan", "ship",
    "today", "tomorrow", "thanks", "sounds", "good", "see", "you", "later",
];

pub async fn run(options: StateOptions) -> anyhow::Result<()> {
    check_options(&options)?;
    let temporary = options.dir.is_none();
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => super::tempdir_in_target()?,
    };
    let layout = Layout::prepare(&dir, options.partitions)?;
    let mix = Mix::new(options.users, SEED);
    println!(
        "state benchmark: steps {:?} messages, {} users ({} dms, {} groups of {GROUP_SIZE}), {}-byte bodies, {} partition(s), in {}",
        options.steps,
        options.users,
        mix.dms(),
        mix.groups(),
        options.body_bytes,
        options.partitions,
        dir.display()
    );
    let mut reports = Vec::new();
    for (index, &target) in options.steps.iter().enumerate() {
        println!("\n== step {} of {}: {target} messages ==", index + 1, options.steps.len());
        let load = load_to(&layout, &mix, &options, target).await?;
        let report = measure(&layout, &mix, &options, load).await?;
        print_step(&report);
        reports.push(report);
    }
    print_summary(&reports);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn check_options(options: &StateOptions) -> anyhow::Result<()> {
    if options.steps.is_empty() {
        bail!("`--steps` is empty: give message counts such as 1000000,10000000");
    }
    if options.steps[0] == 0 || options.steps.windows(2).any(|pair| pair[0] >= pair[1]) {
        bail!("`--steps` {:?} must ascend from 1 or more: each step tops the data up to its count", options.steps);
    }
    if options.users < GROUP_SIZE * 10 {
        bail!("`--users` {} is too few: use at least {}", options.users, GROUP_SIZE * 10);
    }
    if options.users > u64::from(u32::MAX) {
        bail!("`--users` {} is too many: use at most {}", options.users, u32::MAX);
    }
    if !(1..=16_384).contains(&options.body_bytes) {
        bail!("`--body-bytes` {} is out of range: a body is 1 to 16384 bytes", options.body_bytes);
    }
    if options.senders == 0 || options.history_pages == 0 || options.partitions == 0 {
        bail!("`--senders`, `--history-pages` and `--partitions` must be at least 1");
    }
    Ok(())
}

/// Where everything of one benchmark folder is.
struct Layout {
    /// The server's `--data-dir` (its `log/` and `state/`).
    data_dir: PathBuf,
    config_path: PathBuf,
    state_file: PathBuf,
}

impl Layout {
    fn prepare(dir: &Path, partitions: u32) -> anyhow::Result<Layout> {
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).with_context(|| format!("could not create `{}`", data_dir.display()))?;
        let pipelines = dir.join("pipelines");
        super::write_pipelines_without_history(&pipelines)?;
        let top_level = format!("pipelines_dir = {:?}\n", pipelines.to_string_lossy());
        let password_hash = format!("[gateway.password_hash]\nmemory_kib = {PASSWORD_HASH_MEMORY_KIB}\niterations = {PASSWORD_HASH_ITERATIONS}\n");
        let config_path = dir.join("confab.toml");
        std::fs::write(&config_path, super::bench_config(partitions, &top_level, &password_hash))?;
        Ok(Layout { data_dir, config_path, state_file: dir.join(STATE_FILE) })
    }
}

/// What has been loaded into a folder (`bench-state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Loaded {
    version: u32,
    users: u64,
    partitions: u32,
    seed: u64,
    /// Messages the generator wrote (the benchmark's own sends are not counted).
    messages: u64,
    /// Log records the generator wrote.
    records: u64,
    /// Set while a load runs: a load that did not finish left records the
    /// count does not cover, and topping up would repeat seqs.
    loading: bool,
}

impl Loaded {
    fn read(path: &Path) -> anyhow::Result<Option<Loaded>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("could not read `{}`", path.display())),
        };
        let loaded: Loaded = serde_json::from_str(&text).with_context(|| format!("`{}` is not a bench state file; choose another --dir", path.display()))?;
        if loaded.version != STATE_FILE_VERSION {
            bail!("`{}` has version {}, this benchmark writes {STATE_FILE_VERSION}; choose another --dir", path.display(), loaded.version);
        }
        Ok(Some(loaded))
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, path).with_context(|| format!("could not write `{}`", path.display()))
    }
}

/// The shape of the loaded data, a pure function of the users and the seed:
/// conversations `0..dms` are dms, then the groups, then the first-send
/// group; members and each message's conversation are computed, not kept.
struct Mix {
    users: u64,
    seed: u64,
    /// Per round of groups, a multiplier coprime to `users`: round `r` lays
    /// the users out in blocks of [`GROUP_SIZE`] in the order `x * m_r`, so
    /// each round holds every user once and the rounds' groups differ.
    group_multipliers: Vec<u64>,
}

impl Mix {
    fn new(users: u64, seed: u64) -> Mix {
        let group_multipliers = (0..GROUPS_PER_USER)
            .map(|round| {
                let mut multiplier = 1 + round * users / GROUPS_PER_USER;
                while gcd(multiplier, users) != 1 {
                    multiplier += 1;
                }
                multiplier
            })
            .collect();
        Mix { users, seed, group_multipliers }
    }

    fn dms(&self) -> u64 {
        self.users * DMS_PER_USER
    }

    fn groups(&self) -> u64 {
        (self.users / GROUP_SIZE) * GROUPS_PER_USER
    }

    /// Conversations that get the generator's messages.
    fn loaded_conversations(&self) -> u64 {
        self.dms() + self.groups()
    }

    fn first_send_group(&self) -> u64 {
        self.loaded_conversations()
    }

    fn is_dm(&self, conversation: u64) -> bool {
        conversation < self.dms()
    }

    /// The members of a conversation, its creator first.
    fn members(&self, conversation: u64, members: &mut Vec<u64>) {
        members.clear();
        if conversation < self.dms() {
            // Pairs (a, a + offset) with distinct offsets below users / 2:
            // no pair of users has two dms.
            let first = conversation % self.users;
            let round = conversation / self.users;
            let offset = 1 + round * (self.users / (2 * DMS_PER_USER));
            members.extend([first, (first + offset) % self.users]);
        } else if conversation == self.first_send_group() {
            members.extend(0..GROUP_SIZE);
        } else {
            let group = conversation - self.dms();
            let blocks = self.users / GROUP_SIZE;
            let multiplier = self.group_multipliers[(group / blocks) as usize];
            let base = (group % blocks) * GROUP_SIZE;
            members.extend((0..GROUP_SIZE).map(|slot| ((base + slot) * multiplier) % self.users));
        }
    }

    /// The conversation of the `index`th generated message.
    fn conversation_of(&self, index: u64) -> u64 {
        let hash = mix64(self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let pick = hash >> 8;
        if hash % 100 < DM_PERCENT {
            pick % self.dms()
        } else {
            self.dms() + pick % self.groups()
        }
    }

    /// Each loaded conversation's last seq after `messages` generated messages.
    fn seqs_after(&self, messages: u64) -> Vec<u32> {
        let mut seqs = vec![0u32; self.loaded_conversations() as usize];
        for index in 0..messages {
            seqs[self.conversation_of(index) as usize] += 1;
        }
        seqs
    }
}

fn gcd(mut first: u64, mut second: u64) -> u64 {
    while second != 0 {
        (first, second) = (second, first % second);
    }
    first
}

/// SplitMix64's finalizer: a well-mixed hash of a counter.
fn mix64(value: u64) -> u64 {
    let mut mixed = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

// IDs as long as real ones (a prefix and 20 characters).
fn user_id(user: u64) -> String {
    format!("u_bench{user:015}")
}

fn device_id(user: u64) -> String {
    format!("d_bench{user:015}")
}

fn username(user: u64) -> String {
    format!("loaded{user}")
}

fn conversation_id(conversation: u64) -> String {
    format!("c_bench{conversation:015}")
}

fn message_id(index: u64) -> String {
    format!("m_bench{index:015}")
}

/// A client's idempotency key: 32 hex characters, as a UUID without dashes.
fn client_msg_id(seed: u64, index: u64) -> String {
    format!("{:016x}{:016x}", mix64(seed ^ index), mix64(index))
}

fn fill_body(body: &mut String, bytes: usize, rng: &mut fastrand::Rng) {
    body.clear();
    while body.len() < bytes {
        if !body.is_empty() {
            body.push(' ');
        }
        body.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
    body.truncate(bytes);
}

/// What one step's load did.
struct LoadReport {
    /// Messages loaded in all, after the step's load.
    messages: u64,
    added_messages: u64,
    added_records: u64,
    seconds: f64,
}

/// Tops the folder up to `target` generated messages (nothing if it holds
/// them already), writing into the log while no server runs.
async fn load_to(layout: &Layout, mix: &Mix, options: &StateOptions, target: u64) -> anyhow::Result<LoadReport> {
    let loaded = Loaded::read(&layout.state_file)?;
    if let Some(loaded) = &loaded {
        if loaded.loading {
            bail!(
                "a load into `{}` did not finish, so the log holds messages the count does not cover; remove the folder and start again",
                layout.data_dir.display()
            );
        }
        if loaded.users != options.users || loaded.partitions != options.partitions || loaded.seed != mix.seed {
            bail!("`{}` was loaded with --users {} --partitions {}; use those or another --dir", layout.state_file.display(), loaded.users, loaded.partitions);
        }
        if loaded.messages >= target {
            println!("load: the folder holds {} loaded messages already: nothing to load", loaded.messages);
            return Ok(LoadReport { messages: loaded.messages, added_messages: 0, added_records: 0, seconds: 0.0 });
        }
    }
    let fresh = loaded.is_none();
    if fresh && layout.data_dir.join("log").exists() {
        bail!("`{}` holds a log but no {STATE_FILE}: it was not loaded by this benchmark; choose another --dir", layout.data_dir.display());
    }
    let mut state = loaded.unwrap_or(Loaded {
        version: STATE_FILE_VERSION,
        users: options.users,
        partitions: options.partitions,
        seed: mix.seed,
        messages: 0,
        records: 0,
        loading: false,
    });
    let _lock = lock_data_dir(&layout.data_dir)?;
    let log = FileLog::open(layout.data_dir.join("log"), LogConfig { partitions: options.partitions, ..LogConfig::default() })?;
    if log.partition_count() != options.partitions {
        let partitions = log.partition_count();
        bail!("the log in `{}` has {partitions} partitions, not {}; use --partitions {partitions}", layout.data_dir.display(), options.partitions);
    }
    hold_for_the_state(&log)?;
    let first = state.messages;
    state.loading = true;
    state.write(&layout.state_file)?;
    println!("load: {first} to {target} messages into the log");
    let started = Instant::now();
    let mut loader = Loader::new(&log);
    if fresh {
        load_setup(&mut loader, mix).await?;
    }
    let mut seqs = mix.seqs_after(first);
    load_messages(&mut loader, mix, first..target, options.body_bytes, &mut seqs, started).await?;
    let records = loader.finish().await?;
    deliver_everything(&log)?;
    log.close();
    let seconds = started.elapsed().as_secs_f64();
    state.messages = target;
    state.records += records;
    state.loading = false;
    state.write(&layout.state_file)?;
    let added = target - first;
    println!(
        "load: {added} messages, {records} records in {seconds:.1} s ({:.0} messages/s, {:.0} records/s)",
        added as f64 / seconds,
        records as f64 / seconds
    );
    Ok(LoadReport { messages: target, added_messages: added, added_records: records, seconds })
}

/// The lock the server takes: no server may run while the log is loaded.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("confab.lock");
    let file = File::create(&path).with_context(|| format!("could not create `{}`", path.display()))?;
    file.try_lock().map_err(|_| anyhow::anyhow!("`{}` is in use by a confab server; stop it first", data_dir.display()))?;
    Ok(file)
}

/// Registers the state as a consumer from the start of the log, as the
/// server's first start would: retention must not remove what it has not
/// applied yet, however large the load.
fn hold_for_the_state(log: &FileLog) -> anyhow::Result<()> {
    for partition in 0..log.partition_count() {
        log.register_consumer(confab_ingest::STATE_CONSUMER, partition, log.earliest(partition)?)?;
    }
    Ok(())
}

/// Moves every consumer but the state (the fanout) past the load, as if it
/// had delivered it long ago: the start measures the state, not a backlog.
fn deliver_everything(log: &FileLog) -> anyhow::Result<()> {
    for consumer in log.consumers()? {
        if consumer == confab_ingest::STATE_CONSUMER {
            continue;
        }
        for partition in 0..log.partition_count() {
            log.commit_offset(&consumer, partition, log.durable_end(partition)?)?;
        }
    }
    Ok(())
}

/// Appends events in large batches, each to its conversation's (or user's)
/// partition, with a bounded amount in flight.
pub(crate) struct Loader<'a> {
    log: &'a FileLog,
    batches: Vec<Vec<Vec<u8>>>,
    batch_bytes: Vec<usize>,
    pending: VecDeque<(AppendTicket, usize)>,
    pending_bytes: usize,
    records: u64,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(log: &'a FileLog) -> Loader<'a> {
        let partitions = log.partition_count() as usize;
        Loader { log, batches: vec![Vec::new(); partitions], batch_bytes: vec![0; partitions], pending: VecDeque::new(), pending_bytes: 0, records: 0 }
    }

    pub(crate) async fn push(&mut self, event: &LogEvent) -> anyhow::Result<()> {
        let partition = (stable_hash(event.partition_key()) % self.batches.len() as u64) as usize;
        let payload = event.encode();
        self.batch_bytes[partition] += payload.len();
        self.batches[partition].push(payload);
        self.records += 1;
        if self.batches[partition].len() >= BATCH_RECORDS || self.batch_bytes[partition] >= BATCH_BYTES {
            self.append(partition).await?;
        }
        Ok(())
    }

    async fn append(&mut self, partition: usize) -> anyhow::Result<()> {
        if self.batches[partition].is_empty() {
            return Ok(());
        }
        let payloads = std::mem::take(&mut self.batches[partition]);
        let bytes = std::mem::take(&mut self.batch_bytes[partition]);
        while self.pending_bytes + bytes > PENDING_BYTES_MAX {
            let Some((ticket, ticket_bytes)) = self.pending.pop_front() else { break };
            ticket.durable().await?;
            self.pending_bytes -= ticket_bytes;
        }
        self.pending.push_back((self.log.append(partition as u32, payloads)?, bytes));
        self.pending_bytes += bytes;
        Ok(())
    }

    /// Appends what is left and waits until all of it is durable.
    pub(crate) async fn finish(mut self) -> anyhow::Result<u64> {
        for partition in 0..self.batches.len() {
            self.append(partition).await?;
        }
        for (ticket, _) in self.pending.drain(..) {
            ticket.durable().await?;
        }
        Ok(self.records)
    }
}

/// Users with one device each, the conversations, and the first-send group
/// with its messages.
async fn load_setup(loader: &mut Loader<'_>, mix: &Mix) -> anyhow::Result<()> {
    let config = confab_gateway::auth::PasswordHashConfig { memory_kib: PASSWORD_HASH_MEMORY_KIB, iterations: PASSWORD_HASH_ITERATIONS };
    let password_hash =
        confab_gateway::auth::Passwords::new(&config).hash(PASSWORD).map_err(|error| anyhow::anyhow!("could not hash the bench password: {error}"))?;
    let ts = now_ms();
    for user in 0..mix.users {
        let created = LogEvent::UserCreated {
            user_id: user_id(user),
            username: username(user),
            display_name: Some(format!("Loaded User {user}")),
            password_hash: password_hash.clone(),
            roles: Vec::new(),
            ts,
        };
        loader.push(&created).await?;
        let session = LogEvent::SessionCreated {
            user_id: user_id(user),
            device_id: device_id(user),
            device_name: Some("phone".to_string()),
            platform: Some("ios".to_string()),
            ts,
        };
        loader.push(&session).await?;
    }
    let mut members = Vec::with_capacity(GROUP_SIZE as usize);
    for conversation in 0..=mix.first_send_group() {
        mix.members(conversation, &mut members);
        let (conversation_type, title) =
            if mix.is_dm(conversation) { (ConversationType::Dm, None) } else { (ConversationType::Group, Some(format!("Group {conversation}"))) };
        let created = LogEvent::ConversationCreated {
            conversation_id: conversation_id(conversation),
            conversation_type,
            title,
            creator_id: user_id(members[0]),
            member_ids: members[1..].iter().map(|&member| user_id(member)).collect(),
            ts,
            history_visibility: None,
        };
        loader.push(&created).await?;
    }
    mix.members(mix.first_send_group(), &mut members);
    for seq in 1..=FIRST_SEND_GROUP_MESSAGES {
        let sender = members[(seq % GROUP_SIZE) as usize];
        let message = LogEvent::MessageCreated {
            message_id: format!("m_benchfirst{seq:010}"),
            conversation_id: conversation_id(mix.first_send_group()),
            seq,
            sender_id: user_id(sender),
            device_id: device_id(sender),
            client_msg_id: format!("first-send-group-{seq}"),
            body: format!("message {seq} before the first sends"),
            attachments: Vec::new(),
            ts,
            mentions: Default::default(),
            trace: None,
        };
        loader.push(&message).await?;
    }
    Ok(())
}

/// Generates messages `range` with their receipts: after each message, one
/// delivered-receipts record for the members online (as the receipts
/// pipeline writes it), and a read cursor from each member who reads now.
async fn load_messages(
    loader: &mut Loader<'_>,
    mix: &Mix,
    range: std::ops::Range<u64>,
    body_bytes: usize,
    seqs: &mut [u32],
    started: Instant,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(mix.seed ^ mix64(range.start));
    let mut members = Vec::with_capacity(GROUP_SIZE as usize);
    let mut body = String::with_capacity(body_bytes + 16);
    let mut ts = now_ms();
    let (first, end) = (range.start, range.end);
    // A bar on a terminal; a line every million messages otherwise.
    let bar = crate::progress::bar(end - first, "load");
    for index in first..end {
        if index % 10_000 == 0 {
            ts = now_ms();
            bar.set_position(index - first);
        }
        let done = index - first;
        if bar.is_hidden() && done > 0 && done % PROGRESS_EVERY_MESSAGES == 0 {
            let seconds = started.elapsed().as_secs_f64();
            println!("  {done} of {} messages, {} records, {:.0} messages/s", end - first, loader.records, done as f64 / seconds);
        }
        let conversation = mix.conversation_of(index);
        mix.members(conversation, &mut members);
        seqs[conversation as usize] += 1;
        let seq = u64::from(seqs[conversation as usize]);
        let sender = members[rng.usize(..members.len())];
        fill_body(&mut body, body_bytes, &mut rng);
        let message = LogEvent::MessageCreated {
            message_id: message_id(index),
            conversation_id: conversation_id(conversation),
            seq,
            sender_id: user_id(sender),
            device_id: device_id(sender),
            client_msg_id: client_msg_id(mix.seed, index),
            body: body.clone(),
            attachments: Vec::new(),
            ts,
            mentions: Default::default(),
            trace: None,
        };
        loader.push(&message).await?;
        let receipts: Vec<DeliveryReceipt> = members
            .iter()
            .filter(|&&member| member != sender && rng.u64(..100) < DELIVERED_PERCENT)
            .map(|&member| DeliveryReceipt { user_id: user_id(member), device_id: device_id(member), seq })
            .collect();
        if !receipts.is_empty() {
            loader.push(&LogEvent::DeliveryReceipts { conversation_id: conversation_id(conversation), receipts, ts }).await?;
        }
        let read_every = if mix.is_dm(conversation) { DM_READ_EVERY } else { GROUP_READ_EVERY };
        for &member in &members {
            if member != sender && rng.u64(..read_every) == 0 {
                let read = LogEvent::ReadCursorMoved {
                    conversation_id: conversation_id(conversation),
                    user_id: user_id(member),
                    seq,
                    device_id: Some(device_id(member)),
                    ts,
                };
                loader.push(&read).await?;
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The server's memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    /// The high-water mark of the resident set (VmHWM).
    peak_kib: u64,
}

fn memory(server: &BenchServer) -> anyhow::Result<Memory> {
    Ok(Memory { rss_kib: server.rss_kib()?, peak_kib: server.status_kib("VmHWM:")? })
}

/// From process start: when it listened, answered `/healthz`, and (when
/// measured) accepted a send.
#[derive(Debug, Clone, Copy, Default)]
struct Startup {
    listening: Duration,
    healthy: Duration,
    first_send: Option<Duration>,
}

async fn start_server(layout: &Layout) -> anyhow::Result<(BenchServer, Startup)> {
    let server = super::start_bench_server_on(&layout.data_dir, &layout.config_path).await?;
    let listening = server.started.elapsed();
    let address = server.url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        if let Ok(mut connection) = RawHttp::connect(&address).await {
            if connection.get("/healthz", None).await.is_ok_and(|status| status == 200) {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the server listened but did not answer /healthz within {} s", HEALTHY_TIMEOUT.as_secs());
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
    let healthy = server.started.elapsed();
    Ok((server, Startup { listening, healthy, first_send: None }))
}

/// A send by a loaded user into one of their conversations; the time from
/// process start to its 201.
async fn first_send(server: &BenchServer, token: &str, conversation: &str) -> anyhow::Result<Duration> {
    let mut connection = RawHttp::connect(server.url.trim_start_matches("http://")).await?;
    let body = json!({"conversationId": conversation, "clientMsgId": format!("first-send-{:016x}", fastrand::u64(..)), "body": "back after a restart"});
    let status = connection.post("/v1/messages", token, &serde_json::to_vec(&body)?).await?;
    if status != 201 {
        bail!("the first send after a start answered {status}: {}", String::from_utf8_lossy(connection.body()));
    }
    Ok(server.started.elapsed())
}

/// Logs in as each user (a new device each), a few at a time; their tokens.
async fn log_in(base: &str, users: &[u64]) -> anyhow::Result<HashMap<u64, String>> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut tokens = HashMap::with_capacity(users.len());
    for chunk in users.chunks(LOGINS_IN_FLIGHT) {
        let mut logins = tokio::task::JoinSet::new();
        for &user in chunk {
            let (client, url) = (client.clone(), format!("{base}/v1/sessions"));
            logins.spawn(async move {
                let request = json!({"username": username(user), "password": PASSWORD, "deviceName": "bench", "platform": "bench"});
                let session = super::post(&client, &url, None, request).await?;
                let token = session["accessToken"].as_str().context("a session without an accessToken")?.to_string();
                anyhow::Ok((user, token))
            });
        }
        while let Some(login) = logins.join_next().await {
            let (user, token) = login??;
            tokens.insert(user, token);
        }
    }
    Ok(tokens)
}

/// Distinct loaded conversations to read a page of, each with the member who
/// reads it. The same at every step, so the steps compare.
fn plan_pages(mix: &Mix, count: usize) -> Vec<(u64, u64)> {
    let count = count.min(mix.loaded_conversations() as usize);
    let mut rng = fastrand::Rng::with_seed(mix.seed ^ 0x7061_6765);
    let mut chosen = HashSet::with_capacity(count);
    let mut plan = Vec::with_capacity(count);
    let mut members = Vec::with_capacity(GROUP_SIZE as usize);
    while plan.len() < count {
        let conversation = rng.u64(..mix.loaded_conversations());
        if !chosen.insert(conversation) {
            continue;
        }
        mix.members(conversation, &mut members);
        plan.push((conversation, members[rng.usize(..members.len())]));
    }
    plan
}

/// One pass of history pages, one request at a time on one keep-alive
/// connection: their latencies, and how many pages held no message.
async fn read_pages(server: &BenchServer, pages: &[(String, String)]) -> anyhow::Result<(Summary, usize)> {
    let mut connection = RawHttp::connect(server.url.trim_start_matches("http://")).await?;
    let mut latencies = Vec::with_capacity(pages.len());
    let mut empty = 0;
    for (conversation_id, token) in pages {
        let path = format!("/v1/conversations/{conversation_id}/messages");
        let started = Instant::now();
        let status = connection.get(&path, Some(token)).await?;
        latencies.push(started.elapsed().as_micros() as u64);
        if status != 200 {
            bail!("the history page of `{conversation_id}` answered {status}: {}", String::from_utf8_lossy(connection.body()));
        }
        let no_message = b"\"messages\":[]";
        if connection.body().windows(no_message.len()).any(|window| window == no_message) {
            empty += 1;
        }
    }
    Ok((summarize(latencies), empty))
}

/// Everything one step measured.
struct StepReport {
    load: LoadReport,
    /// The first start after the load (it applies the load).
    replay: Startup,
    replay_memory: Memory,
    logins: usize,
    clean_stop: Duration,
    restart: Startup,
    after_start: Memory,
    cold: Summary,
    warm: Summary,
    empty_pages: usize,
    after_history: Memory,
    sends: Option<super::SendsRound>,
    after_sends: Memory,
    after_kill: Startup,
    final_stop: Duration,
    state_bytes: u64,
    log_bytes: u64,
}

async fn measure(layout: &Layout, mix: &Mix, options: &StateOptions, load: LoadReport) -> anyhow::Result<StepReport> {
    let plan = plan_pages(mix, options.history_pages);
    let mut users: Vec<u64> = plan.iter().map(|&(_, user)| user).chain([FIRST_SENDER]).collect();
    users.sort_unstable();
    users.dedup();
    let (replay, replay_memory, tokens, clean_stop) = first_start(layout, &load, &users).await?;

    // A clean restart: nothing to replay but what came after the last checkpoint.
    let first_send_group = conversation_id(mix.first_send_group());
    let first_sender_token = &tokens[&FIRST_SENDER];
    let (mut server, mut restart) = start_server(layout).await?;
    restart.first_send = Some(first_send(&server, first_sender_token, &first_send_group).await?);
    let after_start = memory(&server)?;
    println!(
        "restart: listening after {} ms, /healthz after {} ms, first send accepted after {} ms, RSS {} MiB",
        restart.listening.as_millis(),
        restart.healthy.as_millis(),
        restart.first_send.unwrap_or_default().as_millis(),
        after_start.rss_kib / 1024
    );
    let pages: Vec<(String, String)> = plan.iter().map(|&(conversation, user)| (conversation_id(conversation), tokens[&user].clone())).collect();
    let (cold, warm, empty_pages) = history(&server, &pages).await?;
    let after_history = memory(&server)?;
    let sends = super::run_sends(super::SendsOptions {
        url: Some(server.url.clone()),
        senders: vec![options.senders],
        seconds: options.seconds,
        body_bytes: options.body_bytes,
        rate: None,
        partitions: options.partitions,
        history: false,
        during_sql: None,
        search: true,
        search_probes: 0,
        traces: None,
    })
    .await?
    .pop();
    let after_sends = memory(&server)?;

    // A crash: the next start replays what came after the last checkpoint.
    server.kill().await?;
    drop(server);
    let (mut server, mut after_kill) = start_server(layout).await?;
    after_kill.first_send = Some(first_send(&server, first_sender_token, &first_send_group).await?);
    println!(
        "after kill -9: /healthz after {} ms, first send accepted after {} ms",
        after_kill.healthy.as_millis(),
        after_kill.first_send.unwrap_or_default().as_millis()
    );
    let final_stop = server.terminate(STOP_TIMEOUT).await?;
    drop(server);
    Ok(StepReport {
        load,
        replay,
        replay_memory,
        logins: users.len(),
        clean_stop,
        restart,
        after_start,
        cold,
        warm,
        empty_pages,
        after_history,
        sends,
        after_sends,
        after_kill,
        final_stop,
        state_bytes: disk_bytes(&layout.data_dir.join("state")),
        log_bytes: disk_bytes(&layout.data_dir.join("log")),
    })
}

/// The first start after a load, which applies it; then logs in as `users`
/// (their devices are kept, so the tokens work after restarts) and stops
/// cleanly. Returns the start, the memory after it, the tokens and the stop.
async fn first_start(layout: &Layout, load: &LoadReport, users: &[u64]) -> anyhow::Result<(Startup, Memory, HashMap<u64, String>, Duration)> {
    let (mut server, replay) = start_server(layout).await?;
    let replay_memory = memory(&server)?;
    let rate = match load.added_records {
        0 => String::new(),
        records => format!(" = {:.0} records/s", records as f64 / replay.healthy.as_secs_f64()),
    };
    println!(
        "first start (applies the load): /healthz after {:.1} s{rate}, RSS {} MiB, peak {} MiB",
        replay.healthy.as_secs_f64(),
        replay_memory.rss_kib / 1024,
        replay_memory.peak_kib / 1024
    );
    let login_started = Instant::now();
    let tokens = log_in(&server.url, users).await?;
    println!("logged in as {} loaded users in {:.1} s", users.len(), login_started.elapsed().as_secs_f64());
    let clean_stop = server.terminate(STOP_TIMEOUT).await?;
    println!("stopped (SIGTERM, last checkpoint) in {:.2} s", clean_stop.as_secs_f64());
    Ok((replay, replay_memory, tokens, clean_stop))
}

/// The pages from a cold cache (first touch of each conversation since the
/// start), then the same pages warm; and how many held no message.
async fn history(server: &BenchServer, pages: &[(String, String)]) -> anyhow::Result<(Summary, Summary, usize)> {
    let (cold, empty_pages) = read_pages(server, pages).await?;
    let (warm, _) = read_pages(server, pages).await?;
    println!("history: {} pages, cold p50 {:.2} p99 {:.2} ms, warm p50 {:.2} p99 {:.2} ms", pages.len(), cold.p50_ms, cold.p99_ms, warm.p50_ms, warm.p99_ms);
    if empty_pages > 0 {
        println!("history: {empty_pages} of {} pages held no message (was the load applied? see the server's errors above)", pages.len());
    }
    Ok((cold, warm, empty_pages))
}

/// Bytes a folder takes on disk (allocated blocks, not apparent sizes).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                folders.push(entry.path());
            } else {
                total += metadata.blocks() * 512;
            }
        }
    }
    total
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn mib(kib: u64) -> String {
    format!("{} MiB", kib / 1024)
}

fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

fn latencies(summary: &Summary) -> String {
    format!("{:.2} / {:.2} / {:.2} ms", summary.p50_ms, summary.p99_ms, summary.max_ms)
}

fn print_step(report: &StepReport) {
    let load = &report.load;
    let load_rate = match load.added_messages {
        0 => "nothing loaded".to_string(),
        added => format!("{added} messages, {} records in {:.1} s", load.added_records, load.seconds),
    };
    let replay_rate = match load.added_records {
        0 => format!("{:.1} s", report.replay.healthy.as_secs_f64()),
        records => format!("{:.1} s ({:.0} records/s)", report.replay.healthy.as_secs_f64(), records as f64 / report.replay.healthy.as_secs_f64()),
    };
    let (sends_rate, sends_latency) = match &report.sends {
        Some(round) => (format!("{:.0} at {} senders", round.sends_per_second, round.senders), latencies(&round.summary)),
        None => ("-".to_string(), "-".to_string()),
    };
    let rows = [
        ("messages loaded", load.messages.to_string()),
        ("this step's load", load_rate),
        ("state/ on disk", gib(report.state_bytes)),
        ("log/ on disk", gib(report.log_bytes)),
        ("first start (applies the load) to /healthz", replay_rate),
        ("  RSS / peak after it", format!("{} / {}", mib(report.replay_memory.rss_kib), mib(report.replay_memory.peak_kib))),
        ("loaded users logged in", report.logins.to_string()),
        ("clean stop (SIGTERM)", millis(report.clean_stop)),
        ("restart: to listening", millis(report.restart.listening)),
        ("restart: to /healthz", millis(report.restart.healthy)),
        ("restart: to first accepted send", millis(report.restart.first_send.unwrap_or_default())),
        ("RSS after start", mib(report.after_start.rss_kib)),
        ("history cold p50 / p99 / max", latencies(&report.cold)),
        ("history warm p50 / p99 / max", latencies(&report.warm)),
        ("history pages (empty)", format!("{} ({})", report.cold.count, report.empty_pages)),
        ("RSS after history", mib(report.after_history.rss_kib)),
        ("sends/s", sends_rate),
        ("send p50 / p99 / max", sends_latency),
        ("RSS after sends", mib(report.after_sends.rss_kib)),
        ("peak RSS (VmHWM) since restart", mib(report.after_sends.peak_kib)),
        ("after kill -9: to /healthz", millis(report.after_kill.healthy)),
        ("after kill -9: to first accepted send", millis(report.after_kill.first_send.unwrap_or_default())),
        ("final stop (SIGTERM)", millis(report.final_stop)),
    ];
    println!();
    println!("{:<44} {:>32}", "measure", "value");
    for (measure, value) in rows {
        println!("{measure:<44} {value:>32}");
    }
}

fn print_summary(reports: &[StepReport]) {
    println!("\n== summary ==");
    println!(
        "{:>10} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "messages",
        "state GiB",
        "log GiB",
        "apply s",
        "apply MiB",
        "RSS MiB",
        "peak MiB",
        "healthz",
        "1st send",
        "kill -9",
        "hist cold",
        "hist warm",
        "sends/s",
        "send p99"
    );
    println!(
        "{:>10} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "", "", "", "", "peak", "at start", "", "ms", "ms", "healthz", "p99 ms", "p99 ms", "", "ms"
    );
    let gib_of = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    for report in reports {
        let (rate, p99) = report.sends.as_ref().map_or((0.0, 0.0), |round| (round.sends_per_second, round.summary.p99_ms));
        println!(
            "{:>10} {:>9.2} {:>9.2} {:>8.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10.2} {:>10.2} {:>9.0} {:>9.2}",
            report.load.messages,
            gib_of(report.state_bytes),
            gib_of(report.log_bytes),
            report.replay.healthy.as_secs_f64(),
            report.replay_memory.peak_kib / 1024,
            report.after_start.rss_kib / 1024,
            report.after_sends.peak_kib / 1024,
            report.restart.healthy.as_millis(),
            report.restart.first_send.unwrap_or_default().as_millis(),
            report.after_kill.healthy.as_millis(),
            report.cold.p99_ms,
            report.warm.p99_ms,
            rate,
            p99
        );
    }
    let (Some(first), Some(last)) = (reports.first(), reports.last()) else { return };
    if reports.len() > 1 {
        let ratio = |to: f64, from: f64| if from > 0.0 { format!("x{:.2}", to / from) } else { "-".to_string() };
        println!(
            "from {} to {} messages: peak RSS {}, restart to /healthz {}, to first send {}",
            first.load.messages,
            last.load.messages,
            ratio(last.after_sends.peak_kib as f64, first.after_sends.peak_kib as f64),
            ratio(last.restart.healthy.as_secs_f64(), first.restart.healthy.as_secs_f64()),
            ratio(last.restart.first_send.unwrap_or_default().as_secs_f64(), first.restart.first_send.unwrap_or_default().as_secs_f64())
        );
    }
    let peak_gib = last.after_sends.peak_kib as f64 / (1u64 << 20) as f64;
    let apply_peak_gib = last.replay_memory.peak_kib as f64 / (1u64 << 20) as f64;
    let start_secs = last.restart.first_send.unwrap_or_default().as_secs_f64().max(last.after_kill.healthy.as_secs_f64());
    println!(
        "goals at {} messages: peak RSS serving {peak_gib:.2} GiB (goal < 2 GiB: {}; applying the load: {apply_peak_gib:.2} GiB), start-up {start_secs:.2} s, the slower of restart to first send and kill -9 to /healthz (goal < 5 s: {})",
        last.load.messages,
        if peak_gib < 2.0 { "met" } else { "missed" },
        if start_secs < 5.0 { "met" } else { "missed" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dms_are_unique_pairs_and_groups_have_distinct_members() {
        for users in [200, 1_001, 10_000] {
            let mix = Mix::new(users, SEED);
            let mut members = Vec::new();
            let mut pairs = HashSet::new();
            let mut memberships = vec![0u64; users as usize];
            for conversation in 0..=mix.first_send_group() {
                mix.members(conversation, &mut members);
                let distinct: HashSet<u64> = members.iter().copied().collect();
                assert_eq!(distinct.len(), members.len(), "conversation {conversation} of {users} users");
                assert!(members.iter().all(|&member| member < users));
                if mix.is_dm(conversation) {
                    assert_eq!(members.len(), 2);
                    assert!(pairs.insert((members[0].min(members[1]), members[0].max(members[1]))), "a second dm between one pair");
                } else {
                    assert_eq!(members.len() as u64, GROUP_SIZE);
                }
                for &member in &members {
                    memberships[member as usize] += 1;
                }
            }
            assert!(memberships.iter().all(|&count| count >= 2 * DMS_PER_USER));
        }
    }

    #[test]
    fn messages_spread_over_dms_and_groups_as_the_mix_says() {
        let mix = Mix::new(10_000, SEED);
        let seqs = mix.seqs_after(100_000);
        let in_dms: u64 = seqs[..mix.dms() as usize].iter().map(|&seq| u64::from(seq)).sum();
        assert!((68_000..72_000).contains(&in_dms), "{in_dms} of 100000 in dms");
        assert_eq!(seqs.iter().map(|&seq| u64::from(seq)).sum::<u64>(), 100_000);
    }
}
