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

use crate::error::{FsError, Result};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

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
    pub fn iopen(ino: u64) -> GlockName {
        GlockName {
            kind: GlockKind::Iopen,
            number: ino,
        }
    }
    /// The control lock: held Exclusive by whoever mounts first or
    /// recovers journals, Shared by every mounted node.
    pub fn control() -> GlockName {
        GlockName {
            kind: GlockKind::Control,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GlockMode {
    Shared,
    Exclusive,
}

/// A lock module: `lock_nolock` here, `lock_dlm` in [`crate::lock_dlm`].
pub trait LockProtocol: Send + Sync {
    /// "lock_nolock", "lock_dlm".
    fn name(&self) -> &'static str;
    /// Whether a request may have to wait for another node. When it may,
    /// an operation that misses a glock is undone and waits outside the
    /// file system (see [`Glocks::hold`]); `lock_nolock` never waits.
    fn may_wait(&self) -> bool;
    /// Takes `name` in `mode` (or converts a held one up to it), blocking
    /// until granted. Returns the lock value block the grant carried, if
    /// it is valid.
    fn lock(&self, name: GlockName, mode: GlockMode) -> Result<Option<Vec<u8>>>;
    /// Takes `name` in `mode` only if that needs no wait (another node
    /// holds it incompatibly: Ok(false)).
    fn try_lock(&self, name: GlockName, mode: GlockMode) -> Result<bool>;
    /// Converts a held Exclusive glock down to Shared, writing `lvb`.
    fn demote_to_shared(&self, name: GlockName, lvb: Option<Vec<u8>>) -> Result<()>;
    /// Gives a held glock up, writing `lvb` if it was held Exclusive.
    fn unlock(&self, name: GlockName, lvb: Option<Vec<u8>>) -> Result<()>;
}

/// One node, nobody to ask: every request is granted at once.
#[derive(Debug, Default)]
pub struct Nolock;

impl LockProtocol for Nolock {
    fn name(&self) -> &'static str {
        "lock_nolock"
    }
    fn may_wait(&self) -> bool {
        false
    }
    fn lock(&self, _name: GlockName, _mode: GlockMode) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn try_lock(&self, _name: GlockName, _mode: GlockMode) -> Result<bool> {
        Ok(true)
    }
    fn demote_to_shared(&self, _name: GlockName, _lvb: Option<Vec<u8>>) -> Result<()> {
        Ok(())
    }
    fn unlock(&self, _name: GlockName, _lvb: Option<Vec<u8>>) -> Result<()> {
        Ok(())
    }
}

/// Counters for `rdlmfs status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlockStats {
    /// Requests answered from a glock this node already held.
    pub cached: u64,
    /// Grants from the lock module.
    pub acquired: u64,
    /// Operations undone to wait for a glock outside the file system.
    pub waits: u64,
    /// Glocks given up or converted down for another node.
    pub demoted: u64,
    pub released: u64,
    /// Glocks given up to stay under the mount's limit (`glocks=N`).
    pub shrunk: u64,
}

/// What [`Glocks::begin_demote`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteClaim {
    /// Not held (or pinned): nothing to give up.
    NotHeld,
    /// A request for it is talking to the lock module: ask again later.
    Busy,
    /// Claimed for the demote; it is held in this mode.
    Claimed(GlockMode),
}

/// Conversions failed by a conversion deadlock that one request retries
/// before it gives up (each retry waits a little longer, up to 51 ms).
pub const MAX_CONVERSION_RETRIES: u32 = 400;

#[derive(Debug, Default)]
struct Entry {
    mode: Option<GlockMode>,
    /// A request or a demote is talking to the lock module about it.
    busy: bool,
    granted_at: Option<Instant>,
    /// Operations that used it (the demote worker checks that nobody did
    /// while the kernel's caches were being invalidated).
    uses: u64,
    /// The LVB of the last grant (valid ones only).
    lvb: Option<Vec<u8>>,
    /// Never demoted for another node (this node's journal, its per-node
    /// system files): only recovery after this node's death takes them.
    pinned: bool,
    /// When an operation last used it (the shrinker gives the least
    /// recently used up first).
    last_used: Option<Instant>,
}

