//! The POSIX operations through the library (no FUSE): what a user sees,
//! persistence across unmount, and fsck afterwards.

mod common;
use common::*;
use rdlmfs::ops::{SetAttr, RENAME_EXCHANGE, RENAME_NOREPLACE};

const REG: u32 = libc::S_IFREG;
const DIR: u32 = libc::S_IFDIR;

fn errno<T: std::fmt::Debug>(r: rdlmfs::Result<T>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[test]
fn create_write_read_persist_and_fsck_clean() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 64 * MIB, 4096);
    let c = root();
    let mut fs = mount(&img);
    let r = fs.root();
    let a = fs.mknod(r, b"a", REG | 0o644, 0o022, 0, None, &c).unwrap();
    assert_eq!(a.size, 0);
    let d = fs.mknod(r, b"d", DIR | 0o777, 0o022, 0, None, &c).unwrap();
    assert_eq!(d.perm, 0o755);
    assert_eq!(fs.getattr(r).unwrap().nlink, 3);
    // Small (stuffed), then large (tree), then sparse far away.
    fs.write(a.ino, 0, b"hello", false, &c).unwrap();
    assert_eq!(fs.read(a.ino, 0, 100).unwrap(), b"hello");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs.write(a.ino, 10, &big, false, &c).unwrap();
    let far = 5u64 << 30;
    fs.write(a.ino, far, b"far", false, &c).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().size, far + 3);
    let got = fs.read(a.ino, 0, 300_010).unwrap();
    assert_eq!(&got[..5], b"hello");
    assert_eq!(&got[10..], &big[..]);
    assert_eq!(fs.read(a.ino, far - 2, 10).unwrap(), b"\0\0far");
    // Many names: the root goes hashed.
    for i in 0..600 {
        let n = format!("file-{i:04}-with-a-longish-name");
        fs.mknod(d.ino, n.as_bytes(), REG | 0o600, 0, 0, None, &c)
            .unwrap();
    }
    let mut seen = 0;
    let mut after = 0;
    loop {
        let v = fs.readdir(d.ino, after, 50).unwrap();
        if v.is_empty() {
            break;
        }
        seen += v.len();
        after = v.last().unwrap().cookie;
    }
    assert_eq!(seen, 602);
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());

    let mut fs = mount(&img);
    let a2 = fs.lookup(r, b"a", &c).unwrap();
    assert_eq!(a2.ino, a.ino);
    assert_eq!(fs.read(a.ino, 10, 300_000).unwrap(), big);
    assert_eq!(fs.read(a.ino, far, 10).unwrap(), b"far");
    assert!(fs
        .lookup(d.ino, b"file-0599-with-a-longish-name", &c)
        .is_ok());
    // Delete everything again.
    for i in 0..600 {
        let n = format!("file-{i:04}-with-a-longish-name");
        fs.unlink(d.ino, n.as_bytes(), &c).unwrap();
    }
    fs.rmdir(r, b"d", &c).unwrap();
    fs.unlink(r, b"a", &c).unwrap();
    let st = fs.statfs().unwrap();
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());
    let mut fs = mount(&img);
    assert_eq!(fs.statfs().unwrap(), st);
    fs.unmount().unwrap();
}

