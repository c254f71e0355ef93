//! flock(2) across the cluster, as OCFS2 does it: every open file that
//! takes a flock holds its own DLM lock on the inode's flock resource —
//! PR for a shared lock, EX for an exclusive one — so a lock on one node
//! blocks (or, with LOCK_NB, refuses) a conflicting one on any node.
//!
//! Owns: the DLM lock of each (inode, open file) pair and the waits for
//! them. May not touch: glocks (a flock protects no cached data; it is
//! the application's lock, not the file system's) or the FUSE replies
//! (the adapter answers).
//!
//! Changing a held lock's mode unlocks it first and then asks again, as
//! flock(2) itself allows ("converting is not guaranteed to be atomic").
//! fcntl byte-range locks are not cluster-wide: they stay with each
//! node's kernel (a range lock manager is a separate piece of work).

use crate::glock::{GlockKind, GlockName};
use rdlm::api::{BlockingDlm, DlmError};
use rdlm::{Flags, Mode};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// At most this many flock requests may wait at once on one node; more
/// get ENOLCK (each wait holds a thread).
pub const MAX_WAITERS: usize = 256;

/// (inode, the kernel's lock owner: one per open file description).
type Key = (u64, u64);

#[derive(Default)]
struct Table {
    /// Granted: the DLM lock id and whether it is exclusive.
    held: HashMap<Key, (u64, bool)>,
    /// Requests in flight, by ticket: a grant whose ticket is no longer
    /// here arrived after an unlock or a close and is given straight back.
    waiting: HashMap<Key, u64>,
    next_ticket: u64,
}

/// The flocks of one cluster mount.
pub struct Flocks {
    dlm: BlockingDlm,
    lockspace: String,
    table: Mutex<Table>,
}

impl Flocks {
    pub fn new(dlm: BlockingDlm, lockspace: String) -> Flocks {
        Flocks {
            dlm,
            lockspace,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resource(ino: u64) -> [u8; 9] {
        GlockName {
            kind: GlockKind::Flock,
            number: ino,
        }
        .resource_name()
    }

    /// Whether another waiting request may start (see [`MAX_WAITERS`]).
    pub fn may_wait(&self) -> bool {
        self.table().waiting.len() < MAX_WAITERS
    }

    /// Takes a shared or exclusive flock on `ino` for `owner`, waiting for
    /// other nodes' locks if `wait`. Errors are errnos: EWOULDBLOCK when it
    /// would have to wait and may not, EIO when the lock manager fails.
    pub fn lock(&self, ino: u64, owner: u64, exclusive: bool, wait: bool) -> Result<(), i32> {
        let key = (ino, owner);
        let ticket = {
            let mut t = self.table();
            match t.held.get(&key).copied() {
                Some((_, ex)) if ex == exclusive => return Ok(()),
                Some((lkid, _)) => {
                    t.held.remove(&key);
                    drop(t);
                    self.give_back(ino, lkid);
                    t = self.table();
                }
                None => {}
            }
            t.next_ticket += 1;
            let ticket = t.next_ticket;
            t.waiting.insert(key, ticket);
            ticket
        };
        let mode = if exclusive { Mode::EX } else { Mode::PR };
        let flags = if wait { Flags::NONE } else { Flags::NOQUEUE };
        let r = self.dlm.lock_in(
            &self.lockspace,
            0,
            &Self::resource(ino),
            mode,
            flags,
            false,
            None,
        );
        let mut t = self.table();
        let current = t.waiting.get(&key) == Some(&ticket);
        if current {
            t.waiting.remove(&key);
        }
        match r {
            Ok(g) if current => {
                t.held.insert(key, (g.lkid, exclusive));
                Ok(())
            }
            Ok(g) => {
                // Unlocked or closed while we waited.
                drop(t);
                self.give_back(ino, g.lkid);
                Err(libc::EINTR)
            }
            Err(DlmError::WouldBlock { .. }) => Err(libc::EWOULDBLOCK),
            Err(e) => {
                tracing::error!(ino, error = %e, "flock at the lock manager");
                Err(libc::EIO)
            }
        }
    }

    /// Drops `owner`'s flock on `ino` (LOCK_UN, or the file's last close),
    /// and makes a request of it still waiting give its grant back.
    pub fn unlock(&self, ino: u64, owner: u64) {
        let held = {
            let mut t = self.table();
            t.waiting.remove(&(ino, owner));
            t.held.remove(&(ino, owner))
        };
        if let Some((lkid, _)) = held {
            self.give_back(ino, lkid);
        }
    }

    /// Drops every flock this node holds (unmount).
    pub fn release_all(&self) {
        let held: Vec<(Key, (u64, bool))> = {
            let mut t = self.table();
            t.waiting.clear();
            t.held.drain().collect()
        };
        for ((ino, _), (lkid, _)) in held {
            self.give_back(ino, lkid);
        }
    }

    /// How many flocks this node holds.
    pub fn held(&self) -> usize {
        self.table().held.len()
    }

    fn give_back(&self, ino: u64, lkid: u64) {
        if let Err(e) = self.dlm.unlock(lkid, None) {
            tracing::error!(ino, lkid, error = %e, "releasing a flock at the lock manager");
        }
    }
}
