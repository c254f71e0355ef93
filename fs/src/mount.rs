//! The mounted file system: what `mount` builds and `unmount` takes apart,
//! and the commit policy that joins the buffer cache to the log.
//!
//! Owns: the [`Fs`] value (device, superblock, caches, log, allocator,
//! glocks), checking a device before anything is written, replaying this
//! node's journal, finishing what a crash left (the unlinked list), group
//! commit (many operations per transaction; fsync commits), checkpoints,
//! the statfs files, and a clean unmount. May not touch: the POSIX meaning
//! of operations (`ops.rs`), FUSE (`fuse.rs`).
//!
//! All methods take `&mut self`: the FUSE adapter serialises operations on
//! one node with a mutex. That is the simplest correct choice; glocks are
//! still taken per inode so the cluster can coordinate nodes.

use crate::buf::BufCache;
use crate::error::{FsError, Result};
use crate::fence::GatedDevice;
use crate::format::io::{self, IoError};
use crate::format::journal::StatfsDelta;
use crate::format::rgrp::{decode_rindex, BlockState};
use crate::format::superblock::{LockProto, Superblock, INCOMPAT_KNOWN};
use crate::format::sysfile::{self, StatfsRecord};
use crate::format::{Dinode, DinodeFlags, Geometry};
use crate::glock::{GlockKind, GlockMode, GlockName, Glocks, LockProtocol, Nolock};
use crate::log::{Log, LogPosition};
use crate::lvb::InodeLvb;
use crate::recovery::{self, JournalExtent, ReplayReport};
use crate::rgrp::Rgrps;
use blockdev::BlockDevice;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Below this much usable free space an operation first commits, so that
/// blocks freed by earlier operations can be reused (more than one FUSE
/// write can allocate).
const LOW_SPACE_BYTES: u64 = 32 << 20;

/// When access times are updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtimeMode {
    Noatime,
    /// Only when atime is older than mtime/ctime or a day old (Linux's
    /// default).
    Relatime,
    Strictatime,
}

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    pub atime: AtimeMode,
    /// Metadata blocks kept in the cache.
    pub cache_blocks: usize,
    /// Decoded inodes kept in memory.
    pub cache_inodes: usize,
    /// Glocks kept cached in a cluster; past this the least recently used
    /// are given up (`demote.rs`).
    pub max_glocks: usize,
    /// Journal to use (node slot); 0 with lock_nolock.
    pub jid: u32,
    /// Commit the running transaction at least this often.
    pub commit_interval: Duration,
    /// Allow mounting a lock_dlm file system with lock_nolock (for tools
    /// and tests on a single node; dangerous if others have it mounted).
    pub force_nolock: bool,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            read_only: false,
            atime: AtimeMode::Relatime,
            cache_blocks: 16384,
            cache_inodes: 65536,
            max_glocks: 65536,
            jid: 0,
            commit_interval: Duration::from_secs(5),
            force_nolock: false,
        }
    }
}

/// The system inodes the mount uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct SysInodes {
    pub master: u64,
    pub statfs: u64,
    pub statfs_change: u64,
    pub unlinked: u64,
    pub journal: u64,
}

/// What `df` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    pub block_size: u32,
    pub total: u64,
    pub free: u64,
    pub dinodes: u64,
}

/// What mounting did (for logs and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct MountReport {
    pub replay: ReplayReport,
    /// Unlinked inodes left by a crash that the mount freed.
    pub orphans_freed: u64,
    /// Other nodes' journals (not mounted) that needed replay.
    pub others_replayed: u64,
}

/// What inode glock LVBs saved (`lvb.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LvbStats {
    /// Re-grants that kept the dinode this node had before.
    pub kept: u64,
    /// Attribute requests answered from an LVB alone.
    pub attrs: u64,
    /// Dinodes read from the disk after a grant.
    pub read: u64,
}

