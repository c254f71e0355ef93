//! Several nodes mounting one file system: an image formatted for
//! lock_dlm, served over NBD from this test process, and one `rdlmfs
//! mount --cluster` process per node at its own temporary mount point,
//! the nodes talking QUIC with mutual TLS on 127.0.0.1. Every mount is
//! torn down by PID when a test fails, and its log's end is printed.

mod common;
use blockdev::file::{FileDevice, FileOptions};
use blockdev::nbd::server::{self, ServerConfig, ServerHandle};
use blockdev::BlockDevice;
use common::*;
use rdlm::config::{ClusterConfig, NodeConfig};
use rdlmfs::format::superblock::LockProto;
use rdlmfs::format::MkfsOptions;
use rdlmfs_mkfs::{format, FormatParams};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const JOIN: Duration = Duration::from_secs(60);

/// `n` consecutive UDP ports free right now.
fn free_ports(n: u16) -> u16 {
    'next: for _ in 0..500 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let base = a.local_addr().expect("addr").port();
        if base > u16::MAX - n {
            continue;
        }
        let mut held = vec![a];
        for i in 1..n {
            match std::net::UdpSocket::bind(("127.0.0.1", base + i)) {
                Ok(s) => held.push(s),
                Err(_) => continue 'next,
            }
        }
        return base;
    }
    panic!("no {n} consecutive free UDP ports");
}

/// A cluster file for `n` nodes with test timings and fresh certificates.
fn cluster_file(dir: &Path, n: u32) -> PathBuf {
    let base = free_ports(n as u16);
    let addrs = (0..n)
        .map(|i| format!("127.0.0.1:{}", u32::from(base) + i))
        .collect();
    cluster_file_at(dir, addrs)
}

/// A cluster file for nodes 1.. at `addrs`.
fn cluster_file_at(dir: &Path, addrs: Vec<String>) -> PathBuf {
    let n = addrs.len() as u32;
    let name = "t";
    let (ca_cert, ca_key) = rdlm::tls::generate_ca(name).expect("CA");
    std::fs::write(dir.join("ca.pem"), &ca_cert).unwrap();
    let mut nodes = Vec::new();
    for id in 1..=n {
        let (cert, key) =
            rdlm::tls::generate_node_cert(&ca_cert, &ca_key, id, name).expect("node cert");
        let c = dir.join(format!("node-{id}.pem"));
        let k = dir.join(format!("node-{id}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        nodes.push(NodeConfig {
            id,
            address: addrs[(id - 1) as usize].clone(),
            cert: c,
            key: k,
        });
    }
    let cfg = ClusterConfig {
        name: name.into(),
        lvb_len: 64,
        heartbeat_ms: 50,
        failure_timeout_ms: 400,
        lease_ms: 800,
        two_node: n == 2,
        ca: dir.join("ca.pem"),
        nodes,
        base_dir: dir.to_path_buf(),
    };
    let p = dir.join("cluster.toml");
    std::fs::write(&p, cfg.to_toml().expect("cluster toml")).unwrap();
    p
}

struct Cluster {
    nbd: ServerHandle,
    img: PathBuf,
    nodes: Vec<Mounted>,
    _watchdog: Watchdog,
}

/// How long one cluster test may run before its mount processes are
/// killed: a hang must fail the test (its FUSE calls then fail), not stall
/// the whole suite.
const WATCHDOG: Duration = Duration::from_secs(240);

/// Kills the given mount processes (by PID) and detaches their mounts if
/// the test is still running after [`WATCHDOG`].
struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    fn start(nodes: &[Mounted]) -> Watchdog {
        let targets: Vec<(u32, PathBuf, PathBuf)> = nodes
            .iter()
            .filter_map(|m| m.pid().map(|p| (p, m.mnt.clone(), m.log.clone())))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                eprintln!(
                    "cluster test still running after {WATCHDOG:?}: killing its mount processes"
                );
                for (pid, mnt, log) in &targets {
                    eprintln!("  pid {pid} at {} (log {})", mnt.display(), log.display());
                    // SAFETY: signalling a mount process this test started.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
                        // SAFETY: a valid NUL-terminated path.
                        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                    }
                }
            }
        });
        Watchdog { stop: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Size of every test cluster's image.
const IMAGE_BYTES: u64 = 256 * MIB;

/// How every test cluster's image is formatted (a test that needs the
/// layout plans it from these).
fn image_options() -> MkfsOptions {
    MkfsOptions {
        block_size: 4096,
        journals: 3,
        journal_mib: Some(8),
        lock_proto: LockProto::Dlm,
        lock_table: "t:fs".into(),
        ..MkfsOptions::default()
    }
}

/// Formats a lock_dlm image, serves it, mounts `n` nodes.
fn start(t: &tempfile::TempDir, n: u32) -> Cluster {
    start_net(t, n, None, &[])
}

/// [`start`]; with `cut`, the last node runs in its own network namespace
/// and everything else talks over the host end of its veth pair, so that
/// pulling that link cuts the node off from the cluster and the disk.
/// `node_opts`: mount options (`-o`) added for some nodes; one starting
/// with `--` is a command-line flag instead (`--min-hold-ms=2500`).
fn start_net(
    t: &tempfile::TempDir,
    n: u32,
    cut: Option<&NetCut>,
    node_opts: &[(u32, &str)],
) -> Cluster {
    let img = t.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(IMAGE_BYTES)
        .unwrap();
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(&img, FileOptions::default()).expect("open image"));
    format(&*dev, &FormatParams::new(image_options()), &mut |_| {}).expect("format");
    let nbd = server::start(
        dev,
        ServerConfig {
            tcp: Some(match cut {
                Some(c) => SocketAddr::new(c.host_ip.parse().expect("host address"), 0),
                None => SocketAddr::from(([127, 0, 0, 1], 0)),
            }),
            admin: Some(t.path().join("nbd.admin")),
            require_client_id: true,
            handshake_timeout: Duration::from_secs(10),
            ..ServerConfig::default()
        },
    )
    .expect("start the NBD server");
    let uri = format!("nbd://{}/", nbd.tcp_addr().expect("bound address"));
    let cf = match cut {
        None => cluster_file(t.path(), n),
        Some(c) => {
            let base = u32::from(free_ports(n as u16));
            let addrs = (1..=n)
                .map(|id| {
                    let ip = if id == n { &c.ns_ip } else { &c.host_ip };
                    format!("{ip}:{}", base + id - 1)
                })
                .collect();
            cluster_file_at(t.path(), addrs)
        }
    };
    let mut nodes: Vec<Mounted> = (1..=n)
        .map(|id| {
            let spawn = |dev: &str, mnt: &Path, log: &Path, args: &[String]| match cut {
                Some(c) if id == n => Mounted::spawn_in_netns(&c.ns, dev, mnt, log, args),
                _ => Mounted::spawn_args(dev, mnt, log, args),
            };
            let mine = || node_opts.iter().filter(|(node, _)| *node == id);
            let flags = mine().filter(|(_, o)| o.starts_with("--"));
            let opts = mine().filter(|(_, o)| !o.starts_with("--"));
            spawn(
                &uri,
                &t.path().join(format!("node{id}")),
                &t.path().join(format!("node{id}.log")),
                &[
                    flags.map(|(_, o)| o.to_string()).collect::<Vec<_>>(),
                    vec![
                        "--cluster".into(),
                        cf.display().to_string(),
                        "--node".into(),
                        id.to_string(),
                        "--nbd-admin".into(),
                        t.path().join("nbd.admin").display().to_string(),
                        "-o".into(),
                        std::env::var("RDLMFS_TEST_FS_LOG")
                            .map_or("log=info".into(), |l| format!("log={l}"))
                            + &opts.map(|(_, o)| format!(",{o}")).collect::<String>(),
                    ],
                ]
                .concat(),
            )
        })
        .collect();
    let watchdog = Watchdog::start(&nodes);
    for m in &mut nodes {
        m.wait_mounted(JOIN);
    }
    Cluster {
        nbd,
        img,
        nodes,
        _watchdog: watchdog,
    }
}

