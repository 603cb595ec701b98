//! `GET /v1/ws`: one device's live connection.
//!
//! The session registers with the delivery hub first, then replays every
//! event after `?cursor=` (through the same code as `/v1/sync`), then sends
//! live events, skipping any at or before what the replay covered: none
//! missing, none twice. Each durable frame carries the device's cursor.
//! One task sends (events, replies); one receives commands. Both end the
//! session: a silent client (no frame for two heartbeats), a closed socket,
//! or a reader too slow for its bounded queue, which is told where to
//! resume and disconnected.
//!
//! ## Many sends in flight
//!
//! A client need not wait for an `ack` before its next `message.send`. The
//! receive side validates each send and appends it to the log at once
//! (`Ingest::begin_send`, which hands out seqs in arrival order), then
//! keeps the wait for durability (`finish_send`) in a queue of answers and
//! reads the next frame. Answers leave in command order, each as soon as it
//! and those before it are done: acks are in send order within a
//! conversation (and, as the queue is one, across them too, which the API
//! allows). At most `ws_sends_in_flight_max` answers are pending; at that
//! bound the receive side stops reading the socket until one is answered,
//! so a fast client is slowed by TCP, not by memory. One fsync round then
//! covers every send of every socket waiting on it.
//!
//! Failures: a send refused before its append (not a member, rate limit,
//! bad frame) is answered in its turn with an `error` carrying its `id`; a
//! send whose write fails gets `error` `unavailable`. When the socket
//! closes with sends in flight, their answers are dropped but the messages
//! are not: each was appended, and the state applies it once durable (the
//! checkpoint task sweeps what no waiter is left to apply), so a retry with
//! the same `clientMsgId` after reconnecting finds it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::response::Response;
use confab_ingest::{Caller, NewMessage, SyncCursor, SYNC_PAGE_MAX};
use confab_pipelines::{DeviceReceipt, Outbound};
use confab_schemas::cursor::Position;
use confab_schemas::frames::{ClientCommand, PresenceStatus, ServerFrame};
use confab_schemas::ids::now_ms;
use confab_schemas::ErrorCode;
use confab_telemetry::{Kind, Span};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::{authenticate, bearer_token};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::rate_limit::{Limit, Write};
use crate::trace::SendSpan;
use crate::AppState;

/// Replies (acks, errors, pongs) queued for the send task; a client that
/// does not read them stalls only its own commands.
const REPLY_QUEUE_MAX: usize = 256;
/// Read buffer of a socket; writes go straight to the socket.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// A device may say it is typing in one conversation at most this often.
const TYPING_MIN_INTERVAL: Duration = Duration::from_secs(2);

/// The answer to one command, ready or still waiting (a send until its
/// message is durable); `None` for commands that have no answer.
type Answer<'a> = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send + 'a>>;

fn ready<'a>(frame: Option<ServerFrame>) -> Answer<'a> {
    Box::pin(std::future::ready(frame))
}

