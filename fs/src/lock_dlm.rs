//! `lock_dlm`: glocks as locks of rdlm, the cluster's lock manager.
//!
//! Owns: the mapping of a glock onto a DLM lock (name = kind + number,
//! Shared = PR, Exclusive = EX, every lock with a value block, journal
//! glocks NOEXP so recovery can take them), the lock
//! ids of held glocks, and turning the DLM's blocking callbacks into
//! demote requests. May not touch: when a glock is demoted or what that
//! writes back (`demote.rs`, `glops.rs`), or membership and recovery
//! decisions (the mount's cluster code).
//!
//! A blocking callback names a lock id; this module maps it back to the
//! glock and queues a [`DemoteRequest`]. It never waits on the file system.

use crate::demote::DemoteRequest;
use crate::error::{FsError, Result};
use crate::glock::{GlockKind, GlockMode, GlockName, LockProtocol};
use rdlm::api::{BlockingDlm, DlmError, DlmEvent};
use rdlm::{Flags, Mode};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};

fn dlm_mode(m: GlockMode) -> Mode {
    match m {
        GlockMode::Shared => Mode::PR,
        GlockMode::Exclusive => Mode::EX,
    }
}

/// Blocking callbacks kept for lock ids not known yet, at most this many
/// (the oldest go first: those are callbacks that raced an unlock).
const MAX_EARLY_CALLBACKS: usize = 4096;

#[derive(Default)]
struct Ids {
    by_name: HashMap<GlockName, u64>,
    by_lkid: HashMap<u64, GlockName>,
    /// Blocking callbacks that arrived before the grant of their new lock
    /// returned to us (the DLM sends them together with the grant when a
    /// request is already queued behind it). Dropping one would leave the
    /// other node waiting forever: the DLM tells a holder only once.
    early: BTreeMap<u64, Mode>,
}

/// The lock module of a cluster mount.
pub struct LockDlm {
    dlm: BlockingDlm,
    lockspace: String,
    ids: Mutex<Ids>,
    demotes: Mutex<Option<Sender<DemoteRequest>>>,
}

