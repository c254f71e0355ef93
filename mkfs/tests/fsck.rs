//! fsck.rdlmfs against images made by `rdlmfs_mkfs::format`, each given
//! files through the format module and then corrupted on purpose: every
//! corruption is reported by `-n` (which writes nothing), repaired by `-y`
//! (exit 1), and a second `-n` finds the image clean — which the stricter
//! `verify` confirms. Plus the exit codes for clean, foreign, truncated,
//! cluster and misused invocations.

mod common;

use blockdev::{BlockDevice, FaultDevice, FaultRule, FileDevice, FileOptions, Op};
use common::*;
use rdlmfs::format::dinode::{dinode_ptrs, stuffed_capacity, FileType};
use rdlmfs::format::dir::{self, DirEntry};
use rdlmfs::format::io::{read_meta, read_superblock, write_meta};
use rdlmfs::format::journal::LogHeader;
use rdlmfs::format::layout::MkfsOptions;
use rdlmfs::format::rgrp::{BitmapBlock, BlockState, RgrpBitmap, RgrpHeader, RindexEntry};
use rdlmfs::format::superblock::LockProto;
use rdlmfs::format::sysfile::StatfsRecord;
use rdlmfs::format::{
    Dinode, DinodeContent, DinodeFlags, Geometry, RgrpFlags, Superblock, Timestamp,
};
use rdlmfs_mkfs::fsck::{self, FsckError, FsckOptions};
use rdlmfs_mkfs::verify::verify;
use rdlmfs_mkfs::{format, FormatParams};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fsck(args: &[&str], p: &Path) -> (i32, String) {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_fsck-rdlmfs"))
            .args(args)
            .arg(p),
        T,
    );
    let (o, e) = text(&out);
    (out.status.code().unwrap_or(-1), format!("{o}{e}"))
}

fn open(p: &Path) -> FileDevice {
    FileDevice::open(p, FileOptions::default()).expect("open image")
}

/// An image with the file system's handles for building and breaking it.
struct Fs {
    dev: FileDevice,
    sb: Superblock,
    geo: Geometry,
    rindex: Vec<RindexEntry>,
    statfs: u64,
}

impl Fs {
    fn open(p: &Path) -> Fs {
        let dev = open(p);
        let sb = read_superblock(&dev).expect("superblock");
        let v = verify(&dev).expect("verify before corrupting");
        Fs {
            geo: sb.geometry(),
            rindex: v.rindex.clone(),
            statfs: v.system_files["statfs"],
            sb,
            dev,
        }
    }

    fn bs(&self) -> u64 {
        u64::from(self.geo.block_size)
    }

    fn rgrp_of(&self, addr: u64) -> RindexEntry {
        *self
            .rindex
            .iter()
            .find(|e| e.contains_data(addr))
            .expect("block in an rgrp")
    }

    fn bitmap(&self, e: &RindexEntry) -> (RgrpHeader, RgrpBitmap) {
        let h: RgrpHeader = read_meta(&self.dev, &self.geo, e.addr).unwrap();
        let blocks: Vec<BitmapBlock> = (0..u64::from(h.bitmap_blocks))
            .map(|k| read_meta(&self.dev, &self.geo, e.addr + 1 + k).unwrap())
            .collect();
        let bm = RgrpBitmap::from_parts(self.geo.block_size, e.addr, &h, &blocks).unwrap();
        (h, bm)
    }

    fn state(&self, addr: u64) -> BlockState {
        let e = self.rgrp_of(addr);
        self.bitmap(&e).1.get((addr - e.data0) as u32).unwrap()
    }

