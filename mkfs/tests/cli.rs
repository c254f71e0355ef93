//! The mkfs.rdlmfs command line: flag errors, refusing existing file
//! systems, dry runs, too-small devices, block size extremes, and the
//! summary it prints.

mod common;

use blockdev::{FileDevice, FileOptions};
use common::*;
use rdlmfs_mkfs::verify::verify;

fn verify_image(p: &std::path::Path) -> rdlmfs_mkfs::verify::VerifyReport {
    let dev = FileDevice::open(p, FileOptions::default()).expect("open image");
    verify(&dev).unwrap_or_else(|e| panic!("verify {}: {e}", p.display()))
}

#[test]
fn formats_and_prints_a_summary() {
    let s = Scratch::new("summary");
    let p = s.image("a.img", 256 * MIB);
    let img = p.to_str().unwrap();
    let out = mkfs(
        &[
            "-p",
            "lock_dlm",
            "-t",
            "alpha:data1",
            "-j",
            "2",
            "-J",
            "8",
            "-L",
            "lbl",
            img,
        ],
        T,
    );
    assert_ok(&out, "mkfs");
    let (o, _) = text(&out);
    for want in [
        "Block size:          4096",
        "Journals:            2 of 8.00 MiB",
        "lock_dlm",
        "\"alpha:data1\"",
        "\"lbl\"",
        "UUID:",
        "Done: wrote",
    ] {
        assert!(o.contains(want), "summary lacks {want:?}:\n{o}");
    }
    let v = verify_image(&p);
    assert_eq!(v.superblock.lock_table, "alpha:data1");
    assert_eq!(v.superblock.label, "lbl");
    assert_eq!(v.superblock.journals, 2);
    assert!(
        o.contains(&v.superblock.uuid_string()),
        "printed uuid differs from the superblock's"
    );
    assert_eq!(v.journals[0].blocks * 4096, 8 * MIB);
}

#[test]
fn flag_errors_are_clear_and_write_nothing() {
    let s = Scratch::new("flags");
    let p = s.image("a.img", 64 * MIB);
    let img = p.to_str().unwrap().to_string();
    let before = fingerprint(&p);
    let long_cluster = format!("{}:fs", "c".repeat(33));
    let long_fs = format!("c:{}", "f".repeat(31));
    let long_label = "l".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-b", "3000"], "power of two"),
        (vec!["-b", "256"], "power of two"),
        (vec!["-b", "131072"], "power of two"),
        (vec!["-b", "four"], "not a number"),
        (vec!["-j", "0"], "journals"),
        (vec!["-j", "257"], "journals"),
        (vec!["-J", "0"], "journal size"),
        (vec!["-J", "2048"], "journal size"),
        (vec!["-r", "0"], "resource group size"),
        (vec!["-r", "4096"], "resource group size"),
        (vec!["-t", "nocolon"], "cluster:fsname"),
        (vec!["-t", "c:f/x"], "only letters"),
        (vec!["-t", &long_cluster], "at most 32"),
        (vec!["-t", &long_fs], "at most 30"),
        (vec!["-p", "lock_foo"], "unknown locking protocol"),
        (vec!["-p", "lock_dlm"], "lock_dlm needs a lock table"),
        (vec![], "lock_dlm needs a lock table"),
        (vec!["-L", &long_label], "at most 64"),
        (
            vec!["-b", "65536", "-J", "1", "-p", "lock_nolock"],
            "at least 64",
        ),
        (vec!["--bogus"], "unexpected argument"),
    ];
    for (args, want) in cases {
        let mut a = args.clone();
        a.push(&img);
        let out = mkfs(&a, T);
        let (o, e) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: expected usage error, got {}\n{o}\n{e}",
            out.status
        );
        assert!(e.contains(want), "{args:?}: stderr lacks {want:?}:\n{e}");
        assert!(o.is_empty(), "{args:?}: printed a summary:\n{o}");
    }
    // No device at all.
    let out = mkfs(&["-p", "lock_nolock"], T);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("DEVICE"));
    // A device that does not exist.
    let out = mkfs(
        &["-p", "lock_nolock", s.path("missing.img").to_str().unwrap()],
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("cannot open"), "{}", text(&out).1);
    assert_eq!(fingerprint(&p), before, "a failed run changed the image");
}

