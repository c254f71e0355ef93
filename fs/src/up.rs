//! `rdlmfs cluster up`: a whole cluster on one machine, for trying rdlmfs
//! out with one command.
//!
//! ```text
//! rdlmfs cluster up --nodes 3 --dir DIR [--size 4G] [--journal-mib N]
//!                   [--min-hold-ms N] [--log LEVEL]
//! ```
//!
//! It formats `DIR/fs.img` for lock_dlm (or reuses one this command made
//! before), serves it with `rdlmfs-nbd` on 127.0.0.1, writes a CA, node
//! certificates and `DIR/cluster.toml`, mounts one `rdlmfs mount
//! --cluster` process per node at `DIR/nodeK`, writes `DIR/nodeK.pid` and
//! `DIR/nbd.pid`, prints `ready: N nodes` and waits. SIGINT, SIGTERM or
//! SIGHUP unmount every node (SIGTERM by PID, bounded waits, then SIGKILL
//! and a lazy unmount), stop the NBD server and exit 0 only if every node
//! unmounted cleanly.
//!
//! Owns: the directory it is given (image, logs, pid files, certificates,
//! cluster file, mountpoints) and the processes it starts, each in a
//! process group of its own so that a Ctrl-C in the terminal reaches only
//! this command, which stops them in order (nodes first, the disk last).
//! May not touch: the file system, the lock manager or the NBD server
//! themselves — it runs the sibling programs (`mkfs-rdlmfs`,
//! `rdlmfs-nbd`, `rdlmfs mount`) exactly as a user would, and writes the
//! cluster file only through `rdlm::config`. It never signals a process
//! it did not start, and never unmounts anything outside `DIR`.

use crate::process::{mounts_at, termination_signals, unescape_mount_field, wait_signal};
use blockdev::{FileDevice, FileOptions};
use rdlm::config::{ClusterConfig, NodeConfig};
use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The cluster name in the cluster file and the lock table.
pub const CLUSTER_NAME: &str = "rdlmfs";
/// The file system name in the lock table ("rdlmfs:fs").
pub const FS_NAME: &str = "fs";
/// Most nodes `cluster up` starts on one machine.
pub const MAX_NODES: u32 = 16;
/// How long the NBD server may take to accept connections.
pub const NBD_START: Duration = Duration::from_secs(20);
/// How long one node may take to mount.
pub const MOUNT_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to unmount after SIGTERM.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long mkfs may take.
pub const MKFS_WAIT: Duration = Duration::from_secs(120);
/// How long the NBD server may take to exit after SIGTERM.
pub const NBD_STOP: Duration = Duration::from_secs(10);

/// Timings of the local cluster: the lock manager's defaults are for
/// machines on a network (200/1500/3000 ms); on loopback a dead node is
/// noticed sooner, with room left for a busy machine's scheduling noise.
const HEARTBEAT_MS: u64 = 100;
const FAILURE_TIMEOUT_MS: u64 = 1000;
const LEASE_MS: u64 = 2000;
/// LVB length of the cluster (what the file system's own tests use).
const LVB_LEN: usize = 64;

/// `rdlmfs cluster ...`
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Start a whole cluster on this machine: an image served over NBD and
    /// one mount per node under --dir. Ctrl-C stops it.
    Up(UpArgs),
}

/// Flags of `rdlmfs cluster up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of nodes (1..=16).
    #[arg(long, value_name = "N")]
    pub nodes: u32,
    /// Directory for the image, logs, certificates, cluster file and the
    /// mountpoints node1..nodeN (created if needed).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Size of a new image (sparse): bytes or with K, M, G, T.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    pub size: u64,
    /// Size of each journal in MiB (default: mkfs chooses from the size).
    #[arg(long, value_name = "MiB")]
    pub journal_mib: Option<u64>,
    /// Passed to every node's `rdlmfs mount --min-hold-ms`.
    #[arg(long, value_name = "MS")]
    pub min_hold_ms: Option<u64>,
    /// Log level of this command and of every node (`-o log=LEVEL`).
    #[arg(long, value_name = "LEVEL")]
    pub log: Option<String>,
}