    /// Sets a block's bitmap state; with `consistent`, also the rgrp's
    /// counts and statfs (a legitimate allocation), else only the bit.
    fn set_state(&self, addr: u64, s: BlockState, consistent: bool) {
        let e = self.rgrp_of(addr);
        let (mut h, mut bm) = self.bitmap(&e);
        let before = bm.counts();
        bm.set((addr - e.data0) as u32, s);
        let after = bm.counts();
        let (head, parts) = bm.to_parts(self.geo.block_size);
        h.bits = head;
        if consistent {
            h.free = after.free as u32;
            h.dinodes = after.dinodes as u32;
            h.unlinked = after.unlinked as u32;
            let mut sd = self.dinode(self.statfs);
            let DinodeContent::Stuffed(body) = &mut sd.content else {
                panic!("statfs not stuffed")
            };
            let mut r = StatfsRecord::decode(self.statfs, &body[..24]).unwrap();
            r.free = r.free + after.free - before.free;
            r.dinodes = r.dinodes + after.dinodes - before.dinodes;
            body[..24].copy_from_slice(&r.encode());
            self.put(self.statfs, &sd);
        }
        write_meta(&self.dev, &self.geo, e.addr, &h).unwrap();
        for (k, bits) in parts.into_iter().enumerate() {
            let b = BitmapBlock {
                rgrp: e.addr,
                index: k as u32 + 1,
                bits,
            };
            write_meta(&self.dev, &self.geo, e.addr + 1 + k as u64, &b).unwrap();
        }
    }

    /// A free block of a regular rgrp (not allocated).
    fn free_block(&self) -> u64 {
        let e = self
            .rindex
            .iter()
            .find(|e| e.flags.0 & RgrpFlags::JOURNAL == 0)
            .expect("a regular rgrp");
        let (_, bm) = self.bitmap(e);
        e.data0 + u64::from(bm.find_next_free(0).expect("a free block"))
    }

    fn alloc(&self, s: BlockState) -> u64 {
        let a = self.free_block();
        self.set_state(a, s, true);
        a
    }

    fn dinode(&self, ino: u64) -> Dinode {
        read_meta(&self.dev, &self.geo, ino).unwrap()
    }

    fn put(&self, ino: u64, d: &Dinode) {
        write_meta(&self.dev, &self.geo, ino, d).unwrap();
    }

    /// Adds `name` → `ino` to a linear directory. A dinode at `ino` is
    /// named by its formal number; any other block by its bare address
    /// (what a corrupt entry would hold).
    fn add_entry(&self, dir_ino: u64, name: &str, ino: u64, kind: FileType) {
        let formal = read_meta::<Dinode>(&self.dev, &self.geo, ino)
            .map_or(ino, |t| rdlmfs::format::formal_ino(ino, t.generation));
        let mut d = self.dinode(dir_ino);
        let DinodeContent::Stuffed(body) = &mut d.content else {
            panic!("root not linear")
        };
        let mut es = dir::decode_entries(&self.geo, dir_ino, "directory", body).unwrap();
        es.push(DirEntry::new(
            &self.geo.hash_key,
            formal,
            kind,
            name.as_bytes(),
        ));
        dir::encode_entries(&self.geo, dir_ino, "directory", &es, body).unwrap();
        d.entries += 1;
        self.put(dir_ino, &d);
    }

    /// A regular file of height 1 over `data` (written with a pattern
    /// unless already allocated), not linked anywhere.
    fn new_file(&self, data: &[u64]) -> u64 {
        let ino = self.alloc(BlockState::Dinode);
        let mut ptrs = vec![0u64; dinode_ptrs(self.geo.block_size)];
        for (i, &a) in data.iter().enumerate() {
            ptrs[i] = a;
        }
        let d = Dinode {
            mode: FileType::Regular.mode_bits() | 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: data.len() as u64 * self.bs(),
            blocks: 1 + data.len() as u64,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            flags: DinodeFlags(0),
            generation: 1,
            version: 1,
            rdev: 0,
            xattr: 0,
            goal: 0,
            height: 1,
            depth: 0,
            entries: 0,
            content: DinodeContent::Pointers(ptrs),
        };
        self.put(ino, &d);
        ino
    }