#[test]
fn refuses_existing_file_systems_without_force() {
    let s = Scratch::new("refuse");
    let p = s.image("a.img", 64 * MIB);
    let img = p.to_str().unwrap();
    assert_ok(
        &mkfs(&["-p", "lock_nolock", "-L", "first", img], T),
        "first mkfs",
    );
    let first = verify_image(&p).superblock;
    let before = fingerprint(&p);
    let out = mkfs(&["-p", "lock_nolock", img], T);
    assert_eq!(out.status.code(), Some(1));
    let (_, e) = text(&out);
    assert!(
        e.contains("rdlmfs file system") && e.contains("-f") && e.contains(&first.uuid_string()),
        "{e}"
    );
    assert_eq!(fingerprint(&p), before);
    assert_ok(
        &mkfs(&["-p", "lock_nolock", "-f", "-q", img], T),
        "forced mkfs",
    );
    let second = verify_image(&p).superblock;
    assert_ne!(first.uuid, second.uuid);

    // Other file systems' signatures.
    for (what, off, sig) in [
        ("ext2/ext3/ext4", 1080u64, &[0x53u8, 0xef][..]),
        ("XFS", 0, &b"XFSB"[..]),
        ("btrfs", 65536 + 64, &b"_BHRfS_M"[..]),
        ("GFS2", 65536, &[0x01, 0x16, 0x19, 0x70, 0, 0, 0, 1][..]),
    ] {
        let q = s.image(&format!("sig{off}.img"), 64 * MIB);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&q).unwrap();
            f.write_all_at(sig, off).unwrap();
        }
        let before = fingerprint(&q);
        let out = mkfs(&["-p", "lock_nolock", q.to_str().unwrap()], T);
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(text(&out).1.contains(what), "{what}: {}", text(&out).1);
        assert_eq!(fingerprint(&q), before, "{what}: refused run wrote");
        assert_ok(
            &mkfs(&["-p", "lock_nolock", "-f", "-q", q.to_str().unwrap()], T),
            "forced",
        );
        verify_image(&q);
        // mkfs erased the old signature: a second run finds rdlmfs.
        let out = mkfs(&["-p", "lock_nolock", q.to_str().unwrap()], T);
        assert!(
            text(&out).1.contains("rdlmfs file system"),
            "{what}: {}",
            text(&out).1
        );
    }
}

#[test]
fn dry_run_writes_nothing() {
    let s = Scratch::new("dry");
    let p = s.image("a.img", 128 * MIB);
    let img = p.to_str().unwrap();
    let before = fingerprint(&p);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = mkfs(&["-n", "-p", "lock_dlm", "-t", "c:f", "-j", "3", img], T);
    assert_ok(&out, "dry run");
    let (o, _) = text(&out);
    assert!(
        o.contains("Would create") && o.contains("Dry run: nothing was written"),
        "{o}"
    );
    assert!(o.contains("Journals:            3"), "{o}");
    assert_eq!(
        fingerprint(&p),
        before,
        "dry run changed the image (content or mtime)"
    );
    // Also over an existing file system, forced: still nothing.
    assert_ok(&mkfs(&["-q", "-p", "lock_nolock", img], T), "mkfs");
    let before = fingerprint(&p);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = mkfs(&["-n", "-f", "-p", "lock_nolock", img], T);
    assert_ok(&out, "forced dry run");
    assert!(text(&out).1.contains("would overwrite"), "{}", text(&out).1);
    assert_eq!(fingerprint(&p), before);
    // Without -f a dry run predicts the refusal.
    let out = mkfs(&["-n", "-p", "lock_nolock", img], T);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fingerprint(&p), before);
}

#[test]
fn too_small_device_says_what_fits() {
    let s = Scratch::new("small");
    let p = s.image("a.img", 8 * MIB);
    let img = p.to_str().unwrap();
    let before = fingerprint(&p);
    let out = mkfs(&["-p", "lock_nolock", "-j", "3", "-J", "32", img], T);
    assert_eq!(out.status.code(), Some(1));
    let (o, e) = text(&out);
    assert!(o.is_empty(), "{o}");
    assert!(
        e.contains("a.img") && e.contains("too small") && e.contains("3 journal(s) of 32 MiB"),
        "{e}"
    );
    assert!(
        e.contains("need at least") && e.contains("what fits: -J "),
        "{e}"
    );
    assert_eq!(fingerprint(&p), before);
    // What it suggests works.
    let hint = e
        .split("what fits: -J ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_ok(
        &mkfs(&["-q", "-p", "lock_nolock", "-j", "3", "-J", &hint, img], T),
        "suggested -J",
    );
    verify_image(&p);
    // A device with no room for anything.
    let tiny = s.image("tiny.img", 96 * 1024);
    let out = mkfs(&["-p", "lock_nolock", tiny.to_str().unwrap()], T);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("too small"), "{}", text(&out).1);
}

#[test]
fn extreme_block_sizes() {
    let s = Scratch::new("bsx");
    for (bs, size) in [("512", 32 * MIB), ("65536", 512 * MIB)] {
        let p = s.image(&format!("b{bs}.img"), size);
        let out = mkfs(
            &[
                "-q",
                "-b",
                bs,
                "-p",
                "lock_nolock",
                "-j",
                "2",
                p.to_str().unwrap(),
            ],
            T,
        );
        assert_ok(&out, bs);
        assert!(out.stdout.is_empty(), "-q printed: {}", text(&out).0);
        let v = verify_image(&p);
        assert_eq!(v.superblock.block_size.to_string(), bs);
        assert_eq!(v.root_entries.len(), 2);
    }
}

#[test]
fn version_and_installed_name() {
    let out = mkfs(&["-V"], T);
    assert_ok(&out, "-V");
    assert!(text(&out).0.starts_with("mkfs.rdlmfs "), "{}", text(&out).0);
    // Installed as mkfs.rdlmfs (what `mkfs -t rdlmfs` runs), it works the same.
    let s = Scratch::new("name");
    let link = s.path("mkfs.rdlmfs");
    std::os::unix::fs::symlink(mkfs_bin(), &link).unwrap();
    let p = s.image("a.img", 32 * MIB);
    let out = run(
        std::process::Command::new(&link).args(["-q", "-p", "lock_nolock", p.to_str().unwrap()]),
        T,
    );
    assert_ok(&out, "mkfs.rdlmfs via its installed name");
    verify_image(&p);
}
