//! Live updates of running jobs, fanned out to `?wait=true` waiters and SSE subscribers.
//!
//! A channel exists only while someone listens: subscribing creates it, the last subscription
//! dropped removes it, and a job's final state closes it. Publishing to a job nobody watches
//! costs one map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_protocol::{JobEvent, JobId, JobResult};
use tokio::sync::broadcast;

use crate::store::{JobRecord, JobState};

/// Updates buffered per job before a slow subscriber lags (and is told so). Each buffered update
/// is a pointer, so a waiter costs a few KiB even with thousands of them.
const CAPACITY: usize = 128;

/// One update of a job.
#[derive(Debug, Clone)]
pub enum Update {
    /// The job's state changed (a final state here: read the job from the store).
    State(JobState),
    /// Progress reported by the worker (shared by all subscribers).
    Event(Arc<JobEvent>),
    /// The job's result was recorded, with everything about it the store has that a waiter
    /// does not know already; published only after the store committed it.
    Finished(Arc<Finished>),
}

/// A recorded final state: the columns `finish_job` wrote, and the attempt's number and start.
#[derive(Debug)]
pub struct Finished {
    /// `done` or `cancelled`.
    pub state: JobState,
    /// The recorded result.
    pub result: JobResult,
    /// The attempt whose result it is (the job's `attempts`).
    pub attempts: u32,
    /// When that attempt started, ms since the epoch.
    pub started_ms: i64,
    /// When the result was recorded, ms since the epoch.
    pub finished_ms: i64,
}

impl Finished {
    /// `record` (the job as stored before it ran) as it is stored now.
    pub fn apply(&self, mut record: JobRecord) -> JobRecord {
        record.state = self.state;
        record.result = Some(self.result.clone());
        record.attempts = self.attempts;
        record.started_ms = Some(self.started_ms);
        record.finished_ms = Some(self.finished_ms);
        record
    }
}

/// Subscriptions by job.
#[derive(Default)]
pub struct Hub {
    /// Senders of jobs someone listens to.
    channels: Mutex<HashMap<JobId, broadcast::Sender<Update>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, broadcast::Sender<Update>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts listening to `job`. Subscribe before reading the job's stored state, so that no
    /// update between the read and the subscription is missed.
    pub fn subscribe(self: &Arc<Self>, job: JobId) -> Subscription {
        let rx = self
            .lock()
            .entry(job)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            rx,
            hub: Arc::clone(self),
            job,
        }
    }

    /// Sends an update to the job's listeners, if any; a final state also ends their streams.
    pub fn publish(&self, job: JobId, update: Update) {
        let mut channels = self.lock();
        let last = match &update {
            Update::State(s) => s.is_final(),
            Update::Finished(_) => true,
            Update::Event(_) => false,
        };
        if let Some(tx) = channels.get(&job) {
            let _ = tx.send(update);
        }
        if last {
            channels.remove(&job);
        }
    }

    /// Jobs with listeners (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.lock().len()
    }
}

/// A listener on one job; removes the job's channel when it is the last one.
pub struct Subscription {
    /// Updates of the job.
    pub rx: broadcast::Receiver<Update>,
    /// To remove the channel on drop.
    hub: Arc<Hub>,
    /// Which job.
    job: JobId,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.hub.lock();
        if channels
            .get(&self.job)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            channels.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn final_state_closes_and_drop_cleans_up() {
        let hub = Arc::new(Hub::default());
        let id = JobId::new();
        let mut a = hub.subscribe(id);
        let b = hub.subscribe(id);
        hub.publish(id, Update::State(JobState::Running));
        assert!(matches!(
            a.rx.recv().await,
            Ok(Update::State(JobState::Running))
        ));
        drop(b);
        assert_eq!(hub.watched(), 1);
        hub.publish(id, Update::State(JobState::Done));
        assert!(matches!(
            a.rx.recv().await,
            Ok(Update::State(JobState::Done))
        ));
        assert!(a.rx.recv().await.is_err());
        assert_eq!(hub.watched(), 0);
        drop(a);
        let c = hub.subscribe(id);
        drop(c);
        assert_eq!(hub.watched(), 0);
    }
}
