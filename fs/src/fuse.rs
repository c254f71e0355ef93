//! The FUSE adapter: fuser requests in, [`Fs`] operations out.
//!
//! Owns: translating between fuser's types and the file system's (inode
//! 1 is the root; errors become errnos; times become `SystemTime`), the
//! caller's credentials (uid/gid from the request, supplementary groups
//! from `/proc/PID/status`), the kernel cache settings (attribute and entry
//! TTLs, keep_cache: every cached item is covered by a glock this node
//! holds), and the commit timer. May not touch: any POSIX rule (they are
//! all in `ops.rs`), so a test through the library and a test through a
//! mount check the same code.
//!
//! Permission checks are done by the file system itself (not the kernel's
//! `default_permissions`), because they must honour POSIX ACLs; the kernel
//! is asked not to apply the umask (FUSE_DONT_MASK) so a default ACL can
//! replace it, as POSIX requires. For the same reason the file system, not
//! the kernel, clears setuid/setgid bits (FUSE_HANDLE_KILLPRIV).

use crate::acl::Cred;
use crate::dcache::Dcache;
use crate::demote::KernelCaches;
use crate::error::FsError;
use crate::format::{formal_ino, FileType as FT, Timestamp};
use crate::glock::{GlockKind, GlockName};
use crate::mount::Fs;
use crate::ops::{Attr, SetAttr, SetTime};
use crate::plock::{LockRequest, Plocks};
use crate::prefetch::Prefetch;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file system behind a FUSE session.
pub struct RdlmFuse {
    fs: Arc<Mutex<Option<Fs>>>,
    ttl: Duration,
    /// Cluster-wide record locks and flock(2); None: the kernel keeps
    /// them node-local.
    plocks: Option<Arc<Plocks>>,
    /// A cluster mount: O_APPEND files bypass the page cache (below).
    cluster: bool,
    /// In a cluster, asks for the inode glocks of listed entries once
    /// lookups follow a listing (made at the first readdir).
    prefetch: OnceLock<Prefetch>,
    /// In a cluster, where the kernel has each directory (`dcache.rs`):
    /// another node may move one.
    dcache: Option<Arc<Dcache>>,
}

impl RdlmFuse {
    /// `ttl`: how long the kernel may trust attributes and names. A
    /// cluster mount uses zero: the kernel asks again every time, and only
    /// page contents are cached (invalidated on demotes).
    pub fn new(fs: Arc<Mutex<Option<Fs>>>, ttl: Duration) -> RdlmFuse {
        RdlmFuse {
            fs,
            ttl,
            plocks: None,
            cluster: false,
            prefetch: OnceLock::new(),
            dcache: None,
        }
    }

    /// A cluster mount: fcntl record locks and flock(2) go through
    /// `plocks` (cluster-wide) instead of staying in this node's kernel,
    /// and appends are made at the end of the file as the cluster knows it.
    pub fn clustered(mut self, plocks: Arc<Plocks>) -> RdlmFuse {
        self.plocks = Some(plocks);
        self.cluster = true;
        self.dcache = Some(Arc::new(Dcache::new()));
        self
    }

    /// Where the kernel has this mount's directories (a cluster mount);
    /// its notifier is set once the session exists.
    pub fn dcache(&self) -> Option<Arc<Dcache>> {
        self.dcache.clone()
    }

