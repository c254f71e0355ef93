//! Several lockspaces per node: each has its own members (the cluster
//! members that joined it), its directory hashes over them only, the same
//! name in two lockspaces is two resources, joins and leaves run only that
//! lockspace's recovery events, and a clean lockspace leave releases
//! nothing of the others' and puts no recovery hold.

use rdlm::{Callback, Flags, LsEvent, MemberConfig, Mode, Node, Output, Timing, DEFAULT_LOCKSPACE};
use std::collections::VecDeque;

const LVB: usize = 32;

struct Net {
    now: u64,
    nodes: Vec<Option<Node>>,
    queue: VecDeque<(u32, rdlm::wire::Message)>,
    callbacks: Vec<(u32, Callback)>,
    events: Vec<(u32, String, LsEvent)>,
}

impl Net {
    fn new(spaces: &[&[&str]]) -> Net {
        let cfg = MemberConfig {
            nodes: (1..=spaces.len() as u32).collect(),
            timing: Timing {
                heartbeat: 10,
                failure_timeout: 50,
                lease: 100,
            },
            two_node: false,
        };
        let nodes = spaces
            .iter()
            .enumerate()
            .map(|(i, ls)| {
                let id = i as u32 + 1;
                let mut n = Node::with_lockspaces(id, u64::from(id) << 32, 0, cfg.clone(), LVB, ls)
                    .unwrap();
                n.set_recovery_hold(true);
                Some(n)
            })
            .collect();
        Net {
            now: 0,
            nodes,
            queue: VecDeque::new(),
            callbacks: Vec::new(),
            events: Vec::new(),
        }
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes[(id - 1) as usize].as_mut().unwrap()
    }

    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            let id = i as u32 + 1;
            let Some(n) = self.nodes[i].as_mut() else {
                continue;
            };
            for o in n.drain() {
                match o {
                    Output::Send { to, msg } => self.queue.push_back((to, msg)),
                    Output::Callback(cb) => self.callbacks.push((id, cb)),
                    Output::Lockspace { name, event } => self.events.push((id, name, event)),
                    Output::Membership(_) => {}
                }
            }
        }
    }

    /// Runs `ms` simulated milliseconds: every message is delivered at once.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += 1;
            let now = self.now;
            for n in self.nodes.iter_mut().flatten() {
                n.tick(now);
            }
            self.collect();
            while let Some((to, msg)) = self.queue.pop_front() {
                if let Some(n) = self.nodes[(to - 1) as usize].as_mut() {
                    n.receive(now, msg.encode_decode());
                }
                self.collect();
            }
        }
    }

    fn members(&self, id: u32, ls: &str) -> Vec<u32> {
        self.nodes[(id - 1) as usize]
            .as_ref()
            .unwrap()
            .lockspace_named(ls)
            .map(|l| l.members().to_vec())
            .unwrap_or_default()
    }

    fn granted(&self, node: u32, lkid: u64) -> bool {
        self.callbacks.iter().any(|(n, cb)| {
            *n == node && matches!(cb, Callback::Granted { lkid: l, .. } if *l == lkid)
        })
    }

    fn lock(&mut self, node: u32, ls: &str, name: &[u8], mode: Mode) -> u64 {
        let now = self.now;
        let l = self
            .node(node)
            .lock_in(now, ls, 0, name, mode, Flags::NONE, None)
            .unwrap();
        self.collect();
        l
    }
}

trait RoundTrip {
    fn encode_decode(self) -> Self;
}

impl RoundTrip for rdlm::wire::Message {
    fn encode_decode(self) -> Self {
        rdlm::wire::Message::decode(&self.encode()).unwrap()
    }
}

