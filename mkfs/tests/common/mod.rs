//! Helpers for the mkfs tests: scratch directories that are kept (and
//! printed) when a test fails, bounded runs of the binary, image hashes.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rdlmfs-mkfs-{test}-"))
            .tempdir()
            .expect("create scratch dir");
        let path = dir.path().to_path_buf();
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A sparse image of `len` bytes.
    pub fn image(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        let f = std::fs::File::create(&p).expect("create image");
        f.set_len(len).expect("size image");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("test failed: images kept in {}", d.keep().display());
            }
        }
    }
}

/// The binary under test.
pub fn mkfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mkfs-rdlmfs"))
}

/// Runs `mkfs.rdlmfs args...` with stdin closed, killing it after
/// `timeout`.
pub fn mkfs(args: &[&str], timeout: Duration) -> Output {
    run(Command::new(mkfs_bin()).args(args), timeout)
}

pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!(
                "{desc} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect output")
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails with everything the run printed unless it succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    let (o, e) = text(out);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {o}\nstderr: {e}",
        out.status
    );
}

/// A content hash of a (possibly large, sparse) file and its mtime.
pub fn fingerprint(p: &Path) -> (u64, std::time::SystemTime) {
    let meta = std::fs::metadata(p).expect("stat image");
    let mut f = std::fs::File::open(p).expect("open image");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read image");
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    (h, meta.modified().expect("mtime"))
}

pub const MIB: u64 = 1 << 20;
pub const T: Duration = Duration::from_secs(60);
