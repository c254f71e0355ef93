//! Resource groups: the regions the disk is cut into for allocation, each
//! with a header, a bitmap of 2 bits per block, and an entry in the rindex.
//!
//! Owns: the rgrp header and bitmap block layouts, the in-memory bitmap
//! ([`RgrpBitmap`]) with its allocation helpers, the rindex entry layout,
//! and the arithmetic that sizes a bitmap for a region. May not touch:
//! allocation policy (which rgrp, which goal), locking (each rgrp has its own
//! glock whose LVB carries the free counts), or journaling of bitmap changes.
//!
//! An rgrp of `length` header+bitmap blocks starts at `addr`:
//! `[addr] header (bitmap bytes from offset 128) [addr+1 .. addr+length)
//! bitmap blocks (bitmap bytes from offset 48) [data0 = addr+length ..
//! data0+data_len) the blocks the bitmap describes`. Block `data0 + i` is
//! described by bits `2*(i%4)..2*(i%4)+2` of byte `i/4` of the bitmap, the
//! bytes of the header's bitmap area first, then each bitmap block's.
//! Bits past `data_len` are zero.
//!
//! Header (type 2) body:
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 32  | 4    | flags ([`RgrpFlags`]) |
//! | 36  | 4    | bitmap_blocks (bitmap blocks after the header) |
//! | 40  | 8    | data0 (first block the bitmap describes; = addr + 1 + bitmap_blocks) |
//! | 48  | 4    | data_len (blocks the bitmap describes) |
//! | 52  | 4    | free (blocks in state FREE) |
//! | 56  | 4    | dinodes (blocks in state DINODE) |
//! | 60  | 4    | unlinked (blocks in state UNLINKED) |
//! | 64  | 8    | igeneration (generation for the next dinode allocated here) |
//! | 72  | 8    | version (bumped on every change of header or bitmap) |
//! | 80  | 8    | next (address of the next rgrp header, 0 for the last) |
//! | 88  | 4    | index (position in the rindex) |
//! | 92  | 36   | reserved |
//! | 128 | ..   | first part of the bitmap |
//!
//! Bitmap block (type 3) body: 32 rgrp (u64 header address), 40 index (u32,
//! this block is at rgrp + index), 44 reserved (u32), 48.. bitmap bytes.

use super::block::*;
use super::{FormatError, Geometry, Result};

/// Offset of the bitmap bytes in the rgrp header block.
pub const RG_BITMAP_OFFSET: usize = 128;
/// Offset of the bitmap bytes in a bitmap block.
pub const RB_BITMAP_OFFSET: usize = 48;
/// Bytes of one rindex entry.
pub const RINDEX_ENTRY_SIZE: usize = 64;

/// Structure versions.
pub const RG_VERSION: u16 = 1;
pub const RB_VERSION: u16 = 1;

/// Blocks described by one bitmap byte.
pub const BLOCKS_PER_BYTE: u64 = 4;

/// State of one block in a bitmap. The numbers are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlockState {
    Free = 0,
    /// In use by a file: data, indirect, leaf, xattr or system data block.
    Data = 1,
    /// A dinode whose last link is gone but which some node still has open;
    /// the last closer in the cluster frees it.
    Unlinked = 2,
    Dinode = 3,
}

impl BlockState {
    pub fn from_bits(b: u8) -> BlockState {
        match b & 3 {
            0 => BlockState::Free,
            1 => BlockState::Data,
            2 => BlockState::Unlinked,
            _ => BlockState::Dinode,
        }
    }
    /// The 2-bit value repeated over a u64.
    fn pattern(self) -> u64 {
        (self as u64) * 0x5555_5555_5555_5555
    }
}

/// Flags of a resource group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RgrpFlags(pub u32);

impl RgrpFlags {
    /// Holds one journal (and its dinode and pointer tree) and nothing else.
    pub const JOURNAL: u32 = 1;
    /// The allocator must not take blocks from it.
    pub const NOALLOC: u32 = 2;
    pub const KNOWN: u32 = Self::JOURNAL | Self::NOALLOC;