pub async fn upgrade(
    State(state): State<AppState>,
    parts: Parts,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let token = bearer_token(&parts).map(str::to_string).or_else(|| params.get("accessToken").cloned());
    let token = token.ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <accessToken>` or `?accessToken=`"))?;
    let caller = authenticate(&state, &token)?;
    let start = match params.get("cursor") {
        Some(text) => Some(
            SyncCursor::decode(text, state.ingest.partition_count())
                .ok_or_else(|| ApiError::bad_request("invalid `cursor`: not a cursor this server issued; connect without one"))?,
        ),
        None => None,
    };
    let upgrade = upgrade.map_err(|rejection| ApiError::bad_request(format!("`/v1/ws` needs a WebSocket upgrade: {rejection}")))?;
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let forwarded = crate::client_ip::forwarded_for(&parts.headers);
    let ip = crate::client_ip::client_address(peer, forwarded.as_deref(), &state.trusted_proxies).map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    // Socket caps, in all, per account and per address: the slots are
    // taken here, before the upgrade, so that a burst of upgrades cannot
    // pass a cap; they go back when the socket ends (or the upgrade fails).
    let slots = SocketSlots::reserve(&state, &caller.user_id, &ip)?;
    let expires_at = state.tokens.expires_at(&token).unwrap_or(0);
    let frame_max = state.config.ws_frame_max_bytes;
    // Small buffers: most connections are idle, and memory per connection
    // is what bounds how many one server holds.
    let upgrade = upgrade.max_message_size(frame_max).max_frame_size(frame_max).read_buffer_size(SOCKET_BUFFER_BYTES).write_buffer_size(0);
    Ok(upgrade.on_upgrade(move |socket| session(socket, state, caller, start, ip, expires_at, slots)))
}

/// A socket's slots: one in all, one of its account's, one of its address's.
struct SocketSlots {
    state: AppState,
    keys: Vec<String>,
}

impl SocketSlots {
    fn reserve(state: &AppState, user_id: &str, ip: &str) -> Result<SocketSlots, ApiError> {
        let total_max = state.config.ws_max;
        if state.sockets_total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < total_max).then_some(open + 1)).is_err() {
            return Err(ApiError::new(ErrorCode::Unavailable, format!("the server holds {total_max} sockets, the most it takes; retry shortly")).retry_after(5));
        }
        let mut slots = SocketSlots { state: state.clone(), keys: Vec::new() };
        let caps = [
            (format!("user {user_id}"), state.config.ws_per_user_max, "this account", "close one first"),
            (format!("ip {ip}"), state.config.ws_per_ip_max, "this address", "close some first"),
        ];
        for (key, max, who, what) in caps {
            let taken = {
                let mut open = state.socket_counts.entry(key.clone()).or_insert(0);
                (*open < max).then(|| *open += 1).is_some()
            };
            if !taken {
                state.socket_counts.remove_if(&key, |_, open| *open == 0);
                // `slots` gives back what it took so far when dropped.
                return Err(ApiError::new(ErrorCode::RateLimited, format!("{who} has {max} sockets open, the most it may; {what}")).retry_after(5));
            }
            slots.keys.push(key);
        }
        Ok(slots)
    }
}

impl Drop for SocketSlots {
    fn drop(&mut self) {
        self.state.sockets_total.fetch_sub(1, Ordering::AcqRel);
        for key in &self.keys {
            self.state.socket_counts.remove_if_mut(key, |_, open| {
                *open -= 1;
                *open == 0
            });
        }
    }
}

/// Sends one frame, or fails if the client does not take it in time.
async fn send_within(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, message: Message, timeout: Duration) -> Result<(), axum::Error> {
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not read in time"))),
    }
}

/// The close code of a socket whose device was logged out (4401, after HTTP's 401).
pub const LOGGED_OUT: u16 = 4401;

async fn session(socket: WebSocket, state: AppState, caller: Caller, start: Option<SyncCursor>, ip: String, expires_at: u64, slots: SocketSlots) {
    let _slots = slots;
    let head = state.ingest.head_cursor();
    let stream_start = start.as_ref().unwrap_or(&head).positions.clone();
    let (connection, mut queue, first) = state.hub.register(&caller.user_id, &caller.device_id, stream_start);
    // Debounced: a user who reconnects within `presence_debounce_ms` was
    // never announced offline, so is not announced online again.
    if first && state.presence_announced.insert(caller.user_id.clone()) {
        announce_presence(&state, &caller.user_id, PresenceStatus::Online);
    }
    let write_timeout = Duration::from_millis(state.config.ws_write_timeout_ms);
    let token_left = Duration::from_secs(expires_at.saturating_sub(crate::auth::unix_now()));
    let (mut sink, mut stream) = socket.split();
    let (replies, mut reply_queue) = mpsc::channel::<ServerFrame>(REPLY_QUEUE_MAX);
    let heartbeat = Duration::from_millis(state.config.heartbeat_ms);

    let mut closing = state.closing.subscribe();
    let send_side = async {
        let hello = ServerFrame::Hello { user_id: caller.user_id.clone(), device_id: caller.device_id.clone(), heartbeat_ms: state.config.heartbeat_ms };
        send_within(&mut sink, Message::Text(hello.to_text().into()), write_timeout).await?;
        let mut cursor = match start {
            Some(cursor) => replay(&state, &caller, cursor, &mut sink, write_timeout).await?,
            None => head,
        };
        // One deadline for the socket's life, not one per frame.
        let expiry = tokio::time::sleep(token_left);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                _ = async { let _ = closing.wait_for(|closing| *closing).await; } => {
                    let frame = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::AWAY, reason: "the server is restarting; reconnect with your last cursor".into() };
                    let _ = send_within(&mut sink, Message::Close(Some(frame)), write_timeout).await;
                    return Ok(());
                }
                () = &mut expiry => {
                    let frame = CloseFrame { code: LOGGED_OUT, reason: "the access token expired; log in again and reconnect with your cursor".into() };
                    let _ = send_within(&mut sink, Message::Close(Some(frame)), write_timeout).await;
                    return Ok(());
                }
                _ = connection.logged_out.notified() => {
                    let frame = CloseFrame { code: LOGGED_OUT, reason: "this device was logged out; log in again".into() };
                    let _ = send_within(&mut sink, Message::Close(Some(frame)), write_timeout).await;
                    return Ok(());
                }
                _ = connection.resync.notified() => {
                    let resume = cursor.encode();
                    let frame = ServerFrame::Error {
                        id: None,
                        code: ErrorCode::Unavailable.as_str().to_string(),
                        message: format!("this connection fell too far behind; reconnect with ?cursor={resume} to resume"),
                        cursor: Some(resume),
                    };
                    send_within(&mut sink, Message::Text(frame.to_text().into()), write_timeout).await?;
                    break;
                }
                reply = reply_queue.recv() => match reply {
                    Some(reply) => send_within(&mut sink, Message::Text(reply.to_text().into()), write_timeout).await?,
                    None => break,
                },
                frame = queue.recv() => match frame {
                    Some(Outbound::Durable { partition, position, json, ts_ms, trace }) => {
                        let after = Position { offset: position.offset, skip: position.skip + 1 };
                        let current = &mut cursor.positions[partition as usize];
                        if after <= *current {
                            continue; // The replay already sent it.
                        }
                        *current = after;
                        // `ws.write`: from the fanout's queueing to the socket's write.
                        let mut span = trace.map_or(Span::NONE, |trace| Span::child_since("ws.write", Kind::Internal, Some(trace.parent), trace.queued_at));
                        span.attr_with("confab.device_id", || caller.device_id.clone());
                        span.attr_with("confab.user_id", || caller.user_id.clone());
                        let text = format!("{{\"cursor\":\"{}\",{}", cursor.encode(), &json[1..]);
                        if let Err(error) = send_within(&mut sink, Message::Text(text.into()), write_timeout).await {
                            span.fail(error.to_string());
                            return Err(error);
                        }
                        span.end();
                        state.metrics.observe_delivery(ts_ms);
                    }
                    Some(Outbound::Ephemeral(frame)) => send_within(&mut sink, Message::Text(frame.to_string().into()), write_timeout).await?,
                    None => break,
                },
            }
        }
        let _ = send_within(&mut sink, Message::Close(None), write_timeout).await;
        Ok::<(), axum::Error>(())
    };

    let receive_side = async {
        // What the socket is closed with when the receive side ends it.
        let mut close = None;
        let in_flight_max = state.config.ws_sends_in_flight_max.max(1);
        // Answers in command order; see the module's notes.
        let mut answers: FuturesOrdered<Answer<'_>> = FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                Some(answer) = answers.next(), if !answers.is_empty() => {
                    if let Some(frame) = answer {
                        if replies.send(frame).await.is_err() {
                            break;
                        }
                    }
                }
                frame = tokio::time::timeout(heartbeat * 2, stream.next()), if answers.len() < in_flight_max => {
                    let frame = match frame {
                        Err(_) => break, // Heartbeats stopped.
                        Ok(None) => break,
                        Ok(Some(Err(error))) => {
                            close = close_for_read_error(error, state.config.ws_frame_max_bytes);
                            break;
                        }
                        Ok(Some(Ok(frame))) => frame,
                    };
                    let answer = match frame {
                        Message::Text(text) => handle_command(&state, &caller, &ip, text.as_str()).await,
                        Message::Binary(_) => ready(Some(ServerFrame::error(None, ErrorCode::BadRequest, "send JSON text frames, not binary"))),
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => continue,
                    };
                    answers.push_back(answer);
                }
            }
        }
        close
    };

    let close = tokio::select! {
        _ = send_side => None,
        close = receive_side => close,
    };
    if let Some(frame) = close {
        let _ = send_within(&mut sink, Message::Close(Some(frame)), write_timeout).await;
    }
    if state.hub.unregister(&connection) {
        let (state, user_id) = (state.clone(), caller.user_id.clone());
        let debounce = Duration::from_millis(state.config.presence_debounce_ms);
        tokio::spawn(async move {
            tokio::time::sleep(debounce).await;
            if !state.hub.is_online(&user_id) && state.presence_announced.remove(&user_id).is_some() {
                announce_presence(&state, &user_id, PresenceStatus::Offline);
            }
        });
    }
}

/// The close frame for a socket whose next frame could not be read: 1009
/// for a frame over `ws_frame_max_bytes` (refused from its header, before
/// its payload is read); none for a connection that broke.
fn close_for_read_error(error: axum::Error, frame_max: usize) -> Option<CloseFrame> {
    match error.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => {
            Some(CloseFrame { code: close_code::SIZE, reason: format!("a frame is over the limit of {frame_max} bytes; send smaller commands").into() })
        }
        _ => None,
    }
}

/// Sends every event after `cursor`, page by page; returns where it ended.
async fn replay(
    state: &AppState,
    caller: &Caller,
    cursor: SyncCursor,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    write_timeout: Duration,
) -> Result<SyncCursor, axum::Error> {
    let mut text = cursor.encode();
    loop {
        let page = match state.ingest.sync(caller, Some(&text), SYNC_PAGE_MAX) {
            Ok(page) => page,
            Err(error) => {
                let frame = ServerFrame::error(None, error.code(), error.to_string());
                send_within(sink, Message::Text(frame.to_text().into()), write_timeout).await?;
                return Ok(cursor);
            }
        };
        for event in &page.events {
            let frame = serde_json::to_string(event).expect("events serialize");
            send_within(sink, Message::Text(frame.into()), write_timeout).await?;
        }
        note_delivered(state, caller, &page.events);
        text = page.next_cursor;
        if !page.has_more {
            break;
        }
    }
    Ok(SyncCursor::decode(&text, state.ingest.partition_count()).expect("the server's own cursor"))
}

fn api_error_frame(id: Option<Value>, error: ApiError) -> ServerFrame {
    ServerFrame::error(id, error.code, error.message)
}

/// Handles one client frame: does what must happen in arrival order (for a
/// send, validation and the append), and returns its answer, which may
/// still wait (for a send, on durability). A bad frame gets an error answer
/// and the connection stays usable.
async fn handle_command<'a>(state: &'a AppState, caller: &'a Caller, ip: &str, text: &str) -> Answer<'a> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => return ready(Some(ServerFrame::error(None, ErrorCode::BadRequest, format!("the frame is not JSON: {error}")))),
    };
    let id = value.get("id").cloned();
    let command: ClientCommand = match serde_path_to_error::deserialize(&value) {
        Ok(command) => command,
        Err(error) => {
            let path = error.path().to_string();
            let detail = error.into_inner().to_string();
            let message = if matches!(path.as_str(), "." | "?" | "") { format!("invalid command: {detail}") } else { format!("invalid `{path}`: {detail}") };
            return ready(Some(ServerFrame::error(id, ErrorCode::BadRequest, message)));
        }
    };
    match command {
        ClientCommand::Send { conversation_id, client_msg_id, body, attachments } => {
            let Some(id) = id else {
                return ready(Some(ServerFrame::error(None, ErrorCode::BadRequest, "invalid `id`: a message.send needs an id to answer")));
            };
            let limited = state
                .rate_limiter
                .check(Limit::SendPerAccount, &caller.user_id)
                .and_then(|()| state.rate_limiter.check(Limit::SendPerIp, ip))
                .map_err(ApiError::rate_limited);
            if let Err(error) = limited {
                return ready(Some(api_error_frame(Some(id), error)));
            }
            let started = Instant::now();
            let span = SendSpan::ws(&conversation_id);
            let request = NewMessage { conversation_id, client_msg_id, body, attachments, trace: span.context() };
            match state.ingest.begin_send(caller, request).await {
                Err(error) => {
                    let error = ApiError::from(error);
                    span.finish(Err(&error), None);
                    ready(Some(api_error_frame(Some(id), error)))
                }
                Ok(pending) => Box::pin(async move {
                    Some(match state.ingest.finish_send(pending).await {
                        Ok((message, _)) => {
                            state.metrics.observe_send(crate::metrics::Transport::Ws, started.elapsed());
                            span.finish(Ok(&message), None);
                            ServerFrame::Ack { id, message }
                        }
                        Err(error) => {
                            let error = ApiError::from(error);
                            span.finish(Err(&error), None);
                            api_error_frame(Some(id), error)
                        }
                    })
                }),
            }
        }
        ClientCommand::Delivered { conversation_id, seq } => {
            if let Err(retry_after) = state.rate_limiter.check_write(Write::Receipt, &caller.user_id, ip, Some(&conversation_id)) {
                return ready(Some(api_error_frame(id, ApiError::rate_limited(retry_after))));
            }
            if let Err(error) = state.ingest.check_receipt(caller, &conversation_id, seq) {
                return ready(Some(api_error_frame(id, error.into())));
            }
            let receipt = DeviceReceipt { conversation_id, user_id: caller.user_id.clone(), device_id: caller.device_id.clone(), seq };
            state.pipelines.submit_receipt(receipt);
            ready(None)
        }
        // A read waits for durability too: queued like a send, so the
        // socket keeps reading meanwhile.
        ClientCommand::Read { conversation_id, seq } => {
            if let Err(retry_after) = state.rate_limiter.check_write(Write::Read, &caller.user_id, ip, Some(&conversation_id)) {
                return ready(Some(api_error_frame(id, ApiError::rate_limited(retry_after))));
            }
            Box::pin(async move {
                match state.ingest.mark_read_seq(caller, &conversation_id, seq).await {
                    Ok(()) => None,
                    Err(error) => Some(api_error_frame(id, error.into())),
                }
            })
        }
        ClientCommand::Typing { conversation_id } => {
            let members = match state.ingest.member_ids(caller, &conversation_id) {
                Ok(members) => members,
                Err(error) => return ready(Some(api_error_frame(id, error.into()))),
            };
            let now = Instant::now();
            // Per user and conversation, whatever socket it comes from.
            let key = (caller.user_id.clone(), conversation_id.clone());
            let recent = state.typing_sent.get(&key).is_some_and(|at| now.duration_since(*at) < TYPING_MIN_INTERVAL);
            // Best effort: shed for large conversations and repeats.
            if recent || members.len() > state.pipelines.large_conversation_members() {
                return ready(None);
            }
            state.typing_sent.insert(key, now);
            let frame = ServerFrame::Typing { conversation_id, user_id: caller.user_id.clone() };
            let frame = Outbound::Ephemeral(std::sync::Arc::new(serde_json::to_value(frame).expect("frames serialize")));
            for member in members.iter().filter(|member| **member != caller.user_id) {
                state.hub.deliver(member, None, &frame);
            }
            ready(None)
        }
        ClientCommand::Ping {} => ready(Some(ServerFrame::Pong { id })),
    }
}

/// A device that fetched messages (by sync or by replay) has them: that
/// counts as delivered. Handed to the receipts pipeline, which coalesces.
pub fn note_delivered(state: &AppState, caller: &Caller, events: &[confab_schemas::api::CursoredEvent]) {
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for cursored in events {
        if let confab_schemas::api::ClientEvent::MessageNew { message } = &cursored.event {
            if message.sender_id != caller.user_id {
                let seq = highest.entry(message.conversation_id.as_str()).or_insert(0);
                *seq = (*seq).max(message.seq);
            }
        }
    }
    for (conversation_id, seq) in highest {
        let receipt = DeviceReceipt { conversation_id: conversation_id.to_string(), user_id: caller.user_id.clone(), device_id: caller.device_id.clone(), seq };
        state.pipelines.submit_receipt(receipt);
    }
}

/// Tells a user's contacts (members of their small conversations) that the
/// user came online or went offline. Best effort: shed when queues are full.
fn announce_presence(state: &AppState, user_id: &str, status: PresenceStatus) {
    let now = now_ms();
    state.last_seen.insert(user_id.to_string(), now);
    let frame = ServerFrame::Presence { user_id: user_id.to_string(), status, last_seen: now };
    let frame = Outbound::Ephemeral(std::sync::Arc::new(serde_json::to_value(frame).expect("frames serialize")));
    let contacts = match state.ingest.contacts(user_id, state.pipelines.large_conversation_members()) {
        Ok(contacts) => contacts,
        Err(error) => {
            tracing::warn!(%error, user_id, "could not find whom to tell about a presence change");
            return;
        }
    };
    for contact in contacts {
        state.hub.deliver(&contact, None, &frame);
    }
}
