//! Writing a new file system onto a device from a [`Layout`].
//!
//! Owns: the order of writes and what each block of a fresh file system
//! contains. May not touch: the layout rules (`rdlmfs::format::layout`) or
//! the byte formats (the `rdlmfs::format` types encode themselves).
//!
//! Order, so that a half-made file system is never taken for a whole one:
//! 1. zero the first 64 KiB and the superblock block (erasing any old
//!    superblock and other file systems' signatures), flush;
//! 2. the journals: each journal's dinode and pointer tree, and one clean
//!    log header at position 0. The rest of a journal is *not* written: a
//!    stale block there carries another fs id (or no header at all) and can
//!    never validate as a record of this file system;
//! 3. the system files and the root directory;
//! 4. every resource group's header and bitmap blocks;
//! 5. flush; then the superblock with FUA, then flush again.
//!
//! Only metadata is written — on a 100 GiB device at 4 KiB blocks that is
//! a few MiB — so a sparse image stays sparse.

use crate::tree;
use crate::MkfsError;
use blockdev::BlockDevice;
use rand::RngCore;
use rdlmfs::format::block::{encode_block, MetaBlock};
use rdlmfs::format::dinode::{self, stuffed_capacity, DinodeFlags, FileType};
use rdlmfs::format::dir::{self, DirEntry, DirPlan, Leaf};
use rdlmfs::format::formal_ino;
use rdlmfs::format::journal::{lh_flags, LogHeader, StatfsDelta};
use rdlmfs::format::layout::{plan, Layout, MkfsOptions};
use rdlmfs::format::rgrp::{self, BitmapBlock, BlockState, RgrpBitmap, RgrpHeader, RindexEntry};
use rdlmfs::format::superblock::Superblock;
use rdlmfs::format::sysfile::{self, StatfsRecord};
use rdlmfs::format::{io, Dinode, DinodeContent, Geometry, JData, Timestamp, SB_OFFSET};
use std::collections::BTreeMap;

/// Everything that makes one mkfs run unique, chosen before any write so a
/// dry run can print it and tests can fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatParams {
    pub options: MkfsOptions,
    pub uuid: [u8; 16],
    /// Non-zero; carried by every metadata block.
    pub fs_id: u64,
    pub dir_hash_key: [u8; 16],
    pub created: Timestamp,
}

impl FormatParams {
    /// Fresh random identifiers and the current time.
    pub fn new(options: MkfsOptions) -> FormatParams {
        let mut rng = rand::thread_rng();
        let mut uuid = [0u8; 16];
        rng.fill_bytes(&mut uuid);
        // RFC 4122 version 4 (random), variant 1.
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        let mut fs_id = 0;
        while fs_id == 0 {
            fs_id = rng.next_u64();
        }
        let mut dir_hash_key = [0u8; 16];
        rng.fill_bytes(&mut dir_hash_key);
        FormatParams {
            options,
            uuid,
            fs_id,
            dir_hash_key,
            created: Timestamp::now(),
        }
    }
}

/// What the caller's progress callback is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: &'static str,
    pub done: u64,
    pub total: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct FormatReport {
    pub layout: Layout,
    pub superblock: Superblock,
    /// Bytes mkfs wrote (zeroing included).
    pub bytes_written: u64,
    pub write_calls: u64,
}

/// What one rgrp's bitmap records.
#[derive(Debug, Clone)]
enum Fill {
    /// A journal rgrp: the dinode, then tree and journal blocks, all used.
    Journal,
    /// These blocks in these states, the rest free.
    Marks(Vec<(u64, BlockState)>),
}

/// Largest single write; keeps memory bounded for big bitmaps and trees.
const MAX_WRITE: usize = 4 << 20;

/// Counts and performs writes, with the device's name in every error.
struct Out<'a> {
    dev: &'a dyn BlockDevice,
    geo: Geometry,
    bytes: u64,
    calls: u64,
}

