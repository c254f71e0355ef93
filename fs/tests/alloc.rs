//! Where the allocator puts new inodes in a cluster, through the library:
//! one mount whose lock module plays the other nodes. It holds the rgrp
//! glocks a test gives it (a try for them fails, as the DLM's NOQUEUE
//! would) and records every waiting request (then grants it, as if the
//! other node had given the glock up).

mod common;
use common::*;
use rdlmfs::format::layout::{plan, Layout};
use rdlmfs::format::{formal_addr, MkfsOptions, RgrpFlags};
use rdlmfs::glock::{GlockKind, GlockMode, GlockName, LockProtocol};
use rdlmfs::{Fs, MountOptions};
use rdlmfs_mkfs::{format, FormatParams};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const REG: u32 = libc::S_IFREG;
const DIR: u32 = libc::S_IFDIR;

/// The other nodes, as one mount sees them through its lock module.
#[derive(Default)]
struct OtherNodes {
    /// Glocks another node holds: a try fails, a request waits.
    holds: Mutex<HashSet<GlockName>>,
    /// Every request this node had to wait for.
    waited: Mutex<Vec<GlockName>>,
}

impl OtherNodes {
    fn rgrp_waits(&self) -> Vec<GlockName> {
        let w = self.waited.lock().unwrap();
        w.iter()
            .filter(|n| n.kind == GlockKind::Rgrp)
            .copied()
            .collect()
    }
}

impl LockProtocol for OtherNodes {
    fn name(&self) -> &'static str {
        "test_other_nodes"
    }
    fn may_wait(&self) -> bool {
        true
    }
    fn lock(&self, name: GlockName, _mode: GlockMode) -> rdlmfs::Result<Option<Vec<u8>>> {
        self.waited.lock().unwrap().push(name);
        self.holds.lock().unwrap().remove(&name);
        Ok(None)
    }
    fn try_lock(&self, name: GlockName, _mode: GlockMode) -> rdlmfs::Result<bool> {
        Ok(!self.holds.lock().unwrap().contains(&name))
    }
    fn demote_to_shared(&self, _: GlockName, _: Option<Vec<u8>>) -> rdlmfs::Result<()> {
        Ok(())
    }
    fn unlock(&self, _: GlockName, _: Option<Vec<u8>>) -> rdlmfs::Result<()> {
        Ok(())
    }
}

const IMAGE_BYTES: u64 = 96 * MIB;

/// Small rgrps, so that there are several (and 7, which spreads homes by
/// journal id, is no multiple of their number).
fn options() -> MkfsOptions {
    MkfsOptions {
        block_size: 4096,
        journals: 2,
        journal_mib: Some(4),
        rgrp_mib: Some(8),
        ..MkfsOptions::default()
    }
}

fn image(dir: &Path) -> (PathBuf, Layout) {
    let p = dir.join("fs.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(IMAGE_BYTES)
        .unwrap();
    format(&*open_dev(&p), &FormatParams::new(options()), &mut |_| {}).expect("format");
    (p, plan(IMAGE_BYTES, &options()).expect("layout"))
}

fn rgrp_of(layout: &Layout, ino: u64) -> usize {
    let a = formal_addr(ino);
    layout
        .rgrps
        .iter()
        .position(|r| r.data0 <= a && a < r.end())
        .unwrap_or_else(|| panic!("inode {ino} lies in no rgrp"))
}

fn rgrp_glock(layout: &Layout, i: usize) -> GlockName {
    GlockName::rgrp(layout.rgrps[i].addr)
}

/// Rgrp `i` goes to another node: this one gives its glock up (in this
/// test world its loaded copy stays right: nobody else writes).
fn give_away(fs: &Fs, other: &OtherNodes, layout: &Layout, i: usize) {
    let n = rgrp_glock(layout, i);
    fs.glocks().release(n).unwrap();
    other.holds.lock().unwrap().insert(n);
}

fn mknod(fs: &mut Fs, parent: u64, name: &str, mode: u32) -> u64 {
    let c = root();
    fs.retrying(|fs| fs.mknod(parent, name.as_bytes(), mode, 0, 0, None, &c))
        .unwrap_or_else(|e| panic!("mknod {name}: {e}"))
        .ino
}

#[test]
fn a_cluster_allocation_skips_rgrps_other_nodes_hold_and_waits_only_when_it_must() {
    let t = tempfile::tempdir().unwrap();
    let (img, layout) = image(t.path());
    let allocatable: Vec<usize> = (0..layout.rgrps.len())
        .filter(|&i| {
            let f = layout.rgrps[i].flags;
            !f.contains(RgrpFlags::JOURNAL) && !f.contains(RgrpFlags::NOALLOC)
        })
        .collect();
    assert!(allocatable.len() >= 3, "{} rgrps", allocatable.len());
    let other = Arc::new(OtherNodes::default());
    let opts = MountOptions {
        jid: 1,
        ..MountOptions::default()
    };
    let mut fs = Fs::mount_with(open_dev(&img), opts, other.clone()).expect("mount");
    let r = fs.root();
    let root_rgrp = rgrp_of(&layout, r);

    // Another node works in the root's rgrp. A file made in the root
    // (whose goal is that rgrp) goes elsewhere, without waiting for it.
    give_away(&fs, &other, &layout, root_rgrp);
    other.waited.lock().unwrap().clear();
    let f = mknod(&mut fs, r, "f", REG | 0o644);
    assert_ne!(rgrp_of(&layout, f), root_rgrp);
    assert_eq!(other.rgrp_waits(), vec![], "waited for an rgrp glock");

    // A directory goes to this node's home rgrp, not beside its parent,
    // and its files follow it there.
    let d = mknod(&mut fs, r, "d", DIR | 0o755);
    let home = rgrp_of(&layout, d);
    assert_ne!(home, root_rgrp);
    for k in 0..20 {
        let x = mknod(&mut fs, d, &format!("x{k}"), REG | 0o644);
        assert_eq!(rgrp_of(&layout, x), home, "file x{k}");
    }
    assert_eq!(other.rgrp_waits(), vec![], "waited for an rgrp glock");

    // Other nodes hold every rgrp: the file system is not full, so the
    // allocation waits (for the rgrp of its goal) rather than fail.
    for &i in &allocatable {
        give_away(&fs, &other, &layout, i);
    }
    let g = mknod(&mut fs, r, "g", REG | 0o644);
    assert_eq!(other.rgrp_waits(), vec![rgrp_glock(&layout, root_rgrp)]);
    assert_eq!(rgrp_of(&layout, g), root_rgrp);
    fs.unmount().unwrap();

    // One node (lock_nolock) keeps a new directory beside its parent.
    let mut fs = mount(&img);
    let e = mknod(&mut fs, r, "e", DIR | 0o755);
    assert_eq!(rgrp_of(&layout, e), root_rgrp);
    fs.unmount().unwrap();
    assert_eq!(fsck(&img), Vec::<String>::new());
}
