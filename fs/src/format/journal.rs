//! Journal records: what a node's journal holds, block by block.
//!
//! Owns: the layouts of the log header, descriptor, revoke and commit
//! blocks, and the transaction checksum. May not touch: when to commit, the
//! head search, replay, revoke policy (the journal module of the file system
//! does those, using only these types).
//!
//! A journal is a contiguous run of blocks (a system file; its rgrp holds
//! nothing else). Positions inside it ("jpos") count from 0. Every record
//! block's header carries its *device* address (so a record read at the
//! wrong place fails) and the file system id (so records of an earlier mkfs
//! never validate — which is why mkfs does not zero journals), and its body
//! carries the sequence number of its transaction.
//!
//! One transaction, at consecutive positions (wrapping at the end):
//!
//! ```text
//! [descriptor seq=S: k addrs][k block images] ... [revoke seq=S] ... [commit seq=S]
//! ```
//!
//! The commit names the transaction's first position, its length before the
//! commit, and the CRC32C over those blocks in order ([`TxnCrc`]), so a torn
//! transaction (some blocks never written, or stale ones from a lap ago) is
//! detected even though block images carry no sequence of their own. A log
//! header is a standalone marker: written by mkfs at position 0, on clean
//! unmount (flag CLEAN: nothing to replay) and after recovery (RECOVERED).
//! The head of the log is the valid commit or log header with the highest
//! sequence; sequences increase by one per record.
//!
//! Bodies (after the 32-byte header):
//!
//! Log header (type 8): 32 seq u64, 40 tail u32 (jpos of the oldest
//! transaction still needed), 44 flags u32, 48 jid u32, 52 reserved u32,
//! 56 time sec i64, 64 time nsec u32, 68 reserved u32, 72 statfs deltas
//! (total, free, dinodes: 3 × i64), 96.. zero.
//!
//! Descriptor (type 9) and revoke (type 10): 32 seq u64, 40 count u32,
//! 44 reserved u32, 48.. `count` u64 block addresses, zero after.
//!
//! Commit (type 11): 32 seq u64, 40 tail u32, 44 first u32 (jpos of the
//! transaction's first block), 48 nblocks u32 (blocks before the commit),
//! 52 txn_crc u32, 56 jid u32, 60 reserved u32, 64 time sec i64, 72 time
//! nsec u32, 76 reserved u32, 80 statfs deltas (3 × i64), 104.. zero.

use super::block::*;
use super::{FormatError, Geometry, Result, Timestamp, MAX_JOURNALS};

pub const LH_VERSION: u16 = 1;
pub const LD_VERSION: u16 = 1;
pub const LR_VERSION: u16 = 1;
pub const LC_VERSION: u16 = 1;

/// Offset of the address list in descriptor and revoke blocks.
pub const LIST_OFFSET: usize = 48;

/// Addresses one descriptor or revoke block holds.
pub fn addrs_per_block(bs: u32) -> usize {
    (bs as usize - LIST_OFFSET) / 8
}

/// Per-node statfs changes not yet folded into the master statfs file,
/// carried in log headers and commits so recovery can fold a dead node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatfsDelta {
    pub total: i64,
    pub free: i64,
    pub dinodes: i64,
}

impl StatfsDelta {
    fn put(&self, b: &mut [u8], off: usize) {
        put_i64(b, off, self.total);
        put_i64(b, off + 8, self.free);
        put_i64(b, off + 16, self.dinodes);
    }
    fn get(b: &[u8], off: usize) -> StatfsDelta {
        StatfsDelta {
            total: get_i64(b, off),
            free: get_i64(b, off + 8),
            dinodes: get_i64(b, off + 16),
        }
    }
}

/// Log header flags.
pub mod lh_flags {
    /// Unmounted cleanly: nothing before this header needs replay.
    pub const CLEAN: u32 = 1;
    /// Written by recovery after replaying the journal.
    pub const RECOVERED: u32 = 2;
    pub const KNOWN: u32 = CLEAN | RECOVERED;
}

