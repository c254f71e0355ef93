//! The in-process API: a program that *is* a cluster node (the rdlmfs
//! mount process) embeds one [`Node`] and takes locks through a [`Dlm`]
//! handle (async) or a [`BlockingDlm`] (synchronous, for FUSE worker
//! threads), and learns of blocking callbacks and membership changes
//! through [`Events`].
//!
//! It owns the driver task of that node: the clock, the QUIC transport,
//! the timer, the mapping from the handle's lock ids to the core's, and the
//! waiters of pending operations. It may not touch the protocol: every
//! decision (grants, queues, LVBs, recovery, holds, leases) stays in the
//! sans-I/O core, driven exactly as [`crate::daemon`] drives it.
//!
//! The node starts in the default lockspace (what `lock` and friends use);
//! [`Dlm::join_lockspace`] / [`Dlm::leave_lockspace`] and
//! [`Dlm::lock_in`] use others, and the recovery events name their
//! lockspace.
//!
//! Lock ids handed out here are the handle's own, never reused in one
//! run: the core starts its ids over after a lost lease, and an old id must
//! not name a new lock. A request whose caller gave up (its future was
//! dropped, or its timeout ran out) is cancelled, and released if the grant
//! wins the race; a conversion given up is cancelled, but if the grant wins
//! the lock keeps the new mode (the caller still owns the lock).

use crate::config::ClusterConfig;
use crate::lockspace::{Callback, LsEvent, Output};
use crate::member::{Member, MemberEvent, View};
use crate::mode::Mode;
use crate::node::{LsOptions, Node, DEFAULT_LOCKSPACE};
use crate::outbox::Outbox;
use crate::resource::{Flags, LockError, LockId, NodeId};
use crate::transport::{generation_floor_now, new_incarnation, Incoming, Transport};
use crate::wire::Message;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How the node behaves beyond the cluster file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DlmOptions {
    /// A departed node stops every grant (except `Flags::NOEXP` requests)
    /// until [`Dlm::recovery_done`] is called for it by some member: the
    /// file system replays its journal first. See
    /// [`crate::lockspace::Lockspace::set_recovery_hold`].
    pub recovery_hold: bool,
}

/// A granted lock (or conversion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// This handle's id of the lock (for convert, unlock, cancel).
    pub lkid: u64,
    pub mode: Mode,
    /// The fencing token: grows with every grant of the resource, across
    /// recoveries and whole-cluster restarts.
    pub seq: u64,
    /// The LVB, when the lock was taken with `lvb: true`.
    pub lvb: Option<Vec<u8>>,
    /// False for an LVB never written, or lost with a writer's failure.
    pub lvb_valid: bool,
    /// A conversion deadlock was resolved by demoting this lock to NL
    /// (`Flags::CONVDEADLK`).
    pub demoted: bool,
}

/// What the node tells the file system besides replies, in order. The
/// lockspace events follow lock_dlm's recover_prep / recover_slot /
/// recover_done, per lockspace: a file system on lockspace "fsA" hears
/// only of fsA's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlmEvent {
    /// Another request needs `mode`: release or convert down.
    Blocking { lkid: u64, mode: Mode },
    /// The members of `lockspace` changed and its recovery starts; grants
    /// there stop until [`DlmEvent::RecoverDone`]. `departed` may be empty
    /// (a join).
    RecoverPrep {
        lockspace: String,
        generation: u32,
        departed: Vec<Member>,
    },
    /// `node` (that incarnation) left `lockspace` without a clean leave,
    /// holding journal `slot`: replay it, then call
    /// [`Dlm::recovery_done_in`]. One per such member.
    RecoverSlot {
        lockspace: String,
        node: NodeId,
        incarnation: u64,
        slot: u32,
    },
    /// `lockspace` recovered for `generation`: grants resume (with the
    /// recovery hold on, not those the hold still stops).
    RecoverDone { lockspace: String, generation: u32 },
    /// This node is out of `lockspace` ([`Dlm::leave_lockspace`]).
    Left { lockspace: String },
    /// Every lock of this node in `lockspace` is gone (a view had it out
    /// of the lockspace); it joins again.
    LockspaceLost { lockspace: String, reason: String },
    /// The join of `lockspace` was refused: its members use another LVB
    /// length (`reason` says which). The node is not in it.
    JoinRefused { lockspace: String, reason: String },
    /// The lease ran out or this incarnation was excluded: every lock of
    /// this node is gone; the node rejoins as a new incarnation.
    Lost { reason: String },
    /// The committed membership.
    Member { view: View },
}

/// The stream of [`DlmEvent`]s. Unbounded: the driver must never wait on
/// a slow consumer (that would stop heartbeats and cost the lease), and no
/// blocking callback may be dropped. Use `recv().await`, or
/// `blocking_recv()` from a plain thread.
pub type Events = mpsc::UnboundedReceiver<DlmEvent>;

/// The node's state as [`Dlm::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlmStatus {
    pub node: NodeId,
    pub incarnation: u64,
    pub view: Option<View>,
    /// This node's slot (journal id) in the view.
    pub slot: Option<u32>,
    pub quorate: bool,
    /// Lockspace recovery in progress.
    pub recovering: bool,
    /// Departed incarnations whose recovery was not declared done (in the
    /// default lockspace).
    pub pending_recovery: Vec<(NodeId, u64)>,
    /// Locks of this node known to the core (all lockspaces).
    pub locks: usize,
    /// Every lockspace of this node.
    pub lockspaces: Vec<LsStatus>,
}

/// One lockspace as [`Dlm::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsStatus {
    pub name: String,
    /// Its members in its current generation (empty while joining).
    pub members: Vec<NodeId>,
    pub generation: u32,
    pub recovering: bool,
    /// Being left: no new locks.
    pub leaving: bool,
    pub pending_recovery: Vec<(NodeId, u64)>,
    pub locks: usize,
    /// Resources mastered here (in use or kept unused for a while).
    pub resources: usize,
}

