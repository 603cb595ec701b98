//! The delivery hub: every live WebSocket connection, by user, each with a
//! bounded queue. Pipelines push into it; a connection's send task drains
//! its own queue. Nothing here ever waits on a slow connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use confab_schemas::cursor::Position;
use confab_schemas::trace::TraceParent;
use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};

/// One frame for a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A durable event at a log position, serialized once for every
    /// recipient; each connection splices in its own cursor. `ts_ms`: when
    /// the server accepted it (for the delivery lag metric). `trace`: the
    /// fanout stage's span, when the message is traced, for the socket
    /// write's span.
    Durable { partition: u32, position: Position, json: Arc<str>, ts_ms: i64, trace: Option<Traced> },
    /// A best-effort frame (presence, typing): dropped first under load.
    Ephemeral(Arc<serde_json::Value>),
}

/// The span a traced frame's socket write is a child of, and when the
/// frame was queued (the write's span starts there, so it shows the wait).
#[derive(Debug, Clone, Copy)]
pub struct Traced {
    pub parent: TraceParent,
    pub queued_at: SystemTime,
}

/// One live connection of one device.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub user_id: String,
    pub device_id: String,
    /// Per partition, where this connection's stream starts: older events
    /// reach it by replay, never through its queue.
    start: Vec<Position>,
    sender: mpsc::Sender<Outbound>,
    overflowed: AtomicBool,
    /// Woken when the connection must resync (its queue overflowed).
    pub resync: Notify,
    /// Woken when its device is logged out: the socket must close.
    pub logged_out: Notify,
}

impl Connection {
    /// Whether a durable event was dropped because the queue was full: the
    /// device must resume from its last cursor.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    fn push(&self, frame: Outbound) -> bool {
        if self.overflowed() {
            return false;
        }
        if let Outbound::Durable { partition, position, .. } = &frame {
            let starts_after = self.start.get(*partition as usize).is_some_and(|start| !start.admits(position.offset, position.skip));
            if starts_after {
                return true;
            }
        }
        match self.sender.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(Outbound::Ephemeral(_))) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                self.resync.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Counters of the hub, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub delivered: AtomicU64,
    pub shed: AtomicU64,
}

#[derive(Debug)]
pub struct Hub {
    connections: DashMap<String, Vec<Arc<Connection>>>,
    queue_max_frames: usize,
    next_id: AtomicU64,
    pub counters: HubCounters,
}

impl Hub {
    pub fn new(queue_max_frames: usize) -> Hub {
        Hub { connections: DashMap::new(), queue_max_frames: queue_max_frames.max(1), next_id: AtomicU64::new(1), counters: HubCounters::default() }
    }

