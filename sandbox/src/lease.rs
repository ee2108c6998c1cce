//! Slot leases: a slot index (and with it a uid, a cgroup and a mount point) belongs to one process
//! at a time, by an exclusive `flock` on `<state>/slots/<index>.lock` held for the slot's lifetime.
//! The kernel drops the lock when the holder dies, so a crashed process's slots become leasable and
//! the new holder cleans them; a live process's slots are never touched by another.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::Error;

/// Highest number of slot indexes on one host (uids `uid_base..uid_base + MAX_SLOTS`).
pub const MAX_SLOTS: usize = 4096;

/// An exclusively held slot index.
#[derive(Debug)]
pub struct Lease {
    /// The index.
    pub index: usize,
    /// Its mount-point directory.
    pub dir: PathBuf,
    /// The locked file; closing it releases the lease.
    _lock: File,
}

/// Lease `count` free slot indexes, lowest first.
pub fn lease_slots(dir: &Path, count: usize) -> Result<Vec<Lease>, Error> {
    let state_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::StateDir { path, source }
    };
    std::fs::create_dir_all(dir).map_err(state_err(dir))?;
    let mut leases = Vec::with_capacity(count);
    for index in 0..MAX_SLOTS {
        if leases.len() == count {
            break;
        }
        let Some(lock) = lock_index(dir, index)? else {
            continue;
        };
        let slot_dir = dir.join(index.to_string());
        std::fs::create_dir_all(&slot_dir).map_err(state_err(&slot_dir))?;
        leases.push(Lease {
            index,
            dir: slot_dir,
            _lock: lock,
        });
    }
    if leases.len() < count {
        return Err(Error::InvalidSpec(format!(
            "only {} of {count} sandbox slots are free",
            leases.len()
        )));
    }
    Ok(leases)
}

/// Lock slot `index` if no live process holds it, without leasing it for jobs: for cleaning up
/// what a crashed holder left (see `cgroup::sweep`). Dropping the file releases it.
pub fn lock_index(dir: &Path, index: usize) -> Result<Option<File>, Error> {
    let path = dir.join(format!("{index}.lock"));
    let state_err = |source| Error::StateDir {
        path: path.clone(),
        source,
    };
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(state_err)?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(state_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = lease_slots(dir.path(), 2).unwrap();
        assert_eq!(first.iter().map(|l| l.index).collect::<Vec<_>>(), [0, 1]);
        // flock is per open file: a second holder (as another process would be) skips both.
        let second = lease_slots(dir.path(), 1).unwrap();
        assert_eq!(second[0].index, 2);
        drop(first);
        let third = lease_slots(dir.path(), 2).unwrap();
        assert_eq!(third.iter().map(|l| l.index).collect::<Vec<_>>(), [0, 1]);
        assert!(dir.path().join("0").is_dir());
    }

    #[test]
    fn only_indexes_no_one_holds_can_be_locked_for_cleaning() {
        let dir = tempfile::tempdir().unwrap();
        let held = lease_slots(dir.path(), 1).unwrap();
        assert!(lock_index(dir.path(), 0).unwrap().is_none());
        let free = lock_index(dir.path(), 1).unwrap().expect("index 1 is free");
        assert_eq!(lease_slots(dir.path(), 1).unwrap()[0].index, 2);
        drop((held, free));
        assert!(lock_index(dir.path(), 0).unwrap().is_some());
    }
}
