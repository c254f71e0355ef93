//! Lock+unlock rates of rdlm against flock(2), measured in the same run:
//!
//! (a) uncontended locks mastered locally, through the in-process API
//!     (`Dlm::lock` / `Dlm::unlock`); baseline: flock(2) LOCK_EX/LOCK_UN on
//!     a temp file in one process;
//! (b) the same with every resource mastered by the other of two nodes
//!     (two `Dlm`s in this process, real QUIC with mutual TLS on
//!     127.0.0.1): each lock and each unlock is a round trip; same
//!     baseline;
//! (c) ping-pong of EX locks between the two nodes (ctdb's ping_pong: a
//!     ring of 3 locks, each side takes the next before it drops the one it
//!     holds, so the lock moves to the other side every step); baseline:
//!     the same ring of flock(2)ed files between two processes.
//!
//! Run: `cargo bench -p rdlm --bench lock` (`RDLM_BENCH_SECS` sets the
//! seconds per measurement, default 2). Prints ops/s (one op = one lock
//! plus one unlock) and the ratio to the baseline; it asserts nothing about
//! time. Every wait is bounded; child processes are waited for by PID and
//! killed if they overrun.

use rdlm::api::{Dlm, DlmOptions};
use rdlm::config::ClusterConfig;
use rdlm::{Flags, Mode};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RDLM: &str = env!("CARGO_BIN_EXE_rdlm");
/// Names per uncontended case (used round robin).
const NAMES: usize = 256;
const CHILD_ENV: &str = "RDLM_BENCH_FLOCK_PINGPONG";

type Res<T> = Result<T, String>;

fn main() {
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        std::process::exit(match flock_child(&arg) {
            Ok(n) => {
                println!("{n}");
                0
            }
            Err(e) => {
                eprintln!("flock ping-pong child: {e}");
                1
            }
        });
    }
    // `cargo bench` passes `--bench`; nothing else is taken.
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn secs() -> Duration {
    let s = std::env::var("RDLM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s < 600.0)
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

fn run() -> Res<()> {
    let t = secs();
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    println!(
        "rdlm lock benchmark: {:.1} s per measurement, one op = lock + unlock",
        t.as_secs_f64()
    );
    let flock_one = flock_loop(&dir.path().join("flock-one"), t)?;
    let (flock_pp, _) = flock_pingpong(dir.path(), t)?;

    let cluster = cluster(dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (local, remote, pp) = rt.block_on(async {
        let a = start(&cluster, 1).await?;
        let b = start(&cluster, 2).await?;
        wait_members(&a, 2).await?;
        wait_members(&b, 2).await?;
        let local = uncontended(&a, &a, "local", t).await?;
        let remote = uncontended(&a, &b, "remote", t).await?;
        let pp = dlm_pingpong(&a, &b, t).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), a.leave()).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), b.leave()).await;
        Ok::<_, String>((local, remote, pp))
    })?;

    let row = |what: &str, ops: f64, base_what: &str, base: f64| {
        println!(
            "{what:<52} {ops:>10.0} ops/s | {base_what:<36} {base:>10.0} ops/s | ratio {:.3}",
            ops / base
        );
    };
    row(
        "(a) local master, in-process API",
        local,
        "flock(2) on a temp file",
        flock_one,
    );
    row(
        "(b) remote master, 2 nodes, QUIC on loopback",
        remote,
        "flock(2) on a temp file",
        flock_one,
    );
    row(
        "(c) EX ping-pong, 2 nodes, QUIC on loopback",
        pp,
        "flock(2) ping-pong, 2 processes",
        flock_pp,
    );
    Ok(())
}

/// A two-node cluster file with fast timings, made by `rdlm gencluster`.
fn cluster(dir: &Path) -> Res<ClusterConfig> {
    let base = free_ports(2)?;
    let out = Command::new(RDLM)
        .args(["gencluster", "--nodes", "2", "--base-port"])
        .arg(base.to_string())
        .arg("--dir")
        .arg(dir)
        .args(["--cluster", "bench"])
        .output()
        .map_err(|e| format!("run {RDLM} gencluster: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rdlm gencluster: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let toml = dir.join("cluster.toml");
    let text = std::fs::read_to_string(&toml)
        .map_err(|e| format!("{}: {e}", toml.display()))?
        .replace("heartbeat_ms = 200", "heartbeat_ms = 50")
        .replace("failure_timeout_ms = 1500", "failure_timeout_ms = 400")
        .replace("lease_ms = 3000", "lease_ms = 800");
    std::fs::write(&toml, text).map_err(|e| format!("{}: {e}", toml.display()))?;
    ClusterConfig::load(&toml).map_err(|e| e.to_string())
}

/// `n` consecutive UDP ports free right now.
fn free_ports(n: u16) -> Res<u16> {
    'next: for _ in 0..500 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let base = a.local_addr().map_err(|e| format!("addr: {e}"))?.port();
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
        return Ok(base);
    }
    Err(format!("no {n} consecutive free UDP ports"))
}

async fn start(cluster: &ClusterConfig, id: u32) -> Res<Dlm> {
    let (dlm, mut events) = Dlm::start(cluster.clone(), id, DlmOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    // Nobody reads the events; drain them so they do not pile up.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok(dlm)
}

async fn wait_members(d: &Dlm, n: usize) -> Res<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = d.status().await.map_err(|e| e.to_string())?;
            if s.quorate && !s.recovering && s.view.as_ref().is_some_and(|v| v.members.len() == n) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| format!("node {} never saw {n} members", d.node_id()))?
}

