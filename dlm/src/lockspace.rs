//! One node's part of a lockspace: its own locks, the resources it masters,
//! the directory entries that hash to it, and the routing between them.
//!
//! A deterministic state machine with no I/O: API calls and received
//! [`Message`]s in, [`Output`]s (messages to send, callbacks to deliver)
//! out. The driver owns sockets, timers and threads; the membership layer
//! decides views and tells this one through [`Lockspace::recover`] (see
//! `recover.rs` for what happens then) and [`Lockspace::set_quorate`].
//!
//! Mastery follows the kernel DLM: `hash(name)` picks a directory node among
//! the members; the directory records the master, which is the first node
//! that asked. A node that is its own directory node for a name, or already
//! knows the master, sends no lookup; a node that masters a resource runs
//! its lock operations on it without any message. Delivery between two
//! live incarnations is reliable and FIFO (the transport's job).
//!
//! Which messages count: a message from a non-member, or older than the
//! generation in which the sender's (or this node's) current incarnation
//! joined, is dropped; one from a newer generation waits for that view.
//! Lock traffic between surviving members crosses generations intact;
//! directory and recovery messages are bound to exactly one generation.
//! While recovery runs, or while this node's lease is not valid, API calls
//! and lock traffic are held and run afterwards in order.
//!
//! A node may be in several lockspaces (see [`crate::node`]): each is one
//! of these, with its own members, directory, recovery and LVB length;
//! its messages carry its id. An LVB of another length in a lock message
//! is a protocol error and never stored. Freeing unused resources is in `toss.rs`.

use crate::member::{MemberEvent, View};
use crate::mode::Mode;
use crate::recover::Recovery;
use crate::resource::{Event, Flags, LockError, LockId, NodeId, Resource, MAX_NAME};
use crate::wire::{Body, Message};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        to: NodeId,
        msg: Message,
    },
    Callback(Callback),
    /// From [`crate::node::Node`]: a membership change. After
    /// `MemberEvent::Lost` every lock of this node is gone.
    Membership(MemberEvent),
    /// From [`crate::node::Node`]: something happened to one lockspace.
    Lockspace {
        name: String,
        event: LsEvent,
    },
}

/// What a [`crate::node::Node`] tells about one of its lockspaces (the
/// lock_dlm callbacks, per lockspace: a file system on lockspace "fsA"
/// hears only of fsA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LsEvent {
    /// The lockspace's members changed (this node joined, or members
    /// joined, left or died) and its recovery starts: grants stop until
    /// `RecoverDone`. `departed`: members that are gone from it (with
    /// their slots); `left`: those of them that left cleanly (nothing of
    /// theirs to recover).
    RecoverPrep {
        generation: u32,
        departed: Vec<crate::member::Member>,
        left: Vec<crate::member::Member>,
    },
    /// The recovery announced by the last `RecoverPrep` finished.
    RecoverDone { generation: u32 },
    /// This node left the lockspace (a view without it committed).
    Left,
    /// Every lock of this node in the lockspace is gone; it joins again.
    Lost { reason: String },
    /// The join was given up: the lockspace's members use another LVB
    /// length (`reason` names the lockspace, both lengths and the nodes).
    /// Locks asked for there failed with the same reason.
    Refused { reason: String },
}

/// Completions and blocking callbacks for this node's locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    Granted {
        lkid: u64,
        mode: Mode,
        lvb: Option<Vec<u8>>,
        lvb_valid: bool,
        seq: u64,
        demoted: bool,
    },
    /// The pending request, conversion or unlock failed (a failed
    /// conversion leaves the lock in its granted mode; a failed new request
    /// leaves no lock).
    Failed {
        lkid: u64,
        error: LockError,
    },
    Unlocked {
        lkid: u64,
    },
    Blocking {
        lkid: u64,
        mode: Mode,
    },
    /// Recovery for `generation` finished here: grants resume.
    Recovered {
        generation: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Request {
        mode: Mode,
        flags: Flags,
        owner: u64,
    },
    Convert {
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    },
    Unlock {
        flags: Flags,
        lvb: Option<Vec<u8>>,
    },
    Cancel,
}

#[derive(Debug, Clone)]
pub(crate) struct LocalLock {
    pub(crate) name: Vec<u8>,
    pub(crate) granted: Option<Mode>,
    /// The request, conversion or unlock outstanding, wherever it is (sent,
    /// waiting for a lookup, or held back).
    pub(crate) op: Option<Op>,
    /// The master `op` was sent to, once it was.
    pub(crate) sent_to: Option<NodeId>,
    /// The master a cancel was sent to.
    pub(crate) cancel_to: Option<NodeId>,
    /// An unlock is on its way: blocking callbacks no longer concern it.
    pub(crate) releasing: bool,
    /// What the last grant said of the LVB (recovery reports it).
    pub(crate) lvb: Option<Vec<u8>>,
    pub(crate) lvb_valid: bool,
    pub(crate) seq: u64,
    pub(crate) owner: u64,
    /// The master that granted it (recovery needs it even when the cache
    /// of masters was emptied).
    pub(crate) master: Option<NodeId>,
    /// With TIMEOUT: when the pending request or conversion is cancelled.
    pub(crate) deadline: Option<u64>,
    pub(crate) timed_out: bool,
}