fn check_jid(blkno: u64, structure: &'static str, jid: u32) -> Result<()> {
    if jid >= MAX_JOURNALS {
        return Err(FormatError::field(
            blkno,
            structure,
            "jid",
            format!("{jid} >= {MAX_JOURNALS}"),
        ));
    }
    Ok(())
}

fn check_time(blkno: u64, structure: &'static str, t: Timestamp) -> Result<()> {
    if !t.is_valid() {
        return Err(FormatError::field(
            blkno,
            structure,
            "time",
            format!("nanoseconds {} >= 10^9", t.nsec),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    pub seq: u64,
    pub tail: u32,
    pub flags: u32,
    pub jid: u32,
    pub time: Timestamp,
    pub statfs: StatfsDelta,
}

const LH: &str = "journal log header";

impl MetaBlock for LogHeader {
    const TYPE: BlockType = BlockType::LogHeader;
    const VERSION: u16 = LH_VERSION;

    fn encode_body(&self, _geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        validate_lh(self, blkno)?;
        put_u64(b, 32, self.seq);
        put_u32(b, 40, self.tail);
        put_u32(b, 44, self.flags);
        put_u32(b, 48, self.jid);
        put_i64(b, 56, self.time.sec);
        put_u32(b, 64, self.time.nsec);
        self.statfs.put(b, 72);
        Ok(())
    }

    fn decode_body(_geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 52..56, blkno, LH, "reserved")?;
        check_zero(b, 68..72, blkno, LH, "reserved")?;
        check_zero(b, 96..b.len(), blkno, LH, "reserved")?;
        let v = LogHeader {
            seq: get_u64(b, 32),
            tail: get_u32(b, 40),
            flags: get_u32(b, 44),
            jid: get_u32(b, 48),
            time: Timestamp {
                sec: get_i64(b, 56),
                nsec: get_u32(b, 64),
            },
            statfs: StatfsDelta::get(b, 72),
        };
        validate_lh(&v, blkno)?;
        Ok(v)
    }
}

fn validate_lh(v: &LogHeader, blkno: u64) -> Result<()> {
    if v.flags & !lh_flags::KNOWN != 0 {
        return Err(FormatError::field(
            blkno,
            LH,
            "flags",
            format!("unknown flags {:#x}", v.flags),
        ));
    }
    if v.seq == 0 {
        return Err(FormatError::field(
            blkno,
            LH,
            "seq",
            "sequence numbers start at 1",
        ));
    }
    check_jid(blkno, LH, v.jid)?;
    check_time(blkno, LH, v.time)
}

/// A list of block addresses with a sequence: the body of descriptors and
/// revokes.
fn encode_list(
    geo: &Geometry,
    blkno: u64,
    structure: &'static str,
    seq: u64,
    addrs: &[u64],
    b: &mut [u8],
) -> Result<()> {
    if seq == 0 {
        return Err(FormatError::field(
            blkno,
            structure,
            "seq",
            "sequence numbers start at 1",
        ));
    }
    if addrs.len() > addrs_per_block(geo.block_size) {
        return Err(FormatError::field(
            blkno,
            structure,
            "count",
            format!(
                "{} addresses; a block holds {}",
                addrs.len(),
                addrs_per_block(geo.block_size)
            ),
        ));
    }
    check_ptrs(geo, addrs, blkno, structure, "address", false)?;
    put_u64(b, 32, seq);
    put_u32(b, 40, addrs.len() as u32);
    put_u64s(b, LIST_OFFSET, addrs);
    Ok(())
}

fn decode_list(
    geo: &Geometry,
    blkno: u64,
    structure: &'static str,
    b: &[u8],
) -> Result<(u64, Vec<u64>)> {
    check_zero(b, 44..48, blkno, structure, "reserved")?;
    let seq = get_u64(b, 32);
    if seq == 0 {
        return Err(FormatError::field(
            blkno,
            structure,
            "seq",
            "sequence numbers start at 1",
        ));
    }
    let count = get_u32(b, 40) as usize;
    if count > addrs_per_block(geo.block_size) {
        return Err(FormatError::field(
            blkno,
            structure,
            "count",
            format!(
                "{count} addresses; a block holds {}",
                addrs_per_block(geo.block_size)
            ),
        ));
    }
    check_zero(
        b,
        LIST_OFFSET + 8 * count..b.len(),
        blkno,
        structure,
        "unused slots",
    )?;
    let addrs = get_u64s(b, LIST_OFFSET, count);
    check_ptrs(geo, &addrs, blkno, structure, "address", false)?;
    Ok((seq, addrs))
}

/// Announces the block images that follow it: image `i` goes to `addrs[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDescriptor {
    pub seq: u64,
    pub addrs: Vec<u64>,
}

impl MetaBlock for LogDescriptor {
    const TYPE: BlockType = BlockType::LogDescriptor;
    const VERSION: u16 = LD_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        encode_list(geo, blkno, Self::TYPE.name(), self.seq, &self.addrs, b)
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        let (seq, addrs) = decode_list(geo, blkno, Self::TYPE.name(), b)?;
        Ok(LogDescriptor { seq, addrs })
    }
}

