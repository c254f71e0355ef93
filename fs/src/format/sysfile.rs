//! The system (master) tree and the contents of its small files.
//!
//! Owns: the names in the master directory and its subdirectories, and the
//! byte layout of the statfs, statfs_change and unlinked files. May not
//! touch: when they are updated or by whom (the statfs and orphan logic of
//! the file system).
//!
//! ```text
//! master/                 (superblock.master_dir; ".." is itself)
//!   jindex/               (superblock.jindex) journal0 .. journalN-1
//!   per_node/             statfs_change0.., unlinked0..
//!   rindex                (superblock.rindex) one 64-byte entry per rgrp
//!   statfs                master totals
//! ```
//!
//! All system files are regular files with the SYSTEM and JDATA flags (their
//! data blocks, when not stuffed, are checksummed JData blocks), owned by
//! root, mode 0600; system directories are mode 0700. Journals are regular
//! SYSTEM files without JDATA: their blocks are raw journal blocks.
//!
//! - `statfs` (24 bytes): total, free, dinodes as u64 — the totals as of
//!   the last fold of every node's changes.
//! - `statfs_changeN` (24 bytes): total, free, dinodes as i64 — node N's
//!   changes not yet folded into `statfs`.
//! - `unlinkedN` (a multiple of 8 bytes): inode numbers (u64) of inodes node
//!   N unlinked while they were still open; 0 marks a free slot.

use super::block::{get_i64, get_u64, put_i64, put_u64};
use super::journal::StatfsDelta;
use super::{FormatError, Geometry, Result};

pub const JINDEX: &str = "jindex";
pub const PER_NODE: &str = "per_node";
pub const RINDEX: &str = "rindex";
pub const STATFS: &str = "statfs";

pub fn journal_name(jid: u32) -> String {
    format!("journal{jid}")
}
pub fn statfs_change_name(jid: u32) -> String {
    format!("statfs_change{jid}")
}
pub fn unlinked_name(jid: u32) -> String {
    format!("unlinked{jid}")
}

/// Size of the statfs and statfs_change files.
pub const STATFS_SIZE: usize = 24;

/// The master statfs totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatfsRecord {
    /// Data blocks in all resource groups.
    pub total: u64,
    pub free: u64,
    pub dinodes: u64,
}

impl StatfsRecord {
    pub fn encode(&self) -> [u8; STATFS_SIZE] {
        let mut b = [0u8; STATFS_SIZE];
        put_u64(&mut b, 0, self.total);
        put_u64(&mut b, 8, self.free);
        put_u64(&mut b, 16, self.dinodes);
        b
    }

    pub fn decode(blkno: u64, b: &[u8]) -> Result<StatfsRecord> {
        if b.len() != STATFS_SIZE {
            return Err(FormatError::field(
                blkno,
                "statfs file",
                "size",
                format!("{} bytes, expected {STATFS_SIZE}", b.len()),
            ));
        }
        let v = StatfsRecord {
            total: get_u64(b, 0),
            free: get_u64(b, 8),
            dinodes: get_u64(b, 16),
        };
        if v.free > v.total || v.dinodes > v.total {
            return Err(FormatError::field(
                blkno,
                "statfs file",
                "counts",
                format!(
                    "free {} / dinodes {} exceed total {}",
                    v.free, v.dinodes, v.total
                ),
            ));
        }
        Ok(v)
    }
}

/// Encodes a node's statfs changes (the `statfs_changeN` file).
pub fn encode_statfs_change(d: &StatfsDelta) -> [u8; STATFS_SIZE] {
    let mut b = [0u8; STATFS_SIZE];
    put_i64(&mut b, 0, d.total);
    put_i64(&mut b, 8, d.free);
    put_i64(&mut b, 16, d.dinodes);
    b
}

pub fn decode_statfs_change(blkno: u64, b: &[u8]) -> Result<StatfsDelta> {
    if b.len() != STATFS_SIZE {
        return Err(FormatError::field(
            blkno,
            "statfs_change file",
            "size",
            format!("{} bytes, expected {STATFS_SIZE}", b.len()),
        ));
    }
    Ok(StatfsDelta {
        total: get_i64(b, 0),
        free: get_i64(b, 8),
        dinodes: get_i64(b, 16),
    })
}

/// Encodes an unlinked list.
pub fn encode_unlinked(inodes: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; inodes.len() * 8];
    for (i, v) in inodes.iter().enumerate() {
        put_u64(&mut b, i * 8, *v);
    }
    b
}

/// Decodes an unlinked list; slots are 0 (free) or a valid inode address.
pub fn decode_unlinked(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Vec<u64>> {
    const U: &str = "unlinked file";
    if !b.len().is_multiple_of(8) {
        return Err(FormatError::field(
            blkno,
            U,
            "size",
            format!("{} bytes is not a multiple of 8", b.len()),
        ));
    }
    let v: Vec<u64> = b.chunks_exact(8).map(|c| get_u64(c, 0)).collect();
    if let Some((i, bad)) = v
        .iter()
        .enumerate()
        .find(|(_, &x)| x != 0 && !geo.is_valid_addr(x))
    {
        return Err(FormatError::field(
            blkno,
            U,
            "slot",
            format!("slot {i} holds {bad}, not an inode address"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::geo;

    #[test]
    fn round_trips() {
        let s = StatfsRecord {
            total: 100,
            free: 60,
            dinodes: 5,
        };
        assert_eq!(StatfsRecord::decode(1, &s.encode()).unwrap(), s);
        assert!(StatfsRecord::decode(
            1,
            &StatfsRecord {
                total: 1,
                free: 2,
                dinodes: 0
            }
            .encode()
        )
        .is_err());
        let d = StatfsDelta {
            total: -1,
            free: 5,
            dinodes: -7,
        };
        assert_eq!(
            decode_statfs_change(1, &encode_statfs_change(&d)).unwrap(),
            d
        );
        let g = geo(4096);
        let u = vec![0, 500, 0, 7000];
        assert_eq!(decode_unlinked(&g, 1, &encode_unlinked(&u)).unwrap(), u);
        assert!(decode_unlinked(&g, 1, &[1, 2, 3]).is_err());
        assert!(decode_unlinked(&g, 1, &encode_unlinked(&[3])).is_err());
    }
}