impl Entry {
    fn used(&mut self) {
        self.uses += 1;
        self.last_used = Some(Instant::now());
    }
}

#[derive(Default)]
struct Table {
    entries: HashMap<GlockName, Entry>,
    stats: GlockStats,
}

/// The glocks this node holds, kept after use (cached) so the next
/// operation on the same inode asks nobody. A cheap handle: the file
/// system, the allocator, waiting requests and the demote worker share one
/// table.
///
/// Rules: an operation checks its glocks with [`Glocks::hold`] while it
/// holds the file system; a glock it does not hold makes `hold` return
/// [`FsError::GlockWait`], the caller undoes the operation, lets the file
/// system go, waits in [`Glocks::acquire`] and runs the operation again.
/// Only the demote worker lowers a mode, and only while it holds the file
/// system, so a glock an operation checked stays held until the operation
/// ends.
#[derive(Clone)]
pub struct Glocks {
    proto: Arc<dyn LockProtocol>,
    table: Arc<(Mutex<Table>, Condvar)>,
}

impl Glocks {
    pub fn new(proto: Arc<dyn LockProtocol>) -> Glocks {
        Glocks {
            proto,
            table: Arc::new((Mutex::new(Table::default()), Condvar::new())),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn protocol(&self) -> &'static str {
        self.proto.name()
    }

    /// Whether requests may wait for other nodes (a cluster mount).
    pub fn is_clustered(&self) -> bool {
        self.proto.may_wait()
    }

    /// Makes sure this node holds `name` in at least `mode`, for an
    /// operation that holds the file system. In a cluster a glock not held
    /// is an [`FsError::GlockWait`]: undo, wait in [`Glocks::acquire`], run
    /// again.
    pub fn hold(&self, name: GlockName, mode: GlockMode) -> Result<()> {
        let mut g = self.table();
        let t = &mut *g;
        let e = t.entries.entry(name).or_default();
        if e.mode >= Some(mode) {
            e.used();
            t.stats.cached += 1;
            return Ok(());
        }
        if self.proto.may_wait() {
            t.stats.waits += 1;
            return Err(FsError::GlockWait { name, mode });
        }
        let lvb = self.proto.lock(name, mode)?;
        e.mode = Some(mode);
        e.granted_at = Some(Instant::now());
        e.used();
        e.lvb = lvb;
        t.stats.acquired += 1;
        Ok(())
    }

    /// Takes several glocks in the global lock order (kind, then number).
    pub fn hold_all(&self, names: &mut [(GlockName, GlockMode)]) -> Result<()> {
        names.sort();
        for (n, m) in names.iter() {
            self.hold(*n, *m)?;
        }
        Ok(())
    }

    /// [`Glocks::hold`] for an operation that can do without `name` (the
    /// allocator skips an rgrp another node is using): a glock not held is
    /// asked for *without waiting* (the lock module's try), so this may be
    /// called with the file system held and never returns
    /// [`FsError::GlockWait`]. Ok(false) when another node holds it
    /// incompatibly, recovery holds grants back, or a request or demote
    /// for it is in flight here (a second request on the same lock would
    /// race that one at the lock module; a demote in flight means another
    /// node wants it).
    pub fn try_hold(&self, name: GlockName, mode: GlockMode) -> Result<bool> {
        let (lock, changed) = &*self.table;
        let mut g = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let t = &mut *g;
        let e = t.entries.entry(name).or_default();
        if e.mode >= Some(mode) {
            e.used();
            t.stats.cached += 1;
            return Ok(true);
        }
        if !self.proto.may_wait() {
            drop(g);
            return self.hold(name, mode).map(|()| true);
        }
        if e.busy {
            return Ok(false);
        }
        e.busy = true;
        drop(g);
        let r = self.proto.try_lock(name, mode);
        let mut g = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let t = &mut *g;
        let e = t.entries.entry(name).or_default();
        e.busy = false;
        changed.notify_all();
        if matches!(r, Ok(true)) {
            e.mode = Some(mode);
            e.granted_at = Some(Instant::now());
            e.used();
            // The try reports no LVB: none is known rather than an older one.
            e.lvb = None;
            t.stats.acquired += 1;
        }
        r
    }

    /// Waits until this node holds `name` in at least `mode`, asking the
    /// lock module. Called *without* the file system held: the grant may
    /// need another node to demote, and this node's demote worker may need
    /// the file system meanwhile.
    pub fn acquire(&self, name: GlockName, mode: GlockMode) -> Result<()> {
        let (lock, changed) = &*self.table;
        let mut g = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut deadlocks = 0u32;
        loop {
            let e = g.entries.entry(name).or_default();
            if e.mode >= Some(mode) {
                return Ok(());
            }
            if e.busy {
                g = changed.wait(g).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            e.busy = true;
            drop(g);
            tracing::debug!(glock = %name, ?mode, "asking the lock manager");
            let r = self.proto.lock(name, mode);
            tracing::debug!(glock = %name, ?mode, ok = r.is_ok(), "lock manager answered");
            g = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let t = &mut *g;
            let e = t.entries.entry(name).or_default();
            e.busy = false;
            changed.notify_all();
            match r {
                Ok(lvb) => {
                    e.mode = Some(mode);
                    e.granted_at = Some(Instant::now());
                    e.lvb = lvb;
                    t.stats.acquired += 1;
                    return Ok(());
                }
                // Two nodes converting Shared up to Exclusive at once: the
                // lock manager fails one conversion (this one) and the
                // other waits for our Shared, which the demote worker now
                // gives up. Step aside (busy cleared so it can) and ask
                // again; by then we may hold nothing and ask afresh.
                Err(FsError::Errno(libc::EDEADLK)) if deadlocks < MAX_CONVERSION_RETRIES => {
                    deadlocks += 1;
                    drop(g);
                    std::thread::sleep(std::time::Duration::from_millis(
                        1 + u64::from(deadlocks.min(50)),
                    ));
                    g = lock.lock().unwrap_or_else(PoisonError::into_inner);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// For the demote worker: claims `name` for a demote. Never waits: a
    /// request for the glock in flight (a conversion queued at the lock
    /// manager) may itself wait for another node's demote, so a worker
    /// that waited here could deadlock two nodes (each worker waiting for
    /// its own conversion, each conversion for the other worker).
    pub fn begin_demote(&self, name: GlockName) -> DemoteClaim {
        let mut t = self.table();
        let Some(e) = t.entries.get_mut(&name) else {
            return DemoteClaim::NotHeld;
        };
        if e.busy {
            return DemoteClaim::Busy;
        }
        if e.pinned {
            return DemoteClaim::NotHeld;
        }
        match e.mode {
            None => DemoteClaim::NotHeld,
            Some(m) => {
                e.busy = true;
                DemoteClaim::Claimed(m)
            }
        }
    }

    /// Takes `name` only if no other node holds it incompatibly; Ok(false)
    /// otherwise. Called without the file system held.
    pub fn try_acquire(&self, name: GlockName, mode: GlockMode) -> Result<bool> {
        if self.mode(name) >= Some(mode) {
            return Ok(true);
        }
        if !self.proto.try_lock(name, mode)? {
            return Ok(false);
        }
        let mut t = self.table();
        let e = t.entries.entry(name).or_default();
        e.mode = Some(mode);
        e.granted_at = Some(Instant::now());
        t.stats.acquired += 1;
        Ok(true)
    }

    /// Gives `name` up at once (no demote request: this node is done with
    /// it, e.g. a journal it recovered). The caller has written back what
    /// it covers.
    pub fn release(&self, name: GlockName) -> Result<()> {
        let held = self.table().entries.remove(&name);
        if let Some(mode) = held.and_then(|e| e.mode) {
            self.table().stats.released += 1;
            self.proto.unlock(name, lvb_on_release(mode, None))?;
        }
        Ok(())
    }

    /// Takes `name` and keeps it until unmount: demote requests for it are
    /// ignored.
    pub fn acquire_pinned(&self, name: GlockName, mode: GlockMode) -> Result<()> {
        self.acquire(name, mode)?;
        self.pin(name);
        Ok(())
    }

    /// Keeps a held glock until [`Glocks::release`]: demote requests for
    /// it are ignored (an iopen glock while the file is open here).
    pub fn pin(&self, name: GlockName) {
        if let Some(e) = self.table().entries.get_mut(&name) {
            e.pinned = true;
        }
    }

    /// When `name` was last granted (the minimum hold time counts from
    /// it).
    pub fn granted_at(&self, name: GlockName) -> Option<Instant> {
        self.table().entries.get(&name).and_then(|e| e.granted_at)
    }

    /// How often operations used `name` so far.
    pub fn uses(&self, name: GlockName) -> u64 {
        self.table().entries.get(&name).map_or(0, |e| e.uses)
    }

    /// The LVB the last grant of `name` carried, if valid.
    pub fn lvb(&self, name: GlockName) -> Option<Vec<u8>> {
        self.table().entries.get(&name).and_then(|e| e.lvb.clone())
    }

    /// Ends a demote begun with [`Glocks::begin_demote`]: asks the lock
    /// module for `to` (Shared, or None to give it up), writing `lvb`.
    /// Must be called with the file system held (no operation may be
    /// using the glock).
    pub fn finish_demote(
        &self,
        name: GlockName,
        to: Option<GlockMode>,
        lvb: Option<Vec<u8>>,
    ) -> Result<()> {
        let held = self.mode(name);
        let lvb = match held {
            Some(m) => lvb_on_release(m, lvb),
            None => lvb,
        };
        // What the lock now carries, as a new grant would report it (an
        // empty LVB is an invalid one).
        let carried = lvb.clone().filter(|b| !b.is_empty());
        let r = match to {
            Some(GlockMode::Shared) => self.proto.demote_to_shared(name, lvb),
            Some(GlockMode::Exclusive) => Ok(()),
            None => self.proto.unlock(name, lvb),
        };
        let (lock, changed) = &*self.table;
        let mut g = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let t = &mut *g;
        if let Some(e) = t.entries.get_mut(&name) {
            e.busy = false;
            if r.is_ok() {
                // Down from Exclusive, the grant's LVB predates this
                // node's own changes: keep the one just written instead,
                // or a Shared holder that answers from its LVB
                // (`Fs::lvb_attrs`) would answer with the old inode.
                match to {
                    None => e.lvb = None,
                    Some(_) if held == Some(GlockMode::Exclusive) => e.lvb = carried,
                    Some(_) => {}
                }
                e.mode = to;
            }
        }
        if r.is_ok() {
            t.stats.demoted += 1;
            if to.is_none() {
                t.entries.remove(&name);
            }
        }
        changed.notify_all();
        r
    }

    /// When more than `limit` glocks are held: the least recently used
    /// inode and iopen glocks that are neither pinned nor busy, as many as
    /// bring the count down to 90% of `limit` (so the shrinker does not
    /// run again for every new glock), at most `batch`. Empty otherwise.
    pub fn least_recently_used_beyond(&self, limit: usize, batch: usize) -> Vec<GlockName> {
        let t = self.table();
        let held = t.entries.values().filter(|e| e.mode.is_some()).count();
        if held <= limit {
            return Vec::new();
        }
        let target = limit - limit / 10;
        let now = Instant::now();
        let mut idle: Vec<(Instant, GlockName)> = t
            .entries
            .iter()
            .filter(|(n, e)| {
                e.mode.is_some()
                    && !e.pinned
                    && !e.busy
                    && matches!(n.kind, GlockKind::Inode | GlockKind::Iopen)
            })
            .map(|(n, e)| (e.last_used.or(e.granted_at).unwrap_or(now), *n))
            .collect();
        idle.sort_unstable();
        idle.truncate((held - target).min(batch));
        idle.into_iter().map(|(_, n)| n).collect()
    }

    /// The shrinker gave a glock up.
    pub fn count_shrunk(&self) {
        self.table().stats.shrunk += 1;
    }

    /// Ends a demote begun with [`Glocks::begin_demote`] without changing
    /// anything (the file system is going away, or could not write back).
    pub fn abort_demote(&self, name: GlockName) {
        let (lock, changed) = &*self.table;
        let mut t = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = t.entries.get_mut(&name) {
            e.busy = false;
        }
        changed.notify_all();
    }

    /// Gives every glock up (unmount); Exclusive ones leave an empty LVB.
    pub fn release_all(&self) -> Result<()> {
        self.release_all_with(HashMap::new())
    }

    /// [`Glocks::release_all`], where an Exclusive glock named in `lvbs`
    /// leaves that LVB (the caller has put everything it describes on
    /// disk).
    pub fn release_all_with(&self, mut lvbs: HashMap<GlockName, Vec<u8>>) -> Result<()> {
        let held: Vec<(GlockName, GlockMode)> = {
            let t = self.table();
            t.entries
                .iter()
                .filter_map(|(n, e)| e.mode.map(|m| (*n, m)))
                .collect()
        };
        let mut first_err = None;
        for (n, m) in held {
            if let Err(e) = self.proto.unlock(n, lvb_on_release(m, lvbs.remove(&n))) {
                first_err.get_or_insert(e);
            }
            let mut t = self.table();
            t.entries.remove(&n);
            t.stats.released += 1;
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn held(&self) -> usize {
        self.table()
            .entries
            .values()
            .filter(|e| e.mode.is_some())
            .count()
    }

    pub fn mode(&self, name: GlockName) -> Option<GlockMode> {
        self.table().entries.get(&name).and_then(|e| e.mode)
    }

    /// Every held glock and its mode (for `rdlmfs status`), in lock order.
    pub fn list(&self) -> Vec<(GlockName, GlockMode)> {
        let t = self.table();
        let mut v: Vec<(GlockName, GlockMode)> = t
            .entries
            .iter()
            .filter_map(|(n, e)| e.mode.map(|m| (*n, m)))
            .collect();
        v.sort();
        v
    }

    pub fn stats(&self) -> GlockStats {
        self.table().stats
    }
}

/// The LVB to write when a glock held in `held` is given up or converted
/// down: `lvb` if the caller has one; from Exclusive without one, an empty
/// LVB. The lock manager keeps an LVB nobody writes, so an Exclusive holder
/// that changed what the glock covers and wrote nothing would leave the
/// previous holder's description for the next one to trust (see
/// [`crate::lvb`]).
fn lvb_on_release(held: GlockMode, lvb: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (held, lvb) {
        (_, Some(v)) => Some(v),
        (GlockMode::Exclusive, None) => Some(Vec::new()),
        (GlockMode::Shared, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_glocks_ask_the_module_once() {
        let g = Glocks::new(Arc::new(Nolock));
        g.hold(GlockName::inode(5), GlockMode::Shared).unwrap();
        g.hold(GlockName::inode(5), GlockMode::Shared).unwrap();
        g.hold(GlockName::inode(5), GlockMode::Exclusive).unwrap();
        g.hold(GlockName::inode(5), GlockMode::Shared).unwrap();
        assert_eq!(g.stats().acquired, 2);
        assert_eq!(g.stats().cached, 2);
        assert_eq!(g.mode(GlockName::inode(5)), Some(GlockMode::Exclusive));
        g.release_all().unwrap();
        assert_eq!(g.held(), 0);
        assert_eq!(g.stats().released, 1);
    }

    /// A module whose requests always have to wait (a cluster).
    struct Remote(Mutex<Vec<(GlockName, GlockMode)>>);

    impl LockProtocol for Remote {
        fn name(&self) -> &'static str {
            "remote"
        }
        fn may_wait(&self) -> bool {
            true
        }
        fn lock(&self, name: GlockName, mode: GlockMode) -> Result<Option<Vec<u8>>> {
            self.0.lock().unwrap().push((name, mode));
            Ok(Some(vec![7; 8]))
        }
        fn try_lock(&self, _: GlockName, _: GlockMode) -> Result<bool> {
            Ok(false)
        }
        fn demote_to_shared(&self, _: GlockName, _: Option<Vec<u8>>) -> Result<()> {
            Ok(())
        }
        fn unlock(&self, _: GlockName, _: Option<Vec<u8>>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn in_a_cluster_a_miss_is_a_wait_and_acquire_grants() {
        let proto = Arc::new(Remote(Mutex::new(Vec::new())));
        let g = Glocks::new(proto.clone());
        let n = GlockName::inode(9);
        match g.hold(n, GlockMode::Shared) {
            Err(FsError::GlockWait { name, mode }) => {
                assert_eq!((name, mode), (n, GlockMode::Shared))
            }
            other => panic!("expected a wait, got {other:?}"),
        }
        assert!(proto.0.lock().unwrap().is_empty(), "hold asked the module");
        g.acquire(n, GlockMode::Shared).unwrap();
        g.hold(n, GlockMode::Shared).unwrap();
        assert_eq!(g.lvb(n), Some(vec![7; 8]));
        assert!(g.hold(n, GlockMode::Exclusive).is_err());
        g.acquire(n, GlockMode::Exclusive).unwrap();
        // A demote down to Shared, then away.
        assert_eq!(
            g.begin_demote(n),
            DemoteClaim::Claimed(GlockMode::Exclusive)
        );
        assert_eq!(g.begin_demote(n), DemoteClaim::Busy);
        g.finish_demote(n, Some(GlockMode::Shared), None).unwrap();
        assert_eq!(g.mode(n), Some(GlockMode::Shared));
        assert_eq!(g.begin_demote(n), DemoteClaim::Claimed(GlockMode::Shared));
        g.finish_demote(n, None, None).unwrap();
        assert_eq!(g.mode(n), None);
        assert_eq!(g.begin_demote(n), DemoteClaim::NotHeld);
        assert_eq!(g.stats().demoted, 2);
        assert_eq!(proto.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_down_conversion_keeps_the_lvb_it_wrote_not_the_grants() {
        let g = Glocks::new(Arc::new(Remote(Mutex::new(Vec::new()))));
        let n = GlockName::inode(9);
        g.acquire(n, GlockMode::Exclusive).unwrap();
        assert_eq!(g.lvb(n), Some(vec![7; 8]), "the grant's");
        assert_eq!(
            g.begin_demote(n),
            DemoteClaim::Claimed(GlockMode::Exclusive)
        );
        g.finish_demote(n, Some(GlockMode::Shared), Some(vec![1; 8]))
            .unwrap();
        assert_eq!(g.lvb(n), Some(vec![1; 8]));
        // An Exclusive holder that leaves no LVB leaves an invalid one.
        g.acquire(n, GlockMode::Exclusive).unwrap();
        g.begin_demote(n);
        g.finish_demote(n, Some(GlockMode::Shared), None).unwrap();
        assert_eq!(g.lvb(n), None);
    }

    #[test]
    fn resource_names_sort_like_numbers() {
        let a = GlockName::inode(255).resource_name();
        let b = GlockName::inode(256).resource_name();
        assert!(a < b);
        assert_eq!(a[0], GlockKind::Inode as u8);
    }

    #[test]
    fn the_shrinker_picks_the_least_recently_used_unpinned_inode_glocks() {
        let g = Glocks::new(Arc::new(Nolock));
        for i in 0..20 {
            g.hold(GlockName::inode(i), GlockMode::Shared).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        g.hold(GlockName::rgrp(1000), GlockMode::Exclusive).unwrap();
        g.pin(GlockName::inode(0));
        // Used again: now the most recent.
        g.hold(GlockName::inode(1), GlockMode::Shared).unwrap();
        assert!(g.least_recently_used_beyond(21, 100).is_empty());
        // 21 held, limit 10: down to 9.
        let v = g.least_recently_used_beyond(10, 100);
        let want: Vec<GlockName> = (2..14).map(GlockName::inode).collect();
        assert_eq!(v, want);
        assert_eq!(g.least_recently_used_beyond(10, 3), want[..3].to_vec());
    }
}
