//! The node-to-node wire format: every message round-trips; garbage,
//! truncation, wrong versions and oversize fields are errors, never panics.

use proptest::prelude::*;
use rdlm::member::{LsJoin, Member};
use rdlm::node::lockspace_id;
use rdlm::wire::{
    Body, LvbSource, Message, WireError, HEADER_LEN, MAX_BODY, MAX_LOCKSPACES, VERSION,
};
use rdlm::{LockError, LockId, Mode, View};

fn samples() -> Vec<Body> {
    let name = b"inode/123".to_vec();
    vec![
        Body::Lookup { name: name.clone() },
        Body::LookupReply {
            name: name.clone(),
            master: 3,
            floor: 7 << 32 | 5,
        },
        Body::Request {
            lkid: 7,
            name: name.clone(),
            mode: Mode::PR,
            flags: 5,
            owner: 42,
        },
        Body::Convert {
            lkid: 7,
            name: name.clone(),
            mode: Mode::EX,
            flags: 2,
            lvb: Some(vec![1; 32]),
        },
        Body::Unlock {
            lkid: 7,
            name: name.clone(),
            flags: 4,
            lvb: None,
        },
        Body::Cancel {
            lkid: 7,
            name: name.clone(),
        },
        Body::Granted {
            lkid: 7,
            name: name.clone(),
            mode: Mode::CW,
            seq: 99,
            demoted: true,
            lvb_valid: false,
            lvb: Some(vec![2; 64]),
        },
        Body::Failed {
            lkid: 7,
            name: name.clone(),
            error: LockError::Deadlock {
                with: LockId { node: 2, lkid: 9 },
            },
        },
        Body::Failed {
            lkid: 7,
            name: name.clone(),
            error: LockError::Invalid("bad flags".into()),
        },
        Body::Failed {
            lkid: 7,
            name: name.clone(),
            error: LockError::WouldBlock,
        },
        Body::Unlocked {
            lkid: 7,
            name: name.clone(),
        },
        Body::Blocking {
            lkid: 7,
            name: name.clone(),
            mode: Mode::EX,
        },
        Body::Failed {
            lkid: 7,
            name: name.clone(),
            error: LockError::NotMaster,
        },
        Body::Heartbeat {
            incarnation: 1 << 40,
            hb: 12,
            lockspaces: vec![
                LsJoin::new(lockspace_id("fsA"), 3, 64),
                LsJoin::new(lockspace_id("fsB"), 1, 32),
            ],
        },
        Body::Heartbeat {
            incarnation: 1,
            hb: 1,
            lockspaces: vec![],
        },
        Body::HeartbeatAck {
            hb: 12,
            incarnation: 5,
        },
        Body::Excluded { incarnation: 5 },
        Body::Propose {
            members: vec![(1, 10), (2, 20), (3, 30)],
        },
        Body::Accept {
            incarnation: 20,
            previous: vec![(1, 10), (2, 20)],
            committed: Some(view()),
            lockspaces: vec![j(7, 1)],
        },
        Body::Accept {
            incarnation: 20,
            previous: vec![],
            committed: None,
            lockspaces: vec![],
        },
        Body::Commit { view: view() },
        Body::DirEntry { name: name.clone() },
        Body::DirDone,
        Body::Remove {
            name: name.clone(),
            seq: 4 << 32 | 9,
        },
        Body::RecoverLock {
            lkid: 9,
            name: name.clone(),
            owner: 42,
            mode: Mode::PR,
            seq: 5 << 32 | 3,
            lvb_source: LvbSource::Written,
            lvb_valid: true,
            lvb: Some(vec![3; 32]),
        },
        Body::LocksDone,
        Body::RecoveryDone {
            pending: vec![(3, 7)],
            released: vec![(2, 5), (4, 1)],
        },
        Body::ReleaseHold {
            node: 3,
            incarnation: 7,
        },
        Body::EdgesRequest { round: 3 },
        Body::Edges {
            round: 3,
            complete: true,
            edges: vec![rdlm::wire::WaitEdge {
                waiter: LockId { node: 2, lkid: 5 },
                waiter_owner: 7,
                holder: LockId { node: 3, lkid: 1 },
                holder_owner: 9,
            }],
        },
        Body::Victim {
            lock: LockId { node: 2, lkid: 5 },
            cycle: vec![LockId { node: 2, lkid: 5 }, LockId { node: 3, lkid: 2 }],
        },
        Body::Failed {
            lkid: 5,
            name,
            error: LockError::Cycle {
                cycle: vec![LockId { node: 2, lkid: 5 }, LockId { node: 3, lkid: 2 }],
            },
        },
    ]
}