async fn lock_unlock(d: &Dlm, name: &[u8]) -> Res<()> {
    let bound = Duration::from_secs(10);
    let g = d
        .lock(name, Mode::EX, Flags::NONE, false, Some(bound))
        .await
        .map_err(|e| e.to_string())?;
    d.unlock(g.lkid, None).await.map_err(|e| e.to_string())
}

/// `user` takes and drops EX locks on names `master` took first (so
/// `master` masters them), round robin, for `t`.
async fn uncontended(user: &Dlm, master: &Dlm, tag: &str, t: Duration) -> Res<f64> {
    let names: Vec<Vec<u8>> = (0..NAMES)
        .map(|i| format!("{tag}/{i}").into_bytes())
        .collect();
    for n in &names {
        lock_unlock(master, n).await?;
    }
    // Warm up: the user learns the masters (one lookup per name).
    for n in &names {
        lock_unlock(user, n).await?;
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < t {
        lock_unlock(user, &names[ops as usize % NAMES]).await?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// ctdb's ping_pong over a ring of 3 locks, one side per node.
async fn dlm_pingpong(a: &Dlm, b: &Dlm, t: Duration) -> Res<f64> {
    let names: Vec<Vec<u8>> = (0..3).map(|i| format!("pp/{i}").into_bytes()).collect();
    let deadline = Instant::now() + t;
    let side = |d: Dlm, names: Vec<Vec<u8>>| async move {
        let bound = Some(Duration::from_secs(10));
        let mut i = 0;
        let mut held = d
            .lock(&names[0], Mode::EX, Flags::NONE, false, bound)
            .await
            .map_err(|e| e.to_string())?;
        let mut steps = 0u64;
        while Instant::now() < deadline {
            let next = (i + 1) % names.len();
            let g = d
                .lock(&names[next], Mode::EX, Flags::NONE, false, bound)
                .await
                .map_err(|e| e.to_string())?;
            d.unlock(held.lkid, None).await.map_err(|e| e.to_string())?;
            held = g;
            i = next;
            steps += 1;
        }
        d.unlock(held.lkid, None).await.map_err(|e| e.to_string())?;
        Ok::<u64, String>(steps)
    };
    let start = Instant::now();
    let ha = tokio::spawn(side(a.clone(), names.clone()));
    let hb = tokio::spawn(side(b.clone(), names));
    let sa = ha.await.map_err(|e| e.to_string())??;
    let sb = hb.await.map_err(|e| e.to_string())??;
    Ok((sa + sb) as f64 / start.elapsed().as_secs_f64())
}

fn flock(f: &File, op: libc::c_int) -> Res<()> {
    // SAFETY: flock(2) on a descriptor this process owns; no memory is
    // shared with the kernel.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("flock: {}", std::io::Error::last_os_error()))
    }
}

fn open(path: &Path) -> Res<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// flock(2) LOCK_EX + LOCK_UN on one file, for `t`.
fn flock_loop(path: &Path, t: Duration) -> Res<f64> {
    let f = open(path)?;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < t {
        flock(&f, libc::LOCK_EX)?;
        flock(&f, libc::LOCK_UN)?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Two processes (this binary again) play ping_pong over 3 flocked files.
fn flock_pingpong(dir: &Path, t: Duration) -> Res<(f64, u64)> {
    let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("pp-{i}"))).collect();
    for f in &files {
        open(f)?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let arg = format!("{}:{}", t.as_millis(), dir.display());
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..2 {
        let c = Command::new(&exe)
            .env(CHILD_ENV, &arg)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
        children.push(c);
    }
    let limit = t + Duration::from_secs(20);
    let mut total = 0u64;
    let mut err = None;
    for mut c in children {
        let pid = c.id();
        let status = loop {
            match c.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        match status {
            Some(s) if s.success() => {
                let mut out = String::new();
                if let Some(mut o) = c.stdout.take() {
                    use std::io::Read;
                    let _ = o.read_to_string(&mut out);
                }
                match out.trim().parse::<u64>() {
                    Ok(n) => total += n,
                    Err(_) => err = Some(format!("child {pid} printed {out:?}")),
                }
            }
            Some(s) => err = Some(format!("child {pid} exited with {s}")),
            None => {
                // Overran: kill that process, by its PID.
                let _ = c.kill();
                let _ = c.wait();
                err = Some(format!("child {pid} did not finish within {limit:?}"));
            }
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), total))
}

/// The child side of the flock ping-pong: `millis:dir`.
fn flock_child(arg: &str) -> Res<u64> {
    let (ms, dir) = arg
        .split_once(':')
        .ok_or_else(|| format!("bad argument {arg:?}"))?;
    let ms: u64 = ms.parse().map_err(|e| format!("bad time {ms:?}: {e}"))?;
    let files: Vec<File> = (0..3)
        .map(|i| open(&Path::new(dir).join(format!("pp-{i}"))))
        .collect::<Res<_>>()?;
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut i = 0;
    flock(&files[0], libc::LOCK_EX)?;
    let mut steps = 0u64;
    while Instant::now() < deadline {
        let next = (i + 1) % files.len();
        flock(&files[next], libc::LOCK_EX)?;
        flock(&files[i], libc::LOCK_UN)?;
        i = next;
        steps += 1;
    }
    flock(&files[i], libc::LOCK_UN)?;
    Ok(steps)
}