/// Blocks whose earlier journaled images must not be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoke {
    pub seq: u64,
    pub addrs: Vec<u64>,
}

impl MetaBlock for Revoke {
    const TYPE: BlockType = BlockType::Revoke;
    const VERSION: u16 = LR_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        encode_list(geo, blkno, Self::TYPE.name(), self.seq, &self.addrs, b)
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        let (seq, addrs) = decode_list(geo, blkno, Self::TYPE.name(), b)?;
        Ok(Revoke { seq, addrs })
    }
}

/// Ends a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub seq: u64,
    pub tail: u32,
    pub first: u32,
    pub nblocks: u32,
    pub txn_crc: u32,
    pub jid: u32,
    pub time: Timestamp,
    pub statfs: StatfsDelta,
}

const LC: &str = "journal commit block";

impl MetaBlock for Commit {
    const TYPE: BlockType = BlockType::Commit;
    const VERSION: u16 = LC_VERSION;

    fn encode_body(&self, _geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        validate_lc(self, blkno)?;
        put_u64(b, 32, self.seq);
        put_u32(b, 40, self.tail);
        put_u32(b, 44, self.first);
        put_u32(b, 48, self.nblocks);
        put_u32(b, 52, self.txn_crc);
        put_u32(b, 56, self.jid);
        put_i64(b, 64, self.time.sec);
        put_u32(b, 72, self.time.nsec);
        self.statfs.put(b, 80);
        Ok(())
    }

    fn decode_body(_geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 60..64, blkno, LC, "reserved")?;
        check_zero(b, 76..80, blkno, LC, "reserved")?;
        check_zero(b, 104..b.len(), blkno, LC, "reserved")?;
        let v = Commit {
            seq: get_u64(b, 32),
            tail: get_u32(b, 40),
            first: get_u32(b, 44),
            nblocks: get_u32(b, 48),
            txn_crc: get_u32(b, 52),
            jid: get_u32(b, 56),
            time: Timestamp {
                sec: get_i64(b, 64),
                nsec: get_u32(b, 72),
            },
            statfs: StatfsDelta::get(b, 80),
        };
        validate_lc(&v, blkno)?;
        Ok(v)
    }
}

fn validate_lc(v: &Commit, blkno: u64) -> Result<()> {
    if v.seq == 0 {
        return Err(FormatError::field(
            blkno,
            LC,
            "seq",
            "sequence numbers start at 1",
        ));
    }
    check_jid(blkno, LC, v.jid)?;
    check_time(blkno, LC, v.time)
}

/// The checksum a commit carries: CRC32C over the transaction's blocks
/// (descriptors, images, revokes) in journal order, whole blocks as written.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxnCrc {
    crc: u32,
    blocks: u32,
}

impl TxnCrc {
    pub fn new() -> TxnCrc {
        TxnCrc::default()
    }

