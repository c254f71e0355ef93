//! `rdlmfs cluster up`: the real command, with the real sibling programs
//! (`mkfs-rdlmfs`, `rdlmfs-nbd`, `fsck-rdlmfs`) from the same target
//! directory. A failing test kills every process the command started (by
//! the PIDs in its pid files), detaches the mounts, keeps the directory and
//! prints where the logs are.

mod common;
use common::mounted_at;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long `cluster up` may take to print "ready" (mkfs, the server and
/// two mounts, each of which it bounds itself).
const READY: Duration = Duration::from_secs(150);
/// How long it may take to exit after SIGINT (its own bound is 30 s for
/// the nodes and 10 s for the server).
const STOP: Duration = Duration::from_secs(60);

/// A program built next to `rdlmfs`.
fn sibling(name: &str) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rdlmfs"));
    let p = exe.with_file_name(name);
    assert!(
        p.is_file(),
        "{name} is not built (expected {}): build the workspace first, e.g. \
         cargo build --release -p rdlmfs -p rdlmfs-mkfs -p blockdev --bins",
        p.display()
    );
    p
}

/// `rdlmfs cluster up` running in a test. Dropping it while it runs (a
/// failed test) kills it and everything it started.
struct Up {
    child: Option<Child>,
    dir: PathBuf,
    nodes: u32,
    /// Lines of its stdout, as they come.
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far.
    seen: Vec<String>,
    stderr: PathBuf,
    /// The temporary directory; kept (not deleted) on failure.
    tmp: Option<tempfile::TempDir>,
}