    pub fn contains(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

/// Bitmap bytes in the header block.
pub fn header_bitmap_bytes(bs: u32) -> usize {
    bs as usize - RG_BITMAP_OFFSET
}

/// Bitmap bytes in one bitmap block.
pub fn block_bitmap_bytes(bs: u32) -> usize {
    bs as usize - RB_BITMAP_OFFSET
}

/// Bitmap blocks (beyond the header) needed to describe `data_len` blocks.
pub fn bitmap_blocks_for(bs: u32, data_len: u64) -> u64 {
    let in_header = header_bitmap_bytes(bs) as u64 * BLOCKS_PER_BYTE;
    let per_block = block_bitmap_bytes(bs) as u64 * BLOCKS_PER_BYTE;
    data_len.saturating_sub(in_header).div_ceil(per_block)
}

/// Splits a region of `length` blocks into (bitmap blocks, data blocks) so
/// that the bitmap describes as many data blocks as fit. `None` if the region
/// is too short to hold a header and one data block.
pub fn split_region(bs: u32, length: u64) -> Option<(u64, u64)> {
    if length < 2 {
        return None;
    }
    let per_block = block_bitmap_bytes(bs) as u64 * BLOCKS_PER_BYTE;
    // Start from an estimate and correct: each bitmap block takes one block
    // from the data and describes `per_block` more.
    let mut b = (length - 1).saturating_sub(header_bitmap_bytes(bs) as u64 * BLOCKS_PER_BYTE)
        / (per_block + 1);
    loop {
        let data = length.checked_sub(1 + b)?;
        if bitmap_blocks_for(bs, data) <= b {
            // Minimal: one bitmap block fewer would not describe the data.
            debug_assert_eq!(bitmap_blocks_for(bs, data), b);
            return if data == 0 { None } else { Some((b, data)) };
        }
        b += 1;
    }
}

/// Counts of blocks per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateCounts {
    pub free: u64,
    pub data: u64,
    pub unlinked: u64,
    pub dinodes: u64,
}

/// The resource group header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgrpHeader {
    pub flags: RgrpFlags,
    pub bitmap_blocks: u32,
    pub data0: u64,
    pub data_len: u32,
    pub free: u32,
    pub dinodes: u32,
    pub unlinked: u32,
    pub igeneration: u64,
    pub version: u64,
    pub next: u64,
    pub index: u32,
    /// The bitmap bytes stored in this block: exactly
    /// [`header_bitmap_bytes`] of them.
    pub bits: Vec<u8>,
}

const RG: &str = "resource group header";
const RB: &str = "bitmap block";

impl RgrpHeader {
    fn validate(&self, geo: &Geometry, blkno: u64) -> Result<()> {
        let bad = |field, detail: String| Err(FormatError::field(blkno, RG, field, detail));
        let bs = geo.block_size;
        if self.flags.0 & !RgrpFlags::KNOWN != 0 {
            return bad(
                "flags",
                format!("unknown flags {:#x}", self.flags.0 & !RgrpFlags::KNOWN),
            );
        }
        if self.data_len == 0 {
            return bad(
                "data_len",
                "a resource group describes at least one block".into(),
            );
        }
        let need = bitmap_blocks_for(bs, u64::from(self.data_len));
        if u64::from(self.bitmap_blocks) != need {
            return bad(
                "bitmap_blocks",
                format!(
                    "{} but {} data blocks need exactly {need}",
                    self.bitmap_blocks, self.data_len
                ),
            );
        }
        let expect_data0 = blkno + 1 + u64::from(self.bitmap_blocks);
        if self.data0 != expect_data0 {
            return bad(
                "data0",
                format!(
                    "{} but the data starts right after the bitmap, at {expect_data0}",
                    self.data0
                ),
            );
        }
        let end = self.data0 + u64::from(self.data_len);
        if end > geo.total_blocks {
            return bad(
                "data_len",
                format!(
                    "data ends at block {end}, past the file system's {} blocks",
                    geo.total_blocks
                ),
            );
        }
        let used = u64::from(self.free) + u64::from(self.dinodes) + u64::from(self.unlinked);
        if used > u64::from(self.data_len) {
            return bad(
                "free",
                format!(
                    "free {} + dinodes {} + unlinked {} exceed the {} blocks described",
                    self.free, self.dinodes, self.unlinked, self.data_len
                ),
            );
        }
        if self.next != 0 && (self.next < end || !geo.is_valid_addr(self.next)) {
            return bad(
                "next",
                format!(
                    "{} is neither 0 nor a block after this rgrp's end ({end})",
                    self.next
                ),
            );
        }
        if self.bits.len() != header_bitmap_bytes(bs) {
            return bad(
                "bitmap",
                format!(
                    "{} bytes, expected {}",
                    self.bits.len(),
                    header_bitmap_bytes(bs)
                ),
            );
        }
        check_stray_bits(&self.bits, 0, u64::from(self.data_len), blkno, RG)
    }
}

