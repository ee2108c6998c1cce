//! Whole-tree kill without `cgroup.kill` (cgroup v1): freeze the cgroup so that no task can fork
//! while it is being listed, SIGKILL every task, thaw it so that the signals are acted on (a task
//! frozen by the v1 freezer only dies once thawed), and repeat until the cgroup is empty or the
//! deadline passes. The loop runs over [`Freezable`] so that its logic is tested with a fake.

use std::path::Path;
use std::time::{Duration, Instant};

use super::files::poll_until;
use super::CgroupError;

/// How long one round waits for the freezer to report FROZEN. A task in uninterruptible sleep can
/// hold it in FREEZING; the round then kills what it listed anyway and the next round retries.
const FREEZE_WAIT: Duration = Duration::from_millis(100);
/// How long one round waits for the killed tasks to leave the cgroup.
const SETTLE_WAIT: Duration = Duration::from_millis(100);

/// A cgroup that can be frozen, listed and killed.
pub(super) trait Freezable {
    /// The cgroup, for errors.
    fn path(&self) -> &Path;
    /// Every process in it.
    fn procs(&self) -> Result<Vec<u32>, CgroupError>;
    /// Ask the freezer for FROZEN (true) or THAWED (false).
    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError>;
    /// Whether every task is frozen (FREEZING is not frozen).
    fn is_frozen(&self) -> Result<bool, CgroupError>;
    /// SIGKILL one process; one that is already gone is not an error.
    fn sigkill(&self, pid: u32) -> Result<(), CgroupError>;
}

/// Kill everything in `tree` within `timeout`. The cgroup is left thawed whatever happens: a
/// frozen slot cgroup would freeze the next spawner that joins it.
pub(super) fn freeze_and_kill(tree: &dyn Freezable, timeout: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    let result = kill_rounds(tree, start, start + timeout);
    let thawed = tree.set_frozen(false);
    result.and(thawed)
}

fn kill_rounds(tree: &dyn Freezable, start: Instant, deadline: Instant) -> Result<(), CgroupError> {
    loop {
        let pids = tree.procs()?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::KillTimeout {
                path: tree.path().to_path_buf(),
                pids,
                waited: start.elapsed(),
            });
        }
        tree.set_frozen(true)?;
        let frozen = poll_until(round_end(deadline, FREEZE_WAIT), || tree.is_frozen())?;
        if !frozen {
            tracing::debug!(cgroup = %tree.path().display(), "freezer still freezing; killing anyway");
        }
        // Listed again once frozen: nothing can have forked since.
        for pid in tree.procs()? {
            tree.sigkill(pid)?;
        }
        tree.set_frozen(false)?;
        poll_until(round_end(deadline, SETTLE_WAIT), || {
            tree.procs().map(|p| p.is_empty())
        })?;
    }
}

fn round_end(deadline: Instant, wait: Duration) -> Instant {
    deadline.min(Instant::now() + wait)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;

    /// A cgroup of simulated processes. Forkers add a child whenever they are listed while not
    /// frozen (a fork bomb racing the killer); a killed task dies when the cgroup is thawed (as on
    /// the v1 freezer); immortal ones never die.
    #[derive(Default)]
    struct Fake {
        path: PathBuf,
        state: RefCell<State>,
    }

    #[derive(Default)]
    struct State {
        live: BTreeSet<u32>,
        forkers: BTreeSet<u32>,
        immortal: BTreeSet<u32>,
        killed: BTreeSet<u32>,
        frozen: bool,
        /// The freezer never reaches FROZEN (a task in D state).
        stuck_freezing: bool,
        next_pid: u32,
        log: Vec<String>,
    }

    impl Freezable for Fake {
        fn path(&self) -> &Path {
            &self.path
        }
        fn procs(&self) -> Result<Vec<u32>, CgroupError> {
            let mut s = self.state.borrow_mut();
            if !s.frozen {
                let forkers: Vec<u32> = s.forkers.intersection(&s.live).copied().collect();
                for _ in forkers {
                    s.next_pid += 1;
                    let child = s.next_pid;
                    s.live.insert(child);
                    s.forkers.insert(child);
                }
            }
            Ok(s.live.iter().copied().collect())
        }
        fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
            let mut s = self.state.borrow_mut();
            s.log.push(if frozen { "freeze" } else { "thaw" }.into());
            s.frozen = frozen;
            if !frozen {
                let dead: Vec<u32> = s.killed.difference(&s.immortal).copied().collect();
                for pid in dead {
                    s.live.remove(&pid);
                }
            }
            Ok(())
        }
        fn is_frozen(&self) -> Result<bool, CgroupError> {
            let s = self.state.borrow();
            Ok(s.frozen && !s.stuck_freezing)
        }
        fn sigkill(&self, pid: u32) -> Result<(), CgroupError> {
            let mut s = self.state.borrow_mut();
            let entry = format!("kill {pid} frozen={}", s.frozen);
            s.log.push(entry);
            s.killed.insert(pid);
            Ok(())
        }
    }

    fn fake(live: &[u32], forkers: &[u32], immortal: &[u32]) -> Fake {
        let fake = Fake::default();
        {
            let mut s = fake.state.borrow_mut();
            s.live = live.iter().copied().collect();
            s.forkers = forkers.iter().copied().collect();
            s.immortal = immortal.iter().copied().collect();
            s.next_pid = 1000;
        }
        fake
    }

    #[test]
    fn kills_a_fork_bomb_while_frozen_and_ends_thawed() {
        let tree = fake(&[10, 11], &[11], &[]);
        freeze_and_kill(&tree, Duration::from_secs(2)).unwrap();
        let s = tree.state.borrow();
        assert!(s.live.is_empty(), "left: {:?}", s.live);
        assert!(!s.frozen);
        assert!(
            s.log
                .iter()
                .filter(|l| l.starts_with("kill"))
                .all(|l| l.ends_with("frozen=true")),
            "every kill happens while frozen: {:?}",
            s.log
        );
        assert_eq!(s.log.first().map(String::as_str), Some("freeze"));
        assert_eq!(s.log.last().map(String::as_str), Some("thaw"));
    }

    #[test]
    fn an_empty_cgroup_is_only_thawed() {
        let tree = fake(&[], &[], &[]);
        freeze_and_kill(&tree, Duration::from_secs(2)).unwrap();
        assert_eq!(tree.state.borrow().log, ["thaw"]);
    }

    #[test]
    fn a_freezer_stuck_in_freezing_still_kills() {
        let tree = fake(&[10, 11, 12], &[], &[]);
        tree.state.borrow_mut().stuck_freezing = true;
        freeze_and_kill(&tree, Duration::from_secs(2)).unwrap();
        assert!(tree.state.borrow().live.is_empty());
    }

    #[test]
    fn gives_up_after_the_deadline_naming_what_is_left() {
        let tree = fake(&[10, 11], &[], &[11]);
        let started = Instant::now();
        let err = freeze_and_kill(&tree, Duration::from_millis(150)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        match err {
            CgroupError::KillTimeout { pids, .. } => assert_eq!(pids, [11]),
            other => panic!("expected a timeout, got {other}"),
        }
        assert!(!tree.state.borrow().frozen, "left thawed after a timeout");
    }
}