impl Up {
    fn start(nodes: u32, extra: &[&str]) -> Up {
        for b in ["mkfs-rdlmfs", "rdlmfs-nbd", "fsck-rdlmfs"] {
            sibling(b);
        }
        let tmp = tempfile::Builder::new()
            .prefix("rdlmfs-up-")
            .tempdir()
            .expect("temporary directory");
        let dir = tmp.path().join("c");
        let stderr = tmp.path().join("up.stderr");
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rdlmfs"))
            .args(["cluster", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start rdlmfs cluster up");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Up {
            child: Some(child),
            dir,
            nodes,
            lines: rx,
            seen: Vec::new(),
            stderr,
            tmp: Some(tmp),
        }
    }

    fn mnt(&self, k: u32) -> PathBuf {
        self.dir.join(format!("node{k}"))
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }

    /// Reads stdout until `want` (bounded); panics if the command exits first.
    fn wait_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) => {
                    let hit = l == want;
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                        // Whatever is still in the pipe.
                        self.seen.extend(self.lines.try_iter());
                        panic!(
                            "cluster up exited ({st}) before printing {want:?}; stdout:\n{}\nstderr:\n{}",
                            self.seen.join("\n"),
                            std::fs::read_to_string(&self.stderr).unwrap_or_default()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no {want:?} from cluster up after {timeout:?}; stdout so far:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: wait for the exit above.
                    std::thread::sleep(Duration::from_millis(50));
                    assert!(
                        Instant::now() < deadline,
                        "cluster up closed its stdout without {want:?}; stdout:\n{}",
                        self.seen.join("\n")
                    );
                    if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                        panic!(
                            "cluster up exited ({st}) before printing {want:?}; stdout:\n{}\nstderr:\n{}",
                            self.seen.join("\n"),
                            std::fs::read_to_string(&self.stderr).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    fn stop(&mut self, sig: i32) -> ExitStatus {
        let c = self.child.as_mut().expect("running");
        // SAFETY: signalling our own child by PID (not yet reaped).
        unsafe { libc::kill(c.id() as i32, sig) };
        let deadline = Instant::now() + STOP;
        loop {
            match c.try_wait().expect("wait for cluster up") {
                Some(st) => {
                    self.child = None;
                    self.seen.extend(self.lines.try_iter());
                    return st;
                }
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "cluster up did not exit within {STOP:?} of signal {sig}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // What it started runs in process groups of its own: kill by PID.
        let mut names: Vec<String> = (1..=self.nodes).map(|k| format!("node{k}")).collect();
        names.push("nbd".into());
        for n in &names {
            if let Some(pid) = std::fs::read_to_string(self.pid_file(n))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|&p| p > 0)
            {
                // SAFETY: a PID our child wrote for a process it started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for k in 1..=self.nodes {
            let m = self.mnt(k);
            if mounted_at(&m) {
                let c = common::cpath(&m);
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if failed {
            if let Some(t) = self.tmp.take() {
                let kept = t.keep();
                eprintln!(
                    "cluster up test failed; logs kept in {} (up.stderr, c/nodeK.log, c/nbd.log, c/mkfs.log)",
                    kept.display()
                );
            }
        }
    }
}

fn fsck_clean(img: &Path) {
    let out = Command::new(sibling("fsck-rdlmfs"))
        .arg("-n")
        .arg(img)
        .output()
        .expect("run fsck-rdlmfs");
    assert!(
        out.status.success(),
        "fsck-rdlmfs -n {} ({}):\n{}{}",
        img.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_pid(p: &Path) -> i32 {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("pid file {}: {e}", p.display()));
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid file {} holds {s:?}", p.display()))
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn two_nodes_up_share_a_file_and_stop_cleanly() {
    let mut up = Up::start(2, &["--size", "256M"]);
    up.wait_line("ready: 2 nodes", READY);
    let (m1, m2) = (up.mnt(1), up.mnt(2));
    assert!(mounted_at(&m1) && mounted_at(&m2), "both nodes mounted");

    std::fs::write(m1.join("hello"), b"written on node 1").expect("write on node 1");
    assert_eq!(
        std::fs::read(m2.join("hello")).expect("read on node 2"),
        b"written on node 1"
    );

    // One pid file per process, each naming a live process that is not
    // `cluster up` itself.
    let up_pid = up.child.as_ref().map(|c| c.id() as i32);
    let mut pids = Vec::new();
    for n in ["node1", "node2", "nbd"] {
        let pid = read_pid(&up.pid_file(n));
        assert!(alive(pid), "{n}.pid names {pid}, which is not running");
        assert_ne!(Some(pid), up_pid);
        pids.push(pid);
    }
    let out = up.seen.join("\n");
    for want in [
        "fs.img",
        "nbd://127.0.0.1:",
        "cluster.toml",
        "node1.log",
        "node2.log",
    ] {
        assert!(
            out.contains(want),
            "cluster up did not print {want:?}:\n{out}"
        );
    }

    let st = up.stop(libc::SIGINT);
    assert!(
        st.success(),
        "cluster up exited with {st} after SIGINT; stdout:\n{}\nstderr:\n{}",
        up.seen.join("\n"),
        std::fs::read_to_string(&up.stderr).unwrap_or_default()
    );
    assert!(!mounted_at(&m1), "node1 still mounted");
    assert!(!mounted_at(&m2), "node2 still mounted");
    for pid in pids {
        assert!(
            !alive(pid),
            "process {pid} still running after cluster up exited"
        );
    }
    fsck_clean(&up.dir.join("fs.img"));
}

#[test]
fn bad_node_counts_are_refused_and_start_nothing() {
    for n in ["0", "17"] {
        let tmp = tempfile::Builder::new()
            .prefix("rdlmfs-up-bad-")
            .tempdir()
            .expect("temporary directory");
        let dir = tmp.path().join("c");
        let mut c = Command::new(env!("CARGO_BIN_EXE_rdlmfs"))
            .args(["cluster", "up", "--nodes", n, "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rdlmfs cluster up");
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = c.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("cluster up --nodes {n} still running after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = c.wait_with_output().expect("output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!st.success(), "--nodes {n} was accepted");
        assert!(
            err.contains("--nodes") && err.contains("1..=16"),
            "--nodes {n}: unclear message: {err}"
        );
        assert!(
            !dir.exists(),
            "--nodes {n}: {} was created although nothing should start",
            dir.display()
        );
        // No process of ours names the directory.
        let needle = dir.as_os_str().as_encoded_bytes().to_vec();
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            assert!(
                !cmd.windows(needle.len()).any(|w| w == needle),
                "--nodes {n}: process {} still runs for {}",
                e.file_name().to_string_lossy(),
                dir.display()
            );
        }
    }
}
