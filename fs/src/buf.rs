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
//! An AIL block that a new transaction changes again keeps its committed
//! image beside the new one: a checkpoint forced by a full log (before the
//! running transaction commits) must write what the log holds, never the
//! uncommitted bytes.
//!
//! A *savepoint* records, for every block a change touches, the block's
//! state before it; [`BufCache::rollback`] puts those states back. The
//! cluster needs it: a change that finds a glock it must wait for is
//! undone, waits without holding the file system, and runs again.
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

fn set_member(set: &mut BTreeSet<u64>, b: u64, member: bool) {
    if member {
        set.insert(b);
    } else {
        set.remove(&b);
    }
}

struct Buf {
    data: Box<[u8]>,
    last_use: u64,
}

/// A block's state before the change in progress touched it.
struct Before {
    data: Option<Box<[u8]>>,
    dirty: bool,
    ail: bool,
    ail_image: Option<Box<[u8]>>,
    revoked: bool,
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
    /// Committed images of AIL blocks that the running transaction changed
    /// again (what a checkpoint must write).
    ail_images: HashMap<u64, Box<[u8]>>,
    /// Blocks touched since the savepoint, as they were before.
    savepoint: Option<HashMap<u64, Before>>,
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
            ail_images: HashMap::new(),
            savepoint: None,
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
        self.remember(blkno);
        self.clock += 1;
        if !self.bufs.contains_key(&blkno) {
            self.evict_if_full();
        }
        if self.ail.contains(&blkno) && !self.dirty.contains(&blkno) {
            if let Some(old) = self.bufs.get(&blkno) {
                self.ail_images.insert(blkno, old.data.clone());
            }
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
    /// The cached bytes of `blkno` as the running transaction has them.
    pub fn current_data(&self, blkno: u64) -> Option<Box<[u8]>> {
        self.bufs.get(&blkno).map(|b| b.data.clone())
    }

    /// Whether `blkno` is in the cache (a read would need no I/O).
    pub fn is_cached(&self, blkno: u64) -> bool {
        self.bufs.contains_key(&blkno)
    }

    pub fn forget(&mut self, blkno: u64) {
        self.remember(blkno);
        self.bufs.remove(&blkno);
        self.dirty.remove(&blkno);
        self.ail.remove(&blkno);
        self.ail_images.remove(&blkno);
        if self.journaled.contains(&blkno) {
            self.revokes.insert(blkno);
        }
    }

    /// Starts recording what changes touch (see the module doc). A
    /// savepoint already open is replaced: what it recorded stays.
    pub fn savepoint(&mut self) {
        self.savepoint = Some(HashMap::new());
    }

    /// Stops recording; the changes since the savepoint stay.
    pub fn release_savepoint(&mut self) {
        self.savepoint = None;
    }

    /// Puts every block touched since the savepoint back as it was, and
    /// starts a new savepoint there. Returns those blocks.
    pub fn rollback(&mut self) -> Vec<u64> {
        let Some(before) = self.savepoint.replace(HashMap::new()) else {
            return Vec::new();
        };
        let touched: Vec<u64> = before.keys().copied().collect();
        for (b, st) in before {
            match st.data {
                Some(data) => {
                    self.bufs.insert(
                        b,
                        Buf {
                            data,
                            last_use: self.clock,
                        },
                    );
                }
                None => {
                    self.bufs.remove(&b);
                }
            }
            set_member(&mut self.dirty, b, st.dirty);
            set_member(&mut self.ail, b, st.ail);
            set_member(&mut self.revokes, b, st.revoked);
            match st.ail_image {
                Some(img) => {
                    self.ail_images.insert(b, img);
                }
                None => {
                    self.ail_images.remove(&b);
                }
            }
        }
        touched
    }

    /// Records `blkno`'s state the first time the change in progress
    /// touches it.
    fn remember(&mut self, blkno: u64) {
        let Some(sp) = self.savepoint.as_mut() else {
            return;
        };
        if sp.contains_key(&blkno) {
            return;
        }
        sp.insert(
            blkno,
            Before {
                data: self.bufs.get(&blkno).map(|b| b.data.clone()),
                dirty: self.dirty.contains(&blkno),
                ail: self.ail.contains(&blkno),
                ail_image: self.ail_images.get(&blkno).cloned(),
                revoked: self.revokes.contains(&blkno),
            },
        );
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

    /// The running transaction is in the log: its blocks join the AIL. A
    /// savepoint moves here (what is committed cannot be rolled back).
    pub fn committed(&mut self) {
        for b in std::mem::take(&mut self.dirty) {
            self.journaled.insert(b);
            self.ail.insert(b);
            self.ail_images.remove(&b);
        }
        self.revokes.clear();
        if self.savepoint.is_some() {
            self.savepoint = Some(HashMap::new());
        }
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
                match self.ail_images.get(b) {
                    Some(img) => run.extend_from_slice(img),
                    None => run.extend_from_slice(&self.bufs[b].data),
                }
            }
            dev.write_at(ail[i] * bs, &run).map_err(IoError::Device)?;
            i = j;
        }
        dev.flush().map_err(IoError::Device)?;
        self.ail.clear();
        self.ail_images.clear();
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

    /// Drops the clean blocks inode `ino`'s glock covers: its dinode, and
    /// every block whose header names it as owner (indirect, directory
    /// leaf, JDATA and xattr blocks). An inode glock went to another node,
    /// and with it the right to trust what this node read under it; blocks
    /// of other inodes stay (their glocks are still held, or dropped
    /// theirs when they went). A scan of the cache: demotes that give a
    /// glock up are not the hot path, and an index would have to follow
    /// every insert and eviction.
    pub fn invalidate_inode(&mut self, ino: u64) {
        let dirty = &self.dirty;
        let ail = &self.ail;
        self.bufs.retain(|b, buf| {
            dirty.contains(b) || ail.contains(b) || block_owner(*b, &buf.data) != Some(ino)
        });
    }

    /// Drops the clean blocks in `range` (an rgrp's header and bitmaps,
    /// when its glock goes).
    pub fn invalidate_range(&mut self, range: std::ops::Range<u64>) {
        let dirty = &self.dirty;
        let ail = &self.ail;
        self.bufs
            .retain(|b, _| dirty.contains(b) || ail.contains(b) || !range.contains(b));
    }

    /// Drops every clean block.
    pub fn invalidate_clean(&mut self) {
        let dirty = &self.dirty;
        let ail = &self.ail;
        self.bufs
            .retain(|b, _| dirty.contains(b) || ail.contains(b));
    }

    pub fn cached_blocks(&self) -> usize {
        self.bufs.len()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

/// The inode a cached metadata block belongs to, from its bytes: a
/// dinode is its own; indirect, leaf, JDATA and xattr blocks name their
/// owner at offset 32 (see `docs/format.md`). None for anything else (rgrp
/// headers and bitmaps, journal blocks, the superblock).
fn block_owner(blkno: u64, data: &[u8]) -> Option<u64> {
    use crate::format::BlockType;
    if data.len() < 40 {
        return None;
    }
    let kind = u16::from_le_bytes([data[4], data[5]]);
    let owned = [
        BlockType::Indirect as u16,
        BlockType::Leaf as u16,
        BlockType::JData as u16,
        BlockType::Xattr as u16,
    ];
    if kind == BlockType::Dinode as u16 {
        Some(blkno)
    } else if owned.contains(&kind) {
        let mut w = [0u8; 8];
        w.copy_from_slice(&data[32..40]);
        Some(u64::from_le_bytes(w))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::dinode::{indirect_ptrs, Indirect};
    use blockdev::{FileDevice, FileOptions};

    fn setup() -> (tempfile::TempDir, FileDevice, BufCache) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let dev = FileDevice::open(&path, FileOptions::default()).unwrap();
        let geo = Geometry {
            block_size: 4096,
            fs_id: 7,
            total_blocks: 256,
            hash_key: [0; 16],
        };
        (dir, dev, BufCache::new(geo, 64))
    }

    /// An indirect block told apart by `tag` (its owner field).
    fn ind(tag: u64) -> Indirect {
        Indirect {
            owner: 40 + tag,
            level: 1,
            ptrs: vec![0; indirect_ptrs(4096)],
        }
    }

    #[test]
    fn a_forced_checkpoint_writes_the_committed_image_not_the_running_one() {
        let (_d, dev, mut c) = setup();
        c.write_meta(100, &ind(1)).unwrap();
        c.committed();
        // The running transaction changes the block again; the log is
        // full, so the AIL is written before this transaction commits.
        c.write_meta(100, &ind(2)).unwrap();
        c.checkpoint(&dev).unwrap();
        let mut raw = vec![0u8; 4096];
        dev.read_at(100 * 4096, &mut raw).unwrap();
        let on_disk: Indirect = decode_block(c.geometry(), 100, &raw).unwrap();
        assert_eq!(on_disk.owner - 40, 1, "uncommitted bytes reached the disk");
        // The cache still serves the running transaction's version.
        assert_eq!(c.read_meta::<Indirect>(&dev, 100).unwrap().owner - 40, 2);
        assert_eq!(c.dirty_blocks(), 1);
    }

    /// A demote of one inode drops that inode's clean blocks only; dirty
    /// or committed-but-not-in-place ones stay whatever their owner.
    #[test]
    fn invalidating_an_inode_drops_only_its_clean_blocks() {
        let (_d, dev, mut c) = setup();
        // 100 and 102 belong to inode 41, 101 to 42, 103 to 43.
        c.write_meta(100, &ind(1)).unwrap();
        c.write_meta(101, &ind(2)).unwrap();
        c.write_meta(102, &ind(1)).unwrap();
        c.write_meta(103, &ind(3)).unwrap();
        c.committed();
        c.checkpoint(&dev).unwrap();
        c.write_meta(102, &ind(1)).unwrap(); // dirty again
        assert_eq!(c.cached_blocks(), 4);
        c.invalidate_inode(41);
        assert_eq!(c.cached_blocks(), 3, "only block 100 goes");
        let misses = c.stats().misses;
        c.read_meta::<Indirect>(&dev, 101).unwrap();
        c.read_meta::<Indirect>(&dev, 102).unwrap();
        c.read_meta::<Indirect>(&dev, 103).unwrap();
        assert_eq!(c.stats().misses, misses, "other blocks stayed cached");
        c.read_meta::<Indirect>(&dev, 100).unwrap();
        assert_eq!(c.stats().misses, misses + 1);
        c.invalidate_range(101..103);
        assert_eq!(c.cached_blocks(), 3, "dirty 102 stays, 101 goes");
    }

    #[test]
    fn rollback_restores_every_touched_block() {
        let (_d, dev, mut c) = setup();
        c.write_meta(100, &ind(1)).unwrap(); // dirty before the savepoint
        c.write_meta(101, &ind(1)).unwrap();
        c.committed(); // 100 and 101 in the AIL
        c.write_meta(101, &ind(5)).unwrap(); // dirty again, before the savepoint
        c.savepoint();
        c.write_meta(100, &ind(2)).unwrap();
        c.write_meta(101, &ind(6)).unwrap();
        c.write_meta(102, &ind(3)).unwrap(); // new
        c.forget(101);
        c.rollback();
        assert_eq!(c.read_meta::<Indirect>(&dev, 100).unwrap().owner - 40, 1);
        assert_eq!(c.read_meta::<Indirect>(&dev, 101).unwrap().owner - 40, 5);
        assert_eq!(c.pending_revokes(), 0, "the forget's revoke is undone");
        assert_eq!(c.dirty_blocks(), 1, "only 101 was dirty at the savepoint");
        assert!(c.read_meta::<Indirect>(&dev, 102).is_err(), "102 is gone");
        // The checkpoint still writes 101's committed image.
        c.checkpoint(&dev).unwrap();
        let mut raw = vec![0u8; 4096];
        dev.read_at(101 * 4096, &mut raw).unwrap();
        let on_disk: Indirect = decode_block(c.geometry(), 101, &raw).unwrap();
        assert_eq!(on_disk.owner - 40, 1);
    }

    #[test]
    fn a_commit_moves_the_savepoint() {
        let (_d, dev, mut c) = setup();
        c.savepoint();
        c.write_meta(100, &ind(1)).unwrap();
        c.committed();
        c.write_meta(100, &ind(2)).unwrap();
        c.rollback();
        assert_eq!(c.read_meta::<Indirect>(&dev, 100).unwrap().owner - 40, 1);
        assert_eq!(c.dirty_blocks(), 0);
        assert_eq!(c.ail_blocks(), 1);
    }
}
