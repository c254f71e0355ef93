//! `rdlmfs`: mount the file system.
//!
//! `rdlmfs mount DEVICE MOUNTPOINT [-o OPTIONS] [--foreground]` mounts a
//! device (a file, a block device or an `nbd://` URI) through FUSE and, like
//! every `mount.TYPE` helper, returns once the mount is in place, leaving a
//! background process serving it (`--foreground` keeps it in the
//! foreground). Installed as `mount.rdlmfs` (or `mount.fuse.rdlmfs`) it
//! takes mount(8)'s argument order, so `mount -t rdlmfs DEV DIR -o ...`
//! and fstab entries work. SIGTERM, SIGINT or `umount DIR` commit, leave the
//! journal clean and exit.

use clap::{Parser, Subcommand};
use rdlmfs::fuse::RdlmFuse;
use rdlmfs::process::{mounts_at, termination_signals, wait_signal};
use rdlmfs::{AtimeMode, Fs, MountOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "rdlmfs", version, about = "The rdlmfs cluster file system")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount DEVICE (path or nbd://HOST[:PORT]/EXPORT) at MOUNTPOINT.
    Mount(MountArgs),
    /// What the mount at MOUNTPOINT is doing: members, quorum, journal
    /// slots, glocks held, cache hit rates.
    Status { mountpoint: PathBuf },
    /// A whole cluster on this machine: `rdlmfs cluster up --nodes N --dir DIR`.
    #[command(subcommand)]
    Cluster(rdlmfs::up::ClusterCmd),
}

#[derive(clap::Args, Clone)]
struct MountArgs {
    device: String,
    mountpoint: PathBuf,
    /// Comma-separated options: ro, rw, noatime, relatime, strictatime,
    /// lockproto=nolock, cache=BLOCKS, glocks=N (cached glocks kept, in a
    /// cluster), commit=SECONDS, log=LEVEL, force_nolock; mount(8)'s generic options (defaults, _netdev, nofail,
    /// auto, noauto, user, nouser, exec, suid, dev) are accepted and ignored.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Option<String>,
    /// Stay in the foreground (do not detach once mounted).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Where a detached server writes its log.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Mount as a node of this cluster (lock_dlm): the cluster file (see
    /// `rdlm gencluster`). Needs --node.
    #[arg(long, value_name = "FILE", requires = "node")]
    cluster: Option<PathBuf>,
    /// This node's id in the cluster file.
    #[arg(long, value_name = "ID", requires = "cluster")]
    node: Option<u32>,
    /// How long a glock stays after its grant before another node's
    /// request takes it (milliseconds; damps ping-pong).
    #[arg(long, value_name = "MS", default_value_t = 10)]
    min_hold_ms: u64,
    /// The admin socket of the `rdlmfs-nbd` server serving DEVICE: when a
    /// node dies, the survivor recovering it fences it there first. Without
    /// it, fencing relies on the lock manager's lease alone.
    #[arg(long, value_name = "SOCKET", requires = "cluster")]
    nbd_admin: Option<PathBuf>,
}

struct Parsed {
    mount: MountOptions,
    log: String,
}

fn parse_options(s: Option<&str>) -> Result<Parsed, String> {
    let mut p = Parsed {
        mount: MountOptions::default(),
        log: "info".into(),
    };
    for o in s.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').map_or((o, None), |(k, v)| (k, Some(v)));
        let num = |v: Option<&str>| -> Result<u64, String> {
            v.ok_or(format!("option {k} needs a value"))?
                .parse::<u64>()
                .map_err(|_| format!("option {o}: not a number"))
        };
        match k {
            "ro" => p.mount.read_only = true,
            "rw" => p.mount.read_only = false,
            "noatime" => p.mount.atime = AtimeMode::Noatime,
            "relatime" => p.mount.atime = AtimeMode::Relatime,
            "strictatime" => p.mount.atime = AtimeMode::Strictatime,
            "lockproto" => match v {
                Some("nolock") | Some("lock_nolock") => {}
                // Chosen by --cluster; accepted so fstab lines can say it.
                Some("dlm") | Some("lock_dlm") => {}
                _ => {
                    return Err(format!(
                        "option {o}: expected lockproto=nolock or lockproto=dlm"
                    ))
                }
            },
            "force_nolock" => p.mount.force_nolock = true,
            "cache" => p.mount.cache_blocks = num(v)?.clamp(64, 1 << 24) as usize,
            "glocks" => p.mount.max_glocks = num(v)?.clamp(16, 1 << 24) as usize,
            "commit" => p.mount.commit_interval = Duration::from_secs(num(v)?.clamp(1, 3600)),
            "log" => p.log = v.ok_or("option log needs a level")?.to_string(),
            "defaults" | "_netdev" | "nofail" | "auto" | "noauto" | "user" | "nouser" | "exec"
            | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "async" => {}
            _ => return Err(format!("unknown mount option {o:?}")),
        }
    }
    Ok(p)
}

