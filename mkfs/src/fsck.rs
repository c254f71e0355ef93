//! fsck.rdlmfs as a library: a whole-image check that, unlike
//! [`crate::verify`], does not stop at the first problem but collects every
//! finding, and can repair what it understands.
//!
//! Owns: the lenient walk (superblock → rindex → rgrp headers and bitmaps;
//! master and root trees → dinodes → pointer trees, leaves, xattr chains;
//! the unlinked lists; the journals' heads), the list of findings, and the
//! repairs. May not touch: the byte layout (that is `rdlmfs::format`'s), a
//! journal's contents (replay belongs to the mount), or the device at all
//! unless the caller asked for repair — [`check`] with `repair: false`
//! never writes.
//!
//! Repair policy (what `-y` does), chosen so that a second run finds the
//! image clean:
//! - Bitmaps and rgrp free/dinode/unlinked counts are rebuilt from what the
//!   trees reference; an unreadable rgrp header or bitmap block is rebuilt
//!   from the rindex entry. If any tree could not be read completely, no
//!   block is freed (its unread part may still use them).
//! - A block with a bad checksum (or any other decode error) is untrusted:
//!   its checksum is never recomputed. A damaged dinode is treated as lost:
//!   entries naming it are removed and its blocks become unreferenced, so
//!   the bitmap rebuild frees them.
//! - Directory entries naming a block that the bitmap says is free or data,
//!   or that does not decode as a dinode, are removed; an entry whose type
//!   disagrees with its dinode is retyped; a directory linked twice loses
//!   the second entry.
//! - Link counts and charged-block counts are set to what was counted.
//! - Orphans (allocated dinodes no directory reaches and no unlinked list
//!   names) are *freed*, not moved to lost+found: creating lost+found needs
//!   an allocator and a directory grower this crate does not have yet, and
//!   a half-built lost+found would be worse than none. The finding names
//!   the inode, its type and size so a person can decide before using -y.
//! - A plain data block (of a regular, non-JDATA file) used by two files is
//!   copied to a free block for the second file. Cross-linked metadata
//!   blocks are reported and left.
//! - statfs is set to the rebuilt totals minus the nodes' unfolded changes.
//! - Nothing is repaired while a journal is dirty: replaying it later would
//!   undo the repairs. The mount replays journals; fsck does not.
//!
//! Limits: keeps one map entry per used block (as verify); damage to the
//! system tree (master directory, rindex) that prevents the walk is
//! reported as an uncorrectable error.

use blockdev::BlockDevice;
use rdlmfs::format::block::{decode_block, Header};
use rdlmfs::format::dinode::{self, indirect_ptrs, FileType};
use rdlmfs::format::dir::{self, DirEntry, Leaf};
use rdlmfs::format::io::{self, IoError};
use rdlmfs::format::journal::{lh_flags, Commit, LogHeader, StatfsDelta};
use rdlmfs::format::rgrp::{
    self, BitmapBlock, BlockState, RgrpBitmap, RgrpHeader, RindexEntry, StateCounts,
};
use rdlmfs::format::superblock::Superblock;
use rdlmfs::format::sysfile::{self, StatfsRecord};
use rdlmfs::format::{
    formal_ino, formal_matches, BlockType, Dinode, DinodeContent, DinodeFlags, FormatError,
    Geometry, Indirect, JData, MetaBlock, RgrpFlags, XattrBlock,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Why the check could not run (or not finish). Findings about the file
/// system are not errors: they are in [`FsckReport`].
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// There is no rdlmfs superblock, or the device is too small for one.
    #[error("{device}: not an rdlmfs file system: {detail}")]
    NotRdlmfs { device: String, detail: String },
    /// The device ends before the file system does.
    #[error("{device}: {detail}")]
    Truncated { device: String, detail: String },
    /// The system tree is damaged so badly the walk cannot proceed.
    #[error("{device}: cannot check: {detail}")]
    Damaged { device: String, detail: String },
    /// A read or write failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A read failed during the walk: the check is incomplete and nothing
    /// was repaired.
    #[error("{device}: a read failed, so the check stopped before repairing anything: {detail}")]
    ReadFailed { device: String, detail: String },
}

impl FsckError {
    /// Whether this is damage to the file system (exit 4) rather than an
    /// operational failure (exit 8).
    pub fn is_damage(&self) -> bool {
        matches!(self, FsckError::Damaged { .. })
    }
}

/// What the caller wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Write repairs. `false`: read only, never writes.
    pub repair: bool,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detail: String,
    /// This version knows how to repair it.
    pub fixable: bool,
    /// It was repaired.
    pub fixed: bool,
}

/// A journal's state as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalState {
    pub jid: u32,
    pub blocks: u64,
    /// (position, sequence, clean) of the head record.
    pub head: Option<(u64, u64, bool)>,
}

/// What the check found and did.
#[derive(Debug, Clone)]
pub struct FsckReport {
    pub superblock: Superblock,
    pub findings: Vec<Finding>,
    pub journals: Vec<JournalState>,
    pub dinodes: u64,
    pub blocks_used: u64,
    /// Blocks written by repairs.
    pub blocks_written: u64,
    /// Why repairs were not attempted, if they were asked for and skipped.
    pub repair_skipped: Option<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    pub fn unfixed(&self) -> usize {
        self.findings.iter().filter(|f| !f.fixed).count()
    }
}

/// A progress step: stage name, done, total.
pub type ProgressFn<'a> = &'a mut dyn FnMut(&'static str, u64, u64);

/// Where a block is pointed at from, when that is a plain pointer slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// The dinode or indirect block holding the pointer.
    block: u64,
    in_dinode: bool,
    index: usize,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    state: BlockState,
    owner: u64,
}

struct Node {
    d: Dinode,
    /// Indirect and xattr blocks.
    meta: u64,
    /// (logical block, address) of every data block.
    data: Vec<(u64, u64)>,
}

/// An edit of one directory entry.
#[derive(Debug, Clone)]
enum Edit {
    Remove,
    Retype(FileType),
}

/// An entry edit: the entry's name, the edit, and the leaf holding it
/// (`None` in a linear directory).
type EntryEdit = (Vec<u8>, Edit, Option<u64>);

/// Dinode fields to set: nlink, blocks, entries.
#[derive(Debug, Clone, Copy, Default)]
struct DinodeFix {
    nlink: Option<u32>,
    blocks: Option<u64>,
    entries: Option<u32>,
}

struct CrossLink {
    addr: u64,
    owner: u64,
    slot: Slot,
    /// Where the copy goes (0 until a free block is found).
    copy: u64,
}

