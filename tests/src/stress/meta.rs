//! `rdlmfs-stress meta`: fsstress-style random operations from concurrent
//! workers, each through one of several paths to the same directory, then a
//! check that every path shows the same tree.
//!
//! Layout: the run creates `DIR/stress.<seed>/` (created through the first
//! path, and expected to appear through every other one) and works only
//! below it. Entry names are drawn from a small pool (`e0`..`e23`) so that
//! workers collide often, which is the point of the exercise.
//!
//! Reproducibility: each worker's RNG is seeded from the run seed and its
//! id. With one worker (`-p 1`) a run is fully deterministic; with more, each
//! worker's choices are seeded but the interleaving is not, so a rerun
//! repeats the same mix, not the same history.
//!
//! Bounds: `--depth` is exact for creation and directories are only renamed
//! to the same depth or shallower; `--max-entries` is soft, since workers
//! check a shared count before creating and racing renames make it drift a
//! little. An interrupted run leaves its tree, and a rerun with the same
//! seed refuses to start until it is removed.
//!
//! This file owns the workers, the operations, the hang watchdog, the
//! summary, and the exit code; the errno model is in [`super::model`] and the
//! final check in [`super::tree`].

use super::model::{classify, Op, Verdict};
use super::tree::{self, Kind};
use super::{errno_name, io_errno, EXIT_IMPOSSIBLE, EXIT_MISMATCH, EXIT_OK, EXIT_SETUP};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Size of the name pool per directory: small, so names collide.
const NAME_POOL: u32 = 24;
/// `user.*` xattr names used: few, so xattr space per inode stays small.
const XATTR_NAMES: u32 = 5;
/// Largest xattr value written.
const XATTR_MAX: usize = 64;
/// Largest single write.
const WRITE_MAX: u64 = 16 * 1024;
/// How many differences are printed per pair of paths.
const MAX_DIFFS_SHOWN: usize = 20;
/// How many impossible errors are printed as they happen.
const MAX_IMPOSSIBLE_SHOWN: usize = 20;
/// Progress line interval for long runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Relative weights of the operations a worker chooses from.
const WEIGHTS: [(Op, u32); 15] = [
    (Op::Create, 10),
    (Op::Mkdir, 3),
    (Op::Rmdir, 5),
    (Op::Unlink, 8),
    (Op::Rename, 10),
    (Op::Link, 4),
    (Op::Symlink, 4),
    (Op::Chmod, 4),
    (Op::Chown, 3),
    (Op::Utimes, 3),
    (Op::Setxattr, 6),
    (Op::Removexattr, 3),
    (Op::Write, 14),
    (Op::Truncate, 6),
    (Op::Fsync, 3),
];

/// What `rdlmfs-stress meta` was asked to do.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// The same directory through different paths; worker `i` uses
    /// `dirs[i % dirs.len()]`.
    pub dirs: Vec<PathBuf>,
    pub workers: usize,
    /// Operations per worker; `None` means "until `duration`".
    pub ops: Option<u64>,
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Soft bound on the number of names in the tree.
    pub max_entries: u64,
    /// Deepest entry, in path components below the tree root.
    pub depth: usize,
    pub max_file_size: u64,
    pub keep: bool,
    pub verbose: bool,
    /// A single operation taking longer than this is reported as hung.
    pub stall_timeout: Duration,
}

/// Counts for one operation.
#[derive(Clone, Debug, Default)]
pub struct OpStats {
    pub ok: u64,
    /// No suitable target was found (e.g. unlink in an empty tree).
    pub skipped: u64,
    pub errors: BTreeMap<i32, u64>,
}

type Stats = BTreeMap<Op, OpStats>;

/// State shared by the workers and the watchdog.
struct Shared {
    opts: MetaOptions,
    /// Approximate number of names in the tree: adjusted by each worker's
    /// successful creates and removes, so racing renames can make it drift
    /// a little. It only bounds growth.
    entries: AtomicI64,
    deadline: Option<Instant>,
    ops_done: AtomicU64,
    impossible: AtomicU64,
    stop: AtomicBool,
    /// Per worker: the operation in progress and when it started, for the
    /// hang watchdog.
    current: Vec<Mutex<Option<(Instant, String)>>>,
}

/// splitmix64: turns (seed, worker id) into well separated RNG seeds, so
/// seed S worker 1 is unrelated to seed S+1 worker 0.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The RNG of worker `id` in a run with `seed`.
pub fn worker_rng(seed: u64, id: usize) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(id as u64 + 1)))
}

