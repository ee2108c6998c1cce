//! Live updates of running jobs, fanned out to SSE streams (every update) and `?wait=true`
//! waiters (the final one only: a waiter is not woken for progress it ignores).
//!
//! A job's entry exists only while someone listens: the first listener creates it, the last one
//! dropped removes it, and a job's final state ends it. Publishing to a job nobody watches costs
//! one map lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use corral_protocol::{JobEvent, JobId, JobResult};
use tokio::sync::{broadcast, oneshot};

use crate::store::{JobRecord, JobState};

/// Updates buffered per job before a slow subscriber lags (and is told so). Each buffered update
/// is a pointer, so a subscriber costs a few KiB even with thousands of them.
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

/// Listeners by job.
#[derive(Default)]
pub struct Hub {
    /// Jobs someone listens to.
    jobs: Mutex<HashMap<JobId, Listeners>>,
    /// The next waiter's key (unique for the hub's life, so a waiter whose job's entry was
    /// ended and created again never removes another).
    next_key: AtomicU64,
}

/// Who listens to one job.
#[derive(Default)]
struct Listeners {
    /// Every update, for streams; created by the first [`Subscription`].
    stream: Option<broadcast::Sender<Update>>,
    /// Waiters for the final update, with the key each one removes itself by.
    finals: Vec<(u64, oneshot::Sender<Update>)>,
}

impl Listeners {
    fn is_empty(&self) -> bool {
        self.stream.is_none() && self.finals.is_empty()
    }
}

impl Update {
    /// Whether it is the job's last update.
    fn is_last(&self) -> bool {
        match self {
            Update::State(s) => s.is_final(),
            Update::Finished(_) => true,
            Update::Event(_) => false,
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Listeners>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts listening to every update of `job`. Subscribe before reading the job's stored
    /// state, so that no update between the read and the subscription is missed.
    pub fn subscribe(self: &Arc<Self>, job: JobId) -> Subscription {
        let rx = self
            .lock()
            .entry(job)
            .or_default()
            .stream
            .get_or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            rx,
            hub: Arc::clone(self),
            job,
        }
    }

    /// Starts waiting for the final update of `job` (same rule: before reading its state).
    pub fn wait_final(self: &Arc<Self>, job: JobId) -> FinalWait {
        let (tx, rx) = oneshot::channel();
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(job).or_default().finals.push((key, tx));
        FinalWait {
            rx,
            hub: Arc::clone(self),
            job,
            key,
        }
    }

    /// Sends an update to the job's listeners, if any; a final state also ends their streams.
    pub fn publish(&self, job: JobId, update: Update) {
        let mut jobs = self.lock();
        let Some(listeners) = jobs.get_mut(&job) else {
            return;
        };
        let last = update.is_last();
        if last {
            for (_, tx) in listeners.finals.drain(..) {
                let _ = tx.send(update.clone());
            }
        }
        if let Some(tx) = &listeners.stream {
            let _ = tx.send(update);
        }
        if last {
            jobs.remove(&job);
        }
    }

    /// Jobs with listeners (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    /// Removes what `change` leaves empty of `job`'s listeners.
    fn forget(&self, job: JobId, change: impl FnOnce(&mut Listeners)) {
        let mut jobs = self.lock();
        if let Some(listeners) = jobs.get_mut(&job) {
            change(listeners);
            if listeners.is_empty() {
                jobs.remove(&job);
            }
        }
    }
}

/// A listener on every update of one job; removes the job's stream when it is the last one.
pub struct Subscription {
    /// Updates of the job.
    pub rx: broadcast::Receiver<Update>,
    /// To remove the stream on drop.
    hub: Arc<Hub>,
    /// Which job.
    job: JobId,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.forget(self.job, |l| {
            if l.stream.as_ref().is_some_and(|tx| tx.receiver_count() <= 1) {
                l.stream = None;
            }
        });
    }
}

/// A waiter for the final update of one job; removes itself on drop.
pub struct FinalWait {
    /// Gets the final update (closed if the hub goes away).
    rx: oneshot::Receiver<Update>,
    /// To remove itself on drop.
    hub: Arc<Hub>,
    /// Which job.
    job: JobId,
    /// Its key among the job's waiters.
    key: u64,
}

impl FinalWait {
    /// The job's final update (a [`Update::Finished`] or a final [`Update::State`]); `None`
    /// when it can no longer come.
    pub async fn recv(&mut self) -> Option<Update> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for FinalWait {
    fn drop(&mut self) {
        let key = self.key;
        self.hub
            .forget(self.job, |l| l.finals.retain(|(k, _)| *k != key));
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

    #[tokio::test]
    async fn waiters_get_only_the_final_update() {
        let hub = Arc::new(Hub::default());
        let id = JobId::new();
        let mut stream = hub.subscribe(id);
        let mut first = hub.wait_final(id);
        let gone = hub.wait_final(id);
        drop(gone);
        hub.publish(id, Update::State(JobState::Running));
        assert!(matches!(
            stream.rx.recv().await,
            Ok(Update::State(JobState::Running))
        ));
        hub.publish(id, Update::State(JobState::Cancelled));
        assert!(matches!(
            first.recv().await,
            Some(Update::State(JobState::Cancelled))
        ));
        assert_eq!(hub.watched(), 0, "a final update ends the entry");
        // A new waiter on the same job is not removed by the old one's drop.
        let mut second = hub.wait_final(id);
        drop(first);
        drop(stream);
        assert_eq!(hub.watched(), 1);
        hub.publish(id, Update::State(JobState::Done));
        assert!(matches!(
            second.recv().await,
            Some(Update::State(JobState::Done))
        ));
        drop(second);
        let third = hub.wait_final(id);
        drop(third);
        assert_eq!(
            hub.watched(),
            0,
            "the last waiter dropped removes the entry"
        );
    }
}
