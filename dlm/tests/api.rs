//! The in-process API: three nodes started with `Dlm::start` in this test
//! process, talking QUIC with mutual TLS on 127.0.0.1 (certificates from
//! `rdlm gencluster`), with fast timings. Every wait is bounded.

use rdlm::api::{BlockingDlm, Dlm, DlmError, DlmEvent, DlmOptions, Events};
use rdlm::config::ClusterConfig;
use rdlm::{Flags, LsOptions, Mode};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

const RDLM: &str = env!("CARGO_BIN_EXE_rdlm");
const LONG: Duration = Duration::from_secs(20);

/// `n` consecutive UDP ports free right now.
fn free_ports(n: u16) -> u16 {
    'next: for _ in 0..500 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let base = a.local_addr().expect("addr").port();
        if base > u16::MAX - n {
            continue;
        }
        let mut held = vec![a];
        for i in 1..n {
            match std::net::UdpSocket::bind(("127.0.0.1", base + i)) {
                Ok(s) => held.push(s),
                Err(_) => continue 'next,
            }
        }
        return base;
    }
    panic!("no {n} consecutive free UDP ports");
}

/// A three-node cluster file with test timings, in `dir`.
fn cluster(dir: &tempfile::TempDir) -> ClusterConfig {
    let base = free_ports(3);
    let out = Command::new(RDLM)
        .args(["gencluster", "--nodes", "3", "--base-port"])
        .arg(base.to_string())
        .arg("--dir")
        .arg(dir.path())
        .args(["--cluster", "t"])
        .output()
        .expect("run rdlm gencluster");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = dir.path().join("cluster.toml");
    let text = std::fs::read_to_string(&toml)
        .expect("read cluster.toml")
        .replace("heartbeat_ms = 200", "heartbeat_ms = 50")
        .replace("failure_timeout_ms = 1500", "failure_timeout_ms = 400")
        .replace("lease_ms = 3000", "lease_ms = 800");
    std::fs::write(&toml, text).expect("write cluster.toml");
    ClusterConfig::load(&toml).expect("load cluster.toml")
}

async fn start3(cfg: &ClusterConfig, hold: bool) -> Vec<(Dlm, Events)> {
    let mut v = Vec::new();
    for id in 1..=3 {
        let opts = DlmOptions {
            recovery_hold: hold,
        };
        v.push(Dlm::start(cfg.clone(), id, opts).await.expect("start node"));
    }
    for (d, _) in &v {
        wait_members(d, 3).await;
    }
    v
}

