//! One partition's write side: the writer lock that orders validation and
//! appends, the queue of appended events that are applied to the state
//! strictly in log order once durable, and the outcomes of the records
//! applied last, which the fanout reads instead of the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use confab_log::{AppendTicket, Log, Offset};
use confab_schemas::events::LogEvent;
use confab_telemetry::{Kind, Span};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::apply::RecordOutcome;
use crate::state::{Pin, State};
use crate::{Error, Result};

/// Record outcomes kept per partition for the fanout; one that fell
/// further behind reads the store instead.
const OUTCOMES_KEPT: usize = 8_192;

/// An appended event waiting to be durable and applied. The pin keeps its
/// conversation in the cache (its `assigned_seq` is ahead of the store).
struct Pending {
    offset: Offset,
    event: LogEvent,
    _pin: Option<Pin>,
}

pub(crate) struct PartitionWriter {
    pub id: u32,
    /// Held while a command validates against the state and appends, so
    /// that seqs and offsets are handed out in the same order.
    pub writer: tokio::sync::Mutex<()>,
    /// Appended but not yet applied, ascending by offset.
    pending: Mutex<VecDeque<Pending>>,
    /// One past the last applied offset (the store holds everything below it).
    applied: watch::Sender<Offset>,
    /// Records applied since the state was last checkpointed.
    pub applied_since_checkpoint: AtomicU64,
    outcomes: Mutex<VecDeque<Arc<RecordOutcome>>>,
}

impl PartitionWriter {
    pub fn new(id: u32, applied_end: Offset) -> PartitionWriter {
        PartitionWriter {
            id,
            writer: tokio::sync::Mutex::new(()),
            pending: Mutex::new(VecDeque::new()),
            applied: watch::channel(applied_end).0,
            applied_since_checkpoint: AtomicU64::new(0),
            outcomes: Mutex::new(VecDeque::new()),
        }
    }

    /// Appends `events`; call with the writer lock held. `pin` keeps the
    /// conversation cached until they are applied.
    pub fn append(&self, log: &dyn Log, events: Vec<LogEvent>, pin: Option<Pin>) -> Result<AppendTicket> {
        let payloads = events.iter().map(LogEvent::encode).collect();
        let ticket = log.append(self.id, payloads)?;
        let mut pending = self.pending.lock();
        let count = events.len();
        for (index, event) in events.into_iter().enumerate() {
            let pin = if index + 1 == count { pin.clone() } else { None };
            pending.push_back(Pending { offset: ticket.first_offset + index as u64, event, _pin: pin });
        }
        Ok(ticket)
    }

    /// Waits for `ticket` to be durable, then until everything durable up to
    /// it is applied, in order. When this returns, its events are in the
    /// state and committed to the store.
    ///
    /// One task applies a whole round while the others of that round wait on
    /// the applied watch: none blocks a runtime thread on the lock.
    pub async fn finish(&self, log: &dyn Log, state: &State, ticket: AppendTicket) -> Result<()> {
        self.finish_traced(log, state, ticket, Span::NONE).await
    }

    /// [`finish`](Self::finish), ending `append_span` when the record is
    /// durable (or failed to be).
    pub async fn finish_traced(&self, log: &dyn Log, state: &State, ticket: AppendTicket, mut append_span: Span) -> Result<()> {
        let last = ticket.first_offset + ticket.count;
        let durable = ticket.durable().await;
        if let Err(error) = &durable {
            append_span.fail(error.to_string());
        }
        append_span.end();
        durable?;
        let mut applied = self.applied.subscribe();
        loop {
            if state.failed.load(Ordering::Acquire) {
                return Err(Error::StateFailed);
            }
            if *applied.borrow_and_update() >= last {
                return Ok(());
            }
            if let Some(pending) = self.pending.try_lock() {
                self.apply_and_announce(log, state, pending)?;
                continue;
            }
            // Another task is applying; it announces when it is done.
            if applied.changed().await.is_err() {
                return Err(confab_log::Error::Poisoned.into());
            }
        }
    }