/// Fails if any bit of `chunk` (whose first byte is bitmap byte
/// `first_byte`) describes a block at or past `data_len`.
fn check_stray_bits(
    chunk: &[u8],
    first_byte: u64,
    data_len: u64,
    blkno: u64,
    structure: &'static str,
) -> Result<()> {
    for (i, &b) in chunk.iter().enumerate() {
        if b == 0 {
            continue;
        }
        let first_block = (first_byte + i as u64) * BLOCKS_PER_BYTE;
        for k in 0..4u64 {
            if first_block + k >= data_len && (b >> (2 * k)) & 3 != 0 {
                return Err(FormatError::field(
                    blkno,
                    structure,
                    "bitmap",
                    format!(
                        "bits set for block index {} past the end of the resource group ({data_len} blocks)",
                        first_block + k
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl MetaBlock for RgrpHeader {
    const TYPE: BlockType = BlockType::RgrpHeader;
    const VERSION: u16 = RG_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        self.validate(geo, blkno)?;
        put_u32(b, 32, self.flags.0);
        put_u32(b, 36, self.bitmap_blocks);
        put_u64(b, 40, self.data0);
        put_u32(b, 48, self.data_len);
        put_u32(b, 52, self.free);
        put_u32(b, 56, self.dinodes);
        put_u32(b, 60, self.unlinked);
        put_u64(b, 64, self.igeneration);
        put_u64(b, 72, self.version);
        put_u64(b, 80, self.next);
        put_u32(b, 88, self.index);
        b[RG_BITMAP_OFFSET..].copy_from_slice(&self.bits);
        Ok(())
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 92..RG_BITMAP_OFFSET, blkno, RG, "reserved")?;
        let h = RgrpHeader {
            flags: RgrpFlags(get_u32(b, 32)),
            bitmap_blocks: get_u32(b, 36),
            data0: get_u64(b, 40),
            data_len: get_u32(b, 48),
            free: get_u32(b, 52),
            dinodes: get_u32(b, 56),
            unlinked: get_u32(b, 60),
            igeneration: get_u64(b, 64),
            version: get_u64(b, 72),
            next: get_u64(b, 80),
            index: get_u32(b, 88),
            bits: b[RG_BITMAP_OFFSET..].to_vec(),
        };
        h.validate(geo, blkno)?;
        Ok(h)
    }
}

/// A bitmap block (the second and later parts of an rgrp's bitmap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapBlock {
    /// Address of the rgrp header this block belongs to.
    pub rgrp: u64,
    /// This block sits at `rgrp + index` (1 for the first bitmap block).
    pub index: u32,
    /// Exactly [`block_bitmap_bytes`] bytes.
    pub bits: Vec<u8>,
}

impl BitmapBlock {
    fn validate(&self, geo: &Geometry, blkno: u64) -> Result<()> {
        if self.index == 0 || self.rgrp.checked_add(u64::from(self.index)) != Some(blkno) {
            return Err(FormatError::field(
                blkno,
                RB,
                "rgrp/index",
                format!(
                    "says it is bitmap block {} of the rgrp at {}, which is not block {blkno}",
                    self.index, self.rgrp
                ),
            ));
        }
        if self.bits.len() != block_bitmap_bytes(geo.block_size) {
            return Err(FormatError::field(
                blkno,
                RB,
                "bitmap",
                format!(
                    "{} bytes, expected {}",
                    self.bits.len(),
                    block_bitmap_bytes(geo.block_size)
                ),
            ));
        }
        Ok(())
    }
}

impl MetaBlock for BitmapBlock {
    const TYPE: BlockType = BlockType::Bitmap;
    const VERSION: u16 = RB_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        self.validate(geo, blkno)?;
        put_u64(b, 32, self.rgrp);
        put_u32(b, 40, self.index);
        b[RB_BITMAP_OFFSET..].copy_from_slice(&self.bits);
        Ok(())
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 44..48, blkno, RB, "reserved")?;
        let v = BitmapBlock {
            rgrp: get_u64(b, 32),
            index: get_u32(b, 40),
            bits: b[RB_BITMAP_OFFSET..].to_vec(),
        };
        v.validate(geo, blkno)?;
        Ok(v)
    }
}

/// Where bitmap entry `i` lives: (part, byte within that part's bitmap
/// area, bit shift). Part 0 is the header block, part k the bitmap block at
/// `rgrp + k`. This is what a journaled bitmap change needs to know to log
/// only the one block it touched.
pub fn bit_location(bs: u32, i: u64) -> (u64, usize, u32) {
    let byte = i / BLOCKS_PER_BYTE;
    let shift = ((i % BLOCKS_PER_BYTE) * 2) as u32;
    let hb = header_bitmap_bytes(bs) as u64;
    if byte < hb {
        (0, byte as usize, shift)
    } else {
        let pb = block_bitmap_bytes(bs) as u64;
        let rest = byte - hb;
        (1 + rest / pb, (rest % pb) as usize, shift)
    }
}

/// One resource group's whole bitmap in memory: 2 bits for each of `len`
/// blocks. Bits past `len` are always zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgrpBitmap {
    len: u32,
    bytes: Vec<u8>,
}

impl RgrpBitmap {
    /// A bitmap of `len` free blocks.
    pub fn new(len: u32) -> RgrpBitmap {
        RgrpBitmap {
            len,
            bytes: vec![0; (len as usize).div_ceil(4)],
        }
    }

    /// Number of blocks described.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw bytes (`ceil(len / 4)` of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// State of block `i` (relative to data0); `None` past the end.
    pub fn get(&self, i: u32) -> Option<BlockState> {
        if i >= self.len {
            return None;
        }
        let b = self.bytes[(i / 4) as usize];
        Some(BlockState::from_bits(b >> ((i % 4) * 2)))
    }

    /// Sets block `i` and returns its previous state; `None` (and no
    /// change) past the end.
    pub fn set(&mut self, i: u32, s: BlockState) -> Option<BlockState> {
        let old = self.get(i)?;
        let byte = &mut self.bytes[(i / 4) as usize];
        let shift = (i % 4) * 2;
        *byte = (*byte & !(3 << shift)) | ((s as u8) << shift);
        Some(old)
    }

    /// Sets `n` blocks from `start`; `false` (and no change) if the range
    /// does not fit.
    pub fn set_range(&mut self, start: u32, n: u32, s: BlockState) -> bool {
        match start.checked_add(n) {
            Some(end) if end <= self.len => {
                for i in start..end {
                    self.set(i, s);
                }
                true
            }
            _ => false,
        }
    }

    /// The first block at or after `start` in state `s`.
    pub fn find_next(&self, start: u32, s: BlockState) -> Option<u32> {
        let len = self.len as usize;
        let mut i = start as usize;
        // Blocks one at a time up to a 32-block (u64) boundary, then a word
        // at a time, then the tail.
        while i < len && !i.is_multiple_of(32) {
            if self.get(i as u32) == Some(s) {
                return Some(i as u32);
            }
            i += 1;
        }
        let pat = s.pattern();
        while i + 32 <= len {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.bytes[i / 4..i / 4 + 8]);
            let x = u64::from_le_bytes(w) ^ pat;
            // A pair equal to `s` is a pair of zero bits in x.
            let m = !(x | (x >> 1)) & 0x5555_5555_5555_5555;
            if m != 0 {
                return Some((i + (m.trailing_zeros() / 2) as usize) as u32);
            }
            i += 32;
        }
        while i < len {
            if self.get(i as u32) == Some(s) {
                return Some(i as u32);
            }
            i += 1;
        }
        None
    }

    /// The first free block at or after `start`.
    pub fn find_next_free(&self, start: u32) -> Option<u32> {
        self.find_next(start, BlockState::Free)
    }

    /// Blocks in each state.
    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        let full = self.len as usize / 4;
        for &b in &self.bytes[..full] {
            for k in 0..4 {
                match BlockState::from_bits(b >> (2 * k)) {
                    BlockState::Free => c.free += 1,
                    BlockState::Data => c.data += 1,
                    BlockState::Unlinked => c.unlinked += 1,
                    BlockState::Dinode => c.dinodes += 1,
                }
            }
        }
        for i in (full * 4) as u32..self.len {
            match self.get(i) {
                Some(BlockState::Free) => c.free += 1,
                Some(BlockState::Data) => c.data += 1,
                Some(BlockState::Unlinked) => c.unlinked += 1,
                Some(BlockState::Dinode) => c.dinodes += 1,
                None => {}
            }
        }
        c
    }

    /// Blocks in state `s`.
    pub fn count(&self, s: BlockState) -> u64 {
        let c = self.counts();
        match s {
            BlockState::Free => c.free,
            BlockState::Data => c.data,
            BlockState::Unlinked => c.unlinked,
            BlockState::Dinode => c.dinodes,
        }
    }

    /// Cuts the bitmap into the header's part and the bitmap blocks' parts,
    /// each padded with zeros to its full size.
    pub fn to_parts(&self, bs: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
        let hb = header_bitmap_bytes(bs);
        let pb = block_bitmap_bytes(bs);
        let mut head = vec![0u8; hb];
        let n = self.bytes.len().min(hb);
        head[..n].copy_from_slice(&self.bytes[..n]);
        let nblocks = bitmap_blocks_for(bs, u64::from(self.len)) as usize;
        let mut parts = Vec::with_capacity(nblocks);
        for k in 0..nblocks {
            let mut p = vec![0u8; pb];
            let from = hb + k * pb;
            let to = (from + pb).min(self.bytes.len());
            if from < to {
                p[..to - from].copy_from_slice(&self.bytes[from..to]);
            }
            parts.push(p);
        }
        (head, parts)
    }

    /// Puts a bitmap back together from a decoded header (at `rgrp`) and its
    /// bitmap blocks in order, checking that they belong together and that
    /// no bit describes a block past the end.
    pub fn from_parts(
        bs: u32,
        rgrp: u64,
        header: &RgrpHeader,
        blocks: &[BitmapBlock],
    ) -> Result<RgrpBitmap> {
        if blocks.len() != header.bitmap_blocks as usize {
            return Err(FormatError::field(
                rgrp,
                RG,
                "bitmap_blocks",
                format!(
                    "{} bitmap blocks given, the header says {}",
                    blocks.len(),
                    header.bitmap_blocks
                ),
            ));
        }
        let len = header.data_len;
        let total = (len as usize).div_ceil(4);
        let hb = header_bitmap_bytes(bs);
        let pb = block_bitmap_bytes(bs);
        if header.bits.len() != hb {
            return Err(FormatError::field(
                rgrp,
                RG,
                "bitmap",
                format!("{} bytes in the header, expected {hb}", header.bits.len()),
            ));
        }
        check_stray_bits(&header.bits, 0, u64::from(len), rgrp, RG)?;
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&header.bits[..hb.min(total)]);
        for (k, b) in blocks.iter().enumerate() {
            let at = rgrp + 1 + k as u64;
            if b.rgrp != rgrp || b.index as usize != k + 1 || b.bits.len() != pb {
                return Err(FormatError::field(
                    at,
                    RB,
                    "rgrp/index",
                    format!(
                        "belongs to the rgrp at {} as part {}, expected rgrp {rgrp} part {}",
                        b.rgrp,
                        b.index,
                        k + 1
                    ),
                ));
            }
            let first_byte = (hb + k * pb) as u64;
            check_stray_bits(&b.bits, first_byte, u64::from(len), at, RB)?;
            let want = total.saturating_sub(bytes.len()).min(pb);
            bytes.extend_from_slice(&b.bits[..want]);
        }
        debug_assert_eq!(bytes.len(), total);
        Ok(RgrpBitmap { len, bytes })
    }
}