    fn data_blocks(&self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let a = self.alloc(BlockState::Data);
                let buf = vec![0xA0 + i as u8; self.bs() as usize];
                self.dev.write_at(a * self.bs(), &buf).unwrap();
                a
            })
            .collect()
    }

    /// An empty subdirectory `name` of the root, link counts kept right.
    fn add_dir(&self, name: &str) -> u64 {
        let ino = self.alloc(BlockState::Dinode);
        let root = self.sb.root_dir;
        let cap = stuffed_capacity(self.geo.block_size);
        let mut body = vec![0u8; cap];
        // A copy of the root's dinode, so the same generation.
        let mut d = self.dinode(root);
        let formal = |a| rdlmfs::format::formal_ino(a, d.generation);
        let es = vec![
            DirEntry::new(&self.geo.hash_key, formal(ino), FileType::Directory, b"."),
            DirEntry::new(&self.geo.hash_key, formal(root), FileType::Directory, b".."),
        ];
        dir::encode_entries(&self.geo, ino, "directory", &es, &mut body).unwrap();
        d.mode = FileType::Directory.mode_bits() | 0o755;
        d.size = cap as u64;
        d.blocks = 1;
        d.entries = 2;
        d.content = DinodeContent::Stuffed(body);
        self.put(ino, &d);
        self.add_entry(root, name, ino, FileType::Directory);
        let mut r = self.dinode(root);
        r.nlink += 1;
        self.put(root, &r);
        ino
    }

    fn add_file(&self, name: &str, data: &[u64]) -> u64 {
        let ino = self.new_file(data);
        self.add_entry(self.sb.root_dir, name, ino, FileType::Regular);
        ino
    }
}

/// A fresh image with files "a" (2 blocks) and "b" (1 block) in the root,
/// checked clean by verify and by fsck -n.
fn base(s: &Scratch, opts: MkfsOptions) -> (PathBuf, u64) {
    let p = s.image("a.img", 64 * MIB);
    let dev = open(&p);
    format(&dev, &FormatParams::new(opts), &mut |_| {}).expect("format");
    drop(dev);
    let fs = Fs::open(&p);
    let data = fs.data_blocks(2);
    let a = fs.add_file("a", &data);
    let data = fs.data_blocks(1);
    fs.add_file("b", &data);
    drop(fs);
    verify(&open(&p)).expect("verify with files");
    let (code, out) = fsck(&["-n"], &p);
    assert_eq!(code, 0, "fresh image with files not clean:\n{out}");
    (p, a)
}

fn nolock() -> MkfsOptions {
    MkfsOptions::default()
}

/// The common life of a corruption: -n reports it (exit 4) and writes
/// nothing, -y fixes it (exit 1), then -n finds nothing and verify agrees.
fn report_then_repair(p: &Path, want: &str) {
    let before = fingerprint(p).0;
    let (code, out) = fsck(&["-n"], p);
    assert_eq!(code, 4, "-n on a corrupt image:\n{out}");
    assert!(out.contains(want), "report lacks {want:?}:\n{out}");
    // Shown with --nocapture, to read the messages.
    eprintln!("--- fsck -n {}:\n{out}", p.display());
    assert_eq!(fingerprint(p).0, before, "-n wrote to the image");
    let (code, out) = fsck(&[], p);
    assert_eq!(code, 4, "no flag on a corrupt image:\n{out}");
    assert_eq!(fingerprint(p).0, before, "report-only run wrote");
    let (code, out) = fsck(&["-y"], p);
    assert_eq!(code, 1, "-y:\n{out}");
    assert!(out.contains("FIXED"), "-y output:\n{out}");
    eprintln!("--- fsck -y:\n{out}");
    let (code, out) = fsck(&["-n"], p);
    assert_eq!(code, 0, "second -n after repair:\n{out}");
    if let Err(e) = verify(&open(p)) {
        panic!("verify after repair: {e}");
    }
}

#[test]
fn clean_image_exits_0_and_y_writes_nothing() {
    let s = Scratch::new("fsck-clean");
    let (p, _) = base(&s, nolock());
    let before = fingerprint(&p).0;
    let (code, out) = fsck(&["-y"], &p);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");
    assert_eq!(fingerprint(&p).0, before, "-y wrote to a clean image");
    let (code, _) = fsck(&[], &p);
    assert_eq!(code, 0);
}

