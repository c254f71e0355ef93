//! The metadata block cache and the running transaction.
//!
//! Owns: cached copies of metadata blocks (dinodes, indirect blocks,
//! leaves, bitmaps, rgrp headers, JData, xattr blocks), and each block's
//! place in the journal's life cycle:
//!
//! ```text
//! clean ──write_meta──▶ dirty (in the running transaction, memory only)
//!   ▲                        │ log commit
//!   │ checkpoint             ▼
//!   └──────────────── AIL (committed, not yet written in place)
//! ```
//!
//! A dirty block is never written in place before its transaction
//! commits (write-ahead logging); an AIL block is written in place only by
//! a checkpoint, which then lets the log tail move past it. A freed block
//! leaves the cache at once; if an image of it is still in the active part
//! of the log it gets a revoke, so replay can never write an old copy over
//! whatever the block is used for next.
//!
//! May not touch: the journal's format (that is `log.rs`) or the meaning of
//! any block. Memory is bounded: clean blocks beyond `capacity` are evicted
//! least recently used first; dirty and AIL blocks are bounded by the
//! journal (the caller commits and checkpoints).

use crate::error::Result;
use crate::format::block::{decode_block, encode_block, MetaBlock};
use crate::format::io::IoError;
use crate::format::Geometry;
use blockdev::BlockDevice;
use std::collections::{BTreeSet, HashMap, HashSet};

struct Buf {
    data: Box<[u8]>,
    last_use: u64,
}

/// Hit and miss counters (for `rdlmfs status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

pub struct BufCache {
    geo: Geometry,
    capacity: usize,
    bufs: HashMap<u64, Buf>,
    clock: u64,
    /// Blocks changed by the running transaction.
    dirty: BTreeSet<u64>,
    /// Blocks committed to the log but not yet written in place.
    ail: BTreeSet<u64>,
    /// Blocks with an image in the active part of the log (since the tail).
    journaled: HashSet<u64>,
    /// Freed blocks whose old images replay must skip.
    revokes: BTreeSet<u64>,
    stats: CacheStats,
}