fn membership(b: &Body) -> bool {
    matches!(
        b,
        Body::Heartbeat { .. }
            | Body::HeartbeatAck { .. }
            | Body::Excluded { .. }
            | Body::Leave { .. }
            | Body::Propose { .. }
            | Body::Accept { .. }
            | Body::Commit { .. }
    )
}

/// A message as a node sends it: lockspace traffic names its lockspace,
/// membership traffic none.
fn msg(generation: u32, from: u32, body: Body) -> Message {
    Message {
        generation,
        from,
        lockspace: if membership(&body) {
            0
        } else {
            lockspace_id("fsA")
        },
        body,
    }
}

#[test]
fn the_lockspace_id_is_checked_against_the_message_type() {
    for body in samples() {
        let mut m = msg(3, 1, body);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        // Membership with a lockspace, or lockspace traffic without one.
        m.lockspace = if m.lockspace == 0 { 77 } else { 0 };
        let e = Message::decode(&m.encode()).unwrap_err();
        assert!(e.to_string().contains("lockspace"), "{e}");
    }
    assert_ne!(lockspace_id(""), 0);
    assert_ne!(lockspace_id("fsA"), lockspace_id("fsB"));
}

#[test]
fn lockspace_lists_are_bounded_and_well_formed() {
    let hb = |lockspaces: Vec<(u32, u64)>| {
        msg(
            1,
            2,
            Body::Heartbeat {
                incarnation: 1,
                hb: 1,
                lockspaces: lockspaces.into_iter().map(|(i, n)| j(i, n)).collect(),
            },
        )
        .encode()
    };
    let full: Vec<(u32, u64)> = (1..=MAX_LOCKSPACES as u32).map(|i| (i, 1)).collect();
    assert!(Message::decode(&hb(full.clone())).is_ok());
    // The encoder keeps at most MAX_LOCKSPACES; forge a longer count.
    let mut f = hb(full);
    let count_at = HEADER_LEN + 16;
    f[count_at] = MAX_LOCKSPACES as u8 + 1;
    let e = Message::decode(&f).unwrap_err();
    assert!(e.to_string().contains("lockspaces exceed"), "{e}");
    for bad in [vec![(0, 1)], vec![(4, 1), (4, 2)]] {
        let e = Message::decode(&hb(bad)).unwrap_err();
        assert!(matches!(e, WireError::Malformed { .. }), "{e}");
    }
    // A count larger than what follows: truncated, not a panic.
    let mut t = hb(vec![(4, 1)]);
    t[count_at] = 3;
    assert!(Message::decode(&t).is_err());
}

#[test]
fn lockspace_lists_carry_valid_lvb_lengths() {
    let hb = |lockspaces: Vec<LsJoin>| {
        msg(
            1,
            2,
            Body::Heartbeat {
                incarnation: 1,
                hb: 1,
                lockspaces,
            },
        )
        .encode()
    };
    for good in [8u16, 32, 64, 1024] {
        let m = Message::decode(&hb(vec![LsJoin::new(4, 1, good)])).unwrap();
        let Body::Heartbeat { lockspaces, .. } = m.body else {
            panic!("{m:?}")
        };
        assert_eq!(lockspaces, [LsJoin::new(4, 1, good)]);
    }
    for bad in [0u16, 4, 12, 33, 1032, u16::MAX] {
        let e = Message::decode(&hb(vec![LsJoin::new(4, 1, bad)])).unwrap_err();
        assert!(matches!(e, WireError::Malformed { .. }), "{bad}: {e}");
        assert!(e.to_string().contains("LVB length"), "{e}");
    }
    // Each entry is id (4) + join (8) + LVB length (2): cutting the last
    // byte truncates, it does not panic.
    let mut f = hb(vec![LsJoin::new(4, 1, 32)]);
    f.pop();
    let stated = (f.len() - HEADER_LEN) as u32;
    f[16..20].copy_from_slice(&stated.to_be_bytes());
    let e = Message::decode(&f).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // A view member's list is checked the same way.
    let mut v = view();
    v.members[0].lockspaces = vec![LsJoin::new(3, 1, 20)];
    let m = Message {
        generation: 4,
        from: 1,
        lockspace: 0,
        body: Body::Commit { view: v },
    };
    assert!(Message::decode(&m.encode()).is_err());
}

