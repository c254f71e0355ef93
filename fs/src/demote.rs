//! The demote worker: gives glocks up (or converts them down) when other
//! nodes ask for them, as OCFS2's downconvert thread does.
//!
//! Owns: the queue of blocking callbacks, the minimum hold time, and the
//! order of a demote. May not touch: what syncing or invalidating means
//! for a kind of glock (`glops.rs`), or FUSE itself (the adapter hands in a
//! [`KernelCaches`]).
//!
//! A blocking callback only queues work here; the lock module's event
//! thread never waits for the file system. A demote then runs, in order:
//!
//! 1. wait out the minimum hold time since the grant (damps ping-pong);
//! 2. claim the glock; if a request for it is in flight, put the demote
//!    off a little and serve the other requests meanwhile (the request in
//!    flight may be waiting for one of them on another node);
//! 3. holding the file system: write back and make durable what the glock
//!    covers, and drop this node's caches of it if the glock is going away
//!    (an Exclusive holder asked only for Shared keeps its clean caches);
//! 4. *not* holding the file system: invalidate the kernel's caches of the
//!    inode. The kernel may wait here for a request it is serving on the
//!    same inode, with pages locked; that request needs the file system,
//!    so it must be free — and the glock still held, so the request can
//!    finish;
//! 5. holding the file system again: if any operation used the glock
//!    since step 3, its results may be in the kernel's caches — go back to
//!    step 3 (a bounded number of times). Otherwise sync once more and
//!    convert or unlock at the lock module *before* letting the file
//!    system go, so no operation can use the glock in between.
//!
//! The same worker keeps the number of cached glocks bounded (GFS2's glock
//! shrinker, with a count instead of the kernel's memory pressure): once a
//! second, if more than the mount's limit are held, it gives the least
//! recently used inode and iopen glocks up through the same demote, as if
//! another node had asked for them.

use crate::glock::{DemoteClaim, GlockKind, GlockMode, GlockName, Glocks};
use crate::mount::Fs;
use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The kernel's caches of a glock's inode (the FUSE notifier).
pub trait KernelCaches: Send + Sync {
    /// Invalidates the kernel's pages and attributes of what `name`
    /// covers; for an inode glock, `generation` is the inode's (the kernel
    /// knows it by its formal number). Must not be called with the file
    /// system held.
    fn invalidate(&self, name: GlockName, generation: Option<u64>);
}

/// Rounds of step 3–5 before a demote goes ahead although the glock was
/// used meanwhile (each round is short; a busy reader could otherwise hold
/// a writer on another node off forever).
pub const MAX_PASSES: u32 = 8;

/// How long a demote of a glock with a request in flight is put off
/// before it is tried again.
const BUSY_RETRY: Duration = Duration::from_millis(2);

/// How often the worker checks the number of cached glocks.
const SHRINK_EVERY: Duration = Duration::from_secs(1);

/// Most glocks one check gives up (the rest wait for the next check, so
/// other nodes' requests are not held up behind a long shrink).
const SHRINK_BATCH: usize = 4096;

/// Another node wants `name` in `wanted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoteRequest {
    pub name: GlockName,
    pub wanted: GlockMode,
}

/// Starts the worker; it ends when every sender is dropped. It keeps at
/// most `max_glocks` glocks cached (see the module doc).
pub fn spawn(
    fs: Arc<Mutex<Option<Fs>>>,
    glocks: Glocks,
    kernel: Arc<dyn KernelCaches>,
    min_hold: Duration,
    max_glocks: usize,
) -> std::io::Result<(Sender<DemoteRequest>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let w = Worker {
        fs,
        glocks,
        kernel,
        min_hold,
        max_glocks,
    };
    let h = std::thread::Builder::new()
        .name("rdlmfs-demote".into())
        .spawn(move || w.run(rx))?;
    Ok((tx, h))
}

struct Worker {
    fs: Arc<Mutex<Option<Fs>>>,
    glocks: Glocks,
    kernel: Arc<dyn KernelCaches>,
    min_hold: Duration,
    max_glocks: usize,
}

