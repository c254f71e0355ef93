//! `rdlmfs-testfs`: a FUSE passthrough of a local directory, used only by the
//! test suite to prove that the checkers (`rdlmfs-fsx`, `rdlmfs-stress`) can
//! fail. It owns nothing but its mount: every operation is passed to the
//! backing directory, and a mode can inject one well-defined fault.
//!
//! ```text
//! rdlmfs-testfs --backing DIR --mountpoint MNT --mode MODE [--every N] [--seed S] [--threads T]
//! ```
//!
//! Modes:
//! - `passthrough`: correct; the baseline. Attribute and entry TTL 1 s, the
//!   page cache is dropped on every open as usual.
//! - `drop-writes`: WRITE request number `n` (counted from 1 across the
//!   process, in arrival order) is acknowledged in full but not written when
//!   `(n + S) % N == 0`. The kernel's cached pages of that range are then
//!   invalidated, so the loss is visible through the mount as it would be
//!   after a lost disk write, not only after the next open. Only WRITE
//!   requests count (not `copy_file_range`, `fallocate` or truncation).
//! - `stale-cache`: meant to be mounted twice over one backing directory (two
//!   processes) to play two nodes without cache coherence: open replies keep
//!   the page cache and attributes and entries live 60 s, so a mount keeps
//!   serving what it cached after the other mount changed the file.
//!
//! Inodes are numbered by this process and never reused; a table maps each
//! to the backing (device, inode) it stands for and the backing paths it is
//! known by, kept up to date on rename, link and unlink. An inode whose
//! names are all gone (unlinked while open) is served through its open
//! handles. SIGTERM, SIGINT or SIGHUP unmount and exit; the process also
//! exits when the file system is unmounted from outside.

use clap::{Parser, ValueEnum};
use fuser::{
    BackgroundSession, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, IsTerminal as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The inode number FUSE reserves for the root of the mount.
const ROOT_INO: u64 = 1;
/// Source name shown in /proc/mounts.
const FS_NAME: &str = "rdlmfs-testfs";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Passthrough,
    DropWrites,
    StaleCache,
}

#[derive(Parser)]
#[command(
    name = "rdlmfs-testfs",
    version,
    about = "FUSE passthrough with injectable faults, for testing the rdlmfs checkers"
)]
struct Args {
    /// Directory whose contents are served.
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount (must be an existing directory).
    #[arg(long)]
    mountpoint: PathBuf,
    /// Which behaviour to serve.
    #[arg(long, value_enum)]
    mode: Mode,
    /// drop-writes: drop one WRITE request in every N.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// drop-writes: shifts which requests are dropped ((n + seed) % every == 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Request-serving threads (default: 1 for drop-writes so that the
    /// order in which requests are counted is the kernel's order, else 2).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: Option<u64>,
}

/// Backing (st_dev, st_ino): what a FUSE inode stands for.
type Key = (u64, u64);

fn key_of(md: &Metadata) -> Key {
    (md.dev(), md.ino())
}

struct Node {
    key: Key,
    /// Backing paths this inode is known by, most recently seen first.
    paths: Vec<PathBuf>,
    /// Entry replies the kernel has not yet forgotten (FUSE's nlookup).
    lookups: u64,
}

struct Table {
    nodes: HashMap<u64, Node>,
    /// Only inodes whose backing file still exists, so that a new backing
    /// file that reuses a freed backing inode number gets a fresh FUSE inode
    /// (the kernel may still hold the old one, with its page cache).
    by_key: HashMap<Key, u64>,
    next_ino: u64,
}

impl Table {
    fn new(root: PathBuf, root_key: Key) -> Table {
        let mut t = Table {
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            next_ino: ROOT_INO + 1,
        };
        t.nodes.insert(
            ROOT_INO,
            Node {
                key: root_key,
                paths: vec![root],
                lookups: 1,
            },
        );
        t.by_key.insert(root_key, ROOT_INO);
        t
    }

