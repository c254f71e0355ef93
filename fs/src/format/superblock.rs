//! The superblock: the one block that says what the file system is and where
//! its system structures start. It lives at byte [`SB_OFFSET`] whatever the
//! block size, and mkfs writes it last, so a device holds a valid rdlmfs
//! superblock only once everything it points to is on disk.
//!
//! Owns: the superblock layout, the feature-flag rules, the lock protocol
//! and lock table names. May not touch: anything the superblock points to.
//!
//! Reading it takes two steps because its checksum covers the whole block
//! and the block size is inside it: [`Superblock::probe`] reads the block
//! size from the first 512 bytes, then [`Superblock::decode`] checks the
//! whole block.
//!
//! | off | size | field          |
//! |-----|------|----------------|
//! | 0   | 32   | header (type 1, blkno = SB_OFFSET / block_size) |
//! | 32  | 4    | format_version ([`FORMAT_VERSION`]) |
//! | 36  | 4    | block_size     |
//! | 40  | 8    | total_blocks   |
//! | 48  | 8    | fs_id (equals the header's) |
//! | 56  | 16   | uuid           |
//! | 72  | 8    | compat features (unknown bits: ignored) |
//! | 80  | 8    | ro_compat features (unknown bits: mount read-only) |
//! | 88  | 8    | incompat features (unknown bits: refuse) |
//! | 96  | 8    | created seconds (i64) |
//! | 104 | 4    | created nanoseconds |
//! | 108 | 4    | journals       |
//! | 112 | 8    | root_dir (dinode address) |
//! | 120 | 8    | master_dir (dinode address of the system directory) |
//! | 128 | 8    | rindex (dinode address) |
//! | 136 | 8    | jindex (dinode address) |
//! | 144 | 4    | rgrps (count, must equal the rindex's) |
//! | 148 | 4    | lock_proto (1 lock_nolock, 2 lock_dlm) |
//! | 152 | 16   | dir hash key |
//! | 168 | 64   | lock table "cluster:fsname", NUL padded |
//! | 232 | 64   | label, NUL padded |
//! | 296 | ...  | reserved, zero to the end of the block |

use super::block::{self, *};
use super::{
    sb_block, FormatError, Geometry, Result, Timestamp, FORMAT_VERSION, MAGIC, MAX_JOURNALS,
    MIN_BLOCK_SIZE, SB_OFFSET,
};
use std::fmt;
use std::str::FromStr;

const STRUCT: &str = "superblock";

/// Structure version of the superblock layout.
pub const SB_VERSION: u16 = 1;

/// Bytes of the lock table and label fields.
pub const LOCK_TABLE_LEN: usize = 64;
pub const LABEL_LEN: usize = 64;

/// Longest cluster name and file system name in a lock table (as GFS2).
pub const MAX_CLUSTER_NAME: usize = 32;
pub const MAX_FS_NAME: usize = 30;

/// Feature bits this build knows. None are defined yet; the masks exist so
/// the rules are in place before the first one is.
pub const COMPAT_KNOWN: u64 = 0;
pub const RO_COMPAT_KNOWN: u64 = 0;
pub const INCOMPAT_KNOWN: u64 = 0;

const END_OF_FIELDS: usize = 296;

/// The cluster locking protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum LockProto {
    /// Single node: no cluster locking.
    Nolock = 1,
    /// Cluster locking through rdlm; the lock table names the cluster and
    /// the lockspace.
    Dlm = 2,
}

impl LockProto {
    pub fn from_u32(v: u32) -> Option<LockProto> {
        match v {
            1 => Some(LockProto::Nolock),
            2 => Some(LockProto::Dlm),
            _ => None,
        }
    }
}

impl fmt::Display for LockProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockProto::Nolock => "lock_nolock",
            LockProto::Dlm => "lock_dlm",
        })
    }
}

impl FromStr for LockProto {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<LockProto, String> {
        match s {
            "lock_nolock" => Ok(LockProto::Nolock),
            "lock_dlm" => Ok(LockProto::Dlm),
            _ => Err(format!(
                "unknown locking protocol {s:?}: use lock_dlm or lock_nolock"
            )),
        }
    }
}

/// A lock table "cluster:fsname". The cluster name must match the cluster
/// the nodes belong to; the file system name is the DLM lockspace name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockTable {
    pub cluster: String,
    pub fsname: String,
}

