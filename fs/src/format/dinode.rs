//! Dinodes and their pointer trees: one block per inode (the inode number is
//! the block address), its data either inline ("stuffed") or reached through
//! a GFS2-style tree of uniform height whose leaves are data blocks.
//!
//! Owns: the dinode, indirect block and system data (JData) block layouts;
//! the rules tying mode, size, height, flags and content together; the tree
//! arithmetic (capacity per height, the path to a logical block, the shape of
//! a tree for `n` blocks). May not touch: allocation, block I/O, caching, or
//! directory contents (see `dir`).
//!
//! Why a pointer tree and not extents: every write touches at most `height`
//! known blocks (one per level), which keeps journal transactions small and
//! bounded and lets two glock holders reason about exactly which blocks they
//! changed; holes cost nothing (a zero pointer); there is no rebalancing or
//! extent splitting to get right under crash and replay; fsck walks it with
//! no search. The cost — about 0.2 % of a large file's size in indirect
//! blocks at 4 KiB, and more blocks to read for long sequential runs — is
//! the one GFS2 pays too. Extents can come later as an incompat feature.
//!
//! Dinode (type 4) body:
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 32  | 4    | mode (file type and permission bits, as `st_mode`) |
//! | 36  | 4    | uid |
//! | 40  | 4    | gid |
//! | 44  | 4    | nlink |
//! | 48  | 8    | size (bytes; for system data files, payload bytes) |
//! | 56  | 8    | blocks (blocks charged: dinode, tree, data, xattr) |
//! | 64  | 8    | atime seconds (i64) |
//! | 72  | 8    | mtime seconds |
//! | 80  | 8    | ctime seconds |
//! | 88  | 4    | atime nanoseconds |
//! | 92  | 4    | mtime nanoseconds |
//! | 96  | 4    | ctime nanoseconds |
//! | 100 | 4    | flags ([`DinodeFlags`]) |
//! | 104 | 8    | generation |
//! | 112 | 8    | version (bumped on every change; carried in the inode glock's LVB) |
//! | 120 | 8    | rdev (device number of a block or character device) |
//! | 128 | 8    | xattr (address of the first xattr block, 0 = none) |
//! | 136 | 8    | goal (allocation hint, 0 = none) |
//! | 144 | 1    | height of the pointer tree (0 = stuffed) |
//! | 145 | 1    | depth of a hashed directory's table |
//! | 146 | 2    | reserved |
//! | 148 | 4    | entries (directories: number of entries, "." and ".." included) |
//! | 152 | 8    | reserved |
//! | 160 | ..   | stuffed data, or `(bs - 160) / 8` block pointers |

use super::block::*;
use super::{FormatError, Geometry, Result, Timestamp, MAX_DIR_DEPTH, MAX_HEIGHT};

/// Bytes of the dinode before its body.
pub const DINODE_HEADER_SIZE: usize = 160;
/// Bytes of an indirect block before its pointers.
pub const INDIRECT_HEADER_SIZE: usize = 48;
/// Bytes of a system data block before its payload.
pub const JDATA_HEADER_SIZE: usize = 48;

/// Largest file: `off_t` is signed 64-bit.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Longest symlink target (Linux `PATH_MAX` less the NUL).
pub const MAX_SYMLINK_LEN: u64 = 4095;

pub const DI_VERSION: u16 = 1;
pub const IN_VERSION: u16 = 1;
pub const JD_VERSION: u16 = 1;

const DI: &str = "dinode";
const IN: &str = "indirect block";
const JD: &str = "system data block";

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;

