//! A read-only structural check of a whole image: decodes every metadata
//! block reachable from the superblock and checks that the bitmaps say
//! exactly what the trees use. Tests use it on fresh images; it is the seed
//! of fsck.rdlmfs (which will add repair and the journal replay).
//!
//! Owns: the walk (superblock → rindex → rgrps and bitmaps; master and root
//! trees → dinodes → pointer trees, data, leaves, xattrs) and the cross
//! checks. May not touch: the device's contents (it never writes), or
//! anything a mount would need beyond reading.
//!
//! Checks: every block decodes (checksum, type, address, fs id, fields);
//! rgrps tile the space after the superblock and match the rindex; bitmap
//! counts match headers; every block a tree references is claimed once and
//! has that state in its bitmap, and every non-free bitmap entry is
//! referenced; directories have "." and "..", entry types match dinodes,
//! link and entry counts match, hashed directories' leaves sit where their
//! hashes say; system files exist for every journal; journals are
//! contiguous and have a valid head; statfs plus every node's changes
//! equals the bitmaps' totals. Limits: holds a map entry per used block, so
//! it is meant for test-sized images and fresh file systems of any size.

use blockdev::BlockDevice;
use rdlmfs::format::block::{decode_block, Header};
use rdlmfs::format::dinode::{self, indirect_ptrs, FileType};
use rdlmfs::format::dir::{self, DirEntry, Leaf};
use rdlmfs::format::io::{self, IoError};
use rdlmfs::format::journal::{lh_flags, Commit, LogHeader, StatfsDelta};
use rdlmfs::format::rgrp::{
    self, BitmapBlock, BlockState, RgrpBitmap, RgrpHeader, RindexEntry, StateCounts,
};
use rdlmfs::format::superblock::Superblock;
use rdlmfs::format::sysfile::{self, StatfsRecord};
use rdlmfs::format::{
    formal_ino, formal_matches, BlockType, Dinode, DinodeContent, Geometry, Indirect, JData,
    XattrBlock,
};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{device}: {detail}")]
    Inconsistent { device: String, detail: String },
}

/// A journal as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalInfo {
    pub jid: u32,
    pub dinode: u64,
    pub start: u64,
    pub blocks: u64,
    /// The valid record with the highest sequence: (position, seq, clean).
    pub head: Option<(u64, u64, bool)>,
}

/// What the check found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub superblock: Superblock,
    pub rindex: Vec<RindexEntry>,
    /// Totals over every bitmap.
    pub counts: StateCounts,
    pub statfs: StatfsRecord,
    pub root: Dinode,
    /// Entries of the root directory, "." and ".." included.
    pub root_entries: Vec<DirEntry>,
    /// Path (from the master directory) → inode, for every system file.
    pub system_files: BTreeMap<String, u64>,
    pub journals: Vec<JournalInfo>,
    pub dinodes: u64,
    pub blocks_referenced: u64,
}