impl Cluster {
    fn stop(mut self) -> PathBuf {
        let img = self.img.clone();
        for m in std::mem::take(&mut self.nodes) {
            m.stop();
        }
        img
    }
}

/// Unmounts every node, then checks the image: fsck must find nothing.
fn stop_and_fsck(c: Cluster) {
    let img = c.stop();
    let findings = fsck(&img);
    assert!(findings.is_empty(), "fsck: {findings:?}");
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn two_nodes_see_each_others_changes_at_once() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);

    // A write on one node is read on the other, also after the other had
    // the old contents in its page cache.
    std::fs::write(a.p("f"), b"first version").unwrap();
    assert_eq!(read(b.p("f")), b"first version");
    assert_eq!(read(a.p("f")), b"first version");
    std::fs::write(b.p("f"), b"second, longer version").unwrap();
    assert_eq!(read(a.p("f")), b"second, longer version");
    // Append on a, read on b; truncate on b, size on a.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(a.p("f"))
            .unwrap();
        f.write_all(b" + appended").unwrap();
    }
    assert_eq!(read(b.p("f")), b"second, longer version + appended");
    std::fs::OpenOptions::new()
        .write(true)
        .open(b.p("f"))
        .unwrap()
        .set_len(6)
        .unwrap();
    assert_eq!(std::fs::metadata(a.p("f")).unwrap().len(), 6);
    assert_eq!(read(a.p("f")), b"second");

    // Names: create, mkdir, rename, unlink.
    std::fs::create_dir(a.p("d")).unwrap();
    std::fs::write(a.p("d/x"), b"x").unwrap();
    assert!(b.p("d").is_dir());
    assert_eq!(read(b.p("d/x")), b"x");
    std::fs::rename(b.p("d/x"), b.p("y")).unwrap();
    assert!(!a.p("d/x").exists());
    assert_eq!(read(a.p("y")), b"x");
    // The same node: its read-only opens' cached pages see its own
    // writes (which are direct I/O in a cluster).
    std::fs::write(a.p("same"), b"cached first").unwrap();
    assert_eq!(read(a.p("same")), b"cached first");
    {
        use std::os::unix::fs::FileExt;
        let ro = std::fs::File::open(a.p("same")).unwrap();
        let mut buf = [0u8; 12];
        ro.read_exact_at(&mut buf, 0).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(a.p("same"))
            .unwrap()
            .write_all_at(b"CACHED", 0)
            .unwrap();
        ro.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(
            &buf, b"CACHED first",
            "a read-only open after a write on the same node"
        );
    }
    assert_eq!(read(b.p("same")), b"CACHED first");
    std::fs::remove_file(a.p("y")).unwrap();
    assert!(!b.p("y").exists());
    assert_eq!(
        std::fs::read_dir(b.p("d")).unwrap().count(),
        0,
        "d is empty on b"
    );

    // Attributes: chmod and xattrs.
    std::fs::set_permissions(b.p("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(a.p("f")).unwrap().mode() & 0o7777, 0o600);
    let name = std::ffi::CString::new("user.k").unwrap();
    let path = cpath(&a.p("f"));
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"v1".as_ptr().cast(), 2, 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    let mut buf = [0u8; 16];
    let pb = cpath(&b.p("f"));
    // SAFETY: as above.
    let n = unsafe { libc::getxattr(pb.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(n, 2, "getxattr on b: {}", std::io::Error::last_os_error());
    assert_eq!(&buf[..2], b"v1");

    stop_and_fsck(c);
}

#[test]
fn concurrent_creates_in_one_directory_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 3);
    std::fs::create_dir(c.nodes[0].p("shared")).unwrap();
    let per_node = 60;
    std::thread::scope(|s| {
        for (i, m) in c.nodes.iter().enumerate() {
            let dir = m.p("shared");
            s.spawn(move || {
                for k in 0..per_node {
                    let p = dir.join(format!("n{i}-{k}"));
                    std::fs::write(&p, format!("{i}:{k}"))
                        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
                }
            });
        }
    });
    for m in &c.nodes {
        let mut names: Vec<String> = std::fs::read_dir(m.p("shared"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            3 * per_node,
            "entries seen at {}",
            m.mnt.display()
        );
        names.dedup();
        assert_eq!(
            names.len(),
            3 * per_node,
            "duplicates at {}",
            m.mnt.display()
        );
        for i in 0..3 {
            let k = per_node - 1;
            assert_eq!(
                read(m.p(&format!("shared/n{i}-{k}"))),
                format!("{i}:{k}").as_bytes()
            );
        }
    }
    stop_and_fsck(c);
}

/// `key=value` from a tracing line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs `f` on a thread and waits at most `limit` for it: a survivor that
/// never recovers must fail the test, not hang it.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

#[test]
fn a_killed_node_is_fenced_and_recovered_by_the_survivors() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let t = tempfile::tempdir().unwrap();
    let mut c = start(&t, 3);
    std::fs::create_dir(c.nodes[0].p("shared")).unwrap();
    std::fs::create_dir(c.nodes[2].p("victim")).unwrap();

    // Node 3 writes and fsyncs files, one after another, in its own
    // directory and in the shared one; node 1 creates in the shared one
    // at the same time. Node 3 is killed in the middle.
    let synced = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let victim_dir = c.nodes[2].p("victim");
    let victim_shared = c.nodes[2].p("shared");
    let writer = {
        let synced = synced.clone();
        std::thread::spawn(move || {
            for k in 0.. {
                let body = format!("file {k} from node 3, ").repeat(50 + k % 200);
                let r = (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::create(victim_dir.join(format!("f{k}")))?;
                    f.write_all(body.as_bytes())?;
                    std::fs::write(victim_shared.join(format!("v{k}")), b"v")?;
                    f.sync_all()
                })();
                if r.is_err() {
                    return;
                }
                synced.store(k + 1, Ordering::SeqCst);
            }
        })
    };
    let survivor_dir = c.nodes[0].p("shared");
    let survivor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                std::fs::write(survivor_dir.join(format!("s{k}")), format!("{k}"))
                    .unwrap_or_else(|e| panic!("survivor create s{k}: {e}"));
                k += 1;
            }
            k
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while synced.load(Ordering::SeqCst) < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Node 3 also holds a record lock, which node 1 cannot have.
    std::fs::write(c.nodes[0].p("shared/lock"), b"").unwrap();
    let locked_on_3 = std::fs::OpenOptions::new()
        .write(true)
        .open(c.nodes[2].p("shared/lock"))
        .unwrap();
    assert_eq!(
        fcntl_lock(&locked_on_3, libc::F_SETLK, libc::F_WRLCK, 0, 0).0,
        0
    );
    let lock_on_1 = std::fs::OpenOptions::new()
        .write(true)
        .open(c.nodes[0].p("shared/lock"))
        .unwrap();
    let busy = fcntl_lock(&lock_on_1, libc::F_SETLK, libc::F_WRLCK, 0, 0).0;
    assert!(busy == libc::EAGAIN || busy == libc::EACCES, "errno {busy}");

    let victim = c.nodes.remove(2);
    let killed_at = unix_ms();
    victim.kill();
    // Its descriptor now leads to a dead mount (closing it fails); the
    // lock must go with the node.
    drop(locked_on_3);
    let durable = synced.load(Ordering::SeqCst);
    writer.join().unwrap();

    // The survivors serve the dead node's files again: everything it
    // fsync'd is there, on both.
    for i in 0..2 {
        let dir = c.nodes[i].p("victim");
        let ok = within(
            Duration::from_secs(60),
            "reading the dead node's files",
            move || {
                for k in 0..durable {
                    let want = format!("file {k} from node 3, ").repeat(50 + k % 200);
                    let got = std::fs::read(dir.join(format!("f{k}")))
                        .unwrap_or_else(|e| panic!("f{k}: {e}"));
                    assert_eq!(got, want.as_bytes(), "f{k} after recovery");
                }
                true
            },
        );
        assert!(ok);
    }
    let served_at = unix_ms();
    // The dead node's record lock went with it.
    let got = within(
        Duration::from_secs(30),
        "the dead node's record lock",
        move || fcntl_lock(&lock_on_1, libc::F_SETLKW, libc::F_WRLCK, 0, 0).0,
    );
    assert_eq!(got, 0);
    stop.store(true, Ordering::SeqCst);
    let made = within(
        Duration::from_secs(60),
        "the survivor's workload",
        move || survivor.join().unwrap(),
    );
    assert!(made > 0);
    // The names both wrote in the shared directory, on both survivors.
    for i in 0..2 {
        let names: Vec<String> = std::fs::read_dir(c.nodes[i].p("shared"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for k in 0..made {
            assert!(
                names.contains(&format!("s{k}")),
                "s{k} missing on node {}",
                i + 1
            );
        }
        for k in 0..durable {
            assert!(
                names.contains(&format!("v{k}")),
                "v{k} missing on node {}",
                i + 1
            );
        }
    }

    // One survivor recovered the journal, after fencing node 3 at the NBD
    // server; report the failover's parts.
    let logs: String = c
        .nodes
        .iter()
        .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
        .collect();
    let recovered: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("recovered the journal of a dead node"))
        .collect();
    assert_eq!(recovered.len(), 1, "recoveries: {recovered:?}");
    let died = logs
        .lines()
        .find(|l| l.contains("node died: recovering its journal"))
        .expect("a survivor heard of the death");
    let heard = field(died, "at_unix_ms").expect("at_unix_ms");
    let r = recovered[0];
    eprintln!(
        "failover: detection {} ms, fencing {} ms, replay {} ms ({} transactions), kill to files served {} ms",
        heard.saturating_sub(killed_at),
        field(r, "fence_ms").unwrap(),
        field(r, "replay_ms").unwrap(),
        field(r, "transactions").unwrap(),
        served_at - killed_at
    );
    let fenced: Vec<String> = c.nbd.fences().fenced();
    assert_eq!(fenced.len(), 1, "fenced clients: {fenced:?}");
    assert!(fenced[0].starts_with("t/node3/"), "fenced: {fenced:?}");

    stop_and_fsck(c);
}