/// What a dinode is. The mode bits and the directory entry type numbers
/// are Linux's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileType {
    pub const ALL: [FileType; 7] = [
        FileType::Regular,
        FileType::Directory,
        FileType::Symlink,
        FileType::CharDevice,
        FileType::BlockDevice,
        FileType::Fifo,
        FileType::Socket,
    ];

    /// The `S_IF*` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
        }
    }

    /// The `DT_*` number used in directory entries.
    pub fn dirent_type(self) -> u8 {
        match self {
            FileType::Fifo => 1,
            FileType::CharDevice => 2,
            FileType::Directory => 4,
            FileType::BlockDevice => 6,
            FileType::Regular => 8,
            FileType::Symlink => 10,
            FileType::Socket => 12,
        }
    }

    pub fn from_mode(mode: u32) -> Option<FileType> {
        FileType::ALL
            .iter()
            .copied()
            .find(|t| t.mode_bits() == mode & S_IFMT)
    }

    pub fn from_dirent_type(t: u8) -> Option<FileType> {
        FileType::ALL.iter().copied().find(|f| f.dirent_type() == t)
    }
}

/// Dinode flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DinodeFlags(pub u32);

impl DinodeFlags {
    /// A hidden file of the system (master) tree.
    pub const SYSTEM: u32 = 0x1;
    /// Data blocks are [`JData`] blocks (header + payload), so they are
    /// checksummed and can be journaled as metadata. System files and the
    /// hash tables of hashed directories use it.
    pub const JDATA: u32 = 0x2;
    /// A directory whose data is a hash table of leaf pointers.
    pub const EXHASH: u32 = 0x4;
    pub const IMMUTABLE: u32 = 0x10;
    pub const APPEND: u32 = 0x20;
    pub const NOATIME: u32 = 0x40;
    pub const SYNC: u32 = 0x80;
    /// A truncate was under way; whoever finds it finishes it.
    pub const TRUNC_IN_PROG: u32 = 0x100;
    pub const KNOWN: u32 = Self::SYSTEM
        | Self::JDATA
        | Self::EXHASH
        | Self::IMMUTABLE
        | Self::APPEND
        | Self::NOATIME
        | Self::SYNC
        | Self::TRUNC_IN_PROG;

    pub fn contains(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

/// Bytes of inline data a dinode can hold.
pub fn stuffed_capacity(bs: u32) -> usize {
    bs as usize - DINODE_HEADER_SIZE
}

/// Pointers in a dinode's body.
pub fn dinode_ptrs(bs: u32) -> usize {
    stuffed_capacity(bs) / 8
}

/// Pointers in an indirect block.
pub fn indirect_ptrs(bs: u32) -> usize {
    (bs as usize - INDIRECT_HEADER_SIZE) / 8
}

/// File bytes held by one data block.
pub fn data_payload(bs: u32, jdata: bool) -> usize {
    if jdata {
        bs as usize - JDATA_HEADER_SIZE
    } else {
        bs as usize
    }
}

/// Data blocks a tree of `height` can reach (saturating at `u64::MAX`).
pub fn tree_data_blocks(bs: u32, height: u8) -> u64 {
    if height == 0 {
        return 0;
    }
    let mut n = dinode_ptrs(bs) as u64;
    for _ in 1..height {
        n = n.saturating_mul(indirect_ptrs(bs) as u64);
    }
    n
}

/// Largest size a file of `height` can have (height 0: stuffed).
pub fn max_size(bs: u32, height: u8, jdata: bool) -> u64 {
    if height == 0 {
        return stuffed_capacity(bs) as u64;
    }
    tree_data_blocks(bs, height)
        .saturating_mul(data_payload(bs, jdata) as u64)
        .min(MAX_FILE_SIZE)
}

/// Smallest height (at least 1) whose tree reaches `nblocks` data blocks.
pub fn height_for_blocks(bs: u32, nblocks: u64) -> Option<u8> {
    (1..=MAX_HEIGHT).find(|&h| tree_data_blocks(bs, h) >= nblocks)
}

/// Smallest height for a file of `size` bytes, stuffed (0) when it fits.
pub fn height_for_size(bs: u32, size: u64, jdata: bool) -> Option<u8> {
    if size <= stuffed_capacity(bs) as u64 {
        return Some(0);
    }
    if size > MAX_FILE_SIZE {
        return None;
    }
    height_for_blocks(bs, size.div_ceil(data_payload(bs, jdata) as u64))
}

/// The slots to follow from the dinode down to logical block `lblock` in a
/// tree of `height`: first the dinode's slot, then one per indirect level.
/// `None` if the tree cannot reach that block.
pub fn pointer_path(bs: u32, height: u8, lblock: u64) -> Option<Vec<usize>> {
    if height == 0 || height > MAX_HEIGHT || lblock >= tree_data_blocks(bs, height) {
        return None;
    }
    let ip = indirect_ptrs(bs) as u64;
    let mut path = vec![0usize; height as usize];
    let mut rest = lblock;
    for slot in path.iter_mut().skip(1).rev() {
        *slot = (rest % ip) as usize;
        rest /= ip;
    }
    // What is left indexes the dinode; it is below dinode_ptrs because
    // lblock is below the tree's capacity.
    path[0] = rest as usize;
    Some(path)
}

/// How a tree for `nblocks` contiguous logical blocks (0..nblocks) is built:
/// its height and, per indirect level from the bottom (level 1 points at
/// data) up, how many indirect blocks it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeShape {
    pub height: u8,
    pub indirect_per_level: Vec<u64>,
}

impl TreeShape {
    pub fn for_blocks(bs: u32, nblocks: u64) -> Option<TreeShape> {
        let height = height_for_blocks(bs, nblocks.max(1))?;
        let ip = indirect_ptrs(bs) as u64;
        let mut per_level = Vec::new();
        let mut n = nblocks;
        for _ in 1..height {
            n = n.div_ceil(ip);
            per_level.push(n);
        }
        Some(TreeShape {
            height,
            indirect_per_level: per_level,
        })
    }

