//! The real mount on the devices users give it: an NBD export, a device
//! that fills up, a read-only mount, a dirty journal, and an image made by
//! a newer version. Each test runs `rdlmfs mount` as a separate process
//! (see `common::Mounted`, which unmounts and kills it by PID on drop).

mod common;
use blockdev::file::{FileDevice, FileOptions};
use blockdev::nbd::server::{self, ServerConfig, ServerHandle};
use blockdev::BlockDevice;
use common::*;
use rdlmfs::format::block::{block_crc, seal};
use rdlmfs::format::superblock::Superblock;
use rdlmfs_mkfs::fsck::{self, FsckOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// Serves `img` over NBD on 127.0.0.1 at a port the kernel picks (so
/// parallel tests never collide). Dropping the handle stops the server.
fn serve(img: &Path) -> (ServerHandle, String) {
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(img, FileOptions::default()).expect("open image"));
    let srv = server::start(
        dev,
        ServerConfig {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            handshake_timeout: std::time::Duration::from_secs(10),
            ..ServerConfig::default()
        },
    )
    .expect("start the NBD server");
    let port = srv.tcp_addr().expect("bound address").port();
    (srv, format!("nbd://127.0.0.1:{port}/"))
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u32).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

/// Reads a file through the library (no FUSE, no NBD): what is on the image.
fn read_on_image(img: &Path, path: &[&[u8]]) -> Vec<u8> {
    let c = root();
    let mut fs = mount(img);
    let mut ino = fs.root();
    for name in path {
        ino = fs.lookup(ino, name, &c).expect("lookup on the image").ino;
    }
    let size = fs.getattr(ino).unwrap().size;
    let v = fs.read(ino, 0, size as usize).unwrap();
    fs.unmount().unwrap();
    v
}

#[test]
fn mount_over_nbd_keeps_data_across_remount_and_fsck_is_clean() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 64 * MIB, 4096);
    let mnt = t.path().join("mnt");
    // Declared before the mounts, so it is dropped after them.
    let (srv, uri) = serve(&img);

    let m = Mounted::start(&uri, &mnt, &t.path().join("nbd1.log"));
    let big = pattern(7, 300_000);
    {
        let mut f = std::fs::File::create(m.p("a")).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(std::fs::read(m.p("a")).unwrap(), big);
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/small"), b"small file").unwrap();
    std::fs::rename(m.p("a"), m.p("d/b")).unwrap();
    std::fs::write(m.p("gone"), b"to be removed").unwrap();
    std::fs::remove_file(m.p("gone")).unwrap();
    assert_eq!(errno_of(std::fs::metadata(m.p("a"))), libc::ENOENT);
    m.stop();

    let m = Mounted::start(&uri, &mnt, &t.path().join("nbd2.log"));
    assert_eq!(std::fs::read(m.p("d/b")).unwrap(), big);
    assert_eq!(std::fs::read(m.p("d/small")).unwrap(), b"small file");
    assert!(std::fs::metadata(m.p("d")).unwrap().is_dir());
    assert_eq!(errno_of(std::fs::metadata(m.p("a"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::metadata(m.p("gone"))), libc::ENOENT);
    let mut names: Vec<String> = std::fs::read_dir(m.mnt.clone())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["d"]);
    m.stop();
    srv.shutdown();

    // The data is on the exported image itself, and the image is clean.
    assert_eq!(read_on_image(&img, &[b"d", b"b"]), big);
    assert_eq!(fsck(&img), Vec::<String>::new());
}

/// Writes `name` in 1 MiB chunks up to `len`; returns the errno that
/// stopped it (0 if all was written).
fn write_until_error(p: &Path, seed: u32, len: usize) -> i32 {
    let mut f = match std::fs::File::create(p) {
        Ok(f) => f,
        Err(e) => return e.raw_os_error().unwrap_or(-1),
    };
    let data = pattern(seed, len);
    for chunk in data.chunks(1 << 20) {
        if let Err(e) = f.write_all(chunk) {
            return e.raw_os_error().unwrap_or(-1);
        }
    }
    0
}

fn free_blocks(p: &Path) -> u64 {
    statvfs(p).f_bfree
}

#[test]
fn a_full_device_gives_enospc_and_the_mount_keeps_working() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 24 * MIB, 4096);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&img, &mnt, &t.path().join("enospc.log"));
    const LEN: usize = 2 << 20;
    let mut full = Vec::new();
    let mut err = 0;
    for i in 0..64u32 {
        err = write_until_error(&m.p(&format!("f{i}")), i, LEN);
        if err != 0 {
            break;
        }
        full.push(i);
    }
    assert_eq!(err, libc::ENOSPC, "filling the device must end in ENOSPC");
    assert!(full.len() >= 2, "only {} files fitted", full.len());
    // Full: another write fails the same way (not EIO, no withdraw).
    let free = free_blocks(&m.mnt);
    assert!(free < 64, "{free} blocks still free on a full device");
    assert_eq!(
        write_until_error(&m.p("more"), 99, 1 << 20),
        libc::ENOSPC,
        "a second write on a full device"
    );
    // The file being written when space ran out holds a prefix of what
    // was written (a short write), readable.
    let last = full.len() as u32;
    let partial = std::fs::read(m.p(&format!("f{last}"))).unwrap();
    assert!(partial.len() < LEN);
    assert!(
        partial == pattern(last, LEN)[..partial.len()],
        "the partly written file"
    );
    // What was written is intact.
    for i in &full {
        assert_eq!(
            std::fs::read(m.p(&format!("f{i}"))).unwrap(),
            pattern(*i, LEN),
            "f{i}"
        );
    }
    // Deleting frees space at once: statfs shows it and a write fits.
    std::fs::remove_file(m.p(&format!("f{}", full[0]))).unwrap();
    // The create of "more" may itself have been refused.
    let e = errno_of(std::fs::remove_file(m.p("more")));
    assert!([0, libc::ENOENT].contains(&e), "{e}");
    let freed = free_blocks(&m.mnt);
    assert!(
        freed >= free + (LEN as u64 / 4096),
        "free blocks {free} -> {freed} after deleting {LEN} bytes"
    );
    let fresh = pattern(1234, 1 << 20);
    std::fs::write(m.p("fresh"), &fresh).expect("a write after deleting a file");
    assert_eq!(std::fs::read(m.p("fresh")).unwrap(), fresh);
    assert!(free_blocks(&m.mnt) < freed);
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());

    // And after a remount everything is as it was left.
    let m = Mounted::start(&img, &mnt, &t.path().join("enospc2.log"));
    assert_eq!(std::fs::read(m.p("fresh")).unwrap(), fresh);
    for i in &full[1..] {
        assert_eq!(
            std::fs::read(m.p(&format!("f{i}"))).unwrap(),
            pattern(*i, LEN)
        );
    }
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