#[test]
fn small_block_sizes_and_many_journals_are_clean() {
    // 512-byte blocks give multi-block bitmaps and hashed system
    // directories; every journal is checked.
    for (bs, journals) in [(512u32, 16u32), (1024, 4)] {
        let s = Scratch::new("fsck-small");
        let opts = MkfsOptions {
            block_size: bs,
            journals,
            ..MkfsOptions::default()
        };
        let (p, _) = base(&s, opts);
        if bs == 512 {
            let fs = Fs::open(&p);
            let v = verify(&fs.dev).unwrap();
            let pn = fs.dinode(v.system_files["per_node"]);
            assert!(
                pn.is_exhash(),
                "per_node should be hashed at 512-byte blocks"
            );
        }
        let (code, out) = fsck(&["-y"], &p);
        assert_eq!(code, 0, "bs {bs}:\n{out}");
        assert!(out.contains("journal3:"), "bs {bs}:\n{out}");
    }
}

#[test]
fn directory_link_counts_count_subdirectories() {
    let s = Scratch::new("fsck-dirlinks");
    let (p, _) = base(&s, nolock());
    let fs = Fs::open(&p);
    let sub = fs.add_dir("d");
    let root = fs.sb.root_dir;
    drop(fs);
    let (code, out) = fsck(&["-n"], &p);
    assert_eq!(code, 0, "a subdirectory made right:\n{out}");
    let fs = Fs::open(&p);
    let mut r = fs.dinode(root);
    assert_eq!(r.nlink, 3);
    r.nlink = 2;
    fs.put(root, &r);
    let mut d = fs.dinode(sub);
    d.nlink = 1;
    fs.put(sub, &d);
    drop(fs);
    report_then_repair(&p, "has link count 2 but 1 subdirectories (want 3)");
    let fs = Fs::open(&p);
    assert_eq!((fs.dinode(root).nlink, fs.dinode(sub).nlink), (3, 2));
}

#[test]
fn bad_checksum_on_an_rgrp_header() {
    let s = Scratch::new("fsck-rgcrc");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let e = fs.rgrp_of(a);
    let mut buf = vec![0u8; fs.bs() as usize];
    fs.dev.read_at(e.addr * fs.bs(), &mut buf).unwrap();
    buf[60] ^= 1;
    fs.dev.write_at(e.addr * fs.bs(), &buf).unwrap();
    drop(fs);
    report_then_repair(&p, "header unreadable");
}

#[test]
fn bitmap_bit_set_on_a_free_block() {
    let s = Scratch::new("fsck-bit-used");
    let (p, _) = base(&s, nolock());
    let fs = Fs::open(&p);
    let b = fs.free_block();
    fs.set_state(b, BlockState::Data, false);
    drop(fs);
    report_then_repair(&p, &format!("block {b} is Data but nothing uses it"));
    assert_eq!(Fs::open(&p).state(b), BlockState::Free);
}

#[test]
fn bitmap_bit_cleared_on_a_used_block() {
    let s = Scratch::new("fsck-bit-free");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let blk = fs.dinode(a).pointers().unwrap()[1];
    fs.set_state(blk, BlockState::Free, false);
    drop(fs);
    report_then_repair(&p, &format!("block {blk} is used as Data but marked free"));
    assert_eq!(Fs::open(&p).state(blk), BlockState::Data);
}

#[test]
fn linked_dinode_marked_unlinked() {
    let s = Scratch::new("fsck-unlinked");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    fs.set_state(a, BlockState::Unlinked, false);
    drop(fs);
    report_then_repair(&p, &format!("block {a} is Unlinked but is used as Dinode"));
    assert_eq!(Fs::open(&p).state(a), BlockState::Dinode);
}

#[test]
fn wrong_free_count() {
    let s = Scratch::new("fsck-free-count");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let e = fs.rgrp_of(a);
    let (mut h, _) = fs.bitmap(&e);
    h.free += 1;
    write_meta(&fs.dev, &fs.geo, e.addr, &h).unwrap();
    drop(fs);
    report_then_repair(&p, "header counts free");
}

#[test]
fn wrong_link_count() {
    let s = Scratch::new("fsck-nlink");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let mut d = fs.dinode(a);
    d.nlink = 3;
    fs.put(a, &d);
    drop(fs);
    report_then_repair(&p, &format!("inode {a} has link count 3 but 1"));
    assert_eq!(Fs::open(&p).dinode(a).nlink, 1);
}

