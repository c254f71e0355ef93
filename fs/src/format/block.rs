//! The common header every metadata block starts with, its CRC32C, and the
//! [`MetaBlock`] trait that ties each structure's body codec to it.
//!
//! Owns: the header layout, the block type numbers, the checksum rule, and
//! the order of header checks. May not touch: the body of any structure
//! (each structure's module owns its own bytes after offset 32).
//!
//! Header (32 bytes, little-endian):
//!
//! | off | size | field    | meaning                                              |
//! |-----|------|----------|------------------------------------------------------|
//! | 0   | 4    | magic    | [`MAGIC`] ("RDLM")                                   |
//! | 4   | 2    | type     | [`BlockType`]                                        |
//! | 6   | 2    | version  | layout version of this structure                     |
//! | 8   | 4    | checksum | CRC32C of the whole block with these 4 bytes zeroed  |
//! | 12  | 4    | reserved | zero                                                 |
//! | 16  | 8    | blkno    | the block's own address (catches misdirected I/O)    |
//! | 24  | 8    | fs_id    | the file system's id (stale blocks of an older mkfs) |
//!
//! Checks run in this order, so the message names the most basic problem:
//! size, magic, checksum, type, version, address, file system id, reserved.

use super::{FormatError, Geometry, Result, MAGIC};

/// Size of the common header.
pub const HEADER_SIZE: usize = 32;

/// Offsets of the header fields.
const OFF_MAGIC: usize = 0;
const OFF_TYPE: usize = 4;
const OFF_VERSION: usize = 6;
const OFF_CRC: usize = 8;
const OFF_RESERVED: usize = 12;
const OFF_BLKNO: usize = 16;
const OFF_FSID: usize = 24;

/// What a metadata block is. The numbers are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum BlockType {
    Superblock = 1,
    RgrpHeader = 2,
    Bitmap = 3,
    Dinode = 4,
    Indirect = 5,
    Leaf = 6,
    JData = 7,
    LogHeader = 8,
    LogDescriptor = 9,
    Revoke = 10,
    Commit = 11,
    Xattr = 12,
}

impl BlockType {
    pub const ALL: [BlockType; 12] = [
        BlockType::Superblock,
        BlockType::RgrpHeader,
        BlockType::Bitmap,
        BlockType::Dinode,
        BlockType::Indirect,
        BlockType::Leaf,
        BlockType::JData,
        BlockType::LogHeader,
        BlockType::LogDescriptor,
        BlockType::Revoke,
        BlockType::Commit,
        BlockType::Xattr,
    ];

    pub fn from_u16(v: u16) -> Option<BlockType> {
        BlockType::ALL.iter().copied().find(|t| *t as u16 == v)
    }

    /// The structure's name as error messages and docs use it.
    pub fn name(self) -> &'static str {
        match self {
            BlockType::Superblock => "superblock",
            BlockType::RgrpHeader => "resource group header",
            BlockType::Bitmap => "bitmap block",
            BlockType::Dinode => "dinode",
            BlockType::Indirect => "indirect block",
            BlockType::Leaf => "directory leaf",
            BlockType::JData => "system data block",
            BlockType::LogHeader => "journal log header",
            BlockType::LogDescriptor => "journal descriptor",
            BlockType::Revoke => "journal revoke block",
            BlockType::Commit => "journal commit block",
            BlockType::Xattr => "xattr block",
        }
    }
}

/// Name of a raw type number, for messages about unknown types.
pub fn type_name(v: u16) -> &'static str {
    BlockType::from_u16(v).map_or("unknown", BlockType::name)
}

/// The decoded common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub block_type: u16,
    pub version: u16,
    pub checksum: u32,
    pub reserved: u32,
    pub blkno: u64,
    pub fs_id: u64,
}

impl Header {
    /// Reads the header fields without checking anything. `None` if the
    /// buffer is shorter than a header.
    pub fn peek(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_SIZE {
            return None;
        }
        Some(Header {
            magic: get_u32(buf, OFF_MAGIC),
            block_type: get_u16(buf, OFF_TYPE),
            version: get_u16(buf, OFF_VERSION),
            checksum: get_u32(buf, OFF_CRC),
            reserved: get_u32(buf, OFF_RESERVED),
            blkno: get_u64(buf, OFF_BLKNO),
            fs_id: get_u64(buf, OFF_FSID),
        })
    }
}

/// CRC32C of `buf` as if its checksum field were zero.
pub fn block_crc(buf: &[u8]) -> u32 {
    debug_assert!(buf.len() >= HEADER_SIZE);
    let c = crc32c::crc32c(&buf[..OFF_CRC]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &buf[OFF_CRC + 4..])
}