pub struct Fs {
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) sb: Superblock,
    pub(crate) geo: Geometry,
    pub(crate) cache: BufCache,
    pub(crate) log: Option<Log>,
    pub(crate) rgrps: Rgrps,
    pub(crate) glocks: Glocks,
    pub(crate) inodes: HashMap<u64, Dinode>,
    /// Dinodes whose inode glock this node gave up, kept aside: used again
    /// without a read if the next grant's LVB says nobody changed them
    /// (see `lvb.rs`). Never read without the glock held.
    pub(crate) released_inodes: HashMap<u64, Dinode>,
    /// How inode reads after a grant were served (for `rdlmfs status`).
    pub(crate) lvb_stats: LvbStats,
    /// Open handles per inode (an unlinked inode is freed when this drops
    /// to zero).
    pub(crate) opens: HashMap<u64, u32>,
    /// Inodes with no links that are still open, listed in our unlinked
    /// file so a crash cannot leak them.
    pub(crate) unlinked: BTreeSet<u64>,
    /// Unlinked inodes nobody has open any more: freed by
    /// [`Fs::free_doomed`] after the operation that doomed them (freeing a
    /// large file takes several transactions, which an operation that may
    /// be undone and run again must not contain).
    pub(crate) doomed: BTreeSet<u64>,
    /// Unlinked inodes of ours that another node still has open: freed
    /// by a delete waiter once it gets their iopen glock (`iopen.rs`).
    pub(crate) delete_waits: BTreeSet<u64>,
    /// `unlinked` and `doomed` at the savepoint.
    saved: Option<(BTreeSet<u64>, BTreeSet<u64>)>,
    pub(crate) opts: MountOptions,
    pub(crate) sys: SysInodes,
    /// Where every journal lies, read at mount while every glock could be
    /// had: recovering a dead node's journal later must not need any glock
    /// but the journal's own (the others wait for that recovery).
    journals: Vec<JournalExtent>,
    /// A cluster mount's I/O gate: once shut (this node lost the cluster)
    /// every operation fails, also those cached data could answer.
    gate: Option<Arc<GatedDevice>>,
    /// The statfs change last written to our statfs_change file.
    written_delta: StatfsDelta,
    /// statfs_change as found at mount (earlier sessions' unfolded changes).
    base_delta: StatfsDelta,
    last_commit: Instant,
    withdrawn: bool,
    pub(crate) report: MountReport,
}

fn refuse(dev: &dyn BlockDevice, detail: String) -> FsError {
    FsError::Corrupt {
        device: dev.name().to_string(),
        detail,
    }
}

impl Fs {
    /// Mounts with `lock_nolock` (one node).
    pub fn mount(dev: Arc<dyn BlockDevice>, opts: MountOptions) -> Result<Fs> {
        Fs::mount_with(dev, opts, Arc::new(Nolock))
    }

