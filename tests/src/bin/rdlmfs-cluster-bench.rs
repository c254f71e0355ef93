//! `rdlmfs-cluster-bench`: numbers for a cluster on this machine, not a
//! test (it asserts nothing). One run prints:
//!
//! 1. a file-system workload (sequential write and read of a file, then
//!    create/stat/unlink of small files) on 1, 2 and 3 nodes at once, each
//!    in its own directory: per node and aggregate, with the ratio to one
//!    node;
//! 2. ping-pong: two nodes alternately appending to one file — handoffs
//!    per second, p50/p99 per handoff — beside flock(2) ping-pong between
//!    the same nodes and an uncontended cluster flock lock/unlock (the lock
//!    manager's bare round trip, as the file system sees it);
//! 3. `ls -l` of a 10,000-entry directory on the node that created it and
//!    on another node.
//!
//! Build the workspace first (`cargo build --release --workspace --bins`);
//! it starts clusters with `rdlmfs cluster up` (the test harness).

use rdlmfs_tests::cluster::{ClusterOptions, TestCluster};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const SEQ_MIB: usize = 32;
const SMALL_FILES: usize = 500;
const HANDOFFS: usize = 200;
const LS_ENTRIES: usize = 10_000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdlmfs-cluster-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn opts() -> ClusterOptions {
    ClusterOptions {
        size: "2G".into(),
        ..ClusterOptions::default()
    }
}

/// (sequential write MB/s, sequential read MB/s, small-file ops/s)
type NodeResult = (f64, f64, f64);

fn workload(dir: &Path) -> Result<NodeResult, String> {
    let err = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| err("mkdir", e))?;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(dir.join("seq")).map_err(|e| err("create", e))?;
        for _ in 0..SEQ_MIB {
            f.write_all(&chunk).map_err(|e| err("write", e))?;
        }
        f.sync_all().map_err(|e| err("fsync", e))?;
    }
    let w = SEQ_MIB as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    {
        let mut f = std::fs::File::open(dir.join("seq")).map_err(|e| err("open", e))?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).map_err(|e| err("read", e))? > 0 {}
    }
    let r = SEQ_MIB as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..SMALL_FILES {
        std::fs::write(dir.join(format!("f{i}")), b"x").map_err(|e| err("create", e))?;
    }
    for i in 0..SMALL_FILES {
        std::fs::metadata(dir.join(format!("f{i}"))).map_err(|e| err("stat", e))?;
    }
    for i in 0..SMALL_FILES {
        std::fs::remove_file(dir.join(format!("f{i}"))).map_err(|e| err("unlink", e))?;
    }
    let m = (3 * SMALL_FILES) as f64 / t.elapsed().as_secs_f64();
    Ok((w, r, m))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Alternating steps on two paths to one file (or lock): each step is run
/// by the thread of its node, in turn; returns each handoff's time.
fn ping_pong(
    a: &Path,
    b: &Path,
    step: fn(&Path) -> Result<(), String>,
) -> Result<Vec<Duration>, String> {
    let (to_b, from_a) = std::sync::mpsc::channel::<()>();
    let (to_a, from_b) = std::sync::mpsc::channel::<()>();
    let bp = b.to_path_buf();
    let other = std::thread::spawn(move || -> Result<(), String> {
        for _ in 0..HANDOFFS / 2 {
            if from_a.recv_timeout(Duration::from_secs(60)).is_err() {
                return Err("ping-pong: no turn from node 1 within 60 s".into());
            }
            step(&bp)?;
            if to_a.send(()).is_err() {
                return Ok(());
            }
        }
        Ok(())
    });
    let mut times = Vec::with_capacity(HANDOFFS);
    for _ in 0..HANDOFFS / 2 {
        let t = Instant::now();
        step(a)?;
        times.push(t.elapsed());
        let t = Instant::now();
        to_b.send(())
            .map_err(|_| "ping-pong: node 2's thread ended")?;
        from_b
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "ping-pong: no turn from node 2 within 60 s")?;
        times.push(t.elapsed());
    }
    other
        .join()
        .map_err(|_| "ping-pong thread panicked".to_string())??;
    times.sort();
    Ok(times)
}

fn append_line(p: &Path) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(p)
        .map_err(|e| format!("open {}: {e}", p.display()))?;
    f.write_all(b"ping\n")
        .map_err(|e| format!("append {}: {e}", p.display()))
}

