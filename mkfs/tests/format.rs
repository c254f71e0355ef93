//! The formatting library against real image files: a fresh image decodes
//! completely and consistently at every block size, hashed system
//! directories work, and a format cut short by a power failure never
//! leaves a valid superblock over an incomplete file system.

mod common;

use blockdev::{BlockDevice, CrashPolicy, FaultDevice, FileDevice, FileOptions};
use common::*;
use rdlmfs::format::dinode::FileType;
use rdlmfs::format::io::read_superblock;
use rdlmfs::format::layout::MkfsOptions;
use rdlmfs::format::superblock::LockProto;
use rdlmfs::format::sysfile;
use rdlmfs_mkfs::verify::{verify, VerifyReport};
use rdlmfs_mkfs::{format, FormatParams, FormatReport};
use std::path::Path;

fn open(p: &Path) -> FileDevice {
    FileDevice::open(p, FileOptions::default()).expect("open image")
}

fn make(p: &Path, opts: MkfsOptions) -> (FormatParams, FormatReport) {
    let dev = open(p);
    let params = FormatParams::new(opts);
    let mut stages = Vec::new();
    let r = format(&dev, &params, &mut |pr| stages.push(pr.stage)).expect("format");
    assert_eq!(stages.last(), Some(&"done"));
    (params, r)
}

/// Everything a fresh file system must be.
fn check_fresh(p: &Path, params: &FormatParams) -> VerifyReport {
    let dev = open(p);
    let v = verify(&dev).unwrap_or_else(|e| panic!("verify {}: {e}", p.display()));
    let o = &params.options;
    let sb = &v.superblock;
    assert_eq!(sb.block_size, o.block_size);
    assert_eq!(sb.uuid, params.uuid);
    assert_eq!(sb.fs_id, params.fs_id);
    assert_eq!(sb.journals, o.journals);
    assert_eq!(sb.lock_proto, o.lock_proto);
    assert_eq!(sb.lock_table, o.lock_table);
    assert_eq!(sb.label, o.label);
    // The root directory: empty, 0755, root's, two links.
    assert_eq!(v.root.mode, FileType::Directory.mode_bits() | 0o755);
    assert_eq!((v.root.uid, v.root.gid, v.root.nlink), (0, 0, 2));
    let names: Vec<&[u8]> = v.root_entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, vec![&b"."[..], &b".."[..]]);
    // The system files, one set per journal.
    for name in [
        sysfile::JINDEX,
        sysfile::PER_NODE,
        sysfile::RINDEX,
        sysfile::STATFS,
    ] {
        assert!(
            v.system_files.contains_key(name),
            "missing {name}: {:?}",
            v.system_files
        );
    }
    for j in 0..o.journals {
        for f in [
            format!("jindex/{}", sysfile::journal_name(j)),
            format!("per_node/{}", sysfile::statfs_change_name(j)),
            format!("per_node/{}", sysfile::unlinked_name(j)),
        ] {
            assert!(v.system_files.contains_key(&f), "missing {f}");
        }
    }
    // Journals: clean, at their first sequence.
    assert_eq!(v.journals.len(), o.journals as usize);
    for j in &v.journals {
        assert_eq!(j.head, Some((0, 1, true)), "journal {}", j.jid);
    }
    // Free counts: the statfs file agrees with the bitmaps (verify checked
    // it), and almost everything outside the journals is free.
    assert_eq!(v.statfs.free, v.counts.free);
    assert_eq!(v.statfs.dinodes, v.counts.dinodes);
    assert_eq!(v.counts.unlinked, 0);
    v
}

#[test]
fn fresh_images_verify_at_every_block_size() {
    let s = Scratch::new("bs");
    for (bs, size, journals) in [
        (512u32, 48 * MIB, 2u32),
        (1024, 64 * MIB, 1),
        (4096, 256 * MIB, 3),
        (16384, 256 * MIB, 2),
        (65536, 512 * MIB, 2),
    ] {
        let p = s.image(&format!("bs{bs}.img"), size);
        let (params, r) = make(
            &p,
            MkfsOptions {
                block_size: bs,
                journals,
                lock_proto: LockProto::Dlm,
                lock_table: "testc:fs".into(),
                label: format!("bs{bs}"),
                ..MkfsOptions::default()
            },
        );
        let v = check_fresh(&p, &params);
        assert_eq!(v.rindex.len(), r.layout.rgrps.len());
        assert_eq!(v.superblock.total_blocks, r.layout.total_blocks);
        // Everything not used by the journals and system files is free.
        let journal_blocks: u64 = r.layout.journals.iter().map(|j| j.blocks).sum();
        let total: u64 = v.rindex.iter().map(|e| u64::from(e.data_len)).sum();
        assert!(v.counts.free + journal_blocks + v.blocks_referenced >= total);
        assert!(v.counts.free > total / 2, "bs {bs}: {:?}", v.counts);
    }
}

