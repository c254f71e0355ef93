//! Extended attribute blocks: name/value pairs of one inode, in a chain of
//! blocks starting at the dinode's `xattr` pointer. POSIX ACLs are stored
//! here too, as `system.posix_acl_access` / `system.posix_acl_default`.
//!
//! Owns: the xattr block layout and its rules. May not touch: which
//! namespaces a caller may read or write (the FUSE layer decides), ACL
//! semantics, allocation.
//!
//! Block (type 12) body: 32 owner (u64 dinode), 40 next (u64, next xattr
//! block or 0), 48 count (u32), 52 reserved (12 bytes), 64.. entries packed
//! one after another, each 8-byte aligned, zero after the last:
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 1    | name_len (1..=255) |
//! | 1   | 1    | reserved |
//! | 2   | 2    | value_len |
//! | 4   | 4    | reserved |
//! | 8   | ..   | name (full, with namespace prefix: "user.x"), then value, then zero padding to 8 |
//!
//! Limit: one value fits in one block, so the largest value is
//! [`max_value_len`] (4023 bytes at 4 KiB blocks, 65463 at 64 KiB blocks).

use super::block::*;
use super::{FormatError, Geometry, Result, MAX_NAME_LEN};
use std::collections::HashSet;

pub const XATTR_HEADER_SIZE: usize = 64;
pub const XATTR_ENTRY_HEADER: usize = 8;
pub const EA_VERSION: u16 = 1;
const EA: &str = "xattr block";

/// Bytes one entry takes.
pub fn entry_len(name_len: usize, value_len: usize) -> usize {
    (XATTR_ENTRY_HEADER + name_len + value_len).div_ceil(8) * 8
}