/// Checks the image on `dev`.
pub fn verify(dev: &dyn BlockDevice) -> Result<VerifyReport, VerifyError> {
    let sb = io::read_superblock(dev)?;
    let geo = sb.geometry();
    let mut w = Walker {
        dev,
        geo,
        claims: HashMap::new(),
        links: HashMap::new(),
        nodes: HashMap::new(),
        dirs: HashMap::new(),
        system_files: BTreeMap::new(),
    };

    // The system tree.
    let master_entries = w.walk_dir(sb.master_dir, sb.master_dir, "")?;
    let find = |entries: &[DirEntry], name: &str, kind: FileType| {
        entries
            .iter()
            .find(|e| e.name == name.as_bytes() && e.kind == kind)
            .map(|e| e.addr())
    };
    let need = |what: &str, v: Option<u64>| {
        v.ok_or_else(|| VerifyError::Inconsistent {
            device: dev.name().to_string(),
            detail: format!("the master directory has no {what}"),
        })
    };
    let jindex = need(
        "jindex directory",
        find(&master_entries, sysfile::JINDEX, FileType::Directory),
    )?;
    let per_node = need(
        "per_node directory",
        find(&master_entries, sysfile::PER_NODE, FileType::Directory),
    )?;
    let rindex_ino = need(
        "rindex file",
        find(&master_entries, sysfile::RINDEX, FileType::Regular),
    )?;
    let statfs_ino = need(
        "statfs file",
        find(&master_entries, sysfile::STATFS, FileType::Regular),
    )?;
    w.check(jindex == sb.jindex, || {
        format!(
            "superblock jindex {} but the master directory says {jindex}",
            sb.jindex
        )
    })?;
    w.check(rindex_ino == sb.rindex, || {
        format!(
            "superblock rindex {} but the master directory says {rindex_ino}",
            sb.rindex
        )
    })?;

    let rindex_bytes = w.jdata_content(rindex_ino)?;
    let rindex = rgrp::decode_rindex(&geo, rindex_ino, &rindex_bytes).map_err(|e| w.fmt(e))?;
    w.check(rindex.len() == sb.rgrps as usize, || {
        format!(
            "superblock says {} resource groups, the rindex lists {}",
            sb.rgrps,
            rindex.len()
        )
    })?;

    let statfs =
        StatfsRecord::decode(statfs_ino, &w.jdata_content(statfs_ino)?).map_err(|e| w.fmt(e))?;

    // Journals and per-node files.
    let jentries = w.dir_entries_of(jindex)?;
    let pentries = w.dir_entries_of(per_node)?;
    w.check(jentries.len() == sb.journals as usize + 2, || {
        format!(
            "jindex has {} entries for {} journals",
            jentries.len().saturating_sub(2),
            sb.journals
        )
    })?;
    w.check(pentries.len() == 2 * sb.journals as usize + 2, || {
        format!(
            "per_node has {} entries for {} journals",
            pentries.len().saturating_sub(2),
            sb.journals
        )
    })?;
    let mut journals = Vec::new();
    let mut changes = StatfsDelta::default();
    for jid in 0..sb.journals {
        let jname = sysfile::journal_name(jid);
        let ino = need(
            &format!("jindex/{jname}"),
            find(&jentries, &jname, FileType::Regular),
        )?;
        journals.push(w.journal(jid, ino)?);
        let scn = sysfile::statfs_change_name(jid);
        let sc = need(
            &format!("per_node/{scn}"),
            find(&pentries, &scn, FileType::Regular),
        )?;
        let delta =
            sysfile::decode_statfs_change(sc, &w.jdata_content(sc)?).map_err(|e| w.fmt(e))?;
        changes.total += delta.total;
        changes.free += delta.free;
        changes.dinodes += delta.dinodes;
        let un = sysfile::unlinked_name(jid);
        let ul = need(
            &format!("per_node/{un}"),
            find(&pentries, &un, FileType::Regular),
        )?;
        sysfile::decode_unlinked(&geo, ul, &w.jdata_content(ul)?).map_err(|e| w.fmt(e))?;
    }

    // The user tree.
    let root_entries = w.walk_dir(sb.root_dir, sb.root_dir, "/")?;
    let root = w.dinode(sb.root_dir)?;

    // Link counts of non-directories.
    let links: Vec<(u64, u32)> = w.links.iter().map(|(&i, &n)| (i, n)).collect();
    for (ino, n) in links {
        let d = w.dinode(ino)?;
        if !d.is_dir() {
            w.check(d.nlink == n, || {
                format!(
                    "inode {ino} has nlink {} but {n} directory entries",
                    d.nlink
                )
            })?;
        }
    }

    // Resource groups and bitmaps against what the trees claim.
    let counts = w.rgrps(&sb, &rindex)?;
    let dev_name = dev.name().to_string();
    let expect = |field: &str, found: i128, want: i128| {
        if found == want {
            Ok(())
        } else {
            Err(VerifyError::Inconsistent {
                device: dev_name.clone(),
                detail: format!("statfs {field}: the statfs file plus node changes say {found}, the bitmaps {want}"),
            })
        }
    };
    let total: u64 = rindex.iter().map(|r| u64::from(r.data_len)).sum();
    expect(
        "total",
        i128::from(statfs.total) + i128::from(changes.total),
        i128::from(total),
    )?;
    expect(
        "free",
        i128::from(statfs.free) + i128::from(changes.free),
        i128::from(counts.free),
    )?;
    expect(
        "dinodes",
        i128::from(statfs.dinodes) + i128::from(changes.dinodes),
        i128::from(counts.dinodes),
    )?;

    Ok(VerifyReport {
        superblock: sb,
        rindex,
        counts,
        statfs,
        root,
        root_entries,
        system_files: w.system_files.clone(),
        journals,
        dinodes: w.nodes.len() as u64,
        blocks_referenced: w.claims.len() as u64,
    })
}