/// Which lock an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCtx {
    pub node: NodeId,
    /// The resource name (lossy UTF-8); empty when not known.
    pub name: String,
    pub lkid: Option<u64>,
}

impl fmt::Display for LockCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.node)?;
        if !self.name.is_empty() {
            write!(f, ", lock {:?}", self.name)?;
        }
        if let Some(l) = self.lkid {
            write!(f, " (lkid {l})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlmError {
    #[error("{ctx}: not grantable at once and NOQUEUE was given")]
    WouldBlock { ctx: LockCtx },
    #[error("{ctx}: timed out waiting for the grant")]
    TimedOut { ctx: LockCtx },
    #[error("{ctx}: conversion deadlock with lock {with}")]
    Deadlock { ctx: LockCtx, with: LockId },
    /// Deadlock detection chose this request to break a cycle of waits
    /// across resources and nodes (the waiting locks, in order).
    #[error("{ctx}: deadlock: waits form a cycle through {}", cycle.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" -> "))]
    DeadlockCycle { ctx: LockCtx, cycle: Vec<LockId> },
    #[error("{ctx}: cancelled")]
    Cancelled { ctx: LockCtx },
    /// The lease was lost (or the node restarted as a new incarnation):
    /// the lock is gone.
    #[error("{ctx}: lost: {reason}")]
    Lost { ctx: LockCtx, reason: String },
    /// The driver stopped (left, aborted, or every handle dropped).
    #[error("node {node}: the lock manager is not running")]
    NotRunning { node: NodeId },
    #[error("{ctx}: invalid: {detail}")]
    Invalid { ctx: LockCtx, detail: String },
    #[error("node {node}: cannot start: {detail}")]
    Setup { node: NodeId, detail: String },
}

impl DlmError {
    fn from_lock(ctx: LockCtx, e: LockError) -> DlmError {
        match e {
            LockError::WouldBlock => DlmError::WouldBlock { ctx },
            LockError::TimedOut => DlmError::TimedOut { ctx },
            LockError::Deadlock { with } => DlmError::Deadlock { ctx, with },
            LockError::Cycle { cycle } => DlmError::DeadlockCycle { ctx, cycle },
            LockError::Cancelled => DlmError::Cancelled { ctx },
            LockError::Invalid(detail) => DlmError::Invalid { ctx, detail },
            LockError::Busy(_, what) => DlmError::Invalid {
                ctx,
                detail: format!("busy: {what}"),
            },
            LockError::UnknownLock(_) => DlmError::Invalid {
                ctx,
                detail: "unknown lock".into(),
            },
            // Never reaches users (the owner looks the master up again);
            // mapped rather than unreachable!() so a core change cannot
            // panic the driver.
            LockError::NotMaster => DlmError::Invalid {
                ctx,
                detail: "not the master".into(),
            },
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, DlmError>>;

enum Cmd {
    Lock {
        ls: String,
        owner: u64,
        name: Vec<u8>,
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
        reply: Reply<Grant>,
    },
    Convert {
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
        timeout: Option<Duration>,
        reply: Reply<Grant>,
    },
    Unlock {
        lkid: u64,
        lvb: Option<Vec<u8>>,
        reply: Reply<()>,
    },
    Cancel {
        lkid: u64,
        reply: Reply<()>,
    },
    RecoveryDone {
        ls: String,
        node: NodeId,
        incarnation: u64,
        reply: Reply<()>,
    },
    Join {
        ls: String,
        /// None: the cluster file's `lvb_len`.
        opts: Option<LsOptions>,
        reply: Reply<()>,
    },
    LeaveLs {
        ls: String,
        reply: Reply<()>,
    },
    Status(oneshot::Sender<DlmStatus>),
    Leave(oneshot::Sender<()>),
}

/// Whether this node's lease still runs, readable without asking the
/// driver (a lock-free load): what a file system checks before it trusts
/// anything it cached under a lock. The driver publishes the lease after
/// every input. Once the first incarnation's lease ran out or was lost it
/// stays expired, even after the node rejoins as a new incarnation: what
/// was cached under the old one must not be used again.
#[derive(Clone, Debug)]
pub struct LeaseWatch {
    start: Instant,
    /// Milliseconds since `start` the lease runs to; [`LeaseWatch::NOT_YET`]
    /// before the first lease, [`LeaseWatch::LOST`] once it is gone.
    deadline: Arc<AtomicU64>,
}

impl LeaseWatch {
    const NOT_YET: u64 = u64::MAX;
    const LOST: u64 = 0;

    fn new(start: Instant) -> LeaseWatch {
        LeaseWatch {
            start,
            deadline: Arc::new(AtomicU64::new(Self::NOT_YET)),
        }
    }

    /// This node held a lease and it has run out (or was lost).
    pub fn expired(&self) -> bool {
        match self.deadline.load(Ordering::Acquire) {
            Self::NOT_YET => false,
            Self::LOST => true,
            t => self.start.elapsed().as_millis() as u64 >= t,
        }
    }

    /// Called by the driver with the member layer's lease (driver ms).
    fn publish(&self, lease_until: Option<u64>) {
        let cur = self.deadline.load(Ordering::Acquire);
        if cur == Self::LOST {
            return;
        }
        match lease_until {
            // A deadline of 0 would read as lost; it is already past.
            Some(t) => self.deadline.store(t.max(1), Ordering::Release),
            None if cur != Self::NOT_YET => self.deadline.store(Self::LOST, Ordering::Release),
            None => {}
        }
    }
}

/// The async handle. Cheap to clone; the node stops when [`Dlm::leave`]
/// is called or every clone is dropped.
#[derive(Clone)]
pub struct Dlm {
    me: NodeId,
    lease: LeaseWatch,
    tx: mpsc::UnboundedSender<Cmd>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Added to a caller's timeout for the outer bound: the core reports
    /// TimedOut itself (checked on ticks), but its cancel waits while
    /// grants are stopped; the outer bound does not.
    grace: Duration,
}

impl fmt::Debug for Dlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dlm").field("node", &self.me).finish()
    }
}

impl Dlm {
    /// Starts node `me` of `cluster` on the current tokio runtime: binds
    /// its address and spawns the driver task. Locks can be asked for at
    /// once; they are granted once the node is a member of a quorate view.
    pub async fn start(
        cluster: ClusterConfig,
        me: NodeId,
        opts: DlmOptions,
    ) -> Result<(Dlm, Events), DlmError> {
        let setup = |detail: String| DlmError::Setup { node: me, detail };
        let incarnation = new_incarnation();
        let mut node = Node::new(
            me,
            incarnation,
            generation_floor_now(),
            cluster.member_config(),
            cluster.lvb_len,
        )
        .map_err(setup)?;
        node.set_recovery_hold(opts.recovery_hold);
        node.set_deadlock_detection((cluster.heartbeat_ms * 5).max(100));
        let (transport, incoming) = Transport::start(&cluster, me, incarnation)
            .await
            .map_err(|e| setup(e.to_string()))?;
        info!(node = me, incarnation, cluster = %cluster.name, "in-process node started");
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let tick_every = Duration::from_millis((cluster.heartbeat_ms / 4).max(1));
        let grace = Duration::from_millis(cluster.heartbeat_ms.saturating_mul(2).max(50));
        let start = Instant::now();
        let lease = LeaseWatch::new(start);
        let d = Driver {
            me,
            alone: cluster.nodes.len() == 1,
            heartbeat_ms: cluster.heartbeat_ms,
            node,
            transport,
            start,
            lease: lease.clone(),
            events: ev_tx,
            locks: BTreeMap::new(),
            by_core: BTreeMap::new(),
            next_id: 1,
            lost_before: 0,
            lost_reason: String::new(),
            leaving_ls: BTreeMap::new(),
            joining_ls: BTreeMap::new(),
            outbox: Outbox::new(),
        };
        let task = tokio::spawn(drive(d, incoming, rx, tick_every));
        Ok((
            Dlm {
                me,
                lease,
                tx,
                task: Arc::new(Mutex::new(Some(task))),
                grace,
            },
            ev_rx,
        ))
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// This node's lease, readable at any time without a round trip.
    pub fn lease_watch(&self) -> LeaseWatch {
        self.lease.clone()
    }

    async fn call<T>(
        &self,
        timeout: Option<Duration>,
        ctx: impl FnOnce() -> LockCtx,
        cmd: impl FnOnce(Reply<T>) -> Cmd,
    ) -> Result<T, DlmError> {
        let not_running = DlmError::NotRunning { node: self.me };
        let (tx, rx) = oneshot::channel();
        self.tx.send(cmd(tx)).map_err(|_| not_running.clone())?;
        match timeout {
            None => rx.await.map_err(|_| not_running)?,
            // Dropping `rx` tells the driver the caller gave up.
            Some(t) => match tokio::time::timeout(t.saturating_add(self.grace), rx).await {
                Ok(r) => r.map_err(|_| not_running)?,
                Err(_) => Err(DlmError::TimedOut { ctx: ctx() }),
            },
        }
    }

    fn ctx(&self, name: &[u8], lkid: Option<u64>) -> LockCtx {
        LockCtx {
            node: self.me,
            name: String::from_utf8_lossy(name).into_owned(),
            lkid,
        }
    }

    /// A new lock on `name`, resolved when granted. `lvb`: return the LVB
    /// with grants (and allow writing it on unlock / down-conversion).
    /// `timeout` bounds the wait (the request is cancelled at its end).
    /// Flags: NOQUEUE, NOQUEUEBAST, NOEXP, QUECVT, CONVDEADLK, IVVALBLK;
    /// VALBLK and TIMEOUT are set from `lvb` and `timeout`.
    pub async fn lock(
        &self,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.lock_as(0, name, mode, flags, lvb, timeout).await
    }

    /// [`lock`](Dlm::lock) on behalf of `owner`, a transaction of this node
    /// that may hold some locks while it waits for others (e.g. one file
    /// system operation): deadlock detection follows owners' waits across
    /// resources and nodes and fails one request of a cycle with
    /// `DeadlockCycle`. Owner 0 is the lock alone.
    pub async fn lock_as(
        &self,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.lock_in(DEFAULT_LOCKSPACE, owner, name, mode, flags, lvb, timeout)
            .await
    }

    /// [`lock_as`](Dlm::lock_as) in lockspace `ls` (joined with
    /// [`join_lockspace`](Dlm::join_lockspace)). Convert, unlock and cancel
    /// need no lockspace: lock ids are unique across lockspaces.
    #[allow(clippy::too_many_arguments)]
    pub async fn lock_in(
        &self,
        ls: &str,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        let owned = name.to_vec();
        self.call(
            timeout,
            || self.ctx(name, None),
            |reply| Cmd::Lock {
                ls: ls.to_string(),
                owner,
                name: owned,
                mode,
                flags,
                lvb,
                timeout,
                reply,
            },
        )
        .await
    }

    /// Converts lock `lkid` to `mode`; `lvb_to_write` is written when
    /// converting down from PW/EX.
    pub async fn convert(
        &self,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb_to_write: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.call(
            timeout,
            || self.ctx(b"", Some(lkid)),
            |reply| Cmd::Convert {
                lkid,
                mode,
                flags,
                lvb: lvb_to_write,
                timeout,
                reply,
            },
        )
        .await
    }

    /// Releases lock `lkid`, writing `lvb_to_write` if it held PW/EX.
    pub async fn unlock(&self, lkid: u64, lvb_to_write: Option<Vec<u8>>) -> Result<(), DlmError> {
        self.call(
            None,
            || self.ctx(b"", Some(lkid)),
            |reply| Cmd::Unlock {
                lkid,
                lvb: lvb_to_write,
                reply,
            },
        )
        .await
    }

    /// Cancels the pending request or conversion of `lkid`; its waiter
    /// gets `Cancelled` (unless the grant won the race).
    pub async fn cancel(&self, lkid: u64) -> Result<(), DlmError> {
        self.call(
            None,
            || self.ctx(b"", Some(lkid)),
            |reply| Cmd::Cancel { lkid, reply },
        )
        .await
    }

    /// The journal of that incarnation of `node` is replayed: every member
    /// of the default lockspace lifts its recovery hold.
    pub async fn recovery_done(&self, node: NodeId, incarnation: u64) -> Result<(), DlmError> {
        self.recovery_done_in(DEFAULT_LOCKSPACE, node, incarnation)
            .await
    }

    /// [`recovery_done`](Dlm::recovery_done) in lockspace `ls`.
    pub async fn recovery_done_in(
        &self,
        ls: &str,
        node: NodeId,
        incarnation: u64,
    ) -> Result<(), DlmError> {
        self.call(
            None,
            || self.ctx(b"", None),
            |reply| Cmd::RecoveryDone {
                ls: ls.to_string(),
                node,
                incarnation,
                reply,
            },
        )
        .await
    }

    /// Joins lockspace `ls` with the cluster file's LVB length; see
    /// [`join_lockspace_with`](Dlm::join_lockspace_with).
    pub async fn join_lockspace(&self, ls: &str) -> Result<(), DlmError> {
        self.join(ls, None).await
    }

    /// Joins lockspace `ls` with `opts.lvb_len`-byte LVBs (a multiple of 8
    /// in 8..=1024). Resolves once the members agreed on a view with this
    /// node in the lockspace and its recovery ran (at once if already in
    /// it); locks there may be asked for meanwhile and are granted then.
    /// Fails with `Invalid` when the lockspace's members use another LVB
    /// length (the error names the lockspace, both lengths and the nodes;
    /// the members are not disturbed), or when the lockspace is left first.
    pub async fn join_lockspace_with(&self, ls: &str, opts: LsOptions) -> Result<(), DlmError> {
        self.join(ls, Some(opts)).await
    }

    async fn join(&self, ls: &str, opts: Option<LsOptions>) -> Result<(), DlmError> {
        let name = ls.to_string();
        self.call(
            None,
            || self.ctx(b"", None),
            |reply| Cmd::Join {
                ls: name,
                opts,
                reply,
            },
        )
        .await
    }

    /// Leaves lockspace `ls` (refused while this node has locks there);
    /// resolves once a view without this node in it committed. The others
    /// release nothing of theirs and hold nothing for it.
    pub async fn leave_lockspace(&self, ls: &str) -> Result<(), DlmError> {
        let name = ls.to_string();
        self.call(
            None,
            || self.ctx(b"", None),
            |reply| Cmd::LeaveLs { ls: name, reply },
        )
        .await
    }

    pub async fn status(&self) -> Result<DlmStatus, DlmError> {
        let (tx, rx) = oneshot::channel();
        let not_running = || DlmError::NotRunning { node: self.me };
        self.tx.send(Cmd::Status(tx)).map_err(|_| not_running())?;
        rx.await.map_err(|_| not_running())
    }

    /// Stops the node: pending waiters get `NotRunning`, the transport
    /// closes its connections. If the node holds no locks it leaves
    /// cleanly (the others drop it at once); otherwise the others treat it
    /// as failed (its locks are purged after its lease, and with the
    /// recovery hold its journal must be recovered).
    pub async fn leave(&self) -> Result<(), DlmError> {
        let (tx, rx) = oneshot::channel();
        let not_running = || DlmError::NotRunning { node: self.me };
        self.tx.send(Cmd::Leave(tx)).map_err(|_| not_running())?;
        rx.await.map_err(|_| not_running())
    }

    /// Stops the driver at once, as a crash would: no message is sent, the
    /// transport is dropped without closing its connections. For tests of
    /// failure handling.
    pub fn abort(&self) {
        let task = match self.task.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(t) = task {
            t.abort();
        }
    }
}

/// The synchronous face of a [`Dlm`], for threads that are not tokio's
/// (FUSE workers): each call blocks its thread until the async call ends,
/// bounded when a timeout is given. Any number of threads may call at once;
/// the driver serialises the operations.
///
/// Made by [`BlockingDlm::start`], it *owns* a multi-thread runtime (the
/// driver runs there; the runtime stops when the last clone is dropped,
/// which must happen outside any async context). Made by
/// [`BlockingDlm::new`], it *borrows* the runtime behind a `Handle`. Never
/// call its methods from inside an async task: blocking there panics.
#[derive(Clone)]
pub struct BlockingDlm {
    dlm: Dlm,
    handle: tokio::runtime::Handle,
    _runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl fmt::Debug for BlockingDlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingDlm")
            .field("node", &self.dlm.me)
            .field("owns_runtime", &self._runtime.is_some())
            .finish()
    }
}

impl BlockingDlm {
    /// Starts node `me` on a runtime of its own (two worker threads).
    pub fn start(
        cluster: ClusterConfig,
        me: NodeId,
        opts: DlmOptions,
    ) -> Result<(BlockingDlm, Events), DlmError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("rdlm-{me}"))
            .enable_all()
            .build()
            .map_err(|e| DlmError::Setup {
                node: me,
                detail: format!("tokio runtime: {e}"),
            })?;
        let (dlm, events) = rt.block_on(Dlm::start(cluster, me, opts))?;
        Ok((
            BlockingDlm {
                dlm,
                handle: rt.handle().clone(),
                _runtime: Some(Arc::new(rt)),
            },
            events,
        ))
    }

    /// Wraps a running `dlm` whose runtime `handle` names (borrowed: the
    /// runtime must outlive the calls).
    pub fn new(dlm: Dlm, handle: tokio::runtime::Handle) -> BlockingDlm {
        BlockingDlm {
            dlm,
            handle,
            _runtime: None,
        }
    }

    /// The async handle (for tasks on the same runtime).
    pub fn dlm(&self) -> &Dlm {
        &self.dlm
    }

    pub fn lock(
        &self,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.handle
            .block_on(self.dlm.lock(name, mode, flags, lvb, timeout))
    }

    /// See [`Dlm::lock_as`].
    pub fn lock_as(
        &self,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.handle
            .block_on(self.dlm.lock_as(owner, name, mode, flags, lvb, timeout))
    }

    pub fn convert(
        &self,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb_to_write: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.handle
            .block_on(self.dlm.convert(lkid, mode, flags, lvb_to_write, timeout))
    }

    pub fn unlock(&self, lkid: u64, lvb_to_write: Option<Vec<u8>>) -> Result<(), DlmError> {
        self.handle.block_on(self.dlm.unlock(lkid, lvb_to_write))
    }

    pub fn cancel(&self, lkid: u64) -> Result<(), DlmError> {
        self.handle.block_on(self.dlm.cancel(lkid))
    }

    pub fn recovery_done(&self, node: NodeId, incarnation: u64) -> Result<(), DlmError> {
        self.handle
            .block_on(self.dlm.recovery_done(node, incarnation))
    }

    /// See [`Dlm::lock_in`].
    #[allow(clippy::too_many_arguments)]
    pub fn lock_in(
        &self,
        ls: &str,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: bool,
        timeout: Option<Duration>,
    ) -> Result<Grant, DlmError> {
        self.handle
            .block_on(self.dlm.lock_in(ls, owner, name, mode, flags, lvb, timeout))
    }

    /// See [`Dlm::recovery_done_in`].
    pub fn recovery_done_in(
        &self,
        ls: &str,
        node: NodeId,
        incarnation: u64,
    ) -> Result<(), DlmError> {
        self.handle
            .block_on(self.dlm.recovery_done_in(ls, node, incarnation))
    }

    /// See [`Dlm::join_lockspace`].
    pub fn join_lockspace(&self, ls: &str) -> Result<(), DlmError> {
        self.handle.block_on(self.dlm.join_lockspace(ls))
    }

    /// See [`Dlm::join_lockspace_with`].
    pub fn join_lockspace_with(&self, ls: &str, opts: LsOptions) -> Result<(), DlmError> {
        self.handle.block_on(self.dlm.join_lockspace_with(ls, opts))
    }

    /// See [`Dlm::leave_lockspace`].
    pub fn leave_lockspace(&self, ls: &str) -> Result<(), DlmError> {
        self.handle.block_on(self.dlm.leave_lockspace(ls))
    }

    pub fn status(&self) -> Result<DlmStatus, DlmError> {
        self.handle.block_on(self.dlm.status())
    }

    pub fn leave(&self) -> Result<(), DlmError> {
        self.handle.block_on(self.dlm.leave())
    }
}

