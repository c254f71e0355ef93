//! Where the kernel's dentry cache has each directory this node told it
//! about, so that a directory another node moved is let go of at its old
//! place before the kernel meets it at the new one.
//!
//! Why: Linux gives a directory one dentry. A lookup that finds a
//! directory the kernel still has under another parent moves the old
//! dentry there (`d_splice_alias`), which needs the old parent's lock —
//! and the kernel only *tries* it: if a local operation holds that
//! parent (a create waiting for a glock, say), the lookup fails with
//! ESTALE. The kernel retries the path walk once, at once, and then the
//! user sees ESTALE, which no local file system answers. Zero entry TTLs
//! do not help: they make the kernel ask again, not forget.
//!
//! So when a lookup answers with a directory last told to the kernel
//! under another parent, the adapter first asks the kernel to drop that
//! old entry (FUSE_NOTIFY_INVAL_ENTRY, [`Dcache::unalias`]). The kernel
//! takes the old parent's lock for it the blocking way, after whatever
//! local operation held it, and the lookup finds nothing left to move.
//! An entry something keeps open (a working directory) stays behind,
//! unhashed, and is still moved; that also needs the file system's
//! rename mutex, which a local cross-directory rename holds while it is
//! served — so the lookup also waits for those to be answered.
//!
//! Owns: the map of places (directory node id ↔ parent node id and
//! name), bounded by [`MAX_PLACES`], and the notifier used for it. May
//! not touch: the file system (every call here is made without it held)
//! or any other kernel cache (the demote worker invalidates those).

use fuser::INodeNo;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Most directories whose place is remembered. Past it the map starts
/// over: a forgotten place only means a moved directory is not let go of
/// first (the kernel may then answer ESTALE, as without this module).
pub const MAX_PLACES: usize = 1 << 16;

/// How long a lookup waits for the kernel to drop an old entry before it
/// answers anyway. The kernel waits for the old parent's lock, which a
/// local operation may hold for as long as it waits for glocks; and a
/// local rename may hold it while it waits for the very parent the
/// lookup holds, so the wait must end.
pub const UNALIAS_WAIT: Duration = Duration::from_secs(5);

/// A directory entry as the kernel knows it: parent node id and name.
pub type Place = (u64, Vec<u8>);

#[derive(Default)]
struct Places {
    of_dir: HashMap<u64, Place>,
    dir_at: HashMap<Place, u64>,
}

impl Places {
    fn remove_dir(&mut self, dir: u64) -> Option<Place> {
        let old = self.of_dir.remove(&dir)?;
        if self.dir_at.get(&old) == Some(&dir) {
            self.dir_at.remove(&old);
        }
        Some(old)
    }

    fn remove_place(&mut self, place: &Place) -> Option<u64> {
        let dir = self.dir_at.remove(place)?;
        if self.of_dir.get(&dir) == Some(place) {
            self.of_dir.remove(&dir);
        }
        Some(dir)
    }

    fn insert(&mut self, dir: u64, place: Place) {
        if self.of_dir.len() >= MAX_PLACES {
            self.of_dir.clear();
            self.dir_at.clear();
        }
        self.remove_dir(dir);
        self.remove_place(&place);
        self.of_dir.insert(dir, place.clone());
        self.dir_at.insert(place, dir);
    }
}

/// Counters for `rdlmfs status` and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DcacheStats {
    /// Old entries of moved directories the kernel was asked to drop.
    pub unaliased: u64,
    /// Of those, how many were not done within [`UNALIAS_WAIT`] (the
    /// lookup answered anyway).
    pub timed_out: u64,
}

/// See the module doc.
#[derive(Default)]
pub struct Dcache {
    places: Mutex<Places>,
    stats: Mutex<DcacheStats>,
    notifier: OnceLock<fuser::Notifier>,
    /// Local cross-directory renames being served, and its signal.
    renames: (Mutex<u32>, Condvar),
}

/// A local cross-directory rename being served ([`Dcache::rename_begins`]).
pub struct RenameInFlight<'a>(&'a Dcache);

impl Drop for RenameInFlight<'_> {
    fn drop(&mut self) {
        let (count, done) = &self.0.renames;
        let mut n = count.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        done.notify_all();
    }
}

impl Dcache {
    pub fn new() -> Dcache {
        Dcache::default()
    }

    /// The session's notifier, once the session exists (the adapter is
    /// made before it). Until then nothing is let go of.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    fn places(&self) -> std::sync::MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stats(&self) -> DcacheStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kernel is told that `dir` is `name` in `parent` (a lookup or
    /// mkdir reply). Returns where the kernel may still have it if that is
    /// under another parent: the entry to let go of first. Under the same
    /// parent the kernel renames its dentry without that lock.
    pub fn told(&self, dir: u64, parent: u64, name: &[u8]) -> Option<Place> {
        let mut p = self.places();
        let place = (parent, name.to_vec());
        let old = p.of_dir.get(&dir).cloned();
        p.insert(dir, place);
        old.filter(|(old_parent, _)| *old_parent != parent)
    }