fn flock(f: &std::fs::File, op: i32) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    libc_errno(unsafe { libc::flock(f.as_raw_fd(), op) })
}

/// fcntl F_SETLK/F_SETLKW/F_GETLK on `f`: 0 or the errno; for F_GETLK
/// the lock found (type, start, len, pid).
fn fcntl_lock(
    f: &std::fs::File,
    cmd: i32,
    typ: i32,
    start: i64,
    len: i64,
) -> (i32, (i32, i64, i64, i32)) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; fcntl on a descriptor we own.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    let r = libc_errno(unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) });
    (r, (i32::from(fl.l_type), fl.l_start, fl.l_len, fl.l_pid))
}

/// fcntl byte-range locks are cluster-wide: ranges conflict across nodes
/// only where they overlap, F_GETLK names the holder, a blocked F_SETLKW
/// goes on when the holder closes the file.
#[test]
fn fcntl_record_locks_are_cluster_wide() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    std::fs::write(a.p("records"), vec![0u8; 64]).unwrap();
    let open = |p: PathBuf| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    };
    let fa = open(a.p("records"));
    let fb = open(b.p("records"));
    let (wr, rd) = (libc::F_WRLCK, libc::F_RDLCK);
    assert_eq!(fcntl_lock(&fa, libc::F_SETLK, wr, 0, 10).0, 0);
    let busy = fcntl_lock(&fb, libc::F_SETLK, wr, 5, 10).0;
    assert!(busy == libc::EAGAIN || busy == libc::EACCES, "errno {busy}");
    assert_eq!(
        fcntl_lock(&fb, libc::F_SETLK, wr, 10, 10).0,
        0,
        "bytes 10..19 are free"
    );
    let (r, found) = fcntl_lock(&fb, libc::F_GETLK, wr, 0, 5);
    assert_eq!(r, 0);
    assert_eq!(found, (wr, 0, 10, std::process::id() as i32));
    // Readers share: a turns its lock into a read lock, b reads byte 0.
    let busy = fcntl_lock(&fb, libc::F_SETLK, rd, 0, 1).0;
    assert!(busy == libc::EAGAIN || busy == libc::EACCES, "errno {busy}");
    assert_eq!(fcntl_lock(&fa, libc::F_SETLK, rd, 0, 10).0, 0);
    assert_eq!(fcntl_lock(&fb, libc::F_SETLK, rd, 0, 1).0, 0);
    // b waits for a write lock over a's read lock until a closes.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = fcntl_lock(&fb, libc::F_SETLKW, wr, 0, 5).0;
        let _ = tx.send(r);
        fb
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "b got a write lock over a's read lock"
    );
    drop(fa);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20))
            .expect("b's F_SETLKW after a's close"),
        0
    );
    let fb = waiter.join().unwrap();
    // Now a cannot lock what b holds, and can once b unlocks.
    let fa = open(a.p("records"));
    let busy = fcntl_lock(&fa, libc::F_SETLK, rd, 3, 1).0;
    assert!(busy == libc::EAGAIN || busy == libc::EACCES, "errno {busy}");
    assert_eq!(fcntl_lock(&fb, libc::F_SETLK, libc::F_UNLCK, 0, 0).0, 0);
    assert_eq!(
        fcntl_lock(&fa, libc::F_SETLK, wr, 0, 0).0,
        0,
        "the whole file"
    );
    drop((fa, fb));
    stop_and_fsck(c);
}

/// The addresses of the indirect blocks in `img` that belong to the
/// dinode at `owner` (their headers name the owner).
fn indirect_blocks_of(img: &Path, owner: u64) -> Vec<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(img).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut addr = 0u64;
    let mut found = Vec::new();
    loop {
        if f.read_exact(&mut buf).is_err() {
            return found;
        }
        let kind = u16::from_le_bytes([buf[4], buf[5]]);
        if &buf[..4] == b"RDLM"
            && kind == rdlmfs::format::BlockType::Indirect as u16
            && buf[32..40] == owner.to_le_bytes()
        {
            found.push(addr);
        }
        addr += 1;
    }
}