#[test]
fn many_journals_make_hashed_system_directories() {
    let s = Scratch::new("hashed");
    // 64 journals at 512-byte blocks: per_node holds 130 entries, far more
    // than a stuffed directory or one leaf, so jindex and per_node are
    // hashed with several leaves.
    for (bs, journals, size) in [(512u32, 64u32, 160 * MIB), (4096, 256, 2048 * MIB)] {
        let p = s.image(&format!("j{journals}.img"), size);
        let (params, _) = make(
            &p,
            MkfsOptions {
                block_size: bs,
                journals,
                journal_mib: Some(1),
                ..MkfsOptions::default()
            },
        );
        let v = check_fresh(&p, &params);
        assert_eq!(v.journals.len(), journals as usize);
    }
}

#[test]
fn many_rgrps_make_a_multi_block_rindex() {
    // 1 MiB rgrps at 512-byte blocks on 200 MiB: ~200 rindex entries of 64
    // bytes, more than a dinode holds stuffed.
    let s = Scratch::new("rindex");
    let p = s.image("r.img", 200 * MIB);
    let (params, r) = make(
        &p,
        MkfsOptions {
            block_size: 512,
            rgrp_mib: Some(1),
            ..MkfsOptions::default()
        },
    );
    assert!(r.layout.rgrps.len() > 100);
    check_fresh(&p, &params);
}

#[test]
fn reformatting_replaces_everything() {
    let s = Scratch::new("reformat");
    let p = s.image("a.img", 64 * MIB);
    let (first, _) = make(
        &p,
        MkfsOptions {
            journals: 2,
            ..MkfsOptions::default()
        },
    );
    check_fresh(&p, &first);
    let (second, _) = make(
        &p,
        MkfsOptions {
            block_size: 1024,
            ..MkfsOptions::default()
        },
    );
    assert_ne!(first.fs_id, second.fs_id);
    check_fresh(&p, &second);
}

#[test]
fn a_format_cut_short_never_leaves_a_valid_superblock() {
    let s = Scratch::new("crash");
    let p = s.image("c.img", 32 * MIB);
    let opts = MkfsOptions {
        block_size: 1024,
        journals: 2,
        ..MkfsOptions::default()
    };
    // How many writes a whole run takes.
    let (_, r) = make(&p, opts.clone());
    let writes = r.write_calls;
    assert!(writes > 5);
    let (mut none, mut new) = (0, 0);
    for n in 1..=writes + 1 {
        for policy in [
            CrashPolicy::DropAll,
            CrashPolicy::KeepAll,
            CrashPolicy::Random { seed: n },
        ] {
            // Start from a complete older file system each time: its
            // superblock must not survive a cut-short format either.
            let (old, _) = make(&p, opts.clone());
            let dev = FaultDevice::new(open(&p), n);
            dev.crash_after_writes(n, policy);
            let params = FormatParams::new(opts.clone());
            let result = format(&dev, &params, &mut |_| {});
            if !dev.is_crashed() {
                dev.crash(policy)
                    .expect("cut the power after a complete run");
            }
            drop(dev);
            let after = open(&p);
            match read_superblock(&after) {
                Err(_) => {
                    assert!(
                        result.is_err(),
                        "n {n}: format succeeded but left no superblock"
                    );
                    none += 1;
                }
                // Cut before the first write: the old file system is
                // untouched, and still whole.
                Ok(sb) if sb.fs_id == old.fs_id => {
                    assert_eq!(
                        n, 1,
                        "{policy:?}: the old superblock survived a format cut at write {n}"
                    );
                    check_fresh(&p, &old);
                }
                Ok(sb) => {
                    assert_eq!(sb.fs_id, params.fs_id);
                    check_fresh(&p, &params);
                    new += 1;
                }
            }
        }
    }
    // Most cut points leave no file system at all; only a complete run
    // leaves the new one.
    assert!(
        none >= 3 * (writes as usize - 1),
        "{none} runs left no superblock"
    );
    assert!(new >= 3, "{new} runs left the new file system");
}

