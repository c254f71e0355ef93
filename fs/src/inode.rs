//! Inodes in memory and file contents.
//!
//! Owns: the inode cache (decoded dinodes, bounded), reading and writing
//! a dinode through the running transaction, creating and destroying
//! dinodes, and the bytes of files — regular files (data blocks written
//! straight to the device before the transaction that points at them
//! commits: ordered mode) and JDATA files (system files and directory hash
//! tables, whose blocks are journaled metadata). May not touch: names and
//! directories (`dir.rs`), permissions (`ops.rs`).

use crate::error::{FsError, Result};
use crate::format::dinode::{data_payload, stuffed_capacity};
use crate::format::io::IoError;
use crate::format::rgrp::BlockState;
use crate::format::{Dinode, DinodeContent, DinodeFlags, JData, Timestamp};
use crate::glock::{GlockMode, GlockName};
use crate::lvb::{InodeLvb, LvbAttrs};
use crate::mount::Fs;

/// Data blocks freed per transaction by a long truncate or delete.
const FREE_CHUNK: u64 = 8192;

impl Fs {
    /// The inode `ino` (from the cache, or read and checked). A dinode
    /// whose truncate a crash interrupted is finished first.
    pub(crate) fn dinode(&mut self, ino: u64) -> Result<Dinode> {
        if let Some(d) = self.inodes.get(&ino) {
            return Ok(d.clone());
        }
        let name = GlockName::inode(ino);
        self.glocks.hold(name, GlockMode::Shared)?;
        if let Some(kept) = self.released_inodes.remove(&ino) {
            let lvb = self.glocks.lvb(name);
            tracing::debug!(ino, kept_version = kept.version, lvb = ?lvb.as_ref().and_then(|b| InodeLvb::decode(b)), "kept dinode against the grant's LVB");
            if lvb
                .and_then(|b| InodeLvb::decode(&b))
                .is_some_and(|l| l.describes(kept.generation, kept.version))
            {
                self.lvb_stats.kept += 1;
                self.inodes.insert(ino, kept.clone());
                return Ok(kept);
            }
        }
        if self.glocks.is_clustered() {
            self.lvb_stats.read += 1;
        }
        let di: Dinode = self.cache.read_meta(&*self.dev, ino)?;
        if self.inodes.len() >= self.opts.cache_inodes {
            self.shrink_inode_cache();
        }
        self.inodes.insert(ino, di.clone());
        if di.flags.contains(DinodeFlags::TRUNC_IN_PROG) && self.log.is_some() {
            let mut d = di;
            self.truncate_blocks(ino, &mut d)?;
            d.flags.0 &= !DinodeFlags::TRUNC_IN_PROG;
            self.put_dinode(ino, &mut d)?;
            return Ok(d);
        }
        Ok(di)
    }

    /// The generation of the inode at `addr`, for a demote that holds its
    /// glock: from the cache, else read (None if the block holds no
    /// dinode).
    pub(crate) fn inode_generation(&mut self, addr: u64) -> Option<u64> {
        if let Some(d) = self.inodes.get(&addr) {
            return Some(d.generation);
        }
        self.cache
            .read_meta::<Dinode>(&*self.dev, addr)
            .ok()
            .map(|d| d.generation)
    }

    /// Keeps `di` aside after its glock went away (see `released_inodes`),
    /// within the inode cache's bound.
    pub(crate) fn keep_released(&mut self, ino: u64, di: Dinode) {
        if self.released_inodes.len() >= self.opts.cache_inodes {
            self.released_inodes.clear();
        }
        self.released_inodes.insert(ino, di);
    }

    /// The LVB an Exclusive holder of `ino`'s glock leaves when it lets go
    /// (for the demote, which holds the glock and has written everything
    /// back): the dinode as this node has it, else as the buffer cache or
    /// the disk has it. None if the block holds no dinode (an empty LVB
    /// is written instead).
    pub(crate) fn inode_lvb(&mut self, ino: u64) -> Option<Vec<u8>> {
        if let Some(d) = self.inodes.get(&ino) {
            return Some(InodeLvb::encode(d));
        }
        let d = self.cache.read_meta::<Dinode>(&*self.dev, ino).ok()?;
        if d.nlink == 0 {
            // A deleted inode's block may be reused without its glock:
            // keep no copy (see `Fs::forget_dead_dinode`).
            self.cache.invalidate(ino);
        }
        Some(InodeLvb::encode(&d))
    }

