//! Where mkfs puts everything: [`plan`] turns a device size and the mkfs
//! options into a [`Layout`] — superblock, journal resource groups, regular
//! resource groups, and the addresses of the system dinodes — or explains
//! why the options do not fit and what would.
//!
//! Owns: the placement rules, the defaults that depend on the device size,
//! and the option limits. May not touch: I/O or the contents of blocks (the
//! mkfs crate writes them from this plan).
//!
//! Order on disk:
//!
//! ```text
//! [0, 64 KiB)              reserved (mkfs zeroes it, erasing other signatures)
//! superblock block         at byte 65536
//! journal rgrp 0 .. J-1    header, bitmap, journal dinode, its indirect blocks, the journal
//! regular rgrp 0 .. R-1    the first one holds the system dinodes at its start
//! ```
//!
//! Every block after the superblock belongs to exactly one rgrp, so the
//! bitmaps account for all of them (fsck checks that nothing is both free
//! and referenced). The last rgrp may be shorter than the others; a tail
//! shorter than [`MIN_RGRP_BLOCKS`] is left out of the file system.

use super::dinode::{self, TreeShape};
use super::dir;
use super::rgrp::{self, RgrpFlags, RINDEX_ENTRY_SIZE};
use super::superblock::{check_label, LockProto, LockTable};
use super::{sb_block, Geometry, MAX_DIR_DEPTH, MAX_JOURNALS};

/// Journal size limits (MiB), as mkfs.gfs2 plus a smaller minimum for small
/// test devices.
pub const MIN_JOURNAL_MIB: u64 = 1;
pub const MAX_JOURNAL_MIB: u64 = 1024;
/// A journal must hold at least this many blocks, whatever its size in MiB:
/// the largest transaction has to fit with room to spare.
pub const MIN_JOURNAL_BLOCKS: u64 = 64;

/// Resource group size limits (MiB).
pub const MIN_RGRP_MIB: u64 = 1;
pub const MAX_RGRP_MIB: u64 = 2048;
pub const DEFAULT_RGRP_MIB: u64 = 256;
/// The smallest rgrp, header and bitmap included.
pub const MIN_RGRP_BLOCKS: u64 = 32;
/// Free blocks the system rgrp must keep after the system files, so a fresh
/// file system can create its first files.
pub const MIN_FREE_BLOCKS: u64 = 16;

const MIB: u64 = 1 << 20;

/// What the user asked mkfs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsOptions {
    pub block_size: u32,
    pub journals: u32,
    /// Size of each journal in MiB; `None`: chosen from the device size.
    pub journal_mib: Option<u64>,
    /// Size of each resource group in MiB; `None`: chosen from the device
    /// size.
    pub rgrp_mib: Option<u64>,
    pub lock_proto: LockProto,
    /// "cluster:fsname"; required with lock_dlm.
    pub lock_table: String,
    pub label: String,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            block_size: 4096,
            journals: 1,
            journal_mib: None,
            rgrp_mib: None,
            lock_proto: LockProto::Nolock,
            lock_table: String::new(),
            label: String::new(),
        }
    }
}

