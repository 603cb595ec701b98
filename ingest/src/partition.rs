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

    /// Waits for `ticket` to be durable, then applies everything durable in
    /// order. When this returns, the ticket's events are in the state.
    pub async fn finish(&self, log: &dyn Log, state: &State, ticket: AppendTicket) -> Result<()> {
        ticket.durable().await?;
        self.apply_durable(log, state)
    }

    pub fn apply_durable(&self, log: &dyn Log, state: &State) -> Result<()> {
        let mut pending = self.pending.lock();
        let durable_end = log.durable_end(self.id)?;
        let mut applied_end = None;
        while pending.front().is_some_and(|(offset, _)| *offset < durable_end) {
            let (offset, event) = pending.pop_front().expect("front exists");
            state.apply(self.id, offset, event);
            applied_end = Some(offset + 1);
        }
        if let Some(end) = applied_end {
            self.applied.send_replace(end);
        }
        Ok(())
    }

    pub fn applied_end(&self) -> Offset {
        *self.applied.borrow()
    }

    pub fn subscribe_applied(&self) -> watch::Receiver<Offset> {
        self.applied.subscribe()
    }
}
