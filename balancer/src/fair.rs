//! Fair sharing of slots between tenants.
//!
//! The next job to dispatch comes from the tenant with the fewest running jobs; among tenants with
//! equally many, the one served least recently goes first (round-robin). Within a tenant, jobs run
//! oldest first (the caller keeps each tenant's queue in order). So a tenant with a burst of 1,000
//! queued jobs takes turns with a tenant that queued one: the single job waits at most until one
//! slot frees, about one job's duration.

/// What the fair-share choice needs to know about one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLoad {
    /// Jobs of this tenant running now.
    pub running: u32,
    /// Most jobs this tenant may run at once (its quota); `None`: no limit.
    pub max_concurrent: Option<u32>,
    /// Whether the tenant has a queued job.
    pub has_queued: bool,
    /// When the tenant was last served, as a counter the caller increments on every dispatch
    /// (0: never).
    pub last_served: u64,
}

impl TenantLoad {
    fn eligible(&self) -> bool {
        self.has_queued && self.max_concurrent.is_none_or(|m| self.running < m)
    }
}

/// The index of the tenant whose oldest queued job should be dispatched next, or `None` when no
/// tenant has a queued job it may start now.
pub fn choose_tenant(tenants: &[TenantLoad]) -> Option<usize> {
    tenants
        .iter()
        .enumerate()
        .filter(|(_, t)| t.eligible())
        .min_by_key(|(i, t)| (t.running, t.last_served, *i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn load(running: u32, has_queued: bool, last_served: u64) -> TenantLoad {
        TenantLoad {
            running,
            max_concurrent: None,
            has_queued,
            last_served,
        }
    }

    #[test]
    fn fewest_running_first_then_least_recently_served() {
        assert_eq!(choose_tenant(&[]), None);
        assert_eq!(choose_tenant(&[load(0, false, 0)]), None);
        assert_eq!(
            choose_tenant(&[load(3, true, 1), load(1, true, 9)]),
            Some(1)
        );
        assert_eq!(
            choose_tenant(&[load(1, true, 7), load(1, true, 4)]),
            Some(1)
        );
    }

    #[test]
    fn a_tenant_at_its_quota_waits() {
        let mut capped = load(2, true, 0);
        capped.max_concurrent = Some(2);
        assert_eq!(choose_tenant(&[capped, load(5, true, 9)]), Some(1));
        assert_eq!(choose_tenant(&[capped]), None);
    }

    /// A discrete-time simulation: `slots` slots, jobs of `duration` ticks. Tenant 0 queues
    /// `burst` jobs at tick 0; tenant 1 queues one job at `late`. Returns the tick at which
    /// tenant 1's job started and the order of dispatch.
    fn simulate(slots: usize, duration: u64, burst: usize, late: u64) -> (u64, Vec<usize>) {
        let mut queues: Vec<VecDeque<u64>> = vec![(0..burst as u64).collect(), VecDeque::new()];
        let mut loads = vec![load(0, true, 0), load(0, false, 0)];
        let mut running: Vec<(u64, usize)> = Vec::new(); // (ends at, tenant)
        let (mut served, mut order, mut started_b) = (0u64, Vec::new(), None);
        for tick in 0..(burst as u64 * duration) {
            if tick == late {
                queues[1].push_back(0);
            }
            running.retain(|&(end, t)| {
                if end <= tick {
                    loads[t].running -= 1;
                }
                end > tick
            });
            while running.len() < slots {
                for (t, l) in loads.iter_mut().enumerate() {
                    l.has_queued = !queues[t].is_empty();
                }
                let Some(t) = choose_tenant(&loads) else {
                    break;
                };
                queues[t].pop_front();
                served += 1;
                loads[t].running += 1;
                loads[t].last_served = served;
                running.push((tick + duration, t));
                order.push(t);
                if t == 1 {
                    started_b = Some(tick);
                }
            }
            if started_b.is_some() && queues[0].is_empty() {
                break;
            }
        }
        (started_b.expect("tenant 1's job never ran"), order)
    }

    #[test]
    fn a_burst_does_not_delay_another_tenants_single_job_by_more_than_one_job() {
        for slots in [1, 2, 8] {
            let duration = 10;
            let late = 3;
            let (started, _) = simulate(slots, duration, 1000, late);
            assert!(
                started <= late + duration,
                "{slots} slots: started at {started}, queued at {late}"
            );
        }
    }

    #[test]
    fn a_job_queued_first_is_dispatched_among_the_first_assignments() {
        let (started, order) = simulate(2, 10, 200, 0);
        assert_eq!(started, 0);
        let pos = order.iter().position(|&t| t == 1).unwrap();
        assert!(pos < 2, "tenant 1 was assignment {pos}");
    }
}
