//! Block mapping: a file's logical blocks to device blocks through its
//! pointer tree (`docs/format.md`, "The pointer tree").
//!
//! Owns: walking the tree, growing it (unstuffing a stuffed dinode, adding
//! a level on top), allocating indirect and data blocks on the way, finding
//! the next allocated block (SEEK_DATA), and freeing ranges (truncate,
//! punch hole, delete). May not touch: file contents — data blocks are
//! allocated here but filled by `inode.rs` — or the dinode on disk (callers
//! write the dinode they pass in).
//!
//! A tree of height h: the dinode's pointers point at level h−1 blocks,
//! level-1 blocks at data. Logical block L is found through
//! `format::dinode::pointer_path`. Growing a level puts the old top
//! pointers into a new indirect block's first slots, which keeps every
//! existing block's logical number (the path's new top digit is 0).

use crate::error::{FsError, Result};
use crate::format::dinode::{
    dinode_ptrs, indirect_ptrs, pointer_path, stuffed_capacity, tree_data_blocks,
};
use crate::format::rgrp::BlockState;
use crate::format::{Dinode, DinodeContent, Indirect, JData, MAX_HEIGHT};
use crate::mount::Fs;

impl Fs {
    fn ptrs_per_indirect(&self) -> u64 {
        indirect_ptrs(self.geo.block_size) as u64
    }

    /// Logical blocks one pointer at tree level `level` covers (level 0
    /// pointers are data pointers).
    fn span(&self, level: u32) -> u64 {
        self.ptrs_per_indirect().saturating_pow(level)
    }

    /// The device block holding logical block `lblock`, or None for a hole
    /// (or a stuffed file).
    pub(crate) fn map_block(&mut self, ino: u64, di: &Dinode, lblock: u64) -> Result<Option<u64>> {
        if di.height == 0 {
            return Ok(None);
        }
        if lblock >= tree_data_blocks(self.geo.block_size, di.height) {
            return Ok(None);
        }
        let Some(path) = pointer_path(self.geo.block_size, di.height, lblock) else {
            return Ok(None);
        };
        let Some(top) = di.pointers() else {
            return Ok(None);
        };
        let mut p = top[path[0]];
        for (depth, &slot) in path.iter().enumerate().skip(1) {
            if p == 0 {
                return Ok(None);
            }
            let ind: Indirect = self.cache.read_meta(&*self.dev, p)?;
            self.check_owner(ino, p, ind.owner)?;
            let want = u32::from(di.height) - depth as u32;
            if ind.level != want {
                return Err(self.corrupt(format!(
                    "inode {ino}: indirect block {p} has level {}, expected {want}",
                    ind.level
                )));
            }
            p = ind.ptrs[slot];
        }
        Ok((p != 0).then_some(p))
    }

    pub(crate) fn corrupt(&self, detail: String) -> FsError {
        FsError::Corrupt {
            device: self.dev.name().to_string(),
            detail,
        }
    }

    fn check_owner(&self, ino: u64, blk: u64, owner: u64) -> Result<()> {
        if owner != ino {
            return Err(self.corrupt(format!(
                "block {blk} belongs to inode {owner}, but inode {ino} points at it"
            )));
        }
        Ok(())
    }

    /// Turns a stuffed dinode into a height-1 tree, moving its bytes into
    /// a first data block (JData for JDATA files).
    pub(crate) fn unstuff(&mut self, ino: u64, di: &mut Dinode) -> Result<()> {
        if di.height != 0 {
            return Ok(());
        }
        let bytes = di.stuffed_data().map(|b| b.to_vec()).unwrap_or_default();
        let mut ptrs = vec![0u64; dinode_ptrs(self.geo.block_size)];
        if !bytes.is_empty() {
            let (blk, _, _) =
                self.rgrps
                    .alloc(&mut self.cache, &*self.dev, BlockState::Data, Some(ino), 1)?;
            di.blocks += 1;
            if di.is_jdata() {
                let mut payload =
                    vec![0u8; self.geo.bs() - crate::format::dinode::JDATA_HEADER_SIZE];
                payload[..bytes.len()].copy_from_slice(&bytes);
                self.cache.write_meta(
                    blk,
                    &JData {
                        owner: ino,
                        lblock: 0,
                        payload,
                    },
                )?;
            } else {
                let mut b = vec![0u8; self.geo.bs()];
                b[..bytes.len()].copy_from_slice(&bytes);
                self.write_data_blocks(blk, &b)?;
            }
            ptrs[0] = blk;
        }
        di.height = 1;
        di.content = DinodeContent::Pointers(ptrs);
        Ok(())
    }

