//! Shared helpers for the file system's library tests: a formatted image
//! in a temporary directory, mounting it, and fsck.

#![allow(dead_code)]

use blockdev::file::{FileDevice, FileOptions};
use blockdev::BlockDevice;
use rdlmfs::acl::Cred;
use rdlmfs::format::MkfsOptions;
use rdlmfs::{Fs, MountOptions};
use rdlmfs_mkfs::fsck::{check, FsckOptions};
use rdlmfs_mkfs::{format, FormatParams};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MIB: u64 = 1 << 20;

pub fn image(dir: &Path, size: u64, bs: u32) -> PathBuf {
    let p = dir.join("fs.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let dev = open_dev(&p);
    let opts = MkfsOptions {
        block_size: bs,
        journals: 2,
        journal_mib: Some(4),
        ..MkfsOptions::default()
    };
    format(&*dev, &FormatParams::new(opts), &mut |_| {}).expect("format");
    p
}

pub fn open_dev(p: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(p, FileOptions::default()).expect("open image"))
}

pub fn mount(p: &Path) -> Fs {
    Fs::mount(open_dev(p), MountOptions::default()).expect("mount")
}

pub fn root() -> Cred {
    Cred::root()
}

pub fn user(uid: u32) -> Cred {
    Cred {
        uid,
        gid: uid,
        groups: vec![],
    }
}

/// fsck -n: returns the findings (empty = clean).
pub fn fsck(p: &Path) -> Vec<String> {
    let dev = open_dev(p);
    let r = check(&*dev, FsckOptions { repair: false }, &mut |_, _, _| {}).expect("fsck runs");
    r.findings.iter().map(|f| f.detail.clone()).collect()
}
