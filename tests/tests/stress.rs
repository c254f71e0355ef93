//! Tests of `rdlmfs-stress`: the built binary against local temporary
//! directories (one path, and two views of one directory through a bind
//! mount, or a symlink where mounting is not allowed), runs that must fail
//! (two different directories, unshared locks, a stuck lock ring), and unit
//! tests of the errno model, the ping-pong value model and the tree diff.
//!
//! Every run of the binary has a timeout after which it is killed by PID.

use rdlmfs_tests::stress::model::{classify, Op};
use rdlmfs_tests::stress::pingpong::expected_value;
use rdlmfs_tests::stress::tree::{self, Diff, Entry, Kind, Listing};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rdlmfs-stress");

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
    });
    rx
}

/// Runs the binary with `args`; kills it (by PID) if it outlives `timeout`.
fn run<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let grab = |rx: mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "<output still open>".into())
    };
    let o = Output {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: grab(out),
        stderr: grab(err),
    };
    assert!(
        status.is_some(),
        "rdlmfs-stress {:?} timed out after {timeout:?}\n{}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        o.all()
    );
    o
}

/// A bind mount, unmounted on drop (even when the test panics).
struct BindMount {
    target: PathBuf,
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

/// A second path to `dir` inside `scratch`: a bind mount when this process
/// may mount, else a symlink. Keep the guard alive while the path is used.
fn second_view(dir: &Path, scratch: &Path) -> (PathBuf, Option<BindMount>) {
    let view = scratch.join("view");
    std::fs::create_dir(&view).unwrap();
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(dir)
        .arg(&view)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        return (view.clone(), Some(BindMount { target: view }));
    }
    eprintln!("cannot bind mount here; using a symlinked path instead");
    std::fs::remove_dir(&view).unwrap();
    std::os::unix::fs::symlink(dir, &view).unwrap();
    (view, None)
}

const T: Duration = Duration::from_secs(20);

#[test]
fn meta_on_one_path_passes_and_removes_its_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(
        &[
            OsStr::new("meta"),
            "-p".as_ref(),
            "3".as_ref(),
            "-n".as_ref(),
            "300".as_ref(),
            "-S".as_ref(),
            "11".as_ref(),
            tmp.path().as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("seed 11"), "{}", o.all());
    assert!(o.stdout.contains("ran 900 ops"), "{}", o.all());
    assert!(o.stdout.contains("OK:"), "{}", o.all());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "tree left behind"
    );
}

#[test]
fn meta_through_two_views_of_one_directory_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let (view, _guard) = second_view(&dir, tmp.path());
    let o = run(
        &[
            OsStr::new("meta"),
            "-p".as_ref(),
            "4".as_ref(),
            "-n".as_ref(),
            "400".as_ref(),
            "--max-entries".as_ref(),
            "60".as_ref(),
            dir.as_os_str(),
            view.as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("shows the same tree"), "{}", o.all());
    // A random seed was drawn and printed.
    assert!(o.stdout.contains("seed "), "{}", o.all());
}