/// Runs a `rdlmfs cluster` subcommand; the exit code is 0 only when the
/// cluster came up and every node unmounted cleanly at the end.
pub fn main(cmd: ClusterCmd) -> ExitCode {
    match cmd {
        ClusterCmd::Up(a) => {
            init_logging(a.log.as_deref().unwrap_or("info"));
            match up(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rdlmfs cluster up: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Parses "4G", "256M", "512K", "1T", "4GiB" or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("size {s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K, M, G or T"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("size {s:?} is zero"));
    }
    Ok(bytes)
}

/// Writes a line to stdout, ignoring a closed stdout (a reader that went
/// away must not stop the cluster's orderly shutdown).
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A program next to the running executable.
fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("own executable {} has no directory", exe.display()))?;
    let p = dir.join(name);
    if !p.is_file() {
        return Err(format!(
            "{name} not found next to {} (expected {}); build the whole workspace first: cargo build --release",
            exe.display(),
            p.display()
        ));
    }
    Ok(p)
}

/// Starts `cluster up` and runs it until a termination signal.
pub fn up(a: &UpArgs) -> Result<(), String> {
    if a.nodes == 0 || a.nodes > MAX_NODES {
        return Err(format!("--nodes {}: give 1..={MAX_NODES} nodes", a.nodes));
    }
    if let Some(level) = &a.log {
        if level.is_empty() || level.contains(',') {
            return Err(format!(
                "--log {level:?}: give one level (error, warn, info, debug, trace)"
            ));
        }
    }
    // Our own programs first: a missing one is found before anything is made.
    let mkfs = sibling("mkfs-rdlmfs")?;
    let nbd = sibling("rdlmfs-nbd")?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;

    // Only sigtimedwait below sees the termination signals (children start
    // with an empty mask: std resets it before exec).
    let signals = termination_signals();
    // SAFETY: blocking signals for this thread, before any other starts.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    std::fs::create_dir_all(&a.dir)
        .map_err(|e| format!("cannot create --dir {}: {e}", a.dir.display()))?;
    let dir = a
        .dir
        .canonicalize()
        .map_err(|e| format!("--dir {}: {e}", a.dir.display()))?;
    refuse_running(&dir)?;

    let img = dir.join("fs.img");
    prepare_image(a, &mkfs, &img)?;

    let mut c = Running {
        dir: dir.clone(),
        nbd: None,
        nodes: Vec::new(),
        stopped: false,
    };
    match start(a, &mut c, &exe, &nbd, &img, &signals) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!(error = %e, "startup failed; stopping what was started");
            c.shutdown();
            return Err(e);
        }
    }
    say(format!(
        "Ctrl-C (or SIGTERM to pid {}) unmounts every node and stops the server.",
        std::process::id()
    ));
    say(format!("ready: {} nodes", a.nodes));

    let sig = c.watch(&signals);
    tracing::info!(signal = sig, "stopping the cluster");
    say(format!("signal {sig}: stopping the cluster"));
    if c.shutdown() {
        Ok(())
    } else {
        Err("not every node unmounted cleanly (see the summary above)".into())
    }
}