/// One rgrp as the rindex lists it (64 bytes: addr u64, data0 u64, data_len
/// u32, length u32, flags u32, then 36 reserved bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RindexEntry {
    /// Address of the rgrp header.
    pub addr: u64,
    /// Header plus bitmap blocks.
    pub length: u32,
    pub flags: RgrpFlags,
    pub data0: u64,
    pub data_len: u32,
}

const RI: &str = "rindex";

impl RindexEntry {
    /// Last block of the rgrp, plus one.
    pub fn end(&self) -> u64 {
        self.data0 + u64::from(self.data_len)
    }

    /// Whether `addr` is one of the blocks the bitmap describes.
    pub fn contains_data(&self, addr: u64) -> bool {
        addr >= self.data0 && addr < self.end()
    }

    /// Checks the entry (number `i` of the rindex file at dinode `blkno`).
    pub fn validate(&self, geo: &Geometry, blkno: u64, i: usize) -> Result<()> {
        let bad = |detail: String| {
            Err(FormatError::field(
                blkno,
                RI,
                "entry",
                format!("entry {i}: {detail}"),
            ))
        };
        if !geo.is_valid_addr(self.addr) {
            return bad(format!(
                "rgrp address {} is outside the file system",
                self.addr
            ));
        }
        if self.flags.0 & !RgrpFlags::KNOWN != 0 {
            return bad(format!("unknown flags {:#x}", self.flags.0));
        }
        if self.data_len == 0 {
            return bad("no data blocks".into());
        }
        let want = 1 + bitmap_blocks_for(geo.block_size, u64::from(self.data_len));
        if u64::from(self.length) != want {
            return bad(format!(
                "length {} but {} data blocks need a header and {} bitmap blocks",
                self.length,
                self.data_len,
                want - 1
            ));
        }
        if self.data0 != self.addr + u64::from(self.length) {
            return bad(format!(
                "data0 {} does not follow the bitmap (addr {} + length {})",
                self.data0, self.addr, self.length
            ));
        }
        if self.end() > geo.total_blocks {
            return bad(format!(
                "ends at {}, past the file system's {} blocks",
                self.end(),
                geo.total_blocks
            ));
        }
        Ok(())
    }