/// Who waits for the outstanding operation of a lock.
enum Wait {
    /// A new request (`new`) or a conversion.
    Grant {
        new: bool,
        reply: Reply<Grant>,
    },
    Unlock(Reply<()>),
}

struct Lk {
    core: u64,
    ls: String,
    name: Vec<u8>,
    valblk: bool,
    wait: Option<Wait>,
    /// The caller of a new request gave up: release the lock once it can.
    abandoned: bool,
}

struct Driver {
    me: NodeId,
    alone: bool,
    heartbeat_ms: u64,
    node: Node,
    transport: Transport,
    start: Instant,
    lease: LeaseWatch,
    events: mpsc::UnboundedSender<DlmEvent>,
    /// By this handle's lock id.
    locks: BTreeMap<u64, Lk>,
    /// Core lock id -> this handle's.
    by_core: BTreeMap<u64, u64>,
    next_id: u64,
    /// Ids below this were issued before the last lost lease.
    lost_before: u64,
    lost_reason: String,
    /// Callers of `leave_lockspace` waiting for the view without us.
    leaving_ls: BTreeMap<String, Vec<Reply<()>>>,
    /// Callers of `join_lockspace` waiting for the lockspace's first
    /// recovery with us in it (or the refusal).
    joining_ls: BTreeMap<String, Vec<Reply<()>>>,
    /// Messages the transport could not take yet (its backlog to that
    /// peer was full), in order; sent before anything newer to the peer.
    outbox: Outbox,
}