    /// How a file opened with `flags` is served. In a cluster a file
    /// opened for writing is direct I/O (reads through it too):
    ///
    /// - a buffered write holds the kernel's page locks while it waits for
    ///   the inode's glock; if another node's request makes this node's
    ///   demote worker invalidate the same pages meanwhile, the
    ///   invalidation waits for those locks, and the glock the write waits
    ///   for is never given up (two nodes writing one file deadlocked);
    /// - the kernel would place an O_APPEND write at the size it cached
    ///   when the file was opened, which another node may have grown
    ///   since; the file system appends at the real end instead.
    ///
    /// Read-only opens keep the page cache (demotes invalidate it), and a
    /// direct-I/O file can still be mapped (FUSE_DIRECT_IO_ALLOW_MMAP).
    fn open_flags(&self, flags: i32) -> FopenFlags {
        let acc = flags & libc::O_ACCMODE;
        let writes = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if self.cluster && (writes || flags & libc::O_APPEND != 0) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Fs>> {
        self.fs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the file system. In a cluster `f` may find a glock this
    /// node does not hold: its changes are undone, the file system is let
    /// go while the glock is acquired (another node may have to demote
    /// first, and this node's demote worker may need the file system
    /// meanwhile), and `f` runs again. Inodes `f` doomed are freed before
    /// the reply, the same way.
    fn with<T>(&self, mut f: impl FnMut(&mut Fs) -> Result<T, FsError>) -> Result<T, Errno> {
        let r = self.retrying(&mut f);
        // Unlinked inodes other nodes still have open, whether or not `f`
        // succeeded (it may have failed after queueing one).
        let waits = self
            .lock()
            .as_mut()
            .map(|fs| fs.take_delete_waits())
            .unwrap_or_default();
        if !waits.is_empty() {
            spawn_delete_waiters(&self.fs, waits);
        }
        if r.is_ok() {
            let mut doomed = false;
            if let Some(fs) = self.lock().as_ref() {
                doomed = !fs.doomed.is_empty();
            }
            if doomed {
                if let Err(e) = self.retrying(&mut |fs: &mut Fs| fs.free_doomed()) {
                    tracing::error!(error = %e, "freeing unlinked inodes failed");
                }
            }
        }
        r.map_err(|e| {
            if e.is_fatal() {
                tracing::error!(error = %e, "request failed");
            } else if !matches!(e, FsError::Errno(_)) {
                // A lock manager error, or a glock wait that escaped its
                // retry loop: the caller sees EIO, so say why.
                tracing::warn!(error = %e, "request failed");
            }
            Errno::from_i32(e.errno())
        })
    }

    fn retrying<T>(&self, f: &mut impl FnMut(&mut Fs) -> Result<T, FsError>) -> Result<T, FsError> {
        run_retrying(&self.fs, f)
    }
}

/// Starts a delete waiter for each of `inos` (see `iopen.rs`): it waits,
/// with the file system let go, until every other node closed the inode,
/// then frees it. Also for the mount process (inodes found at mount).
pub fn spawn_delete_waiters(shared: &Arc<Mutex<Option<Fs>>>, inos: Vec<u64>) {
    let Some(glocks) = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|fs| fs.glocks().clone())
    else {
        return;
    };
    for ino in inos {
        let shared = shared.clone();
        let glocks = glocks.clone();
        let r = std::thread::Builder::new()
            .name("rdlmfs-delete".into())
            .spawn(move || {
                let name = GlockName::iopen(ino);
                if let Err(e) = glocks.acquire(name, crate::glock::GlockMode::Exclusive) {
                    tracing::error!(ino, error = %e, "waiting to free an unlinked inode");
                    return;
                }
                let r = run_retrying(&shared, &mut |fs: &mut Fs| {
                    fs.free_unlinked_when_closed(ino)
                });
                if let Err(e) = r {
                    tracing::error!(ino, error = %e, "freeing an unlinked inode after its last close elsewhere");
                }
            });
        if let Err(e) = r {
            tracing::error!(ino, error = %e, "cannot start a delete waiter; the inode stays on the unlinked list");
        }
    }
}

/// Runs `f` on the shared file system until it needs no glock this node
/// does not hold; waits for glocks with the file system let go (see
/// [`RdlmFuse`]'s `with`). For the mount process too (unmounting in a
/// cluster, while other nodes may still ask for glocks).
pub fn run_retrying<T>(
    shared: &Mutex<Option<Fs>>,
    f: &mut impl FnMut(&mut Fs) -> Result<T, FsError>,
) -> Result<T, FsError> {
    loop {
        let mut g = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(fs) = g.as_mut() else {
            return Err(FsError::Errno(libc::EIO));
        };
        if fs.is_cut_off() {
            return Err(FsError::Withdrawn {
                device: fs.device().name().to_string(),
            });
        }
        fs.savepoint();
        match f(fs) {
            Err(FsError::GlockWait { name, mode }) => {
                fs.rollback();
                fs.release_savepoint();
                let glocks = fs.glocks.clone();
                drop(g);
                glocks.acquire(name, mode)?;
            }
            r => {
                fs.release_savepoint();
                return r;
            }
        }
    }
}

/// The kernel's caches, reached through the session's notifier.
pub struct Notifier {
    notifier: fuser::Notifier,
    root: u64,
}

impl Notifier {
    pub fn new(notifier: fuser::Notifier, root: u64) -> Notifier {
        Notifier { notifier, root }
    }
}

impl KernelCaches for Notifier {
    fn invalidate(&self, name: GlockName, generation: Option<u64>) {
        if name.kind != GlockKind::Inode {
            return;
        }
        let ino = if name.number == self.root {
            INodeNo(1)
        } else {
            // No generation: the block holds no inode, so the kernel can
            // know none there that is still valid (its node id is stale,
            // and every request through it fails).
            let Some(generation) = generation else {
                return;
            };
            INodeNo(formal_ino(name.number, generation))
        };
        // ENOENT: the kernel does not know the inode; nothing to drop.
        if let Err(e) = self.notifier.inval_inode(ino, 0, 0) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(glock = %name, error = %e, "kernel cache invalidation failed");
            }
        }
    }
}