#[test]
fn meta_through_two_different_directories_reports_a_mismatch() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let o = run(
        &[
            OsStr::new("meta"),
            "-p".as_ref(),
            "2".as_ref(),
            "-n".as_ref(),
            "100".as_ref(),
            a.path().as_os_str(),
            b.path().as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("MISMATCH:"), "{}", o.all());
    // The diff names the entries through both paths.
    assert!(
        o.stdout.contains(&a.path().display().to_string()),
        "{}",
        o.all()
    );
    assert!(
        o.stdout.contains(&b.path().display().to_string()),
        "{}",
        o.all()
    );
    // The rerun line carries the seed that was drawn.
    let rerun = o.stdout.lines().find(|l| l.starts_with("rerun: ")).unwrap();
    assert!(rerun.contains(" --seed "), "{}", o.all());
    assert!(rerun.contains(BIN), "{}", o.all());
    // Cleaned up through both paths.
    assert_eq!(std::fs::read_dir(a.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0);

    // With the tree root already present through the second path, the
    // setup check passes and only the final tree comparison can notice.
    std::fs::create_dir(b.path().join("stress.77")).unwrap();
    let o = run(
        &[
            OsStr::new("meta"),
            "-p".as_ref(),
            "2".as_ref(),
            "-n".as_ref(),
            "100".as_ref(),
            "-S".as_ref(),
            "77".as_ref(),
            a.path().as_os_str(),
            b.path().as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(!o.stdout.contains("MISMATCH at setup"), "{}", o.all());
    assert!(o.stdout.contains("MISMATCH:"), "{}", o.all());
    assert!(o.stdout.contains("rerun: "), "{}", o.all());
}

/// The summary table: the op rows, without timings.
fn table(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("  ")).collect()
}

#[test]
fn meta_with_one_worker_is_reproducible_from_the_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for d in [a.path(), b.path()] {
        let o = run(
            &[
                OsStr::new("meta"),
                "-p".as_ref(),
                "1".as_ref(),
                "-n".as_ref(),
                "400".as_ref(),
                "-S".as_ref(),
                "4242".as_ref(),
                "--keep".as_ref(),
                d.as_os_str(),
            ],
            T,
        );
        assert_eq!(o.code, 0, "{}", o.all());
        outs.push(o);
    }
    assert_eq!(table(&outs[0].stdout), table(&outs[1].stdout));
    let la = tree::walk(&a.path().join("stress.4242")).unwrap();
    let lb = tree::walk(&b.path().join("stress.4242")).unwrap();
    assert!(
        la.len() > 10,
        "tree too small to mean anything: {}",
        la.len()
    );
    assert_eq!(tree::diff(&la, &lb), Vec::new());

    // Rerunning into a kept tree is refused: it would mix two runs.
    let o = run(
        &[
            OsStr::new("meta"),
            "-S".as_ref(),
            "4242".as_ref(),
            a.path().as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 3, "{}", o.all());
    assert!(o.stderr.contains("stress.4242"), "{}", o.all());
}

#[test]
fn meta_usage_errors_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    for args in [
        // No DIR.
        vec![OsStr::new("meta")],
        vec![OsStr::new("meta"), missing.as_os_str()],
        vec![
            OsStr::new("meta"),
            "-p".as_ref(),
            "0".as_ref(),
            tmp.path().as_os_str(),
        ],
        vec![
            OsStr::new("meta"),
            "--duration".as_ref(),
            "x".as_ref(),
            tmp.path().as_os_str(),
        ],
        vec![OsStr::new("nonsense")],
    ] {
        let o = run(&args, T);
        assert_eq!(o.code, 3, "{args:?}\n{}", o.all());
    }
    let o = run(&["--help"], T);
    assert_eq!(o.code, 0, "{}", o.all());
}

#[test]
fn ping_pong_rw_three_procs_through_two_views() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let (view, _guard) = second_view(&dir, tmp.path());
    let o = run(
        &[
            OsStr::new("ping-pong"),
            "--rw".as_ref(),
            "--procs".as_ref(),
            "3".as_ref(),
            "--duration".as_ref(),
            "2".as_ref(),
            dir.join("f").as_os_str(),
            view.join("f").as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("handoffs/s"), "{}", o.all());
    assert!(o.stdout.contains(", 0 mismatches"), "{}", o.all());
}

#[test]
fn ping_pong_count_stops_every_proc_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    let o = run(
        &[
            OsStr::new("ping-pong"),
            "--rw".as_ref(),
            "--procs".as_ref(),
            "3".as_ref(),
            "--locks".as_ref(),
            "5".as_ref(),
            "--count".as_ref(),
            "2000".as_ref(),
            f.as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout.contains("per proc: 0: 2000, 1: 2000, 2: 2000"),
        "{}",
        o.all()
    );
    assert!(
        o.stdout.contains("6000 values checked, 0 mismatches"),
        "{}",
        o.all()
    );
}

#[test]
fn ping_pong_rw_catches_locks_that_do_not_exclude() {
    // Two different files with the same-file check skipped: the procs on
    // one file do not contend with the one on the other, exactly as if the
    // file system's locks were not cluster-wide.
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::write(&b, [0u8; 64]).unwrap();
    let o = run(
        &[
            OsStr::new("ping-pong"),
            "--rw".as_ref(),
            "--unsafe-skip-same-file-check".as_ref(),
            "--procs".as_ref(),
            "3".as_ref(),
            "--duration".as_ref(),
            "1".as_ref(),
            a.as_os_str(),
            b.as_os_str(),
        ],
        T,
    );
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stderr.contains("MISMATCH"), "{}", o.all());
    assert!(o.stdout.contains("rerun: "), "{}", o.all());
}

/// PIDs of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn ping_pong_reports_a_stuck_ring_and_kills_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("stuck");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&f)
        .unwrap();
    // Hold the spare byte of a 2-proc, 3-byte ring from this process: the
    // procs start (their bytes are free), then the ring cannot move.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 2;
    fl.l_len = 1;
    assert_eq!(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) },
        0
    );
    let o = run(
        &[
            OsStr::new("ping-pong"),
            "--procs".as_ref(),
            "2".as_ref(),
            "--stall-timeout".as_ref(),
            "1".as_ref(),
            "--duration".as_ref(),
            "5".as_ref(),
            f.as_os_str(),
        ],
        T,
    );
    drop(file);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stdout.contains("DEADLOCK"), "{}", o.all());
    assert!(o.stdout.contains("waiting for byte 2"), "{}", o.all());
    let left = processes_mentioning(&f.display().to_string());
    assert!(left.is_empty(), "children left running: {left:?}");
}

#[test]
fn ping_pong_usage_errors_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::write(&b, [0u8; 64]).unwrap();
    for args in [
        // One path and no --procs: one process cannot ping-pong.
        vec![OsStr::new("ping-pong"), a.as_os_str()],
        // Two paths that are not one file.
        vec![OsStr::new("ping-pong"), a.as_os_str(), b.as_os_str()],
        // As many locks as procs would deadlock.
        vec![
            OsStr::new("ping-pong"),
            "--procs".as_ref(),
            "2".as_ref(),
            "--locks".as_ref(),
            "2".as_ref(),
            a.as_os_str(),
        ],
    ] {
        let o = run(&args, T);
        assert_eq!(o.code, 3, "{args:?}\n{}", o.all());
    }
}

