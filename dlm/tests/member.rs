//! Membership on its own: views form, slots stay, a silent node is dropped
//! only after its lease has run out, a cut-off node gives up its locks in
//! time and comes back as a new incarnation.

use rdlm::member::{MemberOutput, Membership};
use rdlm::wire::Message;
use rdlm::{MemberConfig, MemberEvent, Timing, View};
use std::collections::{BTreeSet, VecDeque};

const T: Timing = Timing {
    heartbeat: 10,
    failure_timeout: 50,
    lease: 100,
};

struct Net {
    now: u64,
    nodes: Vec<Membership>,
    queue: VecDeque<(u32, Message)>,
    cut: BTreeSet<u32>,
    events: Vec<(u64, u32, MemberEvent)>,
}

impl Net {
    fn new(n: u32, two_node: bool) -> Net {
        let cfg = MemberConfig {
            nodes: (1..=n).collect(),
            timing: T,
            two_node,
        };
        Net {
            now: 0,
            nodes: (1..=n)
                .map(|id| Membership::new(id, 100 * u64::from(id), 0, cfg.clone()).unwrap())
                .collect(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    fn pump(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                let id = i as u32 + 1;
                for o in self.nodes[i].drain() {
                    match o {
                        MemberOutput::Send { to, msg } => {
                            if !self.cut.contains(&id) && !self.cut.contains(&to) {
                                self.queue.push_back((to, msg));
                            }
                        }
                        MemberOutput::Event(e) => self.events.push((self.now, id, e)),
                    }
                }
            }
            let Some((to, msg)) = self.queue.pop_front() else {
                break;
            };
            let now = self.now;
            self.nodes[(to - 1) as usize].receive(now, msg);
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

    fn view(&self, id: u32) -> Option<&View> {
        self.nodes[(id - 1) as usize].view()
    }
}

#[test]
fn a_starting_cluster_forms_one_view_with_slots_after_listening_one_lease() {
    let mut net = Net::new(3, false);
    net.run(T.lease - 1);
    assert!(
        net.view(1).is_none(),
        "a new incarnation listens for a lease first"
    );
    net.run(200);
    let v = net.view(1).unwrap().clone();
    assert_eq!(v.ids(), [1, 2, 3]);
    assert_eq!(
        v.members.iter().map(|m| m.slot).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for id in 2..=3 {
        assert_eq!(net.view(id), Some(&v));
    }
    for n in &net.nodes {
        assert!(n.quorate(net.now));
    }
}

#[test]
fn a_cut_off_node_loses_its_lease_before_the_others_drop_it() {
    let mut net = Net::new(5, false);
    net.run(400);
    let before = net.view(1).unwrap().clone();
    let slots: Vec<(u32, u32)> = before.members.iter().map(|m| (m.id, m.slot)).collect();
    net.cut.insert(3);
    let cut_at = net.now;
    net.run(1000);
    let lost = net
        .events
        .iter()
        .find(|(_, id, e)| *id == 3 && matches!(e, MemberEvent::Lost { .. }))
        .map(|(t, ..)| *t)
        .expect("node 3 noticed it lost its lease");
    assert!(
        lost <= cut_at + T.lease,
        "lease lost at {lost}, cut at {cut_at}"
    );
    let dropped = net
        .events
        .iter()
        .find(|(_, id, e)| {
            *id == 1
                && matches!(e, MemberEvent::Committed { departed, .. } if departed.iter().any(|m| m.id == 3))
        })
        .map(|(t, ..)| *t)
        .expect("the majority dropped node 3");
    assert!(
        dropped > lost,
        "the majority dropped node 3 at {dropped} while it believed its locks until {lost}"
    );
    let after = net.view(1).unwrap().clone();
    assert_eq!(after.ids(), [1, 2, 4, 5]);
    for m in &after.members {
        assert!(
            slots.contains(&(m.id, m.slot)),
            "slot of node {} changed",
            m.id
        );
    }
    // Healed: node 3 comes back as a new incarnation.
    net.cut.clear();
    net.run(1000);
    let back = net.view(1).unwrap();
    assert_eq!(back.ids(), [1, 2, 3, 4, 5]);
    let m3 = back.member(3).unwrap();
    assert_ne!(m3.incarnation, before.member(3).unwrap().incarnation);
    assert_eq!(net.view(3), Some(back));
}

#[test]
fn a_minority_never_forms_a_view() {
    let mut net = Net::new(5, false);
    net.run(400);
    net.cut.extend([4, 5]);
    net.run(1000);
    // 4 and 5 cannot even hear each other here; with quorum 3 they could
    // not form a view anyway.
    assert!(net.view(4).is_none() && net.view(5).is_none());
    assert_eq!(net.view(1).unwrap().ids(), [1, 2, 3]);
}

#[test]
fn two_node_mode_keeps_both_halves_running() {
    let mut net = Net::new(2, true);
    net.run(400);
    assert_eq!(net.view(1).unwrap().ids(), [1, 2]);
    net.cut.insert(2);
    net.run(1000);
    // Node 1 goes on alone (safety then rests on storage fencing).
    assert_eq!(net.view(1).unwrap().ids(), [1]);
    assert!(net.nodes[0].quorate(net.now));
}

#[test]
fn bad_configurations_are_refused() {
    let ok = MemberConfig {
        nodes: vec![1, 2, 3],
        timing: T,
        two_node: false,
    };
    assert!(ok.validate(1).is_ok());
    assert!(ok.validate(4).unwrap_err().contains("not configured"));
    let dup = MemberConfig {
        nodes: vec![1, 1, 2],
        ..ok.clone()
    };
    assert!(dup.validate(1).is_err());
    let two = MemberConfig {
        two_node: true,
        ..ok.clone()
    };
    assert!(two.validate(1).unwrap_err().contains("two-node"));
    let fast = MemberConfig {
        timing: Timing {
            heartbeat: 40,
            failure_timeout: 50,
            lease: 100,
        },
        ..ok
    };
    assert!(fast.validate(1).is_err());
}

#[test]
fn a_node_that_leaves_cleanly_is_dropped_without_waiting_out_its_lease() {
    let mut net = Net::new(5, false);
    net.run(400);
    assert_eq!(net.view(1).unwrap().ids(), [1, 2, 3, 4, 5]);
    let left_at = net.now;
    net.nodes[3].leave();
    net.run(300);
    let dropped = net
        .events
        .iter()
        .find(|(t, id, e)| {
            *t >= left_at
                && *id == 1
                && matches!(e, MemberEvent::Committed { departed, .. } if departed.iter().any(|m| m.id == 4))
        })
        .map(|(t, ..)| *t)
        .expect("node 4 was dropped");
    assert!(
        dropped < left_at + T.failure_timeout,
        "dropped at {dropped}, left at {left_at}: it should not need the failure timeout nor the lease"
    );
    assert_eq!(net.view(1).unwrap().ids(), [1, 2, 3, 5]);
    assert!(
        net.events.iter().any(|(_, id, e)| *id == 1
            && matches!(e, MemberEvent::Committed { left, .. } if left.iter().any(|m| m.id == 4))),
        "node 4 is reported as having left cleanly"
    );
}