impl MkfsOptions {
    /// Checks the options on their own (not against a device).
    pub fn validate(&self) -> Result<(), LayoutError> {
        let inv = |detail: String| Err(LayoutError::Invalid { detail });
        if !Geometry::valid_block_size(self.block_size) {
            return inv(format!(
                "block size {} is not a power of two between 512 and 65536",
                self.block_size
            ));
        }
        if self.journals == 0 || self.journals > MAX_JOURNALS {
            return inv(format!(
                "{} journals: the number of journals must be 1..={MAX_JOURNALS}",
                self.journals
            ));
        }
        if let Some(j) = self.journal_mib {
            if !(MIN_JOURNAL_MIB..=MAX_JOURNAL_MIB).contains(&j) {
                return inv(format!(
                    "journal size {j} MiB is outside {MIN_JOURNAL_MIB}..={MAX_JOURNAL_MIB} MiB"
                ));
            }
            let blocks = j * MIB / u64::from(self.block_size);
            if blocks < MIN_JOURNAL_BLOCKS {
                return inv(format!(
                    "a journal of {j} MiB has only {blocks} blocks of {} bytes; a journal needs at least {MIN_JOURNAL_BLOCKS} (use -J {} or a smaller block size)",
                    self.block_size,
                    (MIN_JOURNAL_BLOCKS * u64::from(self.block_size)).div_ceil(MIB)
                ));
            }
        }
        if let Some(r) = self.rgrp_mib {
            if !(MIN_RGRP_MIB..=MAX_RGRP_MIB).contains(&r) {
                return inv(format!(
                    "resource group size {r} MiB is outside {MIN_RGRP_MIB}..={MAX_RGRP_MIB} MiB"
                ));
            }
            if r * MIB / u64::from(self.block_size) < MIN_RGRP_BLOCKS {
                return inv(format!(
                    "resource groups of {r} MiB hold fewer than {MIN_RGRP_BLOCKS} blocks of {} bytes",
                    self.block_size
                ));
            }
        }
        match self.lock_proto {
            LockProto::Dlm => {
                if self.lock_table.is_empty() {
                    return inv(
                        "lock_dlm needs a lock table: give -t cluster:fsname (or use -p lock_nolock)"
                            .into(),
                    );
                }
                LockTable::parse(&self.lock_table)
                    .map_err(|detail| LayoutError::Invalid { detail })?;
            }
            LockProto::Nolock => {
                if !self.lock_table.is_empty() {
                    LockTable::parse(&self.lock_table)
                        .map_err(|detail| LayoutError::Invalid { detail })?;
                }
            }
        }
        check_label(&self.label).map_err(|detail| LayoutError::Invalid { detail })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{detail}")]
    Invalid { detail: String },
    /// The device cannot hold what was asked; `detail` says what would fit.
    #[error("device of {} is too small: {detail}", human_bytes(*device_bytes))]
    TooSmall { device_bytes: u64, detail: String },
    #[error("device of {}: {detail}", human_bytes(*device_bytes))]
    TooLarge { device_bytes: u64, detail: String },
}

/// One resource group's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RgrpPlan {
    /// Address of the header.
    pub addr: u64,
    /// Bitmap blocks after the header.
    pub bitmap_blocks: u64,
    pub data0: u64,
    pub data_len: u64,
    pub flags: RgrpFlags,
}

impl RgrpPlan {
    pub fn end(&self) -> u64 {
        self.data0 + self.data_len
    }
    /// Header plus bitmap blocks.
    pub fn length(&self) -> u64 {
        1 + self.bitmap_blocks
    }
}

/// One journal's place: its rgrp holds the dinode at `dinode`, the pointer
/// tree's indirect blocks from `dinode + 1`, then the journal itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalPlan {
    pub jid: u32,
    /// Index of its rgrp in [`Layout::rgrps`].
    pub rgrp: usize,
    pub dinode: u64,
    pub tree: TreeShape,
    pub start: u64,
    pub blocks: u64,
}

/// The system dinodes, in allocation order at the start of the system rgrp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPlan {
    pub master: u64,
    pub root: u64,
    pub jindex: u64,
    pub per_node: u64,
    pub rindex: u64,
    pub statfs: u64,
    pub statfs_change: Vec<u64>,
    pub unlinked: Vec<u64>,
    /// First block for system data (rindex data and tree, directory leaves
    /// and tables) after the dinodes.
    pub extra_start: u64,
    /// Blocks reserved for that data (an upper bound; unused ones stay free).
    pub extra_blocks: u64,
}

/// Where everything goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub block_size: u32,
    pub device_bytes: u64,
    /// Blocks in the file system (the end of the last rgrp).
    pub total_blocks: u64,
    pub sb_block: u64,
    /// Bytes of each journal.
    pub journal_bytes: u64,
    /// Nominal bytes of each regular rgrp.
    pub rgrp_bytes: u64,
    /// Journal rgrps first, then regular rgrps.
    pub rgrps: Vec<RgrpPlan>,
    pub journals: Vec<JournalPlan>,
    /// Index in `rgrps` of the first regular rgrp, which holds the system
    /// files.
    pub system_rgrp: usize,
    pub system: SystemPlan,
}