    /// Mounts with the given lock module. Checks the superblock and the
    /// system files before writing anything; replays this node's journal
    /// if it is dirty; frees inodes a crash left on the unlinked list.
    pub fn mount_with(
        dev: Arc<dyn BlockDevice>,
        opts: MountOptions,
        proto: Arc<dyn LockProtocol>,
    ) -> Result<Fs> {
        let sb = io::read_superblock(&*dev)?;
        if sb.incompat & !INCOMPAT_KNOWN != 0 {
            return Err(refuse(
                &*dev,
                format!("unknown incompatible features {:#x}", sb.incompat),
            ));
        }
        if sb.unknown_ro_compat() != 0 && !opts.read_only {
            return Err(refuse(
                &*dev,
                format!(
                    "unknown read-only-compatible features {:#x}: mount read-only",
                    sb.unknown_ro_compat()
                ),
            ));
        }
        if proto.name() == "lock_nolock" && sb.lock_proto == LockProto::Dlm && !opts.force_nolock {
            return Err(refuse(
                &*dev,
                "the file system uses lock_dlm (it may be mounted on other nodes); mount it through the cluster, or force lock_nolock if no other node has it mounted".into(),
            ));
        }
        if opts.jid >= sb.journals {
            return Err(refuse(
                &*dev,
                format!(
                    "journal {} does not exist ({} journals)",
                    opts.jid, sb.journals
                ),
            ));
        }
        let geo = sb.geometry();
        let needed = sb.total_blocks.saturating_mul(u64::from(sb.block_size));
        if dev.size() < needed {
            return Err(refuse(
                &*dev,
                format!(
                    "the device has {} bytes, the file system needs {needed}: truncated device?",
                    dev.size()
                ),
            ));
        }
        io::check_block_size(&*dev, sb.block_size)?;
        let glocks = Glocks::new(proto);
        let mut fs = Fs {
            cache: BufCache::new(geo, opts.cache_blocks),
            dev,
            sb,
            geo,
            log: None,
            rgrps: Rgrps::new(Vec::new(), opts.jid, glocks.clone()),
            glocks,
            inodes: HashMap::new(),
            released_inodes: HashMap::new(),
            lvb_stats: LvbStats::default(),
            opens: HashMap::new(),
            unlinked: BTreeSet::new(),
            doomed: BTreeSet::new(),
            delete_waits: BTreeSet::new(),
            saved: None,
            sys: SysInodes::default(),
            journals: Vec::new(),
            gate: None,
            written_delta: StatfsDelta::default(),
            base_delta: StatfsDelta::default(),
            last_commit: Instant::now(),
            withdrawn: false,
            report: MountReport::default(),
            opts,
        };
        fs.sys.master = fs.sb.master_dir;
        // One node at a time mounts or recovers journals (the control
        // lock). Our journal first: nothing else may be read before it is
        // replayed; we hold its glock until unmount.
        let jid = fs.opts.jid;
        fs.glocks
            .acquire(GlockName::control(), GlockMode::Exclusive)?;
        fs.glocks
            .acquire_pinned(GlockName::journal(jid), GlockMode::Exclusive)?;
        let jindex = fs.sb.jindex;
        let jino = fs.retrying(|fs| fs.sys_lookup(jindex, &sysfile::journal_name(jid)))?;
        let extent = fs.retrying(|fs| fs.journal_extent(jid, jino))?;
        let replay = recovery::replay(&*fs.dev, geo, extent, fs.opts.read_only)?;
        if replay.was_dirty && fs.opts.read_only {
            return Err(refuse(
                &*fs.dev,
                format!("journal {jid} needs replay, which a read-only mount cannot do; mount read-write once"),
            ));
        }
        // Replay wrote in place behind the cache's back.
        fs.cache = BufCache::new(geo, fs.opts.cache_blocks);
        fs.inodes.clear();
        fs.report.replay = replay;
        // Journals of nodes that are not mounted (nobody holds their
        // glock): replay what a crash left there before reading anything
        // those nodes may have changed.
        if !fs.opts.read_only {
            for other in (0..fs.sb.journals).filter(|j| *j != jid) {
                if let Some(r) = fs.recover_journal_if_free(other)? {
                    if r.transactions > 0 {
                        fs.report.others_replayed += 1;
                    }
                }
            }
        }
        fs.sys.journal = jino;
        fs.retrying(|fs| fs.load_system_files(jid))?;
        if fs.glocks.is_clustered() {
            for j in 0..fs.sb.journals {
                let e = fs.retrying(|fs| {
                    let jino = fs.sys_lookup(jindex, &sysfile::journal_name(j))?;
                    fs.journal_extent(j, jino)
                })?;
                fs.journals.push(e);
            }
        }
        // This node's own system files: nobody else touches them while it
        // is mounted, and a commit must never wait for their glocks.
        for ino in [fs.sys.statfs_change, fs.sys.unlinked] {
            fs.glocks
                .acquire_pinned(GlockName::inode(ino), GlockMode::Exclusive)?;
        }
        if let Some(pos) = replay.position {
            fs.log = Some(Log::new(geo, jid, extent.start, extent.len, pos));
        } else if !fs.opts.read_only {
            return Err(refuse(
                &*fs.dev,
                "journal position unknown after replay".into(),
            ));
        }
        if !fs.opts.read_only {
            fs.report.orphans_freed = fs.retrying(|fs| fs.free_orphans())?;
            fs.retrying(|fs| fs.commit())?;
        }
        tracing::info!(
            device = fs.dev.name(),
            jid,
            read_only = fs.opts.read_only,
            lock = fs.glocks.protocol(),
            replayed = replay.transactions,
            orphans = fs.report.orphans_freed,
            others_replayed = fs.report.others_replayed,
            "mounted"
        );
        fs.glocks.release(GlockName::control())?;
        Ok(fs)
    }