/// The driver loop. It repeats [`crate::daemon::run`]'s loop rather than
/// sharing it: the daemon's is interleaved with its Unix socket listener
/// and client bookkeeping, and pulling a common piece out would change
/// daemon.rs more than the ~50 lines it would save.
async fn drive(
    mut d: Driver,
    mut incoming: mpsc::Receiver<Incoming>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    tick_every: Duration,
) {
    let me = d.me;
    // A one-node cluster has no peers, and its transport may close its
    // channel at once; with peers a closed channel is fatal.
    let mut transport_open = true;
    let mut timer = tokio::time::interval(tick_every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut leaving = None;
    loop {
        tokio::select! {
            _ = timer.tick() => {
                let now = d.now();
                d.node.tick(now);
                d.reap_abandoned();
            }
            inc = incoming.recv(), if transport_open => match inc {
                Some(Incoming::Message { from, payload }) => match Message::decode(&payload) {
                    Ok(msg) if msg.from == from => {
                        let now = d.now();
                        d.node.receive(now, msg);
                    }
                    Ok(msg) => warn!(node = me, peer = from, claimed = msg.from, "message naming another sender dropped"),
                    Err(e) => warn!(node = me, peer = from, error = %e, "undecodable message dropped"),
                },
                Some(Incoming::PeerRestarted { from, incarnation }) => {
                    info!(node = me, peer = from, incarnation, "peer restarted");
                }
                Some(Incoming::Connected { peer }) => debug!(node = me, peer, "connected"),
                Some(Incoming::Disconnected { peer }) => debug!(node = me, peer, "disconnected"),
                None if d.alone => transport_open = false,
                None => {
                    warn!(node = me, "transport stopped");
                    break;
                }
            },
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Leave(tx)) => {
                    leaving = Some(tx);
                    break;
                }
                Some(c) => d.command(c),
                // Every handle dropped.
                None => break,
            },
        }
        d.outbox.send_held(&d.transport, me);
        d.flush();
        d.lease.publish(d.node.membership().lease_until());
    }
    // A clean leave when nothing is held: the others drop this node at
    // once instead of treating it as failed.
    if leaving.is_some() {
        let now = d.now();
        if d.node.leave(now).is_ok() {
            d.flush();
            // Messages held for a full backlog go first (the leave is
            // behind them), bounded by a few heartbeats.
            let deadline = Instant::now() + Duration::from_millis(d.heartbeat_ms.max(20) * 10);
            while !d.outbox.send_held(&d.transport, me) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            info!(node = me, "left the cluster");
            tokio::time::sleep(Duration::from_millis(d.heartbeat_ms.max(20))).await;
        }
    }
    info!(node = me, "in-process node stopping");
    let Driver {
        transport, locks, ..
    } = d;
    // Waiters see their reply dropped: NotRunning.
    drop(locks);
    drop(cmds);
    transport.shutdown().await;
    if let Some(tx) = leaving {
        let _ = tx.send(());
    }
}

