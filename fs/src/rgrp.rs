//! The block allocator: resource groups, their bitmaps and free counts.
//!
//! Owns: the rindex in memory, each loaded rgrp's header and bitmap, the
//! choice of where a new block goes, and this node's statfs changes. Every
//! change to a header or bitmap goes into the running transaction through
//! the buffer cache, one header and the one bitmap block touched. May not
//! touch: what the blocks are used for (callers say DATA or DINODE).
//!
//! Every rgrp is read under its glock (Shared) and changed under it
//! (Exclusive); in a cluster a glock this node does not hold turns into
//! [`FsError::GlockWait`] and the operation runs again once it is held.
//! When another node takes an rgrp glock, [`Rgrps::forget_rgrp`] drops
//! what was loaded from it. Allocation in a cluster first goes where no
//! wait is needed — rgrps this node holds, or whose glock a try gets at
//! once — and waits only when none of those has room (see
//! [`Rgrps::alloc`]): every rgrp glock handoff costs the giver a commit
//! and a checkpoint of its whole journal.
//!
//! Rgrp LVBs (`lvb.rs`) spare reads across handoffs. An Exclusive holder
//! that lets an rgrp glock go leaves the header's version and free count
//! in its LVB and keeps what it loaded aside. At the next grant a kept
//! copy of the same version is used as it is; an rgrp the LVB calls full
//! is passed over without reading its bitmaps, and remembered as full so
//! the next allocation does not even ask for its glock (until a last pass
//! before ENOSPC, since another node may have freed blocks there).
//!
//! Freed blocks are not reused until the transaction that freed them
//! commits: otherwise a crash could replay the old owner's pointers onto a
//! block already holding someone else's data.

use crate::buf::BufCache;
use crate::error::{FsError, Result};
use crate::format::journal::StatfsDelta;
use crate::format::rgrp::{BitmapBlock, BlockState, RgrpBitmap, RgrpHeader, RindexEntry};
use crate::format::RgrpFlags;
use crate::glock::{GlockMode, GlockName, Glocks};
use crate::lvb::RgrpLvb;
use blockdev::BlockDevice;
use std::collections::{HashMap, HashSet};

/// What rgrp LVBs saved this node, for `rdlmfs status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RgrpLvbStats {
    /// Re-grants that kept the header and bitmaps this node had before.
    pub kept: u64,
    /// Rgrps loaded from the disk in a cluster (header and bitmaps).
    pub read: u64,
    /// Rgrps an allocation passed over as full without loading them:
    /// by the grant's LVB, or by the last count seen without asking for
    /// the glock at all.
    pub skipped_full: u64,
}

struct Loaded {
    hdr: RgrpHeader,
    bits: RgrpBitmap,
    /// Where the last allocation here ended (search starts there).
    rotor: u32,
}

pub struct Rgrps {
    entries: Vec<RindexEntry>,
    loaded: HashMap<usize, Loaded>,
    /// Blocks freed by the running transaction: not reusable until commit.
    pending_free: HashSet<u64>,
    /// Allocation changes since mount, not yet folded into statfs.
    delta: StatfsDelta,
    /// The rgrp this node allocates from first (spread by journal id so
    /// nodes do not contend).
    home: usize,
    /// Dinode blocks freed by the running transaction, with their last
    /// contents (link count 0), written in place once it commits (in a
    /// cluster; see [`Rgrps::take_dead_dinodes`]).
    dead_dinodes: Vec<(u64, Box<[u8]>)>,
    /// Since the savepoint: blocks added to `pending_free`, how many
    /// `dead_dinodes` there were, and `delta` as it was (see
    /// [`crate::buf`]'s savepoints).
    savepoint: Option<(Vec<u64>, usize, StatfsDelta)>,
    glocks: Glocks,
    /// Rgrps this node loaded and then gave the glock of up, kept for the
    /// next grant (used if its LVB shows the same header version).
    released: HashMap<usize, Loaded>,
    /// Rgrps last seen with no free block (in a loaded header or an LVB)
    /// and not loaded since: allocation skips them until its last pass.
    seen_full: HashSet<usize>,
    /// Rgrps this node changed since it got the glock: their grant's LVB
    /// no longer describes them.
    changed_here: HashSet<usize>,
    lvb_stats: RgrpLvbStats,
}