/// The name of the tree a run with `seed` works in, below each DIR.
pub fn tree_name(seed: u64) -> String {
    format!("stress.{seed}")
}

/// Which entries a walk may return.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Any,
    Dir,
    NonDir,
}

impl Want {
    fn accepts(self, k: Kind) -> bool {
        match self {
            Want::Any => true,
            Want::Dir => k == Kind::Dir,
            Want::NonDir => k != Kind::Dir,
        }
    }
}

struct Worker {
    id: usize,
    /// `DIR/stress.<seed>` through this worker's path.
    base: PathBuf,
    rng: StdRng,
    shared: Arc<Shared>,
    stats: Stats,
    /// Owners chown may set: anything for root, the runner's groups otherwise.
    uids: Vec<Option<u32>>,
    gids: Vec<Option<u32>>,
    seq: u64,
}

fn cpath(p: &Path) -> Result<CString, i32> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)
}

fn last_errno() -> i32 {
    io_errno(&io::Error::last_os_error())
}

/// A libc call's "0 on success, -1 and errno on failure" as a Result.
fn zero_or_errno(r: libc::c_int) -> Result<(), i32> {
    if r == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn rel_str(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

/// A random permission mode. Owner `rwx` is always kept so the tree stays
/// usable by a non-root runner and removable at the end (files too, since a
/// chmod through a symlink may land on a directory); the sticky bit is
/// dropped because `fs.protected_regular` makes O_CREAT fail with EACCES
/// even for root in sticky world-writable directories.
fn random_mode(rng: &mut StdRng) -> u32 {
    (rng.gen::<u32>() & 0o6777) | 0o700
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>) -> Worker {
        let o = &shared.opts;
        let base = o.dirs[id % o.dirs.len()].join(tree_name(o.seed));
        // SAFETY: geteuid/getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uids, gids) = if euid == 0 {
            // Any ids will do for root; a few, so owners repeat and change.
            let ids = vec![None, Some(0), Some(1), Some(2), Some(65534)];
            (ids.clone(), ids)
        } else {
            let mut gids = vec![None, Some(egid)];
            gids.extend(supplementary_groups().into_iter().map(Some));
            (vec![None], gids)
        };
        Worker {
            id,
            base,
            rng: worker_rng(o.seed, id),
            shared,
            stats: Stats::new(),
            uids,
            gids,
            seq: 0,
        }
    }

    fn opts(&self) -> &MetaOptions {
        &self.shared.opts
    }

    fn run(mut self) -> Stats {
        let limit = self.opts().ops.unwrap_or(u64::MAX);
        let total: u32 = WEIGHTS.iter().map(|w| w.1).sum();
        let no_create: u32 = WEIGHTS
            .iter()
            .filter(|w| !w.0.creates_entry())
            .map(|w| w.1)
            .sum();
        for n in 0..limit {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if self.shared.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.seq = n;
            let full =
                self.shared.entries.load(Ordering::Relaxed) >= self.opts().max_entries as i64;
            let mut pick = self.rng.gen_range(0..if full { no_create } else { total });
            let mut op = Op::Fsync;
            for &(o, w) in WEIGHTS.iter().filter(|w| !full || !w.0.creates_entry()) {
                if pick < w {
                    op = o;
                    break;
                }
                pick -= w;
            }
            self.one(op);
            self.shared.ops_done.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
    }

    fn one(&mut self, op: Op) {
        let done = match op {
            Op::Create => self.op_create(),
            Op::Mkdir => self.op_mkdir(),
            Op::Rmdir => self.op_remove(Op::Rmdir),
            Op::Unlink => self.op_remove(Op::Unlink),
            Op::Rename => self.op_rename(),
            Op::Link => self.op_link(),
            Op::Symlink => self.op_symlink(),
            Op::Chmod => self.op_chmod(),
            Op::Chown => self.op_chown(),
            Op::Utimes => self.op_utimes(),
            Op::Setxattr => self.op_setxattr(),
            Op::Removexattr => self.op_removexattr(),
            Op::Write => self.op_write(),
            Op::Truncate => self.op_truncate(),
            Op::Fsync => self.op_fsync(),
            // Never chosen (not in WEIGHTS): readdir is how targets are found.
            Op::Readdir => true,
        };
        if !done {
            self.stats.entry(op).or_default().skipped += 1;
        }
    }

    /// Publishes the operation about to run, for the hang watchdog.
    fn begin(&self, desc: &str) {
        let mut cur = self.shared.current[self.id]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *cur = Some((Instant::now(), desc.to_string()));
    }

    /// Records the result of an operation: counts it, and reports it at once
    /// if the model says it is impossible.
    fn end(&mut self, op: Op, desc: &str, res: Result<(), i32>) {
        *self.shared.current[self.id]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let st = self.stats.entry(op).or_default();
        match res {
            Ok(()) => st.ok += 1,
            Err(e) => *st.errors.entry(e).or_default() += 1,
        }
        if self.opts().verbose {
            let r = match res {
                Ok(()) => "ok".to_string(),
                Err(e) => errno_name(e),
            };
            println!("w{} #{} {desc}: {r}", self.id, self.seq);
        }
        if let Err(e) = res {
            if let Verdict::Impossible(why) = classify(op, e) {
                let n = self.shared.impossible.fetch_add(1, Ordering::Relaxed);
                if (n as usize) < MAX_IMPOSSIBLE_SHOWN {
                    eprintln!(
                        "IMPOSSIBLE: worker {} op #{} through {}: {desc}: {} ({}) -- {why}",
                        self.id,
                        self.seq,
                        self.base.display(),
                        errno_name(e),
                        io::Error::from_raw_os_error(e)
                    );
                }
            }
        }
    }

    /// Runs one syscall-level operation with watchdog and accounting.
    fn exec(
        &mut self,
        op: Op,
        desc: String,
        f: impl FnOnce() -> Result<(), i32>,
    ) -> Result<(), i32> {
        self.begin(&desc);
        let res = f();
        self.end(op, &desc, res);
        res
    }

    /// The entries of a directory, sorted so a single worker is
    /// deterministic. Failures are counted as readdir errors.
    fn list(&mut self, rel: &Path) -> Option<Vec<(String, Kind)>> {
        let path = self.base.join(rel);
        let mut out = Vec::new();
        let res = self.exec(Op::Readdir, format!("readdir {}", rel_str(rel)), || {
            let rd = fs::read_dir(&path).map_err(|e| io_errno(&e))?;
            for ent in rd {
                let ent = ent.map_err(|e| io_errno(&e))?;
                let kind = Kind::of(ent.file_type().map_err(|e| io_errno(&e))?);
                out.push((ent.file_name().to_string_lossy().into_owned(), kind));
            }
            Ok(())
        });
        res.ok()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }

    /// A directory to create a name in, and its depth (root = 0). Only
    /// directories whose children stay within `--depth` are returned.
    fn pick_dir(&mut self) -> Option<(PathBuf, usize)> {
        let max = self.opts().depth;
        let mut rel = PathBuf::new();
        let mut depth = 0;
        loop {
            if depth + 2 > max || self.rng.gen_bool(0.4) {
                return Some((rel, depth));
            }
            let dirs: Vec<String> = self
                .list(&rel)?
                .into_iter()
                .filter(|e| e.1 == Kind::Dir)
                .map(|e| e.0)
                .collect();
            let Some(d) = dirs.choose(&mut self.rng) else {
                return Some((rel, depth));
            };
            rel.push(d);
            depth += 1;
        }
    }

    /// An existing entry (never the tree root), its kind as listed, and its
    /// depth. Walks down from the root; gives up after a few walks.
    fn pick_entry(&mut self, want: Want) -> Option<(PathBuf, Kind, usize)> {
        for _ in 0..3 {
            let mut rel = PathBuf::new();
            let mut depth = 0;
            loop {
                let mut entries = self.list(&rel)?;
                let here_ok = depth > 0 && want.accepts(Kind::Dir);
                // Looking for a directory (rmdir), walk down towards the
                // leaves, where empty directories are.
                let stop = if want == Want::Dir {
                    entries.retain(|e| e.1 == Kind::Dir);
                    0.15
                } else {
                    0.25
                };
                if entries.is_empty() || (here_ok && self.rng.gen_bool(stop)) {
                    if here_ok {
                        return Some((rel, Kind::Dir, depth));
                    }
                    break;
                }
                let Some((name, kind)) = entries.choose(&mut self.rng).cloned() else {
                    break;
                };
                let child = rel.join(&name);
                if kind == Kind::Dir && (!want.accepts(kind) || self.rng.gen_bool(0.6)) {
                    rel = child;
                    depth += 1;
                    continue;
                }
                if want.accepts(kind) {
                    return Some((child, kind, depth + 1));
                }
                break;
            }
        }
        None
    }

    fn new_name(&mut self) -> String {
        format!("e{}", self.rng.gen_range(0..NAME_POOL))
    }

    fn random_data(&mut self, max: u64) -> Vec<u8> {
        let len = self.rng.gen_range(0..=max) as usize;
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        data
    }

    fn added(&self) {
        self.shared.entries.fetch_add(1, Ordering::Relaxed);
    }

    fn removed(&self) {
        self.shared.entries.fetch_sub(1, Ordering::Relaxed);
    }

    fn op_create(&mut self) -> bool {
        let Some((dir, _)) = self.pick_dir() else {
            return false;
        };
        let rel = dir.join(self.new_name());
        let mode = random_mode(&mut self.rng);
        let max = self.opts().max_file_size.min(WRITE_MAX);
        let data = self.random_data(max);
        let path = self.base.join(&rel);
        let desc = format!(
            "create {} mode {mode:o} with {} bytes",
            rel_str(&rel),
            data.len()
        );
        let mut created = false;
        let _ = self.exec(Op::Create, desc, || {
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| io_errno(&e))?;
            // The name exists even if the initial write then fails.
            created = true;
            f.write_all_at(&data, 0).map_err(|e| io_errno(&e))
        });
        if created {
            self.added();
        }
        true
    }

    fn op_mkdir(&mut self) -> bool {
        let Some((dir, _)) = self.pick_dir() else {
            return false;
        };
        let rel = dir.join(self.new_name());
        let mode = random_mode(&mut self.rng);
        let path = self.base.join(&rel);
        let desc = format!("mkdir {} mode {mode:o}", rel_str(&rel));
        let res = self.exec(Op::Mkdir, desc, || {
            fs::DirBuilder::new()
                .mode(mode)
                .create(&path)
                .map_err(|e| io_errno(&e))
        });
        if res.is_ok() {
            self.added();
        }
        true
    }

    fn op_remove(&mut self, op: Op) -> bool {
        let want = if op == Op::Rmdir {
            Want::Dir
        } else {
            Want::NonDir
        };
        let Some((rel, _, _)) = self.pick_entry(want) else {
            return false;
        };
        let path = self.base.join(&rel);
        let desc = format!("{op} {}", rel_str(&rel));
        let res = self.exec(op, desc, || {
            let r = if op == Op::Rmdir {
                fs::remove_dir(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(|e| io_errno(&e))
        });
        if res.is_ok() {
            self.removed();
        }
        true
    }

    fn op_rename(&mut self) -> bool {
        let Some((src, kind, src_depth)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let src_parent = src.parent().map(Path::to_path_buf).unwrap_or_default();
        // Directories only move to the same depth or shallower, so the tree
        // never grows deeper than --depth.
        let dst = match self.rng.gen_range(0..3) {
            0 => {
                // Onto an existing entry, to exercise replacing renames.
                let Some((d, _, d_depth)) = self.pick_entry(Want::Any) else {
                    return false;
                };
                if kind == Kind::Dir && d_depth > src_depth {
                    src_parent.join(self.new_name())
                } else {
                    d
                }
            }
            1 => src_parent.join(self.new_name()),
            _ => {
                let Some((d, d_depth)) = self.pick_dir() else {
                    return false;
                };
                if kind == Kind::Dir && d_depth + 1 > src_depth {
                    src_parent.join(self.new_name())
                } else {
                    d.join(self.new_name())
                }
            }
        };
        let (from, to) = (self.base.join(&src), self.base.join(&dst));
        // Whether the rename will replace another inode, to keep the entry
        // count honest; racy, which only makes the count approximate.
        let replaced = match (fs::symlink_metadata(&from), fs::symlink_metadata(&to)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
            _ => false,
        };
        let desc = format!("rename {} -> {}", rel_str(&src), rel_str(&dst));
        let res = self.exec(Op::Rename, desc, || {
            fs::rename(&from, &to).map_err(|e| io_errno(&e))
        });
        if res.is_ok() && replaced {
            self.removed();
        }
        true
    }

    fn op_link(&mut self) -> bool {
        let Some((src, _, _)) = self.pick_entry(Want::NonDir) else {
            return false;
        };
        let Some((dir, _)) = self.pick_dir() else {
            return false;
        };
        let dst = dir.join(self.new_name());
        let (from, to) = (self.base.join(&src), self.base.join(&dst));
        let desc = format!("link {} -> {}", rel_str(&src), rel_str(&dst));
        // linkat without AT_SYMLINK_FOLLOW: a symlink source is linked itself.
        let res = self.exec(Op::Link, desc, || {
            fs::hard_link(&from, &to).map_err(|e| io_errno(&e))
        });
        if res.is_ok() {
            self.added();
        }
        true
    }

    fn op_symlink(&mut self) -> bool {
        let Some((dir, _)) = self.pick_dir() else {
            return false;
        };
        let rel = dir.join(self.new_name());
        // Relative and downward only: resolving it never leaves the tree,
        // wherever the link is later renamed to.
        let target = if self.rng.gen_bool(0.5) {
            self.new_name()
        } else {
            format!("{}/{}", self.new_name(), self.new_name())
        };
        let path = self.base.join(&rel);
        let desc = format!("symlink {} -> {target}", rel_str(&rel));
        let res = self.exec(Op::Symlink, desc, || {
            std::os::unix::fs::symlink(&target, &path).map_err(|e| io_errno(&e))
        });
        if res.is_ok() {
            self.added();
        }
        true
    }

    fn op_chmod(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let mode = random_mode(&mut self.rng);
        let path = self.base.join(&rel);
        let desc = format!("chmod {} {mode:o}", rel_str(&rel));
        // chmod(2) follows symlinks; targets stay inside the tree.
        self.exec(Op::Chmod, desc, || {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| io_errno(&e))
        })
        .ok();
        true
    }

    fn op_chown(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let uid = *self.uids.choose(&mut self.rng).unwrap_or(&None);
        let gid = *self.gids.choose(&mut self.rng).unwrap_or(&None);
        let path = self.base.join(&rel);
        let show = |x: Option<u32>| x.map_or("-".to_string(), |v| v.to_string());
        let desc = format!("lchown {} {}:{}", rel_str(&rel), show(uid), show(gid));
        self.exec(Op::Chown, desc, || {
            std::os::unix::fs::lchown(&path, uid, gid).map_err(|e| io_errno(&e))
        })
        .ok();
        true
    }

    fn op_utimes(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let mut times = [libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }; 2];
        for t in &mut times {
            if self.rng.gen_bool(0.2) {
                t.tv_nsec = libc::UTIME_NOW;
            } else {
                // Between 2001 and 2033; nanoseconds exercise precision.
                t.tv_sec = self.rng.gen_range(1_000_000_000..2_000_000_000);
                t.tv_nsec = self.rng.gen_range(0..1_000_000_000);
            }
        }
        let path = self.base.join(&rel);
        let desc = format!(
            "utimensat {} atime {}.{:09} mtime {}.{:09} nofollow",
            rel_str(&rel),
            times[0].tv_sec,
            times[0].tv_nsec,
            times[1].tv_sec,
            times[1].tv_nsec
        );
        self.exec(Op::Utimes, desc, || {
            let c = cpath(&path)?;
            // SAFETY: c is NUL-terminated, times has two elements.
            let r = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            zero_or_errno(r)
        })
        .ok();
        true
    }

    fn xattr_name(&mut self) -> CString {
        let n = self.rng.gen_range(0..XATTR_NAMES);
        CString::new(format!("user.x{n}")).unwrap_or_default()
    }

    fn op_setxattr(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let name = self.xattr_name();
        // Printable values keep reports readable.
        let len = self.rng.gen_range(0..=XATTR_MAX);
        let value: Vec<u8> = (0..len).map(|_| self.rng.gen_range(b'a'..=b'z')).collect();
        let (flags, fname) = match self.rng.gen_range(0..10) {
            0 => (libc::XATTR_CREATE, "create"),
            1 => (libc::XATTR_REPLACE, "replace"),
            _ => (0, "set"),
        };
        let path = self.base.join(&rel);
        let desc = format!(
            "setxattr {} {} ({} bytes, {fname})",
            rel_str(&rel),
            name.to_string_lossy(),
            value.len()
        );
        // setxattr(2) follows symlinks: Linux refuses user.* on symlinks
        // themselves, and the targets stay inside the tree.
        self.exec(Op::Setxattr, desc, || {
            let c = cpath(&path)?;
            // SAFETY: strings are NUL-terminated; value is valid for its length.
            let r = unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            zero_or_errno(r)
        })
        .ok();
        true
    }

    fn op_removexattr(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let name = self.xattr_name();
        let path = self.base.join(&rel);
        let desc = format!("removexattr {} {}", rel_str(&rel), name.to_string_lossy());
        self.exec(Op::Removexattr, desc, || {
            let c = cpath(&path)?;
            // SAFETY: both strings are NUL-terminated.
            let r = unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) };
            zero_or_errno(r)
        })
        .ok();
        true
    }

    fn op_write(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::NonDir) else {
            return false;
        };
        let max = self.opts().max_file_size;
        let data = self.random_data(max.min(WRITE_MAX));
        let off = self.rng.gen_range(0..=max - data.len() as u64);
        let path = self.base.join(&rel);
        let desc = format!("write {} {} bytes at {off}", rel_str(&rel), data.len());
        self.exec(Op::Write, desc, || {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_errno(&e))?;
            f.write_all_at(&data, off).map_err(|e| io_errno(&e))
        })
        .ok();
        true
    }

    fn op_truncate(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::NonDir) else {
            return false;
        };
        let len = self.rng.gen_range(0..=self.opts().max_file_size);
        let path = self.base.join(&rel);
        let desc = format!("truncate {} {len}", rel_str(&rel));
        self.exec(Op::Truncate, desc, || {
            let c = cpath(&path)?;
            // SAFETY: c is NUL-terminated.
            let r = unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) };
            zero_or_errno(r)
        })
        .ok();
        true
    }

    fn op_fsync(&mut self) -> bool {
        let Some((rel, _, _)) = self.pick_entry(Want::Any) else {
            return false;
        };
        let path = self.base.join(&rel);
        let desc = format!("fsync {}", rel_str(&rel));
        self.exec(Op::Fsync, desc, || {
            let f = fs::File::open(&path).map_err(|e| io_errno(&e))?;
            f.sync_all().map_err(|e| io_errno(&e))
        })
        .ok();
        true
    }
}