    pub fn encode(&self, out: &mut [u8]) {
        assert_eq!(out.len(), RINDEX_ENTRY_SIZE, "rindex entry buffer");
        out.fill(0);
        put_u64(out, 0, self.addr);
        put_u64(out, 8, self.data0);
        put_u32(out, 16, self.data_len);
        put_u32(out, 20, self.length);
        put_u32(out, 24, self.flags.0);
    }

    fn decode(b: &[u8], blkno: u64, i: usize) -> Result<RindexEntry> {
        if b[28..RINDEX_ENTRY_SIZE].iter().any(|&x| x != 0) {
            return Err(FormatError::field(
                blkno,
                RI,
                "entry",
                format!("entry {i}: reserved bytes are not zero"),
            ));
        }
        Ok(RindexEntry {
            addr: get_u64(b, 0),
            data0: get_u64(b, 8),
            data_len: get_u32(b, 16),
            length: get_u32(b, 20),
            flags: RgrpFlags(get_u32(b, 24)),
        })
    }
}

/// Encodes the rindex file contents.
pub fn encode_rindex(
    geo: &Geometry,
    rindex_blkno: u64,
    entries: &[RindexEntry],
) -> Result<Vec<u8>> {
    check_rindex(geo, rindex_blkno, entries)?;
    let mut out = vec![0u8; entries.len() * RINDEX_ENTRY_SIZE];
    for (e, chunk) in entries.iter().zip(out.chunks_exact_mut(RINDEX_ENTRY_SIZE)) {
        e.encode(chunk);
    }
    Ok(out)
}

