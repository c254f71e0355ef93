//! Glocks: the one interface through which the file system takes every
//! lock it needs — on inodes, resource groups, journals, the rename lock.
//!
//! Owns: glock names (a type and a number, as GFS2's), the modes, the
//! protocol trait a lock module implements, the `nolock` module, and the
//! table of glocks this node holds *cached* (kept after use until someone
//! else needs them). May not touch: what a glock protects — the caches that
//! a demote must write back and invalidate belong to the callers, which
//! register them per glock name.
//!
//! Modes: [`GlockMode::Shared`] (the DLM's PR) to read what the glock
//! covers, [`GlockMode::Exclusive`] (EX) to change it. With `lock_nolock`
//! every request is granted at once: one node, nobody to ask. The cluster
//! module maps a name onto a DLM resource and a mode onto PR/EX.

use crate::error::Result;
use std::collections::HashMap;
use std::fmt;

/// What a glock protects, which is also the first part of its DLM name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GlockKind {
    /// Mount and recovery ordering (number 0: the control lock).
    Control = 1,
    /// An inode: its dinode, data, directory entries and xattrs.
    Inode = 2,
    /// A resource group: its header and bitmap.
    Rgrp = 3,
    /// Cross-directory renames, cluster-wide (number 0).
    Rename = 4,
    /// Open-file tracking: held shared by every node that has the inode
    /// open, so the last closer in the cluster frees an unlinked file.
    Iopen = 5,
    /// flock(2) on an inode.
    Flock = 6,
    /// A journal (number = journal id).
    Journal = 9,
}

/// A glock's name: kind and number (inode number, rgrp address, jid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GlockName {
    pub kind: GlockKind,
    pub number: u64,
}

impl GlockName {
    pub fn inode(ino: u64) -> GlockName {
        GlockName {
            kind: GlockKind::Inode,
            number: ino,
        }
    }
    pub fn rgrp(addr: u64) -> GlockName {
        GlockName {
            kind: GlockKind::Rgrp,
            number: addr,
        }
    }
    pub fn journal(jid: u32) -> GlockName {
        GlockName {
            kind: GlockKind::Journal,
            number: u64::from(jid),
        }
    }
    pub fn rename() -> GlockName {
        GlockName {
            kind: GlockKind::Rename,
            number: 0,
        }
    }

    /// The DLM resource name: 1 byte kind, 8 bytes number (big-endian, so
    /// names sort as the numbers do in dumps).
    pub fn resource_name(&self) -> [u8; 9] {
        let mut n = [0u8; 9];
        n[0] = self.kind as u8;
        n[1..].copy_from_slice(&self.number.to_be_bytes());
        n
    }
}

impl fmt::Display for GlockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{}", self.kind, self.number)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GlockMode {
    Shared,
    Exclusive,
}

/// A lock module: `lock_nolock` here, `lock_dlm` in the cluster.
pub trait LockProtocol: Send + Sync {
    /// "lock_nolock", "lock_dlm".
    fn name(&self) -> &'static str;
    /// Takes `name` in `mode` (or converts a held one to it), blocking
    /// until granted.
    fn lock(&self, name: GlockName, mode: GlockMode) -> Result<()>;
    /// Gives a held glock up.
    fn unlock(&self, name: GlockName) -> Result<()>;
}

/// One node, nobody to ask: every request is granted at once.
#[derive(Debug, Default)]
pub struct Nolock;

impl LockProtocol for Nolock {
    fn name(&self) -> &'static str {
        "lock_nolock"
    }
    fn lock(&self, _name: GlockName, _mode: GlockMode) -> Result<()> {
        Ok(())
    }
    fn unlock(&self, _name: GlockName) -> Result<()> {
        Ok(())
    }
}

/// Counters for `rdlmfs status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlockStats {
    /// Requests answered from a glock this node already held.
    pub cached: u64,
    /// Requests that went to the lock module.
    pub acquired: u64,
    pub released: u64,
}

/// The glocks this node holds, kept after use (cached) so the next
/// operation on the same inode asks nobody.
pub struct Glocks {
    proto: Box<dyn LockProtocol>,
    held: HashMap<GlockName, GlockMode>,
    stats: GlockStats,
}

impl Glocks {
    pub fn new(proto: Box<dyn LockProtocol>) -> Glocks {
        Glocks {
            proto,
            held: HashMap::new(),
            stats: GlockStats::default(),
        }
    }

    pub fn protocol(&self) -> &'static str {
        self.proto.name()
    }

    /// Makes sure this node holds `name` in at least `mode`.
    pub fn hold(&mut self, name: GlockName, mode: GlockMode) -> Result<()> {
        match self.held.get(&name) {
            Some(m) if *m >= mode => {
                self.stats.cached += 1;
                Ok(())
            }
            _ => {
                self.proto.lock(name, mode)?;
                self.stats.acquired += 1;
                self.held.insert(name, mode);
                Ok(())
            }
        }
    }

    /// Takes several glocks in the global lock order (kind, then number),
    /// which is what keeps two nodes locking the same inodes from
    /// deadlocking.
    pub fn hold_all(&mut self, names: &mut [(GlockName, GlockMode)]) -> Result<()> {
        names.sort();
        for (n, m) in names.iter() {
            self.hold(*n, *m)?;
        }
        Ok(())
    }

    /// Drops a cached glock (after its caches were written back and
    /// invalidated by the caller).
    pub fn release(&mut self, name: GlockName) -> Result<()> {
        if self.held.remove(&name).is_some() {
            self.stats.released += 1;
            self.proto.unlock(name)?;
        }
        Ok(())
    }

    /// Gives every glock up (unmount).
    pub fn release_all(&mut self) -> Result<()> {
        let names: Vec<GlockName> = self.held.keys().copied().collect();
        for n in names {
            self.release(n)?;
        }
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn mode(&self, name: GlockName) -> Option<GlockMode> {
        self.held.get(&name).copied()
    }

    pub fn stats(&self) -> GlockStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_glocks_ask_the_module_once() {
        let mut g = Glocks::new(Box::new(Nolock));
        g.hold(GlockName::inode(5), GlockMode::Shared).unwrap();
        g.hold(GlockName::inode(5), GlockMode::Shared).unwrap();
        g.hold(GlockName::inode(5), GlockMode::Exclusive).unwrap();
        g.hold(GlockName::inode(5), GlockMode::Shared).unwrap();
        assert_eq!(g.stats().acquired, 2);
        assert_eq!(g.stats().cached, 2);
        assert_eq!(g.mode(GlockName::inode(5)), Some(GlockMode::Exclusive));
        g.release_all().unwrap();
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn resource_names_sort_like_numbers() {
        let a = GlockName::inode(255).resource_name();
        let b = GlockName::inode(256).resource_name();
        assert!(a < b);
        assert_eq!(a[0], GlockKind::Inode as u8);
    }
}
