//! POSIX rules through the real mount, as users meet them: setuid/setgid
//! clearing, sticky directories, directory link counts, timestamps.
//! Unprivileged callers are threads with their own credentials
//! (`common::as_user`); the test runs as root.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn setup(t: &tempfile::TempDir, name: &str) -> (std::path::PathBuf, Mounted) {
    // Unprivileged users must be able to reach the mount point.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = image(t.path(), 64 * MIB, 4096);
    let m = Mounted::start(
        &img,
        &t.path().join("mnt"),
        &t.path().join(format!("{name}.log")),
    );
    (img, m)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn append(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
    f.write_all(data)
}

#[test]
fn setuid_and_setgid_are_cleared_as_linux_does() {
    let t = tempfile::tempdir().unwrap();
    let (img, m) = setup(&t, "suid");
    chmod(&m.mnt, 0o777);

    // An unprivileged write clears setuid, and setgid with group execute.
    std::fs::write(m.p("both"), b"x").unwrap();
    chmod(&m.p("both"), 0o6777);
    assert_eq!(mode(&m.p("both")), 0o6777);
    as_user(1000, 1000, || append(&m.p("both"), b"by 1000")).expect("uid 1000 writes a 0777 file");
    assert_eq!(mode(&m.p("both")), 0o777, "write by uid 1000");
    assert_eq!(std::fs::read(m.p("both")).unwrap(), b"xby 1000");

    // setgid without group execute (mandatory locking) stays.
    std::fs::write(m.p("lock"), b"x").unwrap();
    chmod(&m.p("lock"), 0o2666);
    as_user(1000, 1000, || append(&m.p("lock"), b"y")).unwrap();
    assert_eq!(mode(&m.p("lock")), 0o2666);

    // Truncation by an unprivileged user clears them too.
    std::fs::write(m.p("trunc"), b"xyz").unwrap();
    chmod(&m.p("trunc"), 0o6777);
    as_user(1000, 1000, || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.p("trunc"))?
            .set_len(1)
    })
    .unwrap();
    assert_eq!(mode(&m.p("trunc")), 0o777, "ftruncate by uid 1000");
    assert_eq!(std::fs::read(m.p("trunc")).unwrap(), b"x");

    // The owner without privileges loses them on write as well.
    as_user(1000, 1000, || {
        std::fs::write(m.p("own"), b"mine")?;
        std::fs::set_permissions(m.p("own"), std::fs::Permissions::from_mode(0o4755))
    })
    .unwrap();
    assert_eq!(mode(&m.p("own")), 0o4755);
    as_user(1000, 1000, || append(&m.p("own"), b"!")).unwrap();
    assert_eq!(mode(&m.p("own")), 0o755, "owner's own write");

    // root (CAP_FSETID) keeps them.
    std::fs::write(m.p("rootw"), b"x").unwrap();
    chmod(&m.p("rootw"), 0o6755);
    append(&m.p("rootw"), b"y").unwrap();
    assert_eq!(mode(&m.p("rootw")), 0o6755, "write by root");

    // chown by root: setuid cleared; setgid cleared only with group
    // execute; directories keep theirs.
    for (name, before, after) in [
        ("c1", 0o6755, 0o755),
        ("c2", 0o4644, 0o644),
        ("c3", 0o2644, 0o2644),
        ("c4", 0o2755, 0o755),
    ] {
        std::fs::write(m.p(name), b"x").unwrap();
        chmod(&m.p(name), before);
        std::os::unix::fs::chown(m.p(name), Some(1000), Some(1000)).unwrap();
        assert_eq!(mode(&m.p(name)), after, "chown of a {before:o} file");
        assert_eq!(std::fs::metadata(m.p(name)).unwrap().uid(), 1000);
    }
    std::fs::create_dir(m.p("sgdir")).unwrap();
    chmod(&m.p("sgdir"), 0o2775);
    std::os::unix::fs::chown(m.p("sgdir"), Some(1000), Some(1000)).unwrap();
    assert_eq!(mode(&m.p("sgdir")), 0o2775, "chown of a setgid directory");

    // chmod g+s by the owner who is not in the file's group: dropped.
    as_user(1000, 1000, || std::fs::write(m.p("grp"), b"x")).unwrap();
    std::os::unix::fs::chown(m.p("grp"), None, Some(0)).unwrap();
    as_user(1000, 1000, || {
        std::fs::set_permissions(m.p("grp"), std::fs::Permissions::from_mode(0o2755))
    })
    .unwrap();
    assert_eq!(mode(&m.p("grp")), 0o755, "setgid set by a non-member");

    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