#[test]
fn many_small_files_and_dirs_run_out_of_dinodes_with_enospc() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 16 * MIB, 4096);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&img, &mnt, &t.path().join("dinodes.log"));
    let mut made: Vec<String> = Vec::new();
    let mut dirs = 0;
    let mut err = 0;
    'fill: for i in 0..100_000u32 {
        let d = format!("d{i}");
        if let Err(e) = std::fs::create_dir(m.p(&d)) {
            err = e.raw_os_error().unwrap_or(-1);
            break;
        }
        dirs += 1;
        for j in 0..40u32 {
            let f = format!("{d}/f{j}");
            if let Err(e) = std::fs::write(m.p(&f), f.as_bytes()) {
                err = e.raw_os_error().unwrap_or(-1);
                // The create may have succeeded and the write failed.
                let _ = std::fs::remove_file(m.p(&f));
                break 'fill;
            }
            made.push(f);
        }
    }
    assert_eq!(
        err,
        libc::ENOSPC,
        "after {dirs} dirs and {} files",
        made.len()
    );
    assert!(made.len() > 100, "only {} files fitted", made.len());
    // Still full: creating a file or a directory is refused with ENOSPC.
    let e1 = errno_of(std::fs::File::create(m.p("one-more")));
    let e2 = errno_of(std::fs::create_dir(m.p("one-more-dir")));
    assert!(
        [0, libc::ENOSPC].contains(&e1) && [0, libc::ENOSPC].contains(&e2) && (e1, e2) != (0, 0),
        "create {e1}, mkdir {e2} on a full device"
    );
    let _ = std::fs::remove_file(m.p("one-more"));
    let _ = std::fs::remove_dir(m.p("one-more-dir"));
    for f in &made {
        assert_eq!(std::fs::read(m.p(f)).unwrap(), f.as_bytes(), "{f}");
    }
    // Removing a directory tree frees dinodes; creating works again.
    let before = statvfs(&m.mnt);
    std::fs::remove_dir_all(m.p("d0")).unwrap();
    made.retain(|f| !f.starts_with("d0/"));
    let after = statvfs(&m.mnt);
    assert!(
        after.f_bfree > before.f_bfree,
        "{} -> {}",
        before.f_bfree,
        after.f_bfree
    );
    std::fs::create_dir(m.p("again")).expect("mkdir after freeing");
    std::fs::write(m.p("again/x"), b"x").expect("create after freeing");
    assert_eq!(std::fs::read(m.p("again/x")).unwrap(), b"x");
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());

    let m = Mounted::start(&img, &mnt, &t.path().join("dinodes2.log"));
    for f in made.iter().step_by(7) {
        assert_eq!(std::fs::read(m.p(f)).unwrap(), f.as_bytes(), "{f}");
    }
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