/// Refuses a directory that holds a running cluster: a mount under it or
/// a live process named by one of its pid files.
fn refuse_running(dir: &Path) -> Result<(), String> {
    let prefix = dir.as_os_str().as_bytes();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let Some(m) = l.split_whitespace().nth(1) else {
            continue;
        };
        let m = unescape_mount_field(m);
        if m.len() > prefix.len() && m.starts_with(prefix) && m[prefix.len()] == b'/' {
            return Err(format!(
                "{} already holds a running cluster: {} is mounted (stop that cluster first, or use another --dir)",
                dir.display(),
                String::from_utf8_lossy(&m)
            ));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_ours = name == "nbd.pid"
            || name
                .strip_prefix("node")
                .and_then(|r| r.strip_suffix(".pid"))
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !is_ours {
            continue;
        }
        let Some(pid) = read_pid(&e.path()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.windows(prefix.len()).any(|w| w == prefix) {
            return Err(format!(
                "{} already holds a running cluster: process {pid} from {} is still running (stop that cluster first, or use another --dir)",
                dir.display(),
                e.path().display()
            ));
        }
    }
    Ok(())
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
}

/// Lazy unmount (`umount -l`) of a node's mountpoint.
fn detach(p: &Path) {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(mountpoint = %p.display(), error = %e, "lazy unmount failed");
    }
}