fn supplementary_groups() -> Vec<u32> {
    // SAFETY: a zero-length query returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut g = vec![0 as libc::gid_t; n as usize];
    // SAFETY: g has room for n entries.
    let m = unsafe { libc::getgroups(n, g.as_mut_ptr()) };
    if m < 0 {
        return Vec::new();
    }
    g.truncate(m as usize);
    g
}

fn setup_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rdlmfs-stress meta: {msg}");
    EXIT_SETUP
}

/// Runs `rdlmfs-stress meta` and returns the exit code. `rerun` is the
/// command line that repeats this run, printed on failure.
pub fn run(opts: MetaOptions, rerun: &str) -> i32 {
    let o = &opts;
    if o.dirs.is_empty() || o.workers == 0 || o.depth == 0 || o.max_entries == 0 {
        return setup_error("need at least one DIR, one worker, --depth >= 1, --max-entries >= 1");
    }
    let bases: Vec<PathBuf> = o.dirs.iter().map(|d| d.join(tree_name(o.seed))).collect();
    println!(
        "rdlmfs-stress meta: seed {}, {} worker(s) over {} path(s), {}{}, tree {}",
        o.seed,
        o.workers,
        o.dirs.len(),
        o.ops.map_or("unlimited ops".to_string(), |n| format!(
            "{n} ops per worker"
        )),
        o.duration.map_or(String::new(), |d| format!(
            ", at most {:.1} s",
            d.as_secs_f64()
        )),
        bases[0].display()
    );
    let setup_mismatches = match create_trees(o, &bases) {
        Ok(m) => m,
        Err(code) => return code,
    };

    let start = Instant::now();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        entries: AtomicI64::new(0),
        deadline: o.duration.map(|d| start + d),
        ops_done: AtomicU64::new(0),
        impossible: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        current: (0..o.workers).map(|_| Mutex::new(None)).collect(),
    });
    let mut handles = Vec::new();
    for id in 0..o.workers {
        let w = Worker::new(id, shared.clone());
        let spawned = thread::Builder::new()
            .name(format!("stress-w{id}"))
            .spawn(move || w.run());
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                let _ = remove_trees(&bases);
                return setup_error(format!("cannot start worker thread: {e}"));
            }
        }
    }
    watchdog(&shared, &handles, &bases, start, rerun);
    let mut stats = Stats::new();
    for h in handles {
        match h.join() {
            Ok(s) => merge(&mut stats, s),
            Err(_) => {
                // A worker panicked: a bug in this tool, not the file system.
                eprintln!("rdlmfs-stress meta: a worker thread panicked (bug in the tool)");
                return EXIT_SETUP;
            }
        }
    }
    print_summary(
        &stats,
        shared.ops_done.load(Ordering::Relaxed),
        start.elapsed(),
    );

    for m in &setup_mismatches {
        println!("MISMATCH at setup: {m}");
    }
    let (views_differ, walk_failed) = compare_views(&bases);
    let mismatch = views_differ || !setup_mismatches.is_empty();
    let impossible = shared.impossible.load(Ordering::Relaxed);
    let mut code = EXIT_OK;
    if mismatch {
        code = EXIT_MISMATCH;
    }
    // An impossible errno is the more basic failure; it often causes the
    // mismatch too.
    if impossible > 0 || walk_failed {
        code = EXIT_IMPOSSIBLE;
    }
    if o.keep {
        println!("kept: {}", bases[0].display());
    } else if let Err(e) = remove_trees(&bases) {
        println!("IMPOSSIBLE: removing the tree: {e}");
        code = EXIT_IMPOSSIBLE;
    }
    if code == EXIT_OK {
        println!("OK: no impossible errors, every path shows the same tree");
        return code;
    }
    let mut why = Vec::new();
    if impossible > 0 {
        why.push(format!("{impossible} impossible errors"));
    }
    if walk_failed {
        why.push("the final walk failed".to_string());
    }
    if mismatch {
        why.push("the paths show different trees".to_string());
    }
    println!("FAILED (exit {code}): {}", why.join(", "));
    println!("rerun: {rerun}");
    if !o.keep {
        println!("hint: add --keep to inspect the tree after the run");
    }
    code
}