    /// Grows the tree until it can address `lblock`.
    fn grow_to(&mut self, ino: u64, di: &mut Dinode, lblock: u64) -> Result<()> {
        self.unstuff(ino, di)?;
        while lblock >= tree_data_blocks(self.geo.block_size, di.height) {
            if di.height >= MAX_HEIGHT {
                return Err(FsError::Errno(libc::EFBIG));
            }
            let old = match &di.content {
                DinodeContent::Pointers(p) => p.clone(),
                DinodeContent::Stuffed(_) => unreachable!("unstuffed above"),
            };
            let mut top = vec![0u64; dinode_ptrs(self.geo.block_size)];
            if old.iter().any(|p| *p != 0) {
                let (blk, _, _) = self.rgrps.alloc(
                    &mut self.cache,
                    &*self.dev,
                    BlockState::Data,
                    Some(ino),
                    1,
                )?;
                let mut ptrs = vec![0u64; indirect_ptrs(self.geo.block_size)];
                ptrs[..old.len()].copy_from_slice(&old);
                self.cache.write_meta(
                    blk,
                    &Indirect {
                        owner: ino,
                        level: u32::from(di.height),
                        ptrs,
                    },
                )?;
                di.blocks += 1;
                top[0] = blk;
            }
            di.height += 1;
            di.content = DinodeContent::Pointers(top);
        }
        Ok(())
    }

    /// The device block for `lblock`, allocating it (and the indirect
    /// blocks above it) if it is a hole. Returns (block, newly allocated).
    /// A new data block of a regular file is *not* zeroed here: the caller
    /// fills all of it. A new JData block is written empty.
    pub(crate) fn alloc_block(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        lblock: u64,
        run: u32,
    ) -> Result<(u64, u32, bool)> {
        self.grow_to(ino, di, lblock)?;
        let bs = self.geo.block_size;
        let path = pointer_path(bs, di.height, lblock)
            .ok_or_else(|| self.corrupt(format!("inode {ino}: no path to block {lblock}")))?;
        let height = u32::from(di.height);
        let goal = Some(if di.goal != 0 { di.goal } else { ino });
        // Walk down, allocating missing indirect blocks.
        let mut parent: Option<(u64, Indirect)> = None;
        let mut cur = match &di.content {
            DinodeContent::Pointers(p) => p[path[0]],
            DinodeContent::Stuffed(_) => unreachable!(),
        };
        for depth in 0..path.len() {
            let level = height - 1 - depth as u32; // level of the block `cur` names
            if cur == 0 {
                let max = if level == 0 && !di.is_jdata() {
                    // A contiguous run over the holes that follow in this
                    // parent's pointer array (never over existing blocks).
                    let ptrs: &[u64] = match &parent {
                        None => di.pointers().unwrap_or(&[]),
                        Some((_, ind)) => &ind.ptrs,
                    };
                    let holes = ptrs[path[depth]..]
                        .iter()
                        .take(run as usize)
                        .take_while(|p| **p == 0)
                        .count() as u32;
                    holes.max(1)
                } else {
                    1
                };
                let (blk, n, _) =
                    self.rgrps
                        .alloc(&mut self.cache, &*self.dev, BlockState::Data, goal, max)?;
                di.blocks += u64::from(n);
                if level > 0 {
                    self.cache.write_meta(
                        blk,
                        &Indirect {
                            owner: ino,
                            level,
                            ptrs: vec![0; indirect_ptrs(bs)],
                        },
                    )?;
                } else if di.is_jdata() {
                    self.cache.write_meta(
                        blk,
                        &JData {
                            owner: ino,
                            lblock,
                            payload: vec![
                                0;
                                self.geo.bs() - crate::format::dinode::JDATA_HEADER_SIZE
                            ],
                        },
                    )?;
                }
                // Link the new block(s) into the parent.
                let slot = path[depth];
                match &mut parent {
                    None => {
                        if let DinodeContent::Pointers(p) = &mut di.content {
                            for k in 0..n as usize {
                                p[slot + k] = blk + k as u64;
                            }
                        }
                    }
                    Some((paddr, ind)) => {
                        for k in 0..n as usize {
                            ind.ptrs[slot + k] = blk + k as u64;
                        }
                        self.cache.write_meta(*paddr, ind)?;
                    }
                }
                if level == 0 {
                    // The next allocation starts after this run — unless
                    // the run ends at the end of the device (the goal
                    // must be an address of the file system).
                    let next = blk + u64::from(n);
                    di.goal = if self.geo.is_valid_addr(next) {
                        next
                    } else {
                        blk
                    };
                    return Ok((blk, n, true));
                }
                cur = blk;
            } else if level == 0 {
                // Existing data block: report the run of existing blocks.
                let ptrs: &[u64] = match &parent {
                    None => di.pointers().unwrap_or(&[]),
                    Some((_, ind)) => &ind.ptrs,
                };
                let slot = path[depth];
                let mut n = 1u32;
                while n < run
                    && slot + (n as usize) < ptrs.len()
                    && ptrs[slot + n as usize] == cur + u64::from(n)
                {
                    n += 1;
                }
                return Ok((cur, n, false));
            }
            let ind: Indirect = self.cache.read_meta(&*self.dev, cur)?;
            self.check_owner(ino, cur, ind.owner)?;
            parent = Some((cur, ind));
            cur = parent
                .as_ref()
                .map(|(_, i)| i.ptrs[path[depth + 1]])
                .unwrap_or(0);
        }
        unreachable!("the loop returns at level 0")
    }

