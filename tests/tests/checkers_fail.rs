//! A checker that cannot fail is a defect: rdlmfs-fsx against the
//! deliberately broken modes of `rdlmfs-testfs` must fail, and the replay
//! command it prints must reproduce the failure. Against the faithful
//! passthrough it must pass (so the failures are the file system's, not the
//! checker's).

mod common;

use common::{run, text, Scratch, FSX};
use rdlmfs_tests::mount::TestMount;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn mount(s: &Scratch, backing: &Path, name: &str, mode: &str, extra: &[&str]) -> TestMount {
    s.mount(mode, backing, name, extra)
}

fn fsx_run(cmd: &mut Command) -> Output {
    run(cmd, Duration::from_secs(120))
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
    let out = fsx_run(
        Command::new(FSX)
            .args(["-N", "3000", "-S", "3", "-c", "100", "-P"])
            .arg(s.dir("logs"))
            .arg(m.mountpoint().join("f")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn fsx_catches_dropped_writes_and_its_replay_reproduces_them() {
    let s = Scratch::new("drop");
    let backing = s.dir("backing");
    let logs = s.dir("logs");
    let first = {
        let m = mount(&s, &backing, "mnt", "drop-writes", &["--every", "40"]);
        let out = fsx_run(
            Command::new(FSX)
                .args(["-N", "5000", "-S", "9", "-W", "-P"])
                .arg(&logs)
                .arg(m.mountpoint().join("f")),
        );
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
    let out = fsx_run(Command::new(&words[0]).args(&words[1..]));
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
    let out = fsx_run(
        Command::new(FSX)
            .args(["-N", "3000", "-S", "4", "-P"])
            .arg(s.dir("logs"))
            .arg(a.mountpoint().join("f"))
            .arg(b.mountpoint().join("f")),
    );
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