/// Waits until `d` is in a quorate view of `n` members, not recovering.
async fn wait_members(d: &Dlm, n: usize) {
    timeout(LONG, async {
        loop {
            let s = d.status().await.expect("status");
            if s.quorate
                && !s.recovering
                && s.slot.is_some()
                && s.view.as_ref().is_some_and(|v| v.members.len() == n)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("node {} never saw {n} members", d.node_id()));
}

/// The next event matching `f`, skipping others.
async fn next_event(ev: &mut Events, what: &str, f: impl Fn(&DlmEvent) -> bool) -> DlmEvent {
    timeout(LONG, async {
        loop {
            match ev.recv().await {
                Some(e) if f(&e) => return e,
                Some(_) => {}
                None => panic!("event stream closed waiting for {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_callback_lvb_and_fencing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let mut nodes = start3(&cfg, false).await;
    let n2 = nodes[1].0.clone();
    let (n1, ev1) = &mut nodes[0];

    let g1 = timeout(LONG, n1.lock(b"res", Mode::EX, Flags::NONE, true, None))
        .await
        .expect("bounded")
        .expect("EX on node 1");
    assert_eq!(g1.mode, Mode::EX);
    assert!(!g1.lvb_valid, "a new resource's LVB is not valid");

    let waiter =
        tokio::spawn(async move { n2.lock(b"res", Mode::EX, Flags::NONE, true, None).await });
    let ev = next_event(ev1, "Blocking", |e| matches!(e, DlmEvent::Blocking { .. })).await;
    assert_eq!(
        ev,
        DlmEvent::Blocking {
            lkid: g1.lkid,
            mode: Mode::EX
        }
    );
    assert!(
        !waiter.is_finished(),
        "node 2 granted while node 1 holds EX"
    );

    let lvb = vec![7u8; cfg.lvb_len];
    timeout(LONG, n1.unlock(g1.lkid, Some(lvb.clone())))
        .await
        .expect("bounded")
        .expect("unlock");
    let g2 = timeout(LONG, waiter)
        .await
        .expect("bounded")
        .expect("join")
        .expect("EX on node 2");
    assert_eq!(g2.mode, Mode::EX);
    assert!(g2.lvb_valid);
    assert_eq!(g2.lvb.as_deref(), Some(&lvb[..]));
    assert!(g2.seq > g1.seq, "fencing token {} !> {}", g2.seq, g1.seq);

    // Unknown lock ids are refused with context.
    let e = n1
        .unlock(g1.lkid, None)
        .await
        .expect_err("already unlocked");
    assert!(matches!(e, DlmError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("node 1"), "{e}");
    for (d, _) in &nodes {
        let _ = timeout(LONG, d.leave()).await;
    }
}

/// `name` in `mode` with NOQUEUE, retried until it is free (bounded).
async fn free_lock(d: &Dlm, name: &[u8], mode: Mode) -> rdlm::api::Grant {
    timeout(LONG, async {
        loop {
            match d.lock(name, mode, Flags::NOQUEUE, false, None).await {
                Ok(g) => return g,
                Err(DlmError::WouldBlock { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the lock never became free")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noqueue_and_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let nodes = start3(&cfg, false).await;
    let (n1, n2) = (&nodes[0].0, &nodes[1].0);
    let g = timeout(LONG, n1.lock(b"q", Mode::PW, Flags::NONE, false, None))
        .await
        .expect("bounded")
        .expect("PW");
    let e = timeout(LONG, n2.lock(b"q", Mode::PR, Flags::NOQUEUE, false, None))
        .await
        .expect("bounded")
        .expect_err("NOQUEUE against PW");
    assert!(matches!(e, DlmError::WouldBlock { .. }), "{e}");
    assert!(e.to_string().contains("\"q\""), "{e}");

    let started = std::time::Instant::now();
    let e = timeout(
        LONG,
        n2.lock(
            b"q",
            Mode::PR,
            Flags::NONE,
            false,
            Some(Duration::from_millis(300)),
        ),
    )
    .await
    .expect("bounded")
    .expect_err("timeout against PW");
    assert!(matches!(e, DlmError::TimedOut { .. }), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A caller that gives up (its future dropped) has its request
    // cancelled, or released if the grant wins.
    let gave_up = timeout(
        Duration::from_millis(200),
        n2.lock(b"q", Mode::EX, Flags::NONE, false, None),
    )
    .await;
    assert!(gave_up.is_err(), "EX granted against PW");

    // Neither request left anything behind: once the abandoned one is
    // cancelled (or granted and released), the lock is free for node 2 and
    // then for node 1.
    n1.unlock(g.lkid, None).await.expect("unlock");
    let g = free_lock(n2, b"q", Mode::PR).await;
    n2.unlock(g.lkid, None).await.expect("unlock");
    let g = free_lock(n1, b"q", Mode::EX).await;
    n1.unlock(g.lkid, None).await.expect("unlock");
    for (d, _) in &nodes {
        let _ = timeout(LONG, d.leave()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_hold_until_recovery_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let mut nodes = start3(&cfg, true).await;
    let (n3, _ev3) = nodes.pop().expect("node 3");
    let n2 = nodes[1].0.clone();
    let (n1, ev1) = &mut nodes[0];

    let s3 = n3.status().await.expect("status 3");
    let slot3 = s3.slot.expect("node 3 has a slot");
    timeout(LONG, n3.lock(b"data", Mode::EX, Flags::NONE, false, None))
        .await
        .expect("bounded")
        .expect("EX on node 3");
    // Node 3 dies: no leave, no closing of connections.
    n3.abort();
    drop(n3);

    let waiter =
        tokio::spawn(async move { n2.lock(b"data", Mode::EX, Flags::NONE, false, None).await });
    let ev = next_event(ev1, "RecoverSlot", |e| {
        matches!(e, DlmEvent::RecoverSlot { .. })
    })
    .await;
    assert_eq!(
        ev,
        DlmEvent::RecoverSlot {
            lockspace: "default".into(),
            node: 3,
            incarnation: s3.incarnation,
            slot: slot3
        }
    );
    next_event(ev1, "RecoverDone", |e| {
        matches!(e, DlmEvent::RecoverDone { .. })
    })
    .await;
    let s1 = n1.status().await.expect("status 1");
    assert_eq!(s1.pending_recovery, vec![(3, s3.incarnation)]);

    // Journal locks pass the hold; everything else waits.
    let j = timeout(
        LONG,
        n1.lock(b"journal-3", Mode::EX, Flags::NOEXP, false, None),
    )
    .await
    .expect("NOEXP not granted during the hold")
    .expect("NOEXP lock");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "granted during the recovery hold");

    n1.recovery_done(3, s3.incarnation)
        .await
        .expect("recovery_done");
    let g = timeout(LONG, waiter)
        .await
        .expect("not granted after recovery_done")
        .expect("join")
        .expect("EX on node 2");
    assert_eq!(g.mode, Mode::EX);
    n1.unlock(j.lkid, None).await.expect("unlock journal");
    for (d, _) in &nodes {
        let _ = timeout(LONG, d.leave()).await;
    }
}

#[test]
fn blocking_wrapper_from_many_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let nodes = rt.block_on(start3(&cfg, false));
    // Threads share node 1 and node 2: exclusion holds within a node and
    // across nodes.
    let handles: Vec<BlockingDlm> = nodes[..2]
        .iter()
        .map(|(d, _)| BlockingDlm::new(d.clone(), rt.handle().clone()))
        .collect();
    let inside = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..8 {
            let b = handles[t % 2].clone();
            let inside = inside.clone();
            let done = done.clone();
            s.spawn(move || {
                for _ in 0..20 {
                    let g = b
                        .lock(b"shared", Mode::EX, Flags::NONE, false, Some(LONG))
                        .expect("EX from a thread");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two EX holders");
                    std::thread::sleep(Duration::from_millis(1));
                    inside.store(false, Ordering::SeqCst);
                    b.unlock(g.lkid, None).expect("unlock from a thread");
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(done.load(Ordering::SeqCst), 160);
    let s = handles[0].status().expect("status");
    assert_eq!(s.locks, 0, "locks left behind: {s:?}");
    for b in &handles {
        b.leave().expect("leave");
    }
    rt.block_on(async {
        let _ = timeout(LONG, nodes[2].0.leave()).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_across_nodes_fails_one_request_and_the_other_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let nodes = start3(&cfg, false).await;
    let (n1, n2) = (nodes[0].0.clone(), nodes[1].0.clone());
    let a = timeout(
        LONG,
        n1.lock_as(11, b"dx", Mode::EX, Flags::NONE, false, None),
    )
    .await
    .expect("bounded")
    .expect("x");
    let b = timeout(
        LONG,
        n2.lock_as(22, b"dy", Mode::EX, Flags::NONE, false, None),
    )
    .await
    .expect("bounded")
    .expect("y");
    // Each owner now waits for what the other holds.
    let w1 = tokio::spawn({
        let n1 = n1.clone();
        async move {
            n1.lock_as(11, b"dy", Mode::EX, Flags::NONE, false, None)
                .await
        }
    });
    let w2 = tokio::spawn({
        let n2 = n2.clone();
        async move {
            n2.lock_as(22, b"dx", Mode::EX, Flags::NONE, false, None)
                .await
        }
    });
    // One of them is chosen as the victim within a few detection rounds.
    let (first, victim_is_1) = tokio::select! {
        r = w1 => (r.expect("join"), true),
        r = w2 => (r.expect("join"), false),
        _ = tokio::time::sleep(LONG) => panic!("no deadlock victim within {LONG:?}"),
    };
    let e = first.expect_err("the victim's request fails");
    assert!(
        matches!(e, DlmError::DeadlockCycle { ref cycle, .. } if cycle.len() == 2),
        "{e}"
    );
    assert!(e.to_string().contains("cycle"), "{e}");
    // The victim's owner lets go of what it holds; the other goes ahead.
    if victim_is_1 {
        n1.unlock(a.lkid, None).await.expect("unlock x");
    } else {
        n2.unlock(b.lkid, None).await.expect("unlock y");
    }
    let other = if victim_is_1 { n2.clone() } else { n1.clone() };
    timeout(LONG, async {
        loop {
            let s = other.status().await.expect("status");
            if s.locks == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the other owner got its second lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockspace_join_and_leave_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let mut nodes = start3(&cfg, true).await;
    let n1 = nodes[0].0.clone();
    let n2 = nodes[1].0.clone();
    let n3 = nodes[2].0.clone();
    let fs_a =
        |e: &DlmEvent| matches!(e, DlmEvent::RecoverDone { lockspace, .. } if lockspace == "fsA");
    n1.join_lockspace("fsA").await.expect("join 1");
    n2.join_lockspace("fsA").await.expect("join 2");
    // Node 1 hears of fsA's recovery (with itself in it) once both joined.
    loop {
        next_event(&mut nodes[0].1, "RecoverDone fsA", fs_a).await;
        let s = n1.status().await.expect("status");
        let ls = s.lockspaces.iter().find(|l| l.name == "fsA").expect("fsA");
        if ls.members == [1, 2] && !ls.recovering {
            break;
        }
    }
    // The same name in two lockspaces: two resources.
    let a = timeout(
        LONG,
        n1.lock_in("fsA", 0, b"r", Mode::EX, Flags::NONE, false, None),
    )
    .await
    .expect("bounded")
    .expect("EX in fsA");
    timeout(LONG, n2.lock(b"r", Mode::EX, Flags::NONE, false, None))
        .await
        .expect("bounded")
        .expect("EX in the default lockspace");
    let e = n3
        .lock_in("fsA", 0, b"r", Mode::NL, Flags::NONE, false, None)
        .await
        .expect_err("node 3 is not in fsA");
    assert!(e.to_string().contains("not joined"), "{e}");

    // Node 2 leaves fsA: the call resolves once it is out; node 1 hears
    // of the departure, with no RecoverSlot (a clean leave) and no hold.
    timeout(LONG, n2.leave_lockspace("fsA"))
        .await
        .expect("bounded")
        .expect("leave fsA");
    let ev = next_event(&mut nodes[0].1, "RecoverPrep fsA", |e| {
        matches!(e, DlmEvent::RecoverPrep { lockspace, departed, .. } if lockspace == "fsA" && !departed.is_empty())
    })
    .await;
    let DlmEvent::RecoverPrep { departed, .. } = ev else {
        unreachable!()
    };
    assert_eq!(departed.iter().map(|m| m.id).collect::<Vec<_>>(), [2]);
    loop {
        match timeout(LONG, nodes[0].1.recv()).await.expect("bounded") {
            Some(DlmEvent::RecoverSlot { .. }) => panic!("a clean leave needs no recovery"),
            Some(DlmEvent::RecoverDone { lockspace, .. }) if lockspace == "fsA" => break,
            Some(_) => {}
            None => panic!("event stream closed"),
        }
    }
    let s = n1.status().await.expect("status");
    let ls = s.lockspaces.iter().find(|l| l.name == "fsA").expect("fsA");
    assert_eq!(ls.members, [1]);
    assert!(ls.pending_recovery.is_empty());
    assert_eq!(ls.locks, 1, "node 1's lock survived the leave");
    n1.unlock(a.lkid, None).await.expect("unlock");
    assert!(n2
        .lock_in("fsA", 0, b"r", Mode::NL, Flags::NONE, false, None)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockspace_with_its_own_lvb_length_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let nodes = start3(&cfg, false).await;
    let (n1, n2, n3) = (nodes[0].0.clone(), nodes[1].0.clone(), nodes[2].0.clone());
    let fs = LsOptions { lvb_len: 64 };
    let e = n1
        .join_lockspace_with("fs", LsOptions { lvb_len: 60 })
        .await
        .expect_err("60 is not a multiple of 8");
    assert!(e.to_string().contains("multiple of 8"), "{e}");
    // The join resolves once the node is in the lockspace.
    timeout(LONG, n1.join_lockspace_with("fs", fs))
        .await
        .expect("bounded")
        .expect("join 1");
    timeout(LONG, n2.join_lockspace_with("fs", fs))
        .await
        .expect("bounded")
        .expect("join 2");
    let big: Vec<u8> = (0..64).map(|i| i as u8).collect();
    let w = timeout(
        LONG,
        n1.lock_in("fs", 0, b"sb", Mode::EX, Flags::NONE, true, None),
    )
    .await
    .expect("bounded")
    .expect("EX");
    assert_eq!(w.lvb.as_ref().map(Vec::len), Some(64));
    n1.convert(w.lkid, Mode::NL, Flags::NONE, Some(big.clone()), Some(LONG))
        .await
        .expect("down to NL, writing the LVB");
    let r = timeout(
        LONG,
        n2.lock_in("fs", 0, b"sb", Mode::PR, Flags::NONE, true, None),
    )
    .await
    .expect("bounded")
    .expect("PR");
    assert_eq!((r.lvb, r.lvb_valid), (Some(big), true));
    // The default lockspace keeps the cluster file's 32 bytes.
    let d = timeout(LONG, n2.lock(b"sb", Mode::PR, Flags::NONE, true, None))
        .await
        .expect("bounded")
        .expect("PR in default");
    assert_eq!(d.lvb.map(|v| v.len()), Some(32));
    // Node 3 with the cluster file's length: refused, naming both.
    let e = timeout(LONG, n3.join_lockspace("fs"))
        .await
        .expect("bounded")
        .expect_err("32 against 64");
    let t = e.to_string();
    assert!(
        t.contains("\"fs\"")
            && t.contains("32-byte")
            && t.contains("64-byte")
            && t.contains("node 3"),
        "{t}"
    );
    let s = n1.status().await.expect("status");
    let ls = s.lockspaces.iter().find(|l| l.name == "fs").expect("fs");
    assert_eq!(ls.members, [1, 2]);
}

/// `count` locks named `big-<i>` in `mode` on `d`, many in flight at once;
/// their lock ids by `i`.
async fn many_locks(d: &Dlm, count: usize, mode: Mode) -> Vec<u64> {
    let mut lkids = vec![0; count];
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let d = d.clone();
            set.spawn(async move {
                let name = format!("big-{i}");
                (
                    i,
                    d.lock(name.as_bytes(), mode, Flags::NONE, true, None).await,
                )
            });
        }
        while let Some(r) = timeout(LONG, set.join_next()).await.expect("bounded") {
            let (i, grant) = r.expect("join");
            lkids[i] = grant.expect("grant").lkid;
        }
    }
    lkids
}

/// A survivor holding many locks whose master leaves remasters them all
/// and keeps its lease. Recovery used to scan every lock once per name
/// (quadratic): ten thousand locks stalled the driver for seconds, nobody
/// renewed the lease, and the survivor lost every lock it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_with_many_locks_remasters_them_and_keeps_its_lease() {
    const COUNT: usize = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cluster(&dir);
    let mut nodes = start3(&cfg, false).await;
    let n1 = nodes[0].0.clone();
    let n2 = nodes[1].0.clone();
    // Node 1 asks first, so it masters every name; node 2 then holds a
    // lock on each of them there.
    many_locks(&n1, COUNT, Mode::PR).await;
    let mine = many_locks(&n2, COUNT, Mode::PR).await;

    timeout(LONG, n1.leave())
        .await
        .expect("bounded")
        .expect("node 1 leaves");
    wait_members(&n2, 2).await;
    let ev2 = &mut nodes[1].1;
    while let Ok(e) = ev2.try_recv() {
        assert!(
            !matches!(e, DlmEvent::Lost { .. }),
            "node 2 lost its lease: {e:?}"
        );
    }
    let s = n2.status().await.expect("status");
    assert_eq!(s.locks, COUNT, "node 2 kept every lock");
    // The remastered locks work: one converts up, now that only node 2
    // holds it, and node 3 waits for it.
    let g = timeout(LONG, n2.convert(mine[0], Mode::EX, Flags::NONE, None, None))
        .await
        .expect("bounded")
        .expect("convert a remastered lock");
    assert_eq!(g.mode, Mode::EX);
    let e = timeout(
        LONG,
        nodes[2]
            .0
            .lock(b"big-0", Mode::PR, Flags::NOQUEUE, true, None),
    )
    .await
    .expect("bounded")
    .expect_err("node 2 holds big-0 EX");
    assert!(matches!(e, DlmError::WouldBlock { .. }), "{e}");
    for (d, _) in &nodes[1..] {
        let _ = timeout(LONG, d.leave()).await;
    }
}