impl Out<'_> {
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), MkfsError> {
        self.dev.write_at(offset, buf)?;
        self.bytes += buf.len() as u64;
        self.calls += 1;
        Ok(())
    }

    /// Writes encoded blocks, coalescing runs of consecutive addresses.
    fn write_blocks(&mut self, blocks: &BTreeMap<u64, Vec<u8>>) -> Result<(), MkfsError> {
        let bs = self.geo.bs();
        let mut run_start = 0u64;
        let mut run: Vec<u8> = Vec::new();
        for (&addr, data) in blocks {
            debug_assert_eq!(data.len(), bs);
            let contiguous = !run.is_empty() && run_start + (run.len() / bs) as u64 == addr;
            if !contiguous || run.len() >= MAX_WRITE {
                if !run.is_empty() {
                    self.write(run_start * bs as u64, &run)?;
                }
                run.clear();
                run_start = addr;
            }
            run.extend_from_slice(data);
        }
        if !run.is_empty() {
            self.write(run_start * bs as u64, &run)?;
        }
        Ok(())
    }

    fn encode<T: MetaBlock>(&self, v: &T, blkno: u64, what: &str) -> Result<Vec<u8>, MkfsError> {
        let mut buf = vec![0u8; self.geo.bs()];
        encode_block(v, &self.geo, blkno, &mut buf).map_err(|source| MkfsError::Encode {
            device: self.dev.name().to_string(),
            what: format!("{what} (block {blkno})"),
            source,
        })?;
        Ok(buf)
    }
}