/// Writes the header of a block of type `t` at `blkno` (checksum zero; call
/// [`seal`] once the body is written).
pub fn write_header(buf: &mut [u8], t: BlockType, version: u16, blkno: u64, fs_id: u64) {
    assert!(
        buf.len() >= HEADER_SIZE,
        "block buffer shorter than a header"
    );
    put_u32(buf, OFF_MAGIC, MAGIC);
    put_u16(buf, OFF_TYPE, t as u16);
    put_u16(buf, OFF_VERSION, version);
    put_u32(buf, OFF_CRC, 0);
    put_u32(buf, OFF_RESERVED, 0);
    put_u64(buf, OFF_BLKNO, blkno);
    put_u64(buf, OFF_FSID, fs_id);
}

/// Stores the block's checksum; the last step of every encoder.
pub fn seal(buf: &mut [u8]) {
    let c = block_crc(buf);
    put_u32(buf, OFF_CRC, c);
}

/// Checks everything in the header of a block expected to be a `t` at
/// `blkno` of the file system `fs_id`, including the checksum over the whole
/// buffer. `fs_id == None` skips the id check (only the superblock, which
/// defines the id, is read that way).
pub fn check_header(
    buf: &[u8],
    expected_len: usize,
    t: BlockType,
    version: u16,
    blkno: u64,
    fs_id: Option<u64>,
) -> Result<Header> {
    let structure = t.name();
    if buf.len() != expected_len || buf.len() < HEADER_SIZE {
        return Err(FormatError::BufferSize {
            blkno,
            structure,
            len: buf.len(),
            expected: expected_len,
        });
    }
    let Some(h) = Header::peek(buf) else {
        // Unreachable after the length check; still an error, not a panic.
        return Err(FormatError::BufferSize {
            blkno,
            structure,
            len: buf.len(),
            expected: expected_len,
        });
    };
    if h.magic != MAGIC {
        return Err(FormatError::BadMagic {
            blkno,
            structure,
            found: h.magic,
        });
    }
    let computed = block_crc(buf);
    if computed != h.checksum {
        return Err(FormatError::BadChecksum {
            blkno,
            structure,
            stored: h.checksum,
            computed,
        });
    }
    if h.block_type != t as u16 {
        return Err(FormatError::WrongType {
            blkno,
            structure,
            found: h.block_type,
        });
    }
    if h.version != version {
        return Err(FormatError::UnsupportedVersion {
            blkno,
            structure,
            found: h.version,
            supported: version,
        });
    }
    if h.blkno != blkno {
        return Err(FormatError::Misdirected {
            blkno,
            structure,
            found: h.blkno,
        });
    }
    if let Some(expected) = fs_id {
        if h.fs_id != expected {
            return Err(FormatError::ForeignFs {
                blkno,
                structure,
                found: h.fs_id,
                expected,
            });
        }
    }
    if h.reserved != 0 {
        return Err(FormatError::field(
            blkno,
            structure,
            "header reserved",
            format!("must be zero, is {:#x}", h.reserved),
        ));
    }
    Ok(h)
}

/// A structure that fills one metadata block. Implementors write and read
/// only the bytes after the header; [`encode_block`] and [`decode_block`]
/// handle the header and the checksum.
pub trait MetaBlock: Sized {
    const TYPE: BlockType;
    /// The layout version this build writes and reads.
    const VERSION: u16;

    /// Validates `self` and writes its body into `block` (a zeroed block of
    /// `geo.block_size` bytes whose header is already written). Fails, with
    /// the same message a decoder would give, if `self` breaks a rule.
    fn encode_body(&self, geo: &Geometry, blkno: u64, block: &mut [u8]) -> Result<()>;

    /// Reads and validates the body of `block` (whose header has been
    /// checked).
    fn decode_body(geo: &Geometry, blkno: u64, block: &[u8]) -> Result<Self>;
}

/// Encodes `v` as block `blkno` into `buf` (exactly one block). On error the
/// contents of `buf` are unspecified and must not be written anywhere.
pub fn encode_block<T: MetaBlock>(v: &T, geo: &Geometry, blkno: u64, buf: &mut [u8]) -> Result<()> {
    if buf.len() != geo.bs() {
        return Err(FormatError::BufferSize {
            blkno,
            structure: T::TYPE.name(),
            len: buf.len(),
            expected: geo.bs(),
        });
    }
    buf.fill(0);
    write_header(buf, T::TYPE, T::VERSION, blkno, geo.fs_id);
    v.encode_body(geo, blkno, buf)?;
    seal(buf);
    Ok(())
}

