//! Tests of `rdlmfs-testfs` through real mounts: the passthrough is faithful
//! to its backing directory, and each fault mode really injects its fault
//! (so a checker that passes against it has proved nothing).

mod common;

use common::Scratch;
use rdlmfs_tests::mount::fuse_mounts_at;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn listxattr(p: &Path) -> Vec<String> {
    let p = cpath(p);
    let mut buf = vec![0u8; 1024];
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Maps `len` bytes of `f` shared and returns a copy of them after `edit`
/// has run on the mapping (then msync'ed).
fn with_mmap(f: &File, len: usize, writable: bool, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let map = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) };
    edit(map);
    let copy = map.to_vec();
    if writable {
        let r = unsafe { libc::msync(ptr, len, libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    }
    unsafe { libc::munmap(ptr, len) };
    copy
}

#[test]
fn passthrough_matches_backing_dir() {
    let s = Scratch::new("passthrough");
    let backing = s.dir("backing");
    let m = s.mount("passthrough", &backing, "mnt", &[]);
    let mnt = m.mountpoint().to_path_buf();

    // create / write / read
    let data = pattern(3 * 4096 + 100, 7);
    fs::write(mnt.join("a"), &data).unwrap();
    assert_eq!(fs::read(backing.join("a")).unwrap(), data);
    assert_eq!(fs::read(mnt.join("a")).unwrap(), data);

    // mkdir / rename into it / rename the directory / readdir
    fs::create_dir(mnt.join("d")).unwrap();
    assert!(backing.join("d").is_dir());
    fs::rename(mnt.join("a"), mnt.join("d/b")).unwrap();
    assert!(!backing.join("a").exists());
    assert_eq!(fs::read(backing.join("d/b")).unwrap(), data);
    fs::rename(mnt.join("d"), mnt.join("e")).unwrap();
    // The kernel keeps the inode of e/b cached; the table must follow the rename.
    assert_eq!(fs::read(mnt.join("e/b")).unwrap(), data);
    let mut names: Vec<_> = fs::read_dir(mnt.join("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b"]);

    // link / unlink / symlink / readlink
    fs::hard_link(mnt.join("e/b"), mnt.join("e/c")).unwrap();
    assert_eq!(fs::metadata(mnt.join("e/c")).unwrap().nlink(), 2);
    fs::remove_file(mnt.join("e/b")).unwrap();
    assert!(!backing.join("e/b").exists());
    assert_eq!(fs::read(mnt.join("e/c")).unwrap(), data);
    std::os::unix::fs::symlink("c", mnt.join("e/l")).unwrap();
    assert_eq!(fs::read_link(backing.join("e/l")).unwrap(), Path::new("c"));
    assert_eq!(fs::read_link(mnt.join("e/l")).unwrap(), Path::new("c"));
    assert_eq!(fs::read(mnt.join("e/l")).unwrap(), data);

    // An unlinked file stays usable through its open descriptor.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("e/tmp"))
        .unwrap();
    fs::remove_file(mnt.join("e/tmp")).unwrap();
    f.write_all_at(b"still here", 0).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10);
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still here");
    drop(f);

    // setattr: chmod, truncate, utimens
    fs::set_permissions(mnt.join("e/c"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(backing.join("e/c")).unwrap().mode() & 0o7777,
        0o640
    );
    let f = OpenOptions::new()
        .write(true)
        .open(mnt.join("e/c"))
        .unwrap();
    f.set_len(5000).unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    f.set_modified(when).unwrap();
    drop(f);
    let md = fs::metadata(backing.join("e/c")).unwrap();
    assert_eq!(md.len(), 5000);
    assert_eq!(md.modified().unwrap(), when);
    assert_eq!(fs::read(mnt.join("e/c")).unwrap(), &data[..5000]);

    // xattrs
    setxattr(&mnt.join("e/c"), "user.rdlmfs", b"v1");
    assert_eq!(
        getxattr(&backing.join("e/c"), "user.rdlmfs").unwrap(),
        b"v1"
    );
    assert_eq!(getxattr(&mnt.join("e/c"), "user.rdlmfs").unwrap(), b"v1");
    assert!(listxattr(&mnt.join("e/c")).contains(&"user.rdlmfs".to_string()));
    let c = cpath(&mnt.join("e/c"));
    let n = CString::new("user.rdlmfs").unwrap();
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(
        getxattr(&backing.join("e/c"), "user.rdlmfs"),
        Err(libc::ENODATA)
    );
    assert_eq!(
        getxattr(&mnt.join("e/c"), "user.rdlmfs"),
        Err(libc::ENODATA)
    );

    // mmap: read through the page cache, then write through it.
    let mdata = pattern(3 * 4096, 11);
    fs::write(mnt.join("m"), &mdata).unwrap();
    let f = File::open(mnt.join("m")).unwrap();
    assert_eq!(with_mmap(&f, mdata.len(), false, |_| {}), mdata);
    drop(f);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("m"))
        .unwrap();
    with_mmap(&f, mdata.len(), true, |map| {
        map[4096..4100].copy_from_slice(b"MMAP")
    });
    drop(f);
    let mut expect = mdata.clone();
    expect[4096..4100].copy_from_slice(b"MMAP");
    assert_eq!(fs::read(backing.join("m")).unwrap(), expect);

    // fallocate: punch a hole; SEEK_HOLE / SEEK_DATA see it.
    let hdata = vec![0xABu8; 16 * 4096];
    fs::write(mnt.join("h"), &hdata).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("h"))
        .unwrap();
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            2 * 4096,
        )
    };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    let mut expect = hdata.clone();
    expect[4096..3 * 4096].fill(0);
    assert_eq!(fs::read(mnt.join("h")).unwrap(), expect);
    assert_eq!(fs::read(backing.join("h")).unwrap(), expect);
    assert!(fs::metadata(backing.join("h")).unwrap().blocks() < 16 * 8);
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    let data_at = unsafe { libc::lseek(f.as_raw_fd(), 4096, libc::SEEK_DATA) };
    assert_eq!((hole, data_at), (4096, 3 * 4096), "SEEK_HOLE, SEEK_DATA");
    // KEEP_SIZE allocation past EOF leaves the size alone.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 16 * 4096, 4096) };
    assert_eq!(
        r,
        0,
        "fallocate keep size: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(fs::metadata(mnt.join("h")).unwrap().len(), 16 * 4096);

    // copy_file_range between two files of the mount
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("g"))
        .unwrap();
    let (mut oi, mut oo): (i64, i64) = (0, 0);
    let n = unsafe {
        libc::copy_file_range(f.as_raw_fd(), &mut oi, g.as_raw_fd(), &mut oo, 5 * 4096, 0)
    };
    assert_eq!(
        n,
        5 * 4096,
        "copy_file_range: {}",
        std::io::Error::last_os_error()
    );
    drop((f, g));
    assert_eq!(fs::read(backing.join("g")).unwrap(), &expect[..5 * 4096]);

    // statfs, rmdir
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(&mnt).as_ptr(), &mut st) }, 0);
    assert!(st.f_bsize > 0 && st.f_blocks > 0);
    fs::create_dir(mnt.join("empty")).unwrap();
    fs::remove_dir(mnt.join("empty")).unwrap();
    assert!(!backing.join("empty").exists());
    assert_eq!(
        fs::remove_dir(mnt.join("e")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );

    // SIGTERM unmounts cleanly.
    let log = m.log_path().to_path_buf();
    m.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    assert_eq!(fuse_mounts_at(&mnt).unwrap(), 0);
    assert!(fs::read_to_string(log).unwrap().contains("mounted"));
}