#[test]
fn lockspaces_have_their_own_members_directories_and_recoveries() {
    let mut net = Net::new(&[&["fsA", "fsB"], &["fsA", "fsB"], &["fsA"]]);
    net.run(600);
    assert_eq!(net.members(1, "fsA"), [1, 2, 3]);
    assert_eq!(net.members(1, "fsB"), [1, 2]);
    assert_eq!(net.members(3, "fsB"), Vec::<u32>::new());
    // fsB's directory never lands on node 3.
    for i in 0..200 {
        let name = format!("inode/{i}");
        let dir = net
            .node(1)
            .lockspace_named("fsB")
            .unwrap()
            .dir_node(name.as_bytes());
        assert!(dir == 1 || dir == 2, "{name} hashes to node {dir} in fsB");
    }
    // One name, two lockspaces: two resources, both EX at once.
    let a = net.lock(1, "fsA", b"inode/7", Mode::EX);
    let b = net.lock(2, "fsB", b"inode/7", Mode::EX);
    net.run(20);
    assert!(
        net.granted(1, a) && net.granted(2, b),
        "{:?}",
        net.callbacks
    );
    let c = net.lock(3, "fsA", b"inode/7", Mode::EX);
    net.run(20);
    assert!(!net.granted(3, c), "EX granted twice in fsA");
    // Not joined: refused; the default lockspace was not joined either.
    let now = net.now;
    assert!(net
        .node(3)
        .lock_in(now, "fsB", 0, b"x", Mode::NL, Flags::NONE, None)
        .is_err());
    assert!(net.node(3).lockspace_named(DEFAULT_LOCKSPACE).is_none());

    // Node 3 joins fsB: only fsB reports a recovery.
    net.events.clear();
    net.node(3).join_lockspace("fsB").unwrap();
    net.run(300);
    assert_eq!(net.members(1, "fsB"), [1, 2, 3]);
    let preps: Vec<&(u32, String, LsEvent)> = net
        .events
        .iter()
        .filter(|e| matches!(e.2, LsEvent::RecoverPrep { .. }))
        .collect();
    assert_eq!(preps.len(), 3, "{:?}", net.events);
    assert!(preps.iter().all(|e| e.1 == "fsB"), "{:?}", net.events);
    assert!(
        net.events
            .iter()
            .filter(|e| matches!(e.2, LsEvent::RecoverDone { .. }))
            .count()
            == 3
    );
    let d = net.lock(3, "fsB", b"rgrp/1", Mode::PR);
    net.run(20);
    assert!(net.granted(3, d));

    // Node 2 leaves fsA, where node 1 holds EX and node 3 waits (it may:
    // its only lock is in fsB, which it may not leave).
    net.events.clear();
    let now = net.now;
    assert!(
        net.node(2).leave_lockspace(now, "fsB").is_err(),
        "left with a lock"
    );
    net.node(2).leave_lockspace(now, "fsA").unwrap();
    net.run(300);
    assert_eq!(net.members(1, "fsA"), [1, 3]);
    assert!(net.node(2).lockspace_named("fsA").is_none());
    assert!(net
        .events
        .iter()
        .any(|e| e.0 == 2 && e.1 == "fsA" && e.2 == LsEvent::Left));
    for (id, ls, e) in &net.events {
        if let LsEvent::RecoverPrep { departed, left, .. } = e {
            assert_eq!(ls, "fsA", "node {id}: {e:?}");
            assert_eq!(
                departed, left,
                "node {id}: a clean leave counted as a failure"
            );
        }
    }
    for id in [1, 3] {
        let l = net.node(id).lockspace_named("fsA").unwrap();
        assert_eq!(
            l.pending_recovery().count(),
            0,
            "node {id} holds for a leaver"
        );
    }
    // Node 1's EX survived the leave; node 3 still waits for it.
    assert!(!net.granted(3, c));
    let now = net.now;
    net.node(1).unlock(now, a, Flags::NONE, None).unwrap();
    net.run(20);
    assert!(
        net.granted(3, c),
        "the waiter was not granted after the leave"
    );

    // Node 3 dies: fsA and fsB report it, with a hold in each.
    net.events.clear();
    net.nodes[2] = None;
    net.run(600);
    for ls in ["fsA", "fsB"] {
        assert!(
            net.events.iter().any(|(id, l, e)| *id == 1
                && l == ls
                && matches!(e, LsEvent::RecoverPrep { departed, left, .. } if departed.iter().any(|m| m.id == 3) && left.is_empty())),
            "{ls}: {:?}",
            net.events
        );
    }
    let l = net.node(1).lockspace_named("fsB").unwrap();
    assert_eq!(l.pending_recovery().count(), 1);
    // Node 2 was never in fsA again: no fsA event reaches it.
    assert!(!net.events.iter().any(|e| e.0 == 2 && e.1 == "fsA"));
}

#[test]
fn lock_ids_are_unique_across_lockspaces_and_a_rejoin_is_a_new_member() {
    let mut net = Net::new(&[&["fsA", "fsB"], &["fsA"], &["fsA"]]);
    net.run(600);
    let a = net.lock(1, "fsA", b"n", Mode::EX);
    let b = net.lock(1, "fsB", b"n", Mode::EX);
    assert_ne!(a, b);
    net.run(20);
    assert!(net.granted(1, a) && net.granted(1, b));
    let now = net.now;
    net.node(1).unlock(now, b, Flags::NONE, None).unwrap();
    net.run(20);
    assert!(net.node(1).has_lock(a) && !net.node(1).has_lock(b));
    // Leave and join fsA again on node 2: the others see it go and come
    // back, and nothing is held for it.
    let now = net.now;
    net.node(2).leave_lockspace(now, "fsA").unwrap();
    assert!(
        net.node(2).join_lockspace("fsA").is_err(),
        "joined while still leaving"
    );
    net.run(300);
    net.node(2).join_lockspace("fsA").unwrap();
    net.run(300);
    assert_eq!(net.members(1, "fsA"), [1, 2, 3]);
    assert_eq!(
        net.node(1)
            .lockspace_named("fsA")
            .unwrap()
            .pending_recovery()
            .count(),
        0
    );
    let c = net.lock(2, "fsA", b"n", Mode::PR);
    net.run(20);
    assert!(!net.granted(2, c), "PR granted next to EX");
    let now = net.now;
    net.node(1).unlock(now, a, Flags::NONE, None).unwrap();
    net.run(20);
    assert!(net.granted(2, c));
}
