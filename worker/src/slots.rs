//! The node's slot accounting: how many sandbox slots are busy, shared by the node loop (one slot
//! per assigned job) and job runners (extra slots borrowed to run tests in parallel).
//!
//! Every change is reported through a callback (the node turns it into a `Status` message and
//! the utilization gauge).

use std::sync::Mutex;

/// Busy and total slots.
pub(crate) struct Slots {
    /// Slots in all (the executor's).
    total: usize,
    /// Slots in use; may pass `total` briefly when an assignment raced a status update.
    busy: Mutex<usize>,
    /// Called with the new busy count after every change.
    on_change: Box<dyn Fn(usize) + Send + Sync>,
}

/// A slot borrowed for one extra test thread; given back when dropped.
pub(crate) struct Borrowed<'a>(&'a Slots);

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Slots {
    pub(crate) fn new(total: usize, on_change: Box<dyn Fn(usize) + Send + Sync>) -> Slots {
        Slots {
            total,
            busy: Mutex::new(0),
            on_change,
        }
    }

    /// Slots free right now.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.total.saturating_sub(*self.lock())
    }

    /// Take a slot for an assigned job, even when none is free (the coordinator assigned it on a
    /// stale status; the executor then waits for a slot).
    pub(crate) fn take(&self) {
        let busy = {
            let mut busy = self.lock();
            *busy += 1;
            *busy
        };
        (self.on_change)(busy);
    }

    /// Give back a slot taken with [`Slots::take`].
    pub(crate) fn release(&self) {
        let busy = {
            let mut busy = self.lock();
            *busy = busy.saturating_sub(1);
            *busy
        };
        (self.on_change)(busy);
    }

    /// Borrow a free slot, if there is one.
    pub(crate) fn try_borrow(&self) -> Option<Borrowed<'_>> {
        let busy = {
            let mut busy = self.lock();
            if *busy >= self.total {
                return None;
            }
            *busy += 1;
            *busy
        };
        (self.on_change)(busy);
        Some(Borrowed(self))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn borrowing_only_takes_free_slots_and_reports_changes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let slots = Slots::new(2, Box::new(move |b| log.lock().unwrap().push(b)));
        slots.take();
        assert_eq!(slots.free(), 1);
        let b = slots.try_borrow().expect("one free");
        assert!(slots.try_borrow().is_none());
        assert_eq!(slots.free(), 0);
        slots.take(); // a raced assignment still counts
        assert_eq!(slots.free(), 0);
        drop(b);
        slots.release();
        slots.release();
        slots.release(); // never below zero
        assert_eq!(slots.free(), 2);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 3, 2, 1, 0, 0]);
    }
}
