//! Property tests against a model.
//!
//! 1. Several threads issue random reads, writes, FUA writes, trims and
//!    flushes at once on one device; each thread owns a set of stripes, so
//!    the model of what each block must contain stays exact while the
//!    requests interleave freely in the device (and on the NBD connections).
//!    Run on every backend: file, NBD with several connections, NBD
//!    pipelined on one connection, and the fault device.
//! 2. Power cuts: the same workload runs on a [`FaultDevice`] (directly, and
//!    behind our NBD server with our client in front) until an armed crash
//!    point fires; afterwards every block must hold what its last completed
//!    flush (or FUA write) made durable, or a version written after it.

mod common;

use blockdev::nbd::server::{self, ServerConfig};
use blockdev::{
    BlockDevice, CrashPolicy, DeviceUri, FaultDevice, FileDevice, FileOptions, NbdDevice,
    NbdOptions,
};
use common::Scratch;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};

const BS: usize = 4096;
const BLOCKS: usize = 256;
const STRIPE: usize = 8;
const THREADS: usize = 4;

/// What a block may read as.
#[derive(Clone)]
enum Expect {
    Exact(Vec<u8>),
    /// Trimmed: the old contents or zeroes.
    OldOrZero(Vec<u8>),
}

impl Expect {
    fn admits(&self, got: &[u8]) -> bool {
        match self {
            Expect::Exact(v) => v == got,
            Expect::OldOrZero(v) => v == got || got.iter().all(|&b| b == 0),
        }
    }
}

fn owned_stripes(thread: usize) -> Vec<usize> {
    (0..BLOCKS / STRIPE)
        .filter(|s| s % THREADS == thread)
        .collect()
}

fn fill(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// One thread's random workload with an exact model of its own blocks.
fn worker(dev: &dyn BlockDevice, thread: usize, seed: u64, ops: usize) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed ^ (thread as u64) << 32);
    let stripes = owned_stripes(thread);
    let mut model: Vec<Option<Expect>> = vec![None; BLOCKS];
    for &s in &stripes {
        for m in &mut model[s * STRIPE..(s + 1) * STRIPE] {
            *m = Some(Expect::Exact(vec![0u8; BS]));
        }
    }
    for op in 0..ops {
        let s = stripes[rng.gen_range(0..stripes.len())];
        let first = s * STRIPE + rng.gen_range(0..STRIPE);
        let n = rng.gen_range(1..=(s + 1) * STRIPE - first);
        let (off, len) = ((first * BS) as u64, n * BS);
        let ctx = |what: &str| {
            format!(
                "seed {seed} thread {thread} op {op}: {what} blocks {first}..{}",
                first + n
            )
        };
        match rng.gen_range(0..10) {
            0..=3 => {
                let mut buf = vec![0u8; len];
                dev.read_at(off, &mut buf)
                    .map_err(|e| format!("{}: {e}", ctx("read")))?;
                for i in 0..n {
                    let want = model[first + i].as_ref().expect("owned block");
                    if !want.admits(&buf[i * BS..(i + 1) * BS]) {
                        return Err(format!(
                            "{}: block {} has wrong contents",
                            ctx("read"),
                            first + i
                        ));
                    }
                }
            }
            4..=6 => {
                let data = fill(&mut rng, len);
                dev.write_at(off, &data)
                    .map_err(|e| format!("{}: {e}", ctx("write")))?;
                for i in 0..n {
                    model[first + i] = Some(Expect::Exact(data[i * BS..(i + 1) * BS].to_vec()));
                }
            }
            7 => {
                let data = fill(&mut rng, len);
                dev.write_fua_at(off, &data)
                    .map_err(|e| format!("{}: {e}", ctx("fua write")))?;
                for i in 0..n {
                    model[first + i] = Some(Expect::Exact(data[i * BS..(i + 1) * BS].to_vec()));
                }
            }
            8 => {
                if dev.capabilities().trim {
                    dev.trim(off, len as u64)
                        .map_err(|e| format!("{}: {e}", ctx("trim")))?;
                    for m in &mut model[first..first + n] {
                        let old = match m.take() {
                            Some(Expect::Exact(v)) | Some(Expect::OldOrZero(v)) => v,
                            None => unreachable!("owned block"),
                        };
                        *m = Some(Expect::OldOrZero(old));
                    }
                }
            }
            _ => dev.flush().map_err(|e| format!("{}: {e}", ctx("flush")))?,
        }
    }
    Ok(())
}

