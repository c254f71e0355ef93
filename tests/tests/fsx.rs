//! rdlmfs-fsx against local file systems: it passes where the file system
//! is correct, through one path and through several paths to one file, its
//! operation logs replay, and bad flags get clear errors. (That it catches a
//! broken file system is tested in `checkers_fail.rs`.)

mod common;

use common::{run, text};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn fsx() -> PathBuf {
    PathBuf::from(common::FSX)
}

fn assert_passes(args: &[&str], paths: &[&Path], logs: &Path) -> String {
    let out = run(
        Command::new(fsx())
            .args(args)
            .arg("-P")
            .arg(logs)
            .args(paths),
        Duration::from_secs(120),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "rdlmfs-fsx failed:\n{t}");
    assert!(t.contains("all checks passed"), "{t}");
    t
}

#[test]
fn passes_on_the_local_file_system() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    let t = assert_passes(&["-N", "3000", "-S", "7"], &[&f], d.path());
    assert!(t.contains("seed 7"), "{t}");
    // Every operation kind ran.
    for op in [
        "read", "write", "mapread", "mapwrite", "truncate", "copy", "fsync",
    ] {
        assert!(t.contains(&format!("{op} ")), "no {op} in: {t}");
    }
}

#[test]
fn passes_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm tmpfs on this machine; covered by the local-fs test");
        return;
    }
    let d = tempfile::tempdir_in(shm).unwrap();
    assert_passes(
        &["-N", "3000", "-c", "50"],
        &[&d.path().join("f")],
        d.path(),
    );
}

#[test]
fn passes_through_several_paths_to_one_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    std::fs::write(&f, b"").unwrap();
    let g = d.path().join("hardlink");
    std::fs::hard_link(&f, &g).unwrap();
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::os::unix::fs::symlink(&f, sub.join("symlink")).unwrap();
    let t = assert_passes(
        &["-N", "2000", "-X", "-I", "random"],
        &[&f, &g, &sub.join("symlink")],
        d.path(),
    );
    assert!(t.contains("3 path(s)"), "{t}");
}

#[test]
fn recorded_operations_replay_exactly() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    let rec = d.path().join("ops.txt");
    assert_passes(
        &[
            "-N",
            "500",
            "-S",
            "11",
            "--record-ops",
            rec.to_str().unwrap(),
        ],
        &[&f],
        d.path(),
    );
    let recorded = std::fs::read_to_string(&rec).unwrap();
    assert_eq!(recorded.lines().count(), 500);
    let t = assert_passes(
        &["--replay-ops", rec.to_str().unwrap(), "-S", "11"],
        &[&f],
        d.path(),
    );
    assert!(t.contains("500 operations"), "{t}");
    // The always-written log of the replay is the same operations, and
    // replaying that log in place works too.
    let log = d.path().join("f.fsxops");
    let replayed = std::fs::read_to_string(&log).unwrap();
    assert_eq!(replayed, recorded);
    let t = assert_passes(&["--replay-ops", log.to_str().unwrap()], &[&f], d.path());
    assert!(t.contains("500 operations"), "{t}");
}

#[test]
fn bad_flags_and_paths_get_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    let cases: [(&[&str], i32, &str); 4] = [
        (&["-o", "0"], 2, "-o"),
        (&["-l", "100", "-o", "1000"], 2, "cannot exceed"),
        (&["-w", "0"], 2, "alignment"),
        (&["--replay-ops", "/nonexistent/ops"], 2, "/nonexistent/ops"),
    ];
    for (args, code, needle) in cases {
        let out = run(
            Command::new(fsx())
                .args(args)
                .arg("-P")
                .arg(d.path())
                .arg(&f),
            Duration::from_secs(30),
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {t}");
        assert!(t.contains(needle), "{args:?}: unclear error: {t}");
    }
    // A second path that is not there.
    let out = run(
        Command::new(fsx())
            .arg("-P")
            .arg(d.path())
            .arg(&f)
            .arg(d.path().join("missing")),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("missing"), "{}", text(&out));
    // A garbage operation log names its line.
    let bad = d.path().join("bad.ops");
    std::fs::write(&bad, "1 0 write 0 10\n2 0 frobnicate 1\n").unwrap();
    let out = run(
        Command::new(fsx())
            .arg("--replay-ops")
            .arg(&bad)
            .arg("-P")
            .arg(d.path())
            .arg(&f),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bad.ops:2"), "{}", text(&out));
}