impl Layout {
    pub fn fs_bytes(&self) -> u64 {
        self.total_blocks * u64::from(self.block_size)
    }
    /// Regular (non-journal) rgrps.
    pub fn regular_rgrps(&self) -> usize {
        self.rgrps.len() - self.system_rgrp
    }
}

/// Default journal size for a device, as mkfs.gfs2 chooses it.
pub fn default_journal_mib(device_bytes: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    match device_bytes {
        b if b < 512 * MIB => 8,
        b if b < 2 * GIB => 16,
        b if b < 8 * GIB => 32,
        b if b < 1024 * GIB => 64,
        b if b < 128 * 1024 * GIB => 128,
        _ => 1024,
    }
}

/// Blocks of one journal's rgrp for a journal of `jblocks`.
fn journal_rgrp_blocks(bs: u32, jblocks: u64) -> Option<(TreeShape, u64, u64)> {
    let tree = TreeShape::for_blocks(bs, jblocks)?;
    let data = 1 + tree.indirect_blocks() + jblocks;
    let bitmap = rgrp::bitmap_blocks_for(bs, data);
    Some((tree, data, 1 + bitmap + data))
}

/// An upper bound on the blocks system data needs beyond the dinodes.
fn system_extra_bound(bs: u32, journals: u64, rgrps: u64) -> u64 {
    let mut n = 0;
    // rindex: JData blocks and their tree.
    let rindex_bytes = rgrps * RINDEX_ENTRY_SIZE as u64;
    if rindex_bytes > dinode::stuffed_capacity(bs) as u64 {
        let data = rindex_bytes.div_ceil(dinode::data_payload(bs, true) as u64);
        n += data + TreeShape::for_blocks(bs, data).map_or(data, |t| t.indirect_blocks());
    }
    // jindex and per_node directories. Records are at most 32 bytes for
    // these names ("statfs_change255" is 16 bytes: header 16 + name 16).
    for entries in [journals + 2, 2 * journals + 2] {
        let bytes = entries * 32;
        if bytes <= dinode::stuffed_capacity(bs) as u64 {
            continue;
        }
        // Leaves are split by hash prefix, so they are not all full: allow
        // four times the tight count, plus a chain of one-sided splits.
        let leaves = 4 * bytes.div_ceil(dir::leaf_area(bs) as u64) + 2 * u64::from(MAX_DIR_DEPTH);
        let depth = 64 - (leaves * 16).leading_zeros() as u64;
        let table_bytes = 8u64 << depth.min(u64::from(MAX_DIR_DEPTH));
        let table = table_bytes.div_ceil(dinode::data_payload(bs, true) as u64);
        let tree = TreeShape::for_blocks(bs, table).map_or(table, |t| t.indirect_blocks());
        n += leaves + table + tree;
    }
    n
}

/// Computes the layout for a device of `device_bytes`.
pub fn plan(device_bytes: u64, opts: &MkfsOptions) -> Result<Layout, LayoutError> {
    plan_impl(device_bytes, opts, true)
}