struct Rg {
    entry: RindexEntry,
    header: Option<RgrpHeader>,
    bitmap: Option<RgrpBitmap>,
}

struct Checker<'a> {
    dev: &'a dyn BlockDevice,
    geo: Geometry,
    sb: Superblock,
    findings: Vec<Finding>,
    claims: HashMap<u64, Claim>,
    nodes: HashMap<u64, Node>,
    /// Inodes whose dinode does not decode, with the reason.
    bad: HashMap<u64, String>,
    /// Some tree could not be read completely: freeing unreferenced blocks
    /// is unsafe.
    incomplete: bool,
    rgs: Vec<Rg>,
    /// Directory → (entry name → (edit, leaf holding it or None if linear)).
    edits: HashMap<u64, Vec<EntryEdit>>,
    /// Directories reached, and their kept entries.
    dirs: HashMap<u64, Vec<DirEntry>>,
    /// Non-directory inode → entries naming it (kept ones).
    links: HashMap<u64, u32>,
    /// Dinode fields to set: (nlink, blocks, entries).
    fixes: BTreeMap<u64, DinodeFix>,
    crosslinks: Vec<CrossLink>,
    /// The first device error met while reading.
    io_error: RefCell<Option<String>>,
}

/// Checks (and with `opts.repair`, repairs) the file system on `dev`.
pub fn check(
    dev: &dyn BlockDevice,
    opts: FsckOptions,
    progress: ProgressFn<'_>,
) -> Result<FsckReport, FsckError> {
    let sb = read_sb(dev)?;
    let geo = sb.geometry();
    let need = sb.total_blocks.saturating_mul(u64::from(sb.block_size));
    if dev.size() < need {
        return Err(FsckError::Truncated {
            device: dev.name().to_string(),
            detail: format!(
                "the device is {} bytes but the superblock says the file system has {} blocks of {} ({need} bytes): the image is truncated",
                dev.size(),
                sb.total_blocks,
                sb.block_size
            ),
        });
    }
    let c = Checker {
        dev,
        geo,
        sb,
        findings: Vec::new(),
        claims: HashMap::new(),
        nodes: HashMap::new(),
        bad: HashMap::new(),
        incomplete: false,
        rgs: Vec::new(),
        edits: HashMap::new(),
        dirs: HashMap::new(),
        links: HashMap::new(),
        fixes: BTreeMap::new(),
        crosslinks: Vec::new(),
        io_error: RefCell::new(None),
    };
    c.run(opts, progress)
}

/// Reads the superblock, sorting errors into "not rdlmfs" (no superblock,
/// or one that does not decode: format 1 has no backup to repair from) and
/// device errors.
pub fn read_sb(dev: &dyn BlockDevice) -> Result<Superblock, FsckError> {
    match io::read_superblock(dev) {
        Ok(sb) => Ok(sb),
        Err(IoError::Device(e)) => Err(FsckError::Io(IoError::Device(e))),
        Err(IoError::Geometry { detail, .. }) => Err(FsckError::NotRdlmfs {
            device: dev.name().to_string(),
            detail,
        }),
        Err(IoError::Format { source, .. }) => {
            let detail = match &source {
                FormatError::BadMagic { .. } => format!("no superblock at byte 65536 ({source})"),
                // Format 1 has no backup superblocks, so a damaged one
                // cannot be repaired here.
                _ => format!("the superblock is damaged and cannot be trusted: {source}"),
            };
            Err(FsckError::NotRdlmfs {
                device: dev.name().to_string(),
                detail,
            })
        }
    }
}