/// A node that withdraws (here: a write meets a corrupt indirect block)
/// leaves the cluster as a dead node does: the others recover its journal
/// and take its locks, instead of waiting for them forever.
#[test]
fn a_withdrawn_node_leaves_and_the_others_take_over() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{FileExt, MetadataExt};
    let t = tempfile::tempdir().unwrap();
    let mut c = start(&t, 3);
    // Node 2 writes and fsyncs a file (it then holds its glock), node 1 a
    // large file with indirect blocks.
    let mut mine = std::fs::File::create(c.nodes[1].p("mine")).unwrap();
    mine.write_all(b"written by node 2").unwrap();
    mine.sync_all().unwrap();
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut f = std::fs::File::create(c.nodes[0].p("big")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Node 3 reads it: node 1 gives the glock up, so everything is in
    // place on the disk.
    assert_eq!(read(c.nodes[2].p("big")), big);
    let addr = std::fs::metadata(c.nodes[0].p("big")).unwrap().ino() & ((1 << 44) - 1);
    let inds = indirect_blocks_of(&c.img, addr);
    assert!(!inds.is_empty(), "big has indirect blocks");
    // Flip a byte of each behind everyone's back (their checksums no
    // longer match), then node 2 writes through one: node 2 withdraws.
    let mut raw = std::fs::OpenOptions::new()
        .write(true)
        .open(&c.img)
        .unwrap();
    for ind in inds {
        raw.seek(SeekFrom::Start(ind * 4096 + 100)).unwrap();
        raw.write_all(&[0x5a]).unwrap();
    }
    raw.sync_all().unwrap();
    let on_2 = std::fs::OpenOptions::new()
        .write(true)
        .open(c.nodes[1].p("big"))
        .unwrap();
    let e = on_2
        .write_at(b"x", 6 << 20)
        .expect_err("a write through a corrupt block");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(on_2);
    drop(mine);
    // The others get node 2's locks after recovering it: "mine" is
    // readable and writable on node 1 and node 3.
    let p1 = c.nodes[0].p("mine");
    let got = within(
        Duration::from_secs(60),
        "node 2's file after its withdraw",
        move || std::fs::read(&p1),
    );
    assert_eq!(got.unwrap(), b"written by node 2");
    std::fs::write(c.nodes[2].p("mine"), b"taken over").unwrap();
    assert_eq!(read(c.nodes[0].p("mine")), b"taken over");
    // Node 2 stays refused until it is remounted.
    assert!(std::fs::read(c.nodes[1].p("mine")).is_err());
    let logs = std::fs::read_to_string(&c.nodes[1].log).unwrap_or_default();
    assert!(
        logs.contains("withdrawn: stopping this node's lock manager"),
        "{logs}"
    );
    c.nodes.remove(1).kill();
    // The corrupt block stays corrupt (fsck would report it): no fsck here.
    c.stop();
}

#[test]
fn flock_is_cluster_wide() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    std::fs::write(a.p("lockfile"), b"").unwrap();
    let fa = std::fs::File::open(a.p("lockfile")).unwrap();
    let fb = std::fs::File::open(b.p("lockfile")).unwrap();

    // Exclusive on a: b cannot have it, shared or exclusive.
    assert_eq!(flock(&fa, libc::LOCK_EX), 0);
    assert_eq!(flock(&fb, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
    assert_eq!(flock(&fb, libc::LOCK_SH | libc::LOCK_NB), libc::EWOULDBLOCK);
    // A blocking request on b waits until a lets go.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = flock(&fb, libc::LOCK_EX);
        let _ = tx.send(r);
        fb
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "b got the lock while a held it"
    );
    assert_eq!(flock(&fa, libc::LOCK_UN), 0);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20))
            .expect("b's flock after a's unlock"),
        0
    );
    let fb = waiter.join().unwrap();
    assert_eq!(flock(&fa, libc::LOCK_SH | libc::LOCK_NB), libc::EWOULDBLOCK);
    // Shared on both.
    assert_eq!(flock(&fb, libc::LOCK_SH), 0);
    assert_eq!(flock(&fa, libc::LOCK_SH | libc::LOCK_NB), 0);
    assert_eq!(flock(&fb, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
    assert_eq!(flock(&fa, libc::LOCK_UN), 0);
    // Closing the file drops its lock.
    drop(fb);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while flock(&fa, libc::LOCK_EX | libc::LOCK_NB) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "b's close did not drop its flock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(fa);

    // Appends under flock from both nodes at once: every line whole, none lost.
    let per_node = 40;
    std::thread::scope(|s| {
        for (i, m) in c.nodes.iter().enumerate() {
            let p = m.p("log");
            s.spawn(move || {
                use std::io::Write;
                for k in 0..per_node {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&p)
                        .unwrap();
                    assert_eq!(flock(&f, libc::LOCK_EX), 0);
                    f.write_all(format!("node {i} line {k}\n").as_bytes())
                        .unwrap();
                    assert_eq!(flock(&f, libc::LOCK_UN), 0);
                }
            });
        }
    });
    for m in &c.nodes {
        let text = String::from_utf8(read(m.p("log"))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * per_node, "lines at {}", m.mnt.display());
        for i in 0..2 {
            for k in 0..per_node {
                assert!(
                    lines.contains(&format!("node {i} line {k}").as_str()),
                    "node {i} line {k} missing at {}",
                    m.mnt.display()
                );
            }
        }
    }
    stop_and_fsck(c);
}

#[test]
fn renames_across_directories_from_two_nodes_at_once_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    std::fs::create_dir(a.p("A")).unwrap();
    std::fs::create_dir(a.p("B")).unwrap();
    let n = 30;
    for k in 0..n {
        std::fs::write(a.p(&format!("A/a{k}")), format!("a{k}")).unwrap();
        std::fs::write(b.p(&format!("B/b{k}")), format!("b{k}")).unwrap();
    }
    // Files cross over in opposite directions from the two nodes at once.
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in 0..n {
                std::fs::rename(a.p(&format!("A/a{k}")), a.p(&format!("B/a{k}")))
                    .unwrap_or_else(|e| panic!("a: rename a{k}: {e}"));
            }
        });
        s.spawn(|| {
            for k in 0..n {
                std::fs::rename(b.p(&format!("B/b{k}")), b.p(&format!("A/b{k}")))
                    .unwrap_or_else(|e| panic!("b: rename b{k}: {e}"));
            }
        });
    });
    for m in [a, b] {
        let list = |d: &str| {
            let mut v: Vec<String> = std::fs::read_dir(m.p(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let mut want_a: Vec<String> = (0..n).map(|k| format!("b{k}")).collect();
        let mut want_b: Vec<String> = (0..n).map(|k| format!("a{k}")).collect();
        want_a.sort();
        want_b.sort();
        assert_eq!(list("A"), want_a, "A at {}", m.mnt.display());
        assert_eq!(list("B"), want_b, "B at {}", m.mnt.display());
        assert_eq!(read(m.p("B/a7")), b"a7");
        assert_eq!(read(m.p("A/b7")), b"b7");
    }
    // Two directories moved into each other from two nodes at once: one
    // move wins, the other is refused; never a loop cut off from the root.
    for round in 0..5 {
        let (x, y) = (format!("X{round}"), format!("Y{round}"));
        std::fs::create_dir(a.p(&x)).unwrap();
        std::fs::create_dir(a.p(&y)).unwrap();
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| std::fs::rename(a.p(&x), a.p(&format!("{y}/{x}"))));
            let hb = s.spawn(|| std::fs::rename(b.p(&y), b.p(&format!("{x}/{y}"))));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert!(
            ra.is_ok() != rb.is_ok(),
            "round {round}: exactly one move may win: {ra:?} {rb:?}"
        );
        for m in [a, b] {
            let top = if ra.is_ok() { &y } else { &x };
            assert!(
                m.p(top).is_dir(),
                "round {round}: {top} at {}",
                m.mnt.display()
            );
        }
    }
    stop_and_fsck(c);
}

/// A shared mapping of `len` bytes of `f`.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(f: &std::fs::File, len: usize, write: bool) -> Map {
        use std::os::fd::AsRawFd;
        let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
        // SAFETY: mapping a file we hold open; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Map {
            ptr: ptr.cast(),
            len,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the mapping is `len` bytes long and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len).to_vec() }
    }
    fn write(&self, data: &[u8]) {
        assert!(data.len() <= self.len);
        // SAFETY: as above; the mapping is writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, data.len()) };
        // SAFETY: as above.
        let r = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[test]
fn memory_mapped_reads_and_writes_are_coherent_across_nodes() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let len = 3 * 4096;
    std::fs::write(a.p("m"), vec![b'1'; len]).unwrap();
    // b maps the file and reads it.
    let fb = std::fs::File::open(b.p("m")).unwrap();
    let mb = Map::new(&fb, len, false);
    assert_eq!(mb.bytes(), vec![b'1'; len]);
    // A write on a: b's existing mapping shows it, and so does a new one.
    let mut v2 = vec![b'2'; len];
    v2[5000] = b'x';
    std::fs::write(a.p("m"), &v2).unwrap();
    assert_eq!(mb.bytes(), v2, "b's mapping after a's write");
    assert_eq!(Map::new(&fb, len, false).bytes(), v2);
    // A store through a's mapping, msync'd, is read on b.
    let fa = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.p("m"))
        .unwrap();
    let ma = Map::new(&fa, len, true);
    ma.write(b"mapped write on a");
    assert_eq!(&read(b.p("m"))[..17], b"mapped write on a");
    assert_eq!(&mb.bytes()[..17], b"mapped write on a");
    // And back: a write on b shows in a's mapping.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(b.p("m"))
            .unwrap();
        f.write_all_at(b"from b", 8192).unwrap();
    }
    assert_eq!(&ma.bytes()[8192..8198], b"from b");
    drop((ma, mb, fa, fb));
    stop_and_fsck(c);
}

