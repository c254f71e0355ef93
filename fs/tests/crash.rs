//! Crash safety: a metadata-heavy workload on a device that loses power
//! after its n-th write (unflushed blocks survive in random versions or not
//! at all), for every n until the workload completes. After each cut the
//! image is mounted again (replaying the journal), every file whose fsync
//! returned is checked byte for byte, the file system is unmounted and
//! fsck must find it clean.

mod common;
use blockdev::fault::{CrashPolicy, FaultDevice};
use blockdev::file::{FileDevice, FileOptions};
use common::*;
use rdlmfs::{Fs, MountOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Runs the workload until it finishes or the device dies; returns the
/// files (name → contents) whose fsync returned.
fn workload(fs: &mut Fs) -> (BTreeMap<String, Vec<u8>>, bool) {
    let c = root();
    let mut synced = BTreeMap::new();
    let r = fs.root();
    let res: rdlmfs::Result<()> = (|| {
        let d = fs.mknod(r, b"dir", libc::S_IFDIR | 0o755, 0, 0, None, &c)?;
        for i in 0..40u32 {
            let name = format!("f{i}");
            let a = fs.mknod(
                d.ino,
                name.as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                0,
                None,
                &c,
            )?;
            let len = [10usize, 3000, 9000, 70_000][(i % 4) as usize];
            let data: Vec<u8> = (0..len).map(|k| (k as u32 * 7 + i) as u8).collect();
            fs.write(a.ino, 0, &data, false, &c)?;
            if i % 3 == 0 {
                fs.setxattr(a.ino, b"user.k", Some(name.as_bytes()), 0, &c)?;
            }
            if i % 5 == 1 {
                fs.fsync(a.ino)?;
                synced.insert(name.clone(), data);
            } else if i % 5 == 2 {
                fs.rename(
                    d.ino,
                    name.as_bytes(),
                    r,
                    format!("moved{i}").as_bytes(),
                    0,
                    &c,
                )?;
            } else if i % 5 == 3 {
                fs.unlink(d.ino, name.as_bytes(), &c)?;
            } else if i % 5 == 4 {
                fs.setattr(
                    a.ino,
                    rdlmfs::ops::SetAttr {
                        size: Some(100),
                        ..Default::default()
                    },
                    &c,
                )?;
            }
            if i % 2 == 0 {
                fs.sync()?;
            }
            if i % 10 == 9 {
                let s = fs.mknod(
                    d.ino,
                    format!("sub{i}").as_bytes(),
                    libc::S_IFDIR | 0o755,
                    0,
                    0,
                    None,
                    &c,
                )?;
                fs.mknod(s.ino, b"x", libc::S_IFREG | 0o644, 0, 0, None, &c)?;
            }
        }
        fs.sync()?;
        Ok(())
    })();
    (synced, res.is_ok())
}

#[test]
fn power_cut_at_every_write_then_replay_and_fsck() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    {
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(24 * MIB).unwrap();
        drop(f);
        let dev = open_dev(&img);
        let opts = rdlmfs::format::MkfsOptions {
            block_size: 1024,
            journals: 1,
            journal_mib: Some(1),
            ..Default::default()
        };
        rdlmfs_mkfs::format(&*dev, &rdlmfs_mkfs::FormatParams::new(opts), &mut |_| {}).unwrap();
    }
    let golden = std::fs::read(&img).unwrap();
    let every: u64 = std::env::var("RDLMFS_CRASH_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut points = 0u64;
    let mut replays = 0u64;
    let mut n = 1u64;
    loop {
        std::fs::write(&img, &golden).unwrap();
        let inner = FileDevice::open(&img, FileOptions::default()).unwrap();
        let fault = Arc::new(FaultDevice::new(inner, n));
        fault.crash_after_writes(n, CrashPolicy::Random { seed: n });
        let (synced, finished) = match Fs::mount(fault.clone(), MountOptions::default()) {
            Ok(mut fs) => {
                let r = workload(&mut fs);
                drop(fs);
                r
            }
            // The cut came while mounting.
            Err(_) if fault.is_crashed() => (BTreeMap::new(), false),
            Err(e) => panic!("first mount: {e}"),
        };
        if finished && !fault.is_crashed() {
            break;
        }
        points += 1;
        let ctx = format!("crash after write {n} (RDLMFS_CRASH_STEP={every})");
        let mut fs = Fs::mount(open_dev(&img), MountOptions::default())
            .unwrap_or_else(|e| panic!("{ctx}: remount: {e}"));
        if fs.report().replay.was_dirty {
            replays += 1;
        }
        let c = root();
        let d = fs.lookup(fs.root(), b"dir", &c);
        for (name, data) in &synced {
            let d = d
                .as_ref()
                .unwrap_or_else(|e| panic!("{ctx}: dir lost: {e}"));
            let a = fs
                .lookup(d.ino, name.as_bytes(), &c)
                .unwrap_or_else(|e| panic!("{ctx}: fsync'd {name} lost: {e}"));
            let got = fs.read(a.ino, 0, data.len() + 10).unwrap();
            assert!(got == *data, "{ctx}: fsync'd {name} has wrong contents");
        }
        fs.unmount()
            .unwrap_or_else(|e| panic!("{ctx}: unmount: {e}"));
        let findings = fsck(&img);
        assert!(findings.is_empty(), "{ctx}: fsck: {findings:#?}");
        n += every;
    }
    eprintln!("crash points tried: {points} (every {every} writes), journal replays: {replays}");
    assert!(points > 20, "the workload should span many writes");
}