    /// Replays journal `jid` if no node holds its glock (its owner is not
    /// mounted), holding the glock meanwhile. None if it is held.
    pub(crate) fn recover_journal_if_free(&mut self, jid: u32) -> Result<Option<ReplayReport>> {
        let name = GlockName::journal(jid);
        if !self.glocks.try_acquire(name, GlockMode::Exclusive)? {
            return Ok(None);
        }
        let jindex = self.sb.jindex;
        let r = (|| {
            let jino = self.retrying(|fs| fs.sys_lookup(jindex, &sysfile::journal_name(jid)))?;
            let extent = self.retrying(|fs| fs.journal_extent(jid, jino))?;
            recovery::replay(&*self.dev, self.geo, extent, false)
        })();
        let released = self.glocks.release(name);
        let report = r?;
        released?;
        if report.transactions > 0 {
            tracing::info!(
                device = self.dev.name(),
                jid,
                transactions = report.transactions,
                "replayed the journal of a node that is not mounted"
            );
            self.cache = BufCache::new(self.geo, self.opts.cache_blocks);
            self.inodes.clear();
            self.rgrps.invalidate();
        }
        Ok(Some(report))
    }

    /// Replays journal `jid` of a node that died while this one is
    /// mounted. The caller holds the journal's glock Exclusive and has
    /// fenced the dead node. Commits our own transaction first, so the
    /// clean blocks dropped afterwards are all that changes in the cache.
    pub fn recover_dead_journal(&mut self, jid: u32) -> Result<ReplayReport> {
        let Some(extent) = self.journals.get(jid as usize).copied() else {
            return Err(FsError::Journal {
                device: self.dev.name().to_string(),
                jid,
                detail: "no such journal (or it was not found at mount)".into(),
            });
        };
        if self.opts.read_only {
            return Err(FsError::Journal {
                device: self.dev.name().to_string(),
                jid,
                detail: "a dead node's journal needs replay, which a read-only mount cannot do"
                    .into(),
            });
        }
        self.commit()?;
        let report = recovery::replay(&*self.dev, self.geo, extent, false)?;
        // The dead node held Exclusive every glock covering what it
        // journaled, so nothing of it should be cached here; drop the
        // clean blocks anyway, they cost only reads.
        self.cache.invalidate_clean();
        Ok(report)
    }

    /// Reads the rindex and finds this node's system files.
    fn load_system_files(&mut self, jid: u32) -> Result<()> {
        let fs = self;
        let geo = fs.geo;
        let rindex_bytes = fs.jdata_read_all(fs.sb.rindex)?;
        let rindex = decode_rindex(&geo, fs.sb.rindex, &rindex_bytes)?;
        if rindex.len() != fs.sb.rgrps as usize {
            return Err(refuse(
                &*fs.dev,
                format!(
                    "the rindex has {} entries, the superblock says {} rgrps",
                    rindex.len(),
                    fs.sb.rgrps
                ),
            ));
        }
        fs.rgrps = Rgrps::new(rindex, jid, fs.glocks.clone());
        let master = fs.sb.master_dir;
        let per_node = fs.sys_lookup(master, sysfile::PER_NODE)?;
        fs.sys.statfs = fs.sys_lookup(master, sysfile::STATFS)?;
        fs.sys.statfs_change = fs.sys_lookup(per_node, &sysfile::statfs_change_name(jid))?;
        fs.sys.unlinked = fs.sys_lookup(per_node, &sysfile::unlinked_name(jid))?;
        let ch = fs.jdata_read_all(fs.sys.statfs_change)?;
        fs.base_delta = sysfile::decode_statfs_change(fs.sys.statfs_change, &ch)?;
        fs.written_delta = fs.base_delta;
        Ok(())
    }

    /// Starts recording what the next operation changes, so that
    /// [`Fs::rollback`] can undo it (see [`FsError::GlockWait`]).
    pub(crate) fn savepoint(&mut self) {
        self.cache.savepoint();
        self.rgrps.savepoint();
        self.saved = Some((self.unlinked.clone(), self.doomed.clone()));
    }

    /// Undoes everything since the savepoint (or since the last commit
    /// within it) and starts a new savepoint there.
    pub(crate) fn rollback(&mut self) {
        let touched = self.cache.rollback();
        self.rgrps.rollback();
        // Cached dinodes whose blocks the undone change touched may hold
        // undone changes; the buffer cache has the right bytes. (A dinode
        // lives in its own block, at its inode's address.)
        for b in touched {
            self.inodes.remove(&b);
            self.released_inodes.remove(&b);
        }
        if let Some((u, d)) = self.saved.clone() {
            self.unlinked = u;
            self.doomed = d;
        }
    }