/// Formats `dev` with `params`. Writes nothing unless the layout fits.
pub fn format(
    dev: &dyn BlockDevice,
    params: &FormatParams,
    progress: &mut dyn FnMut(Progress),
) -> Result<FormatReport, MkfsError> {
    let device = dev.name().to_string();
    let opts = &params.options;
    let bs = opts.block_size;
    io::check_block_size(dev, bs)?;
    if dev.capabilities().read_only {
        return Err(MkfsError::Geometry {
            device,
            detail: "the device is read-only".into(),
        });
    }
    assert!(params.fs_id != 0, "fs_id 0 is reserved");
    let layout = plan(dev.size(), opts).map_err(|source| MkfsError::Layout {
        device: device.clone(),
        source,
    })?;
    let geo = Geometry {
        block_size: bs,
        fs_id: params.fs_id,
        total_blocks: layout.total_blocks,
        hash_key: params.dir_hash_key,
    };
    tracing::info!(
        device = %device,
        block_size = bs,
        total_blocks = layout.total_blocks,
        rgrps = layout.rgrps.len(),
        journals = layout.journals.len(),
        "formatting"
    );
    let mut out = Out {
        dev,
        geo,
        bytes: 0,
        calls: 0,
    };

    // 1. Erase the old superblock and foreign signatures first.
    progress(Progress {
        stage: "erasing old signatures",
        done: 0,
        total: 1,
    });
    let zero = vec![0u8; (SB_OFFSET + u64::from(bs)) as usize];
    out.write(0, &zero)?;
    dev.flush()?;

    // What each rgrp's bitmap will say.
    let mut fills: Vec<Fill> = vec![Fill::Marks(Vec::new()); layout.rgrps.len()];
    let mut igeneration = vec![1u64; layout.rgrps.len()];
    // Each journal dinode's generation, by position in the layout (the
    // jindex entries name them by formal number).
    let mut journal_gens = Vec::with_capacity(layout.journals.len());

    // 2. Journals.
    let njournals = layout.journals.len() as u64;
    for (k, j) in layout.journals.iter().enumerate() {
        progress(Progress {
            stage: "journals",
            done: k as u64,
            total: njournals,
        });
        let mut next = j.dinode + 1;
        let start = j.start;
        let built = tree::build(bs, j.dinode, j.blocks, &|i| start + i, &mut || {
            let a = next;
            next += 1;
            a
        })
        .ok_or_else(|| MkfsError::Geometry {
            device: device.clone(),
            detail: format!("journal {} of {} blocks cannot be mapped", j.jid, j.blocks),
        })?;
        assert_eq!(
            next, j.start,
            "journal tree must end where the journal starts"
        );
        let generation = igeneration[j.rgrp];
        igeneration[j.rgrp] += 1;
        journal_gens.push(generation);
        let d = Dinode {
            nlink: 1,
            size: j.blocks * u64::from(bs),
            blocks: 1 + built.indirect.len() as u64 + j.blocks,
            height: built.height,
            content: DinodeContent::Pointers(built.dinode_ptrs.clone()),
            ..system_dinode(
                params,
                FileType::Regular,
                0o600,
                generation,
                DinodeFlags::SYSTEM,
            )
        };
        let mut blocks = BTreeMap::new();
        blocks.insert(j.dinode, out.encode(&d, j.dinode, "journal dinode")?);
        // Indirect blocks in batches: a 1 GiB journal at 512-byte blocks
        // has tens of thousands.
        for (addr, ind) in &built.indirect {
            blocks.insert(*addr, out.encode(ind, *addr, "journal indirect block")?);
            if blocks.len() * bs as usize >= MAX_WRITE {
                out.write_blocks(&blocks)?;
                blocks.clear();
            }
        }
        let lh = LogHeader {
            seq: 1,
            tail: 0,
            flags: lh_flags::CLEAN,
            jid: j.jid,
            time: params.created,
            statfs: StatfsDelta::default(),
        };
        blocks.insert(j.start, out.encode(&lh, j.start, "journal log header")?);
        out.write_blocks(&blocks)?;
        // The journal's rgrp is exactly: the dinode, then its tree and the
        // journal (see the layout), all in use.
        assert_eq!(layout.rgrps[j.rgrp].data0, j.dinode);
        assert_eq!(layout.rgrps[j.rgrp].end(), j.start + j.blocks);
        fills[j.rgrp] = Fill::Journal;
    }

    // 3. System files and the root directory.
    progress(Progress {
        stage: "system files",
        done: 0,
        total: 1,
    });
    let sys_index = layout.system_rgrp;
    let mut sys = SysBuilder {
        out: &out,
        params,
        next_extra: layout.system.extra_start,
        extra_end: layout.system.extra_start + layout.system.extra_blocks,
        blocks: BTreeMap::new(),
        marks: Vec::new(),
    };
    let s = &layout.system;
    let key = &params.dir_hash_key;
    // Dinode generations follow allocation order (the plan's order).
    let gen_base = igeneration[sys_index];
    let gen_of = |addr: u64| gen_base + (addr - layout.rgrps[sys_index].data0);
    // An entry naming a dinode of the system rgrp, by formal number.
    let ent = |ino, kind, name: &str| {
        DirEntry::new(key, formal_ino(ino, gen_of(ino)), kind, name.as_bytes())
    };
    igeneration[sys_index] = gen_of(s.extra_start);

    // The master directory and its subdirectories.
    sys.dir(
        s.master,
        gen_of(s.master),
        0o700,
        DinodeFlags::SYSTEM,
        4,
        vec![
            ent(s.master, FileType::Directory, "."),
            ent(s.master, FileType::Directory, ".."),
            ent(s.jindex, FileType::Directory, sysfile::JINDEX),
            ent(s.per_node, FileType::Directory, sysfile::PER_NODE),
            ent(s.rindex, FileType::Regular, sysfile::RINDEX),
            ent(s.statfs, FileType::Regular, sysfile::STATFS),
        ],
    )?;
    let mut jentries = vec![
        ent(s.jindex, FileType::Directory, "."),
        ent(s.master, FileType::Directory, ".."),
    ];
    for (j, generation) in layout.journals.iter().zip(&journal_gens) {
        jentries.push(DirEntry::new(
            key,
            formal_ino(j.dinode, *generation),
            FileType::Regular,
            sysfile::journal_name(j.jid).as_bytes(),
        ));
    }
    sys.dir(
        s.jindex,
        gen_of(s.jindex),
        0o700,
        DinodeFlags::SYSTEM,
        2,
        jentries,
    )?;
    let mut pentries = vec![
        ent(s.per_node, FileType::Directory, "."),
        ent(s.master, FileType::Directory, ".."),
    ];
    for (jid, (&sc, &ul)) in s.statfs_change.iter().zip(&s.unlinked).enumerate() {
        let jid = jid as u32;
        pentries.push(ent(
            sc,
            FileType::Regular,
            &sysfile::statfs_change_name(jid),
        ));
        pentries.push(ent(ul, FileType::Regular, &sysfile::unlinked_name(jid)));
        sys.file(
            sc,
            gen_of(sc),
            &sysfile::encode_statfs_change(&StatfsDelta::default()),
        )?;
        sys.file(ul, gen_of(ul), &[])?;
    }
    sys.dir(
        s.per_node,
        gen_of(s.per_node),
        0o700,
        DinodeFlags::SYSTEM,
        2,
        pentries,
    )?;

    // The rindex.
    let rindex: Vec<RindexEntry> = layout
        .rgrps
        .iter()
        .map(|r| RindexEntry {
            addr: r.addr,
            length: r.length() as u32,
            flags: r.flags,
            data0: r.data0,
            data_len: r.data_len as u32,
        })
        .collect();
    let rindex_bytes =
        rgrp::encode_rindex(&geo, s.rindex, &rindex).map_err(|source| MkfsError::Encode {
            device: device.clone(),
            what: "rindex".into(),
            source,
        })?;
    sys.file(s.rindex, gen_of(s.rindex), &rindex_bytes)?;

    // The root directory: empty, 0755, owned by root.
    sys.dir(
        s.root,
        gen_of(s.root),
        0o755,
        0,
        2,
        vec![
            ent(s.root, FileType::Directory, "."),
            ent(s.root, FileType::Directory, ".."),
        ],
    )?;

    // Bitmap marks of the system rgrp, then the statfs totals, which need
    // every count (the statfs file is stuffed, so it adds no blocks).
    let mut sys_marks = std::mem::take(&mut sys.marks);
    let sys_dinodes = [s.master, s.root, s.jindex, s.per_node, s.rindex, s.statfs]
        .into_iter()
        .chain(s.statfs_change.iter().copied())
        .chain(s.unlinked.iter().copied());
    for a in sys_dinodes {
        sys_marks.push((a, BlockState::Dinode));
    }
    fills[sys_index] = Fill::Marks(sys_marks);
    let mut statfs = StatfsRecord::default();
    for (r, f) in layout.rgrps.iter().zip(&fills) {
        statfs.total += r.data_len;
        match f {
            Fill::Journal => statfs.dinodes += 1,
            Fill::Marks(m) => {
                statfs.free += r.data_len - m.len() as u64;
                statfs.dinodes +=
                    m.iter().filter(|(_, st)| *st == BlockState::Dinode).count() as u64;
            }
        }
    }
    sys.file(s.statfs, gen_of(s.statfs), &statfs.encode())?;
    let sys_blocks = std::mem::take(&mut sys.blocks);
    drop(sys);
    out.write_blocks(&sys_blocks)?;

    // 4. Resource groups.
    let nrg = layout.rgrps.len();
    for (i, r) in layout.rgrps.iter().enumerate() {
        if i % 16 == 0 || i + 1 == nrg {
            progress(Progress {
                stage: "resource groups",
                done: i as u64,
                total: nrg as u64,
            });
        }
        let data_len = r.data_len as u32;
        let mut bm = RgrpBitmap::new(data_len);
        match &fills[i] {
            Fill::Journal => {
                bm.set(0, BlockState::Dinode);
                bm.set_range(1, data_len - 1, BlockState::Data);
            }
            Fill::Marks(m) => {
                for &(a, st) in m {
                    let rel = a.checked_sub(r.data0).and_then(|x| u32::try_from(x).ok());
                    let ok = rel.and_then(|x| bm.set(x, st)) == Some(BlockState::Free);
                    assert!(
                        ok,
                        "block {a} marked twice or outside rgrp {i} ({}..{})",
                        r.data0,
                        r.end()
                    );
                }
            }
        }
        let c = bm.counts();
        let (head_bits, parts) = bm.to_parts(bs);
        let header = RgrpHeader {
            flags: r.flags,
            bitmap_blocks: r.bitmap_blocks as u32,
            data0: r.data0,
            data_len,
            free: c.free as u32,
            dinodes: c.dinodes as u32,
            unlinked: c.unlinked as u32,
            igeneration: igeneration[i],
            version: 1,
            next: layout.rgrps.get(i + 1).map_or(0, |n| n.addr),
            index: i as u32,
            bits: head_bits,
        };
        let mut run = out.encode(&header, r.addr, "resource group header")?;
        let mut run_start = r.addr;
        for (k, bits) in parts.into_iter().enumerate() {
            let at = r.addr + 1 + k as u64;
            let b = BitmapBlock {
                rgrp: r.addr,
                index: k as u32 + 1,
                bits,
            };
            run.extend_from_slice(&out.encode(&b, at, "bitmap block")?);
            if run.len() >= MAX_WRITE {
                out.write(run_start * u64::from(bs), &run)?;
                run_start = at + 1;
                run.clear();
            }
        }
        if !run.is_empty() {
            out.write(run_start * u64::from(bs), &run)?;
        }
    }
    progress(Progress {
        stage: "resource groups",
        done: nrg as u64,
        total: nrg as u64,
    });

    // 5. Everything is down; now the superblock makes it a file system.
    progress(Progress {
        stage: "superblock",
        done: 0,
        total: 1,
    });
    dev.flush()?;
    let sb = Superblock {
        block_size: bs,
        total_blocks: layout.total_blocks,
        fs_id: params.fs_id,
        uuid: params.uuid,
        compat: 0,
        ro_compat: 0,
        incompat: 0,
        created: params.created,
        journals: opts.journals,
        root_dir: s.root,
        master_dir: s.master,
        rindex: s.rindex,
        jindex: s.jindex,
        rgrps: layout.rgrps.len() as u32,
        lock_proto: opts.lock_proto,
        dir_hash_key: params.dir_hash_key,
        lock_table: opts.lock_table.clone(),
        label: opts.label.clone(),
    };
    let mut buf = vec![0u8; bs as usize];
    sb.encode(&mut buf).map_err(|source| MkfsError::Encode {
        device: device.clone(),
        what: "superblock".into(),
        source,
    })?;
    dev.write_fua_at(layout.sb_block * u64::from(bs), &buf)?;
    out.bytes += buf.len() as u64;
    out.calls += 1;
    dev.flush()?;
    progress(Progress {
        stage: "done",
        done: 1,
        total: 1,
    });
    tracing::info!(device = %device, bytes = out.bytes, writes = out.calls, "formatted");
    Ok(FormatReport {
        layout,
        superblock: sb,
        bytes_written: out.bytes,
        write_calls: out.calls,
    })
}