fn flock_cycle(p: &Path) -> Result<(), String> {
    let f = std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
    for op in [libc::LOCK_EX, libc::LOCK_UN] {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            return Err(format!(
                "flock {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn ls_l(dir: &Path) -> Result<Duration, String> {
    let t = Instant::now();
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(|e| format!("readdir {}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("readdir {}: {e}", dir.display()))?;
        std::fs::symlink_metadata(e.path()).map_err(|e| format!("stat: {e}"))?;
        n += 1;
    }
    if n != LS_ENTRIES {
        return Err(format!(
            "{} lists {n} entries, not {LS_ENTRIES}",
            dir.display()
        ));
    }
    Ok(t.elapsed())
}

fn run() -> Result<(), String> {
    println!("rdlmfs cluster benchmark (one machine, loopback NBD and QUIC; numbers, not a test)");
    println!();
    println!("1. workload per node: {SEQ_MIB} MiB sequential write+fsync, read; create/stat/unlink {SMALL_FILES} files; each node in its own directory");
    println!(
        "{:<7} {:>14} {:>14} {:>14} {:>14} {:>14} {:>14}",
        "nodes", "write MB/s", "(per node)", "read MB/s", "(per node)", "meta ops/s", "(per node)"
    );
    let mut base: Option<NodeResult> = None;
    for n in 1..=3u32 {
        let mut c = TestCluster::start(n, &opts())?;
        let dirs: Vec<_> = (1..=n)
            .map(|i| c.mountpoint(i).join(format!("bench{i}")))
            .collect();
        let results: Vec<Result<NodeResult, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = dirs.iter().map(|d| s.spawn(move || workload(d))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("workload panicked".into())))
                .collect()
        });
        let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        let sum = results
            .iter()
            .fold((0.0, 0.0, 0.0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
        let per = |x: f64| x / f64::from(n);
        let b = *base.get_or_insert(sum);
        println!(
            "{:<7} {:>8.1} x{:<4.2} {:>14.1} {:>8.1} x{:<4.2} {:>14.1} {:>8.0} x{:<4.2} {:>14.0}",
            n,
            sum.0,
            sum.0 / b.0,
            per(sum.0),
            sum.1,
            sum.1 / b.1,
            per(sum.1),
            sum.2,
            sum.2 / b.2,
            per(sum.2)
        );
        let f = c.stop()?;
        if !f.clean() {
            return Err(format!("fsck after {n} nodes: {}", f.output));
        }
    }

    let mut c = TestCluster::start(2, &opts())?;
    let (m1, m2) = (c.mountpoint(1).to_path_buf(), c.mountpoint(2).to_path_buf());
    println!();
    println!("2. ping-pong between two nodes ({HANDOFFS} handoffs each)");
    std::fs::write(m1.join("lockfile"), b"").map_err(|e| format!("lockfile: {e}"))?;
    let t = Instant::now();
    for _ in 0..HANDOFFS {
        flock_cycle(&m1.join("lockfile"))?;
    }
    let bare = t.elapsed() / HANDOFFS as u32;
    println!(
        "   uncontended cluster flock lock+unlock on one node: {:.3} ms (the lock manager's round trips)",
        ms(bare)
    );
    for (what, file, step) in [
        (
            "flock(2) EX",
            "lockfile",
            flock_cycle as fn(&Path) -> Result<(), String>,
        ),
        (
            "append to one file",
            "pingpong",
            append_line as fn(&Path) -> Result<(), String>,
        ),
    ] {
        let times = ping_pong(&m1.join(file), &m2.join(file), step)?;
        let total: Duration = times.iter().sum();
        println!(
            "   {what:<20} {:>8.0} handoffs/s  p50 {:>7.3} ms  p99 {:>7.3} ms  (p50 x{:.1} the bare lock)",
            times.len() as f64 / total.as_secs_f64(),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(percentile(&times, 0.5)) / ms(bare)
        );
    }
    let lines = std::fs::read_to_string(m2.join("pingpong"))
        .map_err(|e| format!("pingpong: {e}"))?
        .lines()
        .count();
    if lines != HANDOFFS {
        return Err(format!("ping-pong file has {lines} lines, not {HANDOFFS}"));
    }

    println!();
    println!("3. ls -l of a {LS_ENTRIES}-entry directory");
    let big = m1.join("big");
    std::fs::create_dir(&big).map_err(|e| format!("mkdir big: {e}"))?;
    let t = Instant::now();
    for i in 0..LS_ENTRIES {
        std::fs::write(big.join(format!("entry-{i:05}")), b"")
            .map_err(|e| format!("create entry {i}: {e}"))?;
    }
    println!("   created on node 1 in {:.2} s", t.elapsed().as_secs_f64());
    let here = ls_l(&big)?;
    let there = ls_l(&m2.join("big"))?;
    let again = ls_l(&m2.join("big"))?;
    println!(
        "   node 1 (creator) {:.2} s, node 2 {:.2} s (x{:.1}), node 2 again {:.2} s",
        here.as_secs_f64(),
        there.as_secs_f64(),
        there.as_secs_f64() / here.as_secs_f64(),
        again.as_secs_f64()
    );
    let f = c.stop()?;
    if !f.clean() {
        return Err(format!("fsck: {}", f.output));
    }
    Ok(())
}