#[test]
fn errno_classification() {
    let always_impossible = [
        libc::EIO,
        libc::ENOTCONN,
        libc::ESTALE,
        libc::EBADF,
        libc::EFAULT,
        libc::EACCES,
        libc::ENOSPC,
        libc::EROFS,
        12345,
    ];
    for op in Op::ALL {
        for e in always_impossible {
            assert!(!classify(op, e).is_possible(), "{op} errno {e}");
        }
        for e in [libc::ENOENT, libc::ENOTDIR, libc::ELOOP] {
            assert!(classify(op, e).is_possible(), "{op} errno {e}");
        }
        let only = |e: i32, ops: &[Op]| {
            assert_eq!(
                classify(op, e).is_possible(),
                ops.contains(&op),
                "{op} errno {e}"
            );
        };
        only(libc::EINVAL, &[Op::Rename]);
        only(libc::ENODATA, &[Op::Setxattr, Op::Removexattr]);
        only(libc::ENOTSUP, &[Op::Setxattr, Op::Removexattr]);
        only(
            libc::EEXIST,
            &[
                Op::Create,
                Op::Mkdir,
                Op::Symlink,
                Op::Link,
                Op::Rmdir,
                Op::Rename,
                Op::Setxattr,
            ],
        );
        only(libc::ENOTEMPTY, &[Op::Rmdir, Op::Rename]);
        only(
            libc::EISDIR,
            &[Op::Unlink, Op::Rename, Op::Write, Op::Truncate],
        );
        only(libc::EXDEV, &[Op::Rename, Op::Link]);
        only(libc::EMLINK, &[Op::Link, Op::Mkdir, Op::Rename]);
        only(libc::EPERM, &[Op::Link]);
    }
}

/// Simulates the ring with a random schedule (any process whose next byte
/// is free may step) and checks the closed form of the --rw model against
/// it, for many sizes.
#[test]
fn ping_pong_value_model_matches_a_simulated_ring() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for procs in 2..7 {
        for locks in procs + 1..procs + 4 {
            let mut pos: Vec<usize> = (0..procs).collect();
            let mut data = vec![0u8; locks];
            let mut visits = vec![vec![0u64; locks]; procs];
            for _ in 0..3000 {
                let movable: Vec<usize> = (0..procs)
                    .filter(|&i| !pos.contains(&((pos[i] + 1) % locks)))
                    .collect();
                assert!(
                    !movable.is_empty(),
                    "ring deadlocked: {procs} procs {locks} locks"
                );
                let i = movable[rng.gen_range(0..movable.len())];
                let b = pos[i];
                let want = expected_value(i, procs, b, visits[i][b]);
                assert_eq!(
                    data[b], want,
                    "procs {procs} locks {locks} proc {i} byte {b}"
                );
                data[b] = want.wrapping_add(1);
                visits[i][b] += 1;
                pos[i] = (b + 1) % locks;
            }
        }
    }
}

fn entry(kind: Kind, size: u64) -> Entry {
    Entry {
        kind,
        size,
        nlink: 1,
        mode: 0o644,
        uid: 0,
        gid: 0,
        target: None,
        xattrs: Default::default(),
        hash: (kind == Kind::File).then_some(1),
        link_of: None,
    }
}

#[test]
fn tree_diff_reports_each_difference_with_both_paths() {
    let mut a = Listing::new();
    let mut b = Listing::new();
    a.insert("same".into(), entry(Kind::File, 3));
    b.insert("same".into(), entry(Kind::File, 3));
    a.insert("only_a".into(), entry(Kind::Dir, 0));
    b.insert("only_b".into(), entry(Kind::File, 9));
    a.insert("size".into(), entry(Kind::File, 1));
    b.insert("size".into(), entry(Kind::File, 2));
    let mut x = entry(Kind::File, 5);
    x.xattrs.insert("user.x0".into(), b"v".to_vec());
    a.insert("xattr".into(), entry(Kind::File, 5));
    b.insert("xattr".into(), x);
    a.insert("kind".into(), entry(Kind::File, 0));
    b.insert("kind".into(), entry(Kind::Dir, 0));
    let d = tree::diff(&a, &b);
    let rels: Vec<&str> = d
        .iter()
        .map(|d| match d {
            Diff::OnlyInA { rel, .. } | Diff::OnlyInB { rel, .. } | Diff::Field { rel, .. } => {
                rel.as_str()
            }
        })
        .collect();
    assert_eq!(rels, ["kind", "only_a", "only_b", "size", "xattr"]);
    let line = d[3].describe(Path::new("/A"), Path::new("/B"));
    assert_eq!(line, "size: size is 1 at /A/size but 2 at /B/size");
    assert!(d[1]
        .describe(Path::new("/A"), Path::new("/B"))
        .contains("/B/only_a does not"));
    assert!(tree::diff(&a, &a).is_empty());
}