/// Creates the tree root through the first path and checks that every
/// other path shows it. Returns the setup mismatches (paths that did not
/// show it), or the exit code of a setup error.
fn create_trees(o: &MetaOptions, bases: &[PathBuf]) -> Result<Vec<String>, i32> {
    for d in &o.dirs {
        match fs::metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(setup_error(format!("{} is not a directory", d.display()))),
            Err(e) => return Err(setup_error(format!("{}: {e}", d.display()))),
        }
    }
    if let Err(e) = fs::DirBuilder::new().mode(0o755).create(&bases[0]) {
        let hint = if e.kind() == io::ErrorKind::AlreadyExists {
            " (left by a --keep or interrupted run? remove it, or pick another --seed)"
        } else {
            ""
        };
        return Err(setup_error(format!(
            "mkdir {}: {e}{hint}",
            bases[0].display()
        )));
    }
    // If another path does not show the new directory, the paths are not
    // one directory (or the file system is not coherent). The run goes on
    // in a tree of its own there, so the final check shows the whole extent
    // of the mismatch.
    let mut mismatches = Vec::new();
    for b in &bases[1..] {
        let failed = match fs::symlink_metadata(b) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => format!("{} exists and is not a directory", b.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                mismatches.push(format!(
                    "{} was created but {} does not exist: are these paths the same directory?",
                    bases[0].display(),
                    b.display()
                ));
                match fs::DirBuilder::new().mode(0o755).create(b) {
                    Ok(()) => continue,
                    Err(e) => format!("mkdir {}: {e}", b.display()),
                }
            }
            Err(e) => format!("stat {}: {e}", b.display()),
        };
        let _ = remove_trees(bases);
        return Err(setup_error(failed));
    }
    Ok(mismatches)
}

