//! The rdlmfs on-disk format: every structure that lives on the shared disk,
//! as plain Rust values with total encoders and decoders.
//!
//! Owns: the byte layout of every metadata block (common header, checksum,
//! superblock, resource groups and their bitmaps, dinodes and their pointer
//! trees, directories, extended attributes, journal records, system file
//! contents), the limits of the format, and where mkfs puts things
//! ([`layout::plan`]). `docs/format.md` describes the same bytes for people;
//! the two must agree.
//!
//! May not touch: locks, caches, transactions or policy (which block to
//! allocate, when to split a leaf). Apart from [`io`], which reads and writes
//! whole blocks through [`blockdev::BlockDevice`], nothing here does I/O:
//! encoders fill a caller's `&mut [u8]` of one block, decoders read a `&[u8]`.
//!
//! Rules every decoder keeps: it is *total* — any bytes at all give either a
//! value or a [`FormatError`] naming the block, the structure and what is
//! wrong; it never panics and never returns a value that differs from what
//! was encoded (a single flipped bit anywhere fails the CRC32C). Encoders
//! validate with the same rules, so whatever encodes also decodes to the
//! same value. All integers are little-endian. Reserved bytes must be zero
//! (so a later format version can give them a meaning and be detected).

pub mod block;
pub mod dinode;
pub mod dir;
pub mod io;
pub mod journal;
pub mod layout;
pub mod rgrp;
pub mod superblock;
pub mod sysfile;
pub mod xattr;

pub use block::{BlockType, Header, MetaBlock};
pub use dinode::{Dinode, DinodeContent, DinodeFlags, FileType, Indirect, JData};
pub use dir::{DirEntry, Leaf};
pub use journal::{Commit, LogDescriptor, LogHeader, Revoke};
pub use layout::{plan, Layout, LayoutError, MkfsOptions};
pub use rgrp::{BitmapBlock, BlockState, RgrpBitmap, RgrpFlags, RgrpHeader, RindexEntry};
pub use superblock::{LockProto, LockTable, Superblock};
pub use xattr::{XattrBlock, XattrEntry};

/// First four bytes of every metadata block: "RDLM" read as a little-endian
/// `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RDLM");

/// The major format version in the superblock. A reader refuses any other
/// value; compatible growth goes through the feature flags instead.
///
/// Version 2: directory entries hold *formal* inode numbers
/// ([`formal_ino`]) instead of bare dinode addresses.
pub const FORMAT_VERSION: u32 = 2;

/// Byte offset of the superblock, whatever the block size (as GFS2: 64 KiB,
/// so a partition table or boot loader in front of it survives, and a probe
/// can find it before it knows the block size).
pub const SB_OFFSET: u64 = 65536;

/// Smallest and largest block sizes (powers of two in between).
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 65536;

/// Longest file name, in bytes (as Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Most levels a file's pointer tree may have (GFS2's `GFS2_MAX_META_HEIGHT`).
/// Height 10 reaches past 2^63 bytes at every block size, so the effective
/// file size limit is [`dinode::MAX_FILE_SIZE`].
pub const MAX_HEIGHT: u8 = 10;

/// Deepest hash table of a hashed directory (2^24 slots = 128 MiB of table).
/// Beyond this a full leaf chains to another leaf through `next`.
pub const MAX_DIR_DEPTH: u8 = 24;

/// Most journals (node slots) one file system may have.
pub const MAX_JOURNALS: u32 = 256;

/// Bits of a formal inode number that hold the dinode's block address; the
/// bits above hold the low bits of its generation. A file system may have
/// at most `2^44` blocks (64 PiB at 4 KiB blocks).
pub const FORMAL_ADDR_BITS: u32 = 44;

/// Most blocks a file system may have (see [`FORMAL_ADDR_BITS`]).
pub const MAX_TOTAL_BLOCKS: u64 = 1 << FORMAL_ADDR_BITS;

const FORMAL_ADDR_MASK: u64 = MAX_TOTAL_BLOCKS - 1;

/// The generation bits a formal inode number keeps.
const FORMAL_GEN_MASK: u64 = (1 << (64 - FORMAL_ADDR_BITS)) - 1;

/// An inode's *formal number* (GFS2's `no_formal_ino` beside `no_addr`):
/// its dinode's block address in the low [`FORMAL_ADDR_BITS`] bits, the
/// low 20 bits of its generation above them. It is what directory entries
/// hold and what users see as the inode number.
///
/// Why not the bare address: a freed dinode block is reused, at once and
/// by any node. Someone holding the old number — a directory entry that a
/// bug left behind, another node's kernel that still caches the inode
/// (FUSE names an inode by this number) — must find a *different* number
/// at that address, not silently the new file. The generation grows with
/// every dinode allocated in an rgrp, so a reused block gets a new formal
/// number; a collision needs exactly a multiple of 2^20 allocations in
/// that rgrp in between.
pub fn formal_ino(addr: u64, generation: u64) -> u64 {
    debug_assert!(addr <= FORMAL_ADDR_MASK, "dinode address {addr} too large");
    ((generation & FORMAL_GEN_MASK) << FORMAL_ADDR_BITS) | (addr & FORMAL_ADDR_MASK)
}