/// Largest value that fits a block next to a one-byte name.
pub fn max_value_len(bs: u32) -> usize {
    (bs as usize - XATTR_HEADER_SIZE - XATTR_ENTRY_HEADER - 1).min(usize::from(u16::MAX))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrEntry {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrBlock {
    pub owner: u64,
    pub next: u64,
    pub entries: Vec<XattrEntry>,
}

impl XattrBlock {
    /// Whether `entries` fit one block.
    pub fn fits(bs: u32, entries: &[XattrEntry]) -> bool {
        entries
            .iter()
            .map(|e| entry_len(e.name.len(), e.value.len()))
            .sum::<usize>()
            <= bs as usize - XATTR_HEADER_SIZE
    }

    fn validate(&self, geo: &Geometry, blkno: u64) -> Result<()> {
        let bad = |field, detail: String| Err(FormatError::field(blkno, EA, field, detail));
        if !geo.is_valid_addr(self.owner) {
            return bad("owner", format!("{} is not a block address", self.owner));
        }
        if self.next != 0 && !geo.is_valid_addr(self.next) {
            return bad("next", format!("{} is not a block address", self.next));
        }
        let mut seen = HashSet::new();
        for e in &self.entries {
            let show = String::from_utf8_lossy(&e.name).into_owned();
            if e.name.is_empty() || e.name.len() > MAX_NAME_LEN || e.name.contains(&0) {
                return bad("name", format!("{show:?} is not a valid attribute name"));
            }
            if e.value.len() > usize::from(u16::MAX) {
                return bad(
                    "value",
                    format!("{show:?}: value of {} bytes", e.value.len()),
                );
            }
            if !seen.insert(&e.name) {
                return bad("name", format!("{show:?} appears twice"));
            }
        }
        if !Self::fits(geo.block_size, &self.entries) {
            return bad("entries", "do not fit one block".into());
        }
        Ok(())
    }
}

impl MetaBlock for XattrBlock {
    const TYPE: BlockType = BlockType::Xattr;
    const VERSION: u16 = EA_VERSION;

    fn encode_body(&self, geo: &Geometry, blkno: u64, b: &mut [u8]) -> Result<()> {
        self.validate(geo, blkno)?;
        put_u64(b, 32, self.owner);
        put_u64(b, 40, self.next);
        put_u32(b, 48, self.entries.len() as u32);
        let mut off = XATTR_HEADER_SIZE;
        for e in &self.entries {
            b[off] = e.name.len() as u8;
            put_u16(b, off + 2, e.value.len() as u16);
            let n = off + XATTR_ENTRY_HEADER;
            b[n..n + e.name.len()].copy_from_slice(&e.name);
            b[n + e.name.len()..n + e.name.len() + e.value.len()].copy_from_slice(&e.value);
            off += entry_len(e.name.len(), e.value.len());
        }
        Ok(())
    }

    fn decode_body(geo: &Geometry, blkno: u64, b: &[u8]) -> Result<Self> {
        check_zero(b, 52..XATTR_HEADER_SIZE, blkno, EA, "reserved")?;
        let count = get_u32(b, 48) as usize;
        let mut entries = Vec::new();
        let mut off = XATTR_HEADER_SIZE;
        for i in 0..count {
            if b.len() - off < XATTR_ENTRY_HEADER {
                return Err(FormatError::field(
                    blkno,
                    EA,
                    "count",
                    format!("{count} entries but entry {i} starts past the end"),
                ));
            }
            let name_len = usize::from(b[off]);
            let value_len = usize::from(get_u16(b, off + 2));
            if b[off + 1] != 0 || get_u32(b, off + 4) != 0 {
                return Err(FormatError::field(
                    blkno,
                    EA,
                    "entry",
                    format!("entry {i}: reserved bytes are not zero"),
                ));
            }
            let len = entry_len(name_len, value_len);
            if len > b.len() - off {
                return Err(FormatError::field(
                    blkno,
                    EA,
                    "entry",
                    format!("entry {i}: {name_len}-byte name and {value_len}-byte value run past the block"),
                ));
            }
            let n = off + XATTR_ENTRY_HEADER;
            let end = n + name_len + value_len;
            if b[end..off + len].iter().any(|&x| x != 0) {
                return Err(FormatError::field(
                    blkno,
                    EA,
                    "entry",
                    format!("entry {i}: padding is not zero"),
                ));
            }
            entries.push(XattrEntry {
                name: b[n..n + name_len].to_vec(),
                value: b[n + name_len..end].to_vec(),
            });
            off += len;
        }
        check_zero(b, off..b.len(), blkno, EA, "unused space")?;
        let v = XattrBlock {
            owner: get_u64(b, 32),
            next: get_u64(b, 40),
            entries,
        };
        v.validate(geo, blkno)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::*;
    use proptest::prelude::*;

    fn entries() -> impl Strategy<Value = Vec<XattrEntry>> {
        proptest::collection::hash_map(
            proptest::collection::vec(1u8..=255, 1..40),
            proptest::collection::vec(any::<u8>(), 0..300),
            0..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, value)| XattrEntry { name, value })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(mut es in entries(), bs_shift in 9u32..=13, next in prop_oneof![Just(0u64), 200u64..999]) {
            let bs = 1u32 << bs_shift;
            let g = geo(bs);
            while !XattrBlock::fits(bs, &es) { es.pop(); }
            let v = XattrBlock { owner: 555, next, entries: es };
            let enc = encode_to_vec(&v, &g, 600).unwrap();
            prop_assert_eq!(&decode_block::<XattrBlock>(&g, 600, &enc).unwrap(), &v);
            assert_bit_flips_fail::<XattrBlock>(&g, 600, &enc, 11);
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let g = geo(512);
            decode_sealed_garbage::<XattrBlock>(&g, 400, &body);
            assert_garbage_fails::<XattrBlock>(&g, 400, &body);
        }
    }

    #[test]
    fn largest_value_fits() {
        for bs in [512u32, 4096, 65536] {
            let g = geo(bs);
            let v = XattrBlock {
                owner: 555,
                next: 0,
                entries: vec![XattrEntry {
                    name: b"u".to_vec(),
                    value: vec![7; max_value_len(bs)],
                }],
            };
            let enc = encode_to_vec(&v, &g, 600).unwrap();
            assert_eq!(decode_block::<XattrBlock>(&g, 600, &enc).unwrap(), v);
        }
    }
}
