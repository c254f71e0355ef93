//! `rdlmfs-stress ping-pong`: ctdb-style `fcntl` lock ping-pong between real
//! processes (POSIX locks belong to processes, so threads would not
//! contend), each process through one of the given paths to one file.
//!
//! The ring. With P processes and N > P lock bytes (default N = P + 1),
//! process `i` starts holding byte `i`, then loops: lock byte `(b+1) % N`
//! (F_SETLKW), work on byte `b`, unlock `b`, move to `b+1`. Each process
//! holds one byte while it waits for the next, and at least one byte is
//! free, so no cycle of waiters can form. No process can overtake the one
//! ahead of it (it would need the byte that one holds), so the cyclic order
//! of processes never changes and the step counts of any two processes
//! differ by at most N - P.
//!
//! The `--rw` check. Every byte `b` is a counter incremented by each process
//! that works on it, under the lock. Because the order never changes, the
//! visitors of byte `b` follow a fixed cycle: first process `f = min(b, P-1)`
//! (the one that starts on it, or the front runner for the spare bytes),
//! then `f-1`, ..., `0`, `P-1`, ..., `f+1`, and again. So at its `m`-th visit
//! of byte `b`, process `i` must read exactly
//! `((f - i) mod P + m * P) mod 256`: what the previous holder (process
//! `i+1`) wrote. It then writes the expected value plus one (not what it
//! read, so one bad read is reported once instead of cascading). This is
//! ctdb's "data increment" check made exact.
//!
//! Stopping. A run ends at a step count all processes agree on, so no
//! process waits for a visit that will never come: the first process to see
//! the stop request proposes its own step + (N - P) + 1 (compare-and-swap),
//! which no process can have passed, and every process stops there.
//!
//! Processes share a small memfd mapping with the parent for the start
//! barrier, the stop agreement and progress counters; the parent re-execs
//! this binary with a hidden `ping-pong-child` subcommand, kills every child
//! by PID on any error, and bounds every wait.
//!
//! This file owns the parent (setup, monitor, report, exit code), the child
//! loop, and the shared memory layout.

use super::{errno_name, io_errno, EXIT_IMPOSSIBLE, EXIT_OK, EXIT_SETUP};
use rand::RngCore;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Marks a valid shared mapping, so a child given a wrong fd says so.
const MAGIC: u64 = 0x7264_6c6d_5050_0001;
/// No byte (for `Slot::waiting`).
const NONE: u64 = u64::MAX;
/// How long children get to open their file and take their first lock.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed child gets to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Mismatches printed per process.
const MAX_MISMATCHES_SHOWN: u64 = 10;
/// Bytes of the "same file" token written after the lock bytes.
const TOKEN_LEN: usize = 16;

/// What `rdlmfs-stress ping-pong` was asked to do.
#[derive(Clone, Debug)]
pub struct PingPongOptions {
    /// Process `i` uses `files[i % files.len()]`.
    pub files: Vec<PathBuf>,
    pub procs: usize,
    /// Number of lock bytes; more than `procs`.
    pub locks: usize,
    pub rw: bool,
    pub duration: Option<Duration>,
    /// Steps per process.
    pub count: Option<u64>,
    /// No handoff for this long is a deadlock.
    pub stall_timeout: Duration,
    /// Skip the check that all paths are one file (tests use this to show
    /// that `--rw` catches locks that do not exclude each other).
    pub skip_same_file_check: bool,
}

/// What a child process is told by its parent.
#[derive(Clone, Debug)]
pub struct ChildOptions {
    pub index: usize,
    pub procs: usize,
    pub locks: usize,
    pub rw: bool,
    pub count: Option<u64>,
    pub shm_fd: RawFd,
    pub parent: u32,
    pub file: PathBuf,
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    procs: AtomicU64,
    /// Set by the parent once every child holds its first lock.
    go: AtomicU32,
    /// Set by the parent when the run should end.
    stop_requested: AtomicU32,
    /// The agreed final step count, or `NONE`.
    stop_at: AtomicU64,
}

#[repr(C)]
struct Slot {
    steps: AtomicU64,
    /// The byte this process holds.
    pos: AtomicU64,
    /// The byte it is waiting for, or `NONE`.
    waiting: AtomicU64,
    mismatches: AtomicU64,
    ready: AtomicU32,
    _pad: AtomicU32,
}

/// The shared mapping: a `Header` followed by one `Slot` per process. All
/// fields are atomics, valid when zero (a fresh memfd is zero-filled).
struct Shm {
    ptr: *mut u8,
    len: usize,
    procs: usize,
}