#[test]
fn drop_writes_loses_acknowledged_writes() {
    const CHUNK: usize = 4096;
    let s = Scratch::new("drop-writes");
    let backing = s.dir("backing");
    let m = s.mount("drop-writes", &backing, "mnt", &["--every", "3"]);
    let path = m.mountpoint().join("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i + 1; CHUNK]).collect();
    for (i, c) in chunks.iter().enumerate() {
        // Every write reports success: the fault is silent.
        assert_eq!(f.write_at(c, (i * CHUNK) as u64).unwrap(), CHUNK);
    }
    f.sync_all().unwrap();

    let on_disk = fs::read(backing.join("f")).unwrap();
    let missing: Vec<usize> = (0..chunks.len())
        .filter(|&i| on_disk.get(i * CHUNK..(i + 1) * CHUNK) != Some(&chunks[i][..]))
        .collect();
    assert!(
        !missing.is_empty(),
        "no write was dropped; log {}",
        m.log_path().display()
    );
    eprintln!("chunks lost in the backing file: {missing:?}");

    // The loss also shows through the mount, on the same descriptor, once
    // the invalidation of the dropped range has gone through.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut buf = vec![0u8; CHUNK];
        let i = missing[0];
        let n = f.read_at(&mut buf, (i * CHUNK) as u64).unwrap();
        if buf[..n] != chunks[i][..n] || n < CHUNK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chunk {i} still reads back as written through the mount; log {}",
            m.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(f);
    assert!(m.log_text().contains("dropping write"));
}

#[test]
fn stale_cache_serves_old_data_after_other_mount_writes() {
    let s = Scratch::new("stale-cache");
    let backing = s.dir("backing");
    let old = pattern(8192, 1);
    let new = pattern(8192, 2);
    fs::write(backing.join("f"), &old).unwrap();
    let a = s.mount("stale-cache", &backing, "mnt-a", &[]);
    let b = s.mount("stale-cache", &backing, "mnt-b", &[]);

    assert_eq!(fs::read(b.mountpoint().join("f")).unwrap(), old);
    let mut w = OpenOptions::new()
        .write(true)
        .open(a.mountpoint().join("f"))
        .unwrap();
    w.write_all(&new).unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(fs::read(backing.join("f")).unwrap(), new, "write through A");
    assert_eq!(fs::read(a.mountpoint().join("f")).unwrap(), new);
    assert_eq!(
        fs::read(b.mountpoint().join("f")).unwrap(),
        old,
        "B should still serve its cached copy; logs {} {}",
        a.log_path().display(),
        b.log_path().display()
    );
}