fn run_threads(dev: Arc<dyn BlockDevice>, seed: u64, ops: usize) -> Result<(), String> {
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let d = dev.clone();
            std::thread::spawn(move || worker(&*d, t, seed, ops))
        })
        .collect();
    let mut first_err = Ok(());
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "worker panicked".to_string())
            .and_then(|r| r);
        if first_err.is_ok() {
            first_err = r;
        }
    }
    first_err
}

fn zero_image(s: &Scratch) -> std::path::PathBuf {
    let p = s.path("disk.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len((BLOCKS * BS) as u64)
        .unwrap();
    p
}

fn file_dev(p: &std::path::Path) -> FileDevice {
    FileDevice::open(
        p,
        FileOptions {
            block_size: Some(BS as u32),
            ..FileOptions::default()
        },
    )
    .unwrap()
}

/// Serves `dev` on a Unix socket and connects our client with `connections`.
fn over_nbd(
    s: &Scratch,
    dev: Arc<dyn BlockDevice>,
    connections: usize,
) -> (server::ServerHandle, Arc<dyn BlockDevice>) {
    let sock = s.path("srv.sock");
    let h = server::start(
        dev,
        ServerConfig {
            tcp: None,
            unix: Some(sock.clone()),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let client = NbdDevice::connect(
        &DeviceUri::parse(&common::unix_uri(&sock, "")).unwrap(),
        NbdOptions {
            connections,
            reconnect_attempts: 0,
            ..NbdOptions::default()
        },
    )
    .unwrap();
    assert_eq!(client.connections(), connections);
    (h, Arc::new(client))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn file_backend_matches_model(seed in any::<u64>()) {
        let s = Scratch::new("model-file");
        let dev: Arc<dyn BlockDevice> = Arc::new(file_dev(&zero_image(&s)));
        prop_assert_eq!(run_threads(dev, seed, 150), Ok(()));
    }

    #[test]
    fn nbd_multi_connection_matches_model(seed in any::<u64>()) {
        let s = Scratch::new("model-nbd4");
        let (_srv, dev) = over_nbd(&s, Arc::new(file_dev(&zero_image(&s))), 4);
        prop_assert_eq!(run_threads(dev, seed, 150), Ok(()));
    }

    #[test]
    fn nbd_pipelined_single_connection_matches_model(seed in any::<u64>()) {
        let s = Scratch::new("model-nbd1");
        let (_srv, dev) = over_nbd(&s, Arc::new(file_dev(&zero_image(&s))), 1);
        prop_assert_eq!(run_threads(dev, seed, 150), Ok(()));
    }

    #[test]
    fn fault_device_matches_model(seed in any::<u64>()) {
        let s = Scratch::new("model-fault");
        let dev: Arc<dyn BlockDevice> = Arc::new(FaultDevice::new(file_dev(&zero_image(&s)), seed));
        prop_assert_eq!(run_threads(dev, seed, 150), Ok(()));
    }

    #[test]
    fn power_cut_keeps_everything_flushed(seed in any::<u64>(), crash_at in 1u64..400) {
        let s = Scratch::new("crash");
        let fault = Arc::new(FaultDevice::new(file_dev(&zero_image(&s)), seed));
        fault.crash_after_writes(crash_at, CrashPolicy::Random { seed });
        let r = crash_check(fault.clone(), fault, seed);
        prop_assert_eq!(r, Ok(()));
    }

    #[test]
    fn power_cut_behind_nbd_keeps_everything_flushed(seed in any::<u64>(), crash_at in 1u64..400) {
        let s = Scratch::new("crash-nbd");
        let fault = Arc::new(FaultDevice::new(file_dev(&zero_image(&s)), seed));
        fault.crash_after_writes(crash_at, CrashPolicy::Random { seed });
        let (_srv, client) = over_nbd(&s, fault.clone(), 2);
        let r = crash_check(client, fault, seed);
        prop_assert_eq!(r, Ok(()));
    }
}

/// Per block: what the last completed flush made durable (any of these) and
/// every version written since (any may have reached the media).
#[derive(Clone)]
struct Durability {
    durable: Vec<Vec<u8>>,
    since: Vec<Vec<u8>>,
}

/// Runs writes, FUA writes, trims and flushes from several threads through
/// `dev` until the crash point armed on `fault` fires, then checks the media.
fn crash_check(
    dev: Arc<dyn BlockDevice>,
    fault: Arc<FaultDevice<FileDevice>>,
    seed: u64,
) -> Result<(), String> {
    let model = Arc::new(Mutex::new(vec![
        Durability {
            durable: vec![vec![0u8; BS]],
            since: Vec::new(),
        };
        BLOCKS
    ]));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dev, model) = (dev.clone(), model.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed ^ (t as u64) << 40);
                let stripes = owned_stripes(t);
                let mut mine: Vec<usize> = Vec::new();
                for _ in 0..400 {
                    let s = stripes[rng.gen_range(0..stripes.len())];
                    let first = s * STRIPE + rng.gen_range(0..STRIPE);
                    let n = rng.gen_range(1..=(s + 1) * STRIPE - first);
                    let off = (first * BS) as u64;
                    match rng.gen_range(0..8) {
                        0..=4 => {
                            let fua = rng.gen_bool(0.2);
                            let data = fill(&mut rng, n * BS);
                            // Record before the call: a write whose outcome
                            // is an error may or may not have landed.
                            {
                                let mut m = model.lock().unwrap();
                                for i in 0..n {
                                    m[first + i].since.push(data[i * BS..(i + 1) * BS].to_vec());
                                }
                            }
                            let r = if fua {
                                dev.write_fua_at(off, &data)
                            } else {
                                dev.write_at(off, &data)
                            };
                            if r.is_err() {
                                return;
                            }
                            let mut m = model.lock().unwrap();
                            for i in 0..n {
                                let b = &mut m[first + i];
                                if fua {
                                    b.durable = vec![data[i * BS..(i + 1) * BS].to_vec()];
                                    b.since.clear();
                                }
                            }
                            mine.extend(first..first + n);
                        }
                        5 => {
                            {
                                let mut m = model.lock().unwrap();
                                for b in &mut m[first..first + n] {
                                    b.since.push(vec![0u8; BS]);
                                }
                            }
                            if dev.trim(off, (n * BS) as u64).is_err() {
                                return;
                            }
                            mine.extend(first..first + n);
                        }
                        _ => {
                            // What this thread wrote before the flush started
                            // must be durable once it returns.
                            let snapshot: Vec<(usize, Vec<u8>)> = {
                                let m = model.lock().unwrap();
                                mine.iter()
                                    .map(|&b| (b, m[b].since.last().cloned().unwrap_or_default()))
                                    .collect()
                            };
                            if dev.flush().is_err() {
                                return;
                            }
                            let mut m = model.lock().unwrap();
                            for (b, latest) in snapshot {
                                if latest.is_empty() {
                                    continue;
                                }
                                let d = &mut m[b];
                                // The latest version is durable; a trim's
                                // zeroes may also have kept the old data.
                                let mut durable = vec![latest.clone()];
                                if latest.iter().all(|&x| x == 0) {
                                    durable.extend(d.durable.iter().cloned());
                                    durable.extend(d.since.iter().cloned());
                                }
                                let pos = d
                                    .since
                                    .iter()
                                    .rposition(|v| *v == latest)
                                    .map_or(0, |p| p + 1);
                                d.since.drain(..pos);
                                d.durable = durable;
                            }
                            mine.clear();
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "worker panicked".to_string())?;
    }
    if !fault.is_crashed() {
        fault
            .crash(CrashPolicy::Random { seed })
            .map_err(|e| e.to_string())?;
    }
    let media = fault.inner();
    let m = model.lock().unwrap();
    let mut buf = vec![0u8; BS];
    for (b, d) in m.iter().enumerate() {
        media
            .read_at((b * BS) as u64, &mut buf)
            .map_err(|e| e.to_string())?;
        if !d.durable.contains(&buf) && !d.since.contains(&buf) {
            return Err(format!(
                "seed {seed}: after the power cut block {b} holds neither its durable contents nor a later version"
            ));
        }
    }
    Ok(())
}
