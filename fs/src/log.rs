//! The journal writer: turns the running transaction into log records and
//! keeps the log's head, tail and sequence.
//!
//! Owns: positions in this node's journal, sequence numbers, the layout of
//! a transaction in the log, the order of writes and flushes that makes a
//! commit durable and atomic, and the clean log header of an unmount. May
//! not touch: which blocks belong in a transaction (`buf.rs` decides) or
//! replay (`recovery.rs`).
//!
//! A transaction is written as
//! `[descriptor][images]... [revoke]... [commit]` at consecutive positions
//! from the head, wrapping at the end. Order of writes (ordered data mode):
//! file data (written earlier by the caller) and the transaction's blocks,
//! then a flush, then the commit block with FUA. A crash before the commit
//! is durable leaves a transaction whose commit is missing or whose
//! `txn_crc` does not match: replay stops before it, and the metadata never
//! points at data that did not reach the disk.

use crate::error::{FsError, Result};
use crate::format::block::encode_to_vec;
use crate::format::io::IoError;
use crate::format::journal::{
    addrs_per_block, Commit, LogDescriptor, LogHeader, Revoke, StatfsDelta, TxnCrc,
};
use crate::format::{Geometry, Timestamp};
use blockdev::BlockDevice;

/// Where the log stands after mount or recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// Next position to write.
    pub head: u32,
    /// Oldest position replay would still need.
    pub tail: u32,
    /// Sequence of the last record written.
    pub seq: u64,
}

/// Counters for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub commits: u64,
    pub blocks: u64,
    pub checkpoints: u64,
}

pub struct Log {
    jid: u32,
    geo: Geometry,
    /// Device address of position 0 (a journal is one contiguous run).
    start: u64,
    len: u32,
    pos: LogPosition,
    stats: LogStats,
}

impl Log {
    pub fn new(geo: Geometry, jid: u32, start: u64, len: u32, pos: LogPosition) -> Log {
        assert!(len >= 8, "journal of {len} blocks");
        assert!(pos.head < len && pos.tail < len);
        Log {
            jid,
            geo,
            start,
            len,
            pos,
            stats: LogStats::default(),
        }
    }

    pub fn jid(&self) -> u32 {
        self.jid
    }