impl LockTable {
    /// Parses and validates "cluster:fsname": the cluster name 1..=32
    /// characters, the file system name 1..=30, both from `[A-Za-z0-9_-]`.
    pub fn parse(s: &str) -> std::result::Result<LockTable, String> {
        let Some((cluster, fsname)) = s.split_once(':') else {
            return Err(format!(
                "lock table {s:?} must have the form cluster:fsname"
            ));
        };
        let check = |what: &str, v: &str, max: usize| -> std::result::Result<(), String> {
            if v.is_empty() {
                return Err(format!("lock table {s:?}: the {what} is empty"));
            }
            if v.len() > max {
                return Err(format!(
                    "lock table {s:?}: the {what} {v:?} is {} characters; at most {max} are allowed",
                    v.len()
                ));
            }
            if let Some(c) = v
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            {
                return Err(format!(
                    "lock table {s:?}: the {what} contains {c:?}; only letters, digits, '-' and '_' are allowed"
                ));
            }
            Ok(())
        };
        check("cluster name", cluster, MAX_CLUSTER_NAME)?;
        check("file system name", fsname, MAX_FS_NAME)?;
        Ok(LockTable {
            cluster: cluster.to_string(),
            fsname: fsname.to_string(),
        })
    }
}

impl fmt::Display for LockTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cluster, self.fsname)
    }
}

/// Checks a label: at most [`LABEL_LEN`] bytes of UTF-8 without control
/// characters (it is shown in listings and must not be able to hide text).
pub fn check_label(label: &str) -> std::result::Result<(), String> {
    if label.len() > LABEL_LEN {
        return Err(format!(
            "label is {} bytes; at most {LABEL_LEN} are allowed",
            label.len()
        ));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(format!("label contains the control character {c:?}"));
    }
    Ok(())
}

/// The superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u32,
    pub total_blocks: u64,
    pub fs_id: u64,
    pub uuid: [u8; 16],
    pub compat: u64,
    pub ro_compat: u64,
    pub incompat: u64,
    pub created: Timestamp,
    pub journals: u32,
    pub root_dir: u64,
    pub master_dir: u64,
    pub rindex: u64,
    pub jindex: u64,
    pub rgrps: u32,
    pub lock_proto: LockProto,
    pub dir_hash_key: [u8; 16],
    /// "cluster:fsname"; required (and validated) with lock_dlm, may be
    /// empty with lock_nolock.
    pub lock_table: String,
    pub label: String,
}