#[test]
fn verify_catches_inconsistencies() {
    use rdlmfs::format::io::{read_meta, write_meta};
    use rdlmfs::format::rgrp::{BlockState, RgrpHeader};
    use std::os::unix::fs::FileExt;
    let s = Scratch::new("catch");
    let p = s.image("v.img", 64 * MIB);
    let opts = MkfsOptions {
        block_size: 4096,
        ..MkfsOptions::default()
    };

    // A flipped bit in the root dinode: a checksum error naming the block.
    let (_, r) = make(&p, opts.clone());
    let root = r.layout.system.root;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, root * 4096 + 200).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], root * 4096 + 200).unwrap();
    let e = verify(&open(&p)).unwrap_err().to_string();
    assert!(
        e.contains(&format!("block {root}")) && e.contains("checksum"),
        "{e}"
    );

    // A wrong free count in a correctly checksummed header.
    let (_, r) = make(&p, opts.clone());
    let dev = open(&p);
    let sb = read_superblock(&dev).unwrap();
    let g = sb.geometry();
    let last = r.layout.rgrps.last().unwrap().addr;
    let mut h: RgrpHeader = read_meta(&dev, &g, last).unwrap();
    h.free -= 1;
    write_meta(&dev, &g, last, &h).unwrap();
    let e = verify(&dev).unwrap_err().to_string();
    assert!(e.contains("header counts"), "{e}");

    // A block marked used that nothing uses (counts kept consistent).
    h.free += 1;
    let k = h.bits.len() as u32 * 4 - 1;
    let k = k.min(h.data_len - 1);
    h.bits[(k / 4) as usize] |= (BlockState::Data as u8) << ((k % 4) * 2);
    h.free -= 1;
    write_meta(&dev, &g, last, &h).unwrap();
    let e = verify(&dev).unwrap_err().to_string();
    assert!(e.contains("nothing uses it"), "{e}");
}

#[test]
fn read_only_and_misfit_devices_are_refused_before_writing() {
    let s = Scratch::new("ro");
    let p = s.image("ro.img", 64 * MIB);
    let ro = FileDevice::open(
        &p,
        FileOptions {
            read_only: true,
            ..FileOptions::default()
        },
    )
    .unwrap();
    let e = format(&ro, &FormatParams::new(MkfsOptions::default()), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    let small = s.image("small.img", 8 * MIB);
    let dev = open(&small);
    let e = format(
        &dev,
        &FormatParams::new(MkfsOptions {
            journals: 3,
            journal_mib: Some(32),
            ..MkfsOptions::default()
        }),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("small.img") && e.contains("too small"), "{e}");
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 8 * MIB);
    let mut buf = vec![0u8; 8 * MIB as usize];
    dev.read_at(0, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "a refused format wrote something"
    );
}

/// Formatting writes metadata only: a sparse image stays sparse.
fn sparse_stays_sparse(size: u64) {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new("sparse");
    let p = s.image("big.img", size);
    let (params, r) = make(
        &p,
        MkfsOptions {
            journals: 4,
            ..MkfsOptions::default()
        },
    );
    // Headers and bitmaps: 2 bits per block plus a block per rgrp; the rest
    // (journal trees, system files, the zeroed first 64 KiB) is small.
    let bitmap_bytes = r.layout.total_blocks / 4 + r.layout.rgrps.len() as u64 * 4096 * 2;
    assert!(
        r.bytes_written < bitmap_bytes + 4 * MIB,
        "wrote {} bytes",
        r.bytes_written
    );
    let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
    assert!(
        allocated < bitmap_bytes + 8 * MIB,
        "{allocated} bytes allocated"
    );
    check_fresh(&p, &params);
}

#[test]
fn ten_gib_sparse_image() {
    sparse_stays_sparse(10 << 30);
}

#[test]
#[ignore = "100 GiB sparse file; run with --ignored"]
fn hundred_gib_sparse_image() {
    sparse_stays_sparse(100 << 30);
}