/// Counters for `rdlm dump`-style reporting and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub lookups_sent: u64,
    pub stale_dropped: u64,
    pub recoveries: u64,
    pub resources_remastered: u64,
    pub ops_resent: u64,
    /// Messages that broke the protocol (logged by the driver).
    pub protocol_errors: u64,
    /// Unused resources this node mastered and freed.
    pub resources_freed: u64,
}

/// How long an unused resource is kept by default (10 s in milliseconds,
/// the kernel's `toss_secs`).
pub const DEFAULT_TOSS_TIME: u64 = 10_000;

/// Most messages held for a generation this node has not reached.
pub const MAX_FUTURE: usize = 1 << 16;

pub struct Lockspace {
    pub(crate) id: NodeId,
    /// This lockspace's id (carried in every message it sends).
    pub(crate) ls_id: u32,
    pub(crate) generation: u32,
    pub(crate) members: Vec<NodeId>,
    /// Node -> (incarnation, generation in which it joined).
    pub(crate) incarnations: BTreeMap<NodeId, (u64, u32)>,
    pub(crate) quorate: bool,
    pub(crate) lvb_len: usize,
    next_lkid: u64,
    pub(crate) mastered: BTreeMap<Vec<u8>, Resource>,
    pub(crate) directory: BTreeMap<Vec<u8>, NodeId>,
    pub(crate) masters: BTreeMap<Vec<u8>, NodeId>,
    pub(crate) awaiting_lookup: BTreeMap<Vec<u8>, Vec<(u64, Op)>>,
    pub(crate) locks: BTreeMap<u64, LocalLock>,
    pub(crate) recovery: Option<Recovery>,
    /// Names with locks here whose master left and that recovery has not
    /// yet given a new one.
    pub(crate) unrecovered: BTreeSet<Vec<u8>>,
    /// Operations to run once grants resume, in order.
    pub(crate) deferred: VecDeque<(u64, Op)>,
    /// Lock traffic received while grants were stopped.
    pub(crate) held: VecDeque<Message>,
    pub(crate) future: VecDeque<Message>,
    pub(crate) out: Vec<Output>,
    pub(crate) stats: Stats,
    /// The driver's clock as of the last call that passed it.
    pub(crate) now: u64,
    /// Hold grants on what departed writers held until the user says their
    /// recovery is done ([`Lockspace::recovery_done`]).
    pub(crate) hold_on_recovery: bool,
    /// Departed incarnations whose recovery the user has not finished.
    pub(crate) pending_hold: BTreeSet<(NodeId, u64)>,
    /// Departed incarnations whose recovery was declared done.
    pub(crate) released: BTreeSet<(NodeId, u64)>,
    pub(crate) detector: crate::deadlock::Detector,
    /// How long an unused resource is kept before it is freed.
    pub(crate) toss_time: u64,
    pub(crate) toss: crate::toss::Toss,
}