#[test]
fn a_node_stopped_past_its_lease_is_fenced_and_writes_nothing_when_it_resumes() {
    let t = tempfile::tempdir().unwrap();
    let mut c = start(&t, 3);
    let v1 = b"version 1, fsync'd on node 3".to_vec();
    let v2 = b"version 2, written on node 3, not fsync'd".to_vec();
    let v3 = b"version 3, from node 1 while node 3 was away".to_vec();
    std::fs::create_dir(c.nodes[2].p("p")).unwrap();
    {
        let f = std::fs::File::create(c.nodes[2].p("p/f")).unwrap();
        use std::io::Write;
        (&f).write_all(&v1).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::write(c.nodes[2].p("p/f"), &v2).unwrap();
    // Node 3 freezes holding the file's glock: to the others it is gone.
    c.nodes[2].signal(libc::SIGSTOP);
    let p1 = c.nodes[0].p("p/f");
    let seen = within(
        Duration::from_secs(60),
        "reading on node 1 after node 3 froze",
        move || std::fs::read(p1),
    )
    .expect("read on node 1");
    assert!(
        seen == v1 || seen == v2,
        "after recovery: {:?}",
        String::from_utf8_lossy(&seen)
    );
    std::fs::write(c.nodes[0].p("p/f"), &v3).unwrap();
    std::fs::write(c.nodes[0].p("p/g"), b"g").unwrap();
    let fenced = c.nbd.fences().fenced();
    assert!(
        fenced.iter().any(|id| id.starts_with("t/node3/")),
        "node 3 not fenced at the server: {fenced:?}"
    );

    // Node 3 wakes up: its lease ran out, so everything fails and nothing
    // it had pending reaches the disk.
    c.nodes[2].signal(libc::SIGCONT);
    let p3 = c.nodes[2].p("p/f");
    let r = within(
        Duration::from_secs(60),
        "reading on node 3 after it resumed",
        move || std::fs::read(p3),
    );
    assert_eq!(errno_of(r), libc::EIO, "a read on the fenced node");
    let w = std::fs::write(c.nodes[2].p("p/h"), b"h");
    assert_eq!(errno_of(w), libc::EIO, "a create on the fenced node");
    let log3 = std::fs::read_to_string(&c.nodes[2].log).unwrap();
    assert!(
        log3.contains("fenced"),
        "node 3's log says nothing of being fenced"
    );
    // Give node 3 time to try whatever it had pending, then check the
    // survivors see only their own writes.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        assert_eq!(read(c.nodes[i].p("p/f")), v3, "p/f on node {}", i + 1);
        assert_eq!(read(c.nodes[i].p("p/g")), b"g");
        assert!(!c.nodes[i].p("p/h").exists());
    }
    // It must be remounted: kill it (it cannot unmount cleanly).
    c.nodes.remove(2).kill();
    stop_and_fsck(c);
}

#[test]
fn an_unlinked_file_open_on_another_node_lives_until_its_last_close() {
    use std::io::{Read, Seek, Write};
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let free_before = statvfs(&a.mnt).f_bfree;
    let body: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(a.p("f"), &body).unwrap();
    // b opens it; a removes its only name.
    let mut fb = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.p("f"))
        .unwrap();
    std::fs::remove_file(a.p("f")).unwrap();
    assert!(!a.p("f").exists());
    assert!(!b.p("f").exists());
    // b still reads and writes the whole file through its descriptor.
    let mut got = Vec::new();
    fb.read_to_end(&mut got).unwrap();
    assert!(
        got == body,
        "the open file changed after its unlink elsewhere"
    );
    fb.seek(std::io::SeekFrom::Start(0)).unwrap();
    fb.write_all(b"still mine").unwrap();
    fb.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut head = [0u8; 10];
    fb.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"still mine");
    assert!(
        statvfs(&a.mnt).f_bfree + 512 < free_before,
        "the blocks were freed while b had the file open"
    );
    // b's last close lets a free it.
    drop(fb);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while statvfs(&a.mnt).f_bfree + 16 < free_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the unlinked file was not freed after its last close ({} free, {} before)",
            statvfs(&a.mnt).f_bfree,
            free_before
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_and_fsck(c);
}