    pub(crate) fn release_savepoint(&mut self) {
        self.cache.release_savepoint();
        self.rgrps.release_savepoint();
        self.saved = None;
    }

    /// Runs `f` until it needs no glock this node does not hold: on a
    /// [`FsError::GlockWait`] the changes are undone, the glock acquired
    /// and `f` runs again. For callers that own the file system outright
    /// (mount, unmount, tests); the FUSE adapter does the same but lets
    /// the file system go while it waits.
    pub fn retrying<T>(&mut self, mut f: impl FnMut(&mut Fs) -> Result<T>) -> Result<T> {
        loop {
            self.savepoint();
            match f(self) {
                Err(FsError::GlockWait { name, mode }) => {
                    self.rollback();
                    self.release_savepoint();
                    self.glocks.acquire(name, mode)?;
                }
                r => {
                    self.release_savepoint();
                    return r;
                }
            }
        }
    }

    /// Frees the doomed inodes (see [`Fs::doomed`]). Each may need glocks
    /// this node does not hold: a [`FsError::GlockWait`] comes back to the
    /// caller after the current chunk is undone; calling again continues.
    pub fn free_doomed(&mut self) -> Result<()> {
        while let Some(ino) = self.doomed.first().copied() {
            self.begin_change()?;
            let r = self.destroy_inode(ino);
            match r {
                Ok(()) => {
                    self.doomed.remove(&ino);
                    self.end_change()?;
                    // Held Exclusive to prove nobody had it open.
                    self.glocks.release(GlockName::iopen(ino))?;
                }
                Err(e) => {
                    if e.is_fatal() {
                        self.withdraw(&e);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub fn report(&self) -> MountReport {
        self.report
    }

    /// The glock table (shared with the demote worker).
    pub fn glocks(&self) -> &Glocks {
        &self.glocks
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    pub fn is_read_only(&self) -> bool {
        self.opts.read_only
    }

    /// Looks a system file up by name (the system tree has no hashed
    /// directories larger than a few entries, but lookup handles both).
    fn sys_lookup(&mut self, dir: u64, name: &str) -> Result<u64> {
        match self.dir_lookup(dir, name.as_bytes())? {
            Some((formal, _)) => Ok(crate::format::formal_addr(formal)),
            None => Err(refuse(
                &*self.dev,
                format!("system file {name} is missing from directory {dir}"),
            )),
        }
    }

    fn journal_extent(&mut self, jid: u32, jino: u64) -> Result<JournalExtent> {
        let di = self.dinode(jino)?;
        let bs = u64::from(self.geo.block_size);
        let len = di.size / bs;
        if di.is_jdata() || di.size % bs != 0 || !(8..=u64::from(u32::MAX)).contains(&len) {
            return Err(refuse(
                &*self.dev,
                format!("journal{jid} (inode {jino}) has a bad size or flags"),
            ));
        }
        let Some(start) = self.map_block(jino, &di, 0)? else {
            return Err(refuse(
                &*self.dev,
                format!("journal{jid} has no first block"),
            ));
        };
        for l in 1..len {
            if self.map_block(jino, &di, l)? != Some(start + l) {
                return Err(refuse(
                    &*self.dev,
                    format!("journal{jid} (inode {jino}) is not one contiguous run"),
                ));
            }
        }
        Ok(JournalExtent {
            jid,
            start,
            len: len as u32,
        })
    }

    /// Frees the inodes on our unlinked list (open at a crash; nobody has
    /// them open now).
    fn free_orphans(&mut self) -> Result<u64> {
        let bytes = self.jdata_read_all(self.sys.unlinked)?;
        let list = sysfile::decode_unlinked(&self.geo, self.sys.unlinked, &bytes)?;
        let mut n = 0;
        for ino in list.into_iter().filter(|i| *i != 0) {
            match self.rgrps.state(&mut self.cache, &*self.dev, ino)? {
                Some(BlockState::Unlinked) => {
                    self.unlinked.insert(ino);
                    if !self.may_free_unlinked(ino)? {
                        // Open on another node: a delete waiter frees it.
                        continue;
                    }
                    self.destroy_inode(ino)?;
                    self.glocks.release(GlockName::iopen(ino))?;
                    n += 1;
                    self.maybe_commit()?;
                }
                other => {
                    tracing::warn!(ino, state = ?other, "unlinked list names a block that is not an unlinked dinode; dropping the entry");
                }
            }
        }
        self.write_unlinked_list()?;
        Ok(n)
    }

    /// Rewrites our unlinked file from [`Fs::unlinked`].
    pub(crate) fn write_unlinked_list(&mut self) -> Result<()> {
        let list: Vec<u64> = self.unlinked.iter().copied().collect();
        let bytes = sysfile::encode_unlinked(&list);
        let ino = self.sys.unlinked;
        self.jdata_replace(ino, &bytes)
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.withdrawn {
            return Err(FsError::Withdrawn {
                device: self.dev.name().to_string(),
            });
        }
        if self.opts.read_only {
            return Err(FsError::Errno(libc::EROFS));
        }
        Ok(())
    }

    /// Called before an operation that changes anything.
    pub(crate) fn begin_change(&mut self) -> Result<()> {
        self.check_writable()?;
        self.make_room()
    }

    /// Blocks freed by the running transaction are reused only after it
    /// commits. On a nearly full device that would make deleting a file
    /// useless until the commit timer fires (ENOSPC right after `rm`), so
    /// the transaction is committed first — here, between operations,
    /// never in the middle of one.
    fn make_room(&mut self) -> Result<()> {
        let pending = self.rgrps.pending_frees();
        if pending == 0 || self.log.is_none() {
            return Ok(());
        }
        let usable = self.statfs()?.free.saturating_sub(pending);
        if usable < LOW_SPACE_BYTES / u64::from(self.geo.block_size) {
            self.commit()?;
        }
        Ok(())
    }

    /// A fatal error during a change: the running transaction cannot be
    /// trusted, so nothing more is written (GFS2's "withdraw"). The journal
    /// keeps the last committed state; a remount replays it.
    pub(crate) fn withdraw(&mut self, e: &FsError) {
        if !self.withdrawn {
            tracing::error!(device = self.dev.name(), error = %e, "withdrawing: no further writes until remount");
        }
        self.withdrawn = true;
    }

    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn
    }

    /// Ties the mount to the I/O gate its device goes through (a cluster
    /// mount); see [`Fs::is_cut_off`].
    pub fn set_gate(&mut self, gate: Arc<GatedDevice>) {
        self.gate = Some(gate);
    }

    /// This node was fenced off the cluster: nothing it caches can be
    /// trusted, and nothing may reach the disk. Every operation fails
    /// until a remount.
    pub fn is_cut_off(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.is_shut())
    }

    /// Commits if the running transaction is large or old.
    pub fn maybe_commit(&mut self) -> Result<()> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let limit = (log.max_transaction() / 4) as usize;
        if self.cache.dirty_blocks() + self.cache.pending_revokes() >= limit
            || (self.cache.has_changes() && self.last_commit.elapsed() >= self.opts.commit_interval)
        {
            self.commit()?;
        }
        Ok(())
    }

    /// Whether the running transaction is older than the commit interval.
    pub fn commit_due(&self) -> bool {
        self.cache.has_changes() && self.last_commit.elapsed() >= self.opts.commit_interval
    }

    /// Writes the running transaction to the log and makes it durable
    /// (fsync, sync, the commit timer, unmount).
    pub fn commit(&mut self) -> Result<()> {
        if self.withdrawn {
            return Err(FsError::Withdrawn {
                device: self.dev.name().to_string(),
            });
        }
        if self.log.is_none() {
            return Ok(());
        }
        let r = self.commit_inner();
        if let Err(e) = &r {
            self.withdraw(e);
        }
        r
    }

    fn commit_inner(&mut self) -> Result<()> {
        let delta = self.current_delta();
        if delta != self.written_delta {
            let bytes = sysfile::encode_statfs_change(&delta);
            let ino = self.sys.statfs_change;
            self.jdata_replace(ino, &bytes)?;
            self.written_delta = delta;
        }
        if !self.cache.has_changes() {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let log = self.log.as_mut().expect("checked");
        let need = log.blocks_for(self.cache.dirty_blocks(), self.cache.pending_revokes());
        if need > log.max_transaction() {
            return Err(FsError::Journal {
                device: self.dev.name().to_string(),
                jid: log.jid(),
                detail: format!(
                    "a transaction of {need} blocks exceeds the journal ({} blocks)",
                    log.capacity()
                ),
            });
        }
        if need > log.free() {
            self.cache.checkpoint(&*self.dev)?;
            let log = self.log.as_mut().expect("checked");
            log.checkpointed();
        }
        let log = self.log.as_mut().expect("checked");
        let (images, revokes) = self.cache.transaction();
        log.commit(&*self.dev, &images, &revokes, delta)?;
        drop(images);
        // Freed dinodes, now committed free, show link count 0 on disk
        // before the blocks can be reused (see Rgrps::take_dead_dinodes).
        let bs = u64::from(self.geo.block_size);
        for (addr, data) in self.rgrps.take_dead_dinodes() {
            self.dev
                .write_at(addr * bs, &data)
                .map_err(|e| FsError::Io(IoError::Device(e)))?;
        }
        self.cache.committed();
        self.rgrps.committed();
        if self.saved.is_some() {
            self.saved = Some((self.unlinked.clone(), self.doomed.clone()));
        }
        self.last_commit = Instant::now();
        // Keep the AIL (memory that cannot be evicted) bounded.
        if self.cache.ail_blocks() > self.opts.cache_blocks / 2 {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Checkpoints and writes a log header whose tail is the head, so that
    /// replay of this journal needs (and puts back) nothing older. Used
    /// before an Exclusive glock goes to another node.
    pub(crate) fn checkpoint_and_mark_tail(&mut self) -> Result<()> {
        let Some(log) = self.log.as_ref() else {
            return Ok(());
        };
        let pos = log.position();
        if self.cache.ail_blocks() == 0 && pos.tail == pos.head {
            return Ok(());
        }
        let r = (|| {
            self.checkpoint()?;
            let delta = self.current_delta();
            let log = self.log.as_mut().expect("checked");
            log.write_header(&*self.dev, 0, delta)
        })();
        if let Err(e) = &r {
            self.withdraw(e);
        }
        r
    }

    /// Writes every committed block in place and moves the log tail.
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(log) = self.log.as_mut() {
            self.cache.checkpoint(&*self.dev)?;
            log.checkpointed();
        }
        Ok(())
    }

    fn current_delta(&self) -> StatfsDelta {
        let d = self.rgrps.delta();
        StatfsDelta {
            total: self.base_delta.total + d.total,
            free: self.base_delta.free + d.free,
            dinodes: self.base_delta.dinodes + d.dinodes,
        }
    }

    /// What `df` shows: the master statfs plus every node's unfolded
    /// changes (with one node, ours).
    pub fn statfs(&mut self) -> Result<Statfs> {
        let bytes = self.jdata_read_all(self.sys.statfs)?;
        let rec = StatfsRecord::decode(self.sys.statfs, &bytes)?;
        let d = self.current_delta();
        let add = |v: u64, d: i64| u64::try_from(i128::from(v) + i128::from(d)).unwrap_or(0);
        Ok(Statfs {
            block_size: self.geo.block_size,
            total: add(rec.total, d.total),
            free: add(rec.free, d.free),
            dinodes: add(rec.dinodes, d.dinodes),
        })
    }

    /// Folds our statfs changes into the master statfs file (one
    /// transaction, so the sum never changes).
    fn fold_statfs(&mut self) -> Result<()> {
        let d = self.current_delta();
        if d == StatfsDelta::default() {
            return Ok(());
        }
        let bytes = self.jdata_read_all(self.sys.statfs)?;
        let rec = StatfsRecord::decode(self.sys.statfs, &bytes)?;
        let add = |v: u64, d: i64| u64::try_from(i128::from(v) + i128::from(d)).unwrap_or(0);
        let new = StatfsRecord {
            total: add(rec.total, d.total),
            free: add(rec.free, d.free),
            dinodes: add(rec.dinodes, d.dinodes),
        };
        let ino = self.sys.statfs;
        self.jdata_replace(ino, &new.encode())?;
        self.rgrps.folded();
        self.base_delta = StatfsDelta::default();
        let ino = self.sys.statfs_change;
        self.jdata_replace(ino, &sysfile::encode_statfs_change(&StatfsDelta::default()))?;
        self.written_delta = StatfsDelta::default();
        Ok(())
    }

    /// The part of unmounting that may need glocks (and so may be undone
    /// and run again): open unlinked files are freed as if closed, statfs
    /// changes are folded into the master file, and all is committed. A
    /// cluster mount runs it while other nodes can still ask for glocks.
    pub fn prepare_unmount(&mut self) -> Result<()> {
        if self.log.is_none() || self.withdrawn || self.opts.read_only {
            return Ok(());
        }
        let open: Vec<u64> = self.unlinked.iter().copied().collect();
        for ino in open {
            if self.opens.remove(&ino).is_some() {
                self.iopen_on_last_close(ino)?;
            }
            // Open on another node: it stays on our list for the next
            // mount of this journal.
            if self.may_free_unlinked(ino)? {
                self.doomed.insert(ino);
            }
        }
        self.delete_waits.clear();
        self.free_doomed()?;
        self.fold_statfs()?;
        self.commit()
    }

    /// Flushes everything and leaves the journal clean: commit, fold
    /// statfs, checkpoint, CLEAN log header, flush. Open unlinked files are
    /// freed as if closed.
    pub fn unmount(mut self) -> Result<()> {
        // A read-only mount wrote nothing and must write nothing now.
        if self.log.is_none() || self.withdrawn || self.opts.read_only {
            let _ = self.glocks.release_all();
            return if self.withdrawn {
                Err(FsError::Withdrawn {
                    device: self.dev.name().to_string(),
                })
            } else {
                Ok(())
            };
        }
        self.retrying(|fs| fs.prepare_unmount())?;
        self.write_unlinked_list()?;
        self.commit()?;
        self.checkpoint()?;
        let log = self.log.as_mut().expect("checked");
        log.write_header(
            &*self.dev,
            crate::format::journal::lh_flags::CLEAN,
            StatfsDelta::default(),
        )?;
        self.dev.flush().map_err(IoError::Device)?;
        // Everything is in place: the Exclusive glocks whose inode or rgrp
        // this node has in memory leave LVBs describing them, so the other
        // nodes keep their copies (nothing is read for this).
        let mut lvbs = HashMap::new();
        for (name, mode) in self.glocks.list() {
            if mode != GlockMode::Exclusive {
                continue;
            }
            let lvb = match name.kind {
                GlockKind::Inode => match self.inodes.get(&name.number) {
                    Some(d) => Some(InodeLvb::encode(d)),
                    // A buffer-cache hit, or nothing.
                    None if self.cache.is_cached(name.number) => self
                        .cache
                        .read_meta::<Dinode>(&*self.dev, name.number)
                        .ok()
                        .map(|d| InodeLvb::encode(&d)),
                    None => None,
                },
                GlockKind::Rgrp => self.rgrps.loaded_lvb(name.number),
                _ => None,
            };
            if let Some(l) = lvb {
                lvbs.insert(name, l);
            }
        }
        self.glocks.release_all_with(lvbs)?;
        tracing::info!(device = self.dev.name(), "unmounted cleanly");
        Ok(())
    }

    /// Log position (tests).
    pub fn log_position(&self) -> Option<LogPosition> {
        self.log.as_ref().map(|l| l.position())
    }

    /// Counters for `rdlmfs status` and tests.
    pub fn stats(&self) -> FsStats {
        FsStats {
            cache: self.cache.stats(),
            cached_blocks: self.cache.cached_blocks(),
            cached_inodes: self.inodes.len(),
            lvb: self.lvb_stats,
            rgrp_lvb: self.rgrps.lvb_stats(),
            glocks: self.glocks.stats(),
            glocks_held: self.glocks.held(),
            log: self.log.as_ref().map(|l| l.stats()).unwrap_or_default(),
        }
    }

    /// Whether `di` is a system file (not visible through the mount).
    pub(crate) fn is_system(di: &Dinode) -> bool {
        di.flags.contains(DinodeFlags::SYSTEM)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub cache: crate::buf::CacheStats,
    pub cached_blocks: usize,
    pub cached_inodes: usize,
    pub lvb: LvbStats,
    pub rgrp_lvb: crate::rgrp::RgrpLvbStats,
    pub glocks: crate::glock::GlockStats,
    pub glocks_held: usize,
    pub log: crate::log::LogStats,
}