/// Waits for the workers, printing progress, and bounds every operation
/// by --stall-timeout: the workers are in syscalls on a file system that
/// may hang (a lost lock, a dead node), and a hung thread can be neither
/// joined nor cancelled, so a hang ends the process with exit code 2.
fn watchdog(
    shared: &Shared,
    handles: &[thread::JoinHandle<Stats>],
    bases: &[PathBuf],
    start: Instant,
    rerun: &str,
) {
    let mut next_progress = start + PROGRESS_EVERY;
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        for (id, cur) in shared.current.iter().enumerate() {
            let cur = cur.lock().unwrap_or_else(|e| e.into_inner());
            let Some((since, desc)) = cur.as_ref() else {
                continue;
            };
            let stuck = now.duration_since(*since);
            if stuck > shared.opts.stall_timeout {
                println!(
                    "HUNG: worker {id} through {} has been in `{desc}` for {:.1} s \
                     (--stall-timeout), after {} ops in all; the tree is left in place",
                    bases[id % bases.len()].display(),
                    stuck.as_secs_f64(),
                    shared.ops_done.load(Ordering::Relaxed)
                );
                println!("FAILED (exit {EXIT_IMPOSSIBLE}): an operation hung");
                println!("rerun: {rerun}");
                let _ = io::stdout().flush();
                std::process::exit(EXIT_IMPOSSIBLE);
            }
        }
        if now >= next_progress {
            let n = shared.ops_done.load(Ordering::Relaxed);
            let t = now.duration_since(start).as_secs_f64();
            println!("  {t:6.1}s  {n} ops, {:.0} ops/s", n as f64 / t);
            next_progress += PROGRESS_EVERY;
        }
    }
}