impl Superblock {
    /// The decoding context for every other block.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.block_size,
            fs_id: self.fs_id,
            total_blocks: self.total_blocks,
            hash_key: self.dir_hash_key,
        }
    }

    /// Block number of the superblock itself.
    pub fn blkno(&self) -> u64 {
        sb_block(self.block_size)
    }

    /// The parsed lock table, if it is set.
    pub fn parsed_lock_table(&self) -> Option<LockTable> {
        LockTable::parse(&self.lock_table).ok()
    }

    /// ro_compat features this build does not know: if non-zero, the file
    /// system may be mounted read-only only.
    pub fn unknown_ro_compat(&self) -> u64 {
        self.ro_compat & !RO_COMPAT_KNOWN
    }

    /// The uuid in the usual 8-4-4-4-12 text form.
    pub fn uuid_string(&self) -> String {
        uuid_string(&self.uuid)
    }

    /// Reads the block size from the first bytes of a would-be superblock
    /// (at least 512 bytes read at [`SB_OFFSET`]). Checks magic, type and
    /// the block size field only; the checksum needs the whole block.
    pub fn probe(first: &[u8]) -> Result<u32> {
        let blkno = SB_OFFSET / u64::from(MIN_BLOCK_SIZE);
        if first.len() < MIN_BLOCK_SIZE as usize {
            return Err(FormatError::BufferSize {
                blkno,
                structure: STRUCT,
                len: first.len(),
                expected: MIN_BLOCK_SIZE as usize,
            });
        }
        let magic = get_u32(first, 0);
        if magic != MAGIC {
            return Err(FormatError::BadMagic {
                blkno,
                structure: STRUCT,
                found: magic,
            });
        }
        let t = get_u16(first, 4);
        if t != BlockType::Superblock as u16 {
            return Err(FormatError::WrongType {
                blkno,
                structure: STRUCT,
                found: t,
            });
        }
        let bs = get_u32(first, 36);
        if !Geometry::valid_block_size(bs) {
            return Err(FormatError::field(
                blkno,
                STRUCT,
                "block_size",
                format!("{bs} is not a power of two between 512 and 65536"),
            ));
        }
        Ok(bs)
    }

    /// Encodes into `buf`, which must be exactly one block of
    /// `self.block_size` bytes.
    pub fn encode(&self, buf: &mut [u8]) -> Result<()> {
        let blkno = self.blkno();
        self.validate(blkno)?;
        if buf.len() != self.block_size as usize {
            return Err(FormatError::BufferSize {
                blkno,
                structure: STRUCT,
                len: buf.len(),
                expected: self.block_size as usize,
            });
        }
        buf.fill(0);
        write_header(buf, BlockType::Superblock, SB_VERSION, blkno, self.fs_id);
        put_u32(buf, 32, FORMAT_VERSION);
        put_u32(buf, 36, self.block_size);
        put_u64(buf, 40, self.total_blocks);
        put_u64(buf, 48, self.fs_id);
        buf[56..72].copy_from_slice(&self.uuid);
        put_u64(buf, 72, self.compat);
        put_u64(buf, 80, self.ro_compat);
        put_u64(buf, 88, self.incompat);
        put_i64(buf, 96, self.created.sec);
        put_u32(buf, 104, self.created.nsec);
        put_u32(buf, 108, self.journals);
        put_u64(buf, 112, self.root_dir);
        put_u64(buf, 120, self.master_dir);
        put_u64(buf, 128, self.rindex);
        put_u64(buf, 136, self.jindex);
        put_u32(buf, 144, self.rgrps);
        put_u32(buf, 148, self.lock_proto as u32);
        buf[152..168].copy_from_slice(&self.dir_hash_key);
        put_str(buf, 168, LOCK_TABLE_LEN, &self.lock_table);
        put_str(buf, 232, LABEL_LEN, &self.label);
        seal(buf);
        Ok(())
    }

    /// Decodes a whole superblock block (its length is the block size the
    /// caller learned from [`probe`](Self::probe)).
    pub fn decode(buf: &[u8]) -> Result<Superblock> {
        let bs = Self::probe(buf)?;
        let blkno = sb_block(bs);
        let h = block::check_header(
            buf,
            bs as usize,
            BlockType::Superblock,
            SB_VERSION,
            blkno,
            None,
        )?;
        let fv = get_u32(buf, 32);
        if fv != FORMAT_VERSION {
            return Err(FormatError::field(
                blkno,
                STRUCT,
                "format_version",
                format!("{fv} is not supported (this build reads format {FORMAT_VERSION})"),
            ));
        }
        let fs_id = get_u64(buf, 48);
        if fs_id != h.fs_id {
            return Err(FormatError::field(
                blkno,
                STRUCT,
                "fs_id",
                format!("{fs_id:#018x} differs from the header's {:#018x}", h.fs_id),
            ));
        }
        let lock_raw = get_u32(buf, 148);
        let lock_proto = LockProto::from_u32(lock_raw).ok_or_else(|| {
            FormatError::field(
                blkno,
                STRUCT,
                "lock_proto",
                format!("{lock_raw} is not a known protocol (1 lock_nolock, 2 lock_dlm)"),
            )
        })?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&buf[56..72]);
        let mut dir_hash_key = [0u8; 16];
        dir_hash_key.copy_from_slice(&buf[152..168]);
        let sb = Superblock {
            block_size: bs,
            total_blocks: get_u64(buf, 40),
            fs_id,
            uuid,
            compat: get_u64(buf, 72),
            ro_compat: get_u64(buf, 80),
            incompat: get_u64(buf, 88),
            created: Timestamp {
                sec: get_i64(buf, 96),
                nsec: get_u32(buf, 104),
            },
            journals: get_u32(buf, 108),
            root_dir: get_u64(buf, 112),
            master_dir: get_u64(buf, 120),
            rindex: get_u64(buf, 128),
            jindex: get_u64(buf, 136),
            rgrps: get_u32(buf, 144),
            lock_proto,
            dir_hash_key,
            lock_table: get_str(buf, 168, LOCK_TABLE_LEN, blkno, "lock_table")?,
            label: get_str(buf, 232, LABEL_LEN, blkno, "label")?,
        };
        check_zero(buf, END_OF_FIELDS..buf.len(), blkno, STRUCT, "reserved")?;
        sb.validate(blkno)?;
        Ok(sb)
    }

    /// The rules shared by encoder and decoder.
    fn validate(&self, blkno: u64) -> Result<()> {
        let bad = |field, detail: String| Err(FormatError::field(blkno, STRUCT, field, detail));
        if !Geometry::valid_block_size(self.block_size) {
            return bad(
                "block_size",
                format!(
                    "{} is not a power of two between 512 and 65536",
                    self.block_size
                ),
            );
        }
        let geo = self.geometry();
        if self.total_blocks <= geo.sb_block() + 1 {
            return bad(
                "total_blocks",
                format!(
                    "{} leaves no room after the superblock (block {})",
                    self.total_blocks,
                    geo.sb_block()
                ),
            );
        }
        if self.total_blocks > super::MAX_TOTAL_BLOCKS {
            return bad(
                "total_blocks",
                format!(
                    "{} exceeds the format's limit of 2^{} blocks (formal inode numbers)",
                    self.total_blocks,
                    super::FORMAL_ADDR_BITS
                ),
            );
        }
        if self
            .total_blocks
            .checked_mul(u64::from(self.block_size))
            .is_none()
        {
            return bad(
                "total_blocks",
                format!("{} blocks overflow a 64-bit byte size", self.total_blocks),
            );
        }
        if self.fs_id == 0 {
            return bad("fs_id", "zero is not a valid file system id".into());
        }
        let unknown = self.incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return bad(
                "incompat",
                format!("unknown incompatible features {unknown:#x}: a newer rdlmfs made this file system"),
            );
        }
        if !self.created.is_valid() {
            return bad(
                "created",
                format!("nanoseconds {} >= 10^9", self.created.nsec),
            );
        }
        if self.journals == 0 || self.journals > MAX_JOURNALS {
            return bad(
                "journals",
                format!("{} is outside 1..={MAX_JOURNALS}", self.journals),
            );
        }
        for (field, addr) in [
            ("root_dir", self.root_dir),
            ("master_dir", self.master_dir),
            ("rindex", self.rindex),
            ("jindex", self.jindex),
        ] {
            if !geo.is_valid_addr(addr) {
                return bad(
                    field,
                    format!(
                        "address {addr} is outside the file system's data area ({}..{})",
                        geo.sb_block() + 1,
                        self.total_blocks
                    ),
                );
            }
        }
        if self.rgrps == 0 {
            return bad(
                "rgrps",
                "a file system has at least one resource group".into(),
            );
        }
        if self.lock_table.len() > LOCK_TABLE_LEN {
            return bad(
                "lock_table",
                format!("{} bytes; at most {LOCK_TABLE_LEN}", self.lock_table.len()),
            );
        }
        match self.lock_proto {
            LockProto::Dlm => {
                if let Err(e) = LockTable::parse(&self.lock_table) {
                    return bad(
                        "lock_table",
                        format!("lock_dlm needs a valid lock table: {e}"),
                    );
                }
            }
            LockProto::Nolock => {
                if !self.lock_table.is_empty() {
                    if let Err(e) = LockTable::parse(&self.lock_table) {
                        return bad("lock_table", e);
                    }
                }
            }
        }
        if let Err(e) = check_label(&self.label) {
            return bad("label", e);
        }
        if self.label.contains('\0') || self.lock_table.contains('\0') {
            return bad("label", "NUL inside a string field".into());
        }
        Ok(())
    }
}