impl BufCache {
    /// A cache holding at most `capacity` clean blocks (at least 64).
    pub fn new(geo: Geometry, capacity: usize) -> BufCache {
        BufCache {
            geo,
            capacity: capacity.max(64),
            bufs: HashMap::new(),
            clock: 0,
            dirty: BTreeSet::new(),
            ail: BTreeSet::new(),
            journaled: HashSet::new(),
            revokes: BTreeSet::new(),
            stats: CacheStats::default(),
        }
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn bs(&self) -> usize {
        self.geo.block_size as usize
    }

    /// The block's bytes, read from the device on a miss.
    pub fn read(&mut self, dev: &dyn BlockDevice, blkno: u64) -> Result<&[u8]> {
        self.clock += 1;
        let clock = self.clock;
        if self.bufs.contains_key(&blkno) {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
            if !self.geo.is_valid_addr(blkno) {
                return Err(crate::error::FsError::Corrupt {
                    device: dev.name().to_string(),
                    detail: format!("block address {blkno} lies outside the file system"),
                });
            }
            let mut data = vec![0u8; self.bs()].into_boxed_slice();
            dev.read_at(blkno * self.geo.block_size as u64, &mut data)
                .map_err(IoError::Device)?;
            self.evict_if_full();
            self.bufs.insert(
                blkno,
                Buf {
                    data,
                    last_use: clock,
                },
            );
        }
        let b = self.bufs.get_mut(&blkno).expect("inserted above");
        b.last_use = clock;
        Ok(&b.data)
    }

    /// Reads and decodes a metadata block; a block that does not decode is
    /// dropped from the cache so a later read tries the device again.
    pub fn read_meta<T: MetaBlock>(&mut self, dev: &dyn BlockDevice, blkno: u64) -> Result<T> {
        let geo = self.geo;
        let r = decode_block::<T>(&geo, blkno, self.read(dev, blkno)?);
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                if !self.dirty.contains(&blkno) && !self.ail.contains(&blkno) {
                    self.bufs.remove(&blkno);
                }
                Err(IoError::Format {
                    device: dev.name().to_string(),
                    source: e,
                }
                .into())
            }
        }
    }

    /// Encodes `v` as block `blkno` and makes it part of the running
    /// transaction.
    pub fn write_meta<T: MetaBlock>(&mut self, blkno: u64, v: &T) -> Result<()> {
        let mut data = vec![0u8; self.bs()].into_boxed_slice();
        encode_block(v, &self.geo, blkno, &mut data)?;
        self.install(blkno, data);
        Ok(())
    }

    fn install(&mut self, blkno: u64, data: Box<[u8]>) {
        self.clock += 1;
        if !self.bufs.contains_key(&blkno) {
            self.evict_if_full();
        }
        self.bufs.insert(
            blkno,
            Buf {
                data,
                last_use: self.clock,
            },
        );
        self.dirty.insert(blkno);
    }

    /// A block was freed: drop every cached copy and, if the log still
    /// holds an image of it, revoke that image.
    pub fn forget(&mut self, blkno: u64) {
        self.bufs.remove(&blkno);
        self.dirty.remove(&blkno);
        self.ail.remove(&blkno);
        if self.journaled.contains(&blkno) {
            self.revokes.insert(blkno);
        }
    }

    /// Drops a clean cached copy (another node may change the block).
    pub fn invalidate(&mut self, blkno: u64) {
        if !self.dirty.contains(&blkno) && !self.ail.contains(&blkno) {
            self.bufs.remove(&blkno);
        }
    }

    pub fn dirty_blocks(&self) -> usize {
        self.dirty.len()
    }

    pub fn pending_revokes(&self) -> usize {
        self.revokes.len()
    }

    pub fn ail_blocks(&self) -> usize {
        self.ail.len()
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || !self.revokes.is_empty()
    }

    /// The running transaction: images in address order and the revokes.
    pub fn transaction(&self) -> (Vec<(u64, &[u8])>, Vec<u64>) {
        let images = self
            .dirty
            .iter()
            .map(|b| (*b, &*self.bufs[b].data))
            .collect();
        (images, self.revokes.iter().copied().collect())
    }

    /// The running transaction is in the log: its blocks join the AIL.
    pub fn committed(&mut self) {
        for b in std::mem::take(&mut self.dirty) {
            self.journaled.insert(b);
            self.ail.insert(b);
        }
        self.revokes.clear();
    }

    /// Writes every AIL block in place (in address order, merging runs)
    /// and flushes. Afterwards the log holds nothing replay still needs, so
    /// the caller may move the tail to the head.
    pub fn checkpoint(&mut self, dev: &dyn BlockDevice) -> Result<usize> {
        let bs = self.bs() as u64;
        let ail: Vec<u64> = self.ail.iter().copied().collect();
        let mut i = 0;
        while i < ail.len() {
            let mut j = i + 1;
            while j < ail.len() && ail[j] == ail[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            let mut run = Vec::with_capacity((j - i) * bs as usize);
            for b in &ail[i..j] {
                run.extend_from_slice(&self.bufs[b].data);
            }
            dev.write_at(ail[i] * bs, &run).map_err(IoError::Device)?;
            i = j;
        }
        dev.flush().map_err(IoError::Device)?;
        self.ail.clear();
        self.journaled.clear();
        // Blocks dirtied since the last commit are journaled in the next one.
        self.evict_if_full();
        Ok(ail.len())
    }

    fn evict_if_full(&mut self) {
        if self.bufs.len() < self.capacity + self.capacity / 8 {
            return;
        }
        let mut clean: Vec<(u64, u64)> = self
            .bufs
            .iter()
            .filter(|(b, _)| !self.dirty.contains(b) && !self.ail.contains(b))
            .map(|(b, buf)| (buf.last_use, *b))
            .collect();
        clean.sort_unstable();
        let excess = self.bufs.len().saturating_sub(self.capacity);
        for (_, b) in clean.into_iter().take(excess) {
            self.bufs.remove(&b);
            self.stats.evictions += 1;
        }
    }

    pub fn cached_blocks(&self) -> usize {
        self.bufs.len()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}