impl Driver {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn ctx(&self, name: &[u8], lkid: Option<u64>) -> LockCtx {
        LockCtx {
            node: self.me,
            name: String::from_utf8_lossy(name).into_owned(),
            lkid,
        }
    }

    /// The lock `lkid` names, or why there is none.
    fn known(&self, lkid: u64) -> Result<&Lk, DlmError> {
        self.locks.get(&lkid).ok_or_else(|| {
            let ctx = self.ctx(b"", Some(lkid));
            if lkid < self.lost_before {
                DlmError::Lost {
                    ctx,
                    reason: format!(
                        "unknown lock, issued before the lease was lost ({})",
                        self.lost_reason
                    ),
                }
            } else {
                DlmError::Invalid {
                    ctx,
                    detail: "unknown lock (never granted, or released)".into(),
                }
            }
        })
    }

    fn command(&mut self, cmd: Cmd) {
        let now = self.now();
        match cmd {
            Cmd::Lock {
                ls,
                owner,
                name,
                mode,
                flags,
                lvb,
                timeout,
                reply,
            } => {
                let mut f = flags;
                if lvb {
                    f = f | Flags::VALBLK;
                }
                let t = timeout.map(|t| (t.as_millis() as u64).max(1));
                if t.is_some() {
                    f = f | Flags::TIMEOUT;
                }
                match self.node.lock_in(now, &ls, owner, &name, mode, f, t) {
                    Ok(core) => {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.by_core.insert(core, id);
                        self.locks.insert(
                            id,
                            Lk {
                                core,
                                ls,
                                name,
                                valblk: lvb,
                                wait: Some(Wait::Grant { new: true, reply }),
                                abandoned: false,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DlmError::from_lock(self.ctx(&name, None), e)));
                    }
                }
            }
            Cmd::Convert {
                lkid,
                mode,
                flags,
                lvb,
                timeout,
                reply,
            } => {
                let (core, name, valblk) = match self.known(lkid) {
                    Ok(l) => (l.core, l.name.clone(), l.valblk),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let mut f = flags;
                if valblk || lvb.is_some() {
                    f = f | Flags::VALBLK;
                }
                let t = timeout.map(|t| (t.as_millis() as u64).max(1));
                if t.is_some() {
                    f = f | Flags::TIMEOUT;
                }
                match self.node.convert_for(now, core, mode, f, lvb, t) {
                    Ok(()) => {
                        if let Some(l) = self.locks.get_mut(&lkid) {
                            l.wait = Some(Wait::Grant { new: false, reply });
                        }
                    }
                    Err(e) => {
                        let _ =
                            reply.send(Err(DlmError::from_lock(self.ctx(&name, Some(lkid)), e)));
                    }
                }
            }
            Cmd::Unlock { lkid, lvb, reply } => {
                let (core, name) = match self.known(lkid) {
                    Ok(l) => (l.core, l.name.clone()),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let f = if lvb.is_some() {
                    Flags::VALBLK
                } else {
                    Flags::NONE
                };
                match self.node.unlock(now, core, f, lvb) {
                    Ok(()) => {
                        if let Some(l) = self.locks.get_mut(&lkid) {
                            l.wait = Some(Wait::Unlock(reply));
                        }
                    }
                    Err(e) => {
                        let _ =
                            reply.send(Err(DlmError::from_lock(self.ctx(&name, Some(lkid)), e)));
                    }
                }
            }
            Cmd::Cancel { lkid, reply } => {
                let (core, name) = match self.known(lkid) {
                    Ok(l) => (l.core, l.name.clone()),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let r = self
                    .node
                    .cancel(now, core)
                    .map_err(|e| DlmError::from_lock(self.ctx(&name, Some(lkid)), e));
                let _ = reply.send(r);
            }
            Cmd::RecoveryDone {
                ls,
                node,
                incarnation,
                reply,
            } => {
                info!(
                    node = self.me,
                    lockspace = %ls,
                    departed = node,
                    incarnation,
                    "recovery declared done"
                );
                let r = self
                    .node
                    .recovery_done_in(now, &ls, node, incarnation)
                    .map_err(|e| DlmError::from_lock(self.ctx(b"", None), e));
                let _ = reply.send(r);
            }
            Cmd::Join { ls, opts, reply } => {
                let r = match opts {
                    Some(o) => self.node.join_lockspace_with(&ls, o),
                    None => self.node.join_lockspace(&ls),
                };
                match r {
                    Ok(()) if self.node.is_in_lockspace(&ls) => {
                        let _ = reply.send(Ok(()));
                    }
                    Ok(()) => {
                        info!(node = self.me, lockspace = %ls, "joining lockspace");
                        self.joining_ls.entry(ls).or_default().push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DlmError::from_lock(self.ctx(b"", None), e)));
                    }
                }
            }
            Cmd::LeaveLs { ls, reply } => match self.node.leave_lockspace(now, &ls) {
                Ok(()) => {
                    info!(node = self.me, lockspace = %ls, "leaving lockspace");
                    self.leaving_ls.entry(ls).or_default().push(reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(DlmError::from_lock(self.ctx(b"", None), e)));
                }
            },
            Cmd::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            // Handled by the loop.
            Cmd::Leave(_) => {}
        }
    }

    fn status(&self, now: u64) -> DlmStatus {
        let view = self.node.view().cloned();
        let slot = view
            .as_ref()
            .and_then(|v| v.member(self.me))
            .filter(|m| m.incarnation == self.node.incarnation())
            .map(|m| m.slot);
        let ls = self.node.lockspace();
        DlmStatus {
            node: self.me,
            incarnation: self.node.incarnation(),
            view,
            slot,
            quorate: self.node.quorate(now),
            recovering: ls.is_recovering(),
            pending_recovery: ls.pending_recovery().copied().collect(),
            locks: self.node.lock_count(),
            lockspaces: self
                .node
                .lockspaces()
                .map(|(name, ls, leaving)| LsStatus {
                    name: name.to_string(),
                    members: ls.members().to_vec(),
                    generation: ls.generation(),
                    recovering: ls.is_recovering(),
                    leaving,
                    pending_recovery: ls.pending_recovery().copied().collect(),
                    locks: ls.lock_count(),
                    resources: ls.resources().count(),
                })
                .collect(),
        }
    }

    /// New requests whose caller went away are cancelled (and released if
    /// granted meanwhile; see `callback`).
    fn reap_abandoned(&mut self) {
        let gone: Vec<(u64, u64)> = self
            .locks
            .iter()
            .filter(|(_, l)| {
                !l.abandoned
                    && matches!(&l.wait, Some(Wait::Grant { new: true, reply }) if reply.is_closed())
            })
            .map(|(id, l)| (*id, l.core))
            .collect();
        let now = self.now();
        for (id, core) in gone {
            if let Some(l) = self.locks.get_mut(&id) {
                l.abandoned = true;
            }
            debug!(
                node = self.me,
                lkid = id,
                "request abandoned by its caller: cancelling"
            );
            if let Err(e) = self.node.cancel(now, core) {
                debug!(node = self.me, lkid = id, error = %e, "cancel of an abandoned request");
            }
        }
    }

    /// Releases a lock nobody owns any more.
    fn release(&mut self, id: u64) {
        let now = self.now();
        let Some(core) = self.locks.get(&id).map(|l| l.core) else {
            return;
        };
        if let Some(l) = self.locks.get_mut(&id) {
            l.abandoned = true;
            l.wait = None;
        }
        if let Err(e) = self.node.unlock(now, core, Flags::NONE, None) {
            warn!(node = self.me, lkid = id, error = %e, "releasing an abandoned lock failed");
        }
    }

    /// Everything the core produced: messages out, replies, events.
    fn flush(&mut self) {
        loop {
            let outs = self.node.drain();
            if outs.is_empty() {
                break;
            }
            for o in outs {
                match o {
                    Output::Send { to, msg } => {
                        if let Err(e) = self.outbox.send(&self.transport, to, msg.encode()) {
                            warn!(node = self.me, peer = to, error = %e, "send failed");
                        }
                    }
                    Output::Callback(cb) => self.callback(cb),
                    Output::Membership(e) => self.membership(e),
                    Output::Lockspace { name, event } => self.lockspace_event(name, event),
                }
            }
        }
    }

    fn lockspace_event(&mut self, lockspace: String, e: LsEvent) {
        match e {
            LsEvent::RecoverPrep {
                generation,
                departed,
                left,
            } => {
                info!(
                    node = self.me,
                    lockspace = %lockspace,
                    generation,
                    departed = ?departed.iter().map(|m| (m.id, m.slot)).collect::<Vec<_>>(),
                    "lockspace recovery starts"
                );
                self.event(DlmEvent::RecoverPrep {
                    lockspace: lockspace.clone(),
                    generation,
                    departed: departed.clone(),
                });
                // A member that left cleanly has nothing to recover.
                for m in departed.iter().filter(|m| !left.contains(m)) {
                    self.event(DlmEvent::RecoverSlot {
                        lockspace: lockspace.clone(),
                        node: m.id,
                        incarnation: m.incarnation,
                        slot: m.slot,
                    });
                }
            }
            LsEvent::RecoverDone { generation } => {
                info!(node = self.me, lockspace = %lockspace, generation, "lockspace recovered; grants resume");
                for reply in self.joining_ls.remove(&lockspace).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                self.event(DlmEvent::RecoverDone {
                    lockspace,
                    generation,
                });
            }
            LsEvent::Left => {
                info!(node = self.me, lockspace = %lockspace, "left lockspace");
                for reply in self.joining_ls.remove(&lockspace).unwrap_or_default() {
                    let _ = reply.send(Err(DlmError::Invalid {
                        ctx: self.ctx(b"", None),
                        detail: format!(
                            "lockspace {lockspace:?} was left before the join completed"
                        ),
                    }));
                }
                for reply in self.leaving_ls.remove(&lockspace).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                self.event(DlmEvent::Left { lockspace });
            }
            LsEvent::Lost { reason } => {
                warn!(node = self.me, lockspace = %lockspace, %reason, "every lock in the lockspace is gone");
                let gone: Vec<u64> = self
                    .locks
                    .iter()
                    .filter(|(_, l)| l.ls == lockspace)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    if let Some(l) = self.forget(id) {
                        let err = DlmError::Lost {
                            ctx: self.ctx(&l.name, Some(id)),
                            reason: reason.clone(),
                        };
                        match l.wait {
                            Some(Wait::Grant { reply, .. }) => {
                                let _ = reply.send(Err(err));
                            }
                            Some(Wait::Unlock(reply)) => {
                                let _ = reply.send(Err(err));
                            }
                            None => {}
                        }
                    }
                }
                self.event(DlmEvent::LockspaceLost { lockspace, reason });
            }
            LsEvent::Refused { reason } => {
                warn!(node = self.me, lockspace = %lockspace, %reason, "lockspace join refused");
                for reply in self.joining_ls.remove(&lockspace).unwrap_or_default() {
                    let _ = reply.send(Err(DlmError::Invalid {
                        ctx: self.ctx(b"", None),
                        detail: reason.clone(),
                    }));
                }
                self.event(DlmEvent::JoinRefused { lockspace, reason });
            }
        }
    }