    /// A local rename the kernel carried out on its own dentries (it moves
    /// them under both parents' locks): the places follow.
    pub fn renamed(&self, from: Place, to: Place, exchange: bool) {
        let mut p = self.places();
        let moved = p.remove_place(&from);
        let other = p.remove_place(&to);
        if let Some(d) = moved {
            p.insert(d, to);
        }
        if let (true, Some(d)) = (exchange, other) {
            p.insert(d, from);
        }
    }

    /// A local rename between two directories is being served until the
    /// result is dropped (after its reply).
    pub fn rename_begins(&self) -> RenameInFlight<'_> {
        *self
            .renames
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        RenameInFlight(self)
    }

    /// Waits until no local cross-directory rename is being served, or
    /// until `deadline`; false if one still is.
    fn wait_for_renames(&self, deadline: Instant) -> bool {
        let (count, done) = &self.renames;
        let mut n = count.lock().unwrap_or_else(PoisonError::into_inner);
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = done
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// A local rmdir: the kernel dropped the entry itself.
    pub fn removed(&self, place: &Place) {
        self.places().remove_place(place);
    }

    /// Asks the kernel to drop its entry `old` and waits, at most
    /// [`UNALIAS_WAIT`] in all, for it to be done and for local
    /// cross-directory renames to be answered. Must be called without the
    /// file system held and outside the kernel's request for `old`'s
    /// parent; the notification itself runs on its own thread, which
    /// outlives a wait that ended.
    pub fn unalias(&self, old: Place) {
        let Some(notifier) = self.notifier.get().cloned() else {
            return;
        };
        let deadline = Instant::now() + UNALIAS_WAIT;
        let (tx, rx) = mpsc::channel();
        let (parent, name) = old;
        let spawned = std::thread::Builder::new()
            .name("rdlmfs-unalias".into())
            .spawn(move || {
                let r = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a dentry invalidation");
            return;
        }
        let waited = rx.recv_timeout(UNALIAS_WAIT);
        let done = waited.is_ok() && self.wait_for_renames(deadline);
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        s.unaliased += 1;
        if !done {
            s.timed_out += 1;
        }
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(parent, error = %e, "dentry invalidation refused"),
            Err(_) => {
                tracing::debug!(
                    parent,
                    "dentry invalidation still waiting; answering the lookup"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(parent: u64, name: &str) -> Place {
        (parent, name.as_bytes().to_vec())
    }

    #[test]
    fn a_directory_met_under_another_parent_names_its_old_place() {
        let d = Dcache::new();
        assert_eq!(d.told(10, 1, b"a"), None);
        // Same parent, new name: the kernel needs no other lock.
        assert_eq!(d.told(10, 1, b"b"), None);
        assert_eq!(d.told(10, 2, b"b"), Some(place(1, "b")));
        assert_eq!(d.told(10, 2, b"b"), None);
    }

    #[test]
    fn local_renames_and_rmdirs_move_and_drop_places() {
        let d = Dcache::new();
        d.told(10, 1, b"a");
        d.told(11, 1, b"b");
        d.renamed(place(1, "a"), place(2, "a"), false);
        assert_eq!(d.told(10, 2, b"a"), None, "the kernel moved it itself");
        d.renamed(place(2, "a"), place(1, "b"), true);
        assert_eq!(d.told(11, 2, b"a"), None, "exchanged");
        assert_eq!(d.told(10, 1, b"b"), None);
        d.removed(&place(1, "b"));
        assert_eq!(d.told(10, 3, b"c"), None, "an rmdir forgets the place");
    }

    #[test]
    fn a_place_taken_by_another_directory_is_not_claimed_for_the_first() {
        let d = Dcache::new();
        d.told(10, 1, b"a");
        // Another directory is now "a" in 1 (10 was moved away remotely).
        d.told(11, 1, b"a");
        // 10 seen under 2: its old place is 11's now, and dropping that
        // entry would hit 11 (a process's working directory, say).
        assert_eq!(d.told(10, 2, b"x"), None);
    }

    #[test]
    fn a_wait_for_renames_ends_when_they_are_answered_or_at_the_deadline() {
        let d = std::sync::Arc::new(Dcache::new());
        assert!(d.wait_for_renames(Instant::now()));
        let r = d.rename_begins();
        assert!(!d.wait_for_renames(Instant::now() + Duration::from_millis(20)));
        let waiter = {
            let d = d.clone();
            std::thread::spawn(move || d.wait_for_renames(Instant::now() + Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(r);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn the_map_is_bounded() {
        let d = Dcache::new();
        for i in 0..(MAX_PLACES as u64 + 10) {
            d.told(i + 100, 1, format!("d{i}").as_bytes());
        }
        let p = d.places();
        assert!(p.of_dir.len() <= MAX_PLACES);
        assert_eq!(p.of_dir.len(), p.dir_at.len());
    }
}