    /// The attributes of `ino` from its glock's LVB, without the dinode:
    /// only while this node holds the glock Shared (nobody, this node
    /// included, can have changed the inode since the LVB was written, at
    /// the grant or at this node's own down-conversion) and has no
    /// copy of the dinode. None: read the dinode.
    pub(crate) fn lvb_attrs(&mut self, ino: u64) -> Result<Option<(u64, LvbAttrs)>> {
        if !self.glocks.is_clustered() || self.inodes.contains_key(&ino) {
            return Ok(None);
        }
        let name = GlockName::inode(ino);
        self.glocks.hold(name, GlockMode::Shared)?;
        if self.glocks.mode(name) != Some(GlockMode::Shared) {
            return Ok(None);
        }
        let Some(l) = self.glocks.lvb(name).and_then(|b| InodeLvb::decode(&b)) else {
            return Ok(None);
        };
        if let Some(kept) = self.released_inodes.get(&ino) {
            if l.describes(kept.generation, kept.version) {
                // The full copy is as good and serves everything else too.
                return Ok(None);
            }
        }
        let Some(a) = l.attrs else {
            return Ok(None);
        };
        self.lvb_stats.attrs += 1;
        Ok(Some((u64::from(l.generation), a)))
    }

    fn shrink_inode_cache(&mut self) {
        let keep: Vec<u64> = self
            .inodes
            .keys()
            .filter(|i| self.opens.contains_key(i))
            .copied()
            .collect();
        let kept: Vec<(u64, Dinode)> = keep
            .into_iter()
            .filter_map(|i| self.inodes.remove(&i).map(|d| (i, d)))
            .collect();
        self.inodes.clear();
        self.inodes.extend(kept);
    }

    /// Writes `di` as inode `ino` into the running transaction, bumping
    /// its version (the inode glock's LVB carries it).
    pub(crate) fn put_dinode(&mut self, ino: u64, di: &mut Dinode) -> Result<()> {
        self.glocks
            .hold(GlockName::inode(ino), GlockMode::Exclusive)?;
        self.released_inodes.remove(&ino);
        di.version += 1;
        self.cache.write_meta(ino, di)?;
        self.inodes.insert(ino, di.clone());
        Ok(())
    }

    /// Allocates and writes a new dinode near `goal`.
    pub(crate) fn new_dinode(&mut self, goal: u64, mut di: Dinode) -> Result<(u64, Dinode)> {
        let (ino, _, generation) = self.rgrps.alloc(
            &mut self.cache,
            &*self.dev,
            BlockState::Dinode,
            Some(goal),
            1,
        )?;
        di.generation = generation;
        di.version = 0;
        self.put_dinode(ino, &mut di)?;
        Ok((ino, di))
    }

    /// Frees an inode with no links: its data, tree, xattrs and dinode.
    /// Splits a large file over several transactions.
    pub(crate) fn destroy_inode(&mut self, ino: u64) -> Result<()> {
        tracing::debug!(ino, "destroying inode");
        let mut di = self.dinode(ino)?;
        if di.is_exhash() {
            // Leaves, then the hash table's tree, in this transaction: a
            // table is small (128 KiB for a million names), and a hashed
            // directory has no valid shape between "table" and "freed".
            let leaves = self.dir_leaves(ino, &di)?;
            self.rgrps.free(&mut self.cache, &*self.dev, leaves)?;
            self.free_range(ino, &mut di, 0, u64::MAX)?;
        } else {
            di.size = 0;
            self.truncate_blocks(ino, &mut di)?;
        }
        let mut xa = di.xattr;
        let mut blocks = Vec::new();
        while xa != 0 {
            let b: crate::format::XattrBlock = self.cache.read_meta(&*self.dev, xa)?;
            blocks.push(xa);
            xa = b.next;
        }
        if !blocks.is_empty() {
            self.rgrps.free(&mut self.cache, &*self.dev, blocks)?;
        }
        if let Some(di_blocks) = di.pointers() {
            if di_blocks.iter().any(|p| *p != 0) {
                return Err(
                    self.corrupt(format!("inode {ino}: blocks left after freeing its tree"))
                );
            }
        }
        self.rgrps
            .set_state(&mut self.cache, &*self.dev, ino, 1, BlockState::Free)?;
        self.inodes.remove(&ino);
        if self.unlinked.remove(&ino) {
            self.write_unlinked_list()?;
        }
        Ok(())
    }