/// The inode a FUSE node id names, checked (see [`Fs::resolve`]): node
/// ids are formal inode numbers, so a stale one — another node deleted the
/// inode and reused its block — is ESTALE, never the new file.
fn ino_in(fs: &mut Fs, ino: INodeNo) -> Result<u64, FsError> {
    if ino.0 == 1 {
        Ok(fs.root())
    } else {
        fs.resolve(ino.0)
    }
}

/// The dinode address of a node id, unchecked: for the one request that
/// must reach an inode whatever became of it (RELEASE).
fn ino_addr(fs: &Fs, ino: INodeNo) -> u64 {
    if ino.0 == 1 {
        fs.root()
    } else {
        crate::format::formal_addr(ino.0)
    }
}

/// The node id of the inode at `addr` of `generation`: its formal number
/// (the root is always 1).
fn ino_out(fs: &Fs, addr: u64, generation: u64) -> INodeNo {
    if addr == fs.root() {
        INodeNo(1)
    } else {
        INodeNo(formal_ino(addr, generation))
    }
}

/// The errno for reading an open directory that another node removed
/// meanwhile (its block may be reused, so its node id is stale): ENOENT,
/// as Linux answers getdents on a removed directory. ESTALE is for path
/// walks, which the kernel retries; an open directory has no path to
/// walk again.
fn dead_dir(e: Errno) -> Errno {
    if e.code() == libc::ESTALE {
        Errno::from_i32(libc::ENOENT)
    } else {
        e
    }
}

/// The generation the kernel keeps for an inode: its `i_generation` is 32
/// bits, so a larger one would never compare equal and the kernel would
/// take the inode for a new one at every lookup. Inode glock LVBs carry
/// the same 32 bits.
fn fuse_generation(generation: u64) -> Generation {
    Generation(generation & u64::from(u32::MAX))
}

/// The node id of a directory entry's formal number.
fn ino_of_entry(fs: &Fs, formal: u64) -> INodeNo {
    if crate::format::formal_addr(formal) == fs.root() {
        INodeNo(1)
    } else {
        INodeNo(formal)
    }
}

fn time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec)
    }
}

fn stamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), 0u32);
            if d.subsec_nanos() > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - d.subsec_nanos();
            }
            Timestamp { sec, nsec }
        }
    }
}