/// Walks the tree through every path and diffs each against the first,
/// printing the first differences. Returns (some view differs, a walk
/// failed).
fn compare_views(bases: &[PathBuf]) -> (bool, bool) {
    let mut walk_failed = false;
    let mut listings = Vec::new();
    for b in bases {
        match tree::walk(b) {
            Ok(l) => listings.push(Some(l)),
            Err(e) => {
                println!(
                    "IMPOSSIBLE: walking {} for the final check: {e}",
                    b.display()
                );
                walk_failed = true;
                listings.push(None);
            }
        }
    }
    let Some(Some(first)) = listings.first() else {
        return (false, walk_failed);
    };
    let (files, dirs, others) = first.values().fold((0, 0, 0), |(f, d, x), e| match e.kind {
        Kind::File => (f + 1, d, x),
        Kind::Dir => (f, d + 1, x),
        _ => (f, d, x + 1),
    });
    println!(
        "check: {} entries through {} ({files} files, {dirs} directories, {others} others)",
        first.len(),
        bases[0].display()
    );
    let mut differ = false;
    for (i, l) in listings.iter().enumerate().skip(1) {
        let Some(l) = l else { continue };
        let diffs = tree::diff(first, l);
        if diffs.is_empty() {
            println!("check: {} shows the same tree", bases[i].display());
            continue;
        }
        differ = true;
        println!(
            "MISMATCH: {} and {} differ in {} places; the first:",
            bases[0].display(),
            bases[i].display(),
            diffs.len()
        );
        for d in diffs.iter().take(MAX_DIFFS_SHOWN) {
            println!("  {}", d.describe(&bases[0], &bases[i]));
        }
        if diffs.len() > MAX_DIFFS_SHOWN {
            println!("  ... and {} more", diffs.len() - MAX_DIFFS_SHOWN);
        }
    }
    (differ, walk_failed)
}