    /// Frees every block past `di.size` (all of a file being deleted),
    /// committing between chunks when the transaction grows large; the
    /// dinode carries TRUNC_IN_PROG meanwhile so a crash in the middle is
    /// finished by whoever next reads it.
    pub(crate) fn truncate_blocks(&mut self, ino: u64, di: &mut Dinode) -> Result<()> {
        let payload = data_payload(self.geo.block_size, di.is_jdata()) as u64;
        let from = di.size.div_ceil(payload);
        if di.height == 0 {
            return Ok(());
        }
        let mut at = from;
        let mut marked = false;
        while let Some(l) = self.next_allocated(ino, di, at)? {
            if !marked && self.log.is_some() {
                di.flags.0 |= DinodeFlags::TRUNC_IN_PROG;
                self.put_dinode(ino, di)?;
                marked = true;
            }
            let end = l.saturating_add(FREE_CHUNK);
            self.free_range(ino, di, l, end)?;
            self.put_dinode(ino, di)?;
            at = end;
            self.maybe_commit()?;
            if at == u64::MAX {
                break;
            }
        }
        self.restuff_if_empty(di);
        if marked {
            di.flags.0 &= !DinodeFlags::TRUNC_IN_PROG;
        }
        self.put_dinode(ino, di)?;
        Ok(())
    }

    // ---- regular file data ----

    /// Writes whole blocks of file data in place (ordered mode: before the
    /// transaction that makes them reachable commits).
    pub(crate) fn write_data_blocks(&mut self, blk: u64, bytes: &[u8]) -> Result<()> {
        debug_assert!(bytes.len().is_multiple_of(self.geo.bs()));
        self.dev
            .write_at(blk * u64::from(self.geo.block_size), bytes)
            .map_err(IoError::Device)?;
        Ok(())
    }

    /// Reads `len` bytes at `off` of a regular file (short at EOF).
    pub(crate) fn read_data(
        &mut self,
        ino: u64,
        di: &Dinode,
        off: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        if off >= di.size {
            return Ok(Vec::new());
        }
        let end = (off + len as u64).min(di.size);
        let mut out = vec![0u8; (end - off) as usize];
        if di.height == 0 {
            if let Some(d) = di.stuffed_data() {
                out.copy_from_slice(&d[off as usize..end as usize]);
            }
            return Ok(out);
        }
        let bs = u64::from(self.geo.block_size);
        let first = off / bs;
        let last = (end - 1) / bs;
        let mut l = first;
        while l <= last {
            let Some(b) = self.map_block(ino, di, l)? else {
                l += 1;
                continue;
            };
            // Extend over a contiguous run (one device read).
            let mut n = 1u64;
            while l + n <= last && n < 256 && self.map_block(ino, di, l + n)? == Some(b + n) {
                n += 1;
            }
            let mut buf = vec![0u8; (n * bs) as usize];
            self.dev
                .read_at(b * bs, &mut buf)
                .map_err(IoError::Device)?;
            let run_start = l * bs;
            let from = off.max(run_start);
            let to = end.min(run_start + n * bs);
            out[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&buf[(from - run_start) as usize..(to - run_start) as usize]);
            l += n;
        }
        Ok(out)
    }