#[test]
fn errno_cases() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 32 * MIB, 4096);
    let c = root();
    let mut fs = mount(&img);
    let r = fs.root();
    let f = fs.mknod(r, b"f", REG | 0o644, 0, 0, None, &c).unwrap();
    let d = fs.mknod(r, b"d", DIR | 0o755, 0, 0, None, &c).unwrap();
    fs.mknod(d.ino, b"x", REG | 0o644, 0, 0, None, &c).unwrap();
    assert_eq!(errno(fs.lookup(r, b"nope", &c)), libc::ENOENT);
    assert_eq!(
        errno(fs.mknod(r, b"f", REG | 0o644, 0, 0, None, &c)),
        libc::EEXIST
    );
    assert_eq!(errno(fs.rmdir(r, b"d", &c)), libc::ENOTEMPTY);
    assert_eq!(errno(fs.unlink(r, b"d", &c)), libc::EISDIR);
    assert_eq!(errno(fs.rmdir(r, b"f", &c)), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup(f.ino, b"x", &c)), libc::ENOTDIR);
    let long = vec![b'n'; 256];
    assert_eq!(
        errno(fs.mknod(r, &long, REG | 0o644, 0, 0, None, &c)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(fs.lookup(r, &long, &c)), libc::ENAMETOOLONG);
    // An unprivileged user.
    let u = user(1000);
    assert_eq!(
        errno(fs.mknod(r, b"mine", REG | 0o644, 0, 0, None, &u)),
        libc::EACCES
    );
    assert_eq!(errno(fs.open(f.ino, libc::O_WRONLY, &u)), libc::EACCES);
    fs.open(f.ino, libc::O_RDONLY, &u).unwrap();
    fs.release(f.ino).unwrap();
    assert_eq!(
        errno(fs.setattr(
            f.ino,
            SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
            &u
        )),
        libc::EPERM
    );
    // Renames.
    fs.mknod(r, b"g", REG | 0o644, 0, 0, None, &c).unwrap();
    assert_eq!(
        errno(fs.rename(r, b"f", r, b"g", RENAME_NOREPLACE, &c)),
        libc::EEXIST
    );
    fs.rename(r, b"f", r, b"g", RENAME_EXCHANGE, &c).unwrap();
    assert_eq!(fs.lookup(r, b"g", &c).unwrap().ino, f.ino);
    assert_eq!(
        errno(fs.rename(r, b"d", d.ino, b"sub", 0, &c)),
        libc::EINVAL
    );
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

#[test]
fn hashed_directory_table_outgrows_the_dinode() {
    // At 512-byte blocks the table leaves the dinode at depth 6, so this
    // exercises unstuffing the table, doubling it in JData blocks and
    // splitting leaves, then freeing all of it.
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 64 * MIB, 512);
    let c = root();
    let mut fs = mount(&img);
    let r = fs.root();
    let d = fs.mknod(r, b"big", DIR | 0o755, 0, 0, None, &c).unwrap();
    let n = 3000;
    for i in 0..n {
        fs.mknod(
            d.ino,
            format!("entry-{i}").as_bytes(),
            REG | 0o644,
            0,
            0,
            None,
            &c,
        )
        .unwrap();
    }
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());
    let mut fs = mount(&img);
    for i in 0..n {
        fs.lookup(d.ino, format!("entry-{i}").as_bytes(), &c)
            .unwrap();
    }
    let mut count = 0;
    let mut after = 0;
    while let Some(last) = fs.readdir(d.ino, after, 100).unwrap().last().cloned() {
        count += fs.readdir(d.ino, after, 100).unwrap().len();
        after = last.cookie;
    }
    assert_eq!(count, n + 2);
    for i in 0..n {
        fs.unlink(d.ino, format!("entry-{i}").as_bytes(), &c)
            .unwrap();
    }
    fs.rmdir(r, b"big", &c).unwrap();
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

/// Inode numbers are formal numbers (address and generation): a dinode
/// block freed and reused gets a new number, and the old one — still held
/// by a kernel that cached the deleted file, possibly on another node — is
/// ESTALE, never the new file.
#[test]
fn a_reused_dinode_block_gets_a_new_inode_number_and_the_old_one_is_stale() {
    use rdlmfs::format::{formal_addr, formal_ino};
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 32 * MIB, 4096);
    let c = root();
    let mut fs = mount(&img);
    let r = fs.root();
    let a = fs.mknod(r, b"a", REG | 0o644, 0, 0, None, &c).unwrap();
    let old = formal_ino(a.ino, a.generation);
    assert_eq!(fs.resolve(old).unwrap(), a.ino);
    fs.unlink(r, b"a", &c).unwrap();
    assert_eq!(errno(fs.resolve(old)), libc::ENOENT, "deleted, not reused");
    fs.unmount().unwrap();

    // A fresh mount allocates from the start of the rgrp again: the new
    // file lands in the freed block.
    let mut fs = mount(&img);
    let b = fs.mknod(r, b"b", REG | 0o644, 0, 0, None, &c).unwrap();
    assert_eq!(
        b.ino, a.ino,
        "precondition: the freed dinode block is reused"
    );
    let new = formal_ino(b.ino, b.generation);
    assert_ne!(new, old, "a reused block must get another inode number");
    assert_eq!(formal_addr(new), formal_addr(old));
    assert_eq!(errno(fs.resolve(old)), libc::ESTALE);
    assert_eq!(fs.resolve(new).unwrap(), b.ino);
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());
}