    /// The first allocated logical block at or after `from` (SEEK_DATA
    /// for trees; stuffed files are handled by the caller).
    pub(crate) fn next_allocated(
        &mut self,
        ino: u64,
        di: &Dinode,
        from: u64,
    ) -> Result<Option<u64>> {
        let Some(top) = di.pointers().map(|p| p.to_vec()) else {
            return Ok(None);
        };
        let level = u32::from(di.height) - 1;
        self.next_in(ino, &top, level, 0, from)
    }

    fn next_in(
        &mut self,
        ino: u64,
        ptrs: &[u64],
        level: u32,
        base: u64,
        from: u64,
    ) -> Result<Option<u64>> {
        let span = self.span(level);
        for (k, &p) in ptrs.iter().enumerate() {
            let lo = base.saturating_add(span.saturating_mul(k as u64));
            let hi = lo.saturating_add(span);
            if p == 0 || hi <= from {
                continue;
            }
            if level == 0 {
                return Ok(Some(lo));
            }
            let ind: Indirect = self.cache.read_meta(&*self.dev, p)?;
            self.check_owner(ino, p, ind.owner)?;
            if let Some(l) = self.next_in(ino, &ind.ptrs, level - 1, lo, from)? {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// Frees the data blocks of logical blocks `from..to` and every
    /// indirect block left empty. Updates `di`'s pointers and block count
    /// (the caller writes `di`). With a large range the caller splits it
    /// (see `Fs::truncate_blocks`) so one transaction stays bounded.
    pub(crate) fn free_range(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        from: u64,
        to: u64,
    ) -> Result<()> {
        if di.height == 0 || from >= to {
            return Ok(());
        }
        let mut top = di.pointers().map(|p| p.to_vec()).unwrap_or_default();
        let mut freed = Vec::new();
        let level = u32::from(di.height) - 1;
        self.free_in(ino, &mut top, level, 0, from, to, &mut freed)?;
        if !freed.is_empty() {
            di.blocks = di.blocks.saturating_sub(freed.len() as u64).max(1);
            self.rgrps.free(&mut self.cache, &*self.dev, freed)?;
            di.content = DinodeContent::Pointers(top);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn free_in(
        &mut self,
        ino: u64,
        ptrs: &mut [u64],
        level: u32,
        base: u64,
        from: u64,
        to: u64,
        freed: &mut Vec<u64>,
    ) -> Result<bool> {
        let span = self.span(level);
        let mut changed = false;
        for (k, slot) in ptrs.iter_mut().enumerate() {
            let p = *slot;
            let lo = base.saturating_add(span.saturating_mul(k as u64));
            let hi = lo.saturating_add(span);
            if p == 0 || hi <= from || lo >= to {
                continue;
            }
            if level == 0 {
                freed.push(p);
                *slot = 0;
                changed = true;
                continue;
            }
            let mut ind: Indirect = self.cache.read_meta(&*self.dev, p)?;
            self.check_owner(ino, p, ind.owner)?;
            if self.free_in(ino, &mut ind.ptrs, level - 1, lo, from, to, freed)? {
                if ind.ptrs.iter().all(|x| *x == 0) {
                    freed.push(p);
                    *slot = 0;
                    changed = true;
                } else {
                    self.cache.write_meta(p, &ind)?;
                }
            }
        }
        Ok(changed)
    }

    /// Makes a tree-less, block-less dinode stuffed again (after a
    /// truncate to zero), so small files go back to living in the dinode.
    pub(crate) fn restuff_if_empty(&mut self, di: &mut Dinode) {
        let cap = stuffed_capacity(self.geo.block_size);
        if di.height > 0
            && di.size <= cap as u64
            && di.pointers().is_some_and(|p| p.iter().all(|x| *x == 0))
        {
            di.height = 0;
            di.content = DinodeContent::Stuffed(vec![0; cap]);
        }
    }
}
