//! The `rdlm` command: generated CAs, keys and cluster files load, verify
//! and carry traffic; existing keys are not overwritten without --force.

use rdlm::config::ClusterConfig;
use rdlm::tls::Identity;
use rdlm::transport::{new_incarnation, Incoming, Transport};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn rdlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rdlm"))
        .args(args)
        .output()
        .expect("run rdlm")
}

fn ok(args: &[&str]) -> String {
    let out = rdlm(args);
    assert!(
        out.status.success(),
        "rdlm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = rdlm(args);
    assert!(!out.status.success(), "rdlm {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Two consecutive UDP ports free right now.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = a.local_addr().expect("addr").port();
        if port < u16::MAX && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

#[test]
fn gencluster_writes_a_loadable_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("c");
    let out = ok(&[
        "gencluster",
        "--nodes",
        "3",
        "--base-port",
        "7101",
        "--dir",
        s(&d),
        "--cluster",
        "alpha",
    ]);
    assert!(out.contains("cluster.toml"), "{out}");
    let cfg = ClusterConfig::load(d.join("cluster.toml")).expect("generated cluster file loads");
    assert_eq!(cfg.name, "alpha");
    assert_eq!(cfg.nodes.len(), 3);
    assert_eq!(cfg.quorum(), 2);
    assert_eq!(cfg.node(3).expect("node 3").address, "127.0.0.1:7103");
    // Paths are written relative, so the directory can be moved.
    let text = std::fs::read_to_string(d.join("cluster.toml")).expect("read");
    assert!(text.contains("cert = \"node-2.pem\""), "{text}");
    for id in 1..=3 {
        let n = cfg.node(id).expect("node");
        assert_eq!(mode(&n.key), 0o600, "{}", n.key.display());
        assert_eq!(mode(&n.cert), 0o644);
        Identity::load(&cfg, id).expect("the node's certificate verifies against the CA");
    }
    assert_eq!(mode(&d.join("ca.key")), 0o600);
    // A moved directory still loads.
    let moved = dir.path().join("moved");
    std::fs::rename(&d, &moved).expect("move");
    let cfg = ClusterConfig::load(moved.join("cluster.toml")).expect("moved");
    Identity::load(&cfg, 2).expect("moved identity");

    // Two-node mode.
    let d2 = dir.path().join("two");
    ok(&[
        "gencluster",
        "--nodes",
        "2",
        "--base-port",
        "7201",
        "--dir",
        s(&d2),
        "--cluster",
        "beta",
        "--two-node",
    ]);
    let cfg = ClusterConfig::load(d2.join("cluster.toml")).expect("two-node");
    assert!(cfg.two_node);
    assert_eq!(cfg.quorum(), 1);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok(&["ca", "--cluster", "alpha", "--out", s(d)]);
    let key_before = std::fs::read(d.join("ca.key")).expect("key");
    let err = fails(&["ca", "--cluster", "alpha", "--out", s(d)]);
    assert!(err.contains("ca.pem exists; pass --force"), "{err}");
    assert_eq!(
        std::fs::read(d.join("ca.key")).expect("key"),
        key_before,
        "key untouched"
    );
    // A key with loose permissions is replaced by a 0600 one with --force.
    std::fs::set_permissions(d.join("ca.key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    ok(&["ca", "--cluster", "alpha", "--out", s(d), "--force"]);
    assert_ne!(std::fs::read(d.join("ca.key")).expect("key"), key_before);
    assert_eq!(mode(&d.join("ca.key")), 0o600);
    assert!(
        std::fs::read_dir(d).expect("list").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")),
        "no temporary files left"
    );

    let err = fails(&[
        "gencluster",
        "--nodes",
        "3",
        "--base-port",
        "7101",
        "--dir",
        s(d),
        "--cluster",
        "alpha",
    ]);
    assert!(err.contains("exists; pass --force"), "{err}");
    assert!(
        !d.join("cluster.toml").exists(),
        "nothing written when refused"
    );
}

#[test]
fn ca_then_keygen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let keys = dir.path().join("keys");
    ok(&["ca", "--cluster", "alpha", "--out", s(&ca_dir)]);
    ok(&[
        "keygen",
        "--ca",
        s(&ca_dir),
        "--node",
        "7",
        "--cluster",
        "alpha",
        "--out",
        s(&keys),
    ]);
    let read = |p: &Path| std::fs::read_to_string(p).expect("read");
    Identity::from_pem(
        "alpha",
        7,
        &read(&ca_dir.join("ca.pem")),
        &read(&keys.join("node-7.pem")),
        &read(&keys.join("node-7.key")),
    )
    .expect("node 7's certificate is valid");
    assert_eq!(mode(&keys.join("node-7.key")), 0o600);
    let err = fails(&[
        "keygen",
        "--ca",
        s(&ca_dir),
        "--node",
        "7",
        "--cluster",
        "alpha",
        "--out",
        s(&keys),
    ]);
    assert!(err.contains("node-7.pem exists"), "{err}");
    // A CA made for another cluster is refused.
    let err = fails(&[
        "keygen",
        "--ca",
        s(&ca_dir),
        "--node",
        "8",
        "--cluster",
        "beta",
        "--out",
        s(&keys),
    ]);
    assert!(err.contains("cluster \"alpha\""), "{err}");
    let err = fails(&[
        "keygen",
        "--ca",
        s(&keys),
        "--node",
        "8",
        "--cluster",
        "alpha",
        "--out",
        s(&keys),
    ]);
    assert!(err.contains("ca.pem"), "missing CA named: {err}");
    let err = fails(&[
        "keygen",
        "--ca",
        s(&ca_dir),
        "--node",
        "0",
        "--cluster",
        "alpha",
        "--out",
        s(&keys),
    ]);
    assert!(err.contains("node ids start at 1"), "{err}");
    let err = fails(&["ca", "--cluster", "Bad_Name", "--out", s(&ca_dir)]);
    assert!(err.contains("cluster name"), "{err}");
    let err = fails(&[
        "gencluster",
        "--nodes",
        "3",
        "--base-port",
        "65534",
        "--dir",
        s(&keys),
        "--cluster",
        "alpha",
    ]);
    assert!(err.contains("65535"), "{err}");
    let err = fails(&[
        "gencluster",
        "--nodes",
        "3",
        "--base-port",
        "7000",
        "--dir",
        s(&keys),
        "--cluster",
        "alpha",
        "--two-node",
    ]);
    assert!(err.contains("two_node"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_cluster_carries_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port_pair().to_string();
    ok(&[
        "gencluster",
        "--nodes",
        "2",
        "--base-port",
        &port,
        "--dir",
        s(dir.path()),
        "--cluster",
        "gamma",
    ]);
    let cfg = ClusterConfig::load(dir.path().join("cluster.toml")).expect("load");
    let (t1, mut rx1) = Transport::start(&cfg, 1, new_incarnation())
        .await
        .expect("node 1");
    let (t2, mut rx2) = Transport::start(&cfg, 2, new_incarnation())
        .await
        .expect("node 2");
    t1.send(2, b"ping".to_vec()).expect("send");
    let wait = Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            tokio::time::timeout(wait, rx2.recv())
                .await
                .expect("in time")
                .expect("open"),
        );
    }
    assert_eq!(
        got,
        vec![
            Incoming::Connected { peer: 1 },
            Incoming::Message {
                from: 1,
                payload: b"ping".to_vec()
            }
        ]
    );
    assert_eq!(
        tokio::time::timeout(wait, rx1.recv())
            .await
            .expect("in time"),
        Some(Incoming::Connected { peer: 2 })
    );
    t1.shutdown().await;
    t2.shutdown().await;
}