    fn event(&self, e: DlmEvent) {
        // A dropped receiver only means nobody listens.
        let _ = self.events.send(e);
    }

    fn callback(&mut self, cb: Callback) {
        let core = match &cb {
            Callback::Granted { lkid, .. }
            | Callback::Failed { lkid, .. }
            | Callback::Unlocked { lkid }
            | Callback::Blocking { lkid, .. } => *lkid,
            Callback::Recovered { .. } => return,
        };
        let Some(&id) = self.by_core.get(&core) else {
            debug!(
                node = self.me,
                core, "callback for a lock no longer tracked"
            );
            return;
        };
        match cb {
            Callback::Granted {
                mode,
                lvb,
                lvb_valid,
                seq,
                demoted,
                ..
            } => {
                let Some(l) = self.locks.get_mut(&id) else {
                    return;
                };
                let abandoned = l.abandoned;
                let grant = Grant {
                    lkid: id,
                    mode,
                    seq,
                    lvb,
                    lvb_valid,
                    demoted,
                };
                match l.wait.take() {
                    Some(Wait::Grant { new, reply }) => {
                        let unclaimed = abandoned || reply.send(Ok(grant)).is_err();
                        if unclaimed && new {
                            self.release(id);
                        }
                    }
                    Some(w @ Wait::Unlock(_)) => l.wait = Some(w),
                    None if abandoned => self.release(id),
                    None => {}
                }
            }
            Callback::Failed { error, .. } => {
                let gone = !self.node.has_lock(core);
                let ctx = match self.locks.get(&id) {
                    Some(l) => self.ctx(&l.name, Some(id)),
                    None => self.ctx(b"", Some(id)),
                };
                let err = DlmError::from_lock(ctx, error);
                let wait = self.locks.get_mut(&id).and_then(|l| l.wait.take());
                match wait {
                    Some(Wait::Grant { reply, .. }) => {
                        let _ = reply.send(Err(err));
                    }
                    Some(Wait::Unlock(reply)) => {
                        let _ = reply.send(Err(err));
                    }
                    None => {}
                }
                if gone {
                    self.forget(id);
                }
            }
            Callback::Unlocked { .. } => {
                let wait = self.forget(id).and_then(|l| l.wait);
                match wait {
                    Some(Wait::Unlock(reply)) => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(Wait::Grant { reply, .. }) => {
                        let ctx = self.ctx(b"", Some(id));
                        let _ = reply.send(Err(DlmError::Cancelled { ctx }));
                    }
                    None => {}
                }
            }
            Callback::Blocking { mode, .. } => {
                if self.locks.get(&id).is_some_and(|l| !l.abandoned) {
                    self.event(DlmEvent::Blocking { lkid: id, mode });
                }
            }
            Callback::Recovered { .. } => {}
        }
    }

