//! Joining the cluster for a `lock_dlm` mount: the lock manager node this
//! mount process embeds, the lockspace named by the superblock's lock
//! table, and the journal this node gets from its membership slot.
//!
//! Owns: the checks a cluster mount makes before touching the device
//! (the file system was made for this cluster, quorum, a free journal
//! slot), and starting and leaving the DLM node. May not touch: glocks
//! (`glock.rs`, `lock_dlm.rs`) or the mount itself (`mount.rs`).

use crate::format::superblock::{LockProto, LockTable, Superblock};
use crate::lock_dlm::LockDlm;
use rdlm::api::{BlockingDlm, DlmOptions, Events};
use rdlm::config::ClusterConfig;
use rdlm::LsOptions;
use rdlm::NodeId;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A joined cluster, ready to mount with.
pub struct Joined {
    pub dlm: BlockingDlm,
    pub proto: Arc<LockDlm>,
    /// Taken by the mount's event thread.
    pub events: Option<Events>,
    /// The lockspace (the lock table, "cluster:fsname").
    pub lockspace: String,
    /// The record locks' lockspace (`plock.rs`).
    pub plock_lockspace: String,
    /// The cluster's name.
    pub cluster: String,
    /// This run of this node (a remount is a new one).
    pub incarnation: u64,
    /// Our membership slot, from 1.
    pub slot: u32,
    /// The journal that slot gives us (slot - 1).
    pub jid: u32,
}

/// Starts node `node` of the cluster in `cluster_file`, joins the
/// lockspace of the file system whose superblock is `sb`, and waits (up
/// to `timeout`) for a quorate membership that gives this node a slot.
pub fn join(
    cluster_file: &Path,
    node: NodeId,
    sb: &Superblock,
    timeout: Duration,
) -> Result<Joined, String> {
    if sb.lock_proto != LockProto::Dlm {
        return Err(
            "the file system was made with lock_nolock (single node); it cannot be mounted in a cluster"
                .into(),
        );
    }
    let table = LockTable::parse(&sb.lock_table)
        .map_err(|e| format!("the superblock's lock table: {e}"))?;
    let cfg = ClusterConfig::load(cluster_file)
        .map_err(|e| format!("cluster file {}: {e}", cluster_file.display()))?;
    if cfg.name != table.cluster {
        return Err(format!(
            "the file system belongs to cluster {:?} (lock table {:?}), the cluster file {} is for cluster {:?}",
            table.cluster,
            sb.lock_table,
            cluster_file.display(),
            cfg.name
        ));
    }
    if cfg.node(node).is_none() {
        return Err(format!(
            "node {node} is not in the cluster file {}",
            cluster_file.display()
        ));
    }
    let (dlm, events) = BlockingDlm::start(
        cfg,
        node,
        DlmOptions {
            recovery_hold: true,
        },
    )
    .map_err(|e| format!("starting the lock manager: {e}"))?;
    let lockspace = sb.lock_table.clone();
    // The file system's own LVB length, whatever the cluster file's
    // default: every node of every version that can mount it agrees.
    dlm.join_lockspace_with(
        &lockspace,
        LsOptions {
            lvb_len: crate::lvb::LVB_LEN,
        },
    )
    .map_err(|e| format!("joining lockspace {lockspace:?}: {e}"))?;
    // Record locks live in LVBs of their own, 1 KiB each (`plock.rs`).
    let plock_lockspace = crate::plock::Plocks::lockspace_of(&lockspace);
    dlm.join_lockspace_with(
        &plock_lockspace,
        LsOptions {
            lvb_len: crate::plock::PLOCK_LVB_LEN,
        },
    )
    .map_err(|e| format!("joining lockspace {plock_lockspace:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let (slot, incarnation) = loop {
        let st = dlm
            .status()
            .map_err(|e| format!("lock manager status: {e}"))?;
        let joined = |name: &str| {
            st.lockspaces
                .iter()
                .any(|l| l.name == name && l.members.contains(&node) && !l.recovering)
        };
        let in_ls = joined(&lockspace) && joined(&plock_lockspace);
        if let (true, true, Some(slot)) = (st.quorate, in_ls, st.slot) {
            break (slot, st.incarnation);
        }
        if Instant::now() >= deadline {
            let _ = dlm.leave();
            return Err(format!(
                "node {node}: no quorate membership with lockspace {lockspace:?} after {} s (quorate: {}, slot: {:?}); are enough nodes up?",
                timeout.as_secs(),
                st.quorate,
                st.slot
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if slot == 0 || slot > sb.journals {
        let _ = dlm.leave();
        return Err(format!(
            "node {node} got slot {slot}, but the file system has {} journals: all journal slots are taken (add journals or mount fewer nodes)",
            sb.journals
        ));
    }
    let proto = Arc::new(LockDlm::new(dlm.clone(), lockspace.clone()));
    Ok(Joined {
        dlm,
        proto,
        events: Some(events),
        lockspace,
        plock_lockspace,
        cluster: table.cluster.clone(),
        incarnation,
        slot,
        jid: slot - 1,
    })
}