    /// Writes `data` at `off` of a regular file, allocating as needed;
    /// updates `di.size` (the caller writes the dinode and its times).
    pub(crate) fn write_data(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        off: u64,
        data: &[u8],
    ) -> Result<()> {
        match self.write_data_partial(ino, di, off, data) {
            (_, None) => Ok(()),
            (_, Some(e)) => Err(e),
        }
    }

    /// As [`write_data`](Self::write_data), but when allocation fails
    /// part way (ENOSPC) returns how many bytes from `off` were written,
    /// with the error. Every block allocated so far is linked into `di`'s
    /// tree and `di.size` covers what was written, so the caller must
    /// still write `di` back (else the blocks leak): a short write.
    pub(crate) fn write_data_partial(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        off: u64,
        data: &[u8],
    ) -> (usize, Option<FsError>) {
        if data.is_empty() {
            return (0, None);
        }
        let Some(end) = off
            .checked_add(data.len() as u64)
            .filter(|e| *e <= crate::format::dinode::MAX_FILE_SIZE)
        else {
            return (0, Some(FsError::Errno(libc::EFBIG)));
        };
        let cap = stuffed_capacity(self.geo.block_size) as u64;
        if di.height == 0 && end <= cap {
            if let DinodeContent::Stuffed(b) = &mut di.content {
                b[off as usize..end as usize].copy_from_slice(data);
            }
            di.size = di.size.max(end);
            return (data.len(), None);
        }
        let mut done = 0usize;
        let r = self.write_runs(ino, di, off, end, data, &mut done);
        if done > 0 {
            di.size = di.size.max(off + done as u64);
        }
        (done, r.err())
    }

    /// The block part of [`write_data_partial`](Self::write_data_partial);
    /// `done` counts the bytes written.
    fn write_runs(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        off: u64,
        end: u64,
        data: &[u8],
        done: &mut usize,
    ) -> Result<()> {
        self.unstuff(ino, di)?;
        let bs = u64::from(self.geo.block_size);
        let mut l = off / bs;
        let last = (end - 1) / bs;
        while l <= last {
            let want = (last - l + 1).min(256) as u32;
            let (blk, n, fresh) = self.alloc_block(ino, di, l, want)?;
            let n = u64::from(n).min(last - l + 1);
            let run_start = l * bs;
            let run_end = run_start + n * bs;
            let from = off.max(run_start);
            let to = end.min(run_end);
            let mut buf = vec![0u8; (n * bs) as usize];
            let partial = from > run_start || to < run_end;
            if partial && !fresh {
                // Read what this write does not cover (only the edges).
                self.dev
                    .read_at(blk * bs, &mut buf)
                    .map_err(IoError::Device)?;
            }
            buf[(from - run_start) as usize..(to - run_start) as usize]
                .copy_from_slice(&data[(from - off) as usize..(to - off) as usize]);
            self.write_data_blocks(blk, &buf)?;
            *done = (to - off) as usize;
            l += n;
        }
        Ok(())
    }