/// A dinode of the system tree with everything but the content set.
fn system_dinode(
    params: &FormatParams,
    ft: FileType,
    perm: u32,
    generation: u64,
    flags: u32,
) -> Dinode {
    let bs = params.options.block_size;
    Dinode {
        mode: ft.mode_bits() | perm,
        uid: 0,
        gid: 0,
        nlink: 1,
        size: 0,
        blocks: 1,
        atime: params.created,
        mtime: params.created,
        ctime: params.created,
        flags: DinodeFlags(flags),
        generation,
        version: 1,
        rdev: 0,
        xattr: 0,
        goal: 0,
        height: 0,
        depth: 0,
        entries: 0,
        content: DinodeContent::Stuffed(vec![0; stuffed_capacity(bs)]),
    }
}

/// Builds the system files in the system rgrp: dinodes at their planned
/// addresses, extra blocks (JData, trees, leaves) bump-allocated from the
/// planned reserve.
struct SysBuilder<'a, 'd> {
    out: &'a Out<'d>,
    params: &'a FormatParams,
    next_extra: u64,
    extra_end: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
    /// Extra blocks used (state DATA); dinodes are marked by the caller.
    marks: Vec<(u64, BlockState)>,
}

impl SysBuilder<'_, '_> {
    fn bs(&self) -> u32 {
        self.params.options.block_size
    }