    /// The FUSE inode for the backing file `key` seen at `path`. `entry` when
    /// it goes to the kernel in an entry reply, which the kernel will
    /// forget; readdir's inode numbers are not counted.
    fn remember(&mut self, path: &Path, key: Key, entry: bool) -> u64 {
        let counted = u64::from(entry);
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                if let Some(i) = node.paths.iter().position(|p| p == path) {
                    node.paths.remove(i);
                }
                node.paths.insert(0, path.to_path_buf());
                node.lookups += counted;
                return ino;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                key,
                paths: vec![path.to_path_buf()],
                lookups: counted,
            },
        );
        self.by_key.insert(key, ino);
        ino
    }

    /// `path`, a name of `key`, was removed; `last` if it was the last name.
    fn forget_name(&mut self, path: &Path, key: Key, last: bool) {
        let Some(&ino) = self.by_key.get(&key) else {
            return;
        };
        let mut unknown_to_kernel = false;
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.paths.retain(|p| p != path);
            unknown_to_kernel = node.lookups == 0;
        }
        if last {
            self.by_key.remove(&key);
            // Only readdir saw it: nothing can refer to it any more.
            if unknown_to_kernel && ino != ROOT_INO {
                self.nodes.remove(&ino);
            }
        }
    }

    /// The kernel dropped `n` of its references to `ino`.
    fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 || ino == ROOT_INO {
            return;
        }
        let key = node.key;
        self.nodes.remove(&ino);
        if self.by_key.get(&key) == Some(&ino) {
            self.by_key.remove(&key);
        }
    }

    /// Rewrites every known path under `from` to lie under `to`, and with
    /// `exchange` the other way round too.
    fn renamed(&mut self, from: &Path, to: &Path, exchange: bool) {
        fn moved(p: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
            let rest = p.strip_prefix(from).ok()?;
            // join("") would append a separator.
            Some(if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            })
        }
        for node in self.nodes.values_mut() {
            for p in node.paths.iter_mut() {
                if let Some(n) = moved(p, from, to) {
                    *p = n;
                } else if exchange {
                    if let Some(n) = moved(p, to, from) {
                        *p = n;
                    }
                }
            }
        }
    }
}

/// Where an inode's operations go: its backing path, or, when no name of it
/// is left, an open handle of it.
enum Target {
    Path(PathBuf),
    File(Arc<File>),
}

impl Target {
    fn metadata(&self) -> io::Result<Metadata> {
        match self {
            Target::Path(p) => fs::symlink_metadata(p),
            Target::File(f) => f.metadata(),
        }
    }
}

struct OpenFile {
    ino: u64,
    file: Arc<File>,
}