/// Decodes the rindex file contents (the file's bytes, as read through its
/// dinode at `rindex_blkno`): every entry valid, in ascending address order,
/// none overlapping the next.
pub fn decode_rindex(geo: &Geometry, rindex_blkno: u64, bytes: &[u8]) -> Result<Vec<RindexEntry>> {
    if !bytes.len().is_multiple_of(RINDEX_ENTRY_SIZE) || bytes.is_empty() {
        return Err(FormatError::field(
            rindex_blkno,
            RI,
            "size",
            format!(
                "{} bytes is not a positive multiple of {RINDEX_ENTRY_SIZE}",
                bytes.len()
            ),
        ));
    }
    let entries = bytes
        .chunks_exact(RINDEX_ENTRY_SIZE)
        .enumerate()
        .map(|(i, c)| RindexEntry::decode(c, rindex_blkno, i))
        .collect::<Result<Vec<_>>>()?;
    check_rindex(geo, rindex_blkno, &entries)?;
    Ok(entries)
}

fn check_rindex(geo: &Geometry, blkno: u64, entries: &[RindexEntry]) -> Result<()> {
    for (i, e) in entries.iter().enumerate() {
        e.validate(geo, blkno, i)?;
        if i > 0 && entries[i - 1].end() > e.addr {
            return Err(FormatError::field(
                blkno,
                RI,
                "entry",
                format!(
                    "entry {i} at {} overlaps or precedes entry {} (which ends at {})",
                    e.addr,
                    i - 1,
                    entries[i - 1].end()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::*;
    use proptest::prelude::*;

    #[test]
    fn split_region_is_tight() {
        for bs in [512u32, 4096, 65536] {
            for len in [2u64, 3, 100, 1000, 5000, 65536, 1 << 20, (1 << 20) + 7] {
                let (b, d) = split_region(bs, len).unwrap();
                assert_eq!(b + d + 1, len);
                assert_eq!(bitmap_blocks_for(bs, d), b);
                // One more data block would not fit with the same bitmap.
                if b > 0 {
                    assert!(bitmap_blocks_for(bs, d + 1) >= b);
                }
            }
            assert!(split_region(bs, 1).is_none());
        }
    }

    #[test]
    fn bit_location_matches_parts() {
        let bs = 512;
        let len = 10_000u32;
        let mut bm = RgrpBitmap::new(len);
        for i in [0u32, 1, 1535, 1536, 1537, 3000, 9999] {
            bm.set(i, BlockState::Dinode);
            let (head, parts) = bm.to_parts(bs);
            let (part, byte, shift) = bit_location(bs, u64::from(i));
            let src = if part == 0 {
                &head
            } else {
                &parts[part as usize - 1]
            };
            assert_eq!((src[byte] >> shift) & 3, 3, "block {i}");
            bm.set(i, BlockState::Free);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u32, u8),
        Range(u32, u32, u8),
        Find(u32, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..3000, 0u8..4).prop_map(|(i, s)| Op::Set(i, s)),
            (0u32..3000, 0u32..200, 0u8..4).prop_map(|(i, n, s)| Op::Range(i, n, s)),
            (0u32..3100, 0u8..4).prop_map(|(i, s)| Op::Find(i, s)),
        ]
    }

    proptest! {
        /// The bitmap against a plain Vec<BlockState>.
        #[test]
        fn bitmap_matches_model(len in 1u32..3000, ops in proptest::collection::vec(op(), 1..200)) {
            let mut bm = RgrpBitmap::new(len);
            let mut model = vec![BlockState::Free; len as usize];
            for op in ops {
                match op {
                    Op::Set(i, s) => {
                        let s = BlockState::from_bits(s);
                        let r = bm.set(i, s);
                        if i < len {
                            prop_assert_eq!(r, Some(model[i as usize]));
                            model[i as usize] = s;
                        } else {
                            prop_assert_eq!(r, None);
                        }
                    }
                    Op::Range(i, n, s) => {
                        let s = BlockState::from_bits(s);
                        let ok = bm.set_range(i, n, s);
                        prop_assert_eq!(ok, i + n <= len);
                        if ok {
                            for m in &mut model[i as usize..(i + n) as usize] { *m = s; }
                        }
                    }
                    Op::Find(i, s) => {
                        let s = BlockState::from_bits(s);
                        let want = (i as usize..len as usize).find(|&k| model[k] == s).map(|k| k as u32);
                        prop_assert_eq!(bm.find_next(i, s), want);
                    }
                }
            }
            let c = bm.counts();
            prop_assert_eq!(c.free, model.iter().filter(|&&m| m == BlockState::Free).count() as u64);
            prop_assert_eq!(c.data, model.iter().filter(|&&m| m == BlockState::Data).count() as u64);
            prop_assert_eq!(c.unlinked, model.iter().filter(|&&m| m == BlockState::Unlinked).count() as u64);
            prop_assert_eq!(c.dinodes, model.iter().filter(|&&m| m == BlockState::Dinode).count() as u64);
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(bm.get(i as u32), Some(*m));
            }
            prop_assert_eq!(bm.get(len), None);
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600), rindex in proptest::collection::vec(any::<u8>(), 0..400)) {
            let g = geo(512);
            decode_sealed_garbage::<RgrpHeader>(&g, 400, &body);
            decode_sealed_garbage::<BitmapBlock>(&g, 400, &body);
            assert_garbage_fails::<RgrpHeader>(&g, 400, &body);
            assert_garbage_fails::<BitmapBlock>(&g, 400, &body);
            let _ = decode_rindex(&g, 400, &rindex);
        }

        #[test]
        fn rindex_round_trip(lens in proptest::collection::vec((1u32..100_000, any::<bool>()), 1..50)) {
            let g = geo(4096);
            let mut addr = 17u64;
            let mut entries = Vec::new();
            for (data_len, journal) in lens {
                let length = 1 + bitmap_blocks_for(4096, u64::from(data_len)) as u32;
                let e = RindexEntry {
                    addr,
                    length,
                    flags: RgrpFlags(if journal { RgrpFlags::JOURNAL | RgrpFlags::NOALLOC } else { 0 }),
                    data0: addr + u64::from(length),
                    data_len,
                };
                addr = e.end();
                entries.push(e);
            }
            let bytes = encode_rindex(&g, 300, &entries).unwrap();
            prop_assert_eq!(&decode_rindex(&g, 300, &bytes).unwrap(), &entries);
            // Any single changed byte is caught or decodes to a different,
            // still consistent, list — never silently the same.
            let mut b2 = bytes.clone();
            b2[bytes.len() / 2] ^= 0x40;
            if let Ok(v) = decode_rindex(&g, 300, &b2) {
                prop_assert_ne!(v, entries);
            }
        }

        #[test]
        fn header_bit_flips_fail(len in 1u32..20_000) {
            let g = geo(512);
            let nb = bitmap_blocks_for(512, u64::from(len)) as u32;
            let mut bm = RgrpBitmap::new(len);
            bm.set(len - 1, BlockState::Dinode);
            let (head, parts) = bm.to_parts(512);
            let h = RgrpHeader {
                flags: RgrpFlags(RgrpFlags::NOALLOC), bitmap_blocks: nb, data0: 1001 + u64::from(nb), data_len: len,
                free: len - 1, dinodes: 1, unlinked: 0, igeneration: 1, version: 1, next: 0, index: 3, bits: head,
            };
            let enc = encode_to_vec(&h, &g, 1000).unwrap();
            assert_bit_flips_fail::<RgrpHeader>(&g, 1000, &enc, 3);
            if let Some(p) = parts.into_iter().next() {
                let b = BitmapBlock { rgrp: 1000, index: 1, bits: p };
                let enc = encode_to_vec(&b, &g, 1001).unwrap();
                assert_bit_flips_fail::<BitmapBlock>(&g, 1001, &enc, 3);
            }
        }

        /// Header + bitmap blocks encode and decode back to the same bitmap.
        #[test]
        fn bitmap_parts_round_trip(bs_shift in 9u32..=12, len in 1u32..40_000, seed: u64) {
            let bs = 1u32 << bs_shift;
            let g = geo(bs);
            let mut bm = RgrpBitmap::new(len);
            let mut x = seed | 1;
            for _ in 0..200 {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                bm.set((x % u64::from(len)) as u32, BlockState::from_bits((x >> 32) as u8));
            }
            let c = bm.counts();
            let (head, parts) = bm.to_parts(bs);
            let addr = 1000u64;
            let nb = parts.len() as u32;
            let h = RgrpHeader {
                flags: RgrpFlags(0), bitmap_blocks: nb, data0: addr + 1 + u64::from(nb), data_len: len,
                free: c.free as u32, dinodes: c.dinodes as u32, unlinked: c.unlinked as u32,
                igeneration: 3, version: 9, next: 0, index: 0, bits: head,
            };
            let hb = encode_to_vec(&h, &g, addr).unwrap();
            let h2: RgrpHeader = decode_block(&g, addr, &hb).unwrap();
            prop_assert_eq!(&h2, &h);
            let mut blocks = Vec::new();
            for (k, p) in parts.into_iter().enumerate() {
                let at = addr + 1 + k as u64;
                let b = BitmapBlock { rgrp: addr, index: k as u32 + 1, bits: p };
                let enc = encode_to_vec(&b, &g, at).unwrap();
                blocks.push(decode_block::<BitmapBlock>(&g, at, &enc).unwrap());
            }
            let back = RgrpBitmap::from_parts(bs, addr, &h2, &blocks).unwrap();
            prop_assert_eq!(back, bm);
        }
    }
}