/// A join with the default 32-byte LVBs.
fn j(id: u32, join: u64) -> LsJoin {
    LsJoin::new(id, join, 32)
}

fn view() -> View {
    View::new(
        4,
        vec![
            Member {
                id: 2,
                incarnation: 20,
                slot: 1,
                lockspaces: vec![j(3, 1), j(9, 2)],
            },
            Member {
                id: 1,
                incarnation: 10,
                slot: 2,
                lockspaces: vec![],
            },
        ],
    )
    .unwrap()
}

#[test]
fn views_with_duplicate_nodes_or_slots_do_not_decode() {
    let m = |members: Vec<Member>| Message {
        generation: 4,
        from: 1,
        lockspace: 0,
        body: Body::Commit {
            view: View {
                generation: 4,
                members,
            },
        },
    };
    let a = Member {
        id: 1,
        incarnation: 1,
        slot: 1,
        lockspaces: vec![],
    };
    let b = Member {
        id: 2,
        incarnation: 1,
        slot: 1,
        lockspaces: vec![],
    };
    for bad in [
        vec![a.clone(), b],
        vec![a.clone(), a.clone()],
        vec![Member {
            slot: 0,
            ..a.clone()
        }],
        vec![Member {
            lockspaces: vec![j(5, 1), j(5, 2)],
            ..a.clone()
        }],
        vec![Member {
            lockspaces: vec![j(0, 1)],
            ..a.clone()
        }],
        vec![Member {
            lockspaces: vec![j(6, 1), j(5, 2)],
            ..a.clone()
        }],
        vec![],
    ] {
        let e = Message::decode(&m(bad).encode()).unwrap_err();
        assert!(matches!(e, WireError::Malformed { .. }), "{e}");
    }
}

#[test]
fn every_message_round_trips() {
    for body in samples() {
        let m = msg(4, 2, body);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
}

#[test]
fn truncated_or_padded_frames_are_errors() {
    for body in samples() {
        let f = msg(1, 1, body).encode();
        for cut in 0..f.len() {
            assert!(
                Message::decode(&f[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        let mut padded = f.clone();
        padded.push(0);
        assert!(matches!(
            Message::decode(&padded),
            Err(WireError::Length { .. })
        ));
    }
}

#[test]
fn header_checks_name_the_problem() {
    let f = msg(
        1,
        1,
        Body::Lookup {
            name: b"x".to_vec(),
        },
    )
    .encode();
    let mut v = f.clone();
    v[2] = VERSION + 1;
    assert_eq!(Message::decode(&v), Err(WireError::Version(VERSION + 1)));
    let mut m = f.clone();
    m[0] = 0;
    assert!(matches!(Message::decode(&m), Err(WireError::BadMagic(_))));
    let mut t = f.clone();
    t[3] = 200;
    assert_eq!(Message::decode(&t), Err(WireError::UnknownType(200)));
    let mut big = f[..HEADER_LEN].to_vec();
    big[16..20].copy_from_slice(&((MAX_BODY + 1) as u32).to_be_bytes());
    assert_eq!(
        Message::decode(&big),
        Err(WireError::TooLarge(MAX_BODY + 1))
    );
    // An oversize resource name inside a well-framed body.
    let long = msg(
        1,
        1,
        Body::Lookup {
            name: vec![b'a'; 65],
        },
    )
    .encode();
    let e = Message::decode(&long).unwrap_err();
    assert!(e.to_string().contains("resource name"), "{e}");
    // A bad mode byte.
    let mut bm = msg(
        1,
        1,
        Body::Blocking {
            lkid: 1,
            name: b"n".to_vec(),
            mode: Mode::EX,
        },
    )
    .encode();
    let last = bm.len() - 1;
    bm[last] = 9;
    assert!(Message::decode(&bm)
        .unwrap_err()
        .to_string()
        .contains("mode"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]
    #[test]
    fn decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn decoding_mutated_frames_is_total(idx in 0usize..12, pos in any::<usize>(), val in any::<u8>()) {
        let body = samples().swap_remove(idx);
        let mut f = msg(1, 1, body).encode();
        let p = pos % f.len();
        f[p] = val;
        let _ = Message::decode(&f);
    }
}
