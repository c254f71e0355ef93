//! A checker that cannot fail is a defect: rdlmfs-fsx against the
//! deliberately broken modes of `rdlmfs-testfs` must fail, and the replay
//! command it prints must reproduce the failure. Against the faithful
//! passthrough it must pass (so the failures are the file system's, not the
//! checker's).

use rdlmfs_tests::mount::TestMount;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TESTFS: &str = env!("CARGO_BIN_EXE_rdlmfs-testfs");
const FSX: &str = env!("CARGO_BIN_EXE_rdlmfs-fsx");

struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rdlmfs-checkers-{test}-"))
            .tempdir()
            .unwrap();
        let path = dir.path().canonicalize().unwrap();
        Scratch {
            dir: Some(dir),
            path,
        }
    }
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("test failed: logs kept in {}", d.keep().display());
            }
        }
    }
}

fn mount(s: &Scratch, backing: &Path, name: &str, mode: &str, extra: &[&str]) -> TestMount {
    TestMount::start(
        Path::new(TESTFS),
        backing,
        &s.dir(name),
        mode,
        extra,
        &s.path.join(format!("{name}.log")),
    )
    .unwrap_or_else(|e| panic!("mounting {mode} at {name}: {e}"))
}

fn run(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{desc} hung\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The words of the "replay exactly:" command fsx printed.
fn replay_command(out: &str) -> Vec<String> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("replay exactly:"))
        .unwrap_or_else(|| panic!("no replay command in:\n{out}"));
    // Our paths and flags need no quoting; refuse to guess if they did.
    assert!(!line.contains('\''), "quoted replay command: {line}");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn fsx_passes_through_the_faithful_passthrough() {
    let s = Scratch::new("passthrough");
    let backing = s.dir("backing");
    let m = mount(&s, &backing, "mnt", "passthrough", &[]);
    let out = run(Command::new(FSX)
        .args(["-N", "3000", "-S", "3", "-c", "100", "-P"])
        .arg(s.dir("logs"))
        .arg(m.mountpoint().join("f")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn fsx_catches_dropped_writes_and_its_replay_reproduces_them() {
    let s = Scratch::new("drop");
    let backing = s.dir("backing");
    let logs = s.dir("logs");
    let first = {
        let m = mount(&s, &backing, "mnt", "drop-writes", &["--every", "40"]);
        let out = run(Command::new(FSX)
            .args(["-N", "5000", "-S", "9", "-W", "-P"])
            .arg(&logs)
            .arg(m.mountpoint().join("f")));
        let t = text(&out);
        let code = out.status.code();
        assert!(
            matches!(code, Some(110) | Some(120)),
            "a dropped write went unnoticed (exit {code:?}):\n{t}"
        );
        assert!(
            t.contains("last ") && t.contains(".fsxgood") && t.contains(".fsxbad"),
            "{t}"
        );
        assert!(logs.join("f.fsxgood").exists() && logs.join("f.fsxbad").exists());
        (code, replay_command(&t))
    };
    // A fresh mount restarts the file system's write counter, as a user
    // would re-create the failing conditions; the replay must fail the same
    // way at the same operation.
    let (code, words) = first;
    let m = mount(&s, &backing, "mnt", "drop-writes", &["--every", "40"]);
    assert!(
        words.iter().any(|w| w.contains("f.fsxfail.ops")),
        "{words:?}"
    );
    let out = run(Command::new(&words[0]).args(&words[1..]));
    assert_eq!(
        out.status.code(),
        code,
        "the replay did not reproduce the failure:\n{}",
        text(&out)
    );
    drop(m);
}

#[test]
fn fsx_catches_stale_reads_between_two_mounts() {
    // Two "nodes" without cache coherence: each operation goes through the
    // other mount, so a stale page cache or attribute is seen at once.
    let s = Scratch::new("stale");
    let backing = s.dir("backing");
    let a = mount(&s, &backing, "node1", "stale-cache", &[]);
    let b = mount(&s, &backing, "node2", "stale-cache", &[]);
    let out = run(Command::new(FSX)
        .args(["-N", "3000", "-S", "4", "-P"])
        .arg(s.dir("logs"))
        .arg(a.mountpoint().join("f"))
        .arg(b.mountpoint().join("f")));
    let t = text(&out);
    assert!(
        matches!(out.status.code(), Some(110) | Some(120)),
        "incoherent mounts went unnoticed (exit {:?}):\n{t}",
        out.status.code()
    );
    assert!(
        t.contains("through path 1") || t.contains("through path 0"),
        "{t}"
    );
}