    /// All indirect blocks of the tree.
    pub fn indirect_blocks(&self) -> u64 {
        self.indirect_per_level.iter().sum()
    }
}

/// What follows the dinode header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DinodeContent {
    /// Height 0: the whole body, exactly [`stuffed_capacity`] bytes.
    Stuffed(Vec<u8>),
    /// Height ≥ 1: exactly [`dinode_ptrs`] pointers, 0 for a hole.
    Pointers(Vec<u64>),
}

/// A dinode. Its inode number is the address of its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dinode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub flags: DinodeFlags,
    pub generation: u64,
    pub version: u64,
    pub rdev: u64,
    pub xattr: u64,
    pub goal: u64,
    pub height: u8,
    pub depth: u8,
    pub entries: u32,
    pub content: DinodeContent,
}

impl Dinode {
    /// The file type; valid dinodes always have one.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == Some(FileType::Directory)
    }

    pub fn is_jdata(&self) -> bool {
        self.flags.contains(DinodeFlags::JDATA)
    }

    pub fn is_exhash(&self) -> bool {
        self.flags.contains(DinodeFlags::EXHASH)
    }

    /// The stuffed file bytes (the first `size` bytes of the body), if the
    /// dinode is stuffed.
    pub fn stuffed_data(&self) -> Option<&[u8]> {
        match &self.content {
            DinodeContent::Stuffed(b) => b.get(..self.size as usize),
            DinodeContent::Pointers(_) => None,
        }
    }

    /// The pointers, if the dinode has a tree.
    pub fn pointers(&self) -> Option<&[u64]> {
        match &self.content {
            DinodeContent::Pointers(p) => Some(p),
            DinodeContent::Stuffed(_) => None,
        }
    }

    fn validate(&self, geo: &Geometry, blkno: u64) -> Result<()> {
        let bad = |field, detail: String| Err(FormatError::field(blkno, DI, field, detail));
        let bs = geo.block_size;
        let Some(ft) = self.file_type() else {
            return bad("mode", format!("{:#o} has no valid file type", self.mode));
        };
        if self.mode & !(S_IFMT | 0o7777) != 0 {
            return bad(
                "mode",
                format!("{:#o} has bits beyond type and permissions", self.mode),
            );
        }
        for (field, t) in [
            ("atime", self.atime),
            ("mtime", self.mtime),
            ("ctime", self.ctime),
        ] {
            if !t.is_valid() {
                return bad(field, format!("nanoseconds {} >= 10^9", t.nsec));
            }
        }
        if self.flags.0 & !DinodeFlags::KNOWN != 0 {
            return bad(
                "flags",
                format!("unknown flags {:#x}", self.flags.0 & !DinodeFlags::KNOWN),
            );
        }
        if self.blocks == 0 {
            return bad("blocks", "a dinode charges at least its own block".into());
        }
        if self.height > MAX_HEIGHT {
            return bad("height", format!("{} > maximum {MAX_HEIGHT}", self.height));
        }
        for (field, a) in [("xattr", self.xattr), ("goal", self.goal)] {
            if a != 0 && !geo.is_valid_addr(a) {
                return bad(field, format!("address {a} is outside the file system"));
            }
        }
        let jdata = self.is_jdata();
        let cap = max_size(bs, self.height, jdata);
        if self.size > cap {
            return bad(
                "size",
                format!(
                    "{} exceeds the {cap} bytes a height-{} tree holds",
                    self.size, self.height
                ),
            );
        }
        match &self.content {
            DinodeContent::Stuffed(body) => {
                if self.height != 0 {
                    return bad("height", format!("{} but the data is stuffed", self.height));
                }
                if body.len() != stuffed_capacity(bs) {
                    return bad(
                        "body",
                        format!("{} bytes, expected {}", body.len(), stuffed_capacity(bs)),
                    );
                }
            }
            DinodeContent::Pointers(p) => {
                if self.height == 0 {
                    return bad("height", "0 but the dinode holds pointers".into());
                }
                if p.len() != dinode_ptrs(bs) {
                    return bad(
                        "pointers",
                        format!("{} pointers, expected {}", p.len(), dinode_ptrs(bs)),
                    );
                }
                check_ptrs(geo, p, blkno, DI, "pointers", true)?;
            }
        }
        if self.is_exhash() && ft != FileType::Directory {
            return bad(
                "flags",
                "EXHASH on something that is not a directory".into(),
            );
        }
        if ft != FileType::Directory && (self.depth != 0 || self.entries != 0) {
            return bad(
                "depth/entries",
                format!("{} / {} on a non-directory", self.depth, self.entries),
            );
        }
        match ft {
            FileType::Directory if self.is_exhash() => {
                if !jdata {
                    return bad("flags", "a hashed directory's table must be JDATA".into());
                }
                if self.depth > MAX_DIR_DEPTH {
                    return bad("depth", format!("{} > maximum {MAX_DIR_DEPTH}", self.depth));
                }
                let want = 8u64 << self.depth;
                if self.size != want {
                    return bad(
                        "size",
                        format!(
                            "{} but a depth-{} hash table is {want} bytes",
                            self.size, self.depth
                        ),
                    );
                }
            }
            FileType::Directory => {
                if self.height != 0 || self.depth != 0 {
                    return bad(
                        "height/depth",
                        format!(
                            "{} / {} on a linear (stuffed) directory",
                            self.height, self.depth
                        ),
                    );
                }
                if self.size != stuffed_capacity(bs) as u64 {
                    return bad(
                        "size",
                        format!(
                            "{} but a linear directory's size is its body, {} bytes",
                            self.size,
                            stuffed_capacity(bs)
                        ),
                    );
                }
            }
            FileType::Symlink => {
                if self.size == 0 || self.size > MAX_SYMLINK_LEN {
                    return bad(
                        "size",
                        format!("symlink target of {} bytes (1..=4095)", self.size),
                    );
                }
            }
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
                if self.size != 0 || self.height != 0 {
                    return bad(
                        "size",
                        format!(
                            "{} bytes / height {} on a special file",
                            self.size, self.height
                        ),
                    );
                }
            }
            FileType::Regular => {}
        }
        if !matches!(ft, FileType::CharDevice | FileType::BlockDevice) && self.rdev != 0 {
            return bad(
                "rdev",
                format!("{:#x} on a file that is not a device", self.rdev),
            );
        }
        // Stuffed bytes past the end of file are zero, so growing a file
        // never exposes stale bytes. (Linear directories use the whole body.)
        if let DinodeContent::Stuffed(body) = &self.content {
            if ft != FileType::Directory || self.is_exhash() {
                let from = (self.size as usize).min(body.len());
                if let Some(i) = body[from..].iter().position(|&b| b != 0) {
                    return bad(
                        "body",
                        format!(
                            "stuffed byte {} past the end of file ({}) is not zero",
                            from + i,
                            self.size
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

impl MetaBlock for Dinode {
    const TYPE: BlockType = BlockType::Dinode;
    const VERSION: u16 = DI_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        self.validate(geo, blkno)?;
        put_u32(b, 32, self.mode);
        put_u32(b, 36, self.uid);
        put_u32(b, 40, self.gid);
        put_u32(b, 44, self.nlink);
        put_u64(b, 48, self.size);
        put_u64(b, 56, self.blocks);
        put_i64(b, 64, self.atime.sec);
        put_i64(b, 72, self.mtime.sec);
        put_i64(b, 80, self.ctime.sec);
        put_u32(b, 88, self.atime.nsec);
        put_u32(b, 92, self.mtime.nsec);
        put_u32(b, 96, self.ctime.nsec);
        put_u32(b, 100, self.flags.0);
        put_u64(b, 104, self.generation);
        put_u64(b, 112, self.version);
        put_u64(b, 120, self.rdev);
        put_u64(b, 128, self.xattr);
        put_u64(b, 136, self.goal);
        b[144] = self.height;
        b[145] = self.depth;
        put_u32(b, 148, self.entries);
        match &self.content {
            DinodeContent::Stuffed(body) => b[DINODE_HEADER_SIZE..].copy_from_slice(body),
            DinodeContent::Pointers(p) => put_u64s(b, DINODE_HEADER_SIZE, p),
        }
        Ok(())
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 146..148, blkno, DI, "reserved")?;
        check_zero(b, 152..160, blkno, DI, "reserved")?;
        let height = b[144];
        let content = if height == 0 {
            DinodeContent::Stuffed(b[DINODE_HEADER_SIZE..].to_vec())
        } else {
            DinodeContent::Pointers(get_u64s(b, DINODE_HEADER_SIZE, dinode_ptrs(geo.block_size)))
        };
        let d = Dinode {
            mode: get_u32(b, 32),
            uid: get_u32(b, 36),
            gid: get_u32(b, 40),
            nlink: get_u32(b, 44),
            size: get_u64(b, 48),
            blocks: get_u64(b, 56),
            atime: Timestamp {
                sec: get_i64(b, 64),
                nsec: get_u32(b, 88),
            },
            mtime: Timestamp {
                sec: get_i64(b, 72),
                nsec: get_u32(b, 92),
            },
            ctime: Timestamp {
                sec: get_i64(b, 80),
                nsec: get_u32(b, 96),
            },
            flags: DinodeFlags(get_u32(b, 100)),
            generation: get_u64(b, 104),
            version: get_u64(b, 112),
            rdev: get_u64(b, 120),
            xattr: get_u64(b, 128),
            goal: get_u64(b, 136),
            height,
            depth: b[145],
            entries: get_u32(b, 148),
            content,
        };
        d.validate(geo, blkno)?;
        Ok(d)
    }
}

/// An indirect block: pointers one level of the tree down.
///
/// Body: 32 owner (u64, the dinode), 40 level (u32: 1 = points at data
/// blocks, up to height - 1), 44 reserved (u32), 48.. pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indirect {
    pub owner: u64,
    pub level: u32,
    /// Exactly [`indirect_ptrs`] pointers, 0 for a hole.
    pub ptrs: Vec<u64>,
}

impl Indirect {
    fn validate(&self, geo: &Geometry, blkno: u64) -> Result<()> {
        if !geo.is_valid_addr(self.owner) {
            return Err(FormatError::field(
                blkno,
                IN,
                "owner",
                format!("{} is not a block address", self.owner),
            ));
        }
        if self.level == 0 || self.level >= u32::from(MAX_HEIGHT) {
            return Err(FormatError::field(
                blkno,
                IN,
                "level",
                format!("{} is outside 1..{MAX_HEIGHT}", self.level),
            ));
        }
        if self.ptrs.len() != indirect_ptrs(geo.block_size) {
            return Err(FormatError::field(
                blkno,
                IN,
                "pointers",
                format!(
                    "{} pointers, expected {}",
                    self.ptrs.len(),
                    indirect_ptrs(geo.block_size)
                ),
            ));
        }
        check_ptrs(geo, &self.ptrs, blkno, IN, "pointers", true)
    }
}

impl MetaBlock for Indirect {
    const TYPE: BlockType = BlockType::Indirect;
    const VERSION: u16 = IN_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        self.validate(geo, blkno)?;
        put_u64(b, 32, self.owner);
        put_u32(b, 40, self.level);
        put_u64s(b, INDIRECT_HEADER_SIZE, &self.ptrs);
        Ok(())
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 44..48, blkno, IN, "reserved")?;
        let v = Indirect {
            owner: get_u64(b, 32),
            level: get_u32(b, 40),
            ptrs: get_u64s(b, INDIRECT_HEADER_SIZE, indirect_ptrs(geo.block_size)),
        };
        v.validate(geo, blkno)?;
        Ok(v)
    }
}

