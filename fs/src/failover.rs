//! Failover: what a mounted node does when the lock manager reports that
//! another node died, or that this node lost the cluster.
//!
//! Owns: the order of recovering a dead node's journal while this node
//! keeps serving — fence it, take its journal glock, replay, give the
//! glock back, tell the lock manager its recovery is done (GFS2's
//! recover_slot → gfs2_recover_journal → recover_done) — and shutting this
//! node's I/O gate when its lease is lost. May not touch: how a journal is
//! replayed (`recovery.rs`, through [`Fs::recover_dead_journal`]), how
//! fencing is done (`fence.rs`), or the decision that a node is dead (the
//! lock manager's).
//!
//! While a dead node's recovery is pending, the lock manager grants
//! nothing but journal glocks (they are NOEXP), so no node can read what
//! the dead node may have half-written until its journal is replayed.
//! Every survivor hears of the death; the one whose try-lock on the
//! journal glock wins replays, the others find it taken and leave it.

use crate::fence::{self, GatedDevice};
use crate::glock::{GlockMode, GlockName, Glocks};
use crate::mount::Fs;
use rdlm::api::{BlockingDlm, DlmEvent};
use rdlm::NodeId;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, logged with each failover step so
/// that a failover can be timed against when the node was killed.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The failover handling of one cluster mount.
pub struct Failover {
    pub fs: Arc<Mutex<Option<Fs>>>,
    pub glocks: Glocks,
    pub dlm: BlockingDlm,
    /// The file system's lockspace; events of other lockspaces are not ours.
    pub lockspace: String,
    /// The record locks' lockspace (`plock.rs`): nothing to replay there,
    /// but its grants wait for the dead node to be fenced.
    pub plock_lockspace: String,
    /// The cluster's name (part of every node's NBD client id).
    pub cluster: String,
    /// This node's journal.
    pub jid: u32,
    /// This node's own I/O gate.
    pub gate: Arc<GatedDevice>,
    /// The `rdlmfs-nbd` admin socket, if the server can fence clients.
    pub nbd_admin: Option<PathBuf>,
}

impl Failover {
    /// Handles events until the lock manager's event stream ends.
    pub fn run(self, events: Receiver<DlmEvent>) {
        while let Ok(ev) = events.recv() {
            match ev {
                DlmEvent::RecoverPrep {
                    lockspace,
                    generation,
                    departed,
                } if lockspace == self.lockspace && !departed.is_empty() => {
                    let nodes: Vec<NodeId> = departed.iter().map(|m| m.id).collect();
                    tracing::warn!(
                        ?nodes,
                        generation,
                        at_unix_ms = unix_ms(),
                        "nodes left the lockspace; grants wait for their recovery"
                    );
                }
                DlmEvent::RecoverSlot {
                    lockspace,
                    node,
                    incarnation,
                    slot,
                } if lockspace == self.lockspace => self.recover(node, incarnation, slot),
                DlmEvent::RecoverSlot {
                    lockspace,
                    node,
                    incarnation,
                    ..
                } if lockspace == self.plock_lockspace => self.recover_plocks(node, incarnation),
                DlmEvent::Lost { reason } => {
                    self.gate
                        .shut(&format!("this node lost the cluster: {reason}"));
                }
                DlmEvent::LockspaceLost { lockspace, reason }
                    if lockspace == self.lockspace || lockspace == self.plock_lockspace =>
                {
                    self.gate.shut(&format!(
                        "this node's locks in lockspace {lockspace:?} are gone: {reason}"
                    ));
                }
                other => tracing::info!(event = ?other, "lock manager"),
            }
        }
    }

    /// A dead node's record locks: its published ranges stop counting
    /// once it is out of the lockspace (`plock.rs`); the others may take
    /// them when it can no longer write, so fence it first.
    fn recover_plocks(&self, node: NodeId, incarnation: u64) {
        self.fence(node, incarnation);
        if let Err(e) = self
            .dlm
            .recovery_done_in(&self.plock_lockspace, node, incarnation)
        {
            tracing::error!(node, error = %e, "record locks: telling the lock manager recovery is done");
        }
    }

    /// Makes the NBD server refuse `node`'s I/O (that incarnation), if it
    /// can fence.
    fn fence(&self, node: NodeId, incarnation: u64) {
        if let Some(admin) = &self.nbd_admin {
            let id = fence::client_id(&self.cluster, node, incarnation);
            if let Err(e) = fence::fence_at_server(admin, &id) {
                // The lock manager waited out the node's lease before
                // declaring it dead, so it has stopped writing if its
                // clock is sound; go on rather than hold the cluster.
                tracing::error!(node, error = %e, "could not fence at the NBD server; relying on the lease");
            }
        }
    }

    /// Recovers the journal of `node` (that incarnation), which held
    /// membership slot `slot`.
    fn recover(&self, node: NodeId, incarnation: u64, slot: u32) {
        let start = Instant::now();
        tracing::warn!(
            node,
            incarnation,
            slot,
            at_unix_ms = unix_ms(),
            "node died: recovering its journal"
        );
        let Some(jid) = slot.checked_sub(1) else {
            tracing::error!(node, slot, "a member with slot 0: nothing to recover");
            return;
        };
        if jid == self.jid {
            tracing::error!(node, jid, "asked to recover our own journal; ignoring");
            return;
        }
        // 1. Fence: from here on the server refuses the dead node's I/O
        //    (if it is only cut off, not dead).
        self.fence(node, incarnation);
        let fenced = start.elapsed();
        // 2. The journal glock: whoever gets it replays.
        let name = GlockName::journal(jid);
        match self.glocks.try_acquire(name, GlockMode::Exclusive) {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(node, jid, "another node is recovering this journal");
                return;
            }
            Err(e) => {
                tracing::error!(node, jid, error = %e, "cannot take the journal glock; another survivor must recover it");
                return;
            }
        }
        // 3. Replay.
        let replay_start = Instant::now();
        let r = {
            let mut g = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
            g.as_mut().map(|fs| fs.recover_dead_journal(jid))
        };
        let replayed = replay_start.elapsed();
        if let Err(e) = self.glocks.release(name) {
            tracing::error!(jid, error = %e, "releasing the journal glock");
        }
        let report = match r {
            None => {
                tracing::info!(node, "unmounting: leaving the recovery to the others");
                return;
            }
            Some(Err(e)) => {
                tracing::error!(node, jid, error = %e, "replay failed: the cluster stays held until someone replays this journal");
                return;
            }
            Some(Ok(r)) => r,
        };
        // 4. Let the others go on.
        if let Err(e) = self
            .dlm
            .recovery_done_in(&self.lockspace, node, incarnation)
        {
            tracing::error!(node, error = %e, "telling the lock manager recovery is done");
            return;
        }
        tracing::warn!(
            node,
            jid,
            transactions = report.transactions,
            blocks = report.blocks_written,
            fence_ms = fenced.as_millis() as u64,
            replay_ms = replayed.as_millis() as u64,
            total_ms = start.elapsed().as_millis() as u64,
            at_unix_ms = unix_ms(),
            "recovered the journal of a dead node"
        );
    }
}