impl Shm {
    fn size(procs: usize) -> usize {
        std::mem::size_of::<Header>() + procs * std::mem::size_of::<Slot>()
    }

    fn map(fd: RawFd, procs: usize) -> io::Result<Shm> {
        let len = Shm::size(procs);
        // SAFETY: mapping a descriptor we were given; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shm {
            ptr: ptr.cast(),
            len,
            procs,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page aligned, at least `len` bytes, and
        // every bit pattern of an atomic integer is valid.
        unsafe { &*(self.ptr as *const Header) }
    }

    fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.procs);
        // SAFETY: in bounds (checked), 8-byte aligned (Header and Slot are
        // multiples of 8 bytes), atomics valid for any bits.
        unsafe {
            &*(self
                .ptr
                .add(std::mem::size_of::<Header>() + i * std::mem::size_of::<Slot>())
                as *const Slot)
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Takes (`F_WRLCK`) or releases (`F_UNLCK`) the POSIX lock on one byte,
/// waiting as long as it takes.
fn set_lock(fd: RawFd, byte: u64, ltype: libc::c_int) -> Result<(), i32> {
    // SAFETY: flock is plain data; zero is a valid starting value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ltype as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    loop {
        // SAFETY: fd is open; fl is a valid flock.
        let r = unsafe { libc::fcntl(fd, libc::F_SETLKW, &fl) };
        if r == 0 {
            return Ok(());
        }
        let e = io_errno(&io::Error::last_os_error());
        // A signal interrupted the wait; the lock state is unchanged.
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// The value process `i` of `procs` must read at its `visit`-th visit
/// (from 0) of byte `byte` under `--rw`; see the module comment.
pub fn expected_value(i: usize, procs: usize, byte: usize, visit: u64) -> u8 {
    let first = byte.min(procs - 1);
    let before = ((first + procs - i) % procs) as u64;
    (before.wrapping_add(visit.wrapping_mul(procs as u64)) % 256) as u8
}

/// The body of a child process; returns its exit code.
pub fn child_main(o: ChildOptions) -> i32 {
    let me = format!("ping-pong proc {} ({})", o.index, o.file.display());
    // Die with the parent, whatever kills it; then make sure the parent did
    // not die before that took effect.
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } as u32 != o.parent {
        return EXIT_SETUP;
    }
    if o.procs < 2 || o.locks <= o.procs || o.index >= o.procs {
        eprintln!("{me}: bad arguments");
        return EXIT_SETUP;
    }
    let shm = match Shm::map(o.shm_fd, o.procs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{me}: mapping shared memory fd {}: {e}", o.shm_fd);
            return EXIT_SETUP;
        }
    };
    let hdr = shm.header();
    if hdr.magic.load(Ordering::Acquire) != MAGIC
        || hdr.procs.load(Ordering::Relaxed) != o.procs as u64
    {
        eprintln!("{me}: shared memory fd {} is not ours", o.shm_fd);
        return EXIT_SETUP;
    }
    let slot = shm.slot(o.index);
    let file = match fs::OpenOptions::new().read(true).write(true).open(&o.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{me}: open: {e}");
            return EXIT_SETUP;
        }
    };
    let fd = file.as_raw_fd();
    let n = o.locks as u64;
    let p = o.procs as u64;
    let mut pos = o.index as u64;
    slot.waiting.store(pos, Ordering::Relaxed);
    if let Err(e) = set_lock(fd, pos, libc::F_WRLCK) {
        eprintln!("{me}: lock byte {pos}: {}", errno_name(e));
        return EXIT_IMPOSSIBLE;
    }
    slot.waiting.store(NONE, Ordering::Relaxed);
    slot.pos.store(pos, Ordering::Relaxed);
    slot.ready.store(1, Ordering::Release);
    // The parent bounds this wait (it kills us); this bound only matters if
    // the parent is stuck.
    let wait_start = Instant::now();
    while hdr.go.load(Ordering::Acquire) == 0 {
        if wait_start.elapsed() > READY_TIMEOUT * 2 {
            eprintln!("{me}: no start signal from the parent");
            return EXIT_SETUP;
        }
        thread::sleep(Duration::from_micros(200));
    }

    let slack = n - p + 1;
    let limit = o.count.unwrap_or(u64::MAX);
    let mut visits = vec![0u64; o.locks];
    let mut step = 0u64;
    let mut code = EXIT_OK;
    let mut buf = [0u8; 1];
    loop {
        let mut stop_at = hdr.stop_at.load(Ordering::Acquire);
        if stop_at == NONE && hdr.stop_requested.load(Ordering::Acquire) != 0 {
            // Propose a stop no process can have passed; the first proposal
            // wins and everybody uses it.
            let _ = hdr.stop_at.compare_exchange(
                NONE,
                step + slack,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            stop_at = hdr.stop_at.load(Ordering::Acquire);
        }
        if step >= limit.min(stop_at) {
            break;
        }
        let next = (pos + 1) % n;
        slot.waiting.store(next, Ordering::Relaxed);
        if let Err(e) = set_lock(fd, next, libc::F_WRLCK) {
            eprintln!("{me}: step {step}: lock byte {next}: {}", errno_name(e));
            code = EXIT_IMPOSSIBLE;
            break;
        }
        slot.waiting.store(NONE, Ordering::Relaxed);
        if o.rw {
            let b = pos as usize;
            let want = expected_value(o.index, o.procs, b, visits[b]);
            if let Err(e) = file.read_exact_at(&mut buf, pos) {
                eprintln!(
                    "{me}: step {step}: read byte {pos}: {}",
                    errno_name(io_errno(&e))
                );
                code = EXIT_IMPOSSIBLE;
                break;
            }
            if buf[0] != want {
                let m = slot.mismatches.fetch_add(1, Ordering::Relaxed);
                if m < MAX_MISMATCHES_SHOWN {
                    eprintln!(
                        "{me}: MISMATCH at step {step}: byte {pos} (visit {}) holds {}, expected \
                         {want}, which proc {} wrote under the lock before",
                        visits[b],
                        buf[0],
                        (o.index + 1) % o.procs
                    );
                }
                code = EXIT_IMPOSSIBLE;
            }
            if let Err(e) = file.write_all_at(&[want.wrapping_add(1)], pos) {
                eprintln!(
                    "{me}: step {step}: write byte {pos}: {}",
                    errno_name(io_errno(&e))
                );
                code = EXIT_IMPOSSIBLE;
                break;
            }
            visits[b] += 1;
        }
        if let Err(e) = set_lock(fd, pos, libc::F_UNLCK) {
            eprintln!("{me}: step {step}: unlock byte {pos}: {}", errno_name(e));
            code = EXIT_IMPOSSIBLE;
            break;
        }
        pos = next;
        step += 1;
        slot.pos.store(pos, Ordering::Relaxed);
        slot.steps.store(step, Ordering::Release);
    }
    code
}