fn main() -> ExitCode {
    // Invoked as mount.rdlmfs / mount.fuse.rdlmfs: mount(8)'s order.
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args = if name.starts_with("mount.") {
        let mut a: Vec<String> = vec!["rdlmfs".into(), "mount".into()];
        a.extend(std::env::args().skip(1).filter(|x| x != "-n" && x != "-v"));
        Cli::parse_from(a)
    } else {
        Cli::parse()
    };
    let m = match args.cmd {
        Cmd::Mount(m) => m,
        Cmd::Cluster(c) => return rdlmfs::up::main(c),
        Cmd::Status { mountpoint } => {
            return match rdlmfs::status::query(&mountpoint) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rdlmfs status: {e}");
                    ExitCode::from(1)
                }
            };
        }
    };
    match run_mount(m) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdlmfs: {e}");
            ExitCode::from(32)
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run_mount(m: MountArgs) -> Result<(), String> {
    let parsed = parse_options(m.options.as_deref())?;
    let mountpoint = m
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", m.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ));
    }
    if !m.foreground {
        return detach(&m, &mountpoint);
    }
    init_logging(&parsed.log);
    let signals = termination_signals();
    // SAFETY: blocking signals for this thread (and the threads it starts)
    // so that only sigtimedwait below receives them.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    // A cluster node names itself to the NBD server (which may refuse
    // anonymous clients); this first connection only reads the superblock.
    let probe_id = m
        .node
        .map(|n| format!("superblock-probe/node{n}/{}", std::process::id()));
    let dev = blockdev::open_as(&m.device, parsed.mount.read_only, probe_id)
        .map_err(|e| format!("{}: {e}", m.device))?;
    let mut gate = None;
    let (fs, mut joined) = match (&m.cluster, m.node) {
        (Some(file), Some(node)) => {
            let sb = rdlmfs::format::io::read_superblock(&*dev)
                .map_err(|e| format!("{}: {e}", m.device))?;
            let joined = rdlmfs::cluster::join(file, node, &sb, Duration::from_secs(60))?;
            tracing::info!(node, slot = joined.slot, jid = joined.jid, incarnation = joined.incarnation, lockspace = %joined.lockspace, "joined the cluster");
            // Reconnect under this incarnation's client id, so that the
            // NBD server can fence exactly this run of this node.
            drop(dev);
            let id = rdlmfs::fence::client_id(&joined.cluster, node, joined.incarnation);
            let dev = blockdev::open_as(&m.device, parsed.mount.read_only, Some(id))
                .map_err(|e| format!("{}: {e}", m.device))?;
            let g = rdlmfs::fence::GatedDevice::new(dev, Some(joined.dlm.dlm().lease_watch()));
            gate = Some(g.clone());
            let mut opts = parsed.mount.clone();
            opts.jid = joined.jid;
            let mut fs =
                Fs::mount_with(g.clone(), opts, joined.proto.clone()).map_err(|e| e.to_string())?;
            fs.set_gate(g);
            (fs, Some(joined))
        }
        _ => (
            Fs::mount(dev, parsed.mount.clone()).map_err(|e| e.to_string())?,
            None,
        ),
    };
    let root = fs.root();
    let glocks = fs.glocks().clone();
    let shared = Arc::new(Mutex::new(Some(fs)));
    // Unlinked inodes left by an earlier run that other nodes still have
    // open: freed once they close them.
    let waits = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
        .map(|fs| fs.take_delete_waits())
        .unwrap_or_default();
    rdlmfs::fuse::spawn_delete_waiters(&shared, waits);
    let mut config = fuser::Config::default();
    let mut opts = vec![
        fuser::MountOption::FSName(m.device.clone()),
        fuser::MountOption::Subtype("rdlmfs".into()),
    ];
    if parsed.mount.read_only {
        opts.push(fuser::MountOption::RO);
    }
    config.mount_options = opts;
    // Every user of the machine uses the file system (allow_other); the
    // file system checks permissions itself, with ACLs.
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    // In a cluster the kernel may not trust names or attributes on its
    // own (another node may change them); page contents it keeps, and
    // demotes invalidate them.
    let ttl = if joined.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    };
    let mut fuse_fs = RdlmFuse::new(shared.clone(), ttl);
    let plocks = joined.as_ref().map(|j| {
        Arc::new(rdlmfs::plock::Plocks::new(
            j.dlm.clone(),
            j.plock_lockspace.clone(),
        ))
    });
    if let Some(p) = &plocks {
        fuse_fs = fuse_fs.clustered(p.clone());
    }
    let dcache = fuse_fs.dcache();
    let session = fuser::Session::new(fuse_fs, &mountpoint, &config)
        .map_err(|e| format!("mount at {}: {e}", mountpoint.display()))?;
    if let Some(d) = &dcache {
        d.set_notifier(session.notifier());
    }
    let mut demote_tx = None;
    if let Some(j) = joined.as_mut() {
        let kernel = Arc::new(rdlmfs::fuse::Notifier::new(session.notifier(), root));
        let (tx, _worker) = rdlmfs::demote::spawn(
            shared.clone(),
            glocks.clone(),
            kernel,
            Duration::from_millis(m.min_hold_ms),
            parsed.mount.max_glocks,
        )
        .map_err(|e| format!("demote worker: {e}"))?;
        demote_tx = Some(tx.clone());
        let proto = j.proto.clone();
        let events = j.events.take().ok_or("lock manager events already taken")?;
        let (other_tx, other_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rdlmfs-dlm-events".into())
            .spawn(move || rdlmfs::lock_dlm::forward_events(proto, events, tx, other_tx))
            .map_err(|e| format!("event thread: {e}"))?;
        let failover = rdlmfs::failover::Failover {
            fs: shared.clone(),
            glocks: glocks.clone(),
            dlm: j.dlm.clone(),
            lockspace: j.lockspace.clone(),
            plock_lockspace: j.plock_lockspace.clone(),
            cluster: j.cluster.clone(),
            jid: j.jid,
            gate: gate.clone().ok_or("cluster mount without an I/O gate")?,
            nbd_admin: m.nbd_admin.clone(),
        };
        std::thread::Builder::new()
            .name("rdlmfs-failover".into())
            .spawn(move || failover.run(other_rx))
            .map_err(|e| format!("failover thread: {e}"))?;
    }
    let background = session
        .spawn()
        .map_err(|e| format!("serve {}: {e}", mountpoint.display()))?;
    tracing::info!(device = %m.device, mountpoint = %mountpoint.display(), "serving");
    let status = rdlmfs::status::Source {
        fs: shared.clone(),
        glocks: glocks.clone(),
        mountpoint: mountpoint.clone(),
        device: m.device.clone(),
        cluster: match (&joined, &plocks, &gate) {
            (Some(j), Some(p), Some(g)) => Some(rdlmfs::status::ClusterSource {
                dlm: j.dlm.clone(),
                lockspace: j.lockspace.clone(),
                jid: j.jid,
                plocks: p.clone(),
                gate: g.clone(),
                dcache: dcache.clone(),
            }),
            _ => None,
        },
    };
    let status_socket = match status.serve() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "no status socket: `rdlmfs status` will not answer for this mount");
            None
        }
    };
    println!("mounted {} at {}", m.device, mountpoint.display());
    let _ = std::io::stdout().flush();

    // The commit timer, the signal wait and the withdraw watch share
    // this loop.
    let mut left_after_withdraw = false;
    loop {
        if background.guard.is_finished() {
            break;
        }
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(500)) {
            tracing::info!(signal = sig, "unmounting");
            unmount(&mountpoint);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !background.guard.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            break;
        }
        let mut g = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(fs), Some(j), false) = (g.as_mut(), &joined, left_after_withdraw) {
            if fs.is_withdrawn() {
                // A withdrawn node must not keep its glocks: the others
                // would wait for them forever. It leaves the cluster as a
                // dead node does (GFS2's withdraw does the same through
                // its lock module): the survivors fence it, replay its
                // journal (its last committed state) and take its locks.
                // Nothing here is trusted or written any more.
                tracing::error!(
                    "withdrawn: stopping this node's lock manager so the others recover its journal; remount after fsck"
                );
                if let Some(g) = &gate {
                    g.shut("the file system withdrew");
                }
                j.dlm.dlm().abort();
                left_after_withdraw = true;
            }
        }
        if let Some(fs) = g.as_mut() {
            if fs.commit_due() {
                if let Err(e) = fs.commit() {
                    tracing::error!(error = %e, "periodic commit failed");
                }
            }
        }
    }
    if joined.is_some() {
        // Other nodes may still ask for glocks while this one frees what
        // it must: wait for glocks with the file system let go.
        if let Err(e) = rdlmfs::fuse::run_retrying(&shared, &mut |fs: &mut Fs| fs.prepare_unmount())
        {
            tracing::error!(error = %e, "unmount: freeing and folding failed");
        }
    }
    if let Some(p) = &status_socket {
        rdlmfs::status::remove_socket(p);
    }
    let fs = shared.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(demote_tx);
    // fuser's mount handle would unmount once more on drop; the kernel has
    // already ended the session, so leak it rather than risk a later mount.
    std::mem::forget(background);
    let r = match fs {
        Some(fs) => fs.unmount().map_err(|e| format!("unmount: {e}")),
        None => Ok(()),
    };
    if let Some(p) = &plocks {
        p.release_all();
    }
    if let Some(j) = joined {
        // Every glock is released: leave the lockspaces and the cluster
        // cleanly, so nobody recovers this node's journal.
        if let Err(e) = j.dlm.leave_lockspace(&j.plock_lockspace) {
            tracing::warn!(error = %e, "leaving the record locks' lockspace");
        }
        if let Err(e) = j.dlm.leave_lockspace(&j.lockspace) {
            tracing::warn!(error = %e, "leaving the lockspace");
        }
        if let Err(e) = j.dlm.leave() {
            tracing::warn!(error = %e, "leaving the cluster");
        }
    }
    r
}

