//! One partition's write side: the writer lock that orders validation and
//! appends, and the queue of appended events that are applied to the state
//! strictly in log order once durable.

use std::collections::VecDeque;

use confab_log::{AppendTicket, Log, Offset};
use confab_schemas::events::LogEvent;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::state::State;
use crate::Result;

pub(crate) struct PartitionWriter {
    pub id: u32,
    /// Held while a command validates against the state and appends, so
    /// that seqs and offsets are handed out in the same order.
    pub writer: tokio::sync::Mutex<()>,
    /// Appended but not yet applied, ascending by offset.
    pending: Mutex<VecDeque<(Offset, LogEvent)>>,
    /// One past the last applied offset.
    applied: watch::Sender<Offset>,
}

impl PartitionWriter {
    pub fn new(id: u32, applied_end: Offset) -> PartitionWriter {
        PartitionWriter { id, writer: tokio::sync::Mutex::new(()), pending: Mutex::new(VecDeque::new()), applied: watch::channel(applied_end).0 }
    }

    /// Appends `events`; call with the writer lock held.
    pub fn append(&self, log: &dyn Log, events: Vec<LogEvent>) -> Result<AppendTicket> {
        let payloads = events.iter().map(LogEvent::encode).collect();
        let ticket = log.append(self.id, payloads)?;
        let mut pending = self.pending.lock();
        for (index, event) in events.into_iter().enumerate() {
            pending.push_back((ticket.first_offset + index as u64, event));
        }
        Ok(ticket)
    }

    /// Waits for `ticket` to be durable, then until everything durable up to
    /// it is applied, in order. When this returns, its events are in the state.
    ///
    /// One task applies a whole round while the others of that round wait on
    /// the applied watch: none blocks a runtime thread on the lock.
    pub async fn finish(&self, log: &dyn Log, state: &State, ticket: AppendTicket) -> Result<()> {
        let last = ticket.first_offset + ticket.count;
        ticket.durable().await?;
        let mut applied = self.applied.subscribe();
        loop {
            if *applied.borrow_and_update() >= last {
                return Ok(());
            }
            if let Some(mut pending) = self.pending.try_lock() {
                let applied_end = apply_durable(log, state, self.id, &mut pending);
                drop(pending);
                // Always announce, and only once the lock is free: a task that
                // failed to take it is waiting for exactly this to try again.
                self.applied.send_modify(|end| *end = (*end).max(applied_end.unwrap_or(0)));
                continue;
            }
            // Another task is applying; it announces when it is done.
            if applied.changed().await.is_err() {
                return Err(confab_log::Error::Poisoned.into());
            }
        }
    }

    pub fn applied_end(&self) -> Offset {
        *self.applied.borrow()
    }

    pub fn subscribe_applied(&self) -> watch::Receiver<Offset> {
        self.applied.subscribe()
    }
}

/// Applies every durable pending event, in order; returns the new applied end.
fn apply_durable(log: &dyn Log, state: &State, partition: u32, pending: &mut VecDeque<(Offset, LogEvent)>) -> Option<Offset> {
    let durable_end = log.durable_end(partition).unwrap_or(0);
    let mut applied_end = None;
    while pending.front().is_some_and(|(offset, _)| *offset < durable_end) {
        let (offset, event) = pending.pop_front().expect("front exists");
        state.apply(partition, offset, event);
        applied_end = Some(offset + 1);
    }
    applied_end
}