fn kind(k: FT) -> FileType {
    match k {
        FT::Regular => FileType::RegularFile,
        FT::Directory => FileType::Directory,
        FT::Symlink => FileType::Symlink,
        FT::CharDevice => FileType::CharDevice,
        FT::BlockDevice => FileType::BlockDevice,
        FT::Fifo => FileType::NamedPipe,
        FT::Socket => FileType::Socket,
    }
}

fn file_attr(fs: &Fs, a: &Attr) -> FileAttr {
    FileAttr {
        ino: ino_out(fs, a.ino, a.generation),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The caller's credentials, with supplementary groups from /proc (FUSE
/// passes only uid, gid and pid).
fn cred(req: &Request) -> Cred {
    let mut groups = Vec::new();
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) {
        if let Some(line) = s.lines().find(|l| l.starts_with("Groups:")) {
            groups = line[7..]
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        }
    }
    Cred {
        uid: req.uid(),
        gid: req.gid(),
        groups,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => SetTime::At(stamp(s)),
    })
}

impl RdlmFuse {
    fn entry(&self, reply: ReplyEntry, r: Result<(FileAttr, u64), Errno>) {
        answer_entry(self.ttl, reply, r);
    }

    /// Answers a lookup or mkdir in a cluster, where the entry may be a
    /// directory the kernel still has under another parent (another node
    /// moved it): that old entry is let go of first, off this FUSE thread
    /// (see `dcache.rs`).
    fn entry_of_lookup(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        r: Result<(FileAttr, u64), Errno>,
    ) {
        let (Some(dcache), Ok((a, _))) = (&self.dcache, &r) else {
            return self.entry(reply, r);
        };
        if a.kind != FileType::Directory {
            return self.entry(reply, r);
        }
        let Some(old) = dcache.told(a.ino.0, parent.0, name.as_bytes()) else {
            return self.entry(reply, r);
        };
        let (dcache, ttl) = (dcache.clone(), self.ttl);
        let answer = Arc::new(Mutex::new(Some((reply, r))));
        let spawned = std::thread::Builder::new()
            .name("rdlmfs-lookup".into())
            .spawn({
                let answer = answer.clone();
                move || {
                    dcache.unalias(old);
                    if let Some((reply, r)) = take(&answer) {
                        answer_entry(ttl, reply, r);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot wait for the kernel to let a moved directory go");
            if let Some((reply, r)) = take(&answer) {
                self.entry(reply, r);
            }
        }
    }
}

/// Takes what a thread that may not have started was handed.
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn answer_entry(ttl: Duration, reply: ReplyEntry, r: Result<(FileAttr, u64), Errno>) {
    match r {
        Ok((a, generation)) => reply.entry(&ttl, &a, fuse_generation(generation)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for RdlmFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        // The file system clears setuid/setgid on write, truncate and
        // chown itself (ops.rs). Without this the kernel asks for it with
        // a chmod carrying the writer's credentials, which a writer who
        // does not own the file may not do: the write would fail (EPERM).
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV);
        let _ = config.set_max_readahead(1 << 20);
        if self.plocks.is_some() {
            // fcntl record locks and flock(2) come to us (setlk/getlk).
            if config
                .add_capabilities(InitFlags::FUSE_POSIX_LOCKS)
                .is_err()
            {
                tracing::warn!(
                    "the kernel cannot pass fcntl locks to the file system: they stay node-local"
                );
            }
            if config
                .add_capabilities(InitFlags::FUSE_FLOCK_LOCKS)
                .is_err()
            {
                tracing::warn!(
                    "the kernel cannot pass flock to the file system: flocks stay node-local"
                );
            }
        }
        if self.cluster {
            // Files open for writing are direct I/O in a cluster (see
            // open_flags); they must still be mappable.
            if config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_err()
            {
                tracing::warn!("the kernel cannot mmap direct-I/O files: mmap of a file open for writing fails on this mount");
            }
        }
        Ok(())
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(plocks) = self.plocks.clone() else {
            reply.error(Errno::from_i32(libc::ENOSYS));
            return;
        };
        let (ino, owner) = (ino.0, lock_owner.0);
        let kind = match typ {
            libc::F_UNLCK => None,
            libc::F_WRLCK => Some(true),
            libc::F_RDLCK => Some(false),
            _ => {
                reply.error(Errno::from_i32(libc::EINVAL));
                return;
            }
        };
        let answer = |reply: ReplyEmpty, r: Result<(), i32>| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e)),
        };
        let req = LockRequest {
            owner,
            pid,
            start,
            end,
            kind,
        };
        if !sleep || kind.is_none() {
            answer(reply, plocks.setlk(ino, req, false));
            return;
        }
        // A wait may be long: it must not hold one of the few FUSE
        // threads (the request that unlocks may need it).
        if !plocks.begin_wait() {
            reply.error(Errno::from_i32(libc::ENOLCK));
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("rdlmfs-plock".into())
            .spawn({
                let plocks = plocks.clone();
                move || {
                    let r = plocks.setlk(ino, req, true);
                    plocks.end_wait();
                    answer(reply, r);
                }
            });
        if let Err(e) = spawned {
            plocks.end_wait();
            tracing::error!(error = %e, "cannot start a record lock waiter");
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let Some(plocks) = self.plocks.clone() else {
            reply.error(Errno::from_i32(libc::ENOSYS));
            return;
        };
        let write = match typ {
            libc::F_WRLCK => true,
            libc::F_RDLCK => false,
            _ => {
                reply.error(Errno::from_i32(libc::EINVAL));
                return;
            }
        };
        match plocks.getlk(ino.0, lock_owner.0, start, end, write) {
            Ok(Some(r)) => {
                let t = if r.write {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                };
                reply.locked(r.start, r.end, t, r.pid);
            }
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let c = cred(req);
        let mut dir = None;
        let r = self.with(|fs| {
            let p = ino_in(fs, parent)?;
            dir = Some(p);
            let a = fs.lookup(p, name.as_bytes(), &c)?;
            Ok((file_attr(fs, &a), a.generation))
        });
        if let (Some(p), Some(dir)) = (self.prefetch.get(), dir) {
            p.looked_up(dir);
        }
        self.entry_of_lookup(parent, name, reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self.with(|fs| {
            let a = {
                let i = ino_in(fs, ino)?;
                fs.getattr(i)
            }?;
            Ok(file_attr(fs, &a))
        });
        match r {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        let c = cred(req);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            via_handle: fh.is_some(),
        };
        let r = self.with(|fs| {
            let a = {
                let i = ino_in(fs, ino)?;
                fs.setattr(i, set, &c)
            }?;
            Ok(file_attr(fs, &a))
        });
        match r {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|fs| {
            let i = ino_in(fs, ino)?;
            fs.readlink(i)
        }) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let c = cred(req);
        let r = self.with(|fs| {
            let p = ino_in(fs, parent)?;
            let a = fs.mknod(p, name.as_bytes(), mode, umask, u64::from(rdev), None, &c)?;
            Ok((file_attr(fs, &a), a.generation))
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let c = cred(req);
        let r = self.with(|fs| {
            let p = ino_in(fs, parent)?;
            let a = fs.mknod(
                p,
                name.as_bytes(),
                libc::S_IFDIR | (mode & 0o7777),
                umask,
                0,
                None,
                &c,
            )?;
            Ok((file_attr(fs, &a), a.generation))
        });
        self.entry_of_lookup(parent, name, reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = cred(req);
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, parent)?;
                fs.unlink(i, name.as_bytes(), &c)
            }),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = cred(req);
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, parent)?;
                fs.rmdir(i, name.as_bytes(), &c)
            })
            .inspect(|()| {
                if let Some(d) = &self.dcache {
                    d.removed(&(parent.0, name.as_bytes().to_vec()));
                }
            }),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let c = cred(req);
        let r = self.with(|fs| {
            let p = ino_in(fs, parent)?;
            let t = target.as_os_str().as_bytes();
            let a = fs.mknod(
                p,
                link_name.as_bytes(),
                libc::S_IFLNK | 0o777,
                0,
                0,
                Some(t),
                &c,
            )?;
            Ok((file_attr(fs, &a), a.generation))
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let c = cred(req);
        // The kernel holds its rename mutex until this is answered (see
        // `dcache.rs`).
        let _in_flight = self
            .dcache
            .as_ref()
            .filter(|_| parent != newparent)
            .map(|d| d.rename_begins());
        let r = self.with(|fs| {
            let (p, np) = (ino_in(fs, parent)?, ino_in(fs, newparent)?);
            fs.rename(p, name.as_bytes(), np, newname.as_bytes(), flags.bits(), &c)
        });
        if let (Some(d), Ok(())) = (&self.dcache, &r) {
            d.renamed(
                (parent.0, name.as_bytes().to_vec()),
                (newparent.0, newname.as_bytes().to_vec()),
                flags.contains(RenameFlags::RENAME_EXCHANGE),
            );
        }
        empty(reply, r);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let c = cred(req);
        let r = self.with(|fs| {
            let (i, np) = (ino_in(fs, ino)?, ino_in(fs, newparent)?);
            let a = fs.link(i, np, newname.as_bytes(), &c)?;
            Ok((file_attr(fs, &a), a.generation))
        });
        self.entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let c = cred(req);
        match self.with(|fs| {
            let i = ino_in(fs, ino)?;
            fs.open(i, flags.0, &c)
        }) {
            Ok(()) => reply.opened(FileHandle(0), self.open_flags(flags.0)),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|fs| {
            let i = ino_in(fs, ino)?;
            fs.read(i, offset, size as usize)
        }) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let c = cred(req);
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let append = self.cluster && flags.0 & libc::O_APPEND != 0;
        let r = self.with(|fs| {
            let i = ino_in(fs, ino)?;
            let n = fs.write(i, offset, data, append, &c)?;
            if sync {
                fs.fsync(i)?;
            }
            Ok(n)
        });
        match r {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close drops the closing process's record locks on the file
        // (POSIX: any close of the file by the process).
        if let Some(plocks) = &self.plocks {
            plocks.drop_owner(ino.0, lock_owner.0);
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file drops its flock (the kernel
        // names the open file as owner only if it took one).
        if let (Some(plocks), Some(owner)) = (&self.plocks, lock_owner) {
            plocks.drop_owner(ino.0, owner.0);
        }
        empty(reply, self.with(|fs| fs.release(ino_addr(fs, ino))));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, ino)?;
                fs.fsync(i)
            }),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let c = cred(req);
        match self.with(|fs| {
            let i = ino_in(fs, ino)?;
            fs.opendir(i, &c)
        }) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.with(|fs| {
            let i = ino_in(fs, ino)?;
            let v = fs.readdir(i, offset, 128)?;
            let listed: Vec<(Vec<u8>, u64)> = if self.cluster {
                v.iter()
                    .filter(|l| l.entry.name != b"." && l.entry.name != b"..")
                    .map(|l| (l.entry.name.clone(), l.entry.addr()))
                    .collect()
            } else {
                Vec::new()
            };
            let entries = v
                .into_iter()
                .map(|l| {
                    (
                        ino_of_entry(fs, l.entry.formal),
                        l.cookie,
                        l.entry.kind,
                        l.entry.name,
                    )
                })
                .collect::<Vec<_>>();
            Ok((i, listed, entries, fs.glocks().clone()))
        });
        match r {
            Ok((dir, listed, v, glocks)) => {
                for (i, cookie, k, name) in v {
                    if reply.add(i, cookie, kind(k), OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok();
                if self.cluster {
                    self.prefetch.get_or_init(|| Prefetch::new(glocks)).listed(
                        dir,
                        offset == 0,
                        listed,
                    );
                }
            }
            Err(e) => reply.error(dead_dir(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.with(|fs| {
            let i = ino_in(fs, ino)?;
            let v = fs.readdir(i, offset, 64)?;
            let mut out = Vec::with_capacity(v.len());
            for l in v {
                let a = fs.getattr(l.entry.addr())?;
                out.push((
                    ino_of_entry(fs, l.entry.formal),
                    l.cookie,
                    l.entry.name,
                    file_attr(fs, &a),
                    a.generation,
                ));
            }
            Ok(out)
        });
        match r {
            Ok(v) => {
                for (i, cookie, name, a, g) in v {
                    if reply.add(
                        i,
                        cookie,
                        OsStr::from_bytes(&name),
                        &self.ttl,
                        &a,
                        fuse_generation(g),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(dead_dir(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, ino)?;
                fs.fsync(i)
            }),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|fs| fs.statfs()) {
            Ok(s) => reply.statfs(
                s.total,
                s.free,
                s.free,
                s.dinodes + s.free,
                s.free,
                s.block_size,
                crate::format::MAX_NAME_LEN as u32,
                s.block_size,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let c = cred(req);
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, ino)?;
                fs.setxattr(i, name.as_bytes(), Some(value), flags, &c)
            }),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let c = cred(req);
        match self.with(|fs| {
            let i = ino_in(fs, ino)?;
            fs.getxattr(i, name.as_bytes(), &c)
        }) {
            Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let c = cred(req);
        match self.with(|fs| {
            let i = ino_in(fs, ino)?;
            fs.listxattr(i, &c)
        }) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(u32::try_from(buf.len()).unwrap_or(u32::MAX));
                } else if buf.len() > size as usize {
                    reply.error(Errno::from_i32(libc::ERANGE));
                } else {
                    reply.data(&buf);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = cred(req);
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, ino)?;
                fs.removexattr(i, name.as_bytes(), &c)
            }),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = cred(req);
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, ino)?;
                fs.access(i, mask.bits() as u32, &c)
            }),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = cred(req);
        let r = self.with(|fs| {
            let p = ino_in(fs, parent)?;
            match fs.mknod(p, name.as_bytes(), mode, umask, 0, None, &c) {
                Ok(a) => {
                    // The creator may open what it created whatever the
                    // mode says.
                    fs.opened_by_create(a.ino)?;
                    Ok((file_attr(fs, &a), a.generation))
                }
                // Another node made the name after this kernel looked it
                // up: without O_EXCL the create is an open of that file
                // (NFS servers answer a non-exclusive create the same way).
                Err(FsError::Errno(libc::EEXIST)) if flags & libc::O_EXCL == 0 => {
                    let mut a = fs.lookup(p, name.as_bytes(), &c)?;
                    if a.kind == FT::Directory {
                        return Err(FsError::Errno(libc::EISDIR));
                    }
                    if flags & libc::O_TRUNC != 0 && a.kind == FT::Regular && a.size > 0 {
                        let set = SetAttr {
                            size: Some(0),
                            ..SetAttr::default()
                        };
                        a = fs.setattr(a.ino, set, &c)?;
                    }
                    // Last: it counts the open, and nothing after it may
                    // make the operation run again.
                    fs.open(a.ino, flags, &c)?;
                    Ok((file_attr(fs, &a), a.generation))
                }
                Err(e) => Err(e),
            }
        });
        match r {
            Ok((a, g)) => reply.created(
                &self.ttl,
                &a,
                Generation(g),
                FileHandle(0),
                self.open_flags(flags),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|fs| {
                let i = ino_in(fs, ino)?;
                fs.fallocate(i, offset, length, mode)
            }),
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = self.with(|fs| {
            let off = u64::try_from(offset).map_err(|_| FsError::Errno(libc::ENXIO))?;
            {
                let i = ino_in(fs, ino)?;
                fs.lseek(i, off, whence)
            }
        });
        match r {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(e),
        }
    }
}