#[test]
fn bad_checksum_on_a_dinode() {
    let s = Scratch::new("fsck-crc");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let mut buf = vec![0u8; fs.bs() as usize];
    fs.dev.read_at(a * fs.bs(), &mut buf).unwrap();
    buf[100] ^= 0x10;
    fs.dev.write_at(a * fs.bs(), &buf).unwrap();
    let root = fs.sb.root_dir;
    drop(fs);
    report_then_repair(&p, "bad checksum");
    // The file is lost: its entry is gone and its blocks are free.
    let fs = Fs::open(&p);
    let v = verify(&fs.dev).unwrap();
    let names: Vec<&[u8]> = v.root_entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, vec![&b"."[..], b"..", b"b"]);
    assert_eq!(fs.state(a), BlockState::Free);
    assert_eq!(fs.dinode(root).nlink, 2);
}

#[test]
fn entry_pointing_at_a_free_block() {
    let s = Scratch::new("fsck-entry-free");
    let (p, _) = base(&s, nolock());
    let fs = Fs::open(&p);
    let ghost = fs.free_block();
    fs.add_entry(fs.sb.root_dir, "ghost", ghost, FileType::Regular);
    drop(fs);
    report_then_repair(&p, "ghost: entry names block");
    let v = verify(&open(&p)).unwrap();
    assert!(v.root_entries.iter().all(|e| e.name != b"ghost"));
}

/// An entry whose formal number no longer matches the dinode at its
/// address (the inode was freed and the block reused by another) is
/// reported and removed.
#[test]
fn entry_naming_a_reused_dinode_block() {
    let s = Scratch::new("fsck-entry-stale");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let mut d = fs.dinode(a);
    fs.add_entry(fs.sb.root_dir, "stale", a, FileType::Regular);
    // The dinode becomes another inode: same block, next generation.
    d.generation += 1;
    d.nlink = 1;
    fs.put(a, &d);
    // Both "a" and "stale" hold the old number: both go, and the new
    // inode, which nothing names, is an orphan that the repair frees.
    drop(fs);
    report_then_repair(&p, "stale: entry names inode");
    let v = verify(&open(&p)).unwrap();
    assert!(v
        .root_entries
        .iter()
        .all(|e| e.name != b"stale" && e.name != b"a"));
    assert_eq!(Fs::open(&p).state(a), BlockState::Free);
}

#[test]
fn entry_pointing_at_a_data_block() {
    let s = Scratch::new("fsck-entry-data");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let blk = fs.dinode(a).pointers().unwrap()[0];
    fs.add_entry(fs.sb.root_dir, "junk", blk, FileType::Regular);
    drop(fs);
    report_then_repair(&p, "junk: entry names block");
    assert_eq!(Fs::open(&p).state(blk), BlockState::Data);
}

#[test]
fn orphan_dinode() {
    let s = Scratch::new("fsck-orphan");
    let (p, _) = base(&s, nolock());
    let fs = Fs::open(&p);
    let data = fs.data_blocks(1);
    let o = fs.new_file(&data);
    drop(fs);
    report_then_repair(&p, &format!("orphan inode {o}"));
    let fs = Fs::open(&p);
    assert_eq!(fs.state(o), BlockState::Free);
    assert_eq!(fs.state(data[0]), BlockState::Free);
}

#[test]
fn cross_linked_block() {
    let s = Scratch::new("fsck-xlink");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let shared = fs.dinode(a).pointers().unwrap()[0];
    let c = fs.add_file("c", &[shared]);
    drop(fs);
    report_then_repair(
        &p,
        &format!("block {shared} is used by inode {a} and by inode {c}"),
    );
    let fs = Fs::open(&p);
    let copy = fs.dinode(c).pointers().unwrap()[0];
    assert_ne!(copy, shared);
    assert_eq!(fs.dinode(a).pointers().unwrap()[0], shared);
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    fs.dev.read_at(shared * 4096, &mut x).unwrap();
    fs.dev.read_at(copy * 4096, &mut y).unwrap();
    assert_eq!(x, y, "the copy differs from the original");
}