#[test]
fn sticky_directories_protect_other_users_entries() {
    let t = tempfile::tempdir().unwrap();
    let (img, m) = setup(&t, "sticky");
    std::fs::create_dir(m.p("tmp")).unwrap();
    chmod(&m.p("tmp"), 0o1777);
    std::fs::create_dir(m.p("open")).unwrap();
    chmod(&m.p("open"), 0o777);
    for d in ["tmp", "open"] {
        as_user(1001, 1001, || {
            std::fs::write(m.p(&format!("{d}/theirs")), b"1001")?;
            std::fs::create_dir(m.p(&format!("{d}/theirdir")))
        })
        .unwrap();
        as_user(1000, 1000, || {
            std::fs::write(m.p(&format!("{d}/mine")), b"1000")
        })
        .unwrap();
    }
    // In the sticky directory uid 1000 cannot remove or rename 1001's
    // entries, nor replace them by a rename.
    let e = as_user(1000, 1000, || {
        [
            errno_of(std::fs::remove_file(m.p("tmp/theirs"))),
            errno_of(std::fs::rename(m.p("tmp/theirs"), m.p("tmp/stolen"))),
            errno_of(std::fs::rename(m.p("tmp/mine"), m.p("tmp/theirs"))),
            errno_of(std::fs::remove_dir(m.p("tmp/theirdir"))),
            errno_of(std::fs::rename(m.p("tmp/theirdir"), m.p("tmp/d2"))),
        ]
    });
    assert_eq!(
        e,
        [libc::EPERM; 5],
        "unlink, rename, rename over, rmdir, rename dir"
    );
    assert_eq!(std::fs::read(m.p("tmp/theirs")).unwrap(), b"1001");
    assert!(std::fs::metadata(m.p("tmp/theirdir")).unwrap().is_dir());
    // Its own entries it may rename and remove.
    as_user(1000, 1000, || {
        std::fs::rename(m.p("tmp/mine"), m.p("tmp/mine2"))?;
        std::fs::remove_file(m.p("tmp/mine2"))
    })
    .expect("the owner renames and removes its file");
    // The owner of the other file may too; root may remove anything.
    as_user(1001, 1001, || {
        std::fs::rename(m.p("tmp/theirs"), m.p("tmp/theirs2"))
    })
    .expect("the owner renames its file");
    std::fs::remove_file(m.p("tmp/theirs2")).expect("root removes");
    std::fs::remove_dir(m.p("tmp/theirdir")).expect("root removes a dir");
    // The directory's owner may remove entries in it: hand tmp to 1002.
    as_user(1001, 1001, || std::fs::write(m.p("tmp/x"), b"x")).unwrap();
    std::os::unix::fs::chown(m.p("tmp"), Some(1002), Some(1002)).unwrap();
    as_user(1002, 1002, || std::fs::remove_file(m.p("tmp/x")))
        .expect("the sticky directory's owner removes");
    // Without the sticky bit the same removals are allowed.
    as_user(1000, 1000, || {
        std::fs::rename(m.p("open/theirs"), m.p("open/taken"))?;
        std::fs::remove_file(m.p("open/taken"))?;
        std::fs::remove_dir(m.p("open/theirdir"))
    })
    .expect("a non-sticky 0777 directory allows it");
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

fn nlink(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().nlink()
}

#[test]
fn directory_link_counts_follow_subdirectories() {
    let t = tempfile::tempdir().unwrap();
    let (img, m) = setup(&t, "nlink");
    let root0 = nlink(&m.mnt);
    std::fs::create_dir(m.p("a")).unwrap();
    assert_eq!(nlink(&m.mnt), root0 + 1, "mkdir raises the parent's count");
    assert_eq!(nlink(&m.p("a")), 2);
    std::fs::create_dir(m.p("a/x")).unwrap();
    std::fs::create_dir(m.p("a/y")).unwrap();
    std::fs::write(m.p("a/file"), b"f").unwrap();
    assert_eq!(nlink(&m.p("a")), 4, "files do not count");
    std::fs::create_dir(m.p("b")).unwrap();
    assert_eq!(nlink(&m.mnt), root0 + 2);
    // A directory moving across parents moves one link.
    std::fs::rename(m.p("a/x"), m.p("b/x")).unwrap();
    assert_eq!((nlink(&m.p("a")), nlink(&m.p("b"))), (3, 3));
    assert_eq!(nlink(&m.p("b/x")), 2);
    // Within one parent nothing changes.
    std::fs::rename(m.p("b/x"), m.p("b/z")).unwrap();
    assert_eq!(nlink(&m.p("b")), 3);
    // A file moving changes no directory's count.
    std::fs::rename(m.p("a/file"), m.p("b/file")).unwrap();
    assert_eq!((nlink(&m.p("a")), nlink(&m.p("b"))), (3, 3));
    // Replacing an empty directory by a rename: the victim's link goes.
    std::fs::rename(m.p("a/y"), m.p("b/z")).unwrap();
    assert_eq!((nlink(&m.p("a")), nlink(&m.p("b"))), (2, 3));
    std::fs::remove_dir(m.p("b/z")).unwrap();
    assert_eq!(nlink(&m.p("b")), 2, "rmdir lowers the parent's count");
    std::fs::create_dir(m.p("b/deep")).unwrap();
    std::fs::create_dir(m.p("b/deep/er")).unwrap();
    // A directory moving up to the root.
    std::fs::rename(m.p("b/deep"), m.p("deep")).unwrap();
    assert_eq!(nlink(&m.mnt), root0 + 3);
    assert_eq!((nlink(&m.p("b")), nlink(&m.p("deep"))), (2, 3));
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
    // Persisted.
    let m = Mounted::start(&img, &t.path().join("mnt"), &t.path().join("nlink2.log"));
    assert_eq!(nlink(&m.mnt), root0 + 3);
    assert_eq!(
        (nlink(&m.p("a")), nlink(&m.p("b")), nlink(&m.p("deep"))),
        (2, 2, 3)
    );
    m.stop();
}

/// An operation and its name.
type Named<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// Asserts `lo <= t <= hi`, in nanoseconds.
#[track_caller]
fn within(what: &str, t: i128, lo: i128, hi: i128) {
    assert!(
        lo <= t && t <= hi,
        "{what}: {t} not within [{lo}, {hi}] (off by {} ns / {} ns)",
        t - lo,
        t - hi
    );
}

/// Runs `f` between two clock readings.
fn timed<T>(f: impl FnOnce() -> T) -> (T, i128, i128) {
    std::thread::sleep(std::time::Duration::from_millis(5));
    let lo = now_ns();
    let r = f();
    let hi = now_ns();
    std::thread::sleep(std::time::Duration::from_millis(5));
    (r, lo, hi)
}

#[test]
fn timestamps_change_as_posix_says_with_nanoseconds() {
    let t = tempfile::tempdir().unwrap();
    let (img, m) = setup(&t, "times");
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::create_dir(m.p("e")).unwrap();
    let f = m.p("d/f");

    // create: all three times of the new file, mtime/ctime of the parent.
    let (_, lo, hi) = timed(|| std::fs::File::create(&f).unwrap());
    let (a, mt, c) = times(&f);
    assert_eq!((a, mt), (c, c), "a new file's times are equal");
    within("create: ctime", c, lo, hi);
    let (da, dm, dc) = times(&m.p("d"));
    within("create: parent mtime", dm, lo, hi);
    within("create: parent ctime", dc, lo, hi);
    assert!(da < lo, "create does not touch the parent's atime");

    // write: mtime and ctime, not atime.
    let (a0, _, _) = times(&f);
    let (_, lo, hi) = timed(|| append(&f, b"data").unwrap());
    let (a, mt, c) = times(&f);
    assert_eq!(a, a0, "write changed atime");
    within("write: mtime", mt, lo, hi);
    within("write: ctime", c, lo, hi);

    // chmod, chown, link: ctime only.
    let (a0, m0, _) = times(&f);
    let ops: [Named; 3] = [
        ("chmod", Box::new(|| chmod(&f, 0o600))),
        (
            "chown",
            Box::new(|| std::os::unix::fs::chown(&f, Some(1000), Some(1000)).unwrap()),
        ),
        (
            "link",
            Box::new(|| std::fs::hard_link(&f, m.p("d/f2")).unwrap()),
        ),
    ];
    let mut last = (0, 0);
    for (what, op) in ops {
        let (_, lo, hi) = timed(op);
        let (a, mt, c) = times(&f);
        assert_eq!((a, mt), (a0, m0), "{what} changed atime or mtime");
        within(&format!("{what}: ctime"), c, lo, hi);
        last = (lo, hi);
    }
    let (_, dm, dc) = times(&m.p("d"));
    within("link: parent mtime", dm, last.0, last.1);
    within("link: parent ctime", dc, last.0, last.1);

    // rename across directories: ctime of the moved inode, mtime/ctime of
    // both parents; its mtime and atime stay.
    let (a0, m0, _) = times(&f);
    let g = m.p("e/g");
    let (_, lo, hi) = timed(|| std::fs::rename(&f, &g).unwrap());
    let (a, mt, c) = times(&g);
    assert_eq!((a, mt), (a0, m0), "rename changed atime or mtime");
    within("rename: ctime of the moved inode", c, lo, hi);
    for d in ["d", "e"] {
        let (_, dm, dc) = times(&m.p(d));
        within(&format!("rename: mtime of {d}"), dm, lo, hi);
        within(&format!("rename: ctime of {d}"), dc, lo, hi);
    }

    // utimensat with explicit nanoseconds round-trips exactly; ctime is now.
    let cg = cpath(&g);
    let ts = [
        libc::timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_234_567_891,
            tv_nsec: 987_654_321,
        },
    ];
    // SAFETY: a valid path and two timespecs.
    let (r, lo, hi) =
        timed(|| unsafe { libc::utimensat(libc::AT_FDCWD, cg.as_ptr(), ts.as_ptr(), 0) });
    assert_eq!(r, 0);
    let (a, mt, c) = times(&g);
    assert_eq!(a, 1_234_567_890_123_456_789);
    assert_eq!(mt, 1_234_567_891_987_654_321);
    within("utimensat: ctime", c, lo, hi);
    // UTIME_NOW for mtime only, UTIME_OMIT for atime.
    let ts2 = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: as above.
    let (r, lo, hi) =
        timed(|| unsafe { libc::utimensat(libc::AT_FDCWD, cg.as_ptr(), ts2.as_ptr(), 0) });
    assert_eq!(r, 0);
    let (a, mt, _) = times(&g);
    assert_eq!(a, 1_234_567_890_123_456_789, "UTIME_OMIT kept atime");
    within("utimensat UTIME_NOW: mtime", mt, lo, hi);

    // unlink of one link: ctime of the inode, mtime/ctime of the parent.
    let (_, lo, hi) = timed(|| std::fs::remove_file(&g).unwrap());
    let (_, _, c) = times(&m.p("d/f2"));
    within("unlink: ctime of the remaining link's inode", c, lo, hi);
    let (_, em, ec) = times(&m.p("e"));
    within("unlink: parent mtime", em, lo, hi);
    within("unlink: parent ctime", ec, lo, hi);
    // rmdir: the parent's mtime/ctime.
    let (_, lo, hi) = timed(|| std::fs::remove_dir(m.p("e")).unwrap());
    let (_, rm, rc) = times(&m.mnt);
    within("rmdir: parent mtime", rm, lo, hi);
    within("rmdir: parent ctime", rc, lo, hi);

    // The nanoseconds survive a remount.
    let before = times(&m.p("d/f2"));
    m.stop();
    let m = Mounted::start(&img, &t.path().join("mnt"), &t.path().join("times2.log"));
    assert_eq!(times(&m.p("d/f2")), before);
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}