#[test]
fn a_create_refused_for_want_of_a_directory_block_leaves_no_orphan() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 16 * MIB, 4096);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&img, &mnt, &t.path().join("dirblock.log"));
    // One-block files to free one at a time, and the directory to grow.
    std::fs::create_dir(m.p("pool")).unwrap();
    for i in 0..300 {
        std::fs::write(m.p(&format!("pool/p{i}")), b"p").unwrap();
    }
    std::fs::create_dir(m.p("t")).unwrap();
    // Fill every remaining block with data.
    assert_eq!(write_until_error(&m.p("filler"), 1, 64 << 20), libc::ENOSPC);
    assert_eq!(free_blocks(&m.mnt), 0, "precondition: the device is full");
    // Each round frees exactly one block and creates one file: the
    // dinode takes the block, so once the directory needs a block of its
    // own (it stops fitting in its dinode), the create is refused after
    // its dinode was allocated — which must be given back.
    let mut refused = None;
    for i in 0..300 {
        std::fs::remove_file(m.p(&format!("pool/p{i}"))).unwrap();
        if let Err(e) = std::fs::File::create(m.p(&format!("t/n{i}"))) {
            refused = Some((i, e.raw_os_error().unwrap_or(-1)));
            break;
        }
    }
    let (i, err) = refused.expect("the directory never needed a block");
    assert_eq!(err, libc::ENOSPC, "create refused with errno {err}");
    assert_eq!(
        errno_of(std::fs::metadata(m.p(&format!("t/n{i}")))),
        libc::ENOENT
    );
    assert_eq!(
        free_blocks(&m.mnt),
        1,
        "the refused create's dinode block was not freed"
    );
    for k in 0..i {
        assert!(std::fs::metadata(m.p(&format!("t/n{k}")))
            .unwrap()
            .is_file());
    }
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

/// A small populated image for the read-only tests.
fn populated(dir: &Path) -> std::path::PathBuf {
    let img = image(dir, 32 * MIB, 4096);
    let m = Mounted::start(&img, &dir.join("mnt"), &dir.join("populate.log"));
    std::fs::write(m.p("f"), b"read me").unwrap();
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/g"), pattern(3, 100_000)).unwrap();
    std::os::unix::fs::symlink("f", m.p("s")).unwrap();
    let name = std::ffi::CString::new("user.colour").unwrap();
    let c = cpath(&m.p("f"));
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0) };
    assert_eq!(r, 0);
    m.stop();
    img
}