/// FNV-1a: stable across processes and versions, unlike std's hasher.
pub fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Lockspace {
    /// A lockspace whose first membership every member already knows (no
    /// recovery needed): `members` must contain `id`; `generation` is
    /// carried on every message.
    pub fn new(
        id: NodeId,
        members: &[NodeId],
        generation: u32,
        lvb_len: usize,
    ) -> Result<Lockspace, LockError> {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        if !members.contains(&id) {
            return Err(LockError::Invalid(format!(
                "node {id} is not among the members {members:?}"
            )));
        }
        let mut ls = Lockspace::joining(id, lvb_len);
        ls.incarnations = members.iter().map(|&m| (m, (0, generation))).collect();
        ls.members = members;
        ls.generation = generation;
        ls.quorate = true;
        Ok(ls)
    }

    /// A lockspace that will learn its members from its first
    /// [`recover`](Lockspace::recover) call; until then operations wait.
    /// It is the default lockspace; see [`Lockspace::joining_in`].
    pub fn joining(id: NodeId, lvb_len: usize) -> Lockspace {
        Lockspace::joining_in(
            id,
            crate::node::lockspace_id(crate::node::DEFAULT_LOCKSPACE),
            lvb_len,
            1,
        )
    }

    /// A joining lockspace with id `ls_id` whose lock ids start at
    /// `first_lkid` (a node keeps its lock ids unique across lockspaces).
    pub fn joining_in(id: NodeId, ls_id: u32, lvb_len: usize, first_lkid: u64) -> Lockspace {
        Lockspace {
            id,
            ls_id,
            generation: 0,
            members: Vec::new(),
            incarnations: BTreeMap::new(),
            quorate: false,
            lvb_len,
            next_lkid: first_lkid,
            mastered: BTreeMap::new(),
            directory: BTreeMap::new(),
            masters: BTreeMap::new(),
            awaiting_lookup: BTreeMap::new(),
            locks: BTreeMap::new(),
            recovery: None,
            unrecovered: BTreeSet::new(),
            deferred: VecDeque::new(),
            held: VecDeque::new(),
            future: VecDeque::new(),
            out: Vec::new(),
            stats: Stats::default(),
            now: 0,
            hold_on_recovery: false,
            pending_hold: BTreeSet::new(),
            released: BTreeSet::new(),
            detector: Default::default(),
            toss_time: DEFAULT_TOSS_TIME,
            toss: Default::default(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This lockspace's id (see [`crate::node::lockspace_id`]).
    pub fn lockspace_id(&self) -> u32 {
        self.ls_id
    }

    /// The length of this lockspace's LVBs, in bytes.
    pub fn lvb_len(&self) -> usize {
        self.lvb_len
    }

    /// Why an LVB a peer sent is refused: not this lockspace's length.
    pub(crate) fn foreign_lvb(&self, from: NodeId, lvb: &Option<Vec<u8>>) -> Option<String> {
        match lvb {
            Some(v) if v.len() != self.lvb_len => Some(format!(
                "node {from} sent an LVB of {} bytes in lockspace {:#x} of {}-byte LVBs (node {})",
                v.len(),
                self.ls_id,
                self.lvb_len,
                self.id
            )),
            _ => None,
        }
    }

    /// The members of this lockspace in its current generation.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Takes what the last calls produced.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// The directory node for a resource name.
    pub fn dir_node(&self, name: &[u8]) -> NodeId {
        if self.members.is_empty() {
            return self.id;
        }
        self.members[(name_hash(name) % self.members.len() as u64) as usize]
    }

    /// The master of `name`, if this node knows it.
    pub fn master_of(&self, name: &[u8]) -> Option<NodeId> {
        self.masters.get(name).copied()
    }

    /// Whether `lkid` is one of this node's locks (granted or pending).
    pub fn has_lock(&self, lkid: u64) -> bool {
        self.locks.contains_key(&lkid)
    }

    /// Number of this node's locks (granted or pending).
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Resources mastered here that still have locks.
    pub fn mastered_in_use(&self) -> usize {
        self.mastered.values().filter(|r| !r.is_unused()).count()
    }

    /// Resources mastered here, for dumps: name, LVB state, grant sequence
    /// and queues.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.mastered.values()
    }

    /// Whether grants are stopped (recovery, no valid lease, or no view).
    pub(crate) fn blocked(&self) -> bool {
        self.recovery.is_some() || !self.quorate || self.generation == 0
    }

    pub fn is_quorate(&self) -> bool {
        self.quorate
    }

    /// The membership layer's verdict on this node's lease. Without it,
    /// nothing is granted to or by this node.
    pub fn set_quorate(&mut self, quorate: bool) {
        self.quorate = quorate;
        self.unblock();
    }

    fn check_name(&self, name: &[u8]) -> Result<(), LockError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(LockError::Invalid(format!(
                "resource names are 1..={MAX_NAME} bytes, got {}",
                name.len()
            )));
        }
        Ok(())
    }

    fn check_lvb(&self, lvb: &Option<Vec<u8>>) -> Result<(), LockError> {
        match lvb {
            Some(v) if v.len() != self.lvb_len => Err(LockError::Invalid(format!(
                "LVB of {} bytes in a lockspace of {}-byte LVBs",
                v.len(),
                self.lvb_len
            ))),
            _ => Ok(()),
        }
    }

    /// TIMEOUT goes with a timeout and is enforced here, by the owner: at
    /// the deadline the request is cancelled and, unless the grant won the
    /// race, fails with `TimedOut`. The master never sees the flag.
    fn deadline(&self, flags: Flags, timeout: Option<u64>) -> Result<Option<u64>, LockError> {
        match (flags.contains(Flags::TIMEOUT), timeout) {
            (true, Some(t)) => Ok(Some(self.now.saturating_add(t))),
            (false, None) => Ok(None),
            _ => Err(LockError::Invalid(
                "TIMEOUT and a timeout go together".into(),
            )),
        }
    }

    /// With `hold` on, a departed node stops every grant in the lockspace
    /// (except `NOEXP` requests, e.g. journal locks) until some member
    /// declares its recovery done with
    /// [`recovery_done`](Lockspace::recovery_done): a file system replays
    /// the dead node's journal before anyone may read what it wrote. This
    /// is lock_dlm's BLOCK_LOCKS, kept in the lock manager so that every
    /// master enforces it, including masters of rebuilt resources.
    /// Members learn of each other's pending and finished recoveries at
    /// the end of every recovery. If every node that knew of a departure
    /// goes down before it is declared done, the knowledge is lost: the
    /// first node to mount again must recover every dirty journal.
    pub fn set_recovery_hold(&mut self, hold: bool) {
        self.hold_on_recovery = hold;
    }

    /// Departed incarnations whose recovery has not been declared done.
    pub fn pending_recovery(&self) -> impl Iterator<Item = &(NodeId, u64)> {
        self.pending_hold.iter()
    }

    /// The user finished recovering this incarnation of `node`: every
    /// member releases what it held for it.
    pub fn recovery_done(&mut self, node: NodeId, incarnation: u64) {
        for to in self.members.clone() {
            if to != self.id {
                self.send(to, Body::ReleaseHold { node, incarnation });
            }
        }
        self.release_hold(node, incarnation);
    }

    pub(crate) fn release_hold(&mut self, node: NodeId, incarnation: u64) {
        self.released.insert((node, incarnation));
        if self.pending_hold.remove(&(node, incarnation)) {
            self.apply_holds();
        }
    }

    /// Puts the current holds on every resource mastered here.
    pub(crate) fn apply_holds(&mut self) {
        let ids: BTreeSet<NodeId> = self.pending_hold.iter().map(|h| h.0).collect();
        let names: Vec<Vec<u8>> = self.mastered.keys().cloned().collect();
        for name in names {
            let events = match self.mastered.get_mut(&name) {
                Some(r) => r.set_holds(&ids),
                None => continue,
            };
            for e in events {
                self.deliver_event(&name, e);
            }
        }
    }

    /// Only moves this lockspace's clock (a TIMEOUT deadline is counted
    /// from it); cheap, for every API call. [`tick`](Lockspace::tick) does
    /// the periodic work.
    pub fn set_clock(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// How long (in the driver's time units) a resource nobody here uses
    /// is kept before it is freed.
    pub fn set_toss_time(&mut self, t: u64) {
        self.toss_time = t;
    }

    /// Time passes: requests past their deadline are cancelled, unused
    /// resources past the toss time are freed.
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.deadlock_tick(now);
        self.toss_tick(now);
        let due: Vec<u64> = self
            .locks
            .iter()
            .filter(|(_, l)| {
                !l.timed_out
                    && l.deadline.is_some_and(|d| d <= now)
                    && matches!(l.op, Some(Op::Request { .. } | Op::Convert { .. }))
            })
            .map(|(k, _)| *k)
            .collect();
        for lkid in due {
            if let Some(l) = self.locks.get_mut(&lkid) {
                l.timed_out = true;
            }
            self.submit(lkid, Op::Cancel);
        }
    }

    /// A new lock on `name`; the result arrives as a callback.
    pub fn lock(&mut self, name: &[u8], mode: Mode, flags: Flags) -> Result<u64, LockError> {
        self.lock_for(name, mode, flags, None)
    }

    /// A new lock; with `Flags::TIMEOUT`, `timeout` (in the driver's time
    /// units) bounds the wait.
    pub fn lock_for(
        &mut self,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        timeout: Option<u64>,
    ) -> Result<u64, LockError> {
        self.lock_as(0, name, mode, flags, timeout)
    }

    /// A new lock on behalf of `owner`, a transaction of this node that may
    /// hold some locks while it waits for others: deadlock detection
    /// follows owners' waits across resources and nodes (0: the lock
    /// alone, never part of a cycle).
    pub fn lock_as(
        &mut self,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        timeout: Option<u64>,
    ) -> Result<u64, LockError> {
        self.check_name(name)?;
        let deadline = self.deadline(flags, timeout)?;
        let flags = Flags(flags.0 & !Flags::TIMEOUT.0);
        let lkid = self.next_lkid;
        self.next_lkid += 1;
        let op = Op::Request { mode, flags, owner };
        self.locks.insert(
            lkid,
            LocalLock {
                name: name.to_vec(),
                granted: None,
                op: Some(op.clone()),
                sent_to: None,
                cancel_to: None,
                releasing: false,
                lvb: None,
                lvb_valid: false,
                seq: 0,
                owner,
                master: None,
                deadline,
                timed_out: false,
            },
        );
        self.count_local(name, true);
        self.submit(lkid, op);
        Ok(lkid)
    }

    fn idle_lock(&mut self, lkid: u64, what: &'static str, op: &Op) -> Result<(), LockError> {
        let id = LockId {
            node: self.id,
            lkid,
        };
        let l = self
            .locks
            .get_mut(&lkid)
            .ok_or(LockError::UnknownLock(id))?;
        let Some(held) = l.granted else {
            return Err(LockError::Busy(id, what));
        };
        if l.op.is_some() {
            return Err(LockError::Busy(id, what));
        }
        if let Op::Convert { mode, .. } = op {
            if held.incomparable(*mode) {
                return Err(LockError::Invalid(format!(
                    "{held} -> {mode}: neither mode covers the other; convert through CR"
                )));
            }
        }
        l.op = Some(op.clone());
        Ok(())
    }

    pub fn convert(
        &mut self,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.convert_for(lkid, mode, flags, lvb, None)
    }

    /// A conversion; with `Flags::TIMEOUT`, `timeout` bounds the wait.
    pub fn convert_for(
        &mut self,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
        timeout: Option<u64>,
    ) -> Result<(), LockError> {
        self.check_lvb(&lvb)?;
        let deadline = self.deadline(flags, timeout)?;
        let op = Op::Convert {
            mode,
            flags: Flags((flags | Flags::CONVERT).0 & !Flags::TIMEOUT.0),
            lvb,
        };
        self.idle_lock(
            lkid,
            "wait for the pending operation before converting",
            &op,
        )?;
        if let Some(l) = self.locks.get_mut(&lkid) {
            l.deadline = deadline;
            l.timed_out = false;
        }
        self.submit(lkid, op);
        Ok(())
    }

    pub fn unlock(
        &mut self,
        lkid: u64,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.check_lvb(&lvb)?;
        let op = Op::Unlock { flags, lvb };
        self.idle_lock(lkid, "cancel the pending operation before unlocking", &op)?;
        if let Some(l) = self.locks.get_mut(&lkid) {
            l.releasing = true;
        }
        self.submit(lkid, op);
        Ok(())
    }

    /// Cancels the pending request or conversion of `lkid`. If the grant
    /// wins the race, the grant is delivered and the cancel has no effect.
    pub fn cancel(&mut self, lkid: u64) -> Result<(), LockError> {
        let id = LockId {
            node: self.id,
            lkid,
        };
        let l = self.locks.get(&lkid).ok_or(LockError::UnknownLock(id))?;
        match l.op {
            None => return Err(LockError::Busy(id, "nothing is pending to cancel")),
            Some(Op::Unlock { .. }) => {
                return Err(LockError::Busy(id, "an unlock cannot be cancelled"))
            }
            _ => {}
        }
        self.submit(lkid, Op::Cancel);
        Ok(())
    }

    /// Runs an operation now, or after recovery / once the lease is valid.
    pub(crate) fn submit(&mut self, lkid: u64, op: Op) {
        if self.blocked() {
            self.deferred.push_back((lkid, op));
            return;
        }
        let Some(name) = self.locks.get(&lkid).map(|l| l.name.clone()) else {
            return;
        };
        self.dispatch(name, lkid, op);
    }

    pub(crate) fn send(&mut self, to: NodeId, body: Body) {
        self.stats.messages_sent += 1;
        self.out.push(Output::Send {
            to,
            msg: Message {
                generation: self.generation,
                from: self.id,
                lockspace: self.ls_id,
                body,
            },
        });
    }

    pub(crate) fn dispatch(&mut self, name: Vec<u8>, lkid: u64, op: Op) {
        if let Some(&m) = self.masters.get(&name) {
            return self.route(m, name, lkid, op);
        }
        if let Some(q) = self.awaiting_lookup.get_mut(&name) {
            q.push((lkid, op));
            return;
        }
        let dir = self.dir_node(&name);
        if dir == self.id {
            // We are the directory: the first asker (us) becomes master.
            let master = match self.directory.get(&name) {
                Some(&m) => m,
                None => {
                    self.directory.insert(name.clone(), self.id);
                    let floor = self.toss.unbury(&name);
                    if floor > 0 {
                        self.toss.floors.insert(name.clone(), floor);
                    }
                    self.id
                }
            };
            self.masters.insert(name.clone(), master);
            return self.route(master, name, lkid, op);
        }
        self.awaiting_lookup.insert(name.clone(), vec![(lkid, op)]);
        self.stats.lookups_sent += 1;
        self.send(dir, Body::Lookup { name });
    }

    fn route(&mut self, master: NodeId, name: Vec<u8>, lkid: u64, op: Op) {
        if master == self.id {
            let owner = self.id;
            return self.master_apply(owner, name, lkid, op);
        }
        if let Some(l) = self.locks.get_mut(&lkid) {
            match op {
                Op::Cancel => l.cancel_to = Some(master),
                _ => l.sent_to = Some(master),
            }
        }
        let body = match op {
            Op::Request { mode, flags, owner } => Body::Request {
                lkid,
                name,
                mode,
                flags: flags.0,
                owner,
            },
            Op::Convert { mode, flags, lvb } => Body::Convert {
                lkid,
                name,
                mode,
                flags: flags.0,
                lvb,
            },
            Op::Unlock { flags, lvb } => Body::Unlock {
                lkid,
                name,
                flags: flags.0,
                lvb,
            },
            Op::Cancel => Body::Cancel { lkid, name },
        };
        self.send(master, body);
    }

    /// Runs an operation on a resource this node masters.
    fn master_apply(&mut self, owner: NodeId, name: Vec<u8>, lkid: u64, op: Op) {
        let id = LockId { node: owner, lkid };
        let lvb_len = self.lvb_len;
        let floor = u64::from(self.generation) << 32;
        let floor = match self.mastered.contains_key(&name) {
            true => floor,
            false => floor.max(self.toss.floors.remove(&name).unwrap_or(0)),
        };
        let res = match self.mastered.get_mut(&name) {
            Some(r) => Ok(r),
            None if matches!(op, Op::Request { .. }) => match Resource::new(&name, lvb_len) {
                Ok(mut r) => {
                    r.raise_seq_floor(floor);
                    let held: BTreeSet<NodeId> = self.pending_hold.iter().map(|h| h.0).collect();
                    r.set_holds(&held);
                    Ok(self.mastered.entry(name.clone()).or_insert(r))
                }
                Err(e) => Err(e),
            },
            None => Err(LockError::UnknownLock(id)),
        };
        let is_cancel = matches!(op, Op::Cancel);
        let result = res.and_then(|r| match op {
            Op::Request { mode, flags, owner } => r.request_as(id, owner, mode, flags, None),
            Op::Convert { mode, flags, lvb } => r.convert(id, mode, flags, lvb.as_deref(), None),
            Op::Unlock { flags, lvb } => r.unlock(id, flags, lvb.as_deref()),
            Op::Cancel => r.cancel(id),
        });
        match result {
            Ok(events) => {
                for e in events {
                    self.deliver_event(&name, e);
                }
            }
            // A cancel that finds nothing to cancel lost a race with the
            // grant: it has no effect and owes no answer (an answer could
            // be mistaken for the result of the owner's next operation).
            Err(_) if is_cancel => {}
            Err(error) => self.deliver_event(&name, Event::Failed { lock: id, error }),
        }
        self.touch(&name);
    }

    /// A remote request, once this node knows it masters `name`.
    pub(crate) fn master_request(&mut self, from: NodeId, name: Vec<u8>, lkid: u64, op: Op) {
        self.master_apply(from, name, lkid, op);
    }

    /// Sends a master-side event to the lock's owner (or handles it here).
    pub(crate) fn deliver_event(&mut self, name: &[u8], e: Event) {
        let (owner, body) = match e {
            Event::Granted {
                lock,
                mode,
                lvb,
                lvb_valid,
                seq,
                demoted,
            } => (
                lock.node,
                Body::Granted {
                    lkid: lock.lkid,
                    name: name.to_vec(),
                    mode,
                    seq,
                    demoted,
                    lvb_valid,
                    lvb,
                },
            ),
            Event::Failed { lock, error } => (
                lock.node,
                Body::Failed {
                    lkid: lock.lkid,
                    name: name.to_vec(),
                    error,
                },
            ),
            Event::Unlocked { lock } => (
                lock.node,
                Body::Unlocked {
                    lkid: lock.lkid,
                    name: name.to_vec(),
                },
            ),
            Event::Blocking { lock, mode } => (
                lock.node,
                Body::Blocking {
                    lkid: lock.lkid,
                    name: name.to_vec(),
                    mode,
                },
            ),
        };
        if owner != self.id {
            self.send(owner, body);
        } else if self.blocked() {
            // A grant to ourselves while grants are stopped (recovery's
            // purge): deliver it when they resume, like a peer's.
            self.held.push_back(Message {
                generation: self.generation,
                from: self.id,
                lockspace: self.ls_id,
                body,
            });
        } else {
            let me = self.id;
            self.completion(me, body);
        }
    }

    /// A completion or blocking callback for one of our locks.
    fn completion(&mut self, from: NodeId, body: Body) {
        let cb = match body {
            Body::Granted {
                lkid,
                mode,
                seq,
                demoted,
                lvb_valid,
                lvb,
                ..
            } => {
                let Some(l) = self.locks.get_mut(&lkid) else {
                    return;
                };
                l.granted = Some(mode);
                l.master = Some(from);
                l.op = None;
                l.sent_to = None;
                l.cancel_to = None;
                l.deadline = None;
                l.timed_out = false;
                l.seq = seq;
                l.lvb_valid = lvb_valid;
                l.lvb.clone_from(&lvb);
                Callback::Granted {
                    lkid,
                    mode,
                    lvb,
                    lvb_valid,
                    seq,
                    demoted,
                }
            }
            Body::Failed {
                lkid,
                error: LockError::NotMaster,
                name,
            } => {
                let op = self.locks.get_mut(&lkid).and_then(|l| {
                    l.sent_to = None;
                    l.op.clone()
                });
                if let Some(op @ Op::Request { .. }) = op {
                    if self.masters.get(&name) != Some(&self.id) {
                        self.masters.remove(&name);
                    }
                    self.stats.ops_resent += 1;
                    self.submit(lkid, op);
                }
                return;
            }
            Body::Failed {
                lkid, error, name, ..
            } => {
                let Some(l) = self.locks.get_mut(&lkid) else {
                    return;
                };
                if l.op.is_none() {
                    // The answer to a cancel that lost the race with a grant.
                    return;
                }
                l.op = None;
                l.sent_to = None;
                l.cancel_to = None;
                l.releasing = false;
                l.deadline = None;
                let error = match error {
                    LockError::Cancelled if std::mem::take(&mut l.timed_out) => LockError::TimedOut,
                    e => e,
                };
                if l.granted.is_none() {
                    self.locks.remove(&lkid);
                    self.count_local(&name, false);
                    self.touch(&name);
                }
                Callback::Failed { lkid, error }
            }
            Body::Unlocked { lkid, name } => {
                if self.locks.remove(&lkid).is_none() {
                    return;
                }
                self.count_local(&name, false);
                self.touch(&name);
                Callback::Unlocked { lkid }
            }
            Body::Blocking { lkid, mode, .. } => {
                match self.locks.get(&lkid) {
                    Some(l) if l.granted.is_some() && !l.releasing => {}
                    _ => return, // being or already released
                }
                Callback::Blocking { lkid, mode }
            }
            _ => return,
        };
        self.out.push(Output::Callback(cb));
    }

    /// Runs what was held back, once nothing stops grants any more.
    pub(crate) fn unblock(&mut self) {
        if self.blocked() {
            return;
        }
        while let Some(msg) = self.held.pop_front() {
            self.process(msg);
            if self.blocked() {
                return;
            }
        }
        while let Some((lkid, op)) = self.deferred.pop_front() {
            let Some(name) = self.locks.get(&lkid).map(|l| l.name.clone()) else {
                continue;
            };
            self.dispatch(name, lkid, op);
        }
    }

    /// Starts a new view; see `recover.rs`.
    /// `left`: those of `departed` that left cleanly (no recovery hold for
    /// them: they held nothing).
    pub fn recover(&mut self, view: &View, departed: &[NodeId], left: &[NodeId]) {
        self.begin_recovery(view, departed, left);
    }

    /// A message from a peer.
    pub fn receive(&mut self, msg: Message) {
        if msg.generation > self.generation {
            // Sent in a view this node has not reached yet.
            if self.future.len() >= MAX_FUTURE {
                self.stats.protocol_errors += 1;
                return;
            }
            self.future.push_back(msg);
            return;
        }
        let Some(&(_, sender_joined)) = self.incarnations.get(&msg.from) else {
            self.stats.stale_dropped += 1;
            return;
        };
        let my_joined = self.incarnations.get(&self.id).map_or(0, |j| j.1);
        if !self.members.contains(&msg.from) || msg.generation < sender_joined.max(my_joined) {
            self.stats.stale_dropped += 1;
            return;
        }
        self.process(msg);
    }

    /// A message of an acceptable generation.
    pub(crate) fn process(&mut self, msg: Message) {
        let from = msg.from;
        let current = msg.generation == self.generation;
        match msg.body {
            Body::Lookup { name } => {
                if !current {
                    self.stats.stale_dropped += 1;
                } else if self.recovery.as_ref().is_some_and(|r| !r.dir_complete) {
                    if let Some(r) = self.recovery.as_mut() {
                        r.held_lookups.push((from, name));
                    }
                } else {
                    self.answer_lookup(from, name);
                }
            }
            Body::LookupReply {
                name,
                master,
                floor,
            } => {
                if !current || !self.members.contains(&master) {
                    self.stats.stale_dropped += 1;
                } else if self.recovery.is_some() {
                    self.recovery_lookup_reply(name, master);
                } else {
                    if master == self.id && floor > 0 {
                        self.toss.floors.insert(name.clone(), floor);
                    }
                    self.masters.insert(name.clone(), master);
                    for (lkid, op) in self.awaiting_lookup.remove(&name).unwrap_or_default() {
                        self.route(master, name.clone(), lkid, op);
                    }
                    self.early_requests(&name, master);
                    self.touch(&name);
                }
            }
            Body::Remove { name, seq } => {
                if current {
                    self.receive_remove(from, name, seq);
                } else {
                    self.stats.stale_dropped += 1;
                }
            }
            body @ (Body::DirEntry { .. }
            | Body::DirDone
            | Body::RecoverLock { .. }
            | Body::LocksDone
            | Body::RecoveryDone { .. }) => {
                if !current {
                    self.stats.stale_dropped += 1;
                } else {
                    self.recovery_message(from, body);
                }
            }
            body @ (Body::Request { .. }
            | Body::Convert { .. }
            | Body::Unlock { .. }
            | Body::Cancel { .. }
            | Body::Granted { .. }
            | Body::Failed { .. }
            | Body::Unlocked { .. }
            | Body::Blocking { .. }
            | Body::ReleaseHold { .. }) => {
                if self.blocked() {
                    self.held.push_back(Message {
                        generation: msg.generation,
                        from,
                        lockspace: self.ls_id,
                        body,
                    });
                } else {
                    self.lock_traffic(from, body);
                }
            }
            body @ (Body::EdgesRequest { .. } | Body::Edges { .. } | Body::Victim { .. }) => {
                if current && !(matches!(body, Body::Victim { .. }) && self.blocked()) {
                    self.deadlock_message(from, body);
                } else {
                    self.stats.stale_dropped += 1;
                }
            }
            // Membership messages belong to the membership layer.
            _ => self.stats.protocol_errors += 1,
        }
    }

    pub(crate) fn answer_lookup(&mut self, from: NodeId, name: Vec<u8>) {
        // The first node to ask becomes the master.
        let (master, floor) = match self.directory.get(&name) {
            Some(&m) => (m, 0),
            None => {
                self.directory.insert(name.clone(), from);
                (from, self.toss.unbury(&name))
            }
        };
        if from == self.id {
            self.recovery_lookup_reply(name, master);
        } else {
            self.send(
                from,
                Body::LookupReply {
                    name,
                    master,
                    floor,
                },
            );
        }
    }

    fn lock_traffic(&mut self, from: NodeId, body: Body) {
        // An LVB of another length than the lockspace's breaks the
        // protocol (members agree on the length when they join): it is
        // never stored. A conversion or unlock carrying one fails (its
        // owner is told why); a grant carrying one is kept, without it.
        let foreign = match &body {
            Body::Convert { lvb, .. } | Body::Unlock { lvb, .. } | Body::Granted { lvb, .. } => {
                self.foreign_lvb(from, lvb)
            }
            _ => None,
        };
        let body = match (body, foreign) {
            (body, None) => body,
            (Body::Convert { lkid, name, .. } | Body::Unlock { lkid, name, .. }, Some(why)) => {
                self.stats.protocol_errors += 1;
                self.send(
                    from,
                    Body::Failed {
                        lkid,
                        name,
                        error: LockError::Invalid(why),
                    },
                );
                return;
            }
            (
                Body::Granted {
                    lkid,
                    name,
                    mode,
                    seq,
                    demoted,
                    ..
                },
                Some(_),
            ) => {
                self.stats.protocol_errors += 1;
                Body::Granted {
                    lkid,
                    name,
                    mode,
                    seq,
                    demoted,
                    lvb_valid: false,
                    lvb: None,
                }
            }
            (body, Some(_)) => body,
        };
        match body {
            Body::Request {
                lkid,
                name,
                mode,
                flags,
                owner,
            } => {
                let op = Op::Request {
                    mode,
                    flags: Flags(flags),
                    owner,
                };
                if self.mastered.contains_key(&name) {
                    self.master_apply(from, name, lkid, op);
                } else {
                    // Named master by a directory entry we never took up
                    // (its answer was lost to a view change) or one for a
                    // resource we freed since: creating it now could make a
                    // second master. See `toss.rs`.
                    self.request_unmastered(from, name, lkid, op);
                }
            }
            Body::Convert {
                lkid,
                name,
                mode,
                flags,
                lvb,
            } => self.master_apply(
                from,
                name,
                lkid,
                Op::Convert {
                    mode,
                    flags: Flags(flags),
                    lvb,
                },
            ),
            Body::Unlock {
                lkid,
                name,
                flags,
                lvb,
            } => self.master_apply(
                from,
                name,
                lkid,
                Op::Unlock {
                    flags: Flags(flags),
                    lvb,
                },
            ),
            Body::Cancel { lkid, name } => self.master_apply(from, name, lkid, Op::Cancel),
            Body::ReleaseHold { node, incarnation } => self.release_hold(node, incarnation),
            body => self.completion(from, body),
        }
    }
}