    fn forget(&mut self, id: u64) -> Option<Lk> {
        let l = self.locks.remove(&id)?;
        self.by_core.remove(&l.core);
        Some(l)
    }

    fn membership(&mut self, e: MemberEvent) {
        match e {
            MemberEvent::Committed { view, departed, .. } => {
                info!(
                    node = self.me,
                    generation = view.generation,
                    members = ?view.ids(),
                    departed = ?departed.iter().map(|m| (m.id, m.slot)).collect::<Vec<_>>(),
                    "membership committed"
                );
                self.event(DlmEvent::Member { view });
            }
            MemberEvent::Lost {
                incarnation,
                reason,
            } => {
                warn!(node = self.me, incarnation, %reason, "lease lost: every lock of this node is gone");
                for (id, l) in std::mem::take(&mut self.locks) {
                    let ctx = self.ctx(&l.name, Some(id));
                    let err = DlmError::Lost {
                        ctx,
                        reason: reason.clone(),
                    };
                    match l.wait {
                        Some(Wait::Grant { reply, .. }) => {
                            let _ = reply.send(Err(err));
                        }
                        Some(Wait::Unlock(reply)) => {
                            let _ = reply.send(Err(err));
                        }
                        None => {}
                    }
                }
                self.by_core.clear();
                // Lockspaces being left are dropped with the lease.
                for (lockspace, replies) in std::mem::take(&mut self.leaving_ls) {
                    for reply in replies {
                        let _ = reply.send(Ok(()));
                    }
                    self.event(DlmEvent::Left { lockspace });
                }
                self.lost_before = self.next_id;
                self.lost_reason = reason.clone();
                self.event(DlmEvent::Lost { reason });
            }
        }
    }
}
