//! Multi-node test clusters: the real `rdlmfs cluster up` command, run by a
//! test as a child process.
//!
//! A [`TestCluster`] owns exactly one `rdlmfs cluster up` child, the unique
//! temporary directory it made for it (`<tmp>/c` is the cluster's `--dir`:
//! image, certificates, cluster file, logs, pid files, mountpoints
//! `node1..nodeN`) and, through that command, the processes named by the pid
//! files in that directory. It may not touch any other process or mount: it
//! signals only its own child and the PIDs in its own pid files (after
//! checking that their command line names its directory), never processes
//! by name, and it unmounts only `<tmp>/c/nodeK`. It knows nothing of rdlmfs
//! internals; it runs the built programs exactly as a user would.
//!
//! Every wait is bounded. [`TestCluster::stop`] is the orderly end (SIGINT,
//! exit 0, nothing left mounted, then `fsck-rdlmfs -n`); dropping — also
//! while a test panics — SIGKILLs whatever is left, detaches the mounts,
//! keeps the directory when anything went wrong and prints where the logs
//! are, with the last lines of each node's log.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long `cluster up` may take to print `ready: N nodes` by default
/// (mkfs, the NBD server and N mounts, each of which it bounds itself).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `cluster up` may take to exit after SIGINT (its own bounds are
/// 30 s for the nodes and 10 s for the server).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `fsck-rdlmfs -n` may take.
pub const FSCK_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of each node's log printed when a cluster is torn down after a
/// failure.
const LOG_TAIL_LINES: usize = 25;
/// The programs `cluster up` and [`TestCluster::stop`] need.
const PROGRAMS: [&str; 4] = ["rdlmfs", "mkfs-rdlmfs", "rdlmfs-nbd", "fsck-rdlmfs"];
/// The command that builds them.
const BUILD_COMMAND: &str = "cargo build --release --workspace --bins";

/// How to start a [`TestCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `--size` of the image (sparse).
    pub size: String,
    /// `--min-hold-ms` for every node (None: the mount's default).
    pub min_hold_ms: Option<u64>,
    /// `--log LEVEL` for `cluster up` and every node (None: its default).
    pub log: Option<String>,
    /// How long to wait for `ready: N nodes`.
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            size: "256M".into(),
            min_hold_ms: None,
            log: None,
            ready_timeout: READY_TIMEOUT,
        }
    }
}

/// One node of a running [`TestCluster`].
#[derive(Clone, Debug)]
pub struct Node {
    /// 1-based node id.
    pub id: u32,
    /// Where the node is mounted (`<dir>/nodeK`).
    pub mountpoint: PathBuf,
    /// The PID of its `rdlmfs mount` process (from `<dir>/nodeK.pid`).
    pub pid: u32,
    /// Its log (`<dir>/nodeK.log`).
    pub log: PathBuf,
}

/// What `fsck-rdlmfs -n` said about the image after [`TestCluster::stop`].
#[derive(Clone, Debug)]
pub struct FsckFindings {
    /// Its exit status (0: clean).
    pub status: ExitStatus,
    /// Its stdout and stderr.
    pub output: String,
}

impl FsckFindings {
    /// True when fsck exited 0 (no problem found).
    pub fn clean(&self) -> bool {
        self.status.success()
    }
}

/// A running `rdlmfs cluster up`, torn down on drop.
#[derive(Debug)]
pub struct TestCluster {
    child: Option<Child>,
    /// The unique temporary directory (holds `c/`, `up.stdout`, `up.stderr`
    /// and anything a test puts in [`TestCluster::scratch`]).
    root: PathBuf,
    /// The cluster's `--dir` (`<root>/c`), canonical.
    dir: PathBuf,
    bin_dir: PathBuf,
    nodes: Vec<Node>,
    /// Set when something went wrong: the directory is kept and drop
    /// prints where the logs are.
    keep: bool,
    /// Set once [`TestCluster::stop`] saw a clean exit.
    stopped_cleanly: bool,
}

