//! Helpers for tests that start real programs: children are killed by PID
//! when the test ends (also when it fails), every wait is bounded, and a
//! failing test prints where its logs are and keeps them.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test's scratch directory. On panic it is kept and its path printed.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rdlmfs-{test}-"))
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
    /// An image of `len` bytes filled with a recognisable pattern.
    pub fn image(&self, name: &str, len: usize, seed: u8) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, pattern(len, seed)).expect("write image");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                eprintln!("test failed: logs and images kept in {}", kept.display());
            }
        }
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A child process that is killed (SIGKILL, by PID) and reaped on drop.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> ChildGuard {
        let out = File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} (is it installed?)"));
        ChildGuard {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits (bounded) for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Fails the test if the child died.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited early ({st}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) log {} ---\n{}",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Waits until `addr` accepts connections.
pub fn wait_tcp(child: &mut ChildGuard, addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        child.assert_running();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within {timeout:?}; log {}:\n{}",
            child.name,
            child.log.display(),
            child.log_text()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Waits until the Unix socket `path` accepts connections.
pub fn wait_unix(child: &mut ChildGuard, path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        child.assert_running();
        if UnixStream::connect(path).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {} within {timeout:?}; log {}:\n{}",
            child.name,
            path.display(),
            child.log.display(),
            child.log_text()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Runs a command to completion with a time bound; returns its output or
/// fails the test with everything it printed.
pub fn run(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e} (is it installed?)"));
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
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// Like [`run`], and the command must succeed.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let desc = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{desc} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Path of a binary of this package, built by cargo for integration tests.
pub fn rdlmfs_nbd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rdlmfs-nbd"))
}

/// Starts `rdlmfs-nbd serve` on a Unix socket (and admin socket) in `dir`.
pub fn start_rdlmfs_nbd(
    scratch: &Scratch,
    image: &Path,
    tag: &str,
    extra: &[&str],
) -> (ChildGuard, PathBuf, PathBuf) {
    start_rdlmfs_nbd_on(scratch, image, tag, "none", extra)
}

/// Like [`start_rdlmfs_nbd`], also listening on TCP at `listen`.
pub fn start_rdlmfs_nbd_on(
    scratch: &Scratch,
    image: &Path,
    tag: &str,
    listen: &str,
    extra: &[&str],
) -> (ChildGuard, PathBuf, PathBuf) {
    let sock = scratch.path(&format!("{tag}.sock"));
    let admin = scratch.path(&format!("{tag}.admin"));
    let mut cmd = Command::new(rdlmfs_nbd());
    cmd.arg("serve")
        .arg(image)
        .arg("--listen")
        .arg(listen)
        .arg("--unix")
        .arg(&sock)
        .arg("--admin")
        .arg(&admin)
        .arg("--exit-after")
        .arg("600")
        .args(extra);
    let mut child = ChildGuard::spawn("rdlmfs-nbd", &mut cmd, scratch.path(&format!("{tag}.log")));
    wait_unix(&mut child, &sock, Duration::from_secs(20));
    (child, sock, admin)
}

pub fn unix_uri(sock: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// A daemon that forked away from us: killed by the PID it wrote to its
/// pid file, on drop.
pub struct PidFileGuard {
    pub pidfile: PathBuf,
}

impl PidFileGuard {
    pub fn pid(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = std::fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no pid in {} within {timeout:?}",
                self.pidfile.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            if pid > 1 {
                // SAFETY: signalling a PID this test's daemon wrote.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Waits until `addr` accepts connections, while process `pid` lives.
pub fn wait_tcp_pid(pid: i32, addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: signal 0 only checks that the process exists.
        assert!(
            unsafe { libc::kill(pid, 0) } == 0,
            "process {pid} died before listening on {addr}"
        );
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listened on {addr} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}