    fn alloc(&mut self) -> Result<u64, MkfsError> {
        if self.next_extra >= self.extra_end {
            return Err(MkfsError::Geometry {
                device: self.out.dev.name().to_string(),
                detail: format!(
                    "internal error: system files need more blocks than the layout reserved (up to block {})",
                    self.extra_end
                ),
            });
        }
        let a = self.next_extra;
        self.next_extra += 1;
        self.marks.push((a, BlockState::Data));
        Ok(a)
    }

    fn put<T: MetaBlock>(&mut self, addr: u64, v: &T, what: &str) -> Result<(), MkfsError> {
        let b = self.out.encode(v, addr, what)?;
        let old = self.blocks.insert(addr, b);
        assert!(old.is_none(), "system block {addr} written twice");
        Ok(())
    }

    /// Stores `bytes` as the JDATA content of `owner`: stuffed when it fits,
    /// else in JData blocks under a pointer tree. Returns (height, content,
    /// blocks beyond the dinode).
    fn jdata(&mut self, owner: u64, bytes: &[u8]) -> Result<(u8, DinodeContent, u64), MkfsError> {
        let bs = self.bs();
        let cap = stuffed_capacity(bs);
        if bytes.len() <= cap {
            let mut body = vec![0u8; cap];
            body[..bytes.len()].copy_from_slice(bytes);
            return Ok((0, DinodeContent::Stuffed(body), 0));
        }
        let payload = dinode::data_payload(bs, true);
        let mut data = Vec::new();
        for (lblock, chunk) in bytes.chunks(payload).enumerate() {
            let addr = self.alloc()?;
            let mut p = vec![0u8; payload];
            p[..chunk.len()].copy_from_slice(chunk);
            self.put(
                addr,
                &JData {
                    owner,
                    lblock: lblock as u64,
                    payload: p,
                },
                "system data block",
            )?;
            data.push(addr);
        }
        // Indirect addresses are taken inside the closure; collect them
        // first so allocation errors surface as errors.
        let shape = dinode::TreeShape::for_blocks(bs, data.len() as u64).ok_or_else(|| {
            MkfsError::Geometry {
                device: self.out.dev.name().to_string(),
                detail: format!(
                    "system file {owner} of {} bytes cannot be mapped",
                    bytes.len()
                ),
            }
        })?;
        let addrs = (0..shape.indirect_blocks())
            .map(|_| self.alloc())
            .collect::<Result<Vec<_>, _>>()?;
        let mut it = addrs.into_iter();
        let built = tree::build(
            bs,
            owner,
            data.len() as u64,
            &|i| data[i as usize],
            &mut || {
                it.next()
                    .expect("as many addresses as the shape has indirect blocks")
            },
        )
        .ok_or_else(|| MkfsError::Geometry {
            device: self.out.dev.name().to_string(),
            detail: format!("system file {owner} cannot be mapped"),
        })?;
        for (addr, ind) in &built.indirect {
            self.put(*addr, ind, "system indirect block")?;
        }
        let extra = data.len() as u64 + built.indirect.len() as u64;
        Ok((
            built.height,
            DinodeContent::Pointers(built.dinode_ptrs),
            extra,
        ))
    }