/// `rdlmfs status` of a mount.
fn status_of(m: &Mounted) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rdlmfs"))
        .arg("status")
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The numbers on the status report line starting with `label`, which
/// must be `count` of them.
fn status_numbers(status: &str, label: &str, count: usize) -> Vec<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in\n{status}"));
    let n: Vec<u64> = line
        .split([' ', ';', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(n.len(), count, "{line}");
    n
}

/// The three LVB counters of a status report: kept, stats from LVBs,
/// dinodes read after a grant.
fn lvb_counters(status: &str) -> (u64, u64, u64) {
    let n = status_numbers(status, "LVBs:", 3);
    (n[0], n[1], n[2])
}

/// Inode glock LVBs: a node with no copy of an inode answers `stat` from
/// the LVB the creator left (same answers as the creator's), and a node
/// that gave a glock up keeps its copy when the next holder changed
/// nothing.
#[test]
fn inode_lvbs_answer_stat_and_keep_unchanged_inodes() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let files = 20;
    for i in 0..files {
        std::fs::write(a.p(&format!("f{i}")), vec![b'x'; 100 * i]).unwrap();
    }
    let (_, attrs0, _) = lvb_counters(&status_of(b));
    for i in 0..files {
        let mb = std::fs::metadata(b.p(&format!("f{i}"))).unwrap();
        let ma = std::fs::metadata(a.p(&format!("f{i}"))).unwrap();
        assert_eq!(
            (
                mb.ino(),
                mb.size(),
                mb.mode(),
                mb.nlink(),
                mb.uid(),
                mb.blocks()
            ),
            (
                ma.ino(),
                ma.size(),
                ma.mode(),
                ma.nlink(),
                ma.uid(),
                ma.blocks()
            ),
            "f{i}"
        );
        assert_eq!(
            (mb.mtime(), mb.mtime_nsec(), mb.ctime(), mb.ctime_nsec()),
            (ma.mtime(), ma.mtime_nsec(), ma.ctime(), ma.ctime_nsec()),
            "f{i}"
        );
    }
    let (_, attrs1, _) = lvb_counters(&status_of(b));
    assert!(
        attrs1 - attrs0 >= files as u64,
        "{} stats answered from LVBs for {files} files never read on node 2",
        attrs1 - attrs0
    );

    // Node 2 reads f3 (its dinode cached), node 1 takes f3's glock
    // Exclusive and changes nothing (removing an extended attribute that
    // does not exist), node 2 reads f3 again: the copy is kept.
    assert_eq!(read(b.p("f3")), vec![b'x'; 300]);
    let (kept0, _, _) = lvb_counters(&status_of(b));
    let path = std::ffi::CString::new(a.p("f3").as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe { libc::removexattr(path.as_ptr(), c"user.none".as_ptr()) };
    let err = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((r, err), (-1, Some(libc::ENODATA)));
    assert_eq!(read(b.p("f3")), vec![b'x'; 300]);
    let (kept1, _, _) = lvb_counters(&status_of(b));
    assert!(
        kept1 > kept0,
        "node 2 read f3 again instead of keeping it; logs in {}",
        t.path().display()
    );

    // A change in between is seen (the LVB's version moved on).
    std::fs::write(a.p("f3"), b"changed").unwrap();
    assert_eq!(read(b.p("f3")), b"changed");
    assert_eq!(std::fs::metadata(b.p("f3")).unwrap().size(), 7);
    stop_and_fsck(c);
}

#[test]
fn status_reports_members_slots_glocks_and_caches() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    std::fs::write(a.p("s"), b"status").unwrap();
    assert_eq!(read(b.p("s")), b"status");
    let status = status_of;
    let sa = status(a);
    assert!(sa.contains("locking:  lock_dlm"), "{sa}");
    assert!(sa.contains("quorate"), "{sa}");
    assert!(!sa.contains("NOT quorate"), "{sa}");
    assert!(sa.contains("node 1   slot 1   journal 0"), "{sa}");
    assert!(sa.contains("node 2   slot 2   journal 1"), "{sa}");
    assert!(
        sa.contains("lockspace: t:fs (this node's journal: 0)"),
        "{sa}"
    );
    assert!(sa.contains("Journal/0                Exclusive"), "{sa}");
    assert!(sa.contains("metadata blocks"), "{sa}");
    let sb = status(b);
    assert!(
        sb.contains("lockspace: t:fs (this node's journal: 1)"),
        "{sb}"
    );
    assert!(sb.contains("Inode/"), "{sb}");
    // Not an rdlmfs mount: a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rdlmfs"))
        .arg("status")
        .arg(t.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing is mounted at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{sa}");
    c.stop();
}

#[test]
fn two_nodes_writing_one_file_at_once_both_land() {
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let blocks = 64u64;
    std::fs::write(c.nodes[0].p("w"), vec![0u8; (blocks * 4096) as usize]).unwrap();
    // Both read it first (both hold it Shared), then write their own
    // blocks at once: every write converts Shared to Exclusive.
    for m in &c.nodes {
        assert_eq!(read(m.p("w")).len(), (blocks * 4096) as usize);
    }
    let rounds = 5;
    std::thread::scope(|s| {
        for (i, m) in c.nodes.iter().enumerate() {
            let p = m.p("w");
            s.spawn(move || {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .unwrap();
                for r in 0..rounds {
                    for b in (i as u64..blocks).step_by(2) {
                        let fill = vec![(1 + i + 2 * r) as u8; 4096];
                        f.write_all_at(&fill, b * 4096)
                            .unwrap_or_else(|e| panic!("node {} block {b} round {r}: {e}", i + 1));
                        let mut back = vec![0u8; 100];
                        f.read_exact_at(&mut back, b * 4096 + 7).unwrap();
                    }
                }
            });
        }
    });
    for m in &c.nodes {
        let data = read(m.p("w"));
        for b in 0..blocks {
            let i = (b % 2) as usize;
            let want = (1 + i + 2 * (rounds - 1)) as u8;
            assert!(
                data[(b * 4096) as usize..((b + 1) * 4096) as usize]
                    .iter()
                    .all(|x| *x == want),
                "block {b} at {}",
                m.mnt.display()
            );
        }
    }
    stop_and_fsck(c);
}

/// A network namespace with a veth pair to the host, removed on drop.
struct NetCut {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetCut {
    fn new() -> NetCut {
        let tag = std::process::id() % 10_000;
        let sub = 16 + (std::process::id() % 200);
        let c = NetCut {
            ns: format!("rdlmfs-t{tag}"),
            host_if: format!("rdv{tag}h"),
            ns_if: format!("rdv{tag}n"),
            host_ip: format!("10.231.{sub}.1"),
            ns_ip: format!("10.231.{sub}.2"),
        };
        ip(&["netns", "add", &c.ns]);
        ip(&[
            "link", "add", &c.host_if, "type", "veth", "peer", "name", &c.ns_if,
        ]);
        ip(&["link", "set", &c.ns_if, "netns", &c.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", c.host_ip),
            "dev",
            &c.host_if,
        ]);
        ip(&["link", "set", &c.host_if, "up"]);
        ip(&[
            "-n",
            &c.ns,
            "addr",
            "add",
            &format!("{}/24", c.ns_ip),
            "dev",
            &c.ns_if,
        ]);
        ip(&["-n", &c.ns, "link", "set", &c.ns_if, "up"]);
        ip(&["-n", &c.ns, "link", "set", "lo", "up"]);
        c
    }

    /// Pulls (or puts back) the node's end of the link.
    fn set_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &self.ns_if,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

#[test]
fn a_node_cut_off_by_its_network_is_fenced_and_the_others_go_on() {
    let cut = NetCut::new();
    let t = tempfile::tempdir().unwrap();
    let mut c = start_net(&t, 3, Some(&cut), &[]);
    // Node 3 writes and fsyncs, then writes more without fsync.
    std::fs::create_dir(c.nodes[2].p("n3")).unwrap();
    for k in 0..10 {
        let f = std::fs::File::create(c.nodes[2].p(&format!("n3/f{k}"))).unwrap();
        use std::io::Write;
        (&f).write_all(format!("fsync'd {k}").as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::write(c.nodes[2].p("n3/f0"), b"not fsync'd").unwrap();
    let cut_at = unix_ms();
    cut.set_link(false);
    // The others go on: node 3's files are served again, its fsync'd data
    // is all there.
    for i in 0..2 {
        let dir = c.nodes[i].p("n3");
        within(
            Duration::from_secs(60),
            "reading node 3's files after the cut",
            move || {
                let f0 = std::fs::read(dir.join("f0")).unwrap();
                assert!(f0 == b"fsync'd 0" || f0 == b"not fsync'd", "f0: {f0:?}");
                for k in 1..10 {
                    assert_eq!(
                        std::fs::read(dir.join(format!("f{k}"))).unwrap(),
                        format!("fsync'd {k}").as_bytes()
                    );
                }
            },
        );
    }
    eprintln!(
        "network cut: files served again after {} ms",
        unix_ms() - cut_at
    );
    std::fs::write(c.nodes[0].p("n3/f1"), b"changed while node 3 was away").unwrap();
    let fenced = c.nbd.fences().fenced();
    assert!(
        fenced.iter().any(|id| id.starts_with("t/node3/")),
        "node 3 not fenced at the server: {fenced:?}"
    );
    // The link comes back: node 3 has lost its lease and does nothing.
    cut.set_link(true);
    let p3 = c.nodes[2].p("n3/f1");
    let r = within(
        Duration::from_secs(60),
        "reading on node 3 after the link came back",
        move || std::fs::read(p3),
    );
    assert_eq!(errno_of(r), libc::EIO, "a read on the cut-off node");
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        assert_eq!(
            read(c.nodes[i].p("n3/f1")),
            b"changed while node 3 was away"
        );
    }
    c.nodes.remove(2).kill();
    stop_and_fsck(c);
}

/// Names churned from two nodes at once (links, unlinks, renames, creates
/// among a few names in two directories); link counts and entries must
/// agree afterwards (fsck), and both nodes must list the same names.
#[test]
fn link_unlink_rename_churn_from_two_nodes_keeps_link_counts() {
    // A failing run keeps its directory (logs, image) for the
    // investigation; a passing one removes it.
    let t = std::mem::ManuallyDrop::new(tempfile::tempdir().unwrap());
    eprintln!("churn directory: {}", t.path().display());
    let c = start(&t, 2);
    for d in ["A", "B"] {
        std::fs::create_dir(c.nodes[0].p(d)).unwrap();
    }
    let ops = std::env::var("RDLMFS_CHURN_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600u32);
    let kinds = std::env::var("RDLMFS_CHURN_KINDS").unwrap_or_else(|_| "clurm".into());
    std::thread::scope(|s| {
        for (i, m) in c.nodes.iter().enumerate() {
            let kinds = kinds.clone();
            s.spawn(move || {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let kinds: Vec<char> = kinds.chars().collect();
                for _ in 0..ops {
                    let d1 = if next() % 2 == 0 { "A" } else { "B" };
                    let d2 = if next() % 2 == 0 { "A" } else { "B" };
                    let n1 = format!("{d1}/n{}", next() % 12);
                    let n2 = format!("{d2}/n{}", next() % 12);
                    let k = kinds[(next() % kinds.len() as u64) as usize];
                    let _ = match k {
                        'c' => std::fs::write(m.p(&n1), b"x"),
                        'l' => std::fs::hard_link(m.p(&n1), m.p(&n2)),
                        'u' => std::fs::remove_file(m.p(&n1)),
                        'r' => std::fs::rename(m.p(&n1), m.p(&n2)),
                        _ => std::fs::metadata(m.p(&n1)).map(|_| ()),
                    };
                }
            });
        }
    });
    let list = |m: &Mounted| {
        let mut v = Vec::new();
        for d in ["A", "B"] {
            for e in std::fs::read_dir(m.p(d)).unwrap() {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path())
                    .unwrap_or_else(|err| panic!("stat {}: {err}", e.path().display()));
                v.push((
                    format!("{d}/{}", e.file_name().to_string_lossy()),
                    md.ino(),
                    md.nlink(),
                ));
            }
        }
        v.sort();
        v
    };
    let la = list(&c.nodes[0]);
    let lb = list(&c.nodes[1]);
    assert_eq!(la, lb, "the two nodes list different names");
    stop_and_fsck(c);
    drop(std::mem::ManuallyDrop::into_inner(t));
}

/// Directories made on different nodes land in different resource groups
/// (each node's home rgrp, not beside their common parent), and the files
/// each node creates in its own directory follow it there. So two nodes
/// filling their own trees never need the same rgrp glock; before, both
/// trees sat beside the root and every create passed that rgrp's glock —
/// with a commit and checkpoint of the whole journal — between the nodes.
#[test]
fn directories_made_on_different_nodes_land_in_different_rgrps() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let layout = rdlmfs::format::layout::plan(IMAGE_BYTES, &image_options()).expect("layout");
    let rgrp_of = |ino: u64| {
        let a = rdlmfs::format::formal_addr(ino);
        layout
            .rgrps
            .iter()
            .position(|r| r.data0 <= a && a < r.end())
            .unwrap_or_else(|| panic!("inode {ino} (block {a}) lies in no rgrp"))
    };
    let files = 40;
    // Both nodes at once, each in its own directory under the root.
    let trees: Vec<(u64, Vec<u64>)> = std::thread::scope(|s| {
        let hs: Vec<_> = c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                s.spawn(move || {
                    let d = m.p(&format!("tree{i}"));
                    std::fs::create_dir(&d).unwrap();
                    for k in 0..files {
                        std::fs::write(d.join(format!("f{k}")), b"x").unwrap();
                    }
                    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
                    let inos = (0..files).map(|k| ino(&d.join(format!("f{k}")))).collect();
                    (ino(&d), inos)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (r0, r1) = (rgrp_of(trees[0].0), rgrp_of(trees[1].0));
    assert_ne!(
        r0, r1,
        "the directories of node 1 and node 2 share rgrp {r0}"
    );
    for (i, (dir, inos)) in trees.iter().enumerate() {
        let rd = rgrp_of(*dir);
        for ino in inos {
            assert_eq!(
                rgrp_of(*ino),
                rd,
                "a file node {} made in its directory (rgrp {rd}) went elsewhere",
                i + 1
            );
        }
    }
    stop_and_fsck(c);
}

/// The three rgrp LVB counters of a status report: kept across a
/// re-grant, read, passed over as full.
fn rgrp_counters(status: &str) -> (u64, u64, u64) {
    let n = status_numbers(status, "rgrps:", 3);
    (n[0], n[1], n[2])
}

/// Writes 1 MiB chunks to `p` until the file system is full (or `limit`
/// bytes); the bytes that went in. Fails on any error but ENOSPC.
fn fill(p: &Path, limit: u64) -> u64 {
    use std::io::Write;
    let chunk = vec![0x5au8; MIB as usize];
    let mut f = std::fs::File::create(p).unwrap();
    let mut n = 0;
    let full = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOSPC);
    while n < limit {
        match f.write_all(&chunk) {
            Ok(()) => n += MIB,
            Err(e) if full(&e) => break,
            Err(e) => panic!("writing {}: {e}", p.display()),
        }
    }
    match f.sync_all() {
        Ok(()) => {}
        Err(e) if full(&e) => {}
        Err(e) => panic!("fsync {}: {e}", p.display()),
    }
    n
}

/// Rgrp LVBs: a node allocating passes over rgrps another node filled
/// without reading their bitmaps (the LVB says they are full), a node
/// that gets an rgrp back that nobody changed keeps its bitmaps, and
/// space freed in an rgrp once seen full is found again (no false
/// ENOSPC).
#[test]
fn rgrp_lvbs_pass_over_full_rgrps_and_keep_unchanged_ones() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let logs = t.path().display().to_string();
    let s = statvfs(&a.mnt);
    let total_free = s.f_bavail * s.f_frsize;
    std::fs::create_dir(a.p("a")).unwrap();
    std::fs::create_dir(b.p("b")).unwrap();
    // Node 1 fills about half the file system, rgrp after rgrp.
    let half = fill(&a.p("a/big"), total_free / 2 / MIB * MIB);
    assert_eq!(half, total_free / 2 / MIB * MIB, "node 1 ran out early");
    let (_, _, skipped0) = rgrp_counters(&status_of(b));
    // Node 2 fills the rest: once its own rgrps are full it asks for node
    // 1's, and passes over the full ones by their LVBs.
    let rest = fill(&b.p("b/big"), u64::MAX);
    assert!(rest > 0, "node 2 could write nothing; logs in {logs}");
    let (_, _, skipped1) = rgrp_counters(&status_of(b));
    assert!(
        skipped1 > skipped0,
        "node 2 passed over no full rgrp by its LVB; logs in {logs}"
    );
    // Node 1 deletes its file: it needs its rgrps back from node 2, which
    // changed none of the full ones, so node 1 keeps its copies.
    let (kept0, _, _) = rgrp_counters(&status_of(a));
    std::fs::remove_file(a.p("a/big")).unwrap();
    let (kept1, _, _) = rgrp_counters(&status_of(a));
    assert!(
        kept1 > kept0,
        "node 1 read back rgrps nobody changed; logs in {logs}"
    );
    // Node 2 finds the freed space again, although it last saw those
    // rgrps full.
    let again = fill(&b.p("b/again"), u64::MAX);
    assert!(
        again >= half * 9 / 10,
        "node 2 wrote {again} bytes after node 1 freed {half}; logs in {logs}"
    );
    assert_eq!(
        std::fs::read(a.p("b/again")).unwrap().len() as u64,
        again,
        "node 1 sees node 2's file"
    );
    stop_and_fsck(c);
}

/// The numbers of a status report's glocks line: held, answered from
/// held glocks, granted, waits, given up for other nodes, released, given
/// up to stay under the limit.
fn glock_counters(status: &str) -> Vec<u64> {
    status_numbers(status, "glocks:", 7)
}

/// Listing a directory another node filled takes none of its entries'
/// glocks (that node keeps them, and its caches); stat'ing the entries
/// afterwards does take them, the rest of the listing ahead of time.
#[test]
fn a_plain_listing_leaves_the_entries_glocks_with_their_creator() {
    let t = tempfile::tempdir().unwrap();
    let c = start(&t, 2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let files = 40;
    std::fs::create_dir(a.p("d")).unwrap();
    for k in 0..files {
        std::fs::write(a.p(&format!("d/f{k:02}")), b"x").unwrap();
    }
    let given0 = glock_counters(&status_of(a))[4];
    let held0 = glock_counters(&status_of(b))[0];
    let mut names: Vec<String> = std::fs::read_dir(b.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), files);
    // Give a prefetch, if one wrongly started, time to show.
    std::thread::sleep(Duration::from_millis(300));
    let held1 = glock_counters(&status_of(b))[0];
    let given1 = glock_counters(&status_of(a))[4];
    assert!(
        held1 - held0 < 5,
        "listing took {} glocks on node 2",
        held1 - held0
    );
    assert!(
        given1 - given0 < 5,
        "node 1 gave up {} glocks for a listing on node 2",
        given1 - given0
    );
    // `ls -l`: every entry is stat'ed, and its glock is taken.
    for n in &names {
        let m = std::fs::metadata(b.p(&format!("d/{n}"))).unwrap();
        assert_eq!(m.len(), 1, "{n}");
    }
    let held2 = glock_counters(&status_of(b))[0];
    assert!(
        held2 - held1 >= files as u64,
        "node 2 holds {} more glocks after stat'ing {files} files",
        held2 - held1
    );
    stop_and_fsck(c);
}

/// A node keeps at most `glocks=N` glocks cached: past that it gives the
/// least recently used up (as if another node had asked), and what they
/// covered is read again, correctly, when it is used next.
#[test]
fn cached_glocks_are_bounded_by_the_mount_limit() {
    let t = tempfile::tempdir().unwrap();
    let limit = 40;
    let c = start_net(&t, 2, None, &[(2, "glocks=40")]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let files = 200;
    std::fs::create_dir(a.p("d")).unwrap();
    for k in 0..files {
        std::fs::write(a.p(&format!("d/f{k:03}")), format!("v1 {k}")).unwrap();
    }
    for k in 0..files {
        assert_eq!(
            read(b.p(&format!("d/f{k:03}"))),
            format!("v1 {k}").into_bytes()
        );
    }
    // The shrinker runs once a second.
    let mut g = glock_counters(&status_of(b));
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while g[0] > limit && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        g = glock_counters(&status_of(b));
    }
    assert!(
        g[0] <= limit,
        "node 2 still holds {} glocks (limit {limit}); logs in {}",
        g[0],
        t.path().display()
    );
    assert!(g[6] > 0, "nothing given up under the limit: {g:?}");
    // Node 1 changes files whose glocks node 2 gave up, and some it may
    // still hold: node 2 sees every change.
    for k in (0..files).step_by(7) {
        std::fs::write(a.p(&format!("d/f{k:03}")), format!("v2 {k}")).unwrap();
    }
    for k in 0..files {
        let want = if k % 7 == 0 { "v2" } else { "v1" };
        assert_eq!(
            read(b.p(&format!("d/f{k:03}"))),
            format!("{want} {k}").into_bytes(),
            "f{k:03}"
        );
    }
    stop_and_fsck(c);
}

/// A node that unmounts leaves LVBs for the glocks it held Exclusive: a
/// node that had copies of those inodes keeps them instead of reading
/// them again. (An LVB lives with the lock's master; the files are made
/// on node 2, which therefore masters their locks and outlives node 1.
/// Where the leaving node was the master and nobody else holds the lock,
/// the lock and its LVB go with it, as in the Linux DLM.)
#[test]
fn an_unmounting_node_leaves_lvbs_so_others_keep_their_copies() {
    let t = tempfile::tempdir().unwrap();
    let mut c = start(&t, 2);
    let files = 10;
    for k in 0..files {
        std::fs::write(c.nodes[1].p(&format!("f{k}")), format!("{k}")).unwrap();
    }
    // Node 1 takes each glock Exclusive without changing anything (node 2
    // keeps its copies aside), and still holds them when it unmounts.
    for k in 0..files {
        let path = std::ffi::CString::new(
            c.nodes[0]
                .p(&format!("f{k}"))
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        let r = unsafe { libc::removexattr(path.as_ptr(), c"user.none".as_ptr()) };
        assert_eq!(r, -1);
    }
    let (kept0, _, _) = lvb_counters(&status_of(&c.nodes[1]));
    c.nodes.remove(0).stop();
    for k in 0..files {
        assert_eq!(
            read(c.nodes[0].p(&format!("f{k}"))),
            format!("{k}").into_bytes()
        );
    }
    let (kept1, _, _) = lvb_counters(&status_of(&c.nodes[0]));
    assert!(
        kept1 - kept0 >= files as u64,
        "node 2 kept {} of {files} inodes after node 1 unmounted; logs in {}",
        kept1 - kept0,
        t.path().display()
    );
    stop_and_fsck(c);
}

/// A directory another node moved to another parent, looked up here at
/// its new place while a local operation holds its old parent: the
/// kernel still has it under the old parent and must move that entry,
/// which needs the old parent's lock. The lookup lets the old entry go
/// first (`dcache.rs`) and succeeds; without that, the kernel answered
/// ESTALE, which no local file system does.
#[test]
fn a_directory_moved_by_another_node_is_found_while_its_old_parent_is_busy() {
    let t = tempfile::tempdir().unwrap();
    // Node 3 keeps what it takes for 2.5 s: long enough for node 1's
    // create in a/ to wait (holding a/ in the kernel) while node 1 looks
    // the moved directory up.
    let c = start_net(&t, 3, None, &[(3, "--min-hold-ms=2500")]);
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    std::fs::create_dir_all(n1.p("a/d/inner")).unwrap();
    std::fs::create_dir(n1.p("b")).unwrap();
    std::fs::write(n1.p("a/d/inner/f"), b"moved").unwrap();
    // Node 1's kernel has d under a, kept there by an open handle (as a
    // shell's working directory would).
    let _held = std::fs::File::open(n1.p("a/d")).unwrap();
    std::fs::rename(n2.p("a/d"), n2.p("b/d")).expect("rename on node 2");
    // Nodes 1 and 3 look a/ up (Shared): node 1's create there gets
    // through its path walk at once, then waits, holding a/ in its
    // kernel, for node 3 to give its glock up for node 1's Exclusive.
    assert!(std::fs::metadata(n1.p("a")).unwrap().is_dir());
    assert!(std::fs::metadata(n3.p("a")).unwrap().is_dir());
    let busy = n1.p("a/y");
    let create = std::thread::spawn(move || std::fs::write(busy, b"y"));
    std::thread::sleep(Duration::from_millis(300));
    let found = std::fs::metadata(n1.p("b/d"));
    assert!(
        matches!(&found, Ok(m) if m.is_dir()),
        "node 1 looking up b/d: {found:?}; logs in {}",
        t.path().display()
    );
    assert_eq!(read(n1.p("b/d/inner/f")), b"moved");
    create.join().unwrap().expect("create a/y on node 1");
    assert!(!n1.p("a/d").exists());
    let st = status_of(n1);
    let d = status_numbers(&st, "dentries:", 2);
    assert!(d[0] >= 1, "no moved directory let go of:\n{st}");
    assert_eq!(d[1], 0, "a wait ran out:\n{st}");
    stop_and_fsck(c);
}