impl Checker<'_> {
    fn find(&mut self, fixable: bool, detail: String) {
        self.findings.push(Finding {
            detail,
            fixable,
            fixed: false,
        });
    }

    fn damaged(&self, detail: String) -> FsckError {
        FsckError::Damaged {
            device: self.dev.name().to_string(),
            detail,
        }
    }

    /// Reads and decodes a block. A decode error is the caller's finding;
    /// a device error is also kept so the run stops before repairing: a
    /// block that could not be *read* says nothing about the file system,
    /// and repairing around it would destroy what it holds.
    fn read<T: MetaBlock>(&self, addr: u64) -> Result<T, IoError> {
        let r = io::read_meta::<T>(self.dev, &self.geo, addr);
        if let Err(e) = &r {
            if e.format_error().is_none() {
                let mut slot = self.io_error.borrow_mut();
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }
        }
        r
    }

    fn run(mut self, opts: FsckOptions, progress: ProgressFn<'_>) -> Result<FsckReport, FsckError> {
        // The rindex first: without it nothing else can be located.
        let rindex_ino = self.sb.rindex;
        if !self.load(rindex_ino, BlockState::Dinode) {
            let why = self.bad.get(&rindex_ino).cloned().unwrap_or_default();
            return Err(self.damaged(format!(
                "the rindex (inode {rindex_ino}) is unreadable: {why}"
            )));
        }
        let bytes = self
            .content(rindex_ino)
            .map_err(|e| self.damaged(format!("the rindex: {e}")))?;
        let rindex = rgrp::decode_rindex(&self.geo, rindex_ino, &bytes)
            .map_err(|e| self.damaged(format!("the rindex: {e}")))?;
        if rindex.len() != self.sb.rgrps as usize {
            self.find(
                false,
                format!(
                    "the superblock says {} resource groups, the rindex lists {}",
                    self.sb.rgrps,
                    rindex.len()
                ),
            );
        }
        self.read_rgrps(&rindex, progress);

        // The trees.
        progress("directories", 0, 1);
        let master = self.sb.master_dir;
        let root = self.sb.root_dir;
        if !self.load(master, BlockState::Dinode) {
            let why = self.bad.get(&master).cloned().unwrap_or_default();
            return Err(self.damaged(format!("the master directory is unreadable: {why}")));
        }
        self.walk_dir(master, master, "");
        if self.load(root, BlockState::Dinode) {
            self.walk_dir(root, root, "/");
        } else {
            let why = self.bad.get(&root).cloned().unwrap_or_default();
            self.find(
                false,
                format!("the root directory (inode {root}) is unreadable: {why}"),
            );
            self.incomplete = true;
        }
        progress("directories", 1, 1);

        let master_entries = self.dirs.get(&master).cloned().unwrap_or_default();
        let lookup = |entries: &[DirEntry], name: &str| {
            entries
                .iter()
                .find(|e| e.name == name.as_bytes())
                .map(|e| e.addr())
        };
        let jindex = lookup(&master_entries, sysfile::JINDEX);
        let per_node = lookup(&master_entries, sysfile::PER_NODE);
        let statfs_ino = lookup(&master_entries, sysfile::STATFS);
        let jentries = jindex
            .and_then(|j| self.dirs.get(&j).cloned())
            .unwrap_or_default();
        let pentries = per_node
            .and_then(|p| self.dirs.get(&p).cloned())
            .unwrap_or_default();

        // Unlinked lists: their inodes are legitimately unreachable.
        let mut changes = StatfsDelta::default();
        for jid in 0..self.sb.journals {
            let name = sysfile::unlinked_name(jid);
            match lookup(&pentries, &name) {
                Some(ul) => match self.content(ul).and_then(|b| {
                    sysfile::decode_unlinked(&self.geo, ul, &b).map_err(|e| e.to_string())
                }) {
                    Ok(list) => {
                        for ino in list.into_iter().filter(|&i| i != 0) {
                            if !self.load(ino, BlockState::Unlinked) {
                                self.find(false, format!("per_node/{name} names inode {ino}, which is unreadable: {}", self.bad.get(&ino).cloned().unwrap_or_default()));
                            }
                        }
                    }
                    Err(e) => {
                        self.find(false, format!("per_node/{name}: {e}"));
                        self.incomplete = true;
                    }
                },
                None => self.find(false, format!("the system tree has no per_node/{name}")),
            }
            let scn = sysfile::statfs_change_name(jid);
            match lookup(&pentries, &scn).map(|i| {
                self.content(i)
                    .and_then(|b| sysfile::decode_statfs_change(i, &b).map_err(|e| e.to_string()))
            }) {
                Some(Ok(d)) => {
                    changes.total += d.total;
                    changes.free += d.free;
                    changes.dinodes += d.dinodes;
                }
                Some(Err(e)) => self.find(false, format!("per_node/{scn}: {e}")),
                None => self.find(false, format!("the system tree has no per_node/{scn}")),
            }
        }

        // Link counts of non-directories.
        let mut links: Vec<(u64, u32)> = self.links.iter().map(|(&i, &n)| (i, n)).collect();
        links.sort_unstable();
        for (ino, n) in links {
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            if node.d.nlink != n {
                let have = node.d.nlink;
                self.find(
                    true,
                    format!("inode {ino} has link count {have} but {n} directory entries name it"),
                );
                self.fixes.entry(ino).or_default().nlink = Some(n);
            }
        }

        // Blocks no bitmap describes (the rindex is read before the rgrps,
        // so this is checked once everything is claimed).
        let mut outside: Vec<(u64, u64)> = self
            .claims
            .iter()
            .filter(|(a, _)| self.rg_index(**a).is_none())
            .map(|(a, c)| (*a, c.owner))
            .collect();
        outside.sort_unstable();
        for (addr, owner) in outside {
            self.find(false, format!("inode {owner} uses block {addr}, which lies outside every resource group's data"));
        }

        // Orphans, then bitmaps against the claims.
        self.orphans();
        let targets = self.bitmap_targets(opts.repair);
        let totals = self.compare_bitmaps(&targets);
        let statfs_fix = self.statfs(statfs_ino, &totals, changes);

        // Journals.
        let mut journals = Vec::new();
        for jid in 0..self.sb.journals {
            let name = sysfile::journal_name(jid);
            match lookup(&jentries, &name) {
                Some(ino) => {
                    if let Some(j) = self.journal(jid, ino, progress) {
                        journals.push(j);
                    }
                }
                None => self.find(false, format!("the system tree has no jindex/{name}")),
            }
        }

        if let Some(e) = self.io_error.take() {
            return Err(FsckError::ReadFailed {
                device: self.dev.name().to_string(),
                detail: e,
            });
        }
        let mut report = FsckReport {
            superblock: self.sb.clone(),
            findings: Vec::new(),
            journals: journals.clone(),
            dinodes: self.nodes.len() as u64,
            blocks_used: self.claims.len() as u64,
            blocks_written: 0,
            repair_skipped: None,
        };
        let dirty: Vec<u32> = journals
            .iter()
            .filter(|j| j.head.is_some_and(|h| !h.2))
            .map(|j| j.jid)
            .collect();
        if opts.repair && self.findings.iter().any(|f| f.fixable) {
            if dirty.is_empty() {
                report.blocks_written = self.repair(&targets, statfs_fix, progress)?;
                for f in &mut self.findings {
                    f.fixed = f.fixable;
                }
            } else {
                report.repair_skipped = Some(format!(
                    "journal(s) {dirty:?} are dirty: mount the file system to replay them (fsck does not replay; repairing first would be undone by the replay), then run fsck again"
                ));
            }
        }
        report.findings = self.findings;
        Ok(report)
    }

    /// Reads every rgrp header and bitmap; an unreadable one is a finding
    /// and is rebuilt on repair.
    fn read_rgrps(&mut self, rindex: &[RindexEntry], progress: ProgressFn<'_>) {
        let bs = self.geo.block_size;
        let mut expected_addr = self.sb.blkno() + 1;
        let n = rindex.len() as u64;
        for (i, e) in rindex.iter().enumerate() {
            progress("resource groups", i as u64, n);
            if e.addr != expected_addr {
                self.find(false, format!("rgrp {i} starts at {} but the previous one ends at {expected_addr}: rgrps must tile the device", e.addr));
            }
            expected_addr = e.end();
            let next = rindex.get(i + 1).map_or(0, |n| n.addr);
            let mut rg = Rg {
                entry: *e,
                header: None,
                bitmap: None,
            };
            let h = match self.read::<RgrpHeader>(e.addr) {
                Ok(h) => h,
                Err(err) => {
                    self.find(true, format!("rgrp {i}: header unreadable ({err}): rebuilt from the rindex and the trees"));
                    self.rgs.push(rg);
                    continue;
                }
            };
            if h.data0 != e.data0
                || h.data_len != e.data_len
                || h.flags != e.flags
                || 1 + h.bitmap_blocks != e.length
                || h.index != i as u32
                || h.next != next
            {
                self.find(true, format!("rgrp {i} at {}: header disagrees with the rindex entry (data0 {} len {} flags {:#x} index {} next {}; rindex data0 {} len {} flags {:#x} next {next}): rebuilt from the rindex", e.addr, h.data0, h.data_len, h.flags.0, h.index, h.next, e.data0, e.data_len, e.flags.0));
                rg.header = None;
                self.rgs.push(rg);
                continue;
            }
            let mut blocks = Vec::new();
            let mut ok = true;
            for k in 0..u64::from(h.bitmap_blocks) {
                match self.read::<BitmapBlock>(e.addr + 1 + k) {
                    Ok(b) => blocks.push(b),
                    Err(err) => {
                        self.find(
                            true,
                            format!(
                                "rgrp {i}: bitmap block unreadable ({err}): rebuilt from the trees"
                            ),
                        );
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                match RgrpBitmap::from_parts(bs, e.addr, &h, &blocks) {
                    Ok(bm) => rg.bitmap = Some(bm),
                    Err(err) => self.find(
                        true,
                        format!("rgrp {i}: bitmap inconsistent ({err}): rebuilt from the trees"),
                    ),
                }
            }
            rg.header = Some(h);
            self.rgs.push(rg);
        }
        if expected_addr != self.sb.total_blocks {
            self.find(
                false,
                format!(
                    "the last rgrp ends at {expected_addr}, the file system has {} blocks",
                    self.sb.total_blocks
                ),
            );
        }
        progress("resource groups", n, n);
    }

    /// The rgrp index and bitmap state of `addr`, if its bitmap was read.
    fn state_of(&self, addr: u64) -> Option<BlockState> {
        let i = self.rg_index(addr)?;
        let rg = &self.rgs[i];
        let k = u32::try_from(addr - rg.entry.data0).ok()?;
        rg.bitmap.as_ref()?.get(k)
    }

    fn rg_index(&self, addr: u64) -> Option<usize> {
        let i = self.rgs.partition_point(|r| r.entry.data0 <= addr);
        let i = i.checked_sub(1)?;
        self.rgs[i].entry.contains_data(addr).then_some(i)
    }

    /// Records that `owner` uses `addr` as `state`. A second claim is a
    /// cross-link; `slot` says whether it can be repaired by copying.
    fn claim(&mut self, addr: u64, state: BlockState, owner: u64, clonable: Option<Slot>) {
        if let Some(prev) = self.claims.get(&addr).copied() {
            match clonable {
                Some(slot) => {
                    self.find(true, format!("block {addr} is used by inode {} and by inode {owner}: copied to a new block for inode {owner}", prev.owner));
                    self.crosslinks.push(CrossLink {
                        addr,
                        owner,
                        slot,
                        copy: 0,
                    });
                }
                None => self.find(false, format!("block {addr} is used by inode {} and by inode {owner} (as metadata: not repaired by this version)", prev.owner)),
            }
            return;
        }
        self.claims.insert(addr, Claim { state, owner });
    }

    /// Loads dinode `ino` once: claims it and everything its tree and
    /// xattr chain use. `false` if it does not decode (recorded in `bad`).
    fn load(&mut self, ino: u64, state: BlockState) -> bool {
        if self.nodes.contains_key(&ino) {
            return true;
        }
        if self.bad.contains_key(&ino) {
            return false;
        }
        let d: Dinode = match self.read(ino) {
            Ok(d) => d,
            Err(e) => {
                self.bad.insert(ino, e.to_string());
                return false;
            }
        };
        self.claim(ino, state, ino, None);
        let mut data = Vec::new();
        let mut meta = 0u64;
        // Only plain data blocks of ordinary files can be cloned: every
        // other block carries its own address and owner in its header.
        let raw = !d.is_jdata() && !d.flags.contains(DinodeFlags::SYSTEM);
        if let DinodeContent::Pointers(ptrs) = &d.content {
            for (slot, &p) in ptrs.iter().enumerate() {
                if p != 0 {
                    let at = Slot {
                        block: ino,
                        in_dinode: true,
                        index: slot,
                    };
                    meta += self.subtree(
                        ino,
                        p,
                        u32::from(d.height) - 1,
                        slot as u64,
                        at,
                        raw,
                        &mut data,
                    );
                }
            }
        }
        let payload = dinode::data_payload(self.geo.block_size, d.is_jdata()) as u64;
        // A regular file may own blocks past its end: fallocate with
        // KEEP_SIZE preallocates them (zeroed), as on ext4 and GFS2.
        let prealloc_ok = d.file_type() == Some(FileType::Regular) && !d.is_jdata();
        for &(lblock, addr) in &data {
            if !prealloc_ok && lblock.saturating_mul(payload) >= d.size {
                self.find(false, format!("inode {ino}: block {addr} maps logical block {lblock}, past the end of file ({} bytes)", d.size));
            }
        }
        let mut charged = 1 + meta + data.len() as u64;
        let mut xa = d.xattr;
        let mut seen = HashSet::new();
        while xa != 0 {
            if !seen.insert(xa) {
                self.find(
                    false,
                    format!("inode {ino}: xattr chain loops at block {xa}"),
                );
                break;
            }
            match self.read::<XattrBlock>(xa) {
                Ok(x) if x.owner == ino => {
                    self.claim(xa, BlockState::Data, ino, None);
                    charged += 1;
                    meta += 1;
                    xa = x.next;
                }
                Ok(x) => {
                    self.find(
                        false,
                        format!("inode {ino}: xattr block {xa} belongs to inode {}", x.owner),
                    );
                    self.incomplete = true;
                    break;
                }
                Err(e) => {
                    self.find(false, format!("inode {ino}: xattr chain unreadable: {e}"));
                    self.incomplete = true;
                    break;
                }
            }
        }
        // A hashed directory's leaves are charged when the directory is read.
        if !d.is_exhash() && d.blocks != charged {
            self.find(
                true,
                format!("inode {ino} charges {} blocks but uses {charged}", d.blocks),
            );
            self.fixes.entry(ino).or_default().blocks = Some(charged);
        }
        self.nodes.insert(ino, Node { d, meta, data });
        true
    }

    /// Walks the subtree under `p` (at `level`); returns indirect blocks
    /// claimed.
    #[allow(clippy::too_many_arguments)]
    fn subtree(
        &mut self,
        ino: u64,
        p: u64,
        level: u32,
        base: u64,
        at: Slot,
        raw: bool,
        out: &mut Vec<(u64, u64)>,
    ) -> u64 {
        if level == 0 {
            out.push((base, p));
            self.claim(p, BlockState::Data, ino, raw.then_some(at));
            return 0;
        }
        let ind: Indirect = match self.read(p) {
            Ok(i) => i,
            Err(e) => {
                self.find(false, format!("inode {ino}: indirect block unreadable, the file's tree is damaged (not repaired by this version): {e}"));
                self.incomplete = true;
                return 0;
            }
        };
        if ind.owner != ino || ind.level != level {
            self.find(false, format!("inode {ino}: indirect block {p} says owner {} level {}, expected level {level} (not repaired by this version)", ind.owner, ind.level));
            self.incomplete = true;
            return 0;
        }
        self.claim(p, BlockState::Data, ino, None);
        let ip = indirect_ptrs(self.geo.block_size) as u64;
        let mut n = 1;
        for (slot, &c) in ind.ptrs.iter().enumerate() {
            if c != 0 {
                let at = Slot {
                    block: p,
                    in_dinode: false,
                    index: slot,
                };
                n += self.subtree(ino, c, level - 1, base * ip + slot as u64, at, raw, out);
            }
        }
        n
    }

    /// The bytes of a stuffed or JDATA file.
    fn content(&self, ino: u64) -> Result<Vec<u8>, String> {
        let node = self
            .nodes
            .get(&ino)
            .ok_or_else(|| format!("inode {ino} is not loaded"))?;
        let d = &node.d;
        if let Some(b) = d.stuffed_data() {
            return Ok(b.to_vec());
        }
        if !d.is_jdata() {
            return Err(format!("inode {ino} is neither stuffed nor JDATA"));
        }
        let size = usize::try_from(d.size)
            .map_err(|_| format!("inode {ino}: size {} too large", d.size))?;
        let mut buf = vec![0u8; size];
        let payload = dinode::data_payload(self.geo.block_size, true);
        for &(lblock, addr) in &node.data {
            let jd: JData = self.read(addr).map_err(|e| format!("inode {ino}: {e}"))?;
            if jd.owner != ino || jd.lblock != lblock {
                return Err(format!(
                    "data block {addr} says inode {} block {}, expected inode {ino} block {lblock}",
                    jd.owner, jd.lblock
                ));
            }
            let from = usize::try_from(lblock)
                .ok()
                .and_then(|l| l.checked_mul(payload))
                .filter(|&f| f < buf.len())
                .ok_or_else(|| format!("inode {ino}: block {lblock} past the end"))?;
            let n = payload.min(buf.len() - from);
            buf[from..from + n].copy_from_slice(&jd.payload[..n]);
        }
        Ok(buf)
    }

    /// A directory's entries with the leaf holding each (None: linear).
    fn read_entries(&mut self, ino: u64) -> Option<Vec<(DirEntry, Option<u64>)>> {
        let d = self.nodes.get(&ino)?.d.clone();
        if !d.is_exhash() {
            let DinodeContent::Stuffed(body) = &d.content else {
                self.find(false, format!("linear directory {ino} is not stuffed"));
                return None;
            };
            return match dir::decode_entries(&self.geo, ino, "directory", body) {
                Ok(es) => Some(es.into_iter().map(|e| (e, None)).collect()),
                Err(e) => {
                    self.find(false, format!("directory {ino}: entries unreadable: {e}"));
                    None
                }
            };
        }
        let table = match self
            .content(ino)
            .and_then(|b| dir::decode_table(&self.geo, ino, &b, d.depth).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                self.find(
                    false,
                    format!("directory {ino}: hash table unreadable: {e}"),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        let mut leaves = 0u64;
        let mut seen = HashSet::new();
        for &addr in &table {
            if !seen.insert(addr) {
                continue;
            }
            let mut next = addr;
            while next != 0 {
                let leaf: Leaf = match self.read(next) {
                    Ok(l) => l,
                    Err(e) => {
                        self.find(false, format!("directory {ino}: leaf unreadable (not repaired by this version): {e}"));
                        return None;
                    }
                };
                if leaf.owner != ino {
                    self.find(
                        false,
                        format!(
                            "directory {ino}: leaf {next} belongs to inode {}",
                            leaf.owner
                        ),
                    );
                    return None;
                }
                self.claim(next, BlockState::Data, ino, None);
                leaves += 1;
                out.extend(leaf.entries.into_iter().map(|e| (e, Some(next))));
                next = leaf.next;
                if next != 0 && !seen.insert(next) {
                    self.find(
                        false,
                        format!("directory {ino}: leaf chain loops at {next}"),
                    );
                    break;
                }
            }
        }
        let charged = 1
            + self.nodes.get(&ino).map_or(0, |n| n.data.len() as u64)
            + leaves
            + self.nodes.get(&ino).map_or(0, |n| n.meta);
        if d.blocks != charged {
            self.find(
                true,
                format!(
                    "directory {ino} charges {} blocks but uses {charged}",
                    d.blocks
                ),
            );
            self.fixes.entry(ino).or_default().blocks = Some(charged);
        }
        Some(out)
    }

    fn edit(&mut self, dir: u64, name: &[u8], e: Edit, leaf: Option<u64>) {
        self.edits
            .entry(dir)
            .or_default()
            .push((name.to_vec(), e, leaf));
    }

    /// Walks directory `ino` (already loaded) and everything below it.
    fn walk_dir(&mut self, ino: u64, parent: u64, path: &str) {
        let Some(d) = self.nodes.get(&ino).map(|n| n.d.clone()) else {
            return;
        };
        if !d.is_dir() {
            self.find(false, format!("inode {ino} ({path}) is not a directory"));
            return;
        }
        let Some(entries) = self.read_entries(ino) else {
            self.incomplete = true;
            self.dirs.insert(ino, Vec::new());
            return;
        };
        self.dirs.insert(ino, Vec::new());
        let dot = entries
            .iter()
            .find(|e| e.0.name == b".")
            .map(|e| e.0.formal);
        let dotdot = entries
            .iter()
            .find(|e| e.0.name == b"..")
            .map(|e| e.0.addr());
        if dot != Some(formal_ino(ino, d.generation)) || dotdot != Some(parent) {
            self.find(false, format!("directory {ino} ({path}): \".\" is {dot:?} and \"..\" is {dotdot:?}, expected {ino} and {parent} (not repaired by this version)"));
        }
        let mut kept = Vec::new();
        let mut subdirs = 0u32;
        for (e, leaf) in entries {
            if e.name == b"." || e.name == b".." {
                kept.push(e);
                continue;
            }
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let child = if path.is_empty() || path.ends_with('/') {
                format!("{path}{name}")
            } else {
                format!("{path}/{name}")
            };
            let t = e.addr();
            // An entry must name a block the bitmap calls a dinode.
            if let Some(s @ (BlockState::Free | BlockState::Data)) = self.state_of(t) {
                if !self.nodes.contains_key(&t) {
                    self.find(true, format!("{child}: entry names block {t}, which the bitmap says is {s:?}, not a dinode: entry removed"));
                    self.edit(ino, &e.name, Edit::Remove, leaf);
                    continue;
                }
            }
            // Checked before the dinode is loaded (which claims it as
            // reached): a stale entry must not keep the new inode alive.
            let generation = match self.nodes.get(&t) {
                Some(n) => Some(n.d.generation),
                None => self.read::<Dinode>(t).ok().map(|d| d.generation),
            };
            if let Some(g) = generation.filter(|g| !formal_matches(e.formal, t, *g)) {
                self.find(true, format!("{child}: entry names inode {:#x}, but block {t} holds generation {g} ({:#x}): the entry outlived its inode and is removed", e.formal, formal_ino(t, g)));
                self.edit(ino, &e.name, Edit::Remove, leaf);
                continue;
            }
            if !self.load(t, BlockState::Dinode) {
                let why = self.bad.get(&t).cloned().unwrap_or_default();
                self.find(true, format!("{child}: entry names inode {t}, which is not a valid dinode ({why}): the dinode is treated as lost and the entry removed"));
                self.edit(ino, &e.name, Edit::Remove, leaf);
                continue;
            }
            let Some(ft) = self.nodes.get(&t).and_then(|n| n.d.file_type()) else {
                continue;
            };
            let mut e = e;
            if ft != e.kind {
                self.find(
                    true,
                    format!(
                        "{child}: entry says {:?}, inode {t} is {ft:?}: entry retyped",
                        e.kind
                    ),
                );
                self.edit(ino, &e.name, Edit::Retype(ft), leaf);
                e.kind = ft;
            }
            if ft == FileType::Directory {
                if self.dirs.contains_key(&t) {
                    self.find(
                        true,
                        format!("{child}: directory {t} is linked twice: second entry removed"),
                    );
                    self.edit(ino, &e.name, Edit::Remove, leaf);
                    continue;
                }
                subdirs += 1;
                kept.push(e);
                self.walk_dir(t, ino, &child);
            } else {
                *self.links.entry(t).or_insert(0) += 1;
                kept.push(e);
            }
        }
        if d.entries as usize != kept.len() {
            self.find(
                true,
                format!(
                    "directory {ino} ({path}) says {} entries and keeps {}",
                    d.entries,
                    kept.len()
                ),
            );
            self.fixes.entry(ino).or_default().entries = Some(kept.len() as u32);
        } else if self.edits.contains_key(&ino) {
            self.fixes.entry(ino).or_default().entries = Some(kept.len() as u32);
        }
        if d.nlink != 2 + subdirs {
            self.find(true, format!("directory {ino} ({path}) has link count {} but {subdirs} subdirectories (want {})", d.nlink, 2 + subdirs));
            self.fixes.entry(ino).or_default().nlink = Some(2 + subdirs);
        }
        self.dirs.insert(ino, kept);
    }

    /// Allocated dinodes nothing reaches: reported; the bitmap rebuild
    /// frees them.
    fn orphans(&mut self) {
        let mut found = Vec::new();
        for rg in &self.rgs {
            let Some(bm) = &rg.bitmap else { continue };
            let mut k = 0;
            while k < bm.len() {
                let s = bm.get(k).unwrap_or(BlockState::Free);
                let addr = rg.entry.data0 + u64::from(k);
                // A dinode already reported as damaged is not reported again.
                if matches!(s, BlockState::Dinode | BlockState::Unlinked)
                    && !self.claims.contains_key(&addr)
                    && !self.bad.contains_key(&addr)
                {
                    found.push((addr, s));
                }
                k += 1;
            }
        }
        for (addr, s) in found {
            let what = match self.read::<Dinode>(addr) {
                Ok(d) => format!(
                    "{:?}, nlink {}, {} bytes",
                    d.file_type().unwrap_or(FileType::Regular),
                    d.nlink,
                    d.size
                ),
                Err(e) => format!("unreadable: {e}"),
            };
            let verb = if self.incomplete {
                "left (some tree is unreadable)"
            } else {
                "freed with its blocks"
            };
            self.find(!self.incomplete, format!("orphan inode {addr} ({what}) is {s:?} in the bitmap but no directory reaches it and no unlinked list names it: {verb}"));
        }
    }

    /// The bitmap every rgrp should have.
    fn bitmap_targets(&mut self, repair: bool) -> Vec<RgrpBitmap> {
        // Cross-link copies need free blocks: take them now so the targets
        // include them.
        if repair {
            let mut taken = HashSet::new();
            for i in 0..self.crosslinks.len() {
                match self.free_block(&taken) {
                    Some(a) => {
                        taken.insert(a);
                        let owner = self.crosslinks[i].owner;
                        self.claims.insert(
                            a,
                            Claim {
                                state: BlockState::Data,
                                owner,
                            },
                        );
                        self.crosslinks[i].copy = a;
                    }
                    None => self.find(
                        false,
                        "no free block to copy a cross-linked block to".into(),
                    ),
                }
            }
        }
        let mut out = Vec::new();
        for rg in &self.rgs {
            let mut bm = RgrpBitmap::new(rg.entry.data_len);
            for k in 0..rg.entry.data_len {
                let addr = rg.entry.data0 + u64::from(k);
                let s = match self.claims.get(&addr) {
                    Some(c) => c.state,
                    // Unsure what an unread tree uses: keep what was there.
                    None if self.incomplete => rg
                        .bitmap
                        .as_ref()
                        .and_then(|b| b.get(k))
                        .unwrap_or(BlockState::Free),
                    None => BlockState::Free,
                };
                bm.set(k, s);
            }
            out.push(bm);
        }
        out
    }

    fn free_block(&self, taken: &HashSet<u64>) -> Option<u64> {
        for rg in &self.rgs {
            if rg.entry.flags.0 & (RgrpFlags::NOALLOC | RgrpFlags::JOURNAL) != 0 {
                continue;
            }
            let Some(bm) = &rg.bitmap else { continue };
            let mut k = 0;
            while let Some(f) = bm.find_next_free(k) {
                let a = rg.entry.data0 + u64::from(f);
                if !self.claims.contains_key(&a) && !taken.contains(&a) {
                    return Some(a);
                }
                k = f + 1;
            }
        }
        None
    }

    /// Compares each bitmap and header with its target; returns the target
    /// totals.
    fn compare_bitmaps(&mut self, targets: &[RgrpBitmap]) -> StateCounts {
        // Blocks taken for cross-link copies are part of that finding's
        // repair, not bitmap problems of their own.
        let copies: HashSet<u64> = self.crosslinks.iter().map(|x| x.copy).collect();
        let mut total = StateCounts::default();
        let mut found = Vec::new();
        for (i, (rg, want)) in self.rgs.iter().zip(targets).enumerate() {
            let wc = want.counts();
            total.free += wc.free;
            total.data += wc.data;
            total.dinodes += wc.dinodes;
            total.unlinked += wc.unlinked;
            if let Some(bm) = &rg.bitmap {
                let mut diffs: Vec<String> = Vec::new();
                let mut n = 0u64;
                for k in 0..want.len() {
                    let (have, need) = (bm.get(k), want.get(k));
                    if have != need && !copies.contains(&(rg.entry.data0 + u64::from(k))) {
                        n += 1;
                        if diffs.len() < 8 {
                            let addr = rg.entry.data0 + u64::from(k);
                            let have = have.unwrap_or(BlockState::Free);
                            let need = need.unwrap_or(BlockState::Free);
                            diffs.push(match (have, need) {
                                (_, BlockState::Free) => {
                                    format!("block {addr} is {have:?} but nothing uses it")
                                }
                                (BlockState::Free, _) => {
                                    format!("block {addr} is used as {need:?} but marked free")
                                }
                                _ => format!("block {addr} is {have:?} but is used as {need:?}"),
                            });
                        }
                    }
                }
                if n > 0 {
                    let more = if n > diffs.len() as u64 {
                        format!(" (and {} more)", n - diffs.len() as u64)
                    } else {
                        String::new()
                    };
                    found.push(format!(
                        "rgrp {i} bitmap: {}{more}: bitmap rebuilt",
                        diffs.join("; ")
                    ));
                }
                let bc = bm.counts();
                if let Some(h) = &rg.header {
                    if bc.free != u64::from(h.free)
                        || bc.dinodes != u64::from(h.dinodes)
                        || bc.unlinked != u64::from(h.unlinked)
                    {
                        found.push(format!("rgrp {i} at {}: header counts free {} dinodes {} unlinked {}, its bitmap has free {} dinodes {} unlinked {}: counts recomputed", rg.entry.addr, h.free, h.dinodes, h.unlinked, bc.free, bc.dinodes, bc.unlinked));
                    }
                }
            }
        }
        for f in found {
            self.find(true, f);
        }
        total
    }

    /// Checks statfs + the nodes' changes against the totals; returns the
    /// statfs to write, if it needs fixing.
    fn statfs(
        &mut self,
        ino: Option<u64>,
        totals: &StateCounts,
        changes: StatfsDelta,
    ) -> Option<(u64, StatfsRecord)> {
        let Some(ino) = ino else {
            self.find(false, "the master directory has no statfs file".into());
            return None;
        };
        let rec = match self
            .content(ino)
            .and_then(|b| StatfsRecord::decode(ino, &b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                self.find(false, format!("statfs unreadable: {e}"));
                return None;
            }
        };
        let total: u64 = self.rgs.iter().map(|r| u64::from(r.entry.data_len)).sum();
        let want = |t: u64, ch: i64| u64::try_from(i128::from(t) - i128::from(ch)).unwrap_or(0);
        let fixed = StatfsRecord {
            total: want(total, changes.total),
            free: want(totals.free, changes.free),
            dinodes: want(totals.dinodes, changes.dinodes),
        };
        if fixed == rec {
            return None;
        }
        let fixable = self.nodes.get(&ino).is_some_and(|n| n.d.height == 0);
        // Cross-link copies allocate blocks: statfs must follow, but that
        // is part of the cross-link's repair, not a finding of its own.
        let copies = self.crosslinks.iter().filter(|x| x.copy != 0).count() as u64;
        if copies > 0
            && fixable
            && rec.total == fixed.total
            && rec.dinodes == fixed.dinodes
            && rec.free == fixed.free + copies
        {
            return Some((ino, fixed));
        }
        self.find(fixable, format!("statfs says total {} free {} dinodes {}, with the nodes' changes ({}, {}, {}) the bitmaps need total {} free {} dinodes {}", rec.total, rec.free, rec.dinodes, changes.total, changes.free, changes.dinodes, fixed.total, fixed.free, fixed.dinodes));
        fixable.then_some((ino, fixed))
    }

    /// Checks a journal's shape and finds its head; a dirty journal is a
    /// finding that fsck leaves to the mount.
    fn journal(&mut self, jid: u32, ino: u64, progress: ProgressFn<'_>) -> Option<JournalState> {
        let node = self.nodes.get(&ino)?;
        let bs = u64::from(self.geo.block_size);
        let mut data = node.data.clone();
        data.sort_unstable();
        let blocks = node.d.size / bs;
        let start = data.first().map_or(0, |x| x.1);
        let contiguous = node.d.size % bs == 0
            && data.len() as u64 == blocks
            && data
                .iter()
                .enumerate()
                .all(|(i, &(lb, a))| lb == i as u64 && a == start + i as u64);
        if !contiguous {
            self.find(
                false,
                format!("journal{jid} (inode {ino}) is not one contiguous run of {blocks} blocks"),
            );
            return None;
        }
        let mut head: Option<(u64, u64, bool)> = None;
        let chunk = 256u64;
        let mut buf = vec![0u8; (chunk * bs) as usize];
        let mut pos = 0;
        while pos < blocks {
            progress("journals", pos, blocks);
            let n = chunk.min(blocks - pos);
            let b = &mut buf[..(n * bs) as usize];
            if let Err(e) = self.dev.read_at((start + pos) * bs, b) {
                let mut slot = self.io_error.borrow_mut();
                if slot.is_none() {
                    *slot = Some(format!("journal{jid}: block {}: {e}", start + pos));
                }
                return None;
            }
            for k in 0..n {
                let blk = &b[(k * bs) as usize..((k + 1) * bs) as usize];
                let addr = start + pos + k;
                let rec = match Header::peek(blk).map(|h| BlockType::from_u16(h.block_type)) {
                    Some(Some(BlockType::LogHeader)) => {
                        decode_block::<LogHeader>(&self.geo, addr, blk)
                            .ok()
                            .map(|h| (h.seq, h.flags & lh_flags::CLEAN != 0))
                    }
                    Some(Some(BlockType::Commit)) => decode_block::<Commit>(&self.geo, addr, blk)
                        .ok()
                        .map(|c| (c.seq, false)),
                    _ => None,
                };
                if let Some((seq, clean)) = rec {
                    if head.is_none_or(|(_, s, _)| seq > s) {
                        head = Some((pos + k, seq, clean));
                    }
                }
            }
            pos += n;
        }
        progress("journals", blocks, blocks);
        match head {
            None => self.find(false, format!("journal{jid} has no valid log header or commit")),
            Some((p, seq, false)) => self.find(false, format!("journal{jid} is dirty (head at position {p}, sequence {seq}): it needs replay, which the mount does; fsck does not replay journals")),
            Some(_) => {}
        }
        Some(JournalState { jid, blocks, head })
    }

    /// Writes every repair; returns blocks written. Order: directory
    /// entries, cross-link copies, dinodes, bitmaps, statfs, then a flush.
    fn repair(
        &mut self,
        targets: &[RgrpBitmap],
        statfs_fix: Option<(u64, StatfsRecord)>,
        progress: ProgressFn<'_>,
    ) -> Result<u64, FsckError> {
        let mut written = 0u64;
        let geo = self.geo;
        let apply = |es: &mut Vec<DirEntry>, edits: &[EntryEdit]| {
            for (name, e, _) in edits {
                match e {
                    Edit::Remove => es.retain(|x| &x.name != name),
                    Edit::Retype(k) => {
                        for x in es.iter_mut().filter(|x| &x.name == name) {
                            x.kind = *k;
                        }
                    }
                }
            }
        };

        // Directory entries: a linear directory's body is rewritten with
        // its dinode below; leaves are rewritten here.
        let mut edits: Vec<_> = std::mem::take(&mut self.edits).into_iter().collect();
        edits.sort_by_key(|e| e.0);
        for (dir_ino, list) in edits {
            let linear: Vec<_> = list.iter().filter(|x| x.2.is_none()).cloned().collect();
            if !linear.is_empty() {
                let device = self.dev.name().to_string();
                let ferr = |source| {
                    FsckError::Io(IoError::Format {
                        device: device.clone(),
                        source,
                    })
                };
                let Some(node) = self.nodes.get_mut(&dir_ino) else {
                    continue;
                };
                if let DinodeContent::Stuffed(body) = &mut node.d.content {
                    let mut es =
                        dir::decode_entries(&geo, dir_ino, "directory", body).map_err(ferr)?;
                    apply(&mut es, &linear);
                    let mut nb = vec![0u8; body.len()];
                    dir::encode_entries(&geo, dir_ino, "directory", &es, &mut nb).map_err(ferr)?;
                    *body = nb;
                }
                self.fixes.entry(dir_ino).or_default();
            }
            let mut leaves: Vec<u64> = list.iter().filter_map(|x| x.2).collect();
            leaves.sort_unstable();
            leaves.dedup();
            for la in leaves {
                let mut leaf: Leaf = self.read(la)?;
                let mine: Vec<_> = list.iter().filter(|x| x.2 == Some(la)).cloned().collect();
                apply(&mut leaf.entries, &mine);
                io::write_meta(self.dev, &geo, la, &leaf)?;
                written += 1;
            }
        }

        // Cross-linked data blocks: copy, then repoint the second owner.
        for x in std::mem::take(&mut self.crosslinks) {
            if x.copy == 0 {
                continue;
            }
            let mut buf = vec![0u8; geo.bs()];
            io::read_block(self.dev, &geo, x.addr, &mut buf)?;
            self.dev
                .write_at(x.copy * u64::from(geo.block_size), &buf)
                .map_err(IoError::from)?;
            written += 1;
            if x.slot.in_dinode {
                if let Some(n) = self.nodes.get_mut(&x.slot.block) {
                    if let DinodeContent::Pointers(p) = &mut n.d.content {
                        p[x.slot.index] = x.copy;
                    }
                }
                self.fixes.entry(x.slot.block).or_default();
            } else {
                let mut ind: Indirect = self.read(x.slot.block)?;
                ind.ptrs[x.slot.index] = x.copy;
                io::write_meta(self.dev, &geo, x.slot.block, &ind)?;
                written += 1;
            }
        }

        // statfs lives in its (stuffed) dinode.
        if let Some((ino, rec)) = statfs_fix {
            if let Some(DinodeContent::Stuffed(body)) =
                self.nodes.get_mut(&ino).map(|n| &mut n.d.content)
            {
                let b = rec.encode();
                body[..b.len()].copy_from_slice(&b);
                self.fixes.entry(ino).or_default();
            }
        }

        // Dinodes.
        let fixes = std::mem::take(&mut self.fixes);
        let n = fixes.len() as u64;
        for (k, (ino, fix)) in fixes.into_iter().enumerate() {
            progress("repairing dinodes", k as u64, n);
            let Some(node) = self.nodes.get_mut(&ino) else {
                continue;
            };
            let d = &mut node.d;
            if let Some(v) = fix.nlink {
                d.nlink = v;
            }
            if let Some(v) = fix.blocks {
                d.blocks = v;
            }
            if let Some(v) = fix.entries {
                d.entries = v;
            }
            d.version += 1;
            let d = d.clone();
            io::write_meta(self.dev, &geo, ino, &d)?;
            written += 1;
        }

        // Bitmaps and headers.
        let bs = geo.block_size;
        let nrg = self.rgs.len();
        for (i, want) in targets.iter().enumerate().take(nrg) {
            progress("repairing bitmaps", i as u64, nrg as u64);
            let wc = want.counts();
            let rg = &self.rgs[i];
            let e = rg.entry;
            let clean = rg.bitmap.as_ref() == Some(want)
                && rg.header.as_ref().is_some_and(|h| {
                    u64::from(h.free) == wc.free
                        && u64::from(h.dinodes) == wc.dinodes
                        && u64::from(h.unlinked) == wc.unlinked
                });
            if clean {
                continue;
            }
            let next = self.rgs.get(i + 1).map_or(0, |r| r.entry.addr);
            // A rebuilt header's next generation must exceed every dinode's
            // in the rgrp.
            let max_gen = self
                .nodes
                .iter()
                .filter(|(a, _)| e.contains_data(**a))
                .map(|(_, n)| n.d.generation)
                .max()
                .unwrap_or(0);
            let (head_bits, parts) = want.to_parts(bs);
            let count = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            let h = match &rg.header {
                Some(h) => RgrpHeader {
                    free: count(wc.free),
                    dinodes: count(wc.dinodes),
                    unlinked: count(wc.unlinked),
                    version: h.version + 1,
                    bits: head_bits,
                    ..h.clone()
                },
                None => RgrpHeader {
                    flags: e.flags,
                    bitmap_blocks: e.length.saturating_sub(1),
                    data0: e.data0,
                    data_len: e.data_len,
                    free: count(wc.free),
                    dinodes: count(wc.dinodes),
                    unlinked: count(wc.unlinked),
                    igeneration: max_gen + 1,
                    version: 1,
                    next,
                    index: i as u32,
                    bits: head_bits,
                },
            };
            io::write_meta(self.dev, &geo, e.addr, &h)?;
            written += 1;
            for (k, bits) in parts.into_iter().enumerate() {
                let at = e.addr + 1 + k as u64;
                let b = BitmapBlock {
                    rgrp: e.addr,
                    index: k as u32 + 1,
                    bits,
                };
                io::write_meta(self.dev, &geo, at, &b)?;
                written += 1;
            }
        }
        self.dev.flush().map_err(IoError::from)?;
        Ok(written)
    }
}