/// Formats `img` unless it already holds a file system this command can
/// use (made for lock_dlm, this lock table, enough journals).
fn prepare_image(a: &UpArgs, mkfs: &Path, img: &Path) -> Result<(), String> {
    let table = format!("{CLUSTER_NAME}:{FS_NAME}");
    if img.exists() {
        let dev = FileDevice::open(
            img,
            FileOptions {
                read_only: true,
                ..FileOptions::default()
            },
        )
        .map_err(|e| format!("image {}: {e}", img.display()))?;
        let sb = crate::format::io::read_superblock(&dev).map_err(|e| {
            format!(
                "{} exists but holds no rdlmfs file system ({e}); remove it or use another --dir",
                img.display()
            )
        })?;
        if sb.lock_proto != crate::format::superblock::LockProto::Dlm || sb.lock_table != table {
            return Err(format!(
                "{} holds a file system for {} with lock table {:?}, not lock_dlm with {table:?}; remove it or use another --dir",
                img.display(),
                sb.lock_proto,
                sb.lock_table
            ));
        }
        if sb.journals < a.nodes {
            return Err(format!(
                "{} has {} journals, too few for {} nodes; remove it (its data goes) or use another --dir",
                img.display(),
                sb.journals,
                a.nodes
            ));
        }
        tracing::info!(image = %img.display(), journals = sb.journals, "reusing the existing image");
        say(format!(
            "image:        {} (existing: {} journals, lock table {table}; --size not applied)",
            img.display(),
            sb.journals
        ));
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(img)
        .map_err(|e| format!("cannot create image {}: {e}", img.display()))?;
    f.set_len(a.size).map_err(|e| {
        format!(
            "cannot size image {} to {} bytes: {e}",
            img.display(),
            a.size
        )
    })?;
    drop(f);
    let log = img.with_file_name("mkfs.log");
    let mut cmd = Command::new(mkfs);
    cmd.args([
        "-p",
        "lock_dlm",
        "-t",
        &table,
        "-j",
        &a.nodes.to_string(),
        "-O",
    ]);
    if let Some(j) = a.journal_mib {
        cmd.arg("-J").arg(j.to_string());
    }
    cmd.arg(img);
    let r = run_bounded(cmd, &log, MKFS_WAIT);
    if let Err(e) = r {
        // The image is ours and holds nothing: do not leave a half-made one.
        let _ = std::fs::remove_file(img);
        return Err(format!(
            "mkfs-rdlmfs on {}: {e}; its output ({}):\n{}",
            img.display(),
            log.display(),
            tail(&log, 20)
        ));
    }
    say(format!(
        "image:        {} ({}, lock_dlm, lock table {table}, {} journals; mkfs output in {})",
        img.display(),
        crate::format::layout::human_bytes(a.size),
        a.nodes,
        log.display()
    ));
    Ok(())
}

/// Runs a short-lived program with its output in `log`; fails if it
/// exits non-zero or runs longer than `limit` (then it is killed).
fn run_bounded(mut cmd: Command, log: &Path, limit: Duration) -> Result<(), String> {
    let out = std::fs::File::create(log).map_err(|e| format!("log {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("log {}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("failed ({st})")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {} s; killed", limit.as_secs()));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}

/// The last `n` lines of a log file.
fn tail(p: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(p) else {
        return format!("  (cannot read {})", p.display());
    };
    // The end is enough: a log may be large.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A process this command started.
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Proc {
    fn spawn(
        what: String,
        mut cmd: Command,
        log: &Path,
        pid_file: PathBuf,
    ) -> Result<Proc, String> {
        let out = std::fs::File::create(log)
            .map_err(|e| format!("{what}: log {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{what}: log {}: {e}", log.display()))?;
        // A process group of its own: a terminal's Ctrl-C reaches only us,
        // and we stop the nodes before the disk they write to.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        let p = Proc {
            what,
            child,
            log: log.to_path_buf(),
            pid_file,
        };
        std::fs::write(&p.pid_file, format!("{}\n", p.pid()))
            .map_err(|e| format!("{}: pid file {}: {e}", p.what, p.pid_file.display()))?;
        Ok(p)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by PID; it has not been reaped
        // (we hold its `Child` and reap only through it), so the PID is
        // still its own.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits until `deadline` for the process to exit.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(process = %self.what, error = %e, "waiting for it");
                    return None;
                }
            }
        }
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn remove_pid_file(&self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

struct Node {
    id: u32,
    mnt: PathBuf,
    proc: Proc,
    /// Set once the process has exited (and was reaped).
    exited: Option<ExitStatus>,
}

/// Everything started, in start order.
struct Running {
    dir: PathBuf,
    nbd: Option<Proc>,
    nodes: Vec<Node>,
    stopped: bool,
}

fn start(
    a: &UpArgs,
    c: &mut Running,
    exe: &Path,
    nbd_bin: &Path,
    img: &Path,
    signals: &libc::sigset_t,
) -> Result<(), String> {
    let dir = c.dir.clone();
    // The NBD server picks a free port itself and prints it.
    let nbd_log = dir.join("nbd.log");
    let admin = dir.join("nbd.admin");
    let mut cmd = Command::new(nbd_bin);
    cmd.arg("serve").arg(img).args(["--listen", "127.0.0.1:0"]);
    // A Unix socket path has at most 107 bytes.
    let with_admin = admin.as_os_str().len() < 100;
    if with_admin {
        let _ = std::fs::remove_file(&admin);
        cmd.arg("--admin").arg(&admin);
    }
    let nbd = Proc::spawn("the NBD server".into(), cmd, &nbd_log, dir.join("nbd.pid"))?;
    let nbd = c.nbd.insert(nbd);
    let port = wait_nbd(nbd, signals)?;
    let uri = format!("nbd://127.0.0.1:{port}/");
    say(format!(
        "nbd:          {uri} (rdlmfs-nbd pid {}, log {}{})",
        nbd.pid(),
        nbd.log.display(),
        if with_admin {
            format!(", admin socket {}", admin.display())
        } else {
            String::new()
        }
    ));

    let cluster_file = write_cluster_file(&dir, a.nodes)?;
    let quorum = if a.nodes == 2 { 1 } else { a.nodes / 2 + 1 };

    // A node mounts only in a quorate cluster: the first majority starts
    // together, every further node one after another.
    let mut waited = 0usize;
    for id in 1..=a.nodes {
        let mnt = dir.join(format!("node{id}"));
        std::fs::create_dir_all(&mnt)
            .map_err(|e| format!("node {id}: cannot create mountpoint {}: {e}", mnt.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("mount")
            .arg(&uri)
            .arg(&mnt)
            .arg("--cluster")
            .arg(&cluster_file)
            .arg("--node")
            .arg(id.to_string())
            .arg("--foreground");
        if let Some(level) = &a.log {
            cmd.arg("-o").arg(format!("log={level}"));
        }
        if let Some(ms) = a.min_hold_ms {
            cmd.arg("--min-hold-ms").arg(ms.to_string());
        }
        if with_admin {
            // Survivors fence a dead node at the server before replaying.
            cmd.arg("--nbd-admin").arg(&admin);
        }
        let log = dir.join(format!("node{id}.log"));
        let proc = Proc::spawn(
            format!("node {id}"),
            cmd,
            &log,
            dir.join(format!("node{id}.pid")),
        )?;
        tracing::info!(node = id, pid = proc.pid(), log = %log.display(), "mounting");
        c.nodes.push(Node {
            id,
            mnt,
            proc,
            exited: None,
        });
        if id >= quorum {
            while waited < c.nodes.len() {
                wait_mounted(&mut c.nodes[waited], signals)?;
                let n = &c.nodes[waited];
                say(format!(
                    "node {}:       {} (pid {}, log {})",
                    n.id,
                    n.mnt.display(),
                    n.proc.pid(),
                    n.proc.log.display()
                ));
                waited += 1;
            }
        }
    }
    Ok(())
}

/// Waits (bounded) for the NBD server's "listening on ADDR" line and a
/// connection to that address; returns the port.
fn wait_nbd(nbd: &mut Proc, signals: &libc::sigset_t) -> Result<u16, String> {
    let deadline = Instant::now() + NBD_START;
    let mut port = None;
    loop {
        if let Some(sig) = wait_signal(signals, Duration::from_millis(20)) {
            return Err(format!("signal {sig} while the NBD server was starting"));
        }
        if let Ok(Some(st)) = nbd.child.try_wait() {
            return Err(format!(
                "the NBD server exited while starting ({st}); its log ({}):\n{}",
                nbd.log.display(),
                tail(&nbd.log, 20)
            ));
        }
        if port.is_none() {
            let log = std::fs::read_to_string(&nbd.log).unwrap_or_default();
            port = log
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port());
        }
        if let Some(p) = port {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                tracing::info!(port = p, "the NBD server accepts connections");
                return Ok(p);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the NBD server (pid {}) {} after {} s; its log ({}):\n{}",
                nbd.pid(),
                match port {
                    Some(p) => format!("does not accept connections on 127.0.0.1:{p}"),
                    None => "did not say which port it listens on".into(),
                },
                NBD_START.as_secs(),
                nbd.log.display(),
                tail(&nbd.log, 20)
            ));
        }
    }
}

/// Waits (bounded) until the node's mountpoint shows in /proc/self/mounts.
fn wait_mounted(n: &mut Node, signals: &libc::sigset_t) -> Result<(), String> {
    let deadline = Instant::now() + MOUNT_WAIT;
    loop {
        if mounts_at(&n.mnt) > 0 {
            return Ok(());
        }
        if let Some(sig) = wait_signal(signals, Duration::from_millis(20)) {
            return Err(format!("signal {sig} while node {} was mounting", n.id));
        }
        if let Ok(Some(st)) = n.proc.child.try_wait() {
            n.exited = Some(st);
            n.proc.remove_pid_file();
            return Err(format!(
                "node {} exited before mounting at {} ({st}); the end of its log ({}):\n{}",
                n.id,
                n.mnt.display(),
                n.proc.log.display(),
                tail(&n.proc.log, 30)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {} (pid {}) did not mount at {} within {} s; the end of its log ({}):\n{}",
                n.id,
                n.proc.pid(),
                n.mnt.display(),
                MOUNT_WAIT.as_secs(),
                n.proc.log.display(),
                tail(&n.proc.log, 30)
            ));
        }
    }
}

/// `n` distinct UDP ports on 127.0.0.1 free right now (all held while
/// they are picked, so they differ).
fn free_udp_ports(n: u32) -> Result<Vec<u16>, String> {
    let held: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find a free UDP port on 127.0.0.1: {e}"))?;
    held.iter()
        .map(|s| {
            s.local_addr()
                .map(|a| a.port())
                .map_err(|e| format!("UDP port: {e}"))
        })
        .collect()
}

/// Writes a file readable by its owner only.
fn write_secret(p: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| format!("cannot write key {}: {e}", p.display()))?;
    // An older file keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|_| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write key {}: {e}", p.display()))
}

fn write_public(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
}

/// A CA, one certificate and key per node and `dir/cluster.toml`.
fn write_cluster_file(dir: &Path, n: u32) -> Result<PathBuf, String> {
    let ports = free_udp_ports(n)?;
    let (ca_cert, ca_key) = rdlm::tls::generate_ca(CLUSTER_NAME)
        .map_err(|e| format!("generating the cluster CA: {e}"))?;
    write_public(&dir.join("ca.pem"), &ca_cert)?;
    write_secret(&dir.join("ca.key"), &ca_key)?;
    let mut nodes = Vec::new();
    for (id, port) in (1..=n).zip(&ports) {
        let (cert, key) = rdlm::tls::generate_node_cert(&ca_cert, &ca_key, id, CLUSTER_NAME)
            .map_err(|e| format!("node {id}: generating its certificate: {e}"))?;
        let c = dir.join(format!("node-{id}.pem"));
        let k = dir.join(format!("node-{id}.key"));
        write_public(&c, &cert)?;
        write_secret(&k, &key)?;
        nodes.push(NodeConfig {
            id,
            address: format!("127.0.0.1:{port}"),
            cert: c,
            key: k,
        });
    }
    let cfg = ClusterConfig {
        name: CLUSTER_NAME.into(),
        lvb_len: LVB_LEN,
        heartbeat_ms: HEARTBEAT_MS,
        failure_timeout_ms: FAILURE_TIMEOUT_MS,
        lease_ms: LEASE_MS,
        two_node: n == 2,
        ca: dir.join("ca.pem"),
        nodes,
        base_dir: dir.to_path_buf(),
    };
    let p = dir.join("cluster.toml");
    cfg.validate()
        .map_err(|e| format!("cluster file {}: {e}", p.display()))?;
    let toml = cfg
        .to_toml()
        .map_err(|e| format!("cluster file {}: {e}", p.display()))?;
    let header = format!(
        "# rdlm cluster {CLUSTER_NAME:?}: {n} nodes on 127.0.0.1, written by `rdlmfs cluster up`.\n\
         # Relative paths are resolved against this file's directory.\n\n"
    );
    write_public(&p, &(header + &toml))?;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    say(format!(
        "cluster file: {} (cluster {CLUSTER_NAME}, UDP {})",
        p.display(),
        addrs.join(" ")
    ));
    Ok(p)
}

impl Running {
    /// Waits for a termination signal, reporting nodes (and the server)
    /// that exit by themselves meanwhile. Returns the signal.
    fn watch(&mut self, signals: &libc::sigset_t) -> i32 {
        loop {
            if let Some(sig) = wait_signal(signals, Duration::from_millis(500)) {
                return sig;
            }
            for n in self.nodes.iter_mut().filter(|n| n.exited.is_none()) {
                if let Ok(Some(st)) = n.proc.child.try_wait() {
                    n.exited = Some(st);
                    n.proc.remove_pid_file();
                    tracing::warn!(node = n.id, pid = n.proc.pid(), status = %st, log = %n.proc.log.display(), "node exited by itself; the others keep running");
                    say(format!(
                        "node {} (pid {}) exited by itself ({st}); its log: {}; the others keep running",
                        n.id,
                        n.proc.pid(),
                        n.proc.log.display()
                    ));
                    if mounts_at(&n.mnt) > 0 {
                        // Its FUSE mount is dead (ENOTCONN): detach it.
                        detach(&n.mnt);
                        tracing::info!(node = n.id, mountpoint = %n.mnt.display(), "detached the dead node's mount");
                    }
                }
            }
            if let Some(nbd) = self.nbd.as_mut() {
                if let Ok(Some(st)) = nbd.child.try_wait() {
                    nbd.remove_pid_file();
                    tracing::error!(pid = nbd.pid(), status = %st, log = %nbd.log.display(), "the NBD server exited by itself; the nodes have lost their disk");
                    say(format!(
                        "the NBD server (pid {}) exited by itself ({st}); its log: {}",
                        nbd.pid(),
                        nbd.log.display()
                    ));
                    self.nbd = None;
                }
            }
        }
    }

    /// Stops every node (SIGTERM; after [`UNMOUNT_WAIT`] SIGKILL and a
    /// lazy unmount), then the NBD server, and prints a summary. True if
    /// every node unmounted cleanly (exit status 0 after our SIGTERM).
    fn shutdown(&mut self) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        let mut clean = true;
        let mut summary = Vec::new();
        // All at once: each node frees its glocks while the others (and
        // quorum) are still there.
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].exited.is_none())
            .collect();
        for &i in &live {
            tracing::info!(
                node = self.nodes[i].id,
                pid = self.nodes[i].proc.pid(),
                "SIGTERM"
            );
            self.nodes[i].proc.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + UNMOUNT_WAIT;
        for n in self.nodes.iter_mut() {
            let line = if let Some(st) = n.exited {
                clean = false;
                format!(
                    "node {}: had exited by itself ({st}); log {}",
                    n.id,
                    n.proc.log.display()
                )
            } else {
                match n.proc.wait_until(deadline) {
                    Some(st) if st.success() && !mounts_at(&n.mnt) > 0 => {
                        format!("node {}: unmounted cleanly", n.id)
                    }
                    Some(st) => {
                        clean = false;
                        let still = mounts_at(&n.mnt) > 0;
                        if still {
                            detach(&n.mnt);
                        }
                        format!(
                            "node {}: exited with {st}{}; log {}",
                            n.id,
                            if still {
                                ", mount left behind (detached)"
                            } else {
                                ""
                            },
                            n.proc.log.display()
                        )
                    }
                    None => {
                        clean = false;
                        let st = n.proc.kill_and_reap();
                        if mounts_at(&n.mnt) > 0 {
                            detach(&n.mnt);
                        }
                        format!(
                            "node {}: did not exit within {} s of SIGTERM; killed ({}), mount detached; log {}",
                            n.id,
                            UNMOUNT_WAIT.as_secs(),
                            st.map(|s| s.to_string()).unwrap_or_else(|| "not reaped".into()),
                            n.proc.log.display()
                        )
                    }
                }
            };
            n.proc.remove_pid_file();
            summary.push(line);
        }
        if let Some(mut nbd) = self.nbd.take() {
            nbd.signal(libc::SIGTERM);
            let line = match nbd.wait_until(Instant::now() + NBD_STOP) {
                Some(st) if st.success() => "nbd: stopped".to_string(),
                Some(st) => format!("nbd: exited with {st}; log {}", nbd.log.display()),
                None => {
                    let st = nbd.kill_and_reap();
                    format!(
                        "nbd: did not exit within {} s of SIGTERM; killed ({}); log {}",
                        NBD_STOP.as_secs(),
                        st.map(|s| s.to_string())
                            .unwrap_or_else(|| "not reaped".into()),
                        nbd.log.display()
                    )
                }
            };
            nbd.remove_pid_file();
            summary.push(line);
        }
        say("summary:");
        for l in &summary {
            say(format!("  {l}"));
        }
        say(format!(
            "  {}; image and logs kept in {}",
            if clean {
                "every node started unmounted cleanly"
            } else {
                "NOT every node unmounted cleanly"
            },
            self.dir.display()
        ));
        clean
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A panic between start and shutdown must not leave processes.
        if !self.stopped {
            self.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