impl Worker {
    fn run(&self, rx: Receiver<DemoteRequest>) {
        // Requests not yet done, with the strongest mode wanted and, for a
        // glock that was busy, when to try again.
        let mut pending: BTreeMap<GlockName, (GlockMode, Option<Instant>)> = BTreeMap::new();
        let mut shrink_at = Instant::now() + SHRINK_EVERY;
        loop {
            if Instant::now() >= shrink_at {
                self.shrink(&pending);
                shrink_at = Instant::now() + SHRINK_EVERY;
            }
            let now = Instant::now();
            // The shrinker's turn bounds every wait.
            let mut next = shrink_at;
            let due: Vec<(GlockName, GlockMode)> = pending
                .iter()
                .filter(|(n, (_, retry))| {
                    let at = retry.unwrap_or_else(|| self.due(**n));
                    if at <= now {
                        true
                    } else {
                        next = next.min(at);
                        false
                    }
                })
                .map(|(n, (m, _))| (*n, *m))
                .collect();
            for (n, m) in due {
                pending.remove(&n);
                if !self.demote(n, m) {
                    let at = Instant::now() + BUSY_RETRY;
                    next = next.min(at);
                    pending.insert(n, (m, Some(at)));
                }
            }
            let got = rx.recv_timeout(next.saturating_duration_since(Instant::now()));
            match got {
                Ok(r) => {
                    let e = pending.entry(r.name).or_insert((r.wanted, None));
                    e.0 = e.0.max(r.wanted);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Gives up the least recently used glocks beyond the limit, skipping
    /// those another node already asked for (they go in their turn).
    fn shrink(&self, pending: &BTreeMap<GlockName, (GlockMode, Option<Instant>)>) {
        let victims = self
            .glocks
            .least_recently_used_beyond(self.max_glocks, SHRINK_BATCH);
        if victims.is_empty() {
            return;
        }
        tracing::debug!(
            count = victims.len(),
            limit = self.max_glocks,
            "giving up cached glocks"
        );
        for name in victims {
            if pending.contains_key(&name) {
                continue;
            }
            if self.demote(name, GlockMode::Exclusive) && self.glocks.mode(name).is_none() {
                self.glocks.count_shrunk();
            }
        }
    }

    fn due(&self, name: GlockName) -> Instant {
        match self.glocks.granted_at(name) {
            Some(at) => at + self.min_hold,
            None => Instant::now(),
        }
    }

    /// Runs one demote; false if the glock had a request in flight and
    /// the demote must be tried again later.
    fn demote(&self, name: GlockName, wanted: GlockMode) -> bool {
        let claim = self.glocks.begin_demote(name);
        tracing::debug!(glock = %name, ?wanted, ?claim, "demote");
        let held = match claim {
            DemoteClaim::NotHeld => return true,
            DemoteClaim::Busy => return false,
            DemoteClaim::Claimed(m) => m,
        };
        let to = match (held, wanted) {
            (GlockMode::Exclusive, GlockMode::Shared) => Some(GlockMode::Shared),
            _ => None,
        };
        let kernel = to.is_none() && name.kind == GlockKind::Inode;
        let mut generation = None;
        let mut pass = 0;
        loop {
            pass += 1;
            let mut g = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(fs) = g.as_mut() else {
                // Unmounting: the unmount syncs and releases everything.
                self.glocks.abort_demote(name);
                return true;
            };
            if kernel && generation.is_none() {
                generation = fs.inode_generation(name.number);
            }
            let Some(mut lvb) = self.write_back(fs, name, held, to) else {
                return true;
            };
            if kernel {
                // Steps 4 and 5: the kernel's caches, without the file
                // system; again if an operation used the glock meanwhile.
                let uses = self.glocks.uses(name);
                drop(g);
                self.kernel.invalidate(name, generation);
                g = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
                if self.glocks.uses(name) != uses {
                    if pass < MAX_PASSES {
                        continue;
                    }
                    tracing::warn!(glock = %name, "demoting although the glock stayed in use");
                }
                let Some(fs) = g.as_mut() else {
                    self.glocks.abort_demote(name);
                    return true;
                };
                let Some(again) = self.write_back(fs, name, held, to) else {
                    return true;
                };
                lvb = again;
            }
            if let Err(e) = self.glocks.finish_demote(name, to, lvb) {
                tracing::error!(glock = %name, error = %e, "demote failed at the lock manager");
            }
            drop(g);
            return true;
        }
    }

    /// Step 3: writes back what `name` covers and, if it is going away,
    /// drops this node's caches of it. Returns the LVB an Exclusive holder
    /// leaves (`lvb.rs`; None: an empty one). None (and the demote
    /// abandoned) if the write-back failed: the glock must stay, or
    /// another node would read what never reached the disk.
    fn write_back(
        &self,
        fs: &mut Fs,
        name: GlockName,
        held: GlockMode,
        to: Option<GlockMode>,
    ) -> Option<Option<Vec<u8>>> {
        if let Err(e) = fs.go_sync(name, held) {
            tracing::error!(glock = %name, error = %e, "cannot write back for a demote; keeping the glock");
            self.glocks.abort_demote(name);
            return None;
        }
        let lvb = fs.go_lvb(name, held);
        tracing::debug!(glock = %name, lvb = ?lvb.as_ref().map(|b| (crate::lvb::InodeLvb::decode(b), crate::lvb::RgrpLvb::decode(b, name.number))), "demote LVB");
        if to.is_none() {
            fs.go_inval(name);
        }
        Some(lvb)
    }
}
