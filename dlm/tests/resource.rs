//! The master-side lock rules: queues, conversions, flags, LVBs, blocking
//! callbacks, timeouts and purges; and a property test that random
//! operations never grant incompatible modes and never strand a request.

use proptest::prelude::*;
use rdlm::resource::MAX_NAME;
use rdlm::{Event, Flags, LockError, LockId, Mode, Resource};
use std::collections::BTreeMap;

fn id(node: u32, lkid: u64) -> LockId {
    LockId { node, lkid }
}

fn res() -> Resource {
    Resource::new(b"inode/42", 32).unwrap()
}

fn granted(ev: &[Event]) -> Vec<(LockId, Mode)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Granted { lock, mode, .. } => Some((*lock, *mode)),
            _ => None,
        })
        .collect()
}

fn basts(ev: &[Event]) -> Vec<(LockId, Mode)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Blocking { lock, mode } => Some((*lock, *mode)),
            _ => None,
        })
        .collect()
}

fn failed(ev: &[Event]) -> Vec<(LockId, LockError)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Failed { lock, error } => Some((*lock, error.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn compatible_requests_are_granted_and_conflicts_wait_in_fifo_order() {
    let mut r = res();
    let (a, b, c, d) = (id(1, 1), id(2, 1), id(3, 1), id(1, 2));
    assert_eq!(
        granted(&r.request(a, Mode::PR, Flags::NONE, None).unwrap()),
        [(a, Mode::PR)]
    );
    assert_eq!(
        granted(&r.request(b, Mode::PR, Flags::NONE, None).unwrap()),
        [(b, Mode::PR)]
    );
    // EX waits, and both readers are told an EX is wanted.
    let ev = r.request(c, Mode::EX, Flags::NONE, None).unwrap();
    assert!(granted(&ev).is_empty());
    assert_eq!(basts(&ev), [(a, Mode::EX), (b, Mode::EX)]);
    // A later PR is compatible with the holders but must not overtake the
    // queued EX (no starvation of writers).
    let ev = r.request(d, Mode::PR, Flags::NONE, None).unwrap();
    assert!(granted(&ev).is_empty());
    assert!(basts(&ev).is_empty(), "holders were already told about EX");
    r.unlock(a, Flags::NONE, None).unwrap();
    let ev = r.unlock(b, Flags::NONE, None).unwrap();
    assert_eq!(granted(&ev), [(c, Mode::EX)]);
    // The PR waiter now blocks on the EX holder.
    assert_eq!(basts(&ev), [(c, Mode::PR)]);
    let ev = r.unlock(c, Flags::NONE, None).unwrap();
    assert_eq!(granted(&ev), [(d, Mode::PR)]);
}

#[test]
fn noqueue_fails_at_once_and_sends_basts_only_when_asked() {
    let mut r = res();
    let (a, b) = (id(1, 1), id(2, 1));
    r.request(a, Mode::EX, Flags::NONE, None).unwrap();
    let ev = r.request(b, Mode::PR, Flags::NOQUEUE, None).unwrap();
    assert_eq!(failed(&ev), [(b, LockError::WouldBlock)]);
    assert!(basts(&ev).is_empty());
    let ev = r
        .request(b, Mode::PR, Flags::NOQUEUE | Flags::NOQUEUEBAST, None)
        .unwrap();
    assert_eq!(failed(&ev), [(b, LockError::WouldBlock)]);
    assert_eq!(basts(&ev), [(a, Mode::PR)]);
    assert_eq!(
        r.holders().len(),
        1,
        "failed NOQUEUE requests leave nothing behind"
    );
}

#[test]
fn down_conversion_is_immediate_and_up_conversion_queues() {
    let mut r = res();
    let (a, b) = (id(1, 1), id(2, 1));
    r.request(a, Mode::EX, Flags::NONE, None).unwrap();
    r.request(b, Mode::PR, Flags::NONE, None).unwrap();
    // EX -> PR: granted at once, and the PR waiter follows.
    let ev = r.convert(a, Mode::PR, Flags::CONVERT, None, None).unwrap();
    assert_eq!(granted(&ev), [(a, Mode::PR), (b, Mode::PR)]);
    // PR -> EX with another reader: queued; the other reader is told.
    let ev = r.convert(a, Mode::EX, Flags::CONVERT, None, None).unwrap();
    assert!(granted(&ev).is_empty());
    assert_eq!(basts(&ev), [(b, Mode::EX)]);
    let ev = r.unlock(b, Flags::NONE, None).unwrap();
    assert_eq!(granted(&ev), [(a, Mode::EX)]);
}

#[test]
fn pr_cw_conversions_are_refused() {
    // Neither mode covers the other, so recovery could not say which one a
    // lost conversion left; rdlm asks callers to go through CR.
    let mut r = res();
    let (a, b) = (id(1, 1), id(2, 1));
    r.request(a, Mode::PR, Flags::NONE, None).unwrap();
    r.request(b, Mode::CW, Flags::NONE, None)
        .unwrap_or_default();
    let e = r
        .convert(a, Mode::CW, Flags::CONVERT, None, None)
        .unwrap_err();
    assert!(
        matches!(e, LockError::Invalid(ref t) if t.contains("through CR")),
        "{e}"
    );
    assert!(r.holders().contains(&(a, Some(Mode::PR), None)));
    r.convert(a, Mode::CR, Flags::CONVERT, None, None).unwrap();
    let ev = r.convert(a, Mode::CW, Flags::CONVERT, None, None).unwrap();
    assert!(granted(&ev).is_empty() || granted(&ev) == [(a, Mode::CW)]);
}

#[test]
fn a_new_resource_has_no_valid_lvb_until_written() {
    let mut r = res();
    let a = id(1, 1);
    let ev = r.request(a, Mode::EX, Flags::VALBLK, None).unwrap();
    assert!(
        matches!(
            ev[0],
            Event::Granted {
                lvb_valid: false,
                ..
            }
        ),
        "{ev:?}"
    );
    let v = vec![7u8; 32];
    r.convert(a, Mode::NL, Flags::VALBLK, Some(&v), None)
        .unwrap();
    let ev = r.convert(a, Mode::PR, Flags::VALBLK, None, None).unwrap();
    assert!(
        matches!(&ev[0], Event::Granted { lvb_valid: true, lvb: Some(l), .. } if *l == v),
        "{ev:?}"
    );
}

#[test]
fn conversion_deadlock_fails_or_demotes() {
    // Two PR holders both converting to EX block each other.
    let mut r = res();
    let (a, b) = (id(1, 1), id(2, 1));
    r.request(a, Mode::PR, Flags::NONE, None).unwrap();
    r.request(b, Mode::PR, Flags::NONE, None).unwrap();
    r.convert(a, Mode::EX, Flags::CONVERT, None, None).unwrap();
    let ev = r.convert(b, Mode::EX, Flags::CONVERT, None, None).unwrap();
    assert_eq!(failed(&ev), [(b, LockError::Deadlock { with: a })]);
    // b still holds PR after the failed conversion.
    assert!(r.holders().contains(&(b, Some(Mode::PR), None)));

    let mut r = res();
    r.request(a, Mode::PR, Flags::NONE, None).unwrap();
    r.request(b, Mode::PR, Flags::NONE, None).unwrap();
    r.convert(a, Mode::EX, Flags::CONVERT, None, None).unwrap();
    let ev = r
        .convert(b, Mode::EX, Flags::CONVERT | Flags::CONVDEADLK, None, None)
        .unwrap();
    // b dropped to NL, so a's conversion goes through at once.
    assert_eq!(granted(&ev), [(a, Mode::EX)]);
    let ev = r.unlock(a, Flags::NONE, None).unwrap();
    match &ev[..] {
        [Event::Unlocked { .. }, Event::Granted {
            lock,
            mode: Mode::EX,
            demoted: true,
            ..
        }] => assert_eq!(*lock, b),
        other => panic!("expected b granted EX with demoted set: {other:?}"),
    }
}

#[test]
fn quecvt_keeps_conversions_in_line() {
    let mut r = res();
    let (a, b, c) = (id(1, 1), id(2, 1), id(3, 1));
    r.request(a, Mode::CR, Flags::NONE, None).unwrap();
    r.request(b, Mode::CR, Flags::NONE, None).unwrap();
    r.request(c, Mode::CR, Flags::NONE, None).unwrap();
    // a wants EX: blocked by b and c.
    r.convert(a, Mode::EX, Flags::CONVERT, None, None).unwrap();
    // b wants PR, compatible with every held mode: granted in place...
    assert_eq!(
        granted(&r.convert(b, Mode::PR, Flags::CONVERT, None, None).unwrap()),
        [(b, Mode::PR)]
    );
    // ...unless it asks to queue behind the converters.
    let ev = r
        .convert(c, Mode::PR, Flags::CONVERT | Flags::QUECVT, None, None)
        .unwrap();
    assert!(granted(&ev).is_empty());
}

#[test]
fn lvb_is_written_by_pw_ex_and_returned_with_valblk() {
    let mut r = res();
    let (a, b) = (id(1, 1), id(2, 1));
    let v1 = [7u8; 32];
    r.request(a, Mode::EX, Flags::VALBLK, None).unwrap();
    // Unlock from EX with VALBLK writes the LVB.
    r.unlock(a, Flags::VALBLK, Some(&v1)).unwrap();
    let ev = r.request(b, Mode::PR, Flags::VALBLK, None).unwrap();
    match &ev[0] {
        Event::Granted {
            lvb: Some(l),
            lvb_valid: true,
            ..
        } => assert_eq!(l[..], v1[..]),
        other => panic!("{other:?}"),
    }
    // A PR holder cannot write it.
    r.unlock(b, Flags::VALBLK, Some(&[9u8; 32])).unwrap();
    assert_eq!(r.lvb().0, &v1[..]);
    assert_eq!(r.lvb().2, 1, "one write so far");
    // Down-conversion from PW writes it too.
    r.request(a, Mode::PW, Flags::VALBLK, None).unwrap();
    r.convert(
        a,
        Mode::NL,
        Flags::CONVERT | Flags::VALBLK,
        Some(&[8u8; 32]),
        None,
    )
    .unwrap();
    assert_eq!(r.lvb().0, &[8u8; 32][..]);
    // Wrong length is refused before anything changes.
    assert!(matches!(
        r.convert(
            a,
            Mode::NL,
            Flags::CONVERT | Flags::VALBLK,
            Some(&[1u8; 5]),
            None
        ),
        Err(LockError::Invalid(_))
    ));
    // IVVALBLK from a writer marks it not valid.
    r.convert(a, Mode::EX, Flags::CONVERT, None, None).unwrap();
    r.unlock(a, Flags::IVVALBLK, None).unwrap();
    let ev = r.request(b, Mode::PR, Flags::VALBLK, None).unwrap();
    assert!(matches!(
        ev[0],
        Event::Granted {
            lvb_valid: false,
            ..
        }
    ));
}

#[test]
fn purging_a_dead_writer_flags_the_lvb_and_grants_the_waiters() {
    let mut r = res();
    let (a, b) = (id(1, 1), id(2, 1));
    r.request(a, Mode::EX, Flags::NONE, None).unwrap();
    r.request(b, Mode::PR, Flags::VALBLK, None).unwrap();
    let ev = r.purge_node(1);
    match &ev[..] {
        [Event::Granted {
            lock,
            lvb_valid: false,
            ..
        }] => assert_eq!(*lock, b),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancel_timeout_and_bad_calls() {
    let mut r = res();
    let (a, b, c) = (id(1, 1), id(2, 1), id(3, 1));
    r.request(a, Mode::EX, Flags::NONE, None).unwrap();
    r.request(b, Mode::EX, Flags::NONE, None).unwrap();
    assert_eq!(failed(&r.cancel(b).unwrap()), [(b, LockError::Cancelled)]);
    assert!(matches!(r.cancel(a), Err(LockError::Busy(..))));
    assert!(matches!(r.cancel(c), Err(LockError::UnknownLock(_))));
    r.request(c, Mode::PR, Flags::TIMEOUT, Some(100)).unwrap();
    assert!(r.tick(99).is_empty());
    assert_eq!(failed(&r.tick(100)), [(c, LockError::TimedOut)]);
    // A waiting lock cannot be unlocked, only cancelled.
    r.request(b, Mode::EX, Flags::NONE, None).unwrap();
    assert!(matches!(
        r.unlock(b, Flags::NONE, None),
        Err(LockError::Busy(..))
    ));
    // Argument rules.
    assert!(r.request(id(4, 1), Mode::PR, Flags::CONVERT, None).is_err());
    assert!(r.request(id(4, 1), Mode::PR, Flags::QUECVT, None).is_err());
    assert!(r.request(id(4, 1), Mode::PR, Flags::TIMEOUT, None).is_err());
    assert!(
        r.request(a, Mode::PR, Flags::NONE, None).is_err(),
        "duplicate lock id"
    );
    assert!(r
        .convert(
            a,
            Mode::EX,
            Flags::CONVERT | Flags::CONVDEADLK | Flags::NOQUEUE,
            None,
            None
        )
        .is_err());
    assert!(Resource::new(&[b'x'; MAX_NAME + 1], 32).is_err());
    assert!(Resource::new(b"", 32).is_err());
}

#[test]
fn fencing_sequence_only_grows() {
    let mut r = res();
    let a = id(1, 1);
    let mut last = 0;
    for m in [Mode::PR, Mode::EX, Mode::NL, Mode::PW] {
        let ev = if last == 0 {
            r.request(a, m, Flags::NONE, None).unwrap()
        } else {
            r.convert(a, m, Flags::CONVERT, None, None).unwrap()
        };
        let seq = ev
            .iter()
            .find_map(|e| match e {
                Event::Granted { seq, .. } => Some(*seq),
                _ => None,
            })
            .unwrap();
        assert!(seq > last);
        last = seq;
    }
}

#[derive(Debug, Clone)]
enum Call {
    Request(u8, Mode, bool),
    Convert(u8, Mode, bool),
    Unlock(u8),
    Cancel(u8),
}

fn mode() -> impl Strategy<Value = Mode> {
    (0u8..6).prop_map(|m| Mode::from_u8(m).unwrap())
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (0u8..6, mode(), any::<bool>()).prop_map(|(l, m, nq)| Call::Request(l, m, nq)),
        (0u8..6, mode(), any::<bool>()).prop_map(|(l, m, dl)| Call::Convert(l, m, dl)),
        (0u8..6).prop_map(Call::Unlock),
        (0u8..6).prop_map(Call::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Safety: the holders the events announce are pairwise compatible at
    /// every step. Liveness: once everyone lets go, every request ended.
    #[test]
    fn random_calls_never_grant_conflicting_modes(calls in proptest::collection::vec(call(), 1..60)) {
        let mut r = res();
        let mut held: BTreeMap<LockId, Mode> = BTreeMap::new();
        let mut pending: BTreeMap<LockId, ()> = BTreeMap::new();
        let apply = |ev: Vec<Event>, held: &mut BTreeMap<LockId, Mode>, pending: &mut BTreeMap<LockId, ()>| {
            for e in ev {
                match e {
                    Event::Granted { lock, mode, .. } => { held.insert(lock, mode); pending.remove(&lock); }
                    Event::Failed { lock, .. } => { pending.remove(&lock); }
                    Event::Unlocked { lock } => { held.remove(&lock); }
                    Event::Blocking { lock, .. } => assert!(held.contains_key(&lock), "BAST to a non-holder"),
                }
            }
        };
        for c in calls {
            let res = match c {
                Call::Request(l, m, nq) => {
                    let lock = id(u32::from(l), 1);
                    let f = if nq { Flags::NOQUEUE } else { Flags::NONE };
                    let r = r.request(lock, m, f, None);
                    if r.is_ok() && !nq {
                        pending.insert(lock, ());
                    }
                    r
                }
                Call::Convert(l, m, dl) => {
                    let lock = id(u32::from(l), 1);
                    let f = Flags::CONVERT | if dl { Flags::CONVDEADLK } else { Flags::NONE };
                    let r = r.convert(lock, m, f, None, None);
                    if r.is_ok() {
                        pending.insert(lock, ());
                    }
                    r
                }
                Call::Unlock(l) => r.unlock(id(u32::from(l), 1), Flags::NONE, None),
                Call::Cancel(l) => r.cancel(id(u32::from(l), 1)),
            };
            if let Ok(ev) = res {
                // A CONVDEADLK demotion is visible only in the final grant.
                apply(ev, &mut held, &mut pending);
            }
            let hs: Vec<(LockId, Mode)> = r.holders().into_iter().filter_map(|(l, g, _)| g.map(|g| (l, g))).collect();
            for (i, (a, am)) in hs.iter().enumerate() {
                for (b, bm) in &hs[i + 1..] {
                    prop_assert!(am.compatible(*bm), "{a} {am} with {b} {bm}");
                }
            }
        }
        // Everyone gives up: cancel what is pending, unlock what is held.
        for l in 0..6u32 {
            if let Ok(ev) = r.cancel(id(l, 1)) { apply(ev, &mut held, &mut pending); }
        }
        for l in 0..6u32 {
            if let Ok(ev) = r.unlock(id(l, 1), Flags::NONE, None) { apply(ev, &mut held, &mut pending); }
        }
        prop_assert!(r.is_unused(), "locks left: {:?}", r.holders());
        prop_assert!(pending.is_empty(), "requests that never completed: {pending:?}");
    }
}

#[test]
fn held_resources_grant_only_noexp_until_released() {
    let mut r = res();
    let (a, b, c) = (id(1, 1), id(2, 1), id(3, 1));
    let held: std::collections::BTreeSet<u32> = [9].into_iter().collect();
    assert!(r.set_holds(&held).is_empty());
    let ev = r.request(a, Mode::PR, Flags::NONE, None).unwrap();
    assert!(granted(&ev).is_empty(), "granted while held: {ev:?}");
    let ev = r.request(b, Mode::CR, Flags::NOEXP, None).unwrap();
    // FIFO: the NOEXP request waits behind the held one.
    assert!(granted(&ev).is_empty());
    let ev = r.request(c, Mode::NL, Flags::NOQUEUE, None).unwrap();
    assert!(
        !failed(&ev).is_empty(),
        "NOQUEUE while held must fail at once"
    );
    let ev = r.set_holds(&Default::default());
    assert_eq!(granted(&ev), [(a, Mode::PR), (b, Mode::CR)]);

    let mut r = res();
    r.set_holds(&held);
    let ev = r.request(a, Mode::EX, Flags::NOEXP, None).unwrap();
    assert_eq!(granted(&ev), [(a, Mode::EX)], "NOEXP passes the hold");
}