    /// Registers a device's connection whose stream starts at `start` (one
    /// position per partition); returns it, its queue, and whether the user
    /// was offline before (their first connection).
    pub fn register(&self, user_id: &str, device_id: &str, start: Vec<Position>) -> (Arc<Connection>, mpsc::Receiver<Outbound>, bool) {
        let (sender, receiver) = mpsc::channel(self.queue_max_frames);
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            start,
            sender,
            overflowed: AtomicBool::new(false),
            resync: Notify::new(),
            logged_out: Notify::new(),
        });
        let mut entry = self.connections.entry(user_id.to_string()).or_default();
        let first = entry.is_empty();
        entry.push(connection.clone());
        (connection, receiver, first)
    }

    /// Removes a connection; returns whether it was the user's last one.
    pub fn unregister(&self, connection: &Connection) -> bool {
        let mut last = false;
        self.connections.remove_if_mut(&connection.user_id, |_, list| {
            list.retain(|other| other.id != connection.id);
            last = list.is_empty();
            last
        });
        last
    }

    /// Tells every connection of a logged-out device to close; returns how many.
    pub fn end_device(&self, user_id: &str, device_id: &str) -> usize {
        let Some(list) = self.connections.get(user_id) else { return 0 };
        let mut ended = 0;
        for connection in list.iter().filter(|connection| connection.device_id == device_id) {
            // A stored permit: a connection not yet waiting still sees it.
            connection.logged_out.notify_one();
            ended += 1;
        }
        ended
    }

    pub fn is_online(&self, user_id: &str) -> bool {
        self.connections.get(user_id).is_some_and(|list| !list.is_empty())
    }

    /// The devices of a user with a live connection.
    pub fn online_devices(&self, user_id: &str) -> Vec<String> {
        self.connections.get(user_id).map(|list| list.iter().map(|connection| connection.device_id.clone()).collect()).unwrap_or_default()
    }

    pub fn online_users(&self) -> usize {
        self.connections.len()
    }

    /// Distinct devices with a live connection (a device with two sockets
    /// counts once). Walks every connection: for metrics, not hot paths.
    pub fn online_device_count(&self) -> usize {
        self.connections
            .iter()
            .map(|entry| {
                let list = entry.value();
                list.iter().enumerate().filter(|(index, connection)| !list[..*index].iter().any(|other| other.device_id == connection.device_id)).count()
            })
            .sum()
    }

    /// Pushes a frame to every connection of `user_id` but `except_device`.
    pub fn deliver(&self, user_id: &str, except_device: Option<&str>, frame: &Outbound) {
        let Some(list) = self.connections.get(user_id) else { return };
        for connection in list.iter() {
            if except_device == Some(connection.device_id.as_str()) {
                continue;
            }
            if connection.push(frame.clone()) {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Outbound {
        Outbound::Durable { partition: 0, position: Position::at(0), json: Arc::from(r#"{"type":"receipt.read"}"#), ts_ms: 0, trace: None }
    }

    #[test]
    fn a_full_queue_drops_ephemeral_frames_and_marks_durable_overflow() {
        let hub = Hub::new(2);
        let (slow, _receiver, first) = hub.register("u", "d1", vec![Position::at(0)]);
        assert!(first);
        let (_fast, mut fast_receiver, first) = hub.register("u", "d2", vec![Position::at(0)]);
        assert!(!first);
        hub.deliver("u", Some("d2"), &event());
        hub.deliver("u", Some("d2"), &Outbound::Ephemeral(Arc::new(serde_json::json!({"type": "typing"}))));
        assert!(!slow.overflowed(), "ephemeral frames are shed, not counted as overflow");
        hub.deliver("u", Some("d2"), &event());
        hub.deliver("u", Some("d2"), &event());
        assert!(slow.overflowed());
        assert!(fast_receiver.try_recv().is_err(), "the excluded device got nothing");
        assert!(!hub.unregister(&slow));
        assert!(hub.is_online("u"));
    }

    #[test]
    fn a_connection_never_queues_events_from_before_its_start() {
        let hub = Hub::new(4);
        let (_connection, mut receiver, _) = hub.register("u", "d", vec![Position { offset: 5, skip: 1 }]);
        let at = |offset, skip| Outbound::Durable { partition: 0, position: Position { offset, skip }, json: Arc::from("{}"), ts_ms: 0, trace: None };
        for (offset, skip) in [(4, 0), (5, 0), (5, 1), (6, 0)] {
            hub.deliver("u", None, &at(offset, skip));
        }
        let queued: Vec<(u64, u32)> = std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|frame| match frame {
                Outbound::Durable { position, .. } => (position.offset, position.skip),
                Outbound::Ephemeral(_) => unreachable!(),
            })
            .collect();
        assert_eq!(queued, vec![(5, 1), (6, 0)]);
    }

    #[test]
    fn online_counts_users_and_distinct_devices() {
        let hub = Hub::new(4);
        let (first, _q1, _) = hub.register("u", "phone", vec![]);
        let (_second, _q2, _) = hub.register("u", "phone", vec![]);
        let (_laptop, _q3, _) = hub.register("u", "laptop", vec![]);
        let (other, _q4, _) = hub.register("v", "phone", vec![]);
        assert_eq!((hub.online_users(), hub.online_device_count()), (2, 3), "one device with two sockets counts once");
        hub.unregister(&other);
        hub.unregister(&first);
        assert_eq!((hub.online_users(), hub.online_device_count()), (1, 2));
    }
}