struct DirEnt {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// What a SETATTR asks to change.
struct Change {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// A dropped write whose cached pages must be invalidated.
struct Invalidation {
    ino: u64,
    offset: i64,
    len: i64,
}

struct TestFs {
    mode: Mode,
    ttl: Duration,
    every: u64,
    seed: u64,
    root: PathBuf,
    table: Mutex<Table>,
    files: Mutex<HashMap<u64, OpenFile>>,
    /// Directory listings are snapshotted at opendir so that offsets stay
    /// meaningful while the directory changes.
    dirs: Mutex<HashMap<u64, Vec<DirEnt>>>,
    next_fh: AtomicU64,
    invalidate: mpsc::Sender<Invalidation>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    writes: AtomicU64,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking request handler leaves the tables consistent enough for
    // the rest of a test run.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn last_errno() -> Errno {
    errno(io::Error::last_os_error())
}

/// Turns a libc return value into a result, reading errno on -1.
fn check<T: Copy + PartialEq + From<i8>>(ret: T) -> Result<T, Errno> {
    if ret == T::from(-1) {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn cstr(s: &OsStr) -> Result<CString, Errno> {
    CString::new(s.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn off(v: u64) -> Result<i64, Errno> {
    i64::try_from(v).map_err(|_| Errno::EINVAL)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(md.mode()),
        perm: (md.mode() & 0o7777) as u16,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: u32::try_from(md.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                d.as_secs() as libc::time_t,
                libc::c_long::from(d.subsec_nanos()),
            ),
            Err(before) => {
                let d = before.duration();
                let (s, n) = (d.as_secs() as libc::time_t, d.subsec_nanos());
                if n == 0 {
                    (-s, 0)
                } else {
                    (-s - 1, libc::c_long::from(1_000_000_000 - n))
                }
            }
        },
    };
    libc::timespec { tv_sec, tv_nsec }
}

/// Opens a backing file for a FUSE open or create.
fn open_backing(path: &Path, flags: i32, mode: u32) -> Result<File, Errno> {
    // The kernel has already turned appends into writes at EOF offsets, and
    // pwrite on an O_APPEND descriptor would ignore our offset. O_DIRECT is
    // dropped because the request buffers are not aligned for it; the
    // kernel gives the caller direct-I/O semantics on its side.
    let flags = (flags & !(libc::O_APPEND | libc::O_DIRECT | libc::O_NOCTTY)) | libc::O_CLOEXEC;
    let p = cpath(path)?;
    // SAFETY: p is a valid NUL-terminated string; the mode is read only with O_CREAT.
    let fd = check(unsafe { libc::open(p.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: fd was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl TestFs {
    fn new(
        args: &Args,
        root: PathBuf,
        root_key: Key,
        invalidate: mpsc::Sender<Invalidation>,
        stats: Arc<Stats>,
    ) -> TestFs {
        TestFs {
            mode: args.mode,
            ttl: match args.mode {
                Mode::StaleCache => Duration::from_secs(60),
                Mode::Passthrough | Mode::DropWrites => Duration::from_secs(1),
            },
            every: args.every,
            seed: args.seed,
            table: Mutex::new(Table::new(root.clone(), root_key)),
            root,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            invalidate,
            stats,
        }
    }

    fn open_flags(&self) -> FopenFlags {
        match self.mode {
            Mode::StaleCache => FopenFlags::FOPEN_KEEP_CACHE,
            Mode::Passthrough | Mode::DropWrites => FopenFlags::empty(),
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.files)
            .get(&fh.0)
            .map(|f| f.file.clone())
            .ok_or(Errno::EBADF)
    }

    fn add_file(&self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            OpenFile {
                ino,
                file: Arc::new(file),
            },
        );
        fh
    }

    fn resolve(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<Target, Errno> {
        if let Some(fh) = fh {
            if let Ok(f) = self.file(fh) {
                return Ok(Target::File(f));
            }
        }
        let (key, paths) = {
            let t = lock(&self.table);
            let node = t.nodes.get(&ino.0).ok_or(Errno::ENOENT)?;
            (node.key, node.paths.clone())
        };
        let mut replaced = false;
        for p in paths {
            match fs::symlink_metadata(&p) {
                Ok(md) if key_of(&md) == key => return Ok(Target::Path(p)),
                Ok(_) => replaced = true,
                Err(_) => {}
            }
        }
        let open = lock(&self.files)
            .values()
            .find(|f| f.ino == ino.0)
            .map(|f| f.file.clone());
        match open {
            Some(f) => Ok(Target::File(f)),
            // ESTALE makes the VFS walk the path again with revalidation.
            None if replaced => Err(Errno::ESTALE),
            None => Err(Errno::ENOENT),
        }
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        match self.resolve(ino, None)? {
            Target::Path(p) => Ok(p),
            Target::File(_) => Err(Errno::ENOENT),
        }
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        Ok(self.path_of(parent)?.join(name))
    }

    /// Looks `path` up in the backing directory and gives it an inode.
    fn entry(&self, path: &Path) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(path).map_err(errno)?;
        let ino = lock(&self.table).remember(path, key_of(&md), true);
        Ok(attr(ino, &md))
    }

    /// New files belong to the caller, not to this (root) process.
    fn give_to_caller(&self, req: &Request, path: &Path) -> Result<(), Errno> {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid != 0 || (req.uid() == uid && req.gid() == gid) {
            return Ok(());
        }
        let p = cpath(path)?;
        // SAFETY: p is a valid NUL-terminated string.
        check(unsafe { libc::lchown(p.as_ptr(), req.uid(), req.gid()) })?;
        Ok(())
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        change: Change,
    ) -> Result<FileAttr, Errno> {
        let Change {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = change;
        let target = self.resolve(ino, fh)?;
        if let Some(size) = size {
            let size = off(size)?;
            match &target {
                Target::Path(p) => {
                    let p = cpath(p)?;
                    // SAFETY: p is a valid NUL-terminated string.
                    check(unsafe { libc::truncate(p.as_ptr(), size) })?;
                }
                // SAFETY: the descriptor is kept open by the Arc.
                Target::File(f) => {
                    check(unsafe { libc::ftruncate(f.as_raw_fd(), size) }).map(drop)?
                }
            }
        }
        if let Some(mode) = mode {
            let mode = mode & 0o7777;
            match &target {
                Target::Path(p) => {
                    let p = cpath(p)?;
                    // SAFETY: p is a valid NUL-terminated string.
                    check(unsafe { libc::chmod(p.as_ptr(), mode) })?;
                }
                // SAFETY: the descriptor is kept open by the Arc.
                Target::File(f) => check(unsafe { libc::fchmod(f.as_raw_fd(), mode) }).map(drop)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            // (uid_t)-1 leaves the id unchanged.
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            match &target {
                Target::Path(p) => {
                    let p = cpath(p)?;
                    // SAFETY: p is a valid NUL-terminated string.
                    check(unsafe { libc::lchown(p.as_ptr(), u, g) })?;
                }
                // SAFETY: the descriptor is kept open by the Arc.
                Target::File(f) => check(unsafe { libc::fchown(f.as_raw_fd(), u, g) }).map(drop)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = [timespec(atime), timespec(mtime)];
            match &target {
                Target::Path(p) => {
                    let p = cpath(p)?;
                    // SAFETY: p is a valid string and ts two valid timespecs.
                    check(unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            p.as_ptr(),
                            ts.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })?;
                }
                // SAFETY: the descriptor is kept open by the Arc; ts is valid.
                Target::File(f) => {
                    check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }).map(drop)?
                }
            }
        }
        let md = target.metadata().map_err(errno)?;
        Ok(attr(ino.0, &md))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let path = self.child_path(parent, name)?;
        // Try exclusive first to learn whether the file is ours to chown.
        let (file, created) = match open_backing(&path, flags | libc::O_CREAT | libc::O_EXCL, mode)
        {
            Ok(f) => (f, true),
            Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                (open_backing(&path, flags & !libc::O_CREAT, mode)?, false)
            }
            Err(e) => return Err(e),
        };
        if created {
            self.give_to_caller(req, &path)?;
        }
        let md = file.metadata().map_err(errno)?;
        let ino = lock(&self.table).remember(&path, key_of(&md), true);
        let fh = self.add_file(ino, file);
        Ok((attr(ino, &md), fh))
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        let file = match self.resolve(ino, None)? {
            Target::Path(p) => open_backing(&p, flags.0, 0)?,
            // An inode with no name left can still be reopened, e.g. through
            // /proc/PID/fd.
            Target::File(f) => open_backing(
                Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd())),
                flags.0,
                0,
            )?,
        };
        Ok(self.add_file(ino.0, file))
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let f = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        // A short read means EOF to the kernel, so read until full or EOF.
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn do_write(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let f = self.file(fh)?;
        let n = self.stats.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if self.mode == Mode::DropWrites
            && n.wrapping_add(self.seed).checked_rem(self.every) == Some(0)
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                request = n,
                ino = ino.0,
                offset,
                len = data.len(),
                "drop-writes: dropping write"
            );
            let inval = Invalidation {
                ino: ino.0,
                offset: off(offset)?,
                len: i64::try_from(data.len()).unwrap_or(i64::MAX),
            };
            // The receiver only goes away at exit.
            let _ = self.invalidate.send(inval);
            return Ok(());
        }
        f.write_all_at(data, offset).map_err(errno)
    }

    fn do_opendir(&self, ino: INodeNo) -> Result<u64, Errno> {
        let path = self.path_of(ino)?;
        let dir_md = fs::symlink_metadata(&path).map_err(errno)?;
        let parent_ino = match path.parent() {
            Some(parent) if ino.0 != ROOT_INO => fs::symlink_metadata(parent)
                .ok()
                .and_then(|md| lock(&self.table).by_key.get(&key_of(&md)).copied())
                .unwrap_or(ino.0),
            _ => ino.0,
        };
        let mut ents = vec![
            DirEnt {
                ino: ino.0,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEnt {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        let mut listed = Vec::new();
        for e in fs::read_dir(&path).map_err(errno)? {
            let e = e.map_err(errno)?;
            let kind = e
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            listed.push((e.file_name(), e.ino(), kind));
        }
        {
            let mut t = lock(&self.table);
            for (name, d_ino, kind) in listed {
                let ino = t.remember(&path.join(&name), (dir_md.dev(), d_ino), false);
                ents.push(DirEnt { ino, kind, name });
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, ents);
        Ok(fh)
    }

    fn do_unlink(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child_path(parent, name)?;
        let md = fs::symlink_metadata(&path).map_err(errno)?;
        let p = cpath(&path)?;
        if dir {
            // SAFETY: p is a valid NUL-terminated string.
            check(unsafe { libc::rmdir(p.as_ptr()) })?;
        } else {
            // SAFETY: p is a valid NUL-terminated string.
            check(unsafe { libc::unlink(p.as_ptr()) })?;
        }
        lock(&self.table).forget_name(&path, key_of(&md), dir || md.nlink() <= 1);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        let from_md = fs::symlink_metadata(&from).map_err(errno)?;
        let to_md = fs::symlink_metadata(&to).ok();
        let (f, t) = (cpath(&from)?, cpath(&to)?);
        // SAFETY: f and t are valid NUL-terminated strings.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags.bits(),
            )
        })?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let mut table = lock(&self.table);
        if let Some(to_md) = to_md.filter(|m| !exchange && key_of(m) != key_of(&from_md)) {
            table.forget_name(&to, key_of(&to_md), to_md.is_dir() || to_md.nlink() <= 1);
        }
        table.renamed(&from, &to, exchange);
        Ok(())
    }

    fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<FileAttr, Errno> {
        let src = self.path_of(ino)?;
        let dst = self.child_path(newparent, newname)?;
        let (s, d) = (cpath(&src)?, cpath(&dst)?);
        // SAFETY: s and d are valid NUL-terminated strings.
        check(unsafe { libc::link(s.as_ptr(), d.as_ptr()) })?;
        self.entry(&dst)
    }

    /// Makes a directory when `rdev` is None, else a node of `mode`'s type.
    fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: Option<u32>,
    ) -> Result<FileAttr, Errno> {
        let path = self.child_path(parent, name)?;
        let p = cpath(&path)?;
        match rdev {
            // SAFETY: p is a valid NUL-terminated string.
            None => check(unsafe { libc::mkdir(p.as_ptr(), mode) })?,
            // SAFETY: p is a valid NUL-terminated string.
            Some(rdev) => check(unsafe { libc::mknod(p.as_ptr(), mode, libc::dev_t::from(rdev)) })?,
        };
        self.give_to_caller(req, &path)?;
        self.entry(&path)
    }

    fn do_getxattr(&self, ino: INodeNo, name: &OsStr, size: u32) -> Result<Vec<u8>, Errno> {
        let n = cstr(name)?;
        let mut buf = vec![0u8; size as usize];
        let (ptr, len) = if size == 0 {
            (std::ptr::null_mut(), 0)
        } else {
            (buf.as_mut_ptr().cast(), buf.len())
        };
        let got = match self.resolve(ino, None)? {
            Target::Path(p) => {
                let p = cpath(&p)?;
                // SAFETY: valid strings; ptr/len describe buf or are null/0.
                check(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr, len) })?
            }
            // SAFETY: the descriptor is kept open by the Arc; as above.
            Target::File(f) => {
                check(unsafe { libc::fgetxattr(f.as_raw_fd(), n.as_ptr(), ptr, len) })?
            }
        };
        Ok(if size == 0 {
            vec![0; got as usize]
        } else {
            buf.truncate(got as usize);
            buf
        })
    }

