//! Deadlock detection across nodes: two owners on different nodes each
//! hold one resource and wait for the other's; the detector finds the
//! cycle, fails one request with `LockError::Cycle` naming the locks, and
//! the other goes ahead once the victim's owner lets go. Owners merely
//! queued behind a holder are never chosen.

use rdlm::{Callback, Flags, LockError, Lockspace, Mode, Output};

const LVB: usize = 32;

struct Net {
    nodes: Vec<Lockspace>,
    now: u64,
    /// (node, callback)
    seen: Vec<(u32, Callback)>,
}

impl Net {
    fn new(n: u32, interval: u64) -> Net {
        let members: Vec<u32> = (1..=n).collect();
        let nodes = members
            .iter()
            .map(|&id| {
                let mut ls = Lockspace::new(id, &members, 1, LVB).unwrap();
                ls.set_deadlock_detection(interval);
                ls
            })
            .collect();
        Net {
            nodes,
            now: 0,
            seen: Vec::new(),
        }
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                for o in self.nodes[i].drain() {
                    match o {
                        Output::Send { to, msg } => {
                            moved = true;
                            self.nodes[(to - 1) as usize].receive(msg);
                        }
                        Output::Callback(cb) => self.seen.push((i as u32 + 1, cb)),
                        Output::Membership(_) | Output::Lockspace { .. } => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += 1;
            for n in &mut self.nodes {
                n.tick(self.now);
            }
            self.pump();
        }
    }

    fn granted(&self, node: u32, lkid: u64) -> bool {
        self.seen.iter().any(|(n, cb)| {
            *n == node && matches!(cb, Callback::Granted { lkid: l, .. } if *l == lkid)
        })
    }

    fn failed(&self, node: u32, lkid: u64) -> Option<LockError> {
        self.seen.iter().find_map(|(n, cb)| match cb {
            Callback::Failed { lkid: l, error } if *n == node && *l == lkid => Some(error.clone()),
            _ => None,
        })
    }
}

#[test]
fn a_cycle_across_two_nodes_is_broken_by_failing_one_request() {
    let mut net = Net::new(3, 10);
    // Owner 7 on node 2 and owner 9 on node 3.
    let a1 = net.nodes[1]
        .lock_as(7, b"x", Mode::EX, Flags::NONE, None)
        .unwrap();
    let b1 = net.nodes[2]
        .lock_as(9, b"y", Mode::EX, Flags::NONE, None)
        .unwrap();
    net.pump();
    assert!(net.granted(2, a1) && net.granted(3, b1));
    let a2 = net.nodes[1]
        .lock_as(7, b"y", Mode::EX, Flags::NONE, None)
        .unwrap();
    let b2 = net.nodes[2]
        .lock_as(9, b"x", Mode::EX, Flags::NONE, None)
        .unwrap();
    net.pump();
    assert!(!net.granted(2, a2) && !net.granted(3, b2));
    net.run(100);
    let fa = net.failed(2, a2);
    let fb = net.failed(3, b2);
    let (victim_node, victim_held, other_node, other_lkid) = match (&fa, &fb) {
        (None, Some(_)) => (3, b1, 2, a2),
        (Some(_), None) => (2, a1, 3, b2),
        _ => panic!("exactly one request must fail: {fa:?} {fb:?}"),
    };
    let err = fa.or(fb).unwrap();
    let LockError::Cycle { cycle } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(cycle.len(), 2, "{err}");
    assert!(err.to_string().contains("cycle"), "{err}");
    // The victim's owner gives up what it holds; the other goes ahead.
    net.nodes[(victim_node - 1) as usize]
        .unlock(victim_held, Flags::NONE, None)
        .unwrap();
    net.pump();
    assert!(net.granted(other_node, other_lkid));
    assert_eq!(
        net.nodes[0].deadlock_victims(),
        1,
        "the detector (node 1) chose once"
    );
}

#[test]
fn waiting_in_line_is_not_a_deadlock() {
    let mut net = Net::new(3, 10);
    let h = net.nodes[0]
        .lock_as(1, b"x", Mode::EX, Flags::NONE, None)
        .unwrap();
    net.pump();
    // Owner 2 holds y, which owner 3 waits for, and both wait for x: a
    // chain, not a cycle.
    let y = net.nodes[1]
        .lock_as(2, b"y", Mode::EX, Flags::NONE, None)
        .unwrap();
    net.pump();
    let w1 = net.nodes[1]
        .lock_as(2, b"x", Mode::EX, Flags::NONE, None)
        .unwrap();
    net.pump();
    let w2 = net.nodes[2]
        .lock_as(3, b"x", Mode::PR, Flags::NONE, None)
        .unwrap();
    net.pump();
    let w3 = net.nodes[2]
        .lock_as(3, b"y", Mode::EX, Flags::NONE, None)
        .unwrap();
    net.run(200);
    assert!(net.granted(1, h) && net.granted(2, y));
    for (n, l) in [(2, w1), (3, w2), (3, w3)] {
        assert!(net.failed(n, l).is_none(), "{n}:{l} failed");
    }
    assert_eq!(net.nodes[0].deadlock_victims(), 0);
    net.nodes[0].unlock(h, Flags::NONE, None).unwrap();
    net.pump();
    assert!(net.granted(2, w1));
}
