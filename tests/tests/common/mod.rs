//! Helpers shared by this crate's integration tests: a scratch directory
//! kept (and named) when a test fails, mounting `rdlmfs-testfs` into it, and
//! running a command with a time bound.

#![allow(dead_code)]

use rdlmfs_tests::mount::TestMount;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TESTFS: &str = env!("CARGO_BIN_EXE_rdlmfs-testfs");
pub const FSX: &str = env!("CARGO_BIN_EXE_rdlmfs-fsx");

/// A test's scratch directory; kept, and its path printed, when the test fails.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rdlmfs-{test}-"))
            .tempdir()
            .unwrap();
        let path = dir.path().canonicalize().unwrap();
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    /// A subdirectory, created if needed.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts `rdlmfs-testfs` in `mode` over `backing` at `<scratch>/<name>`,
    /// logging to `<scratch>/<name>.log`.
    pub fn mount(&self, mode: &str, backing: &Path, name: &str, extra: &[&str]) -> TestMount {
        let mnt = self.dir(name);
        let log = self.path.join(format!("{name}.log"));
        TestMount::start(Path::new(TESTFS), backing, &mnt, mode, extra, &log)
            .unwrap_or_else(|e| panic!("mount {mode} at {name}: {e}"))
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

/// Runs a command with a time bound; kills it by PID on timeout.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{desc} did not finish within {timeout:?}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Everything a command printed.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