/// The children of one run. Dropping it kills (by PID) and reaps every
/// child still running, so no error path leaves processes behind.
struct Children {
    procs: Vec<(Child, Option<ExitStatus>)>,
}

impl Children {
    /// Records exits without blocking; returns how many are still running.
    fn poll(&mut self) -> usize {
        let mut running = 0;
        for (c, st) in &mut self.procs {
            if st.is_none() {
                match c.try_wait() {
                    Ok(Some(s)) => *st = Some(s),
                    Ok(None) => running += 1,
                    // Cannot happen for our own child; count it as gone.
                    Err(_) => *st = Some(ExitStatus::from_raw(EXIT_SETUP << 8)),
                }
            }
        }
        running
    }

    /// Waits until all exit or `timeout` passes; true if all exited.
    fn wait_all(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.poll() == 0 {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill_all(&mut self) {
        for (c, st) in &mut self.procs {
            if st.is_none() {
                // Child::kill sends SIGKILL to this child's PID only.
                let _ = c.kill();
            }
        }
        if !self.wait_all(REAP_TIMEOUT) {
            for (c, st) in &self.procs {
                if st.is_none() {
                    eprintln!(
                        "ping-pong: child pid {} did not die within {:?} of SIGKILL (stuck in \
                         the kernel?)",
                        c.id(),
                        REAP_TIMEOUT
                    );
                }
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn setup_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rdlmfs-stress ping-pong: {msg}");
    EXIT_SETUP
}

/// Creates (if needed) the file through the first path, zeroes the lock
/// bytes, and checks every other path shows the same file by reading back a
/// random token written through the first.
fn prepare_file(o: &PingPongOptions) -> Result<(), String> {
    let mut token = [0u8; TOKEN_LEN];
    rand::thread_rng().fill_bytes(&mut token);
    let mut init = vec![0u8; o.locks];
    init.extend_from_slice(&token);
    let f0 = &o.files[0];
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        // Only the first bytes are ours; leave the rest of an existing file.
        .truncate(false)
        .mode(0o644)
        .open(f0)
        .map_err(|e| format!("open {}: {e}", f0.display()))?;
    f.write_all_at(&init, 0)
        .map_err(|e| format!("write {}: {e}", f0.display()))?;
    drop(f);
    if o.skip_same_file_check {
        return Ok(());
    }
    for p in &o.files[1..] {
        let f = fs::File::open(p).map_err(|e| {
            format!(
                "open {}: {e}; every FILE must be the file just created through {}",
                p.display(),
                f0.display()
            )
        })?;
        let mut got = [0u8; TOKEN_LEN];
        f.read_exact_at(&mut got, o.locks as u64)
            .map_err(|e| format!("read {}: {e}", p.display()))?;
        if got != token {
            return Err(format!(
                "{} does not show the data just written through {}: the paths are not the same \
                 file (or the file system is not coherent)",
                p.display(),
                f0.display()
            ));
        }
    }
    Ok(())
}

/// Runs `rdlmfs-stress ping-pong` and returns the exit code. `rerun` is
/// the command line that repeats this run, printed on failure.
pub fn run(o: PingPongOptions, rerun: &str) -> i32 {
    if o.files.is_empty() {
        return setup_error("need at least one FILE");
    }
    if o.procs < 2 {
        return setup_error(format!(
            "need more than one process (got {}); give several FILEs or --procs N",
            o.procs
        ));
    }
    if o.locks <= o.procs {
        return setup_error(format!(
            "--locks ({}) must be more than --procs ({}), or the ring deadlocks",
            o.locks, o.procs
        ));
    }
    if let Err(e) = prepare_file(&o) {
        return setup_error(e);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return setup_error(format!("cannot find this program to start children: {e}")),
    };
    // No MFD_CLOEXEC: the children inherit the descriptor across exec.
    // SAFETY: a NUL-terminated name; the result is checked.
    let raw = unsafe { libc::memfd_create(c"rdlmfs-stress-ping-pong".as_ptr(), 0) };
    if raw < 0 {
        return setup_error(format!("memfd_create: {}", io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let memfile = fs::File::from(memfd);
    if let Err(e) = memfile.set_len(Shm::size(o.procs) as u64) {
        return setup_error(format!("sizing shared memory: {e}"));
    }
    let shm = match Shm::map(memfile.as_raw_fd(), o.procs) {
        Ok(s) => s,
        Err(e) => return setup_error(format!("mapping shared memory: {e}")),
    };
    let hdr = shm.header();
    hdr.procs.store(o.procs as u64, Ordering::Relaxed);
    hdr.stop_at.store(NONE, Ordering::Relaxed);
    for i in 0..o.procs {
        shm.slot(i).waiting.store(NONE, Ordering::Relaxed);
    }
    hdr.magic.store(MAGIC, Ordering::Release);

    println!(
        "rdlmfs-stress ping-pong: {} procs over {} path(s), {} lock bytes{}, {}",
        o.procs,
        o.files.len(),
        o.locks,
        if o.rw { ", --rw" } else { "" },
        match (o.duration, o.count) {
            (Some(d), Some(c)) => format!("{c} steps per proc or {:.1} s", d.as_secs_f64()),
            (Some(d), None) => format!("{:.1} s", d.as_secs_f64()),
            (None, Some(c)) => format!("{c} steps per proc"),
            (None, None) => "until stopped".to_string(),
        }
    );

    let mut children = Children { procs: Vec::new() };
    let parent = std::process::id();
    for i in 0..o.procs {
        let file = &o.files[i % o.files.len()];
        let mut cmd = Command::new(&exe);
        cmd.arg("ping-pong-child")
            .arg("--index")
            .arg(i.to_string())
            .arg("--procs")
            .arg(o.procs.to_string())
            .arg("--locks")
            .arg(o.locks.to_string())
            .arg("--shm-fd")
            .arg(memfile.as_raw_fd().to_string())
            .arg("--parent")
            .arg(parent.to_string())
            .stdin(Stdio::null());
        if o.rw {
            cmd.arg("--rw");
        }
        if let Some(c) = o.count {
            cmd.arg("--count").arg(c.to_string());
        }
        cmd.arg("--").arg(file);
        match cmd.spawn() {
            Ok(c) => children.procs.push((c, None)),
            Err(e) => return setup_error(format!("starting child {i}: {e}")),
        }
    }

    // Start barrier: every child holds its first byte before anyone moves,
    // which the --rw model relies on.
    let ready_end = Instant::now() + READY_TIMEOUT;
    loop {
        if (0..o.procs).all(|i| shm.slot(i).ready.load(Ordering::Acquire) == 1) {
            break;
        }
        if children.poll() < o.procs {
            return setup_error("a child exited before starting (see its message above)");
        }
        if Instant::now() >= ready_end {
            let late: Vec<String> = (0..o.procs)
                .filter(|&i| shm.slot(i).ready.load(Ordering::Acquire) == 0)
                .map(|i| i.to_string())
                .collect();
            return setup_error(format!(
                "procs {} did not take their first lock within {:?}; does another process hold \
                 locks on the file?",
                late.join(", "),
                READY_TIMEOUT
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    hdr.go.store(1, Ordering::Release);

    let total = |shm: &Shm| -> u64 {
        (0..o.procs)
            .map(|i| shm.slot(i).steps.load(Ordering::Acquire))
            .sum()
    };
    let mut last_total = 0;
    let mut last_change = start;
    let mut next_report = start + Duration::from_secs(1);
    let mut reported_total = 0;
    let mut stop_sent: Option<Instant> = None;
    let mut failed_child = None;
    loop {
        thread::sleep(Duration::from_millis(20));
        let running = children.poll();
        // A child that failed ends the run at once: the ring is broken.
        if let Some(i) = children
            .procs
            .iter()
            .position(|(_, st)| st.is_some_and(|s| !s.success()))
        {
            failed_child = Some(i);
            break;
        }
        if running == 0 {
            break;
        }
        let now = Instant::now();
        let t = total(&shm);
        if t != last_total {
            last_total = t;
            last_change = now;
        } else if now.duration_since(last_change) > o.stall_timeout {
            println!(
                "DEADLOCK: no lock handoff for {:.1} s (--stall-timeout); state:",
                o.stall_timeout.as_secs_f64()
            );
            print_states(&shm, &o);
            children.kill_all();
            println!("FAILED (exit {EXIT_IMPOSSIBLE}): lock ping-pong stopped making progress");
            println!("rerun: {rerun}");
            return EXIT_IMPOSSIBLE;
        }
        if now >= next_report {
            println!(
                "  {:6.1}s  {:>10} handoffs/s",
                now.duration_since(start).as_secs_f64(),
                t - reported_total
            );
            reported_total = t;
            next_report += Duration::from_secs(1);
        }
        if stop_sent.is_none() && o.duration.is_some_and(|d| now.duration_since(start) >= d) {
            hdr.stop_requested.store(1, Ordering::Release);
            stop_sent = Some(now);
        }
    }
    let elapsed = start.elapsed();
    if failed_child.is_some() {
        // Let the others notice nothing; the run is over.
        children.kill_all();
    }

    let steps: Vec<u64> = (0..o.procs)
        .map(|i| shm.slot(i).steps.load(Ordering::Acquire))
        .collect();
    let mismatches: u64 = (0..o.procs)
        .map(|i| shm.slot(i).mismatches.load(Ordering::Acquire))
        .sum();
    let sum: u64 = steps.iter().sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "total: {sum} handoffs in {secs:.2} s = {:.0} handoffs/s (a handoff = lock the next byte, \
         unlock the held one)",
        sum as f64 / secs
    );
    let per: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}: {s}"))
        .collect();
    println!("per proc: {}", per.join(", "));
    if o.rw {
        println!("rw: {sum} values checked, {mismatches} mismatches");
    }

    let mut code = EXIT_OK;
    let mut why = Vec::new();
    for (i, (_, st)) in children.procs.iter().enumerate() {
        match st {
            Some(s) if s.success() => {}
            Some(s) => {
                let c = match s.code() {
                    Some(EXIT_SETUP) => EXIT_SETUP,
                    Some(_) => EXIT_IMPOSSIBLE,
                    // Killed by a signal: ours (after another child failed)
                    // or someone else's.
                    None if failed_child.is_some() && failed_child != Some(i) => continue,
                    None => EXIT_IMPOSSIBLE,
                };
                why.push(format!("proc {i} {}", describe_status(s)));
                code = code.max(c);
            }
            None => {}
        }
    }
    if mismatches > 0 {
        why.push(format!("{mismatches} rw mismatches"));
        code = EXIT_IMPOSSIBLE;
    }
    if code == EXIT_SETUP && mismatches > 0 {
        code = EXIT_IMPOSSIBLE;
    }
    if code == EXIT_OK {
        println!("OK");
    } else {
        println!("FAILED (exit {code}): {}", why.join(", "));
        println!("rerun: {rerun}");
    }
    code
}

fn describe_status(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

fn print_states(shm: &Shm, o: &PingPongOptions) {
    for i in 0..o.procs {
        let s = shm.slot(i);
        let waiting = s.waiting.load(Ordering::Acquire);
        println!(
            "  proc {i} ({}): step {}, holds byte {}, {}",
            o.files[i % o.files.len()].display(),
            s.steps.load(Ordering::Acquire),
            s.pos.load(Ordering::Acquire),
            if waiting == NONE {
                "not waiting for a lock".to_string()
            } else {
                format!("waiting for byte {waiting}")
            }
        );
    }
}
