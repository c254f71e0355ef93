//! Freeing unused resources: kept for the toss time (a re-lock sends no
//! lookup), then freed with a `Remove` to the directory; a request racing
//! with the remove is sent back to the directory; fencing tokens keep
//! growing across a free; the number of unused resources kept is bounded.

use rdlm::wire::{Body, Message};
use rdlm::{Callback, Flags, Lockspace, Mode, Output, MAX_TOSS};

const LVB: usize = 32;
const TOSS: u64 = 100;

fn cluster(n: u32) -> Vec<Lockspace> {
    let members: Vec<u32> = (1..=n).collect();
    members
        .iter()
        .map(|&i| {
            let mut ls = Lockspace::new(i, &members, 1, LVB).unwrap();
            ls.set_toss_time(TOSS);
            ls
        })
        .collect()
}

/// A name whose directory node is `dir`.
fn name_with_dir(ls: &Lockspace, dir: u32, tag: &str) -> Vec<u8> {
    (0..10_000u32)
        .map(|i| format!("{tag}/{i}").into_bytes())
        .find(|n| ls.dir_node(n) == dir)
        .unwrap()
}

/// Delivers every message until none is left; returns the callbacks per
/// node and every message delivered.
fn pump(nodes: &mut [Lockspace]) -> (Vec<(u32, Callback)>, Vec<Message>) {
    let mut cbs = Vec::new();
    let mut msgs = Vec::new();
    loop {
        let mut moved = false;
        for i in 0..nodes.len() {
            for o in nodes[i].drain() {
                match o {
                    Output::Send { to, msg } => {
                        moved = true;
                        msgs.push(msg.clone());
                        nodes[(to - 1) as usize].receive(msg);
                    }
                    Output::Callback(cb) => cbs.push((i as u32 + 1, cb)),
                    _ => {}
                }
            }
        }
        if !moved {
            return (cbs, msgs);
        }
    }
}

