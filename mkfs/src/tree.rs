//! Building pointer trees for files whose data blocks are already placed:
//! mkfs uses it for journals and multi-block system files; a journal-adding
//! tool can reuse it. Reading trees back is in [`crate::verify`].
//!
//! Owns: the bottom-up construction of a uniform-height tree (level-1
//! indirect blocks point at data, each higher level at the one below, the
//! dinode at the top level). May not touch: allocation policy (the caller
//! hands in the addresses for indirect blocks) or I/O.

use rdlmfs::format::dinode::{dinode_ptrs, indirect_ptrs, TreeShape};
use rdlmfs::format::Indirect;

/// A built tree: the dinode's height and pointers, and the indirect blocks
/// with their addresses, bottom level first, in the order their addresses
/// were taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltTree {
    pub height: u8,
    pub dinode_ptrs: Vec<u64>,
    pub indirect: Vec<(u64, Indirect)>,
}

/// Builds the tree of `owner` over data blocks `data(0) .. data(n-1)`
/// (logical blocks 0..n in order), taking indirect block addresses from
/// `next_addr` — exactly `TreeShape::for_blocks(bs, n).indirect_blocks()`
/// of them. `None` if `n` needs a taller tree than the format allows.
pub fn build(
    bs: u32,
    owner: u64,
    n: u64,
    data: &dyn Fn(u64) -> u64,
    next_addr: &mut dyn FnMut() -> u64,
) -> Option<BuiltTree> {
    let shape = TreeShape::for_blocks(bs, n)?;
    let ip = indirect_ptrs(bs);
    let mut level: Vec<u64> = (0..n).map(data).collect();
    let mut indirect = Vec::with_capacity(shape.indirect_blocks() as usize);
    for lvl in 1..u32::from(shape.height) {
        let mut up = Vec::with_capacity(level.len().div_ceil(ip));
        for chunk in level.chunks(ip) {
            let mut ptrs = vec![0u64; ip];
            ptrs[..chunk.len()].copy_from_slice(chunk);
            let addr = next_addr();
            indirect.push((
                addr,
                Indirect {
                    owner,
                    level: lvl,
                    ptrs,
                },
            ));
            up.push(addr);
        }
        level = up;
    }
    let dp = dinode_ptrs(bs);
    assert!(
        level.len() <= dp,
        "tree shape left more top pointers than a dinode holds"
    );
    assert_eq!(indirect.len() as u64, shape.indirect_blocks());
    level.resize(dp, 0);
    Some(BuiltTree {
        height: shape.height,
        dinode_ptrs: level,
        indirect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdlmfs::format::dinode::pointer_path;
    use std::collections::HashMap;

    /// Following `pointer_path` through the built tree reaches each data
    /// block.
    #[test]
    fn paths_reach_every_block() {
        for (bs, n) in [
            (512u32, 1u64),
            (512, 44),
            (512, 45),
            (512, 5000),
            (4096, 32768),
            (4096, 492),
        ] {
            let mut next = 1_000_000u64;
            let t = build(bs, 7, n, &|i| 500 + i, &mut || {
                next += 1;
                next
            })
            .unwrap();
            let by_addr: HashMap<u64, &Indirect> =
                t.indirect.iter().map(|(a, i)| (*a, i)).collect();
            for lb in (0..n).step_by((n as usize / 50).max(1)) {
                let path = pointer_path(bs, t.height, lb).unwrap();
                let mut p = t.dinode_ptrs[path[0]];
                for (depth, &slot) in path.iter().enumerate().skip(1) {
                    let ind = by_addr[&p];
                    assert_eq!(ind.level as usize, t.height as usize - depth);
                    p = ind.ptrs[slot];
                }
                assert_eq!(p, 500 + lb, "bs {bs} n {n} lblock {lb}");
            }
        }
    }
}