impl Rgrps {
    pub fn new(entries: Vec<RindexEntry>, jid: u32, glocks: Glocks) -> Rgrps {
        let usable: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| allocatable(e.flags))
            .map(|(i, _)| i)
            .collect();
        let home = if usable.is_empty() {
            0
        } else {
            usable[(jid as usize * 7) % usable.len()]
        };
        Rgrps {
            entries,
            loaded: HashMap::new(),
            pending_free: HashSet::new(),
            delta: StatfsDelta::default(),
            home,
            dead_dinodes: Vec::new(),
            savepoint: None,
            glocks,
            released: HashMap::new(),
            seen_full: HashSet::new(),
            changed_here: HashSet::new(),
            lvb_stats: RgrpLvbStats::default(),
        }
    }

    pub fn lvb_stats(&self) -> RgrpLvbStats {
        self.lvb_stats
    }

    /// Rgrp `i`'s LVB from this node's current grant, if it is valid and
    /// still describes the rgrp (this node changed nothing since).
    fn grant_lvb(&self, i: usize) -> Option<RgrpLvb> {
        if self.changed_here.contains(&i) {
            return None;
        }
        let addr = self.entries[i].addr;
        let b = self.glocks.lvb(GlockName::rgrp(addr))?;
        RgrpLvb::decode(&b, addr)
    }

    pub fn entries(&self) -> &[RindexEntry] {
        &self.entries
    }

    /// The rgrp whose data area holds `addr`.
    pub fn index_of(&self, addr: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.data0 <= addr);
        let i = i.checked_sub(1)?;
        self.entries[i].contains_data(addr).then_some(i)
    }

    fn load(&mut self, cache: &mut BufCache, dev: &dyn BlockDevice, i: usize) -> Result<()> {
        if self.loaded.contains_key(&i) {
            return Ok(());
        }
        self.seen_full.remove(&i);
        if let Some(kept) = self.released.remove(&i) {
            let lvb = self.grant_lvb(i);
            tracing::debug!(
                rgrp = i,
                kept_version = kept.hdr.version,
                ?lvb,
                "kept rgrp against the grant's LVB"
            );
            if lvb.is_some_and(|l| l.version == kept.hdr.version) {
                self.lvb_stats.kept += 1;
                self.loaded.insert(i, kept);
                return Ok(());
            }
        }
        if self.glocks.is_clustered() {
            self.lvb_stats.read += 1;
        }
        let e = self.entries[i];
        let hdr: RgrpHeader = cache.read_meta(dev, e.addr)?;
        if hdr.data0 != e.data0 || hdr.data_len != e.data_len {
            return Err(FsError::Corrupt {
                device: dev.name().to_string(),
                detail: format!(
                    "rgrp header at block {} says data {}+{}, the rindex says {}+{}",
                    e.addr, hdr.data0, hdr.data_len, e.data0, e.data_len
                ),
            });
        }
        let mut parts = Vec::with_capacity(hdr.bitmap_blocks as usize);
        for k in 1..=u64::from(hdr.bitmap_blocks) {
            parts.push(cache.read_meta::<BitmapBlock>(dev, e.addr + k)?);
        }
        let bs = cache.geometry().block_size;
        let bits = RgrpBitmap::from_parts(bs, e.addr, &hdr, &parts)?;
        self.loaded.insert(
            i,
            Loaded {
                hdr,
                bits,
                rotor: 0,
            },
        );
        Ok(())
    }

    /// Forgets every loaded rgrp, and every copy kept aside (the disk
    /// changed under them: a journal was replayed).
    pub fn invalidate(&mut self) {
        self.loaded.clear();
        self.released.clear();
        self.changed_here.clear();
    }

    /// The header and bitmap blocks of the rgrp at `addr`.
    pub fn header_blocks(&self, addr: u64) -> Option<std::ops::Range<u64>> {
        let e = self.entries.iter().find(|e| e.addr == addr)?;
        Some(e.addr..e.addr + u64::from(e.length))
    }

    /// The rgrp whose header is at `addr` is going to another node: what
    /// was loaded from it is kept aside for the next grant (see the module
    /// doc), and this node stops using it.
    pub fn forget_rgrp(&mut self, addr: u64) {
        if let Some(i) = self.entries.iter().position(|e| e.addr == addr) {
            self.changed_here.remove(&i);
            if let Some(l) = self.loaded.remove(&i) {
                if l.hdr.free == 0 {
                    self.seen_full.insert(i);
                }
                self.released.insert(i, l);
            }
        }
    }

    /// The LVB an Exclusive holder of the rgrp glock at `addr` leaves when
    /// it lets go (the demote, which holds the glock and has committed and
    /// checkpointed): the header as loaded here, else as the buffer cache
    /// or the disk has it. None (an empty LVB) if it cannot be read.
    pub fn lvb(&self, cache: &mut BufCache, dev: &dyn BlockDevice, addr: u64) -> Option<Vec<u8>> {
        if let Some(l) = self.loaded_lvb(addr) {
            return Some(l);
        }
        self.entries.iter().find(|e| e.addr == addr)?;
        let h: RgrpHeader = cache.read_meta(dev, addr).ok()?;
        Some(
            RgrpLvb {
                addr,
                version: h.version,
                free: h.free,
                dinodes: h.dinodes,
            }
            .encode(),
        )
    }

    /// [`Rgrps::lvb`] for an rgrp loaded here; None (read nothing)
    /// otherwise.
    pub fn loaded_lvb(&self, addr: u64) -> Option<Vec<u8>> {
        let i = self.entries.iter().position(|e| e.addr == addr)?;
        let l = self.loaded.get(&i)?;
        Some(
            RgrpLvb {
                addr,
                version: l.hdr.version,
                free: l.hdr.free,
                dinodes: l.hdr.dinodes,
            }
            .encode(),
        )
    }

    /// Whether rgrp `i`, whose glock this node has just got and has not
    /// loaded, is full by its grant's LVB: then the allocator moves on
    /// without reading its bitmaps.
    fn full_by_lvb(&mut self, i: usize) -> bool {
        if self.loaded.contains_key(&i) {
            return false;
        }
        if self.grant_lvb(i).is_some_and(|l| l.free == 0) {
            self.lvb_stats.skipped_full += 1;
            self.seen_full.insert(i);
            tracing::debug!(rgrp = i, "rgrp full by its LVB: not loaded");
            return true;
        }
        false
    }

    /// Whether the allocator's first passes should leave rgrp `i` alone:
    /// this node last saw it full and has no current copy of it.
    fn skip_as_full(&mut self, i: usize) -> bool {
        if !self.loaded.contains_key(&i) && self.seen_full.contains(&i) {
            self.lvb_stats.skipped_full += 1;
            return true;
        }
        false
    }

    /// The state of `addr` as far as this node knows without asking
    /// anyone: from an rgrp it has loaded (so holds the glock of), with
    /// blocks the running transaction freed counted as free. None when
    /// the rgrp is not loaded here.
    pub fn known_state(&self, addr: u64) -> Option<BlockState> {
        if self.pending_free.contains(&addr) {
            return Some(BlockState::Free);
        }
        let i = self.index_of(addr)?;
        let l = self.loaded.get(&i)?;
        l.bits.get((addr - l.hdr.data0) as u32)
    }

    fn glock(&self, i: usize, mode: GlockMode) -> Result<()> {
        self.glocks
            .hold(GlockName::rgrp(self.entries[i].addr), mode)
    }

    /// The state of block `addr`.
    pub fn state(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        addr: u64,
    ) -> Result<Option<BlockState>> {
        let Some(i) = self.index_of(addr) else {
            return Ok(None);
        };
        self.glock(i, GlockMode::Shared)?;
        self.load(cache, dev, i)?;
        let l = &self.loaded[&i];
        Ok(l.bits.get((addr - l.hdr.data0) as u32))
    }

    /// Writes rgrp `i`'s header and the bitmap block holding entry `bit`
    /// into the running transaction.
    fn log_change(&mut self, cache: &mut BufCache, i: usize, bits: &[u32]) -> Result<()> {
        let bs = cache.geometry().block_size;
        let addr = self.entries[i].addr;
        self.changed_here.insert(i);
        let l = self.loaded.get_mut(&i).expect("loaded before change");
        l.hdr.version += 1;
        let (head, parts) = l.bits.to_parts(bs);
        l.hdr.bits = head;
        cache.write_meta(addr, &l.hdr)?;
        let mut done = HashSet::new();
        for &b in bits {
            let (part, _, _) = crate::format::rgrp::bit_location(bs, u64::from(b));
            if part > 0 && done.insert(part) {
                let blk = BitmapBlock {
                    rgrp: addr,
                    index: part as u32,
                    bits: parts[part as usize - 1].clone(),
                };
                cache.write_meta(addr + part, &blk)?;
            }
        }
        Ok(())
    }

    /// Allocates up to `max` contiguous blocks (at least one) in `state`
    /// (DATA or DINODE), near `goal` if given. Returns the first address,
    /// the count, and for a dinode its generation number.
    ///
    /// With one node the rgrps are searched from the goal's (else this
    /// node's home rgrp) onwards. In a cluster that order alone makes
    /// nodes fight: two nodes creating files in different directories
    /// whose dinodes share an rgrp would both need its glock Exclusive,
    /// and every handoff commits and checkpoints the whole journal
    /// (`glops.rs`). So a cluster mount first looks only where it need not
    /// wait for anyone ([`Rgrps::alloc_without_waiting`], GFS2's
    /// `gfs2_inplace_reserve` with `LM_FLAG_TRY` on its first passes) and
    /// waits for an rgrp glock only when that finds no room.
    pub fn alloc(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        state: BlockState,
        goal: Option<u64>,
        max: u32,
    ) -> Result<(u64, u32, u64)> {
        assert!(matches!(state, BlockState::Data | BlockState::Dinode));
        let start = goal.and_then(|g| self.index_of(g)).unwrap_or(self.home);
        if self.glocks.is_clustered() {
            if let Some(got) = self.alloc_without_waiting(cache, dev, state, goal, start, max)? {
                return Ok(got);
            }
        }
        // Waiting for glocks: first past the rgrps last seen full, then,
        // before giving up, through every one (blocks may have been freed
        // there since).
        let n = self.entries.len();
        for trust_seen_full in [true, false] {
            let mut passed_over = false;
            for k in 0..n {
                let i = (start + k) % n;
                if !allocatable(self.entries[i].flags) {
                    continue;
                }
                if trust_seen_full && self.skip_as_full(i) {
                    passed_over = true;
                    continue;
                }
                self.glock(i, GlockMode::Exclusive)?;
                if self.full_by_lvb(i) {
                    continue;
                }
                self.load(cache, dev, i)?;
                let near = if k == 0 { goal } else { None };
                if let Some(got) = self.alloc_in(cache, i, state, near, max)? {
                    return Ok(got);
                }
            }
            if !passed_over {
                break;
            }
        }
        Err(FsError::Errno(libc::ENOSPC))
    }

    /// The cluster's first two passes over the rgrps, from `start` (the
    /// goal's rgrp, else home), taking no glock that needs a wait:
    ///
    /// 1. `start` and this node's home rgrp (try-locked if not held: they
    ///    are where this allocation belongs), and every rgrp this node
    ///    already holds Exclusive (free to use; GFS2's `fast_to_acquire`);
    /// 2. every other rgrp, try-locked.
    ///
    /// A failed try skips the rgrp: an error here would undo the whole
    /// operation to wait for a glock the allocation does not need. A
    /// glock won by a try stays cached like any other, so the next
    /// allocation finds it in pass 1 without asking. None when neither
    /// pass found room; the caller then waits as a single node would.
    fn alloc_without_waiting(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        state: BlockState,
        goal: Option<u64>,
        start: usize,
        max: u32,
    ) -> Result<Option<(u64, u32, u64)>> {
        let n = self.entries.len();
        for pass in 0..2 {
            for k in 0..n {
                let i = (start + k) % n;
                if !allocatable(self.entries[i].flags) {
                    continue;
                }
                let name = GlockName::rgrp(self.entries[i].addr);
                let first = i == start
                    || i == self.home
                    || self.glocks.mode(name) == Some(GlockMode::Exclusive);
                if first != (pass == 0) || self.skip_as_full(i) {
                    continue;
                }
                if !self.glocks.try_hold(name, GlockMode::Exclusive)? {
                    tracing::debug!(rgrp = i, "rgrp busy on another node: skipped");
                    continue;
                }
                if self.full_by_lvb(i) {
                    continue;
                }
                self.load(cache, dev, i)?;
                let near = if k == 0 { goal } else { None };
                if let Some(got) = self.alloc_in(cache, i, state, near, max)? {
                    return Ok(Some(got));
                }
            }
        }
        Ok(None)
    }

    /// Allocates in loaded rgrp `i` (its glock held Exclusive), from
    /// `goal` if it is given (and lies at or past the rgrp's data), else
    /// from where the last allocation here ended. None if it has no
    /// reusable free block.
    fn alloc_in(
        &mut self,
        cache: &mut BufCache,
        i: usize,
        state: BlockState,
        goal: Option<u64>,
        max: u32,
    ) -> Result<Option<(u64, u32, u64)>> {
        let l = self.loaded.get_mut(&i).expect("loaded");
        if l.hdr.free == 0 {
            return Ok(None);
        }
        let from = match goal {
            Some(g) if g >= l.hdr.data0 => (g - l.hdr.data0) as u32,
            _ => l.rotor,
        };
        let Some(first) = find_free(&l.bits, from, l.hdr.data0, &self.pending_free) else {
            return Ok(None);
        };
        let mut count = 1u32;
        if state == BlockState::Data {
            while count < max
                && first + count < l.bits.len()
                && l.bits.get(first + count) == Some(BlockState::Free)
                && !self
                    .pending_free
                    .contains(&(l.hdr.data0 + u64::from(first + count)))
            {
                count += 1;
            }
        }
        l.bits.set_range(first, count, state);
        l.hdr.free -= count;
        let mut generation = 0;
        if state == BlockState::Dinode {
            l.hdr.dinodes += 1;
            generation = l.hdr.igeneration;
            l.hdr.igeneration += 1;
            self.delta.dinodes += 1;
        }
        l.rotor = first + count;
        self.delta.free -= i64::from(count);
        let addr = l.hdr.data0 + u64::from(first);
        tracing::debug!(addr, count, ?state, "allocated");
        let bits: Vec<u32> = (first..first + count).collect();
        self.log_change(cache, i, &bits)?;
        Ok(Some((addr, count, generation)))
    }

    /// Changes the state of `count` blocks from `addr` — freeing, or a
    /// dinode becoming UNLINKED and back. Freed blocks leave the cache (and
    /// get revokes) and wait for the commit before reuse.
    pub fn set_state(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        addr: u64,
        count: u32,
        to: BlockState,
    ) -> Result<()> {
        let addrs: Vec<u64> = (addr..addr + u64::from(count)).collect();
        self.set_states(cache, dev, addrs, to)
    }

    /// Changes the state of every block in `addrs` (any order, any rgrps),
    /// logging each touched header and bitmap block once.
    pub fn set_states(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        mut addrs: Vec<u64>,
        to: BlockState,
    ) -> Result<()> {
        addrs.sort_unstable();
        addrs.dedup();
        let mut at = 0;
        while at < addrs.len() {
            let addr = addrs[at];
            let Some(i) = self.index_of(addr) else {
                return Err(FsError::Corrupt {
                    device: dev.name().to_string(),
                    detail: format!("block {addr} lies in no resource group"),
                });
            };
            let end = self.entries[i].end();
            let n = addrs[at..].partition_point(|a| *a < end);
            self.set_states_in(cache, dev, i, &addrs[at..at + n], to)?;
            at += n;
        }
        Ok(())
    }

    fn set_states_in(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        i: usize,
        addrs: &[u64],
        to: BlockState,
    ) -> Result<()> {
        self.glock(i, GlockMode::Exclusive)?;
        self.load(cache, dev, i)?;
        let l = self.loaded.get_mut(&i).expect("loaded");
        let mut bits = Vec::with_capacity(addrs.len());
        for &a in addrs {
            let b = (a - l.hdr.data0) as u32;
            let from = l.bits.get(b).unwrap_or(BlockState::Free);
            if from == to {
                continue;
            }
            if from == BlockState::Free {
                return Err(FsError::Corrupt {
                    device: dev.name().to_string(),
                    detail: format!("block {a} is free already (a second free or a stale pointer)"),
                });
            }
            match from {
                BlockState::Dinode => {
                    l.hdr.dinodes -= 1;
                    self.delta.dinodes -= 1;
                }
                BlockState::Unlinked => l.hdr.unlinked -= 1,
                _ => {}
            }
            match to {
                BlockState::Free => {
                    l.hdr.free += 1;
                    self.delta.free += 1;
                    if self.pending_free.insert(a) {
                        if let Some((added, _, _)) = self.savepoint.as_mut() {
                            added.push(a);
                        }
                    }
                    if matches!(from, BlockState::Dinode | BlockState::Unlinked)
                        && self.glocks.is_clustered()
                    {
                        if let Some(data) = cache.current_data(a) {
                            self.dead_dinodes.push((a, data));
                        }
                    }
                    cache.forget(a);
                }
                BlockState::Dinode => {
                    l.hdr.dinodes += 1;
                    self.delta.dinodes += 1;
                }
                BlockState::Unlinked => l.hdr.unlinked += 1,
                BlockState::Data => {}
            }
            tracing::debug!(addr = a, ?from, ?to, "block state");
            l.bits.set(b, to);
            bits.push(b);
        }
        if !bits.is_empty() {
            self.log_change(cache, i, &bits)?;
        }
        Ok(())
    }

    /// Frees every block in `addrs`.
    pub fn free(
        &mut self,
        cache: &mut BufCache,
        dev: &dyn BlockDevice,
        addrs: Vec<u64>,
    ) -> Result<()> {
        self.set_states(cache, dev, addrs, BlockState::Free)
    }

    /// Starts recording what changes do here, so they can be undone.
    pub fn savepoint(&mut self) {
        self.savepoint = Some((Vec::new(), self.dead_dinodes.len(), self.delta));
    }

    pub fn release_savepoint(&mut self) {
        self.savepoint = None;
    }

    /// Undoes the allocator's changes since the savepoint (the buffer
    /// cache undoes the blocks; loaded rgrps are read again from it).
    pub fn rollback(&mut self) {
        let Some((added, dead, delta)) = self.savepoint.take() else {
            return;
        };
        for a in added {
            self.pending_free.remove(&a);
        }
        self.dead_dinodes.truncate(dead);
        self.delta = delta;
        self.loaded.clear();
        self.savepoint = Some((Vec::new(), self.dead_dinodes.len(), self.delta));
    }

    /// How many blocks the running transaction freed (not reusable before
    /// it commits).
    pub fn pending_frees(&self) -> u64 {
        self.pending_free.len() as u64
    }

    /// The running transaction committed: its freed blocks may be reused.
    pub fn committed(&mut self) {
        self.pending_free.clear();
        self.dead_dinodes.clear();
        if self.savepoint.is_some() {
            self.savepoint = Some((Vec::new(), 0, self.delta));
        }
    }

    /// The dinodes the committing transaction freed, with their last
    /// contents. In a cluster the caller writes them in place after the
    /// commit, before anyone may reuse the blocks: a freed dinode leaves
    /// the cache unwritten (it gets a revoke), so the disk would still
    /// show it linked, and another node that was handed its number a
    /// moment before (a lookup racing the unlink) would take the freed
    /// block for a live inode and link or change it. With link count 0 on
    /// disk that node sees a file that is gone.
    pub fn take_dead_dinodes(&mut self) -> Vec<(u64, Box<[u8]>)> {
        std::mem::take(&mut self.dead_dinodes)
    }

    pub fn delta(&self) -> StatfsDelta {
        self.delta
    }

    /// The delta was folded into the statfs file.
    pub fn folded(&mut self) {
        self.delta = StatfsDelta::default();
        if self.savepoint.is_some() {
            self.savepoint = Some((Vec::new(), self.dead_dinodes.len(), self.delta));
        }
    }
}

fn allocatable(f: RgrpFlags) -> bool {
    !f.contains(RgrpFlags::JOURNAL) && !f.contains(RgrpFlags::NOALLOC)
}

fn find_free(bits: &RgrpBitmap, from: u32, data0: u64, pending: &HashSet<u64>) -> Option<u32> {
    let len = bits.len();
    let from = from.min(len);
    let scan = |mut at: u32, end: u32| -> Option<u32> {
        while at < end {
            let f = bits.find_next_free(at)?;
            if f >= end {
                return None;
            }
            if !pending.contains(&(data0 + u64::from(f))) {
                return Some(f);
            }
            at = f + 1;
        }
        None
    };
    scan(from, len).or_else(|| scan(0, from))
}