/// The dinode address of a formal inode number.
pub fn formal_addr(formal: u64) -> u64 {
    formal & FORMAL_ADDR_MASK
}

/// Whether `formal` names the inode at `addr` of this `generation`.
pub fn formal_matches(formal: u64, addr: u64, generation: u64) -> bool {
    formal == formal_ino(addr, generation)
}

/// What every decoder needs to know about the file system it reads: all of
/// it comes from the superblock ([`Superblock::geometry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// File system block size in bytes (a power of two, 512..=65536).
    pub block_size: u32,
    /// The per-file-system id every metadata block carries.
    pub fs_id: u64,
    /// Blocks in the file system; every block address is below this.
    pub total_blocks: u64,
    /// Key of the directory name hash ([`dir::name_hash`]).
    pub hash_key: [u8; 16],
}

impl Geometry {
    /// The block size as a `usize`, for slicing.
    pub fn bs(&self) -> usize {
        self.block_size as usize
    }

    /// Block number of the superblock at this block size.
    pub fn sb_block(&self) -> u64 {
        sb_block(self.block_size)
    }

    /// Whether `addr` may be the target of a pointer: past the superblock
    /// (the blocks before it are reserved) and inside the file system.
    pub fn is_valid_addr(&self, addr: u64) -> bool {
        addr > self.sb_block() && addr < self.total_blocks
    }

    /// Whether `block_size` is one this format supports.
    pub fn valid_block_size(block_size: u32) -> bool {
        block_size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
    }
}

/// Block number of the superblock for a block size.
pub fn sb_block(block_size: u32) -> u64 {
    SB_OFFSET / u64::from(block_size.max(1))
}

/// A point in time as stored on disk: seconds since the epoch (may be
/// negative) and nanoseconds below 10^9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub const NSEC_LIMIT: u32 = 1_000_000_000;

    /// The current time of this machine.
    pub fn now() -> Timestamp {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            // A clock before 1970: store the epoch rather than fail mkfs.
            Err(_) => Timestamp::default(),
        }
    }

    pub fn is_valid(&self) -> bool {
        self.nsec < Self::NSEC_LIMIT
    }
}

/// Why bytes are not a valid structure. Every variant names the block (its
/// address in file system blocks; for the superblock before the block size is
/// known, in 512-byte units) and the structure that was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("block {blkno}: {structure}: buffer is {len} bytes, expected {expected}")]
    BufferSize {
        blkno: u64,
        structure: &'static str,
        len: usize,
        expected: usize,
    },

    #[error("block {blkno}: {structure}: bad magic {found:#010x} (expected {MAGIC:#010x}): not an rdlmfs metadata block")]
    BadMagic {
        blkno: u64,
        structure: &'static str,
        found: u32,
    },

    #[error("block {blkno}: {structure}: bad checksum: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        blkno: u64,
        structure: &'static str,
        stored: u32,
        computed: u32,
    },

    #[error("block {blkno}: expected a {structure} block, found block type {found} ({})", block::type_name(*found))]
    WrongType {
        blkno: u64,
        structure: &'static str,
        found: u16,
    },

    #[error("block {blkno}: {structure}: unsupported structure version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        blkno: u64,
        structure: &'static str,
        found: u16,
        supported: u16,
    },

    #[error("block {blkno}: {structure}: the block says it belongs at block {found}: a misdirected write, or a pointer to the wrong block")]
    Misdirected {
        blkno: u64,
        structure: &'static str,
        found: u64,
    },

    #[error("block {blkno}: {structure}: belongs to file system id {found:#018x}, not {expected:#018x}: a stale block from an earlier mkfs, or another file system's")]
    ForeignFs {
        blkno: u64,
        structure: &'static str,
        found: u64,
        expected: u64,
    },

    #[error("block {blkno}: {structure}: {field}: {detail}")]
    BadField {
        blkno: u64,
        structure: &'static str,
        field: &'static str,
        detail: String,
    },
}

impl FormatError {
    /// Shorthand for the most common variant.
    pub fn field(
        blkno: u64,
        structure: &'static str,
        field: &'static str,
        detail: impl Into<String>,
    ) -> FormatError {
        FormatError::BadField {
            blkno,
            structure,
            field,
            detail: detail.into(),
        }
    }

    /// The block the error is about.
    pub fn blkno(&self) -> u64 {
        match self {
            FormatError::BufferSize { blkno, .. }
            | FormatError::BadMagic { blkno, .. }
            | FormatError::BadChecksum { blkno, .. }
            | FormatError::WrongType { blkno, .. }
            | FormatError::UnsupportedVersion { blkno, .. }
            | FormatError::Misdirected { blkno, .. }
            | FormatError::ForeignFs { blkno, .. }
            | FormatError::BadField { blkno, .. } => *blkno,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[cfg(test)]
pub(crate) mod testutil;