fn merge(into: &mut Stats, from: Stats) {
    for (op, s) in from {
        let t = into.entry(op).or_default();
        t.ok += s.ok;
        t.skipped += s.skipped;
        for (e, n) in s.errors {
            *t.errors.entry(e).or_default() += n;
        }
    }
}

fn print_summary(stats: &Stats, ops: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "ran {ops} ops in {:.2} s: {:.0} ops/s (plus readdirs to find targets)",
        secs,
        ops as f64 / secs
    );
    println!("  {:<12} {:>8} {:>8}  errors", "op", "ok", "skipped");
    for op in Op::ALL {
        let Some(s) = stats.get(&op) else { continue };
        let errs: Vec<String> = s
            .errors
            .iter()
            .map(|(&e, n)| {
                let mark = if classify(op, e).is_possible() {
                    ""
                } else {
                    " IMPOSSIBLE"
                };
                format!("{} {n}{mark}", errno_name(e))
            })
            .collect();
        let line = format!(
            "  {:<12} {:>8} {:>8}  {}",
            op.name(),
            s.ok,
            s.skipped,
            errs.join(", ")
        );
        println!("{}", line.trim_end());
    }
}

/// Removes the tree through every path where it still shows (after removal
/// through the first path, the others normally show nothing).
fn remove_trees(bases: &[PathBuf]) -> io::Result<()> {
    for b in bases {
        if fs::symlink_metadata(b).is_ok() {
            fs::remove_dir_all(b)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", b.display())))?;
        }
    }
    Ok(())
}