#[test]
fn reads_update_atime_with_strictatime_and_not_with_relatime_when_recent() {
    let t = tempfile::tempdir().unwrap();
    let (img, m) = setup(&t, "atime1");
    let mnt = t.path().join("mnt");
    std::fs::write(m.p("f"), vec![5u8; 200_000]).unwrap();
    // atime in the future (later than mtime and ctime, less than a day
    // old): relatime leaves it, strictatime does not.
    let future = (now_ns() / 1_000_000_000) as i64 + 3600;
    let ts = [
        libc::timespec {
            tv_sec: future,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
    ];
    let cf = cpath(&m.p("f"));
    // SAFETY: a valid path and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cf.as_ptr(), ts.as_ptr(), 0) },
        0
    );
    m.stop();
    let future_ns = i128::from(future) * 1_000_000_000 + 5;

    // Each mount starts with an empty page cache, so the reads reach the
    // file system.
    let m = Mounted::start(&img, &mnt, &t.path().join("atime2.log"));
    assert_eq!(std::fs::read(m.p("f")).unwrap().len(), 200_000);
    assert_eq!(
        times(&m.p("f")).0,
        future_ns,
        "relatime updated a recent atime"
    );
    m.stop();

    let m = Mounted::start_with(&img, &mnt, &t.path().join("atime3.log"), "strictatime");
    let (v, lo, hi) = timed(|| std::fs::read(m.p("f")).unwrap());
    assert_eq!(v.len(), 200_000);
    let (a, mt, _) = times(&m.p("f"));
    within("strictatime read: atime", a, lo, hi);
    assert_eq!(mt, 1_000_000_000_000_000_000, "a read changed mtime");
    m.stop();

    // The new atime was committed.
    let m = Mounted::start_with(&img, &mnt, &t.path().join("atime4.log"), "noatime");
    let (a2, _, _) = times(&m.p("f"));
    assert_eq!(a2, a, "the atime did not persist");
    let _ = std::fs::read(m.p("f")).unwrap();
    assert_eq!(times(&m.p("f")).0, a, "noatime updated atime");
    m.stop();
    assert_eq!(fsck(&img), Vec::<String>::new());
}
