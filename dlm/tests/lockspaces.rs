//! Several lockspaces per node: each has its own members (the cluster
//! members that joined it), its directory hashes over them only, the same
//! name in two lockspaces is two resources, joins and leaves run only that
//! lockspace's recovery events, and a clean lockspace leave releases
//! nothing of the others' and puts no recovery hold. Each lockspace has
//! its own LVB length, which its members agree on: a join with another
//! length is refused and the members are not disturbed.

use rdlm::wire::{Body, Message};
use rdlm::{
    Callback, Flags, LockError, LsEvent, LsOptions, MemberConfig, Mode, Node, Output, Timing,
    DEFAULT_LOCKSPACE,
};
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

    /// The last grant of `lkid` on `node`: (mode, LVB, valid).
    fn grant(&self, node: u32, lkid: u64) -> Option<(Mode, Option<Vec<u8>>, bool)> {
        self.callbacks.iter().rev().find_map(|(n, cb)| match cb {
            Callback::Granted {
                lkid: l,
                mode,
                lvb,
                lvb_valid,
                ..
            } if *n == node && *l == lkid => Some((*mode, lvb.clone(), *lvb_valid)),
            _ => None,
        })
    }

    fn lock_flags(&mut self, node: u32, ls: &str, name: &[u8], mode: Mode, flags: Flags) -> u64 {
        let now = self.now;
        let l = self
            .node(node)
            .lock_in(now, ls, 0, name, mode, flags, None)
            .unwrap();
        self.collect();
        l
    }

    fn convert(&mut self, node: u32, lkid: u64, mode: Mode, lvb: Option<Vec<u8>>) {
        let now = self.now;
        self.node(node)
            .convert(now, lkid, mode, Flags::VALBLK, lvb)
            .unwrap();
        self.collect();
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

fn join_fs(net: &mut Net, node: u32, lvb_len: usize) -> Result<(), LockError> {
    let r = net
        .node(node)
        .join_lockspace_with("fs", LsOptions { lvb_len });
    net.collect();
    r
}

/// Writes `value` into `ls`'s LVB of `name` under EX on `writer` (then
/// down to NL), and reads it back under PR on `reader`.
fn write_then_read(net: &mut Net, ls: &str, name: &[u8], writer: u32, reader: u32, value: &[u8]) {
    let w = net.lock_flags(writer, ls, name, Mode::EX, Flags::VALBLK);
    net.run(20);
    assert_eq!(net.grant(writer, w).map(|g| g.0), Some(Mode::EX));
    net.convert(writer, w, Mode::NL, Some(value.to_vec()));
    net.run(20);
    let r = net.lock_flags(reader, ls, name, Mode::PR, Flags::VALBLK);
    net.run(20);
    assert_eq!(
        net.grant(reader, r),
        Some((Mode::PR, Some(value.to_vec()), true)),
        "{ls}: the LVB did not come back whole"
    );
    // The reader lets go; the writer keeps NL (the resource, and so its
    // LVB, stays).
    let now = net.now;
    net.node(reader).unlock(now, r, Flags::NONE, None).unwrap();
    net.run(20);
}

#[test]
fn lockspaces_have_their_own_lvb_lengths() {
    let mut net = Net::new(&[&["scripts"], &["scripts"], &["scripts"]]);
    for id in 1..=3 {
        join_fs(&mut net, id, 64).unwrap();
    }
    net.run(600);
    assert_eq!(net.members(1, "fs"), [1, 2, 3]);
    for id in 1..=3 {
        let n = net.node(id);
        assert_eq!(n.lockspace_named("fs").unwrap().lvb_len(), 64);
        assert_eq!(n.lockspace_named("scripts").unwrap().lvb_len(), 32);
    }
    let big: Vec<u8> = (0..64).map(|i| i as u8 ^ 0xa5).collect();
    let small: Vec<u8> = (0..32).map(|i| 200 - i as u8).collect();
    for name in [&b"sb"[..], b"rgrp/1", b"inode/77"] {
        write_then_read(&mut net, "fs", name, 1, 2, &big);
        write_then_read(&mut net, "scripts", name, 2, 3, &small);
    }
    // The other lockspace's length is refused before anything is sent.
    let w = net.lock_flags(3, "fs", b"other", Mode::EX, Flags::VALBLK);
    net.run(20);
    let now = net.now;
    let e = net
        .node(3)
        .convert(now, w, Mode::NL, Flags::VALBLK, Some(small.clone()))
        .unwrap_err();
    assert!(e.to_string().contains("64-byte"), "{e}");

    // A lock message carrying an LVB of the wrong length is a protocol
    // error and the LVB is not stored. A conversion to the master: it
    // fails, the resource keeps its 64 bytes.
    let m = net.node(1).lockspace_named("fs").unwrap().master_of(b"sb");
    let m = m.expect("node 1 wrote fs/sb: it knows the master");
    let h = if m == 1 { 2 } else { 1 };
    let lkid = net.lock_flags(h, "fs", b"sb", Mode::PR, Flags::VALBLK);
    net.run(20);
    assert!(net.granted(h, lkid));
    let ls = net.node(m).lockspace_named("fs").unwrap();
    let (generation, errors) = (ls.generation(), ls.stats().protocol_errors);
    let now = net.now;
    net.node(m).receive(
        now,
        Message {
            generation,
            from: h,
            lockspace: rdlm::lockspace_id("fs"),
            body: Body::Convert {
                lkid,
                name: b"sb".to_vec(),
                mode: Mode::NL,
                flags: Flags::VALBLK.0,
                lvb: Some(vec![9; 32]),
            },
        },
    );
    net.collect();
    net.run(20);
    let ls = net.node(m).lockspace_named("fs").unwrap();
    assert_eq!(ls.stats().protocol_errors, errors + 1);
    let sb = ls.resources().find(|r| r.name() == b"sb").unwrap();
    assert_eq!(sb.lvb().0, &big[..], "a foreign LVB was stored");
    assert!(net.node(h).has_lock(lkid));

    // A grant carrying one: the grant stands, without the LVB.
    let now = net.now;
    net.node(h).unlock(now, lkid, Flags::NONE, None).unwrap();
    let lkid = net.lock_flags(h, "fs", b"sb", Mode::PR, Flags::VALBLK);
    net.run(20);
    assert!(net.granted(h, lkid));
    let ls = net.node(h).lockspace_named("fs").unwrap();
    let (generation, errors) = (ls.generation(), ls.stats().protocol_errors);
    let now = net.now;
    net.node(h).receive(
        now,
        Message {
            generation,
            from: m,
            lockspace: rdlm::lockspace_id("fs"),
            body: Body::Granted {
                lkid,
                name: b"sb".to_vec(),
                mode: Mode::PR,
                seq: 1 << 40,
                demoted: false,
                lvb_valid: true,
                lvb: Some(vec![1; 32]),
            },
        },
    );
    net.collect();
    let ls = net.node(h).lockspace_named("fs").unwrap();
    assert_eq!(ls.stats().protocol_errors, errors + 1);
    assert_eq!(net.grant(h, lkid), Some((Mode::PR, None, false)));
}

#[test]
fn a_join_with_another_lvb_length_is_refused_and_the_members_go_on() {
    // Nodes 1 and 2 form the cluster (node 3 is down) with fs at 64 bytes.
    let mut net = Net::new(&[&[], &[], &[]]);
    net.nodes[2] = None;
    for id in 1..=2 {
        join_fs(&mut net, id, 64).unwrap();
    }
    net.run(600);
    assert_eq!(net.members(1, "fs"), [1, 2]);
    let big = vec![0x5a; 64];
    write_then_read(&mut net, "fs", b"sb", 1, 2, &big);
    let held = net.lock_flags(1, "fs", b"journal/1", Mode::EX, Flags::NONE);
    net.run(20);
    assert!(net.granted(1, held));

    // Node 3 starts with fs at 32 bytes: it joins the cluster, but its
    // first view shows fs's members with 64-byte LVBs, so it gives the
    // join up; a lock it asked for meanwhile fails with the same reason.
    let cfg = net.node(1).membership().config().clone();
    let mut n3 = Node::with_lockspaces(3, (3 << 32) + 1, 0, cfg, 32, &[]).unwrap();
    n3.join_lockspace_with("fs", LsOptions { lvb_len: 32 })
        .unwrap();
    net.nodes[2] = Some(n3);
    let early = net.lock(3, "fs", b"sb", Mode::PR);
    net.events.clear();
    net.run(600);
    let view = net.node(1).view().unwrap().clone();
    assert_eq!(view.ids(), [1, 2, 3], "node 3 is a cluster member");
    let reason = net
        .events
        .iter()
        .find_map(|(id, ls, e)| match e {
            LsEvent::Refused { reason } if *id == 3 && ls == "fs" => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no refusal: {:?}", net.events));
    for part in ["\"fs\"", "node 3", "32-byte", "64-byte", "[1, 2]"] {
        assert!(reason.contains(part), "{part}: {reason}");
    }
    assert!(net.callbacks.iter().any(|(n, cb)| *n == 3
        && matches!(cb, Callback::Failed { lkid, error: LockError::Invalid(t) } if *lkid == early && *t == reason)));
    assert!(net.node(3).lockspace_named("fs").is_none());
    let now = net.now;
    let e = net
        .node(3)
        .lock_in(now, "fs", 0, b"x", Mode::NL, Flags::NONE, None)
        .unwrap_err();
    assert!(
        e.to_string().contains("refused") && e.to_string().contains("64-byte"),
        "{e}"
    );

    // The members were not disturbed: no recovery of fs, the same
    // generation of it, the lock still held, and views stopped changing.
    assert!(
        !net.events.iter().any(|(id, ls, _)| *id != 3 && ls == "fs"),
        "{:?}",
        net.events
    );
    for id in [1, 2] {
        let ls = net.node(id).lockspace_named("fs").unwrap();
        assert_eq!(ls.members(), [1, 2]);
        assert!(!ls.is_recovering());
    }
    assert!(net.node(1).has_lock(held));
    let settled = net.node(1).view().unwrap().generation;
    net.run(300);
    assert_eq!(
        net.node(1).view().unwrap().generation,
        settled,
        "views churn"
    );

    // Now in the view: a second try with the wrong length fails at once.
    let e = join_fs(&mut net, 3, 32).unwrap_err();
    assert!(
        e.to_string().contains("64-byte") && e.to_string().contains("node 3"),
        "{e}"
    );
    assert!(net.node(3).lockspace_named("fs").is_none());

    // The lockspace keeps working for its members.
    write_then_read(&mut net, "fs", b"sb", 2, 1, &[0x11; 64]);

    // With the right length node 3 gets in and reads the 64-byte LVB.
    join_fs(&mut net, 3, 64).unwrap();
    net.run(300);
    assert_eq!(net.members(1, "fs"), [1, 2, 3]);
    let r = net.lock_flags(3, "fs", b"sb", Mode::PR, Flags::VALBLK);
    net.run(20);
    assert_eq!(
        net.grant(3, r),
        Some((Mode::PR, Some(vec![0x11; 64]), true))
    );
}

#[test]
fn simultaneous_first_joins_with_different_lengths_keep_the_lowest_node_s() {
    let mut net = Net::new(&[&[], &[], &[]]);
    join_fs(&mut net, 1, 32).unwrap();
    join_fs(&mut net, 2, 64).unwrap();
    join_fs(&mut net, 3, 32).unwrap();
    net.run(600);
    assert_eq!(net.members(1, "fs"), [1, 3]);
    assert!(net.node(2).lockspace_named("fs").is_none());
    assert!(net
        .events
        .iter()
        .any(|(id, ls, e)| *id == 2 && ls == "fs" && matches!(e, LsEvent::Refused { .. })));
    write_then_read(&mut net, "fs", b"x", 3, 1, &[3; 32]);
}