/// `explain`: on a device that is too small, work out what would fit (by
/// planning alternatives with `explain` off).
fn plan_impl(device_bytes: u64, opts: &MkfsOptions, explain: bool) -> Result<Layout, LayoutError> {
    opts.validate()?;
    let bs = opts.block_size;
    let bsz = u64::from(bs);
    let device_blocks = device_bytes / bsz;
    let sb = sb_block(bs);
    let first = sb + 1;
    let journals = u64::from(opts.journals);

    let (journal_mib, explicit_journal) = match opts.journal_mib {
        Some(m) => (m, true),
        None => {
            // Keep the journals to at most a quarter of the device, so a small
            // device still gets a usable file system by default.
            let mut m = default_journal_mib(device_bytes);
            let cap = device_bytes / 4 / journals / MIB;
            let min_mib = (MIN_JOURNAL_BLOCKS * bsz)
                .div_ceil(MIB)
                .max(MIN_JOURNAL_MIB);
            if m > cap {
                m = cap.max(min_mib);
            }
            (m, false)
        }
    };
    let jblocks = journal_mib * MIB / bsz;
    let Some((_, _, jrg)) = journal_rgrp_blocks(bs, jblocks) else {
        return Err(LayoutError::Invalid {
            detail: format!("a journal of {journal_mib} MiB cannot be mapped"),
        });
    };

    let rgrp_mib = match opts.rgrp_mib {
        Some(r) => r,
        None => {
            let space = device_bytes.saturating_sub(journals * jrg * bsz);
            let mut r = DEFAULT_RGRP_MIB;
            let floor = (MIN_RGRP_BLOCKS * bsz).div_ceil(MIB).max(8);
            while r > floor && space / (r * MIB) < 8 {
                r /= 2;
            }
            // On huge devices grow them instead, so the rindex (64 bytes per
            // rgrp) stays small enough to sit in the first rgrp.
            while r < MAX_RGRP_MIB && space / (r * MIB) > 1 << 20 {
                r *= 2;
            }
            r.max(floor.min(DEFAULT_RGRP_MIB))
        }
    };
    let rg_blocks = (rgrp_mib * MIB / bsz).max(MIN_RGRP_BLOCKS);

    let sys_dinodes = 6 + 2 * journals;
    // The smallest regular area: one rgrp holding the system files and a
    // little free space.
    let need_system =
        |rgrps: u64| sys_dinodes + system_extra_bound(bs, journals, rgrps) + MIN_FREE_BLOCKS;
    let min_regular = |rgrps: u64| {
        let data = need_system(rgrps);
        1 + rgrp::bitmap_blocks_for(bs, data) + data
    };
    let needed = first + journals * jrg + min_regular(1);

    if device_blocks < needed {
        return Err(too_small(
            device_bytes,
            opts,
            journal_mib,
            explicit_journal,
            needed * bsz,
            explain,
        ));
    }

    // Journal rgrps.
    let mut rgrps = Vec::new();
    let mut plans = Vec::new();
    let mut pos = first;
    for jid in 0..opts.journals {
        let (tree, data, total) =
            journal_rgrp_blocks(bs, jblocks).ok_or_else(|| LayoutError::Invalid {
                detail: "journal tree".into(),
            })?;
        let bitmap = total - 1 - data;
        let r = RgrpPlan {
            addr: pos,
            bitmap_blocks: bitmap,
            data0: pos + 1 + bitmap,
            data_len: data,
            flags: RgrpFlags(RgrpFlags::JOURNAL | RgrpFlags::NOALLOC),
        };
        let dinode = r.data0;
        let start = dinode + 1 + tree.indirect_blocks();
        assert_eq!(start + jblocks, r.end(), "journal rgrp arithmetic");
        plans.push(JournalPlan {
            jid,
            rgrp: rgrps.len(),
            dinode,
            tree,
            start,
            blocks: jblocks,
        });
        rgrps.push(r);
        pos = r.end();
    }
    let system_rgrp = rgrps.len();

    // Regular rgrps.
    while pos < device_blocks {
        let left = device_blocks - pos;
        let len = if left < rg_blocks + MIN_RGRP_BLOCKS {
            // The tail joins the last rgrp rather than make a runt, as long
            // as that keeps the rgrp's data count in a u32.
            if left <= 2 * rg_blocks
                && rgrp::split_region(bs, left).is_some_and(|(_, d)| d <= u64::from(u32::MAX))
            {
                left
            } else {
                rg_blocks.min(left)
            }
        } else {
            rg_blocks
        };
        if len < MIN_RGRP_BLOCKS {
            break;
        }
        let Some((bitmap, data)) = rgrp::split_region(bs, len) else {
            break;
        };
        if data > u64::from(u32::MAX) {
            return Err(LayoutError::Invalid {
                detail: format!(
                    "resource groups of {rgrp_mib} MiB hold more than 2^32 blocks of {bs} bytes"
                ),
            });
        }
        rgrps.push(RgrpPlan {
            addr: pos,
            bitmap_blocks: bitmap,
            data0: pos + 1 + bitmap,
            data_len: data,
            flags: RgrpFlags(0),
        });
        pos += len;
    }
    if rgrps.len() > u32::MAX as usize {
        return Err(LayoutError::TooLarge {
            device_bytes,
            detail: format!(
                "{} resource groups exceed 2^32; use a larger -r",
                rgrps.len()
            ),
        });
    }
    let total_blocks = pos;
    if total_blocks > super::MAX_TOTAL_BLOCKS {
        return Err(LayoutError::TooLarge {
            device_bytes,
            detail: format!(
                "{total_blocks} blocks exceed the format's limit of 2^{} blocks; use a larger block size or a smaller device",
                super::FORMAL_ADDR_BITS
            ),
        });
    }

    // The system files at the start of the first regular rgrp.
    let Some(sys) = rgrps.get(system_rgrp).copied() else {
        return Err(too_small(
            device_bytes,
            opts,
            journal_mib,
            explicit_journal,
            needed * bsz,
            explain,
        ));
    };
    let need = need_system(rgrps.len() as u64);
    if sys.data_len < need {
        return Err(LayoutError::Invalid {
            detail: format!(
                "the first resource group has {} data blocks but the system files need {need}; use a larger resource group size (-r)",
                sys.data_len
            ),
        });
    }
    let mut next = sys.data0;
    let mut take = || {
        let a = next;
        next += 1;
        a
    };
    let master = take();
    let root = take();
    let jindex = take();
    let per_node = take();
    let rindex = take();
    let statfs = take();
    let statfs_change: Vec<u64> = (0..journals).map(|_| take()).collect();
    let unlinked: Vec<u64> = (0..journals).map(|_| take()).collect();
    let system = SystemPlan {
        master,
        root,
        jindex,
        per_node,
        rindex,
        statfs,
        statfs_change,
        unlinked,
        extra_start: next,
        extra_blocks: system_extra_bound(bs, journals, rgrps.len() as u64),
    };

    let layout = Layout {
        block_size: bs,
        device_bytes,
        total_blocks,
        sb_block: sb,
        journal_bytes: jblocks * bsz,
        rgrp_bytes: rg_blocks * bsz,
        rgrps,
        journals: plans,
        system_rgrp,
        system,
    };
    check_layout(&layout);
    Ok(layout)
}