    /// A regular system file (SYSTEM | JDATA, 0600) holding `bytes`.
    fn file(&mut self, addr: u64, generation: u64, bytes: &[u8]) -> Result<(), MkfsError> {
        let (height, content, extra) = self.jdata(addr, bytes)?;
        let d = Dinode {
            size: bytes.len() as u64,
            blocks: 1 + extra,
            height,
            content,
            ..system_dinode(
                self.params,
                FileType::Regular,
                0o600,
                generation,
                DinodeFlags::SYSTEM | DinodeFlags::JDATA,
            )
        };
        self.put(addr, &d, "system file dinode")
    }

    /// A directory with `entries` ("." and ".." included), linear or
    /// hashed as [`dir::plan_dir`] decides.
    fn dir(
        &mut self,
        addr: u64,
        generation: u64,
        perm: u32,
        flags: u32,
        nlink: u32,
        entries: Vec<DirEntry>,
    ) -> Result<(), MkfsError> {
        let bs = self.bs();
        let count = entries.len() as u32;
        let base = system_dinode(self.params, FileType::Directory, perm, generation, flags);
        let dev = self.out.dev.name().to_string();
        let plan = dir::plan_dir(bs, entries).map_err(|detail| MkfsError::Geometry {
            device: dev.clone(),
            detail: format!("directory {addr}: {detail}"),
        })?;
        let d = match plan {
            DirPlan::Linear(entries) => {
                let mut body = vec![0u8; stuffed_capacity(bs)];
                dir::encode_entries(&self.out.geo, addr, "directory", &entries, &mut body)
                    .map_err(|source| MkfsError::Encode {
                        device: dev.clone(),
                        what: format!("directory {addr}"),
                        source,
                    })?;
                Dinode {
                    nlink,
                    size: stuffed_capacity(bs) as u64,
                    entries: count,
                    content: DinodeContent::Stuffed(body),
                    ..base
                }
            }
            DirPlan::Hashed {
                depth,
                leaves,
                slots,
            } => {
                let mut leaf_addrs = Vec::with_capacity(leaves.len());
                for l in leaves {
                    let la = self.alloc()?;
                    let leaf = Leaf {
                        owner: addr,
                        next: 0,
                        depth: u16::from(l.depth),
                        entries: l.entries,
                    };
                    self.put(la, &leaf, "directory leaf")?;
                    leaf_addrs.push(la);
                }
                let table: Vec<u64> = slots.iter().map(|&i| leaf_addrs[i]).collect();
                let (height, content, extra) = self.jdata(addr, &dir::encode_table(&table))?;
                Dinode {
                    nlink,
                    size: 8u64 << depth,
                    blocks: 1 + leaf_addrs.len() as u64 + extra,
                    flags: DinodeFlags(flags | DinodeFlags::EXHASH | DinodeFlags::JDATA),
                    height,
                    depth,
                    entries: count,
                    content,
                    ..base
                }
            }
        };
        self.put(addr, &d, "directory dinode")
    }
}