impl TestCluster {
    /// Starts `rdlmfs cluster up --nodes NODES` in a new unique temporary
    /// directory and waits (at most `opts.ready_timeout`) for `ready: NODES
    /// nodes`. Fails, with the command's output and the ends of the node
    /// logs in the message, if a program is not built, if the command exits
    /// first or if the time runs out; everything started is then torn down.
    pub fn start(nodes: u32, opts: &ClusterOptions) -> Result<TestCluster, String> {
        let bin_dir = bin_dir()?;
        let root = make_temp_dir("rdlmfs-cluster-")?;
        let dir = root.join("c");
        let stdout_path = root.join("up.stdout");
        let stderr_path = root.join("up.stderr");
        let out = File::create(&stdout_path)
            .map_err(|e| format!("cannot create {}: {e}", stdout_path.display()))?;
        let err = File::create(&stderr_path)
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let mut cmd = Command::new(bin_dir.join("rdlmfs"));
        cmd.args(["cluster", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(&dir)
            .args(["--size", &opts.size]);
        if let Some(ms) = opts.min_hold_ms {
            cmd.args(["--min-hold-ms", &ms.to_string()]);
        }
        if let Some(level) = &opts.log {
            cmd.args(["--log", level]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let mut c = TestCluster {
            child: Some(child),
            root,
            dir: dir.clone(),
            bin_dir,
            nodes: Vec::new(),
            keep: false,
            stopped_cleanly: false,
        };
        let want = format!("ready: {nodes} nodes");
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            let printed = read_text(&stdout_path);
            if printed.lines().any(|l| l == want) {
                break;
            }
            let exited = match c.child.as_mut().map(|ch| ch.try_wait()) {
                Some(Ok(Some(st))) => Some(st.to_string()),
                Some(Err(e)) => Some(format!("cannot be waited for: {e}")),
                _ => None,
            };
            if let Some(st) = exited {
                c.keep = true;
                return Err(format!(
                    "rdlmfs cluster up exited ({st}) before printing {want:?}\n{}",
                    c.report()
                ));
            }
            if Instant::now() >= deadline {
                c.keep = true;
                return Err(format!(
                    "no {want:?} from rdlmfs cluster up within {:?}\n{}",
                    opts.ready_timeout,
                    c.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `cluster up` canonicalises its directory; so do we, for the
        // mount table, which holds canonical paths.
        c.dir = dir
            .canonicalize()
            .map_err(|e| format!("cluster directory {}: {e}", dir.display()))?;
        for id in 1..=nodes {
            let pid_file = c.dir.join(format!("node{id}.pid"));
            let pid = read_pid(&pid_file).ok_or_else(|| {
                format!(
                    "{} holds no PID although cluster up is ready",
                    pid_file.display()
                )
            });
            let pid = match pid {
                Ok(p) => p,
                Err(e) => {
                    c.keep = true;
                    return Err(format!("{e}\n{}", c.report()));
                }
            };
            let mountpoint = c.dir.join(format!("node{id}"));
            if !mounted_at(&mountpoint) {
                c.keep = true;
                return Err(format!(
                    "cluster up is ready but {} is not mounted\n{}",
                    mountpoint.display(),
                    c.report()
                ));
            }
            c.nodes.push(Node {
                id,
                mountpoint,
                pid,
                log: c.dir.join(format!("node{id}.log")),
            });
        }
        Ok(c)
    }

    /// The nodes, node 1 first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `id` (1-based). Panics on an id the cluster does not have (a
    /// bug in the test).
    pub fn node(&self, id: u32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in a {}-node cluster", self.nodes.len()))
    }

    /// Node `id`'s mountpoint.
    pub fn mountpoint(&self, id: u32) -> &Path {
        &self.node(id).mountpoint
    }

    /// The cluster's directory (image, logs, pid files, mountpoints).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image (`<dir>/fs.img`).
    pub fn image(&self) -> PathBuf {
        self.dir.join("fs.img")
    }

    /// A directory beside the cluster's, outside every mount, for a test's
    /// own files (tool logs); kept with the rest when the test fails.
    pub fn scratch(&self) -> &Path {
        &self.root
    }

    /// The directory the programs were found in (`target/<profile>`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The PID of the `cluster up` process (None once it was reaped).
    pub fn up_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Marks the run as failed: drop keeps the directory and prints where
    /// the logs are even if the test goes on to pass.
    pub fn keep_logs(&mut self) {
        self.keep = true;
    }

    /// Stops the cluster the way a user does: SIGINT to `cluster up`, then
    /// waits (at most [`STOP_TIMEOUT`]) for it to exit. Fails unless it
    /// exits 0 and leaves no node mounted. Then runs `fsck-rdlmfs -n` on the
    /// image (at most [`FSCK_TIMEOUT`]) and returns what it found; whether
    /// that is clean is for the caller to assert.
    pub fn stop(&mut self) -> Result<FsckFindings, String> {
        let Some(child) = self.child.as_mut() else {
            return Err("the cluster was already stopped".into());
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
        // SAFETY: signalling our own child, not yet reaped, so the PID is its.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            self.keep = true;
            return Err(format!(
                "cannot send SIGINT to cluster up (pid {pid}): {}",
                io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    self.keep = true;
                    return Err(format!("cannot wait for cluster up (pid {pid}): {e}"));
                }
            }
            if Instant::now() >= deadline {
                self.keep = true;
                return Err(format!(
                    "cluster up (pid {pid}) did not exit within {STOP_TIMEOUT:?} of SIGINT\n{}",
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.child = None;
        let still: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| mounted_at(&n.mountpoint))
            .map(|n| n.mountpoint.display().to_string())
            .collect();
        if status.signal().is_some() || !status.success() || !still.is_empty() {
            self.keep = true;
            return Err(format!(
                "cluster up exited with {status} after SIGINT{}\n{}",
                if still.is_empty() {
                    String::new()
                } else {
                    format!(", leaving mounted: {}", still.join(" "))
                },
                self.report()
            ));
        }
        self.stopped_cleanly = true;
        let fsck = self.bin_dir.join("fsck-rdlmfs");
        let mut cmd = Command::new(&fsck);
        cmd.arg("-n").arg(self.image());
        let (status, output) = run_bounded(&mut cmd, FSCK_TIMEOUT, &self.root.join("fsck.out"))
            .inspect_err(|_| {
                self.keep = true;
            })?;
        let findings = FsckFindings { status, output };
        if !findings.clean() {
            self.keep = true;
        }
        Ok(findings)
    }

    /// `cluster up`'s output and the end of every node's log.
    pub fn report(&self) -> String {
        let mut s = format!(
            "cluster directory: {}\n--- cluster up stdout ({}):\n{}--- cluster up stderr ({}):\n{}",
            self.dir.display(),
            self.root.join("up.stdout").display(),
            read_text(&self.root.join("up.stdout")),
            self.root.join("up.stderr").display(),
            tail(&self.root.join("up.stderr"), LOG_TAIL_LINES),
        );
        for n in &self.nodes {
            // Only while its pid file still names it (cluster up removes
            // the file when it reaps the node, after which the PID may be
            // reused).
            let pid_file = self.dir.join(format!("node{}.pid", n.id));
            if read_pid(&pid_file) == Some(n.pid) {
                s.push_str(&format!(
                    "--- node {} (pid {}) threads in uninterruptible sleep:\n{}",
                    n.id,
                    n.pid,
                    stuck_threads(n.pid)
                ));
            }
        }
        for log in self.node_logs() {
            s.push_str(&format!(
                "--- last {LOG_TAIL_LINES} lines of {}:\n{}",
                log.display(),
                tail(&log, LOG_TAIL_LINES)
            ));
        }
        s
    }

    /// The node logs that exist (also before `ready`, when `nodes` is empty).
    fn node_logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .and_then(|n| n.strip_prefix("node"))
                            .and_then(|n| n.strip_suffix(".log"))
                            .is_some_and(|k| k.parse::<u32>().is_ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        logs
    }

    /// Kills everything still running (our child by its handle, the rest
    /// by the PIDs in the pid files) and detaches every node mount.
    fn tear_down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill signals a PID we have not reaped: it is still ours.
            let _ = c.kill();
            reap_within(&mut c, Duration::from_secs(10));
        }
        // `cluster up` starts its processes in process groups of their own,
        // so killing it left them running: kill them by the PIDs it wrote,
        // but only a process whose command line names our directory (a PID
        // from a stale file may have been reused by now).
        let dir_bytes = self.dir.as_os_str().as_bytes().to_vec();
        let mut killed = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let ours = name == "nbd.pid"
                    || name
                        .strip_prefix("node")
                        .and_then(|r| r.strip_suffix(".pid"))
                        .is_some_and(|k| k.parse::<u32>().is_ok());
                if !ours {
                    continue;
                }
                let Some(pid) = read_pid(&e.path()) else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if !cmdline.windows(dir_bytes.len()).any(|w| w == dir_bytes) {
                    continue;
                }
                let Ok(p) = libc::pid_t::try_from(pid) else {
                    continue;
                };
                // SAFETY: a PID written by our child for a process it
                // started, whose command line names our directory.
                if unsafe { libc::kill(p, libc::SIGKILL) } == 0 {
                    killed.push(p);
                }
            }
        }
        // A node can be stuck in the kernel with a request of its own FUSE
        // connection outstanding (then SIGKILL does not end it, nor anything
        // waiting on it): abort our connections, then detach the mounts (a
        // dead FUSE daemon's mount only goes away that way), then wait,
        // bounded, for the killed processes to be gone.
        for k in 1..=16u32 {
            let m = self.dir.join(format!("node{k}"));
            if mounted_at(&m) {
                abort_fuse_connection(&m);
                detach(&m);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while killed.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking() || self.keep || !self.stopped_cleanly;
        // The report first: it shows where the nodes are stuck, if they are.
        let report = if failed { self.report() } else { String::new() };
        self.tear_down();
        if failed {
            eprintln!(
                "test cluster torn down; logs kept in {} (up.stdout, up.stderr, c/nodeK.log, c/nbd.log, c/mkfs.log, and the tools' *.out)\n{report}",
                self.root.display(),
            );
        } else if self.nodes.iter().all(|n| !mounted_at(&n.mountpoint)) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// `target/<profile>`, where cargo puts the workspace's programs: the test
/// executable runs from `target/<profile>/deps/`. Fails, naming the build
/// command, when a program is missing.
fn bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(p) = dir.parent() {
            dir = p.to_path_buf();
        }
    }
    let missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|p| !dir.join(p).is_file())
        .map(|p| p.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not built in {}: build the programs first with `{BUILD_COMMAND}` \
             (the same profile as the tests)",
            missing.join(", "),
            dir.display()
        ));
    }
    Ok(dir)
}

/// A new directory with a unique name under the system's temp directory.
fn make_temp_dir(prefix: &str) -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let template = base.join(format!("{prefix}XXXXXX"));
    let c = CString::new(template.as_os_str().as_bytes())
        .map_err(|_| format!("temp directory {} contains a NUL", base.display()))?;
    let mut buf = c.into_bytes_with_nul();
    // SAFETY: buf is a writable NUL-terminated template ending in XXXXXX.
    let p = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(format!(
            "cannot create a temporary directory in {}: {}",
            base.display(),
            io::Error::last_os_error()
        ));
    }
    buf.pop();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&buf));
    dir.canonicalize()
        .map_err(|e| format!("temporary directory {}: {e}", dir.display()))
}

/// Runs `cmd` with stdout and stderr going to the file `out` (a file, so a
/// chatty program cannot block on a full pipe and its output stays for a
/// failed test's post-mortem); kills it by PID after `timeout`. Returns its
/// exit status and everything it printed.
pub fn run_bounded(
    cmd: &mut Command,
    timeout: Duration,
    out: &Path,
) -> Result<(ExitStatus, String), String> {
    let desc = format!("{cmd:?}");
    let file = File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("output file {}: {e}", out.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {desc}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for {desc}: {e}")),
        }
        if Instant::now() >= deadline {
            // What it is stuck in, before it is killed.
            let stacks = stuck_threads(child.id());
            // Child::kill signals a PID we have not reaped: still ours. A
            // process stuck in a file system request cannot die until the
            // request ends, so the wait for it is bounded too.
            let _ = child.kill();
            let reaped = reap_within(&mut child, Duration::from_secs(5));
            let text = read_text(out);
            return Err(format!(
                "{desc} did not finish within {timeout:?}; killed{}; it printed:\n{text}\n\
                 its threads in uninterruptible sleep before the kill:\n{stacks}",
                if reaped {
                    ""
                } else {
                    " but not gone after 5 s (stuck in the kernel)"
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((status, read_text(out)))
}

/// Waits (bounded) for a killed child; true once it is reaped.
fn reap_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

/// The threads of `pid` in uninterruptible sleep (state D), each with its
/// name and kernel stack (readable as root): where a hang sits.
pub fn stuck_threads(pid: u32) -> String {
    let mut s = String::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("  (process {pid} is gone)\n");
    };
    let mut tasks: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    tasks.sort();
    for t in tasks {
        let stat = read_text(&t.join("stat"));
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if state != Some('D') {
            continue;
        }
        let tid = t.file_name().map(|n| n.to_string_lossy().into_owned());
        s.push_str(&format!(
            "  pid {pid} thread {} ({}):\n",
            tid.unwrap_or_default(),
            read_text(&t.join("comm")).trim()
        ));
        for l in read_text(&t.join("stack")).lines() {
            s.push_str(&format!("    {l}\n"));
        }
    }
    if s.is_empty() {
        s.push_str(&format!("  (no thread of {pid} in state D)\n"));
    }
    s
}

fn read_text(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The last `n` lines of a file (empty if unreadable).
fn tail(p: &Path, n: usize) -> String {
    let text = read_text(p);
    let lines: Vec<&str> = text.lines().collect();
    let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
    s.push('\n');
    s
}

fn read_pid(p: &Path) -> Option<u32> {
    read_text(p).trim().parse::<u32>().ok().filter(|&p| p > 0)
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: libc::pid_t) -> bool {
    let stat = read_text(Path::new(&format!("/proc/{pid}/stat")));
    // The state follows the command name in parentheses.
    match stat.rfind(')') {
        Some(i) => !stat[i + 1..].trim_start().starts_with('Z'),
        None => false,
    }
}

/// Whether a FUSE file system is mounted at `p` (canonical). An unreadable
/// mount table counts as mounted, so that callers err on the side of
/// detaching and of keeping the directory.
pub fn mounted_at(p: &Path) -> bool {
    crate::mount::fuse_mounts_at(p).map_or(true, |n| n > 0)
}

/// Aborts the FUSE connection of the mount at `p` (canonical) through
/// the fuse control file system (`/sys/fs/fuse/connections/<minor>/abort`),
/// mounting that first when it is not and we may (root). Every request
/// outstanding on that connection then fails, so nothing stays stuck in it.
/// Touches only the connection of this one mount; errors are ignored.
fn abort_fuse_connection(p: &Path) {
    let Some(minor) = mount_minor(p) else {
        return;
    };
    let ctl = Path::new("/sys/fs/fuse/connections");
    let (src, dir, fstype) = (c"fusectl", c"/sys/fs/fuse/connections", c"fusectl");
    let mounted_here = !ctl.join(minor.to_string()).exists()
        && ctl.is_dir()
        // SAFETY: valid NUL-terminated strings and no data.
        && unsafe {
            libc::mount(
                src.as_ptr(),
                dir.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        } == 0;
    let _ = std::fs::write(ctl.join(minor.to_string()).join("abort"), "1");
    if mounted_here {
        // Leave the machine as we found it.
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(dir.as_ptr(), 0) };
    }
}

/// The minor device number of the mount at `p`, from /proc/self/mountinfo
/// (FUSE connections are named by it).
fn mount_minor(p: &Path) -> Option<u32> {
    let want = p.as_os_str().as_bytes();
    // Fields: ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...; the last mount at
    // a place is the one on top.
    read_text(Path::new("/proc/self/mountinfo"))
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let target = f.nth(1)?;
            if crate::mount::unescape(target.as_bytes()) != want {
                return None;
            }
            dev.split(':').nth(1)?.parse().ok()
        })
        .next_back()
}

/// Lazy unmount (`umount -l`); errors are ignored, callers check the table.
fn detach(p: &Path) {
    if let Ok(c) = CString::new(p.as_os_str().as_bytes()) {
        // SAFETY: c is a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_unique_and_exist() {
        let a = make_temp_dir("rdlmfs-cluster-unit-").unwrap();
        let b = make_temp_dir("rdlmfs-cluster-unit-").unwrap();
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        std::fs::remove_dir(&a).unwrap();
        std::fs::remove_dir(&b).unwrap();
    }

    #[test]
    fn bounded_runs_capture_output_and_time_out() {
        let d = make_temp_dir("rdlmfs-cluster-unit-").unwrap();
        let (st, out) = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(20),
            &d.join("a"),
        )
        .unwrap();
        assert_eq!(st.code(), Some(3));
        assert!(out.contains("out") && out.contains("err"), "{out}");
        let e = run_bounded(
            Command::new("sleep").arg("30"),
            Duration::from_millis(200),
            &d.join("b"),
        )
        .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mount_minors_come_from_mountinfo() {
        assert!(mount_minor(Path::new("/proc")).is_some());
        let d = make_temp_dir("rdlmfs-cluster-unit-").unwrap();
        assert_eq!(mount_minor(&d), None);
        std::fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let d = make_temp_dir("rdlmfs-cluster-unit-").unwrap();
        let f = d.join("log");
        std::fs::write(&f, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&f, 2), "3\n4\n");
        assert_eq!(tail(&d.join("missing"), 2), "\n");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