    /// Applies what is durable when no waiter is left to do it: a sender
    /// that hung up (an HTTP client gone, a socket closed) drops its
    /// `finish`, and without this its record would wait for the next write
    /// of the partition to be applied and fanned out. The checkpoint task
    /// calls it at every poll; when a live waiter holds the queue, it does
    /// nothing.
    pub fn sweep(&self, log: &dyn Log, state: &State) -> Result<()> {
        let Some(pending) = self.pending.try_lock() else { return Ok(()) };
        let durable_end = log.durable_end(self.id).unwrap_or(0);
        if pending.front().is_none_or(|waiting| waiting.offset >= durable_end) {
            return Ok(());
        }
        self.apply_and_announce(log, state, pending)
    }

    /// Applies one round with the queue's lock, releases it, then announces
    /// on the applied watch whatever happened: a task that failed to take
    /// the lock is waiting for exactly this to try again.
    fn apply_and_announce(&self, log: &dyn Log, state: &State, mut pending: MutexGuard<'_, VecDeque<Pending>>) -> Result<()> {
        let outcome = self.apply_durable(log, state, &mut pending);
        drop(pending);
        match &outcome {
            Ok(Some(end)) => self.applied.send_modify(|applied_end| *applied_end = (*applied_end).max(*end)),
            Ok(None) | Err(_) => self.applied.send_modify(|_| {}),
        }
        outcome.map(|_| ())
    }

    /// Applies every durable pending event as one round; returns the new applied end.
    fn apply_durable(&self, log: &dyn Log, state: &State, pending: &mut VecDeque<Pending>) -> Result<Option<Offset>> {
        let durable_end = log.durable_end(self.id).unwrap_or(0);
        let mut records = Vec::new();
        let mut pins = Vec::new();
        while pending.front().is_some_and(|waiting| waiting.offset < durable_end) {
            let waiting = pending.pop_front().expect("front exists");
            records.push((waiting.offset, waiting.event));
            pins.push(waiting._pin);
        }
        let Some(&(last, _)) = records.last() else { return Ok(None) };
        let count = records.len() as u64;
        // `state.apply` for each traced record: this round, from its start
        // to the store's commit.
        let mut spans: Vec<Span> = match confab_telemetry::enabled() {
            true => records.iter().map(|(_, event)| Span::child("state.apply", Kind::Internal, event.trace())).filter(Span::recording).collect(),
            false => Vec::new(),
        };
        for span in &mut spans {
            span.attr("confab.round_records", count as i64);
        }
        let outcomes = state.apply_round(self.id, records, true);
        if let Err(error) = &outcomes {
            spans.iter_mut().for_each(|span| span.fail(error.to_string()));
        }
        drop(spans);
        let outcomes = outcomes?;
        // The pins go only now: the round is committed to the store.
        drop(pins);
        self.applied_since_checkpoint.fetch_add(count, Ordering::Relaxed);
        let mut kept = self.outcomes.lock();
        kept.extend(outcomes.into_iter().map(Arc::new));
        while kept.len() > OUTCOMES_KEPT {
            kept.pop_front();
        }
        Ok(Some(last + 1))
    }

    /// Applies records read back from the log at start (no fanout runs yet).
    pub fn replay(&self, state: &State, records: Vec<(Offset, LogEvent)>) -> Result<()> {
        let Some(&(last, _)) = records.last() else { return Ok(()) };
        let count = records.len() as u64;
        state.apply_round(self.id, records, false)?;
        self.applied_since_checkpoint.fetch_add(count, Ordering::Relaxed);
        self.applied.send_modify(|end| *end = (*end).max(last + 1));
        Ok(())
    }

    /// What the record at `offset` produced, if it is among the last applied.
    pub fn outcome(&self, offset: Offset) -> Option<Arc<RecordOutcome>> {
        let kept = self.outcomes.lock();
        let first = kept.front()?.offset;
        if offset < first {
            return None;
        }
        // Offsets are ascending but not dense (records that produce nothing keep no outcome).
        let index = kept.partition_point(|outcome| outcome.offset < offset);
        kept.get(index).filter(|outcome| outcome.offset == offset).cloned()
    }

    /// Whether the record at `offset` is covered by the kept outcomes (so a
    /// missing one means it produced nothing).
    pub fn outcomes_cover(&self, offset: Offset) -> bool {
        self.outcomes.lock().front().is_some_and(|first| first.offset <= offset)
    }

    pub fn applied_end(&self) -> Offset {
        *self.applied.borrow()
    }

    pub fn subscribe_applied(&self) -> watch::Receiver<Offset> {
        self.applied.subscribe()
    }
}
