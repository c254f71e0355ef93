//! Lock value blocks (OCFS2's `ocfs2_meta_lvb`, GFS2's `gfs2_rgrp_lvb`,
//! in our own layouts): what an Exclusive holder leaves in a glock for the
//! next holder when it gives the glock up. Inode glocks and rgrp glocks
//! each have one.
//!
//! Owns: the 64-byte layouts, their encoders and total decoders, and the
//! rule for trusting one. May not touch: when an LVB is written (the demote
//! worker and [`crate::glock::Glocks`]) or what a cache does with it
//! (`inode.rs`, `ops.rs`, `rgrp.rs`).
//!
//! Inode LVBs have two uses:
//!
//! - **Keeping caches across a re-grant.** A node that gave an inode glock
//!   up keeps its last copy of the dinode aside. When it gets the glock
//!   again and the LVB names the same generation and version, nobody
//!   changed the inode meanwhile (every change bumps the version, and every
//!   Exclusive holder writes the LVB when it lets go), so the copy is used
//!   without reading the disk.
//! - **Attributes without the disk.** A node with no copy at all answers
//!   `stat` (getattr, lookup) from the LVB's attributes.
//!
//! Rgrp LVBs carry the rgrp header's version and its free and dinode
//! counts. An allocator that gets an rgrp glock whose LVB says the rgrp is
//! full moves on without reading its bitmaps, and one that kept the
//! bitmaps of the same version uses them without reading (see `rgrp.rs`).
//!
//! Trust rule: an LVB is used only if the lock manager calls it valid
//! (a holder that died leaves it invalid), its layout version is ours, and
//! — for the attributes — its ATTRS flag is set. An Exclusive holder that
//! lets go without anything to describe writes all zeros (layout 0, never
//! trusted), so a stale LVB can never outlive a change.
//!
//! Inode layout (little-endian, 64 bytes):
use crate::format::{Dinode, DinodeFlags, Timestamp};

/// Bytes in an inode glock's LVB (the lockspace is joined with it).
pub const LVB_LEN: usize = 64;

/// The layout version this build writes and trusts.
const LAYOUT: u8 = 1;

const ATTRS: u8 = 1;

/// Byte 1 of an rgrp LVB.
const RGRP_KIND: u8 = b'R';

/// What an inode glock's LVB says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeLvb {
    /// Low 32 bits of the dinode's generation.
    pub generation: u32,
    pub version: u64,
    /// The attributes, if they fit.
    pub attrs: Option<LvbAttrs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LvbAttrs {
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    /// In file system blocks, as the dinode counts them.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub uid: u32,
    pub gid: u32,
}

fn pack_time(t: Timestamp) -> Option<u64> {
    let sec = u64::try_from(t.sec).ok().filter(|s| *s < (1 << 34))?;
    (t.nsec < (1 << 30)).then_some((sec << 30) | u64::from(t.nsec))
}

fn unpack_time(v: u64) -> Timestamp {
    Timestamp {
        sec: (v >> 30) as i64,
        nsec: (v & ((1 << 30) - 1)) as u32,
    }
}

impl InodeLvb {
    /// Whether a cached copy of generation `generation` at `version` is
    /// still what the disk holds.
    pub fn describes(&self, generation: u64, version: u64) -> bool {
        self.generation == generation as u32 && self.version == version
    }

    /// The LVB describing `di` (attributes included when they fit).
    pub fn encode(di: &Dinode) -> Vec<u8> {
        let mut b = vec![0u8; LVB_LEN];
        b[0] = LAYOUT;
        b[8..16].copy_from_slice(&di.version.to_le_bytes());
        b[28..32].copy_from_slice(&(di.generation as u32).to_le_bytes());
        let times = (
            pack_time(di.atime),
            pack_time(di.mtime),
            pack_time(di.ctime),
        );
        let fits = di.rdev == 0
            && !di.flags.contains(DinodeFlags::SYSTEM)
            && di.mode <= u32::from(u16::MAX)
            && di.blocks <= u64::from(u32::MAX);
        if let (true, (Some(a), Some(m), Some(c))) = (fits, times) {
            b[1] = ATTRS;
            b[2..4].copy_from_slice(&(di.mode as u16).to_le_bytes());
            b[4..8].copy_from_slice(&di.nlink.to_le_bytes());
            b[16..24].copy_from_slice(&di.size.to_le_bytes());
            b[24..28].copy_from_slice(&(di.blocks as u32).to_le_bytes());
            b[32..40].copy_from_slice(&a.to_le_bytes());
            b[40..48].copy_from_slice(&m.to_le_bytes());
            b[48..56].copy_from_slice(&c.to_le_bytes());
            b[56..60].copy_from_slice(&di.uid.to_le_bytes());
            b[60..64].copy_from_slice(&di.gid.to_le_bytes());
        }
        b
    }

    /// Reads an LVB; None for an empty one, another layout, another
    /// length or flags this build does not know (read the disk instead).
    pub fn decode(b: &[u8]) -> Option<InodeLvb> {
        if b.len() != LVB_LEN || b[0] != LAYOUT || b[1] & !ATTRS != 0 {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let attrs = (b[1] & ATTRS != 0).then(|| LvbAttrs {
            mode: u32::from(u16_at(2)),
            nlink: u32_at(4),
            size: u64_at(16),
            blocks: u64::from(u32_at(24)),
            atime: unpack_time(u64_at(32)),
            mtime: unpack_time(u64_at(40)),
            ctime: unpack_time(u64_at(48)),
            uid: u32_at(56),
            gid: u32_at(60),
        });
        Some(InodeLvb {
            generation: u32_at(28),
            version: u64_at(8),
            attrs,
        })
    }
}

/// What an rgrp glock's LVB says: the header as its last Exclusive
/// holder left it on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RgrpLvb {
    /// The header's block address (a check that the LVB is this rgrp's).
    pub addr: u64,
    pub version: u64,
    pub free: u32,
    pub dinodes: u32,
}

