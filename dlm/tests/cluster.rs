//! Real clusters: separate `rdlm node` processes talking QUIC with mutual
//! TLS on loopback, and `rdlm lock` / `status` / `dump` as a user runs them.
//! Every process started here is killed by PID when the test ends (also on
//! failure), every wait is bounded, and a failing test prints where the
//! node logs are.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RDLM: &str = env!("CARGO_BIN_EXE_rdlm");

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    others: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .nodes
            .iter_mut()
            .flatten()
            .chain(self.others.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let keep = self.dir.path().to_path_buf();
            eprintln!("node logs: {}/node-*.log (kept)", keep.display());
            // Keep the directory for the logs.
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = d.keep();
        }
    }
}

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

impl Cluster {
    fn start(n: u32) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_ports(n as u16);
        let out = Command::new(RDLM)
            .args(["gencluster", "--nodes", &n.to_string(), "--base-port"])
            .arg(base.to_string())
            .arg("--dir")
            .arg(dir.path())
            .args(["--cluster", "t"])
            .output()
            .expect("run rdlm gencluster");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Test timing: fail over in well under a second.
        let toml = dir.path().join("cluster.toml");
        let text = std::fs::read_to_string(&toml)
            .expect("read cluster.toml")
            .replace("heartbeat_ms = 200", "heartbeat_ms = 50")
            .replace("failure_timeout_ms = 1500", "failure_timeout_ms = 400")
            .replace("lease_ms = 3000", "lease_ms = 800");
        std::fs::write(&toml, text).expect("write cluster.toml");
        let mut c = Cluster {
            dir,
            nodes: Vec::new(),
            others: Vec::new(),
        };
        for id in 1..=n {
            let child = c.spawn_node(id);
            c.nodes.push(Some(child));
        }
        c
    }

    fn spawn_node(&self, id: u32) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("node-{id}.log")))
            .expect("create log");
        Command::new(RDLM)
            .args(["node", "--cluster"])
            .arg(self.dir.path().join("cluster.toml"))
            .args(["--id", &id.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rdlm node")
    }

    fn socket(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("node-{id}.sock"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn rdlm(&self, id: u32, args: &[&str]) -> Output {
        Command::new(RDLM)
            .args(args)
            .env("RDLM_SOCKET", self.socket(id))
            .output()
            .expect("run rdlm")
    }

    fn status(&self, id: u32) -> Option<serde_json::Value> {
        let out = self.rdlm(id, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until node `id` sees `members`, quorate and not recovering.
    fn wait_members(&self, id: u32, members: &[u32], limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.status(id) {
                let ids: Vec<u64> = s["members"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
                    .unwrap_or_default();
                let want: Vec<u64> = members.iter().map(|m| u64::from(*m)).collect();
                if ids == want && s["quorate"] == true && s["recovering"] == false {
                    return start.elapsed();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node {id} never saw members {members:?}; last status {:?}; logs in {}",
            self.status(id),
            self.dir.path().display()
        );
    }

    /// Starts `rdlm lock` on node `id` in the background.
    fn lock_bg(&mut self, id: u32, args: &[&str]) -> usize {
        let child = Command::new(RDLM)
            .arg("lock")
            .args(args)
            .env("RDLM_SOCKET", self.socket(id))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn rdlm lock");
        self.others.push(child);
        self.others.len() - 1
    }

    fn wait_other(&mut self, i: usize, limit: Duration) -> i32 {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.others[i].try_wait().expect("try_wait") {
                return st.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rdlm lock did not finish in {limit:?}");
    }
}

fn wait_file(p: &Path, limit: Duration) {
    let start = Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < limit, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cluster_lock_excludes_across_nodes_like_flock() {
    let mut c = Cluster::start(3);
    for id in 1..=3 {
        c.wait_members(id, &[1, 2, 3], Duration::from_secs(30));
    }
    let held = c.path("held");
    let order = c.path("order");
    let script = format!(
        "touch {h}; sleep 1.5; echo first >> {o}",
        h = held.display(),
        o = order.display()
    );
    let first = c.lock_bg(
        1,
        &["build-lock", "--mode", "EX", "--", "sh", "-c", &script],
    );
    wait_file(&held, Duration::from_secs(20));

    // Node 2 cannot have it meanwhile.
    let out = c.rdlm(2, &["lock", "build-lock", "--nonblock", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.rdlm(2, &["lock", "build-lock", "--timeout", "0.3", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shared readers on node 3 wait too (EX is held).
    let out = c.rdlm(
        3,
        &[
            "lock",
            "build-lock",
            "--mode",
            "PR",
            "--nonblock",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(1));

    // A waiter gets it once node 1's command is done, and only then.
    let script2 = format!("echo second >> {}", order.display());
    let out = c.rdlm(
        2,
        &[
            "lock",
            "build-lock",
            "--timeout",
            "30",
            "--",
            "sh",
            "-c",
            &script2,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.wait_other(first, Duration::from_secs(30)), 0);
    assert_eq!(
        std::fs::read_to_string(&order).expect("order"),
        "first\nsecond\n"
    );

    // The command's exit status comes back.
    let out = c.rdlm(3, &["lock", "other", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    // Status and dump say what a user needs.
    let out = c.rdlm(1, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("quorate") && text.contains("3 (slot 3)"),
        "{text}"
    );
    let dumps: String = (1..=3)
        .map(|id| String::from_utf8_lossy(&c.rdlm(id, &["dump"]).stdout).into_owned())
        .collect();
    assert!(dumps.contains("\"build-lock\""), "{dumps}");
}

#[test]
fn locks_of_a_dead_client_or_a_dead_node_are_released() {
    let mut c = Cluster::start(3);
    for id in 1..=3 {
        c.wait_members(id, &[1, 2, 3], Duration::from_secs(30));
    }
    // A client process killed while holding: its node releases the lock.
    let held = c.path("held-a");
    let script = format!("touch {}; sleep 1000", held.display());
    let a = c.lock_bg(1, &["a", "--", "sh", "-c", &script]);
    wait_file(&held, Duration::from_secs(20));
    let out = c.rdlm(2, &["lock", "a", "--nonblock", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let _ = c.others[a].kill();
    let _ = c.others[a].wait();
    let out = c.rdlm(2, &["lock", "a", "--timeout", "20", "--", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A node stopped with SIGTERM leaves cleanly: the others drop it
    // without waiting for the failure timeout and the lease.
    let n2 = c.nodes[1].take().expect("node 2 runs");
    let stopped = Instant::now();
    // SAFETY: kill(2) on a child this test started, by its PID.
    let rc = unsafe { libc::kill(n2.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    c.others.push(n2);
    let old = c.others.len() - 1;
    c.wait_members(1, &[1, 3], Duration::from_secs(10));
    eprintln!(
        "clean leave: node 2 dropped after {:?} (a killed node needs failure timeout + lease)",
        stopped.elapsed()
    );
    // It exits by itself (0) once its connections have drained; only then
    // is its address free for the next run of node 2.
    assert_eq!(c.wait_other(old, Duration::from_secs(20)), 0);
    let n2 = c.spawn_node(2);
    c.nodes[1] = Some(n2);
    c.wait_members(1, &[1, 2, 3], Duration::from_secs(30));

    // A node killed while one of its clients holds a lock: the survivors
    // notice, wait out its lease, and grant the lock again.
    let held = c.path("held-b");
    let script = format!("touch {}; sleep 1000", held.display());
    c.lock_bg(3, &["b", "--", "sh", "-c", &script]);
    wait_file(&held, Duration::from_secs(20));
    let killed = Instant::now();
    if let Some(mut n3) = c.nodes[2].take() {
        let _ = n3.kill();
        let _ = n3.wait();
    }
    let out = c.rdlm(1, &["lock", "b", "--timeout", "30", "--", "true"]);
    let failover = killed.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_members(1, &[1, 2], Duration::from_secs(10));
    eprintln!("failover: lock of a killed node granted again after {failover:?} (failure timeout 400 ms, lease 800 ms)");

    // It comes back as a new incarnation and joins again.
    let n3 = c.spawn_node(3);
    c.nodes[2] = Some(n3);
    c.wait_members(1, &[1, 2, 3], Duration::from_secs(30));
    let out = c.rdlm(3, &["lock", "b", "--timeout", "20", "--", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let c = Cluster::start(1);
    c.wait_members(1, &[1], Duration::from_secs(30));
    let out = c.rdlm(1, &["lock", "x", "--mode", "XX", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown lock mode"));
    let long = "n".repeat(65);
    let out = c.rdlm(1, &["lock", &long, "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1..=64 bytes"));
    // Garbage on the socket gets an error line, and the daemon lives on.
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(c.socket(1)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"{not json\n").expect("write");
    let mut line = String::new();
    BufReader::new(s.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.contains("\"error\""), "{line}");
    assert!(c.status(1).is_some());
    // A daemon that is not there.
    let out = Command::new(RDLM)
        .args(["status", "--socket"])
        .arg(c.path("nope.sock"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.sock"));
}