    /// Adds the next block of the transaction.
    pub fn add(&mut self, block: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, block);
        self.blocks += 1;
    }

    pub fn value(&self) -> u32 {
        self.crc
    }

    /// Blocks added so far (the commit's `nblocks`).
    pub fn blocks(&self) -> u32 {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::*;
    use proptest::prelude::*;

    fn ts() -> impl Strategy<Value = Timestamp> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timestamp { sec, nsec })
    }
    fn delta() -> impl Strategy<Value = StatfsDelta> {
        any::<(i64, i64, i64)>().prop_map(|(total, free, dinodes)| StatfsDelta {
            total,
            free,
            dinodes,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn log_header_round_trip(seq in 1u64.., tail: u32, flags in 0u32..4, jid in 0u32..256, time in ts(), statfs in delta()) {
            let g = geo(512);
            let v = LogHeader { seq, tail, flags, jid, time, statfs };
            let enc = encode_to_vec(&v, &g, 4000).unwrap();
            prop_assert_eq!(&decode_block::<LogHeader>(&g, 4000, &enc).unwrap(), &v);
            assert_bit_flips_fail::<LogHeader>(&g, 4000, &enc, 1);
        }

        #[test]
        fn commit_round_trip(seq in 1u64.., x: (u32, u32, u32, u32), jid in 0u32..256, time in ts(), statfs in delta()) {
            let g = geo(4096);
            let v = Commit { seq, tail: x.0, first: x.1, nblocks: x.2, txn_crc: x.3, jid, time, statfs };
            let enc = encode_to_vec(&v, &g, 4000).unwrap();
            prop_assert_eq!(&decode_block::<Commit>(&g, 4000, &enc).unwrap(), &v);
            assert_bit_flips_fail::<Commit>(&g, 4000, &enc, 7);
        }

        #[test]
        fn lists_round_trip(seq in 1u64.., addrs in proptest::collection::vec(200u64..1 << 40, 0..58), bs_shift in 9u32..=12) {
            let g = geo(1 << bs_shift);
            let d = LogDescriptor { seq, addrs: addrs.clone() };
            let enc = encode_to_vec(&d, &g, 4001).unwrap();
            prop_assert_eq!(&decode_block::<LogDescriptor>(&g, 4001, &enc).unwrap(), &d);
            assert_bit_flips_fail::<LogDescriptor>(&g, 4001, &enc, 5);
            let r = Revoke { seq, addrs };
            let enc = encode_to_vec(&r, &g, 4002).unwrap();
            prop_assert_eq!(&decode_block::<Revoke>(&g, 4002, &enc).unwrap(), &r);
            // A revoke is never mistaken for a descriptor.
            prop_assert!(decode_block::<LogDescriptor>(&g, 4002, &enc).is_err());
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let g = geo(512);
            decode_sealed_garbage::<LogHeader>(&g, 400, &body);
            decode_sealed_garbage::<LogDescriptor>(&g, 400, &body);
            decode_sealed_garbage::<Revoke>(&g, 400, &body);
            decode_sealed_garbage::<Commit>(&g, 400, &body);
            assert_garbage_fails::<Commit>(&g, 400, &body);
            assert_garbage_fails::<LogHeader>(&g, 400, &body);
        }
    }

    #[test]
    fn stale_records_of_another_mkfs_are_rejected() {
        let old = geo(4096);
        let mut new = old;
        new.fs_id ^= 1;
        let v = LogHeader {
            seq: 9,
            tail: 0,
            flags: lh_flags::CLEAN,
            jid: 0,
            time: Timestamp::default(),
            statfs: StatfsDelta::default(),
        };
        let enc = encode_to_vec(&v, &old, 5000).unwrap();
        assert!(matches!(
            decode_block::<LogHeader>(&new, 5000, &enc),
            Err(FormatError::ForeignFs { .. })
        ));
    }

    #[test]
    fn txn_crc_detects_a_changed_block() {
        let a = vec![1u8; 512];
        let mut b = vec![2u8; 512];
        let mut t1 = TxnCrc::new();
        t1.add(&a);
        t1.add(&b);
        b[17] ^= 4;
        let mut t2 = TxnCrc::new();
        t2.add(&a);
        t2.add(&b);
        assert_ne!(t1.value(), t2.value());
        assert_eq!(t1.blocks(), 2);
    }
}