    fn do_listxattr(&self, ino: INodeNo, size: u32) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; size as usize];
        let (ptr, len) = if size == 0 {
            (std::ptr::null_mut(), 0)
        } else {
            (buf.as_mut_ptr().cast(), buf.len())
        };
        let got = match self.resolve(ino, None)? {
            Target::Path(p) => {
                let p = cpath(&p)?;
                // SAFETY: valid string; ptr/len describe buf or are null/0.
                check(unsafe { libc::llistxattr(p.as_ptr(), ptr, len) })?
            }
            // SAFETY: the descriptor is kept open by the Arc; as above.
            Target::File(f) => check(unsafe { libc::flistxattr(f.as_raw_fd(), ptr, len) })?,
        };
        Ok(if size == 0 {
            vec![0; got as usize]
        } else {
            buf.truncate(got as usize);
            buf
        })
    }

    fn do_setxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let n = cstr(name)?;
        let (ptr, len) = (value.as_ptr().cast(), value.len());
        match self.resolve(ino, None)? {
            Target::Path(p) => {
                let p = cpath(&p)?;
                // SAFETY: valid strings; ptr/len describe value.
                check(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), ptr, len, flags) })?
            }
            // SAFETY: the descriptor is kept open by the Arc; as above.
            Target::File(f) => {
                check(unsafe { libc::fsetxattr(f.as_raw_fd(), n.as_ptr(), ptr, len, flags) })?
            }
        };
        Ok(())
    }

    fn do_removexattr(&self, ino: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let n = cstr(name)?;
        match self.resolve(ino, None)? {
            Target::Path(p) => {
                let p = cpath(&p)?;
                // SAFETY: valid NUL-terminated strings.
                check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })?
            }
            // SAFETY: the descriptor is kept open by the Arc; valid string.
            Target::File(f) => check(unsafe { libc::fremovexattr(f.as_raw_fd(), n.as_ptr()) })?,
        };
        Ok(())
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl TestFs {
    fn reply_entry(&self, reply: ReplyEntry, r: Result<FileAttr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for TestFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.child_path(parent, name).and_then(|p| self.entry(&p));
        // The kernel asks about "." and ".." only for NFS export; refuse them
        // as missing rather than as invalid.
        let r = r.map_err(|e| if e == Errno::EINVAL { Errno::ENOENT } else { e });
        self.reply_entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.table).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .resolve(ino, fh)
            .and_then(|t| t.metadata().map_err(errno));
        match r {
            Ok(md) => reply.attr(&self.ttl, &attr(ino.0, &md)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = Change {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.do_setattr(ino, fh, change) {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path_of(ino)
            .and_then(|p| fs::read_link(p).map_err(errno))
        {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // The kernel has applied the umask already (no FUSE_DONT_MASK).
        let r = self.do_mknod(req, parent, name, mode, Some(rdev));
        self.reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.do_mknod(req, parent, name, mode, None);
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_unlink(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_unlink(parent, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.child_path(parent, link_name).and_then(|path| {
            std::os::unix::fs::symlink(target, &path).map_err(errno)?;
            self.give_to_caller(req, &path)?;
            self.entry(&path)
        });
        self.reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.do_link(ino, newparent, newname);
        self.reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, fh, offset, data) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the backing file before they are acknowledged, so
        // there is nothing to push; only the handle is checked.
        reply_empty(reply, self.file(fh).map(drop));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.file(fh).and_then(|f| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(errno)
        });
        reply_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = lock(&self.dirs);
        let Some(ents) = dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in ents.iter().enumerate().skip(start) {
            // The offset handed out is that of the next entry.
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.path_of(ino).and_then(|p| {
            let d = File::open(p).map_err(errno)?;
            if datasync {
                d.sync_data()
            } else {
                d.sync_all()
            }
            .map_err(errno)
        });
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = cpath(&self.root).and_then(|p| {
            // SAFETY: statvfs is plain data; zeroed is a valid value.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: p is a valid string and st a valid out-pointer.
            check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
            Ok(st)
        });
        match r {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                u32::try_from(st.f_bsize).unwrap_or(4096),
                u32::try_from(st.f_namemax).unwrap_or(255),
                u32::try_from(st.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            // Only macOS resource forks use a position.
            reply.error(Errno::EINVAL);
            return;
        }
        reply_empty(reply, self.do_setxattr(ino, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.do_getxattr(ino, name, size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.do_listxattr(ino, size));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_removexattr(ino, name));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent, name, mode, flags) {
            Ok((a, fh)) => reply.created(
                &self.ttl,
                &a,
                Generation(0),
                FileHandle(fh),
                self.open_flags(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.file(fh).and_then(|f| {
            let (o, l) = (off(offset)?, off(length)?);
            // SAFETY: the descriptor is kept open by the Arc.
            check(unsafe { libc::fallocate(f.as_raw_fd(), mode, o, l) }).map(drop)
        });
        reply_empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel sends only SEEK_DATA and SEEK_HOLE; the descriptor's own
        // position is never used for I/O here, so moving it is harmless.
        let r = self.file(fh).and_then(|f| {
            // SAFETY: the descriptor is kept open by the Arc.
            check(unsafe { libc::lseek(f.as_raw_fd(), offset, whence) })
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            let (fi, fo) = (self.file(fh_in)?, self.file(fh_out)?);
            let (mut oi, mut oo) = (off(offset_in)?, off(offset_out)?);
            // The reply carries a 32-bit count.
            let len = usize::try_from(len.min(1 << 30)).unwrap_or(1 << 30);
            let flags = u32::try_from(flags.bits()).map_err(|_| Errno::EINVAL)?;
            // SAFETY: both descriptors are kept open by their Arcs; the
            // offsets are valid in/out pointers.
            let n = check(unsafe {
                libc::copy_file_range(fi.as_raw_fd(), &mut oi, fo.as_raw_fd(), &mut oo, len, flags)
            })?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Waits up to `timeout` for one of `set` (which must be blocked).
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: set is initialised; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Unmounts our mount; lazily when it is busy so that exiting never waits
/// for the users of the mount.
fn unmount(mountpoint: &Path) {
    let Ok(p) = cpath(mountpoint) else { return };
    // SAFETY: p is a valid NUL-terminated string.
    if unsafe { libc::umount2(p.as_ptr(), 0) } == 0 {
        return;
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // SAFETY: as above.
        Some(libc::EBUSY) if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } == 0 => {}
        Some(libc::EPERM) => {
            let r = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(mountpoint)
                .status();
            if !matches!(r, Ok(s) if s.success()) {
                tracing::warn!(?r, "fusermount3 -u failed");
            }
        }
        _ => tracing::warn!(mountpoint = %mountpoint.display(), %err, "unmount failed"),
    }
}

fn run(args: Args) -> Result<(), String> {
    let signals = termination_signals();
    // Blocked before any thread starts so that only sigwait sees them.
    // SAFETY: pthread_sigmask on a properly initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    // Modes arrive from the kernel with the caller's umask applied already.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0) };

    let backing = args
        .backing
        .canonicalize()
        .map_err(|e| format!("--backing {}: {e}", args.backing.display()))?;
    let root_md = fs::symlink_metadata(&backing)
        .map_err(|e| format!("--backing {}: {e}", backing.display()))?;
    if !root_md.is_dir() {
        return Err(format!("--backing {}: not a directory", backing.display()));
    }
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("--mountpoint {}: {e}", args.mountpoint.display()))?;

    let (inval_tx, inval_rx) = mpsc::channel::<Invalidation>();
    let stats = Arc::new(Stats::default());
    let fs = TestFs::new(
        &args,
        backing.clone(),
        key_of(&root_md),
        inval_tx,
        stats.clone(),
    );

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::DefaultPermissions,
    ];
    let threads = args.threads.unwrap_or(match args.mode {
        Mode::DropWrites => 1,
        Mode::Passthrough | Mode::StaleCache => 2,
    });
    config.n_threads = Some(usize::try_from(threads).unwrap_or(1));

    let session = Session::new(fs, &mountpoint, &config)
        .map_err(|e| format!("mount at {}: {e}", mountpoint.display()))?;
    let background = session
        .spawn()
        .map_err(|e| format!("start serving {}: {e}", mountpoint.display()))?;

    // Invalidations are sent from their own thread: the kernel holds the
    // written pages locked until the write is answered, so sending from the
    // request handler could deadlock.
    let notifier = background.notifier();
    std::thread::Builder::new()
        .name("invalidate".into())
        .spawn(move || {
            for i in inval_rx {
                if let Err(e) = notifier.inval_inode(INodeNo(i.ino), i.offset, i.len) {
                    tracing::warn!(ino = i.ino, %e, "cache invalidation failed");
                }
            }
        })
        .map_err(|e| format!("start invalidation thread: {e}"))?;

    tracing::info!(
        backing = %backing.display(),
        mountpoint = %mountpoint.display(),
        mode = ?args.mode,
        every = args.every,
        seed = args.seed,
        threads,
        "mounted"
    );
    println!("mounted {}", mountpoint.display());
    let _ = io::stdout().flush();

    let summary = || {
        tracing::info!(
            writes = stats.writes.load(Ordering::Relaxed),
            dropped = stats.dropped.load(Ordering::Relaxed),
            "exiting"
        );
    };
    loop {
        if background.guard.is_finished() {
            // Unmounted from outside.
            summary();
            return finish(background).map_err(|e| format!("session ended: {e}"));
        }
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(100)) {
            tracing::info!(signal = sig, "unmounting");
            unmount(&mountpoint);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !background.guard.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            summary();
            if background.guard.is_finished() {
                return finish(background).map_err(|e| format!("session ended: {e}"));
            }
            // Still in use after a lazy unmount. Exiting closes /dev/fuse,
            // which ends the connection.
            std::process::exit(0);
        }
    }
}

/// Joins the finished session thread without dropping the rest of the
/// session: fuser's mount handle would unmount the mountpoint once more on
/// drop, which after our own unmount could hit a later mount at that place.
fn finish(mut background: BackgroundSession) -> io::Result<()> {
    let placeholder = std::thread::spawn(|| Ok(()));
    let guard = std::mem::replace(&mut background.guard, placeholder);
    std::mem::forget(background);
    guard
        .join()
        .map_err(|_| io::Error::other("session thread panicked"))?
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdlmfs-testfs: {e}");
            ExitCode::FAILURE
        }
    }
}