#[test]
fn dirty_journal_is_reported_not_replayed() {
    let s = Scratch::new("fsck-dirty");
    let (p, _) = base(&s, nolock());
    let fs = Fs::open(&p);
    let j = verify(&fs.dev).unwrap().journals[0].clone();
    let (pos, _, _) = j.head.unwrap();
    let mut lh: LogHeader = read_meta(&fs.dev, &fs.geo, j.start + pos).unwrap();
    lh.flags = 0;
    write_meta(&fs.dev, &fs.geo, j.start + pos, &lh).unwrap();
    // Something repairable too: -y must still not touch the image.
    let mut d = fs.dinode(fs.sb.root_dir);
    d.nlink = 5;
    fs.put(fs.sb.root_dir, &d);
    drop(fs);
    let before = fingerprint(&p).0;
    let (code, out) = fsck(&["-n"], &p);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("journal0 is dirty") && out.contains("mount"),
        "{out}"
    );
    let (code, out) = fsck(&["-y"], &p);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("nothing repaired"), "{out}");
    assert_eq!(
        fingerprint(&p).0,
        before,
        "-y wrote despite a dirty journal"
    );
}

#[test]
fn lock_dlm_repair_needs_force_cluster() {
    let s = Scratch::new("fsck-dlm");
    let opts = MkfsOptions {
        lock_proto: LockProto::Dlm,
        lock_table: "alpha:fs1".into(),
        ..MkfsOptions::default()
    };
    let (p, a) = base(&s, opts);
    let fs = Fs::open(&p);
    let mut d = fs.dinode(a);
    d.nlink = 2;
    fs.put(a, &d);
    drop(fs);
    let before = fingerprint(&p).0;
    let (code, out) = fsck(&["-y"], &p);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains("mounted elsewhere in the cluster") && out.contains("--force-cluster"),
        "{out}"
    );
    assert_eq!(fingerprint(&p).0, before);
    let (code, out) = fsck(&["-y", "--force-cluster"], &p);
    assert_eq!(code, 1, "{out}");
    let (code, out) = fsck(&["-n"], &p);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_read_error_stops_before_any_repair() {
    // A dinode that cannot be read is not a damaged dinode: -y must not
    // remove its entry or free its blocks.
    let s = Scratch::new("fsck-eio");
    let (p, a) = base(&s, nolock());
    let fs = Fs::open(&p);
    let mut d = fs.dinode(a);
    d.nlink = 4; // something -y would otherwise repair
    fs.put(a, &d);
    drop(fs);
    let before = fingerprint(&p).0;
    let dev = FaultDevice::new(open(&p), 1);
    dev.add_rule(FaultRule {
        range: Some((a * 4096, (a + 1) * 4096)),
        times: None,
        ..FaultRule::once(Op::Read)
    });
    let r = fsck::check(&dev, FsckOptions { repair: true }, &mut |_, _, _| {});
    match r {
        Err(e @ FsckError::ReadFailed { .. }) => {
            assert!(e.to_string().contains("before repairing"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(r) => panic!("a read error went unnoticed: {:?}", r.findings),
    }
    drop(dev);
    assert_eq!(fingerprint(&p).0, before, "wrote after a read error");
}

#[test]
fn not_rdlmfs_exits_8() {
    let s = Scratch::new("fsck-foreign");
    let p = s.image("zero.img", 16 * MIB);
    let (code, out) = fsck(&["-n"], &p);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("not an rdlmfs file system"), "{out}");
    let tiny = s.image("tiny.img", 4096);
    let (code, out) = fsck(&["-n"], &tiny);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("not an rdlmfs file system"), "{out}");
    let (code, out) = fsck(&["-n"], &s.path("missing.img"));
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("cannot open"), "{out}");
}

#[test]
fn truncated_image_is_an_error_not_a_panic() {
    let s = Scratch::new("fsck-trunc");
    let (p, _) = base(&s, nolock());
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(40 * MIB).unwrap();
    drop(f);
    let (code, out) = fsck(&["-y"], &p);
    assert!(code == 8 || code == 4, "{code}: {out}");
    assert!(out.contains("truncated"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn usage_errors_exit_16() {
    let s = Scratch::new("fsck-usage");
    let p = s.image("a.img", MIB);
    let (code, out) = fsck(&["-n", "-y"], &p);
    assert_eq!(code, 16, "{out}");
    let (code, out) = fsck(&["--bogus"], &p);
    assert_eq!(code, 16, "{out}");
}