/// Invariants of every plan: rgrps tile the space after the superblock
/// without gaps or overlaps, and each is sized exactly for its bitmap.
fn check_layout(l: &Layout) {
    let mut pos = l.sb_block + 1;
    for r in &l.rgrps {
        assert_eq!(r.addr, pos, "rgrps must tile the device");
        assert_eq!(r.data0, r.addr + 1 + r.bitmap_blocks);
        assert_eq!(
            rgrp::bitmap_blocks_for(l.block_size, r.data_len),
            r.bitmap_blocks
        );
        pos = r.end();
    }
    assert_eq!(pos, l.total_blocks);
    assert!(l.total_blocks * u64::from(l.block_size) <= l.device_bytes);
    let sys = &l.rgrps[l.system_rgrp];
    assert!(l.system.extra_start + l.system.extra_blocks <= sys.end());
}

fn too_small(
    device_bytes: u64,
    opts: &MkfsOptions,
    journal_mib: u64,
    explicit_journal: bool,
    needed_bytes: u64,
    explain: bool,
) -> LayoutError {
    let j = opts.journals;
    let mut detail = format!(
        "{j} journal(s) of {journal_mib} MiB with {}-byte blocks need at least {}",
        opts.block_size,
        human_bytes(needed_bytes)
    );
    if !explain {
        return LayoutError::TooSmall {
            device_bytes,
            detail,
        };
    }
    let fits = |journals: u32, mib: u64| {
        let o = MkfsOptions {
            journals,
            journal_mib: Some(mib),
            ..opts.clone()
        };
        plan_impl(device_bytes, &o, false).is_ok()
    };
    let mut hints = Vec::new();
    if let Some(k) = (1..j).rev().find(|&k| fits(k, journal_mib)) {
        hints.push(format!("-j {k} (journals of {journal_mib} MiB)"));
    }
    if let Some(m) = (MIN_JOURNAL_MIB..journal_mib).rev().find(|&m| fits(j, m)) {
        hints.push(format!("-J {m} ({j} journal(s))"));
    }
    if hints.is_empty() && j > 1 {
        if let Some(m) = (MIN_JOURNAL_MIB..=journal_mib).rev().find(|&m| fits(1, m)) {
            hints.push(format!("-j 1 -J {m}"));
        }
    }
    if hints.is_empty() {
        detail.push_str("; no journal size fits on this device");
        if !explicit_journal {
            detail.push_str(" (the journal size was chosen automatically)");
        }
    } else {
        detail.push_str(&format!("; what fits: {}", hints.join(", or ")));
    }
    LayoutError::TooSmall {
        device_bytes,
        detail,
    }
}