    /// Zeroes bytes `from..to` of a regular file that lie in allocated
    /// blocks or the stuffed area (the partial blocks at the ends of a
    /// punched hole or of a truncate that keeps a partial last block).
    pub(crate) fn zero_range_in_place(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        from: u64,
        to: u64,
    ) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        if di.height == 0 {
            if let DinodeContent::Stuffed(b) = &mut di.content {
                let cap = b.len() as u64;
                let (f, t) = (from.min(cap) as usize, to.min(cap) as usize);
                b[f..t].fill(0);
            }
            return Ok(());
        }
        let bs = u64::from(self.geo.block_size);
        let mut l = from / bs;
        while l * bs < to {
            if let Some(blk) = self.map_block(ino, di, l)? {
                let s = from.max(l * bs) - l * bs;
                let e = to.min((l + 1) * bs) - l * bs;
                let mut buf = vec![0u8; bs as usize];
                if s > 0 || e < bs {
                    self.dev
                        .read_at(blk * bs, &mut buf)
                        .map_err(IoError::Device)?;
                    buf[s as usize..e as usize].fill(0);
                }
                self.write_data_blocks(blk, &buf)?;
            }
            l += 1;
        }
        Ok(())
    }

    // ---- JDATA files ----

    /// The whole contents of a JDATA file.
    pub(crate) fn jdata_read_all(&mut self, ino: u64) -> Result<Vec<u8>> {
        let di = self.dinode(ino)?;
        let size = di.size;
        self.jdata_read(ino, &di, 0, size as usize)
    }

    pub(crate) fn jdata_read(
        &mut self,
        ino: u64,
        di: &Dinode,
        off: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        if !di.is_jdata() {
            return Err(self.corrupt(format!("inode {ino} is not a JDATA file")));
        }
        if off >= di.size {
            return Ok(Vec::new());
        }
        let end = (off + len as u64).min(di.size);
        if di.height == 0 {
            return Ok(di
                .stuffed_data()
                .map(|d| d[off as usize..end as usize].to_vec())
                .unwrap_or_default());
        }
        let pl = data_payload(self.geo.block_size, true) as u64;
        let mut out = vec![0u8; (end - off) as usize];
        let mut l = off / pl;
        while l * pl < end {
            if let Some(b) = self.map_block(ino, di, l)? {
                let jd: JData = self.cache.read_meta(&*self.dev, b)?;
                if jd.owner != ino || jd.lblock != l {
                    return Err(self.corrupt(format!(
                        "JData block {b} says inode {} block {}, expected inode {ino} block {l}",
                        jd.owner, jd.lblock
                    )));
                }
                let s = off.max(l * pl);
                let e = end.min((l + 1) * pl);
                out[(s - off) as usize..(e - off) as usize]
                    .copy_from_slice(&jd.payload[(s - l * pl) as usize..(e - l * pl) as usize]);
            }
            l += 1;
        }
        Ok(out)
    }

    /// Writes `data` at `off` of a JDATA file (journaled); updates and
    /// writes the dinode.
    pub(crate) fn jdata_write(
        &mut self,
        ino: u64,
        di: &mut Dinode,
        off: u64,
        data: &[u8],
    ) -> Result<()> {
        let end = off + data.len() as u64;
        let cap = stuffed_capacity(self.geo.block_size) as u64;
        if di.height == 0 && end <= cap {
            if let DinodeContent::Stuffed(b) = &mut di.content {
                b[off as usize..end as usize].copy_from_slice(data);
            }
            di.size = di.size.max(end);
            return self.put_dinode(ino, di);
        }
        self.unstuff(ino, di)?;
        let pl = data_payload(self.geo.block_size, true) as u64;
        let mut l = off / pl;
        while l * pl < end {
            let (b, _, _) = self.alloc_block(ino, di, l, 1)?;
            let mut jd: JData = self.cache.read_meta(&*self.dev, b)?;
            let s = off.max(l * pl);
            let e = end.min((l + 1) * pl);
            jd.payload[(s - l * pl) as usize..(e - l * pl) as usize]
                .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
            self.cache.write_meta(b, &jd)?;
            l += 1;
        }
        di.size = di.size.max(end);
        self.put_dinode(ino, di)
    }

    /// Replaces a JDATA file's contents with `data`.
    pub(crate) fn jdata_replace(&mut self, ino: u64, data: &[u8]) -> Result<()> {
        let mut di = self.dinode(ino)?;
        if (data.len() as u64) < di.size {
            let old = di.size;
            di.size = data.len() as u64;
            if di.height == 0 {
                if let DinodeContent::Stuffed(b) = &mut di.content {
                    b[data.len()..old as usize].fill(0);
                }
            } else {
                self.truncate_blocks(ino, &mut di)?;
                // The last kept block's tail beyond the new size is not
                // read (size bounds every read), so it may stay.
            }
        }
        self.jdata_write(ino, &mut di, 0, data)
    }
}

/// The current time for timestamps.
pub(crate) fn now() -> Timestamp {
    Timestamp::now()
}
