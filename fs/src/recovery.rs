//! Journal recovery: find a journal's head and replay what it committed.
//!
//! Owns: reading a journal, deciding which records are valid, and writing
//! committed block images in place. May not touch: anything outside the
//! journal being replayed and the blocks its transactions name; which
//! journals need replay and who may replay them is the mount's (and in a
//! cluster the journal glock's) business.
//!
//! The head is the valid log header or commit with the highest sequence
//! (a commit is valid only if its transaction's `txn_crc` matches, so a torn
//! transaction never counts). Replay walks transactions from the head's
//! tail to the head, collects each block's newest image and the revokes,
//! writes every image not revoked by a later transaction, flushes, and ends
//! the journal with a RECOVERED|CLEAN log header. Replay is idempotent: a
//! crash in the middle leaves the journal as it was, and the next replay
//! writes the same images again.

use crate::error::{FsError, Result};
use crate::format::block::{decode_block, Header};
use crate::format::io::IoError;
use crate::format::journal::{lh_flags, Commit, LogDescriptor, LogHeader, Revoke, TxnCrc};
use crate::format::{BlockType, Geometry};
use crate::log::LogPosition;
use blockdev::BlockDevice;
use std::collections::HashMap;

/// A journal's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalExtent {
    pub jid: u32,
    pub start: u64,
    pub len: u32,
}

/// The newest valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub pos: u32,
    pub seq: u64,
    pub tail: u32,
    /// A CLEAN log header: nothing to replay.
    pub clean: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub transactions: u64,
    pub blocks_written: u64,
    pub revoked: u64,
    /// Where the log continues afterwards.
    pub position: Option<LogPosition>,
    /// Whether anything had to be replayed.
    pub was_dirty: bool,
}

struct Reader {
    geo: Geometry,
    j: JournalExtent,
    blocks: Vec<u8>,
}

impl Reader {
    fn load(dev: &dyn BlockDevice, geo: Geometry, j: JournalExtent) -> Result<Reader> {
        let bs = geo.block_size as usize;
        let total = j.len as usize * bs;
        let mut blocks = vec![0u8; total];
        let chunk = 256 * bs;
        let mut off = 0;
        while off < total {
            let n = chunk.min(total - off);
            dev.read_at(j.start * bs as u64 + off as u64, &mut blocks[off..off + n])
                .map_err(IoError::Device)?;
            off += n;
            tracing::trace!(jid = j.jid, read = off / bs, of = j.len, "reading journal");
        }
        Ok(Reader { geo, j, blocks })
    }

    fn block(&self, pos: u32) -> &[u8] {
        let bs = self.geo.block_size as usize;
        let p = (pos % self.j.len) as usize;
        &self.blocks[p * bs..(p + 1) * bs]
    }

    fn addr(&self, pos: u32) -> u64 {
        self.j.start + u64::from(pos % self.j.len)
    }

    fn kind(&self, pos: u32) -> Option<BlockType> {
        Header::peek(self.block(pos)).and_then(|h| BlockType::from_u16(h.block_type))
    }

    fn header(&self, pos: u32) -> Option<LogHeader> {
        decode_block::<LogHeader>(&self.geo, self.addr(pos), self.block(pos))
            .ok()
            .filter(|h| h.jid == self.j.jid && h.tail < self.j.len)
    }

    /// A commit at `pos` whose transaction is complete and intact.
    fn commit(&self, pos: u32) -> Option<Commit> {
        let c = decode_block::<Commit>(&self.geo, self.addr(pos), self.block(pos)).ok()?;
        if c.jid != self.j.jid || c.first >= self.j.len || c.tail >= self.j.len {
            return None;
        }
        if c.nblocks >= self.j.len || (c.first + c.nblocks) % self.j.len != pos {
            return None;
        }
        let mut crc = TxnCrc::new();
        for k in 0..c.nblocks {
            crc.add(self.block(c.first + k));
        }
        (crc.value() == c.txn_crc).then_some(c)
    }

    fn find_head(&self) -> Option<Head> {
        let mut head: Option<Head> = None;
        for pos in 0..self.j.len {
            let rec = match self.kind(pos) {
                Some(BlockType::LogHeader) => self.header(pos).map(|h| Head {
                    pos,
                    seq: h.seq,
                    tail: h.tail,
                    clean: h.flags & lh_flags::CLEAN != 0,
                }),
                Some(BlockType::Commit) => self.commit(pos).map(|c| Head {
                    pos,
                    seq: c.seq,
                    tail: c.tail,
                    clean: false,
                }),
                _ => None,
            };
            if let Some(r) = rec {
                if head.is_none_or(|h| r.seq > h.seq) {
                    head = Some(r);
                }
            }
        }
        head
    }
}

/// Reads journal `j` and returns its head (None: no valid record at all).
pub fn find_head(dev: &dyn BlockDevice, geo: Geometry, j: JournalExtent) -> Result<Option<Head>> {
    Ok(Reader::load(dev, geo, j)?.find_head())
}