/// "1.50 GiB" style sizes for messages.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} bytes");
    }
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bs: u32, j: u32) -> MkfsOptions {
        MkfsOptions {
            block_size: bs,
            journals: j,
            ..MkfsOptions::default()
        }
    }

    #[test]
    fn plans_tile_the_device() {
        for bs in [512u32, 1024, 4096, 65536] {
            for size in [
                16 * MIB,
                64 * MIB,
                1 << 30,
                10 << 30,
                100 << 30,
                (1 << 40) + 12345,
            ] {
                for j in [1u32, 3] {
                    let l = match plan(size, &opts(bs, j)) {
                        Ok(l) => l,
                        Err(e) => panic!("bs {bs} size {size} j {j}: {e}"),
                    };
                    assert!(l.total_blocks * u64::from(bs) <= size);
                    // Nothing much is wasted at the end.
                    assert!(size / u64::from(bs) - l.total_blocks < MIN_RGRP_BLOCKS + 1);
                    assert_eq!(l.journals.len(), j as usize);
                    assert!(l.regular_rgrps() >= 1);
                }
            }
        }
    }

    #[test]
    fn too_small_says_what_fits() {
        let o = MkfsOptions {
            journals: 3,
            journal_mib: Some(32),
            ..MkfsOptions::default()
        };
        let e = plan(8 * MIB, &o).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        assert!(e.contains("3 journal(s) of 32 MiB"), "{e}");
        assert!(e.contains("-J "), "{e}");
        // 20 MiB holds one 8 MiB journal but not three.
        let o = MkfsOptions {
            journals: 3,
            journal_mib: Some(8),
            ..MkfsOptions::default()
        };
        let e = plan(20 * MIB, &o).unwrap_err().to_string();
        assert!(e.contains("-j 2") || e.contains("-j 1"), "{e}");
        let e = plan(70 * 1024, &MkfsOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small"), "{e}");
    }

    #[test]
    fn option_errors() {
        let bad = |o: MkfsOptions| plan(1 << 30, &o).unwrap_err().to_string();
        assert!(bad(MkfsOptions {
            block_size: 3000,
            ..Default::default()
        })
        .contains("power of two"));
        assert!(bad(MkfsOptions {
            journals: 0,
            ..Default::default()
        })
        .contains("journals"));
        assert!(bad(MkfsOptions {
            journal_mib: Some(2000),
            ..Default::default()
        })
        .contains("journal size"));
        assert!(bad(MkfsOptions {
            block_size: 65536,
            journal_mib: Some(1),
            ..Default::default()
        })
        .contains("at least 64"));
        assert!(bad(MkfsOptions {
            rgrp_mib: Some(4096),
            ..Default::default()
        })
        .contains("resource group size"));
        assert!(bad(MkfsOptions {
            lock_proto: LockProto::Dlm,
            ..Default::default()
        })
        .contains("-t"));
    }

    #[test]
    fn huge_devices_get_larger_rgrps() {
        let l = plan(1 << 52, &MkfsOptions::default()).unwrap();
        assert!(l.rgrp_bytes > 256 * MIB, "{}", l.rgrp_bytes);
        assert!(l.rgrps.len() <= (1 << 21) + 1);
    }

    #[test]
    fn defaults_scale() {
        let l = plan(100 << 30, &MkfsOptions::default()).unwrap();
        assert_eq!(l.journal_bytes, 64 * MIB);
        assert_eq!(l.rgrp_bytes, 256 * MIB);
        let l = plan(64 * MIB, &MkfsOptions::default()).unwrap();
        assert!(l.journal_bytes <= 16 * MIB);
        assert!(l.regular_rgrps() >= 4);
    }
}