/// Starts the server in the background and returns once the mount shows
/// up (or the server exits with its error).
fn detach(m: &MountArgs, mountpoint: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let log: Box<dyn Fn() -> std::process::Stdio> = match &m.log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("log file {}: {e}", p.display()))?;
            Box::new(move || {
                f.try_clone()
                    .map(Into::into)
                    .unwrap_or_else(|_| std::process::Stdio::null())
            })
        }
        None => Box::new(std::process::Stdio::inherit),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount")
        .arg(&m.device)
        .arg(mountpoint)
        .arg("--foreground");
    if let Some(o) = &m.options {
        cmd.arg("-o").arg(o);
    }
    if let (Some(c), Some(n)) = (&m.cluster, m.node) {
        cmd.arg("--cluster")
            .arg(c)
            .arg("--node")
            .arg(n.to_string())
            .arg("--min-hold-ms")
            .arg(m.min_hold_ms.to_string());
        if let Some(a) = &m.nbd_admin {
            cmd.arg("--nbd-admin").arg(a);
        }
    }
    let before = mounts_at(mountpoint);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log())
        .spawn()
        .map_err(|e| format!("start server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if mounts_at(mountpoint) > before {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("the server exited before mounting ({st})"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("no mount at {} after 30 s", mountpoint.display()))
}

fn unmount(mountpoint: &Path) {
    let Ok(p) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: p is a valid NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), 0) } != 0 {
        // Busy: detach now; the session ends when the last user leaves.
        // SAFETY: as above.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}