struct Walker<'a> {
    dev: &'a dyn BlockDevice,
    geo: Geometry,
    /// Block → (state it must have, the inode that uses it).
    claims: HashMap<u64, (BlockState, u64)>,
    /// Non-directory inode → directory entries naming it.
    links: HashMap<u64, u32>,
    nodes: HashMap<u64, Node>,
    /// Entries of every directory read so far.
    dirs: HashMap<u64, Vec<DirEntry>>,
    system_files: BTreeMap<String, u64>,
}

/// A dinode as loaded: the block, its data block map, the blocks charged
/// to it so far, and (for stuffed and JDATA files) its bytes.
struct Node {
    d: Dinode,
    data: Vec<(u64, u64)>,
    charged: u64,
    content: Option<Vec<u8>>,
}

impl Walker<'_> {
    fn bad(&self, detail: String) -> VerifyError {
        VerifyError::Inconsistent {
            device: self.dev.name().to_string(),
            detail,
        }
    }

    fn fmt(&self, e: rdlmfs::format::FormatError) -> VerifyError {
        VerifyError::Io(IoError::Format {
            device: self.dev.name().to_string(),
            source: e,
        })
    }

    fn check(&self, ok: bool, detail: impl FnOnce() -> String) -> Result<(), VerifyError> {
        if ok {
            Ok(())
        } else {
            Err(self.bad(detail()))
        }
    }

    fn claim(&mut self, addr: u64, state: BlockState, owner: u64) -> Result<(), VerifyError> {
        if let Some((_, other)) = self.claims.insert(addr, (state, owner)) {
            return Err(self.bad(format!(
                "block {addr} is used twice: by inode {other} and by inode {owner}"
            )));
        }
        Ok(())
    }

    fn read<T: rdlmfs::format::MetaBlock>(&self, addr: u64) -> Result<T, VerifyError> {
        Ok(io::read_meta::<T>(self.dev, &self.geo, addr)?)
    }

    /// Loads a dinode once: reads it, walks its tree and xattr chain,
    /// claims every block, and reads JDATA contents.
    fn load(&mut self, ino: u64) -> Result<(), VerifyError> {
        if self.nodes.contains_key(&ino) {
            return Ok(());
        }
        let d: Dinode = self.read(ino)?;
        self.claim(ino, BlockState::Dinode, ino)?;
        let mut data = Vec::new();
        let mut meta = 0u64;
        if let DinodeContent::Pointers(ptrs) = &d.content {
            for (slot, &p) in ptrs.iter().enumerate() {
                if p != 0 {
                    meta +=
                        self.subtree(ino, p, u32::from(d.height) - 1, slot as u64, &mut data)?;
                }
            }
        }
        let payload = dinode::data_payload(self.geo.block_size, d.is_jdata()) as u64;
        let mut content = d.stuffed_data().map(|b| b.to_vec());
        if d.is_jdata() && content.is_none() {
            let size = usize::try_from(d.size)
                .map_err(|_| self.bad(format!("inode {ino}: size {} too large to read", d.size)))?;
            content = Some(vec![0u8; size]);
        }
        for &(lblock, addr) in &data {
            // fallocate(KEEP_SIZE) leaves blocks past the end of regular files.
            let prealloc_ok = d.file_type() == Some(FileType::Regular) && !d.is_jdata();
            self.check(prealloc_ok || lblock.saturating_mul(payload) < d.size, || {
                format!("inode {ino}: block {addr} maps logical block {lblock}, past the end of file ({} bytes)", d.size)
            })?;
            self.claim(addr, BlockState::Data, ino)?;
            if d.is_jdata() {
                let jd: JData = self.read(addr)?;
                self.check(jd.owner == ino && jd.lblock == lblock, || {
                    format!("data block {addr} says inode {} block {}, expected inode {ino} block {lblock}", jd.owner, jd.lblock)
                })?;
                if let Some(buf) = content.as_mut() {
                    let from = (lblock * payload) as usize;
                    let n = (payload as usize).min(buf.len() - from);
                    buf[from..from + n].copy_from_slice(&jd.payload[..n]);
                }
            }
        }
        let mut charged = 1 + meta + data.len() as u64;
        let mut xa = d.xattr;
        let mut seen = HashSet::new();
        while xa != 0 {
            self.check(seen.insert(xa), || {
                format!("inode {ino}: xattr chain loops at block {xa}")
            })?;
            let x: XattrBlock = self.read(xa)?;
            self.check(x.owner == ino, || {
                format!("xattr block {xa} belongs to inode {}, not {ino}", x.owner)
            })?;
            self.claim(xa, BlockState::Data, ino)?;
            charged += 1;
            xa = x.next;
        }
        // A hashed directory also charges its leaves: checked when read.
        if !d.is_exhash() {
            self.check(d.blocks == charged, || {
                format!("inode {ino} charges {} blocks but uses {charged}", d.blocks)
            })?;
        }
        self.nodes.insert(
            ino,
            Node {
                d,
                data,
                charged,
                content,
            },
        );
        Ok(())
    }

    fn node(&mut self, ino: u64) -> Result<&Node, VerifyError> {
        self.load(ino)?;
        self.nodes
            .get(&ino)
            .ok_or_else(|| VerifyError::Inconsistent {
                device: self.dev.name().to_string(),
                detail: format!("inode {ino} vanished from the cache"),
            })
    }

    fn dinode(&mut self, ino: u64) -> Result<Dinode, VerifyError> {
        Ok(self.node(ino)?.d.clone())
    }

    /// The bytes of a stuffed or JDATA file.
    fn jdata_content(&mut self, ino: u64) -> Result<Vec<u8>, VerifyError> {
        match self.node(ino)?.content.clone() {
            Some(c) => Ok(c),
            None => Err(self.bad(format!("inode {ino} is neither stuffed nor JDATA"))),
        }
    }

    /// Walks the subtree under indirect block `p`; returns how many
    /// indirect blocks it claimed.
    fn subtree(
        &mut self,
        ino: u64,
        p: u64,
        level: u32,
        base: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<u64, VerifyError> {
        if level == 0 {
            out.push((base, p));
            return Ok(0);
        }
        let ind: Indirect = self.read(p)?;
        self.check(ind.owner == ino && ind.level == level, || {
            format!(
                "indirect block {p} says owner {} level {}, expected inode {ino} level {level}",
                ind.owner, ind.level
            )
        })?;
        self.claim(p, BlockState::Data, ino)?;
        let ip = indirect_ptrs(self.geo.block_size) as u64;
        let mut n = 1;
        for (slot, &c) in ind.ptrs.iter().enumerate() {
            if c != 0 {
                n += self.subtree(ino, c, level - 1, base * ip + slot as u64, out)?;
            }
        }
        Ok(n)
    }

    /// All entries of a directory (read once), checking a hashed one's
    /// table and leaves.
    fn dir_entries_of(&mut self, ino: u64) -> Result<Vec<DirEntry>, VerifyError> {
        if let Some(e) = self.dirs.get(&ino) {
            return Ok(e.clone());
        }
        let d = self.dinode(ino)?;
        self.check(d.is_dir(), || format!("inode {ino} is not a directory"))?;
        let entries = if !d.is_exhash() {
            let DinodeContent::Stuffed(body) = &d.content else {
                return Err(self.bad(format!("linear directory {ino} is not stuffed")));
            };
            dir::decode_entries(&self.geo, ino, "directory", body).map_err(|e| self.fmt(e))?
        } else {
            let table_bytes = self.jdata_content(ino)?;
            let table = dir::decode_table(&self.geo, ino, &table_bytes, d.depth)
                .map_err(|e| self.fmt(e))?;
            let depth = u32::from(d.depth);
            let mut entries = Vec::new();
            let mut leaves = 0u64;
            let mut slot = 0usize;
            while slot < table.len() {
                let addr = table[slot];
                let leaf: Leaf = self.read(addr)?;
                let ld = u32::from(leaf.depth);
                self.check(leaf.owner == ino && ld <= depth, || {
                    format!(
                        "leaf {addr} of directory {ino}: owner {} depth {} (table depth {depth})",
                        leaf.owner, leaf.depth
                    )
                })?;
                let span = 1usize << (depth - ld);
                self.check(slot.is_multiple_of(span) && table[slot..slot + span].iter().all(|&p| p == addr), || {
                    format!("directory {ino}: leaf {addr} of depth {ld} does not fill slots {slot}..{}", slot + span)
                })?;
                let mut chain = Some((addr, leaf));
                while let Some((a, l)) = chain.take() {
                    self.claim(a, BlockState::Data, ino)?;
                    leaves += 1;
                    for e in &l.entries {
                        self.check(dir::table_index(e.hash, d.depth) / span == slot / span, || {
                            format!(
                                "directory {ino}: {:?} in leaf {a} does not belong to slots {slot}..{}",
                                String::from_utf8_lossy(&e.name),
                                slot + span
                            )
                        })?;
                    }
                    entries.extend(l.entries);
                    if l.next != 0 {
                        let n: Leaf = self.read(l.next)?;
                        chain = Some((l.next, n));
                    }
                }
                slot += span;
            }
            let charged = self.node(ino)?.charged + leaves;
            self.check(d.blocks == charged, || {
                format!(
                    "directory {ino} charges {} blocks but uses {charged}",
                    d.blocks
                )
            })?;
            entries
        };
        self.check(entries.len() == d.entries as usize, || {
            format!(
                "directory {ino} says {} entries and holds {}",
                d.entries,
                entries.len()
            )
        })?;
        self.dirs.insert(ino, entries.clone());
        Ok(entries)
    }

    /// Walks a directory tree; returns the directory's entries.
    fn walk_dir(
        &mut self,
        ino: u64,
        parent: u64,
        path: &str,
    ) -> Result<Vec<DirEntry>, VerifyError> {
        let d = self.dinode(ino)?;
        self.check(d.is_dir(), || {
            format!("inode {ino} ({path}) is not a directory")
        })?;
        let entries = self.dir_entries_of(ino)?;
        let dot = entries.iter().find(|e| e.name == b".").map(|e| e.formal);
        let dotdot = entries.iter().find(|e| e.name == b"..").map(|e| e.addr());
        let me = formal_ino(ino, d.generation);
        self.check(dot == Some(me) && dotdot == Some(parent), || {
            format!("directory {ino} ({path}): \".\" is {dot:?} and \"..\" is {dotdot:?}, expected {ino} and {parent}")
        })?;
        let mut subdirs = 0;
        for e in &entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let child_path = if path.is_empty() || path.ends_with('/') {
                format!("{path}{name}")
            } else {
                format!("{path}/{name}")
            };
            let child = e.addr();
            let cd = self.dinode(child)?;
            self.check(formal_matches(e.formal, child, cd.generation), || {
                format!(
                    "{child_path}: entry names inode {:#x}, block {child} holds generation {}",
                    e.formal, cd.generation
                )
            })?;
            self.check(cd.file_type() == Some(e.kind), || {
                format!(
                    "{child_path}: entry says {:?}, inode {} is {:?}",
                    e.kind,
                    child,
                    cd.file_type()
                )
            })?;
            if !path.starts_with('/') {
                self.system_files.insert(child_path.clone(), child);
            }
            if e.kind == FileType::Directory {
                subdirs += 1;
                self.check(!self.links.contains_key(&child), || {
                    format!("directory {child} is linked twice")
                })?;
                self.links.insert(child, 1);
                self.walk_dir(child, ino, &child_path)?;
            } else {
                *self.links.entry(child).or_insert(0) += 1;
            }
        }
        self.check(d.nlink == 2 + subdirs, || {
            format!(
                "directory {ino} ({path}) has nlink {} but {subdirs} subdirectories",
                d.nlink
            )
        })?;
        Ok(entries)
    }

    /// Checks a journal file and finds its head.
    fn journal(&mut self, jid: u32, ino: u64) -> Result<JournalInfo, VerifyError> {
        let d = self.dinode(ino)?;
        self.check(
            !d.is_jdata() && d.flags.contains(rdlmfs::format::DinodeFlags::SYSTEM),
            || format!("journal{jid} (inode {ino}) must be a SYSTEM file without JDATA"),
        )?;
        let bs = u64::from(self.geo.block_size);
        let mut data = self.node(ino)?.data.clone();
        data.sort_unstable();
        let blocks = d.size / bs;
        let start = data.first().map_or(0, |x| x.1);
        self.check(
            d.size % bs == 0
                && data.len() as u64 == blocks
                && data
                    .iter()
                    .enumerate()
                    .all(|(i, &(lb, a))| lb == i as u64 && a == start + i as u64),
            || format!("journal{jid} (inode {ino}) is not one contiguous run of {blocks} blocks"),
        )?;
        let mut head: Option<(u64, u64, bool)> = None;
        let chunk = 1024u64;
        let mut buf = vec![0u8; (chunk * bs) as usize];
        let mut pos = 0u64;
        while pos < blocks {
            let n = chunk.min(blocks - pos);
            let b = &mut buf[..(n * bs) as usize];
            self.dev
                .read_at((start + pos) * bs, b)
                .map_err(IoError::from)?;
            for k in 0..n {
                let blk = &b[(k * bs) as usize..((k + 1) * bs) as usize];
                let addr = start + pos + k;
                let rec = match Header::peek(blk).map(|h| BlockType::from_u16(h.block_type)) {
                    Some(Some(BlockType::LogHeader)) => {
                        decode_block::<LogHeader>(&self.geo, addr, blk)
                            .ok()
                            .map(|h| (h.seq, h.flags & lh_flags::CLEAN != 0))
                    }
                    Some(Some(BlockType::Commit)) => decode_block::<Commit>(&self.geo, addr, blk)
                        .ok()
                        .map(|c| (c.seq, false)),
                    _ => None,
                };
                if let Some((seq, clean)) = rec {
                    if head.is_none_or(|(_, s, _)| seq > s) {
                        head = Some((pos + k, seq, clean));
                    }
                }
            }
            pos += n;
        }
        self.check(head.is_some(), || {
            format!("journal{jid} has no valid log header or commit")
        })?;
        Ok(JournalInfo {
            jid,
            dinode: ino,
            start,
            blocks,
            head,
        })
    }

    /// Reads every rgrp and compares its bitmap with the claims.
    fn rgrps(
        &mut self,
        sb: &Superblock,
        rindex: &[RindexEntry],
    ) -> Result<StateCounts, VerifyError> {
        let bs = self.geo.block_size;
        let mut total = StateCounts::default();
        let mut expected_addr = sb.blkno() + 1;
        let mut covered = 0u64;
        for (i, e) in rindex.iter().enumerate() {
            self.check(e.addr == expected_addr, || {
                format!("rgrp {i} starts at {} but the previous one ends at {expected_addr}: rgrps must tile the device", e.addr)
            })?;
            let h: RgrpHeader = self.read(e.addr)?;
            let next = rindex.get(i + 1).map_or(0, |n| n.addr);
            self.check(
                h.data0 == e.data0
                    && h.data_len == e.data_len
                    && h.flags == e.flags
                    && 1 + h.bitmap_blocks == e.length
                    && h.index == i as u32
                    && h.next == next,
                || format!("rgrp {i} at {}: header {h:?} disagrees with the rindex entry {e:?} (next {next})", e.addr),
            )?;
            let mut blocks = Vec::with_capacity(h.bitmap_blocks as usize);
            for k in 0..u64::from(h.bitmap_blocks) {
                blocks.push(self.read::<BitmapBlock>(e.addr + 1 + k)?);
            }
            let bm = RgrpBitmap::from_parts(bs, e.addr, &h, &blocks).map_err(|x| self.fmt(x))?;
            let c = bm.counts();
            self.check(
                c.free == u64::from(h.free) && c.dinodes == u64::from(h.dinodes) && c.unlinked == u64::from(h.unlinked),
                || format!("rgrp {i} at {}: header counts free {} dinodes {} unlinked {}, bitmap has {c:?}", e.addr, h.free, h.dinodes, h.unlinked),
            )?;
            for k in 0..h.data_len {
                let addr = e.data0 + u64::from(k);
                let state = bm.get(k).unwrap_or(BlockState::Free);
                let claimed = self.claims.get(&addr).map(|&(s, o)| (s, o));
                match (state, claimed) {
                    (BlockState::Free, None) => {}
                    (s, Some((c, _))) if s == c => covered += 1,
                    (BlockState::Unlinked, None) => {
                        let d: Dinode = self.read(addr)?;
                        self.check(d.nlink == 0, || {
                            format!(
                                "block {addr} is UNLINKED but its dinode has nlink {}",
                                d.nlink
                            )
                        })?;
                    }
                    (s, None) => {
                        return Err(self.bad(format!(
                            "block {addr} is {s:?} in rgrp {i}'s bitmap but nothing uses it"
                        )))
                    }
                    (s, Some((c, o))) => {
                        return Err(self.bad(format!(
                        "block {addr} is {s:?} in rgrp {i}'s bitmap but inode {o} uses it as {c:?}"
                    )))
                    }
                }
            }
            total.free += c.free;
            total.data += c.data;
            total.dinodes += c.dinodes;
            total.unlinked += c.unlinked;
            expected_addr = e.end();
        }
        self.check(expected_addr == sb.total_blocks, || {
            format!(
                "the last rgrp ends at {expected_addr}, the file system has {} blocks",
                sb.total_blocks
            )
        })?;
        self.check(covered == self.claims.len() as u64, || {
            format!(
                "{} used blocks lie outside every rgrp's data",
                self.claims.len() as u64 - covered
            )
        })?;
        Ok(total)
    }
}