/// A data block of a JDATA file (system files, directory hash tables): the
/// payload is checksummed and tied to its file and position.
///
/// Body: 32 owner (u64, the dinode), 40 lblock (u64, logical block number
/// in the file), 48.. payload (`bs - 48` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JData {
    pub owner: u64,
    pub lblock: u64,
    /// Exactly `bs - 48` bytes.
    pub payload: Vec<u8>,
}

impl MetaBlock for JData {
    const TYPE: BlockType = BlockType::JData;
    const VERSION: u16 = JD_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        if !geo.is_valid_addr(self.owner) {
            return Err(FormatError::field(
                blkno,
                JD,
                "owner",
                format!("{} is not a block address", self.owner),
            ));
        }
        let want = data_payload(geo.block_size, true);
        if self.payload.len() != want {
            return Err(FormatError::field(
                blkno,
                JD,
                "payload",
                format!("{} bytes, expected {want}", self.payload.len()),
            ));
        }
        put_u64(b, 32, self.owner);
        put_u64(b, 40, self.lblock);
        b[JDATA_HEADER_SIZE..].copy_from_slice(&self.payload);
        Ok(())
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        let owner = get_u64(b, 32);
        if !geo.is_valid_addr(owner) {
            return Err(FormatError::field(
                blkno,
                JD,
                "owner",
                format!("{owner} is not a block address"),
            ));
        }
        Ok(JData {
            owner,
            lblock: get_u64(b, 40),
            payload: b[JDATA_HEADER_SIZE..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::*;
    use proptest::prelude::*;

    #[test]
    fn one_tebibyte_fits_at_every_block_size() {
        for shift in 9..=16 {
            let bs = 1u32 << shift;
            let h = height_for_size(bs, 1 << 40, false).unwrap();
            assert!(h <= MAX_HEIGHT);
            assert!(max_size(bs, MAX_HEIGHT, false) == MAX_FILE_SIZE, "bs {bs}");
        }
        // The numbers docs/format.md quotes.
        assert_eq!(dinode_ptrs(4096), 492);
        assert_eq!(indirect_ptrs(4096), 506);
        assert_eq!(height_for_size(4096, 1 << 40, false), Some(4));
        assert_eq!(height_for_size(512, 1 << 40, false), Some(6));
        assert_eq!(height_for_size(65536, 1 << 40, false), Some(2));
    }

    #[test]
    fn pointer_path_is_the_digits() {
        let bs = 4096;
        let ip = indirect_ptrs(bs);
        assert_eq!(pointer_path(bs, 1, 5), Some(vec![5]));
        assert_eq!(pointer_path(bs, 1, dinode_ptrs(bs) as u64), None);
        assert_eq!(pointer_path(bs, 2, (3 * ip + 7) as u64), Some(vec![3, 7]));
        assert_eq!(
            pointer_path(bs, 3, (2 * ip * ip + 3 * ip + 4) as u64),
            Some(vec![2, 3, 4])
        );
        assert_eq!(pointer_path(bs, 0, 0), None);
    }

    #[test]
    fn tree_shape_counts() {
        let bs = 4096;
        let s = TreeShape::for_blocks(bs, 32768).unwrap();
        assert_eq!(s.height, 2);
        assert_eq!(s.indirect_per_level, vec![65]);
        let s = TreeShape::for_blocks(bs, 10).unwrap();
        assert_eq!((s.height, s.indirect_blocks()), (1, 0));
    }

    fn ts() -> impl Strategy<Value = Timestamp> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timestamp { sec, nsec })
    }

    /// Valid dinodes of every kind.
    fn dinode_strategy(bs: u32) -> impl Strategy<Value = Dinode> {
        let kinds = prop_oneof![
            Just(FileType::Regular),
            Just(FileType::Directory),
            Just(FileType::Symlink),
            Just(FileType::CharDevice),
            Just(FileType::Fifo),
        ];
        (
            kinds,
            0u32..0o7777,
            any::<(u32, u32, u32)>(),
            (ts(), ts(), ts()),
            any::<(u64, u64, u64)>(),
            (
                0u8..=3,
                proptest::collection::vec(any::<u64>(), 4),
                any::<u16>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                move |(
                    ft,
                    perm,
                    (uid, gid, nlink),
                    (a, m, c),
                    (gen, ver, blocks),
                    (h, seeds, n, exhash),
                )| {
                    let cap = stuffed_capacity(bs);
                    let mut d = Dinode {
                        mode: ft.mode_bits() | perm,
                        uid,
                        gid,
                        nlink,
                        size: 0,
                        blocks: blocks.max(1),
                        atime: a,
                        mtime: m,
                        ctime: c,
                        flags: DinodeFlags(0),
                        generation: gen,
                        version: ver,
                        rdev: 0,
                        xattr: if seeds[0] % 2 == 0 {
                            0
                        } else {
                            200 + seeds[0] % 1000
                        },
                        goal: 0,
                        height: 0,
                        depth: 0,
                        entries: 0,
                        content: DinodeContent::Stuffed(vec![0; cap]),
                    };
                    let ptrs = || {
                        let mut p = vec![0u64; dinode_ptrs(bs)];
                        for (i, s) in seeds.iter().enumerate() {
                            let n = p.len();
                            p[(*s as usize) % n] = 200 + i as u64 + (s % 100_000);
                        }
                        DinodeContent::Pointers(p)
                    };
                    match ft {
                        FileType::Regular => {
                            if h == 0 {
                                let size = u64::from(n) % (cap as u64 + 1);
                                let mut body = vec![0u8; cap];
                                for (i, x) in body.iter_mut().take(size as usize).enumerate() {
                                    *x = (i as u8).wrapping_mul(31).wrapping_add(seeds[1] as u8);
                                }
                                d.size = size;
                                d.content = DinodeContent::Stuffed(body);
                            } else {
                                d.height = h;
                                d.size = seeds[2] % (max_size(bs, h, false) + 1);
                                d.content = ptrs();
                            }
                        }
                        FileType::Directory => {
                            d.nlink = nlink.max(2);
                            d.entries = u32::from(n);
                            if exhash {
                                d.flags = DinodeFlags(DinodeFlags::EXHASH | DinodeFlags::JDATA);
                                d.depth = (seeds[3] % 20) as u8;
                                d.size = 8 << d.depth;
                                if d.size <= cap as u64 {
                                    let mut body = vec![0u8; cap];
                                    for (i, x) in body.iter_mut().take(d.size as usize).enumerate()
                                    {
                                        *x = i as u8 | 1;
                                    }
                                    d.content = DinodeContent::Stuffed(body);
                                } else {
                                    d.height =
                                        height_for_size(bs, d.size, true).unwrap_or(MAX_HEIGHT);
                                    d.content = ptrs();
                                }
                            } else {
                                d.size = cap as u64;
                                d.content = DinodeContent::Stuffed(vec![0x5a; cap]);
                            }
                        }
                        FileType::Symlink => {
                            let size = 1 + u64::from(n) % (cap as u64).min(MAX_SYMLINK_LEN);
                            let mut body = vec![0u8; cap];
                            body[..size as usize].fill(b'x');
                            d.size = size;
                            d.content = DinodeContent::Stuffed(body);
                        }
                        FileType::CharDevice => d.rdev = seeds[1],
                        _ => {}
                    }
                    d
                },
            )
    }

    fn indirect_strategy(bs: u32) -> impl Strategy<Value = Indirect> {
        (
            200u64..1_000_000,
            1u32..10,
            proptest::collection::vec((any::<usize>(), 200u64..1 << 39), 0..20),
        )
            .prop_map(move |(owner, level, set)| {
                let mut ptrs = vec![0u64; indirect_ptrs(bs)];
                for (i, p) in set {
                    let n = ptrs.len();
                    ptrs[i % n] = p;
                }
                Indirect { owner, level, ptrs }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn dinode_round_trip_and_flips(
            (bs, d) in (9u32..=16).prop_flat_map(|s| (Just(1u32 << s), dinode_strategy(1u32 << s))),
            blkno in 5000u64..6000,
        ) {
            let g = geo(bs);
            let enc = encode_to_vec(&d, &g, blkno).unwrap();
            let back: Dinode = decode_block(&g, blkno, &enc).unwrap();
            prop_assert_eq!(&back, &d);
            assert_bit_flips_fail::<Dinode>(&g, blkno, &enc, (bs as usize * 8) / 97);
        }

        #[test]
        fn indirect_round_trip(bs_shift in 9u32..=13, v in indirect_strategy(512)) {
            // Build for the chosen block size from the 512-byte sample.
            let bs = 1u32 << bs_shift;
            let g = geo(bs);
            let mut ptrs = vec![0u64; indirect_ptrs(bs)];
            for (i, p) in v.ptrs.iter().enumerate() { ptrs[i] = *p; }
            let v = Indirect { ptrs, ..v };
            let enc = encode_to_vec(&v, &g, 777).unwrap();
            prop_assert_eq!(&decode_block::<Indirect>(&g, 777, &enc).unwrap(), &v);
            assert_bit_flips_fail::<Indirect>(&g, 777, &enc, 61);
        }

        #[test]
        fn jdata_round_trip(payload in proptest::collection::vec(any::<u8>(), 464), owner in 200u64..1 << 30, lblock: u64) {
            let g = geo(512);
            let v = JData { owner, lblock, payload };
            let enc = encode_to_vec(&v, &g, 900).unwrap();
            prop_assert_eq!(&decode_block::<JData>(&g, 900, &enc).unwrap(), &v);
            assert_bit_flips_fail::<JData>(&g, 900, &enc, 1);
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..4096), bs_shift in 9u32..=12) {
            let g = geo(1 << bs_shift);
            decode_sealed_garbage::<Dinode>(&g, 300, &body);
            decode_sealed_garbage::<Indirect>(&g, 300, &body);
            decode_sealed_garbage::<JData>(&g, 300, &body);
            assert_garbage_fails::<Dinode>(&g, 300, &body);
            assert_garbage_fails::<Indirect>(&g, 300, &body);
        }
    }
}