#[test]
fn read_only_mount_refuses_every_change_and_leaves_the_image_untouched() {
    let t = tempfile::tempdir().unwrap();
    let img = populated(t.path());
    let before = std::fs::read(&img).unwrap();
    let m = Mounted::start_with(&img, &t.path().join("mnt"), &t.path().join("ro.log"), "ro");
    // Reads work.
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"read me");
    assert_eq!(std::fs::read(m.p("d/g")).unwrap(), pattern(3, 100_000));
    assert_eq!(std::fs::read_link(m.p("s")).unwrap(), Path::new("f"));
    assert_eq!(std::fs::read_dir(m.p("d")).unwrap().count(), 1);
    let mut buf = [0u8; 16];
    let name = std::ffi::CString::new("user.colour").unwrap();
    let cf = cpath(&m.p("f"));
    // SAFETY: valid C strings and buffer.
    let n = unsafe { libc::getxattr(cf.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(n, 4);
    assert_eq!(&buf[..4], b"blue");
    let mut s = String::new();
    std::fs::File::open(m.p("f"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "read me");

    // Every change fails with EROFS.
    let erofs = |what: &str, e: i32| assert_eq!(e, libc::EROFS, "{what}: errno {e}");
    erofs("create", errno_of(std::fs::File::create(m.p("new"))));
    erofs(
        "open for writing",
        errno_of(std::fs::OpenOptions::new().write(true).open(m.p("f"))),
    );
    erofs(
        "open read-write",
        errno_of(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.p("f")),
        ),
    );
    erofs("mkdir", errno_of(std::fs::create_dir(m.p("nd"))));
    erofs("unlink", errno_of(std::fs::remove_file(m.p("f"))));
    erofs("rmdir", errno_of(std::fs::remove_dir(m.p("d"))));
    erofs("rename", errno_of(std::fs::rename(m.p("f"), m.p("f2"))));
    erofs("link", errno_of(std::fs::hard_link(m.p("f"), m.p("f3"))));
    erofs(
        "symlink",
        errno_of(std::os::unix::fs::symlink("f", m.p("s2"))),
    );
    erofs(
        "chmod",
        errno_of(std::fs::set_permissions(
            m.p("f"),
            std::fs::Permissions::from_mode(0o600),
        )),
    );
    erofs(
        "chown",
        errno_of(std::os::unix::fs::chown(m.p("f"), Some(1000), Some(1000))),
    );
    // SAFETY: valid C strings.
    erofs(
        "setxattr",
        libc_errno(unsafe {
            libc::setxattr(cf.as_ptr(), name.as_ptr(), b"red".as_ptr().cast(), 3, 0)
        }),
    );
    erofs(
        "removexattr",
        libc_errno(unsafe { libc::removexattr(cf.as_ptr(), name.as_ptr()) }),
    );
    erofs(
        "truncate",
        libc_errno(unsafe { libc::truncate(cf.as_ptr(), 0) }),
    );
    erofs(
        "utimes",
        libc_errno(unsafe { libc::utimensat(libc::AT_FDCWD, cf.as_ptr(), std::ptr::null(), 0) }),
    );
    let cm = cpath(&m.p("fifo"));
    erofs(
        "mknod",
        libc_errno(unsafe { libc::mkfifo(cm.as_ptr(), 0o644) }),
    );
    // Nothing changed as seen through the mount.
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"read me");
    assert_eq!(std::fs::metadata(m.p("f")).unwrap().mode() & 0o7777, 0o644);
    m.stop();
    let after = std::fs::read(&img).unwrap();
    assert!(before == after, "a read-only mount changed the image");
    assert_eq!(fsck(&img), Vec::<String>::new());
}

fn journal_dirty(img: &Path) -> bool {
    let dev = open_dev(img);
    let r = fsck::check(&*dev, FsckOptions { repair: false }, &mut |_, _, _| {}).expect("fsck");
    r.journals
        .iter()
        .any(|j| matches!(j.head, Some((_, _, false))))
}

#[test]
fn read_only_mount_of_a_dirty_journal_is_refused_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 32 * MIB, 4096);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&img, &mnt, &t.path().join("crash.log"));
    {
        let mut f = std::fs::File::create(m.p("kept")).unwrap();
        f.write_all(b"synced before the crash").unwrap();
        f.sync_all().unwrap();
    }
    m.kill();
    assert!(
        journal_dirty(&img),
        "precondition: the crash left a dirty journal"
    );
    let before = std::fs::read(&img).unwrap();
    let (st, out) = mount_refused(&img, &mnt, &t.path().join("ro-dirty.log"), "ro");
    assert!(!st.success(), "{st}");
    assert!(
        out.contains("needs replay") && out.contains("read-only") && out.contains("journal 0"),
        "the refusal should say why: {out}"
    );
    let after = std::fs::read(&img).unwrap();
    assert!(
        before == after,
        "a refused read-only mount changed the image"
    );
    // A read-write mount replays it and the synced file is there.
    let m = Mounted::start(&img, &mnt, &t.path().join("rw.log"));
    assert_eq!(
        std::fs::read(m.p("kept")).unwrap(),
        b"synced before the crash"
    );
    m.stop();
    assert!(!journal_dirty(&img));
    assert_eq!(fsck(&img), Vec::<String>::new());
    // Now a read-only mount works.
    let m = Mounted::start_with(&img, &mnt, &t.path().join("ro.log"), "ro");
    assert_eq!(
        std::fs::read(m.p("kept")).unwrap(),
        b"synced before the crash"
    );
    m.stop();
}

