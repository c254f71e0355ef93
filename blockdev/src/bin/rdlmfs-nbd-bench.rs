//! `rdlmfs-nbd-bench`: how fast is the NBD path, measured against a
//! baseline in the same run.
//!
//! For each server (rdlmfs-nbd, nbdkit's file plugin, qemu-nbd, nbd-server;
//! whichever are installed) it serves one image on loopback and runs, with
//! our client and with fio's `nbd` engine (libnbd), the same workloads:
//! 4 KiB random read and write at queue depth 1 and 16, and 1 MiB sequential
//! read and write at queue depth 1. It prints IOPS or MB/s and the ratio
//! ours/fio per server, then our client's numbers on each server relative to
//! rdlmfs-nbd. It asserts nothing: numbers, not tests.
//!
//! Queue depth for our client means that many threads each issuing one
//! synchronous request at a time on one shared `NbdDevice` (how FUSE worker
//! threads use it); for fio it is libnbd's asynchronous queue depth.

use blockdev::{BlockDevice, DeviceUri, NbdDevice, NbdOptions};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "rdlmfs-nbd-bench",
    about = "NBD client/server benchmark against fio/libnbd, nbdkit, qemu-nbd and nbd-server"
)]
struct Cli {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Image size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Servers to measure (comma-separated): rdlmfs-nbd, nbdkit, qemu-nbd, nbd-server.
    #[arg(long, default_value = "rdlmfs-nbd,nbdkit,qemu-nbd,nbd-server")]
    servers: String,
    /// Connections our client may open when the server allows multi-conn.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    write: bool,
    random: bool,
    bs: usize,
    qd: usize,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "randread 4k qd1",
        write: false,
        random: true,
        bs: 4096,
        qd: 1,
    },
    Workload {
        name: "randread 4k qd16",
        write: false,
        random: true,
        bs: 4096,
        qd: 16,
    },
    Workload {
        name: "randwrite 4k qd1",
        write: true,
        random: true,
        bs: 4096,
        qd: 1,
    },
    Workload {
        name: "randwrite 4k qd16",
        write: true,
        random: true,
        bs: 4096,
        qd: 16,
    },
    Workload {
        name: "seqread 1M qd1",
        write: false,
        random: false,
        bs: 1 << 20,
        qd: 1,
    },
    Workload {
        name: "seqwrite 1M qd1",
        write: true,
        random: false,
        bs: 1 << 20,
        qd: 1,
    },
];

/// A server child, killed by PID when dropped.
struct Server {
    name: &'static str,
    uri: String,
    child: Option<Child>,
    pidfile: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self
            .pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: signalling the daemon that wrote this pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))
}