impl RgrpLvb {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LVB_LEN];
        b[0] = LAYOUT;
        b[1] = RGRP_KIND;
        b[4..8].copy_from_slice(&self.free.to_le_bytes());
        b[8..16].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr.to_le_bytes());
        b[24..28].copy_from_slice(&self.dinodes.to_le_bytes());
        b
    }

    /// Reads the LVB of the rgrp whose header is at `addr`; None for an
    /// empty one, another layout or kind, another rgrp's, or any byte
    /// this layout keeps zero set (read the disk instead).
    pub fn decode(b: &[u8], addr: u64) -> Option<RgrpLvb> {
        if b.len() != LVB_LEN || b[0] != LAYOUT || b[1] != RGRP_KIND {
            return None;
        }
        if b[2..4].iter().chain(&b[28..]).any(|x| *x != 0) {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let l = RgrpLvb {
            addr: u64_at(16),
            version: u64_at(8),
            free: u32_at(4),
            dinodes: u32_at(24),
        };
        (l.addr == addr).then_some(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{DinodeContent, FileType};

    fn dinode() -> Dinode {
        Dinode {
            mode: FileType::Regular.mode_bits() | 0o640,
            uid: 1000,
            gid: 100,
            nlink: 2,
            size: 123_456_789,
            blocks: 30_200,
            atime: Timestamp {
                sec: 1_700_000_000,
                nsec: 999_999_999,
            },
            mtime: Timestamp { sec: 0, nsec: 1 },
            ctime: Timestamp {
                sec: (1 << 34) - 1,
                nsec: 5,
            },
            flags: DinodeFlags(0),
            generation: (7 << 32) | 42,
            version: 9,
            rdev: 0,
            xattr: 0,
            goal: 0,
            height: 1,
            depth: 0,
            entries: 0,
            content: DinodeContent::Pointers(vec![]),
        }
    }

    #[test]
    fn attributes_round_trip() {
        let d = dinode();
        let l = InodeLvb::decode(&InodeLvb::encode(&d)).expect("decodes");
        assert!(l.describes(d.generation, d.version));
        assert!(!l.describes(d.generation, d.version + 1));
        assert!(!l.describes(d.generation + 1, d.version));
        let a = l.attrs.expect("attributes fit");
        assert_eq!(
            (a.mode, a.nlink, a.size, a.blocks, a.uid, a.gid),
            (d.mode, d.nlink, d.size, d.blocks, d.uid, d.gid)
        );
        assert_eq!((a.atime, a.mtime, a.ctime), (d.atime, d.mtime, d.ctime));
    }

    #[test]
    fn what_does_not_fit_leaves_the_attributes_out() {
        let mut cases = Vec::new();
        let mut d = dinode();
        d.rdev = 5;
        cases.push(d);
        let mut d = dinode();
        d.blocks = 1 << 32;
        cases.push(d);
        let mut d = dinode();
        d.mtime.sec = -1;
        cases.push(d);
        let mut d = dinode();
        d.ctime.sec = 1 << 34;
        cases.push(d);
        let mut d = dinode();
        d.flags = DinodeFlags(DinodeFlags::SYSTEM);
        cases.push(d);
        for d in cases {
            let l = InodeLvb::decode(&InodeLvb::encode(&d)).expect("decodes");
            assert!(l.attrs.is_none(), "{d:?}");
            assert!(l.describes(d.generation, d.version));
        }
    }

    #[test]
    fn empty_foreign_or_garbage_lvbs_are_not_trusted() {
        assert_eq!(InodeLvb::decode(&[0u8; LVB_LEN]), None);
        assert_eq!(InodeLvb::decode(&[]), None);
        assert_eq!(InodeLvb::decode(&[1u8; 32]), None);
        let mut b = InodeLvb::encode(&dinode());
        b[0] = 2;
        assert_eq!(InodeLvb::decode(&b), None);
        let mut b = InodeLvb::encode(&dinode());
        b[1] |= 0x80;
        assert_eq!(InodeLvb::decode(&b), None);
        // Any 64 bytes at all: a value or None, never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let mut b = [0u8; LVB_LEN];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            b[0] = LAYOUT;
            let _ = InodeLvb::decode(&b);
        }
    }

    #[test]
    fn rgrp_lvbs_round_trip_and_refuse_what_is_not_theirs() {
        let l = RgrpLvb {
            addr: 4242,
            version: 77,
            free: 1234,
            dinodes: 9,
        };
        let b = l.encode();
        assert_eq!(b.len(), LVB_LEN);
        assert_eq!(RgrpLvb::decode(&b, 4242), Some(l));
        assert_eq!(RgrpLvb::decode(&b, 4243), None, "another rgrp's");
        assert_eq!(RgrpLvb::decode(&[0u8; LVB_LEN], 4242), None);
        assert_eq!(RgrpLvb::decode(&b[..32], 4242), None);
        let mut bad = b.clone();
        bad[40] = 1;
        assert_eq!(RgrpLvb::decode(&bad, 4242), None);
        // An inode LVB is never an rgrp's, and the other way round.
        assert_eq!(RgrpLvb::decode(&InodeLvb::encode(&dinode()), 4242), None);
        assert_eq!(InodeLvb::decode(&b), None);
    }
}