/// Decodes block `blkno` from `buf` as a `T`.
pub fn decode_block<T: MetaBlock>(geo: &Geometry, blkno: u64, buf: &[u8]) -> Result<T> {
    check_header(buf, geo.bs(), T::TYPE, T::VERSION, blkno, Some(geo.fs_id))?;
    T::decode_body(geo, blkno, buf)
}

/// Encodes into a fresh block-sized buffer.
pub fn encode_to_vec<T: MetaBlock>(v: &T, geo: &Geometry, blkno: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; geo.bs()];
    encode_block(v, geo, blkno, &mut buf)?;
    Ok(buf)
}

// Fixed-offset little-endian accessors. Callers pass offsets that lie inside
// the smallest block (512 bytes) or that they have bounds-checked against the
// buffer; an out-of-range offset is a bug in this crate, not bad disk data.

pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn get_i64(b: &[u8], off: usize) -> i64 {
    get_u64(b, off) as i64
}
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_i64(b: &mut [u8], off: usize, v: i64) {
    put_u64(b, off, v as u64);
}

/// Fails unless `b[range]` is all zero: reserved bytes and padding.
pub(crate) fn check_zero(
    b: &[u8],
    range: std::ops::Range<usize>,
    blkno: u64,
    structure: &'static str,
    field: &'static str,
) -> Result<()> {
    match b[range.clone()].iter().position(|&x| x != 0) {
        None => Ok(()),
        Some(i) => Err(FormatError::field(
            blkno,
            structure,
            field,
            format!(
                "must be zero, byte {} is {:#04x}",
                range.start + i,
                b[range.start + i]
            ),
        )),
    }
}

/// Reads a little-endian `u64` array.
pub(crate) fn get_u64s(b: &[u8], off: usize, n: usize) -> Vec<u64> {
    (0..n).map(|i| get_u64(b, off + 8 * i)).collect()
}

/// Writes a little-endian `u64` array.
pub(crate) fn put_u64s(b: &mut [u8], off: usize, v: &[u64]) {
    for (i, x) in v.iter().enumerate() {
        put_u64(b, off + 8 * i, *x);
    }
}

/// Checks that every non-zero pointer in `ptrs` is a valid block address.
pub(crate) fn check_ptrs(
    geo: &Geometry,
    ptrs: &[u64],
    blkno: u64,
    structure: &'static str,
    field: &'static str,
    allow_zero: bool,
) -> Result<()> {
    for (i, &p) in ptrs.iter().enumerate() {
        if p == 0 && allow_zero {
            continue;
        }
        if !geo.is_valid_addr(p) {
            return Err(FormatError::field(
                blkno,
                structure,
                field,
                format!(
                    "pointer {i} is {p}, outside the file system's data area ({}..{})",
                    geo.sb_block() + 1,
                    geo.total_blocks
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn magic_spells_rdlm() {
        assert_eq!(&MAGIC.to_le_bytes(), b"RDLM");
    }

    #[test]
    fn header_checks_in_order() {
        let mut b = vec![0u8; 512];
        write_header(&mut b, BlockType::Leaf, 1, 300, 7);
        seal(&mut b);
        assert!(check_header(&b, 512, BlockType::Leaf, 1, 300, Some(7)).is_ok());
        assert!(matches!(
            check_header(&b, 512, BlockType::Dinode, 1, 300, Some(7)),
            Err(FormatError::WrongType { found: 6, .. })
        ));
        assert!(matches!(
            check_header(&b, 512, BlockType::Leaf, 2, 300, Some(7)),
            Err(FormatError::UnsupportedVersion { found: 1, .. })
        ));
        assert!(matches!(
            check_header(&b, 512, BlockType::Leaf, 1, 301, Some(7)),
            Err(FormatError::Misdirected { found: 300, .. })
        ));
        assert!(matches!(
            check_header(&b, 512, BlockType::Leaf, 1, 300, Some(8)),
            Err(FormatError::ForeignFs { found: 7, .. })
        ));
        b[100] ^= 1;
        assert!(matches!(
            check_header(&b, 512, BlockType::Leaf, 1, 300, Some(7)),
            Err(FormatError::BadChecksum { .. })
        ));
        b[0] = 0;
        assert!(matches!(
            check_header(&b, 512, BlockType::Leaf, 1, 300, Some(7)),
            Err(FormatError::BadMagic { .. })
        ));
        assert!(matches!(
            check_header(&b[..100], 512, BlockType::Leaf, 1, 300, Some(7)),
            Err(FormatError::BufferSize { .. })
        ));
    }
}
