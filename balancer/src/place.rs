//! Choosing the node for the next job.

use std::cmp::Ordering;

use corral_protocol::NodeStatus;

/// The index of the node that should run the next job, or `None` when no node has a free slot.
///
/// Order of preference: more free slots, then lower CPU utilization, then more available memory,
/// then the node id (so equal nodes are chosen deterministically).
pub fn choose_node(nodes: &[NodeStatus]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.free_slots > 0)
        .max_by(|(_, a), (_, b)| preference(a, b))
        .map(|(i, _)| i)
}

/// `Greater` when `a` is the better node.
fn preference(a: &NodeStatus, b: &NodeStatus) -> Ordering {
    a.free_slots
        .cmp(&b.free_slots)
        .then_with(|| {
            // Lower utilization is better; NaN (a broken report) counts as fully busy.
            let ua = sane(a.cpu_utilization);
            let ub = sane(b.cpu_utilization);
            ub.partial_cmp(&ua).unwrap_or(Ordering::Equal)
        })
        .then_with(|| a.memory_available_bytes.cmp(&b.memory_available_bytes))
        .then_with(|| b.node.cmp(&a.node))
}

fn sane(u: f64) -> f64 {
    if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_protocol::NodeId;

    fn node(name: &str, free: u32, cpu: f64, mem: u64) -> NodeStatus {
        NodeStatus {
            node: NodeId(name.into()),
            slots: 8,
            free_slots: free,
            cpu_utilization: cpu,
            memory_available_bytes: mem,
            images: vec![],
        }
    }

    #[test]
    fn no_free_slot_no_node() {
        assert_eq!(choose_node(&[]), None);
        assert_eq!(choose_node(&[node("a", 0, 0.0, 1 << 30)]), None);
    }

    #[test]
    fn free_slots_first_then_cpu_then_memory() {
        let nodes = [
            node("a", 1, 0.0, 8 << 30),
            node("b", 3, 0.9, 1 << 30),
            node("c", 3, 0.2, 1 << 30),
            node("d", 3, 0.2, 2 << 30),
        ];
        assert_eq!(choose_node(&nodes), Some(3));
        assert_eq!(choose_node(&nodes[..3]), Some(2));
        assert_eq!(choose_node(&nodes[..2]), Some(1));
    }

    #[test]
    fn nan_utilization_counts_as_busy_and_ties_are_deterministic() {
        let nodes = [node("b", 2, f64::NAN, 0), node("a", 2, 0.5, 0)];
        assert_eq!(choose_node(&nodes), Some(1));
        let tie = [node("b", 2, 0.5, 0), node("a", 2, 0.5, 0)];
        assert_eq!(choose_node(&tie), Some(1));
    }
}