/// Formats a uuid as 8-4-4-4-12 lowercase hex.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

fn put_str(buf: &mut [u8], off: usize, len: usize, s: &str) {
    let b = s.as_bytes();
    debug_assert!(b.len() <= len);
    buf[off..off + b.len()].copy_from_slice(b);
}

/// A NUL-padded UTF-8 field: the text ends at the first NUL (or fills the
/// field); everything after it must be NUL too.
fn get_str(buf: &[u8], off: usize, len: usize, blkno: u64, field: &'static str) -> Result<String> {
    let raw = &buf[off..off + len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
    if raw[end..].iter().any(|&b| b != 0) {
        return Err(FormatError::field(
            blkno,
            STRUCT,
            field,
            "bytes after the terminating NUL are not zero",
        ));
    }
    String::from_utf8(raw[..end].to_vec())
        .map_err(|e| FormatError::field(blkno, STRUCT, field, format!("not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bs: u32) -> Superblock {
        Superblock {
            block_size: bs,
            total_blocks: 1 << 20,
            fs_id: 0x1234_5678_9abc_def0,
            uuid: [7; 16],
            compat: 0,
            ro_compat: 0,
            incompat: 0,
            created: Timestamp {
                sec: 1_700_000_000,
                nsec: 5,
            },
            journals: 3,
            root_dir: 200,
            master_dir: 201,
            rindex: 202,
            jindex: 203,
            rgrps: 4,
            lock_proto: LockProto::Dlm,
            dir_hash_key: [9; 16],
            lock_table: "alpha:fs1".into(),
            label: "data".into(),
        }
    }

    #[test]
    fn round_trip_every_block_size() {
        for shift in 9..=16 {
            let bs = 1u32 << shift;
            let sb = sample(bs);
            let mut buf = vec![0u8; bs as usize];
            sb.encode(&mut buf).unwrap();
            assert_eq!(Superblock::probe(&buf[..512]).unwrap(), bs);
            assert_eq!(Superblock::decode(&buf).unwrap(), sb);
        }
    }

    #[test]
    fn lock_table_rules() {
        assert!(LockTable::parse("c:f").is_ok());
        assert!(LockTable::parse("cluster")
            .unwrap_err()
            .contains("cluster:fsname"));
        assert!(LockTable::parse(":f")
            .unwrap_err()
            .contains("cluster name is empty"));
        assert!(LockTable::parse(&format!("{}:f", "c".repeat(33)))
            .unwrap_err()
            .contains("at most 32"));
        assert!(LockTable::parse(&format!("c:{}", "f".repeat(31)))
            .unwrap_err()
            .contains("at most 30"));
        assert!(LockTable::parse("c:f/x").unwrap_err().contains("'/'"));
        assert!(LockTable::parse("c:f:g").is_err());
    }

    #[test]
    fn unknown_incompat_is_refused_and_ro_compat_reported() {
        let mut sb = sample(4096);
        sb.ro_compat = 1 << 40;
        let mut buf = vec![0u8; 4096];
        sb.encode(&mut buf).unwrap();
        assert_eq!(
            Superblock::decode(&buf).unwrap().unknown_ro_compat(),
            1 << 40
        );
        sb.incompat = 1;
        assert!(sb
            .encode(&mut buf)
            .unwrap_err()
            .to_string()
            .contains("incompatible"));
    }

    fn name(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(&format!("[A-Za-z0-9_-]{{1,{max}}}")).expect("regex")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip_and_bit_flips(
            shift in 9u32..=16,
            ids in proptest::prelude::any::<(u64, u64, [u8; 16], [u8; 16])>(),
            cluster in name(32),
            fsname in name(30),
            label in "[ -~]{0,64}",
            dlm in proptest::prelude::any::<bool>(),
            journals in 1u32..=256,
            ro in proptest::prelude::any::<u64>(),
        ) {
            let bs = 1u32 << shift;
            let mut sb = sample(bs);
            sb.fs_id = ids.0 | 1;
            sb.total_blocks = 1000 + ids.1 % (1 << 40);
            sb.uuid = ids.2;
            sb.dir_hash_key = ids.3;
            sb.journals = journals;
            sb.ro_compat = ro;
            sb.compat = ro.rotate_left(7);
            sb.label = label;
            if dlm {
                sb.lock_table = format!("{cluster}:{fsname}");
            } else {
                sb.lock_proto = LockProto::Nolock;
                sb.lock_table.clear();
            }
            let mut buf = vec![0u8; bs as usize];
            sb.encode(&mut buf).unwrap();
            proptest::prop_assert_eq!(&Superblock::decode(&buf).unwrap(), &sb);
            let stride = (bs as usize * 8 / 211).max(1);
            for bit in (0..bs as usize * 8).step_by(stride).chain(0..256) {
                buf[bit / 8] ^= 1 << (bit % 8);
                proptest::prop_assert!(Superblock::decode(&buf).is_err(), "bit {} flipped still decoded", bit);
                buf[bit / 8] ^= 1 << (bit % 8);
            }
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), shift in 9u32..=12) {
            let bs = 1usize << shift;
            let mut buf = vec![0u8; bs];
            let n = body.len().min(bs);
            buf[..n].copy_from_slice(&body[..n]);
            proptest::prop_assert!(Superblock::decode(&buf).is_err());
            let _ = Superblock::probe(&buf);
            // With a plausible header and a valid checksum: still no panic.
            block::write_header(&mut buf, BlockType::Superblock, SB_VERSION, sb_block(bs as u32), 5);
            put_u32(&mut buf, 36, bs as u32);
            block::seal(&mut buf);
            let _ = Superblock::decode(&buf);
        }
    }

    #[test]
    fn dlm_requires_lock_table() {
        let mut sb = sample(4096);
        sb.lock_table.clear();
        let mut buf = vec![0u8; 4096];
        assert!(sb.encode(&mut buf).is_err());
        sb.lock_proto = LockProto::Nolock;
        sb.encode(&mut buf).unwrap();
        assert_eq!(Superblock::decode(&buf).unwrap(), sb);
    }
}