const SB: usize = 65536;

/// Patches the superblock of a 4096-byte-block image and reseals it, so
/// that its checksum is valid and only the patched field can refuse it.
fn patch_superblock(img: &Path, patch: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut bytes = std::fs::read(img).unwrap();
    let blk = &mut bytes[SB..SB + 4096];
    patch(blk);
    seal(blk);
    assert_eq!(
        u32::from_le_bytes(blk[8..12].try_into().unwrap()),
        block_crc(blk),
        "precondition: the header's checksum field is at bytes 8..12"
    );
    std::fs::write(img, &bytes).unwrap();
    bytes
}

#[test]
fn a_newer_format_version_is_refused_by_mount_and_fsck_without_writes() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 32 * MIB, 4096);
    let mnt = t.path().join("mnt");
    // Resealing the unchanged block must give a superblock that decodes:
    // proves the checksum recomputation is the format's.
    let bytes = patch_superblock(&img, |_| {});
    Superblock::decode(&bytes[SB..SB + 4096]).expect("a resealed, unchanged superblock decodes");

    let newer = rdlmfs::format::FORMAT_VERSION + 1;
    let bytes = patch_superblock(&img, |b| b[32..36].copy_from_slice(&newer.to_le_bytes()));
    let err = Superblock::decode(&bytes[SB..SB + 4096])
        .expect_err("a newer format must not decode")
        .to_string();
    assert!(
        err.contains("format_version"),
        "refused for another reason: {err}"
    );

    let (st, out) = mount_refused(&img, &mnt, &t.path().join("v2.log"), "");
    assert!(!st.success());
    assert_eq!(st.code(), Some(32), "mount(8)'s 'mount failure' status");
    assert!(
        out.contains("format_version")
            && out.contains(&newer.to_string())
            && out.contains(&format!("format {}", newer - 1)),
        "the error should name the versions: {out}"
    );
    assert!(
        std::fs::read(&img).unwrap() == bytes,
        "mount wrote to the image"
    );
    // Read-only does not make it acceptable.
    let (st, _) = mount_refused(&img, &mnt, &t.path().join("v2ro.log"), "ro");
    assert!(!st.success());

    // fsck refuses it as an operational error (fsck.rdlmfs exit 8: not
    // "damage" it could repair), also when asked to repair, and writes
    // nothing.
    let dev = open_dev(&img);
    let e = fsck::read_sb(&*dev).expect_err("fsck must refuse a newer format");
    assert!(!e.is_damage(), "fsck treats a newer format as damage: {e}");
    assert!(e.to_string().contains("format_version"), "{e}");
    let e = fsck::check(&*dev, FsckOptions { repair: true }, &mut |_, _, _| {})
        .expect_err("fsck -y must refuse a newer format");
    assert!(!e.is_damage(), "{e}");
    drop(dev);
    assert!(
        std::fs::read(&img).unwrap() == bytes,
        "fsck -y wrote to the image"
    );
}

#[test]
fn an_unknown_incompatible_feature_is_refused_without_writes() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), 32 * MIB, 4096);
    let mnt = t.path().join("mnt");
    let bytes = patch_superblock(&img, |b| {
        b[88..96].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });
    let err = Superblock::decode(&bytes[SB..SB + 4096])
        .expect_err("an unknown incompat bit must not decode")
        .to_string();
    assert!(
        err.contains("incompat"),
        "refused for another reason: {err}"
    );
    let (st, out) = mount_refused(&img, &mnt, &t.path().join("incompat.log"), "");
    assert_eq!(st.code(), Some(32));
    assert!(
        out.contains("unknown incompatible features") && out.contains("0x10000000000"),
        "{out}"
    );
    let dev = open_dev(&img);
    let e = fsck::check(&*dev, FsckOptions { repair: true }, &mut |_, _, _| {})
        .expect_err("fsck -y must refuse unknown incompatible features");
    assert!(!e.is_damage(), "{e}");
    assert!(e.to_string().contains("0x10000000000"), "{e}");
    drop(dev);
    let (st, _) = mount_refused(&img, &mnt, &t.path().join("incompat-ro.log"), "ro");
    assert!(!st.success());
    assert!(
        std::fs::read(&img).unwrap() == bytes,
        "mount wrote to the image"
    );
}
