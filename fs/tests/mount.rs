//! The real mount: `rdlmfs mount` as a separate process on a file image,
//! driven through the kernel with ordinary system calls. Cleans up by PID
//! on drop (also when an assertion fails) and prints the log's path.

mod common;
use common::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn posix_surface_through_a_real_mount() {
    let t = tempfile::tempdir().unwrap();
    // The unprivileged checks below must be able to reach the mount.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = image(t.path(), 128 * MIB, 4096);
    let mnt = t.path().join("mnt");
    let m = Mounted::start(&img, &mnt, &t.path().join("rdlmfs.log"));
    let p = |s: &str| m.mnt.join(s);

    std::fs::write(p("a"), b"hello world").unwrap();
    assert_eq!(std::fs::read(p("a")).unwrap(), b"hello world");
    std::fs::create_dir(p("d")).unwrap();
    std::fs::create_dir(p("d/sub")).unwrap();
    assert_eq!(std::fs::metadata(p("d")).unwrap().nlink(), 3);
    std::os::unix::fs::symlink("a", p("s")).unwrap();
    assert_eq!(std::fs::read_link(p("s")).unwrap(), Path::new("a"));
    std::fs::hard_link(p("a"), p("d/a2")).unwrap();
    assert_eq!(std::fs::metadata(p("a")).unwrap().nlink(), 2);
    // FIFOs, sockets, device nodes.
    let c = |s: &str| CString::new(p(s).as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c("fifo").as_ptr(), 0o644) }, 0);
    assert_eq!(
        unsafe {
            libc::mknod(
                c("chr").as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3),
            )
        },
        0
    );
    assert_eq!(
        std::fs::metadata(p("chr")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
    assert_eq!(
        unsafe { libc::mknod(c("sock").as_ptr(), libc::S_IFSOCK | 0o600, 0) },
        0
    );
    // Rename across directories, over an existing target.
    std::fs::write(p("d/victim"), b"x").unwrap();
    std::fs::rename(p("d/sub"), p("sub2")).unwrap();
    assert_eq!(std::fs::metadata(p("d")).unwrap().nlink(), 2);
    std::fs::rename(p("a"), p("d/victim")).unwrap();
    assert_eq!(std::fs::read(p("d/victim")).unwrap(), b"hello world");
    // errno cases.
    assert_eq!(errno_of(std::fs::read(p("nope"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::create_dir(p("d"))), libc::EEXIST);
    assert_eq!(errno_of(std::fs::remove_dir(p("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(std::fs::remove_file(p("d"))), libc::EISDIR);
    assert_eq!(errno_of(std::fs::read_dir(p("d/victim"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(std::fs::write(p(&"n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    // Permissions: an unprivileged uid cannot write a 0644 root file.
    std::fs::set_permissions(p("d"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("echo x > {}", p("d/victim").display()))
        .uid(1000)
        .gid(1000)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success(), "uid 1000 wrote a 0644 root-owned file");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("echo x > {}", p("d/mine").display()))
        .uid(1000)
        .gid(1000)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::metadata(p("d/mine")).unwrap().uid(), 1000);
    // xattrs.
    let name = CString::new("user.colour").unwrap();
    let r = unsafe {
        libc::setxattr(
            c("d/victim").as_ptr(),
            name.as_ptr(),
            b"blue".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(r, 0);
    let mut buf = [0u8; 16];
    let n = unsafe {
        libc::getxattr(
            c("d/victim").as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            16,
        )
    };
    assert_eq!(&buf[..n as usize], b"blue");
    // Sparse files, fallocate, SEEK_DATA / SEEK_HOLE.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(p("sparse"))
        .unwrap();
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    f.write_at(b"end", 10 << 20).unwrap();
    assert_eq!(
        unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) },
        10 << 20
    );
    assert_eq!(unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) }, 0);
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) }, 0);
    assert_eq!(
        unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                1 << 20,
            )
        },
        0
    );
    assert_eq!(
        unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) },
        10 << 20
    );
    f.sync_all().unwrap();
    drop(f);
    // Unlinked but open: readable until closed.
    std::fs::write(p("tmp"), vec![7u8; 100_000]).unwrap();
    let g = std::fs::File::open(p("tmp")).unwrap();
    std::fs::remove_file(p("tmp")).unwrap();
    let mut v = vec![0u8; 100_000];
    g.read_exact_at(&mut v, 0).unwrap();
    assert!(v.iter().all(|b| *b == 7));
    drop(g);
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());

    // Everything is still there after a remount.
    let m = Mounted::start(&img, &mnt, &t.path().join("rdlmfs2.log"));
    assert_eq!(
        std::fs::read(m.mnt.join("d/victim")).unwrap(),
        b"hello world"
    );
    assert!(std::fs::symlink_metadata(m.mnt.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo_like());
    assert_eq!(
        std::fs::metadata(m.mnt.join("sparse")).unwrap().len(),
        (10 << 20) + 3
    );
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn bad_devices_are_refused_and_left_untouched() {
    let t = tempfile::tempdir().unwrap();
    let junk = t.path().join("junk.img");
    std::fs::write(&junk, vec![0xabu8; 4 << 20]).unwrap();
    let before = std::fs::read(&junk).unwrap();
    let e = rdlmfs::Fs::mount(open_dev(&junk), rdlmfs::MountOptions::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("junk.img"), "{e}");
    assert_eq!(std::fs::read(&junk).unwrap(), before);
    // A truncated device.
    let img = image(t.path(), 64 * MIB, 4096);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(32 * MIB).unwrap();
    drop(f);
    let e = rdlmfs::Fs::mount(open_dev(&img), rdlmfs::MountOptions::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("truncated"), "{e}");
    // A corrupted superblock.
    let img2 = t.path().join("b");
    std::fs::create_dir_all(&img2).unwrap();
    let img2 = image(&img2, 32 * MIB, 4096);
    let mut bytes = std::fs::read(&img2).unwrap();
    bytes[65536 + 200] ^= 1;
    std::fs::write(&img2, &bytes).unwrap();
    let e = rdlmfs::Fs::mount(open_dev(&img2), rdlmfs::MountOptions::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(std::fs::read(&img2).unwrap(), bytes);
}