    pub fn position(&self) -> LogPosition {
        self.pos
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Positions in the journal.
    pub fn capacity(&self) -> u32 {
        self.len
    }

    /// Positions in use between tail and head.
    pub fn used(&self) -> u32 {
        (self.pos.head + self.len - self.pos.tail) % self.len
    }

    /// Positions a transaction may still take before a checkpoint (one is
    /// kept for the clean log header).
    pub fn free(&self) -> u32 {
        self.len - self.used() - 2
    }

    /// The most blocks one transaction may have (it must fit an empty log).
    pub fn max_transaction(&self) -> u32 {
        self.len - 2
    }

    /// Positions a transaction of `images` images and `revokes` revokes
    /// takes.
    pub fn blocks_for(&self, images: usize, revokes: usize) -> u32 {
        let apb = addrs_per_block(self.geo.block_size);
        (images.div_ceil(apb) + images + revokes.div_ceil(apb) + 1) as u32
    }

    fn addr(&self, jpos: u32) -> u64 {
        self.start + u64::from(jpos % self.len)
    }

    /// Writes `blocks` (already encoded for their positions) from `first`.
    fn write_run(&self, dev: &dyn BlockDevice, first: u32, blocks: &[Vec<u8>]) -> Result<()> {
        let bs = u64::from(self.geo.block_size);
        let mut i = 0usize;
        while i < blocks.len() {
            let p = (first + i as u32) % self.len;
            let room = (self.len - p) as usize;
            let n = room.min(blocks.len() - i).min(256);
            let run: Vec<u8> = blocks[i..i + n].concat();
            dev.write_at(self.addr(p) * bs, &run)
                .map_err(IoError::Device)?;
            i += n;
        }
        Ok(())
    }

    /// Writes one transaction and makes it durable. The caller has made
    /// room (see [`Log::free`]).
    pub fn commit(
        &mut self,
        dev: &dyn BlockDevice,
        images: &[(u64, &[u8])],
        revokes: &[u64],
        statfs: StatfsDelta,
    ) -> Result<u64> {
        let need = self.blocks_for(images.len(), revokes.len());
        if need > self.free() {
            return Err(FsError::Journal {
                device: dev.name().to_string(),
                jid: self.jid,
                detail: format!(
                    "a transaction of {need} blocks does not fit the {} free positions",
                    self.free()
                ),
            });
        }
        let seq = self.pos.seq + 1;
        let first = self.pos.head;
        let apb = addrs_per_block(self.geo.block_size);
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(need as usize);
        let mut crc = TxnCrc::new();
        let mut at = first;
        let mut push = |b: Vec<u8>, blocks: &mut Vec<Vec<u8>>, at: &mut u32| {
            crc.add(&b);
            blocks.push(b);
            *at = (*at + 1) % self.len;
        };
        for chunk in images.chunks(apb) {
            let d = LogDescriptor {
                seq,
                addrs: chunk.iter().map(|(a, _)| *a).collect(),
            };
            let b = encode_to_vec(&d, &self.geo, self.addr(at))?;
            push(b, &mut blocks, &mut at);
            for (_, img) in chunk {
                push(img.to_vec(), &mut blocks, &mut at);
            }
        }
        for chunk in revokes.chunks(apb) {
            let r = Revoke {
                seq,
                addrs: chunk.to_vec(),
            };
            let b = encode_to_vec(&r, &self.geo, self.addr(at))?;
            push(b, &mut blocks, &mut at);
        }
        let nblocks = blocks.len() as u32;
        let c = Commit {
            seq,
            tail: self.pos.tail,
            first,
            nblocks,
            txn_crc: crc.value(),
            jid: self.jid,
            time: Timestamp::now(),
            statfs,
        };
        let cb = encode_to_vec(&c, &self.geo, self.addr(at))?;
        self.write_run(dev, first, &blocks)?;
        // Data and the transaction's body must be stable before the commit
        // that makes them count.
        dev.flush().map_err(IoError::Device)?;
        dev.write_fua_at(self.addr(at) * u64::from(self.geo.block_size), &cb)
            .map_err(IoError::Device)?;
        self.pos.seq = seq;
        self.pos.head = (at + 1) % self.len;
        self.stats.commits += 1;
        self.stats.blocks += u64::from(nblocks) + 1;
        debug_assert!(self.used() < self.len);
        Ok(seq)
    }

    /// Everything before the head is in place: replay needs nothing older.
    pub fn checkpointed(&mut self) {
        self.pos.tail = self.pos.head;
        self.stats.checkpoints += 1;
    }

    /// Writes a log header at the head (after a checkpoint): with
    /// [`lh_flags::CLEAN`] it tells the next mount nothing needs replay.
    pub fn write_header(
        &mut self,
        dev: &dyn BlockDevice,
        flags: u32,
        statfs: StatfsDelta,
    ) -> Result<()> {
        debug_assert_eq!(self.pos.tail, self.pos.head, "header before checkpoint");
        let seq = self.pos.seq + 1;
        let at = self.pos.head;
        let h = LogHeader {
            seq,
            tail: at,
            flags,
            jid: self.jid,
            time: Timestamp::now(),
            statfs,
        };
        let b = encode_to_vec(&h, &self.geo, self.addr(at))?;
        dev.write_fua_at(self.addr(at) * u64::from(self.geo.block_size), &b)
            .map_err(IoError::Device)?;
        self.pos.seq = seq;
        self.pos.head = (at + 1) % self.len;
        self.pos.tail = self.pos.head;
        Ok(())
    }
}