fn granted_seq(cbs: &[(u32, Callback)], node: u32, lkid: u64) -> u64 {
    cbs.iter()
        .find_map(|(n, cb)| match cb {
            Callback::Granted { lkid: l, seq, .. } if *n == node && *l == lkid => Some(*seq),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no grant of {node}:{lkid} in {cbs:?}"))
}

#[test]
fn an_unused_resource_is_kept_for_the_toss_time_then_freed_everywhere() {
    let mut nodes = cluster(3);
    // Mastered by node 1, directory on node 2.
    let name = name_with_dir(&nodes[0], 2, "inode");
    let a = nodes[0].lock(&name, Mode::EX, Flags::NONE).unwrap();
    let (cbs, _) = pump(&mut nodes);
    let seq1 = granted_seq(&cbs, 1, a);
    assert_eq!(nodes[1].directory_len(), 1);
    nodes[0].unlock(a, Flags::NONE, None).unwrap();
    pump(&mut nodes);
    assert_eq!(nodes[0].resource_count(), 1, "kept while unused");
    assert_eq!(nodes[0].tossed(), 1);

    // Within the toss time a new lock costs no message at all.
    nodes[0].tick(TOSS - 1);
    let sent = nodes[0].stats().messages_sent;
    let b = nodes[0].lock(&name, Mode::PR, Flags::NONE).unwrap();
    let (cbs, _) = pump(&mut nodes);
    assert!(granted_seq(&cbs, 1, b) > seq1);
    assert_eq!(
        nodes[0].stats().messages_sent,
        sent,
        "a re-lock sent a lookup"
    );
    assert_eq!(nodes[0].tossed(), 0, "in use again");
    nodes[0].unlock(b, Flags::NONE, None).unwrap();
    pump(&mut nodes);

    // Counted from the last use, not the first.
    nodes[0].tick(TOSS + 10);
    assert_eq!(nodes[0].resource_count(), 1);
    nodes[0].tick(2 * TOSS + 10);
    let (_, msgs) = pump(&mut nodes);
    assert!(
        msgs.iter()
            .any(|m| matches!(&m.body, Body::Remove { name: n, .. } if *n == name)),
        "no Remove sent: {msgs:?}"
    );
    for n in &nodes {
        assert_eq!(n.resource_count(), 0, "node {}", n.id());
        assert_eq!(n.directory_len(), 0, "node {}", n.id());
        assert_eq!(n.cached_masters(), 0, "node {}", n.id());
    }
    assert_eq!(nodes[0].stats().resources_freed, 1);
}

#[test]
fn a_cached_master_is_forgotten_without_a_message() {
    let mut nodes = cluster(3);
    let name = name_with_dir(&nodes[0], 2, "rgrp");
    // Node 1 masters it; node 3 uses it too and caches the master.
    let a = nodes[0].lock(&name, Mode::PR, Flags::NONE).unwrap();
    pump(&mut nodes);
    let c = nodes[2].lock(&name, Mode::PR, Flags::NONE).unwrap();
    pump(&mut nodes);
    assert_eq!(nodes[2].master_of(&name), Some(1));
    nodes[2].unlock(c, Flags::NONE, None).unwrap();
    pump(&mut nodes);
    let sent = nodes[2].stats().messages_sent;
    nodes[2].tick(TOSS + 1);
    assert_eq!(nodes[2].cached_masters(), 0);
    assert_eq!(nodes[2].stats().messages_sent, sent);
    // The master keeps it: node 1 still holds a lock.
    nodes[0].tick(TOSS + 1);
    assert_eq!(nodes[0].resource_count(), 1);
    nodes[0].unlock(a, Flags::NONE, None).unwrap();
    pump(&mut nodes);
}

#[test]
fn a_request_racing_with_a_remove_goes_back_to_the_directory_and_tokens_keep_growing() {
    let mut nodes = cluster(3);
    let name = name_with_dir(&nodes[0], 2, "race");
    let a = nodes[0].lock(&name, Mode::EX, Flags::NONE).unwrap();
    let (cbs, _) = pump(&mut nodes);
    let seq1 = granted_seq(&cbs, 1, a);
    nodes[0].unlock(a, Flags::NONE, None).unwrap();
    pump(&mut nodes);

    // Node 3 looks the name up: the directory (node 2) says node 1.
    let c = nodes[2].lock(&name, Mode::EX, Flags::NONE).unwrap();
    let lookup = nodes[2].drain();
    let [Output::Send { to: 2, msg }] = &lookup[..] else {
        panic!("{lookup:?}")
    };
    nodes[1].receive(msg.clone());
    let reply = nodes[1].drain();
    let [Output::Send { to: 3, msg: reply }] = &reply[..] else {
        panic!("{reply:?}")
    };
    assert!(matches!(reply.body, Body::LookupReply { master: 1, .. }));

    // Meanwhile node 1 frees the resource; its Remove is still on the way.
    nodes[0].tick(TOSS + 1);
    assert_eq!(nodes[0].resource_count(), 0);
    let remove = nodes[0].drain();
    let [Output::Send { to: 2, msg: remove }] = &remove[..] else {
        panic!("{remove:?}")
    };
    assert!(matches!(remove.body, Body::Remove { seq, .. } if seq == seq1));

    // Node 3's request reaches node 1, which masters nothing: NotMaster.
    nodes[2].receive(reply.clone());
    let req = nodes[2].drain();
    let [Output::Send { to: 1, msg: req }] = &req[..] else {
        panic!("{req:?}")
    };
    nodes[0].receive(req.clone());
    assert_eq!(nodes[0].resource_count(), 0, "a second master was created");
    // The remove lands, then everything else: node 3 becomes the master.
    nodes[1].receive(remove.clone());
    let (cbs, _) = pump(&mut nodes);
    let seq3 = granted_seq(&cbs, 3, c);
    assert!(
        seq3 > seq1,
        "fencing token went back: {seq3:#x} after {seq1:#x}"
    );
    assert_eq!(nodes[2].master_of(&name), Some(3));
    assert_eq!(nodes[2].resource_count(), 1);
    assert_eq!(nodes[0].resource_count(), 0);
    assert!(nodes[2].stats().ops_resent >= 1);
}

#[test]
fn a_request_waits_for_the_masters_own_lookup() {
    // Node 1 asked the directory first but its answer is slow; node 3 was
    // told "node 1" and its request arrives before the answer does.
    let mut nodes = cluster(3);
    let name = name_with_dir(&nodes[0], 2, "early");
    let a = nodes[0].lock(&name, Mode::PR, Flags::NONE).unwrap();
    let l1 = nodes[0].drain();
    let [Output::Send { to: 2, msg: l1 }] = &l1[..] else {
        panic!("{l1:?}")
    };
    nodes[1].receive(l1.clone());
    let r1 = nodes[1].drain();
    let [Output::Send { to: 1, msg: r1 }] = &r1[..] else {
        panic!("{r1:?}")
    };
    let c = nodes[2].lock(&name, Mode::PR, Flags::NONE).unwrap();
    let l3 = nodes[2].drain();
    let [Output::Send { to: 2, msg: l3 }] = &l3[..] else {
        panic!("{l3:?}")
    };
    nodes[1].receive(l3.clone());
    let r3 = nodes[1].drain();
    let [Output::Send { to: 3, msg: r3 }] = &r3[..] else {
        panic!("{r3:?}")
    };
    nodes[2].receive(r3.clone());
    let req = nodes[2].drain();
    let [Output::Send { to: 1, msg: req }] = &req[..] else {
        panic!("{req:?}")
    };
    nodes[0].receive(req.clone());
    assert!(
        nodes[0].drain().is_empty(),
        "answered before its own lookup"
    );
    nodes[0].receive(r1.clone());
    let (cbs, _) = pump(&mut nodes);
    granted_seq(&cbs, 1, a);
    granted_seq(&cbs, 3, c);
}

#[test]
fn the_directory_drops_only_an_entry_naming_the_sender() {
    let mut nodes = cluster(3);
    let name = name_with_dir(&nodes[0], 2, "dir");
    let a = nodes[0].lock(&name, Mode::EX, Flags::NONE).unwrap();
    pump(&mut nodes);
    assert_eq!(nodes[1].directory_len(), 1);
    let lockspace = nodes[1].lockspace_id();
    nodes[1].receive(Message {
        generation: 1,
        from: 3,
        lockspace,
        body: Body::Remove {
            name: name.clone(),
            seq: 1,
        },
    });
    assert_eq!(
        nodes[1].directory_len(),
        1,
        "removed another master's entry"
    );
    nodes[0].unlock(a, Flags::NONE, None).unwrap();
    pump(&mut nodes);
}

#[test]
fn at_most_max_toss_unused_resources_are_kept() {
    let mut ls = Lockspace::new(1, &[1], 1, LVB).unwrap();
    ls.set_toss_time(1_000_000);
    let n = MAX_TOSS + 100;
    for i in 0..n {
        let lkid = ls
            .lock(format!("n/{i}").as_bytes(), Mode::EX, Flags::NONE)
            .unwrap();
        ls.unlock(lkid, Flags::NONE, None).unwrap();
    }
    ls.drain();
    assert_eq!(ls.resource_count(), n);
    ls.tick(1);
    assert_eq!(ls.resource_count(), MAX_TOSS);
    assert_eq!(ls.directory_len(), MAX_TOSS);
    assert_eq!(ls.stats().resources_freed, 100);
    // Fencing tokens of a freed name keep growing when it comes back.
    let lkid = ls.lock(b"n/0", Mode::EX, Flags::NONE).unwrap();
    let seq = ls
        .drain()
        .into_iter()
        .find_map(|o| match o {
            Output::Callback(Callback::Granted { lkid: l, seq, .. }) if l == lkid => Some(seq),
            _ => None,
        })
        .unwrap();
    assert!(seq > (1 << 32) + 1, "token {seq:#x} repeated after a free");
}