/// Replays journal `j` if it is dirty; with `read_only` only reports what
/// replay would do. Returns where the log continues.
pub fn replay(
    dev: &dyn BlockDevice,
    geo: Geometry,
    j: JournalExtent,
    read_only: bool,
) -> Result<ReplayReport> {
    let r = Reader::load(dev, geo, j)?;
    let corrupt = |detail: String| FsError::Corrupt {
        device: dev.name().to_string(),
        detail: format!("journal{}: {detail}", j.jid),
    };
    let Some(head) = r.find_head() else {
        return Err(corrupt("no valid log header or commit".into()));
    };
    let mut report = ReplayReport::default();
    if head.clean {
        report.position = Some(LogPosition {
            head: (head.pos + 1) % j.len,
            tail: (head.pos + 1) % j.len,
            seq: head.seq,
        });
        return Ok(report);
    }
    report.was_dirty = true;
    // Newest image position and sequence per block; newest revoke per block.
    let mut images: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut revoked: HashMap<u64, u64> = HashMap::new();
    let end = (head.pos + 1) % j.len;
    let mut pos = head.tail;
    let mut steps = 0u32;
    while pos != end && steps < j.len {
        match r.kind(pos) {
            Some(BlockType::LogHeader) if r.header(pos).is_some() => {
                pos = (pos + 1) % j.len;
                steps += 1;
            }
            Some(BlockType::LogDescriptor) | Some(BlockType::Revoke) => {
                // Find this transaction's commit and check it first.
                let first = pos;
                let mut p = pos;
                let mut txn: Vec<(u64, u32)> = Vec::new();
                let mut revs: Vec<u64> = Vec::new();
                let mut seq = None;
                let commit = loop {
                    if steps >= j.len {
                        break None;
                    }
                    match r.kind(p) {
                        Some(BlockType::LogDescriptor) => {
                            let Ok(d) = decode_block::<LogDescriptor>(&geo, r.addr(p), r.block(p))
                            else {
                                break None;
                            };
                            if *seq.get_or_insert(d.seq) != d.seq {
                                break None;
                            }
                            for (k, a) in d.addrs.iter().enumerate() {
                                txn.push((*a, (p + 1 + k as u32) % j.len));
                            }
                            let n = 1 + d.addrs.len() as u32;
                            p = (p + n) % j.len;
                            steps += n;
                        }
                        Some(BlockType::Revoke) => {
                            let Ok(v) = decode_block::<Revoke>(&geo, r.addr(p), r.block(p)) else {
                                break None;
                            };
                            if *seq.get_or_insert(v.seq) != v.seq {
                                break None;
                            }
                            revs.extend(v.addrs);
                            p = (p + 1) % j.len;
                            steps += 1;
                        }
                        Some(BlockType::Commit) => {
                            let c = r.commit(p);
                            steps += 1;
                            break c.filter(|c| c.first == first && Some(c.seq) == seq);
                        }
                        _ => break None,
                    }
                };
                let Some(c) = commit else {
                    tracing::warn!(
                        device = dev.name(),
                        jid = j.jid,
                        position = first,
                        "journal: a transaction before the head does not validate; replay stops there"
                    );
                    break;
                };
                for (a, at) in txn {
                    if !geo.is_valid_addr(a) {
                        return Err(corrupt(format!(
                            "transaction {} names block {a} outside the file system",
                            c.seq
                        )));
                    }
                    images.insert(a, (c.seq, at));
                }
                for a in revs {
                    revoked.insert(a, c.seq);
                }
                report.transactions += 1;
                pos = (p + 1) % j.len;
            }
            Some(BlockType::Commit) => {
                // A commit with no body (an empty transaction never written
                // by us) or the head itself: nothing to apply.
                pos = (pos + 1) % j.len;
                steps += 1;
            }
            _ => {
                tracing::warn!(
                    device = dev.name(),
                    jid = j.jid,
                    position = pos,
                    "journal: unexpected block before the head; replay stops there"
                );
                break;
            }
        }
    }
    let mut writes: Vec<(u64, u32)> = Vec::new();
    for (a, (seq, at)) in &images {
        match revoked.get(a) {
            Some(rs) if *rs > *seq => report.revoked += 1,
            _ => writes.push((*a, *at)),
        }
    }
    writes.sort_unstable();
    tracing::info!(
        device = dev.name(),
        jid = j.jid,
        transactions = report.transactions,
        blocks = writes.len(),
        revoked = report.revoked,
        head = head.pos,
        tail = head.tail,
        "journal replay"
    );
    let bs = u64::from(geo.block_size);
    if !read_only {
        for (i, (a, at)) in writes.iter().enumerate() {
            dev.write_at(a * bs, r.block(*at))
                .map_err(IoError::Device)?;
            if i % 4096 == 4095 {
                tracing::info!(jid = j.jid, written = i + 1, of = writes.len(), "replaying");
            }
        }
        dev.flush().map_err(IoError::Device)?;
        // Mark the journal recovered so the next mount does not replay again.
        let at = (head.pos + 1) % j.len;
        let h = LogHeader {
            seq: head.seq + 1,
            tail: at,
            flags: lh_flags::CLEAN | lh_flags::RECOVERED,
            jid: j.jid,
            time: crate::format::Timestamp::now(),
            statfs: Default::default(),
        };
        let b = crate::format::block::encode_to_vec(&h, &geo, j.start + u64::from(at))?;
        dev.write_fua_at((j.start + u64::from(at)) * bs, &b)
            .map_err(IoError::Device)?;
        report.position = Some(LogPosition {
            head: (at + 1) % j.len,
            tail: (at + 1) % j.len,
            seq: head.seq + 1,
        });
    }
    report.blocks_written = writes.len() as u64;
    Ok(report)
}