fn start_server(name: &str, dir: &Path, image: &Path) -> Result<Server, String> {
    let sock = dir.join(format!("{name}.sock"));
    let log = dir.join(format!("{name}.log"));
    let unix_uri = format!("nbd+unix:///?socket={}", sock.display());
    let server = match name {
        "rdlmfs-nbd" => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let bin = exe.with_file_name("rdlmfs-nbd");
            let child = spawn(
                Command::new(bin)
                    .arg("serve")
                    .arg(image)
                    .args(["--listen", "none", "--unix"])
                    .arg(&sock)
                    .args(["--exit-after", "3600"])
                    .env("RUST_LOG", "warn"),
                &log,
            )?;
            Server {
                name: "rdlmfs-nbd",
                uri: unix_uri,
                child: Some(child),
                pidfile: None,
            }
        }
        "nbdkit" => {
            let child = spawn(
                Command::new("nbdkit")
                    .args(["-f", "--exit-with-parent", "-U"])
                    .arg(&sock)
                    .arg("file")
                    .arg(format!("file={}", image.display())),
                &log,
            )?;
            Server {
                name: "nbdkit",
                uri: unix_uri,
                child: Some(child),
                pidfile: None,
            }
        }
        "qemu-nbd" => {
            let child = spawn(
                Command::new("qemu-nbd")
                    .args(["-f", "raw", "-t", "-e", "16", "--cache=writeback", "-k"])
                    .arg(&sock)
                    .arg(image),
                &log,
            )?;
            Server {
                name: "qemu-nbd",
                uri: unix_uri,
                child: Some(child),
                pidfile: None,
            }
        }
        "nbd-server" => {
            let port = free_port().map_err(|e| e.to_string())?;
            let conf = dir.join("nbd-server.conf");
            let pidfile = dir.join("nbd-server.pid");
            std::fs::write(
                &conf,
                format!(
                    "[generic]\nport = {port}\nlistenaddr = 127.0.0.1\n\n[disk]\nexportname = {}\nflush = true\nfua = true\n",
                    image.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            let st = Command::new("nbd-server")
                .arg("-C")
                .arg(&conf)
                .arg("-p")
                .arg(&pidfile)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("nbd-server: {e}"))?;
            if !st.success() {
                return Err(format!("nbd-server exited with {st}"));
            }
            Server {
                name: "nbd-server",
                uri: format!("nbd://127.0.0.1:{port}/disk"),
                child: None,
                pidfile: Some(pidfile),
            }
        }
        other => return Err(format!("unknown server {other:?}")),
    };
    // Wait (bounded) until the server answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let uri = DeviceUri::parse(&server.uri).map_err(|e| e.to_string())?;
    loop {
        match NbdDevice::connect(
            &uri,
            NbdOptions {
                connections: 1,
                ..NbdOptions::default()
            },
        ) {
            Ok(_) => return Ok(server),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "{name} did not come up: {e} (log {})",
                    log.display()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Our client: `qd` threads of synchronous requests on one device.
fn run_ours(dev: &Arc<NbdDevice>, w: Workload, secs: u64) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let blocks = dev.size() / w.bs as u64;
    let threads: Vec<_> = (0..w.qd)
        .map(|t| {
            let (dev, stop, ops) = (dev.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut buf = vec![0x5au8; w.bs];
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                let mut seq = (t as u64 * blocks / w.qd as u64) % blocks;
                while !stop.load(Ordering::Relaxed) {
                    let blk = if w.random {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % blocks
                    } else {
                        seq = (seq + 1) % blocks;
                        seq
                    };
                    let off = blk * w.bs as u64;
                    if w.write {
                        dev.write_at(off, &buf).map_err(|e| e.to_string())?;
                    } else {
                        dev.read_at(off, &mut buf).map_err(|e| e.to_string())?;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        t.join()
            .map_err(|_| "benchmark thread panicked".to_string())??;
    }
    if w.write {
        dev.flush().map_err(|e| e.to_string())?;
    }
    Ok(ops.load(Ordering::Relaxed) as f64 / elapsed)
}

/// fio's nbd engine (libnbd) on the same URI; returns operations per second.
fn run_fio(uri: &str, w: Workload, secs: u64, size_mib: u64) -> Result<f64, String> {
    let rw = match (w.write, w.random) {
        (false, true) => "randread",
        (true, true) => "randwrite",
        (false, false) => "read",
        (true, false) => "write",
    };
    let out = Command::new("fio")
        .arg("--name=bench")
        .arg("--ioengine=nbd")
        .arg(format!("--uri={uri}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", w.bs))
        .arg(format!("--iodepth={}", w.qd))
        .arg(format!("--runtime={secs}"))
        .arg("--time_based")
        .arg(format!("--size={size_mib}M"))
        .arg("--output-format=json")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .find('{')
        .map(|i| &text[i..])
        .ok_or("fio printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))?;
    let dir = if w.write { "write" } else { "read" };
    v["jobs"][0][dir]["iops"]
        .as_f64()
        .ok_or_else(|| "fio JSON has no iops".to_string())
}

fn fmt_rate(w: Workload, ops: f64) -> String {
    if w.bs >= 1 << 20 {
        format!("{:.0} MB/s", ops * w.bs as f64 / 1e6)
    } else {
        format!("{ops:.0} IOPS")
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("rdlmfs-nbd-bench: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("rdlmfs-nbd-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let image = dir.path().join("bench.img");
    // Fill the image so reads hit allocated, cached blocks on every server.
    {
        let chunk = vec![0xa5u8; 1 << 20];
        let mut f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        for _ in 0..cli.size_mib {
            std::io::Write::write_all(&mut f, &chunk).map_err(|e| e.to_string())?;
        }
    }
    let have_fio = Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    println!(
        "rdlmfs-nbd-bench: {} MiB image, {} s per measurement, loopback; fio/libnbd baseline {}",
        cli.size_mib,
        cli.seconds,
        if have_fio {
            "available"
        } else {
            "NOT available (install fio)"
        }
    );
    println!(
        "{:<11} {:<18} {:>14} {:>14} {:>9}  conns",
        "server", "workload", "ours", "fio/libnbd", "ours/fio"
    );
    let mut ours_by_server: Vec<(String, Vec<f64>)> = Vec::new();
    for name in cli
        .servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let server = match start_server(name, dir.path(), &image) {
            Ok(s) => s,
            Err(e) => {
                println!("{name:<11} skipped: {e}");
                continue;
            }
        };
        let uri = DeviceUri::parse(&server.uri).map_err(|e| e.to_string())?;
        let dev = Arc::new(
            NbdDevice::connect(
                &uri,
                NbdOptions {
                    connections: cli.connections,
                    ..NbdOptions::default()
                },
            )
            .map_err(|e| e.to_string())?,
        );
        let mut ours_row = Vec::new();
        for w in WORKLOADS {
            let ours = run_ours(&dev, w, cli.seconds)?;
            ours_row.push(ours);
            let theirs = if have_fio {
                run_fio(&server.uri, w, cli.seconds, cli.size_mib).ok()
            } else {
                None
            };
            println!(
                "{:<11} {:<18} {:>14} {:>14} {:>9}  {}",
                server.name,
                w.name,
                fmt_rate(w, ours),
                theirs.map_or("-".into(), |t| fmt_rate(w, t)),
                theirs.map_or("-".into(), |t| format!("{:.2}", ours / t)),
                dev.connections()
            );
        }
        ours_by_server.push((server.name.to_string(), ours_row));
    }
    if let Some((_, base)) = ours_by_server.iter().find(|(n, _)| n == "rdlmfs-nbd") {
        println!(
            "\nour client on each server, relative to rdlmfs-nbd (higher = that server is faster):"
        );
        for (name, row) in &ours_by_server {
            let ratios: Vec<String> = row
                .iter()
                .zip(base)
                .zip(WORKLOADS)
                .map(|((o, b), w)| format!("{} {:.2}", w.name, o / b))
                .collect();
            println!("  {name:<11} {}", ratios.join(", "));
        }
    }
    Ok(())
}
