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
            address: format!("127.0.0.1:{}", u32::from(base) + id - 1),
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
    _nbd: ServerHandle,
    img: PathBuf,
    nodes: Vec<Mounted>,
}

/// Formats a lock_dlm image, serves it, mounts `n` nodes.
fn start(t: &tempfile::TempDir, n: u32) -> Cluster {
    let img = t.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(&img, FileOptions::default()).expect("open image"));
    let opts = MkfsOptions {
        block_size: 4096,
        journals: 3,
        journal_mib: Some(8),
        lock_proto: LockProto::Dlm,
        lock_table: "t:fs".into(),
        ..MkfsOptions::default()
    };
    format(&*dev, &FormatParams::new(opts), &mut |_| {}).expect("format");
    let nbd = server::start(
        dev,
        ServerConfig {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            handshake_timeout: Duration::from_secs(10),
            ..ServerConfig::default()
        },
    )
    .expect("start the NBD server");
    let uri = format!(
        "nbd://127.0.0.1:{}/",
        nbd.tcp_addr().expect("bound address").port()
    );
    let cf = cluster_file(t.path(), n);
    let mut nodes: Vec<Mounted> = (1..=n)
        .map(|id| {
            Mounted::spawn_args(
                &uri,
                &t.path().join(format!("node{id}")),
                &t.path().join(format!("node{id}.log")),
                &[
                    "--cluster".into(),
                    cf.display().to_string(),
                    "--node".into(),
                    id.to_string(),
                    "-o".into(),
                    "log=info".into(),
                ],
            )
        })
        .collect();
    for m in &mut nodes {
        m.wait_mounted(JOIN);
    }
    Cluster {
        _nbd: nbd,
        img,
        nodes,
    }
}

impl Cluster {
    fn stop(self) -> PathBuf {
        let img = self.img.clone();
        for m in self.nodes {
            m.stop();
        }
        img
    }
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

    let img = c.stop();
    let findings = fsck(&img);
    assert!(findings.is_empty(), "fsck: {findings:?}");
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
    let img = c.stop();
    let findings = fsck(&img);
    assert!(findings.is_empty(), "fsck: {findings:?}");
}