impl LockDlm {
    pub fn new(dlm: BlockingDlm, lockspace: String) -> LockDlm {
        LockDlm {
            dlm,
            lockspace,
            ids: Mutex::new(Ids::default()),
            demotes: Mutex::new(None),
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn err(&self, name: GlockName, e: DlmError) -> FsError {
        FsError::Lock {
            detail: format!("lock_dlm: lockspace {}: glock {name}: {e}", self.lockspace),
        }
    }

    /// The glock a DLM lock id belongs to.
    pub fn glock_of(&self, lkid: u64) -> Option<GlockName> {
        self.ids().by_lkid.get(&lkid).copied()
    }

    /// A blocking callback for `lkid` becomes a demote request, now if
    /// the lock is known, else when its grant is recorded.
    fn blocking(&self, lkid: u64, mode: Mode) {
        let name = {
            let mut ids = self.ids();
            match ids.by_lkid.get(&lkid).copied() {
                Some(n) => n,
                None => {
                    let m = ids.early.entry(lkid).or_insert(mode);
                    *m = (*m).max(mode);
                    while ids.early.len() > MAX_EARLY_CALLBACKS {
                        ids.early.pop_first();
                    }
                    return;
                }
            }
        };
        self.send_demote(name, mode);
    }

    fn send_demote(&self, name: GlockName, mode: Mode) {
        let wanted = match mode {
            Mode::NL | Mode::CR | Mode::PR => GlockMode::Shared,
            _ => GlockMode::Exclusive,
        };
        tracing::debug!(glock = %name, ?mode, "blocking callback");
        let tx = self
            .demotes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(tx) = tx {
            if tx.send(DemoteRequest { name, wanted }).is_err() {
                tracing::debug!(glock = %name, "demote worker gone");
            }
        }
    }

    fn request(
        &self,
        name: GlockName,
        mode: GlockMode,
        flags: Flags,
    ) -> std::result::Result<Option<Vec<u8>>, DlmError> {
        let held = self.ids().by_name.get(&name).copied();
        // Journal glocks are what recovery takes while the lock manager
        // holds every other grant back for it (lock_dlm's NOEXP).
        let flags = if name.kind == GlockKind::Journal {
            flags | Flags::NOEXP
        } else {
            flags
        };
        let grant = match held {
            Some(lkid) => {
                self.dlm
                    .convert(lkid, dlm_mode(mode), flags | Flags::VALBLK, None, None)?
            }
            None => {
                let g = self.dlm.lock_in(
                    &self.lockspace,
                    0,
                    &name.resource_name(),
                    dlm_mode(mode),
                    flags | Flags::VALBLK,
                    true,
                    None,
                )?;
                let early = {
                    let mut ids = self.ids();
                    ids.by_name.insert(name, g.lkid);
                    ids.by_lkid.insert(g.lkid, name);
                    ids.early.remove(&g.lkid)
                };
                if let Some(mode) = early {
                    self.send_demote(name, mode);
                }
                g
            }
        };
        Ok(if grant.lvb_valid { grant.lvb } else { None })
    }
}

impl LockProtocol for LockDlm {
    fn name(&self) -> &'static str {
        "lock_dlm"
    }

    fn may_wait(&self) -> bool {
        true
    }

    fn lock(&self, name: GlockName, mode: GlockMode) -> Result<Option<Vec<u8>>> {
        match self.request(name, mode, Flags::NONE) {
            Ok(lvb) => Ok(lvb),
            // A conversion deadlock: the caller steps aside and retries.
            Err(DlmError::Deadlock { .. }) => Err(FsError::Errno(libc::EDEADLK)),
            Err(e) => Err(self.err(name, e)),
        }
    }

    fn try_lock(&self, name: GlockName, mode: GlockMode) -> Result<bool> {
        match self.request(name, mode, Flags::NOQUEUE) {
            Ok(_) => Ok(true),
            Err(DlmError::WouldBlock { .. }) => Ok(false),
            Err(e) => Err(self.err(name, e)),
        }
    }

    fn demote_to_shared(&self, name: GlockName, lvb: Option<Vec<u8>>) -> Result<()> {
        let Some(lkid) = self.ids().by_name.get(&name).copied() else {
            return Ok(());
        };
        self.dlm
            .convert(lkid, Mode::PR, Flags::VALBLK, fit_lvb(lvb), None)
            .map(|_| ())
            .map_err(|e| self.err(name, e))
    }

    fn unlock(&self, name: GlockName, lvb: Option<Vec<u8>>) -> Result<()> {
        let Some(lkid) = self.ids().by_name.remove(&name) else {
            return Ok(());
        };
        self.ids().by_lkid.remove(&lkid);
        self.dlm
            .unlock(lkid, fit_lvb(lvb))
            .map_err(|e| self.err(name, e))
    }
}

/// An LVB to write, zero-padded to the lockspace's length (an empty one:
/// all zeros, which no reader trusts).
fn fit_lvb(lvb: Option<Vec<u8>>) -> Option<Vec<u8>> {
    lvb.map(|mut v| {
        debug_assert!(v.len() <= crate::lvb::LVB_LEN, "LVB of {} bytes", v.len());
        v.resize(crate::lvb::LVB_LEN, 0);
        v
    })
}

/// Turns the DLM's events into demote requests for `demotes` until the
/// event stream ends; other events go to `other` (the mount's membership
/// and recovery handling).
pub fn forward_events(
    proto: Arc<LockDlm>,
    mut events: rdlm::api::Events,
    demotes: Sender<DemoteRequest>,
    other: Sender<DlmEvent>,
) {
    *proto.demotes.lock().unwrap_or_else(PoisonError::into_inner) = Some(demotes);
    while let Some(ev) = events.blocking_recv() {
        match ev {
            DlmEvent::Blocking { lkid, mode } => proto.blocking(lkid, mode),
            other_ev => {
                if other.send(other_ev).is_err() {
                    tracing::debug!("no listener for lock manager events");
                }
            }
        }
    }
    *proto.demotes.lock().unwrap_or_else(PoisonError::into_inner) = None;
}
