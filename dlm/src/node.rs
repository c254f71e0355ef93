//! One node of the lock manager: cluster membership and the lockspaces
//! this node is in, still without I/O. This is what the driver (and the
//! simulation) runs: every input carries the time, every output is a
//! message to send, a lock callback, a membership event or a lockspace
//! event.
//!
//! It owns the rules that tie the layers: which lockspaces this node is
//! in (joins and leaves go into the views: a view records, for each member,
//! the lockspaces it is in, each under a join id); a committed view starts
//! every lockspace's recovery with that lockspace's members (the cluster
//! members that joined it), so its directory hashes over them only; the
//! lease decides whether the lockspaces may grant or act on grants; a lost
//! lease (or an excluded incarnation) throws every lockspace away — every
//! lock this node believed it held is gone — and the node rejoins them as
//! a new incarnation.
//!
//! Every lockspace of a member runs the recovery barriers on every view
//! (one generation for the whole cluster, so a member never has to guess
//! which views another one skipped); only a lockspace whose members
//! changed reports it ([`LsEvent::RecoverPrep`] / `RecoverDone`).
//!
//! Lockspace join: the node advertises the lockspace (heartbeats, accepts)
//! and the coordinator proposes a view with it; operations wait until
//! then. Lockspace leave (no locks in it): the node stops advertising it
//! and takes no new locks there, but goes on serving it — as master,
//! directory node and in recovery — until a view without it commits; the
//! other members then treat it as having left cleanly (nothing of theirs is
//! released, no recovery hold), as for a node's clean leave.
//!
//! Lock ids are unique across the node's lockspaces: each lockspace
//! instance (each join, and each rejoin after a lost lease) numbers its
//! locks from `instance << 40`.
//!
//! LVB lengths are per lockspace ([`Node::join_lockspace_with`]; the
//! node's default, the cluster file's, otherwise) and advertised with each
//! join. The members of a lockspace agree on its length, as the Linux DLM
//! checks `lvblen` on join: views never put a join with another length in
//! (see [`crate::member::agree_lvb_lens`]); the joiner refuses at once
//! when its view already shows the conflict, or gives the join up when a
//! view shows it ([`LsEvent::Refused`]).

use crate::lockspace::{Callback, Lockspace, LsEvent, Output};
use crate::member::{LsJoin, Member, MemberConfig, MemberEvent, MemberOutput, Membership, View};
use crate::mode::Mode;
use crate::resource::{Flags, LockError, NodeId, MAX_NAME};
use crate::wire::{check_lvb_len, Body, Message, MAX_LOCKSPACES};
use std::collections::BTreeMap;

/// How a lockspace is joined ([`Node::join_lockspace_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsOptions {
    /// The lockspace's LVB length in bytes: a multiple of 8 in
    /// [`crate::wire::MIN_LVB`]`..=`[`crate::wire::MAX_LVB`], the same on
    /// every member (a join with another length is refused).
    pub lvb_len: usize,
}

/// The lockspace of callers that name none.
pub const DEFAULT_LOCKSPACE: &str = "default";

/// Lock ids of one lockspace instance: `instance << LKID_BITS` and up.
const LKID_BITS: u32 = 40;

/// The id of lockspace `name` on the wire: FNV-1a (32 bits) of the name,
/// never 0 (0 marks membership messages). Views and messages carry only
/// ids, so two names with one id would be one lockspace: a node refuses to
/// join a name whose id one of its own lockspaces has, but cannot see a
/// collision with a name only other nodes use — choose names that do not
/// collide (as the kernel's global lockspace ids must not).
pub fn lockspace_id(name: &str) -> u32 {
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h.max(1)
}

/// Why node `me` may not join lockspace `name` with `lvb_len`-byte LVBs
/// given `view`: other members are in it with another length.
fn lvb_conflict(view: &View, me: NodeId, name: &str, lvb_len: usize) -> Option<String> {
    let id = lockspace_id(name);
    let others: Vec<(NodeId, usize)> = view
        .members
        .iter()
        .filter(|m| m.id != me)
        .filter_map(|m| m.lvb_len_of(id).map(|l| (m.id, l)))
        .filter(|(_, l)| *l != lvb_len)
        .collect();
    let theirs = others.first()?.1;
    let nodes: Vec<NodeId> = others.iter().map(|o| o.0).collect();
    Some(format!(
        "node {me} cannot join lockspace {name:?} with {lvb_len}-byte LVBs: \
         its members (nodes {nodes:?}) use {theirs}-byte LVBs"
    ))
}

/// One lockspace this node is in, joining or leaving.
struct Space {
    name: String,
    /// The id of this join (a rejoin gets a new one).
    join: u64,
    /// Lock ids start at `instance << LKID_BITS`.
    instance: u64,
    /// Left by the user: no new locks; dropped when a view without it
    /// commits.
    leaving: bool,
    /// The lockspace's LVB length (agreed by its members).
    lvb_len: usize,
    ls: Lockspace,
    /// The lockspace's members as of the last view applied.
    known: BTreeMap<NodeId, Member>,
    /// A `RecoverPrep` was reported; its `RecoverDone` is owed.
    announced: bool,
}

pub struct Node {
    member: Membership,
    spaces: BTreeMap<u32, Space>,
    /// Lockspace instance -> lockspace id.
    by_instance: BTreeMap<u64, u32>,
    next_instance: u64,
    next_join: u64,
    /// The LVB length of lockspaces joined without one (the cluster
    /// file's).
    lvb_len: usize,
    /// Why the last joins of these lockspaces were refused (told again
    /// when a lock is asked for there; at most MAX_LOCKSPACES kept).
    refused: BTreeMap<String, String>,
    hold: bool,
    deadlock_interval: u64,
    toss_time: Option<u64>,
    /// Messages for lockspaces this node is not in (dropped).
    stray: u64,
    /// Returned by [`Node::lockspace`] when the default lockspace is not
    /// joined.
    empty: Lockspace,
    out: Vec<Output>,
}

impl Node {
    /// A node in the default lockspace (see [`Node::with_lockspaces`]).
    pub fn new(
        id: NodeId,
        incarnation: u64,
        generation_floor: u32,
        cfg: MemberConfig,
        lvb_len: usize,
    ) -> Result<Node, String> {
        Node::with_lockspaces(
            id,
            incarnation,
            generation_floor,
            cfg,
            lvb_len,
            &[DEFAULT_LOCKSPACE],
        )
    }

    /// A node that joins `lockspaces` from the start (possibly none), each
    /// with `lvb_len`-byte LVBs, the length of lockspaces joined without
    /// one (see [`Node::join_lockspace_with`]).
    pub fn with_lockspaces(
        id: NodeId,
        incarnation: u64,
        generation_floor: u32,
        cfg: MemberConfig,
        lvb_len: usize,
        lockspaces: &[&str],
    ) -> Result<Node, String> {
        check_lvb_len(lvb_len).map_err(|e| format!("node {id}: {e}"))?;
        let mut n = Node {
            member: Membership::new(id, incarnation, generation_floor, cfg)?,
            spaces: BTreeMap::new(),
            by_instance: BTreeMap::new(),
            next_instance: 1,
            next_join: 1,
            lvb_len,
            refused: BTreeMap::new(),
            hold: false,
            deadlock_interval: 0,
            toss_time: None,
            stray: 0,
            empty: Lockspace::joining_in(id, lockspace_id(DEFAULT_LOCKSPACE), lvb_len, 1),
            out: Vec::new(),
        };
        for name in lockspaces {
            n.join_lockspace(name).map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    pub fn id(&self) -> NodeId {
        self.member.id()
    }

    pub fn incarnation(&self) -> u64 {
        self.member.incarnation()
    }

    pub fn view(&self) -> Option<&View> {
        self.member.view()
    }

    pub fn membership(&self) -> &Membership {
        &self.member
    }

    /// The default lockspace (an empty one if this node is not in it).
    pub fn lockspace(&self) -> &Lockspace {
        self.lockspace_named(DEFAULT_LOCKSPACE)
            .unwrap_or(&self.empty)
    }

    /// The LVB length of lockspaces joined without one.
    pub fn default_lvb_len(&self) -> usize {
        self.lvb_len
    }

    /// Whether this node is in lockspace `name` in the committed view (not
    /// only joining, and not leaving it).
    pub fn is_in_lockspace(&self, name: &str) -> bool {
        self.spaces
            .get(&lockspace_id(name))
            .is_some_and(|s| s.name == name && !s.leaving && !s.known.is_empty())
    }

    /// Lockspace `name`, if this node is in it (or joining or leaving it).
    pub fn lockspace_named(&self, name: &str) -> Option<&Lockspace> {
        self.spaces
            .get(&lockspace_id(name))
            .filter(|s| s.name == name)
            .map(|s| &s.ls)
    }

    /// Every lockspace of this node: name, state, and whether it is being
    /// left.
    pub fn lockspaces(&self) -> impl Iterator<Item = (&str, &Lockspace, bool)> {
        self.spaces
            .values()
            .map(|s| (s.name.as_str(), &s.ls, s.leaving))
    }

    /// Messages dropped because they named a lockspace this node is not in.
    pub fn stray_messages(&self) -> u64 {
        self.stray
    }

    /// Locks of this node in every lockspace.
    pub fn lock_count(&self) -> usize {
        self.spaces.values().map(|s| s.ls.lock_count()).sum()
    }

    /// Whether `lkid` is one of this node's locks, in any lockspace.
    pub fn has_lock(&self, lkid: u64) -> bool {
        self.space_of(lkid).is_some_and(|s| s.ls.has_lock(lkid))
    }

    pub fn quorate(&self, now: u64) -> bool {
        self.member.quorate(now)
    }

    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn advertise(&mut self) {
        let v: Vec<LsJoin> = self
            .spaces
            .iter()
            .filter(|(_, s)| !s.leaving)
            .map(|(id, s)| LsJoin::new(*id, s.join, s.lvb_len as u16))
            .collect();
        self.member.set_lockspaces(v);
    }

    fn new_space(&mut self, name: String, join: u64, lvb_len: usize) -> Space {
        let instance = self.next_instance;
        self.next_instance += 1;
        let id = lockspace_id(&name);
        self.by_instance.insert(instance, id);
        let mut ls = Lockspace::joining_in(self.id(), id, lvb_len, instance << LKID_BITS);
        ls.set_recovery_hold(self.hold);
        ls.set_deadlock_detection(self.deadlock_interval);
        if let Some(t) = self.toss_time {
            ls.set_toss_time(t);
        }
        Space {
            name,
            join,
            instance,
            leaving: false,
            lvb_len,
            ls,
            known: BTreeMap::new(),
            announced: false,
        }
    }

    /// Joins lockspace `name` with the node's default LVB length (the
    /// cluster file's `lvb_len`); see [`Node::join_lockspace_with`].
    pub fn join_lockspace(&mut self, name: &str) -> Result<(), LockError> {
        let lvb_len = self.lvb_len;
        self.join_lockspace_with(name, LsOptions { lvb_len })
    }

    /// Joins lockspace `name` (1..=64 bytes) with `opts.lvb_len`-byte LVBs:
    /// locks may be asked for at once and are granted once a view with
    /// this node in the lockspace committed and its recovery ran. Joining
    /// one already joined (with the same length) does nothing; one still
    /// being left is refused (try again once it is left:
    /// [`LsEvent::Left`]).
    ///
    /// The members of a lockspace agree on its LVB length, as the Linux
    /// DLM checks `lvblen` when a node joins: refused at once if the
    /// committed view has members in the lockspace with another length;
    /// if a later view shows that (they joined first, or at the same time
    /// with a lower node id), the join is given up then
    /// ([`LsEvent::Refused`], and the locks asked for there fail). The
    /// members are not disturbed.
    pub fn join_lockspace_with(&mut self, name: &str, opts: LsOptions) -> Result<(), LockError> {
        let me = self.id();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(LockError::Invalid(format!(
                "lockspace names are 1..={MAX_NAME} bytes, got {}",
                name.len()
            )));
        }
        check_lvb_len(opts.lvb_len)
            .map_err(|e| LockError::Invalid(format!("node {me}, lockspace {name:?}: {e}")))?;
        let id = lockspace_id(name);
        if let Some(s) = self.spaces.get(&id) {
            return if s.name != name {
                Err(LockError::Invalid(format!(
                    "lockspace {name:?} has the id {id:#x} of lockspace {:?}; choose another name",
                    s.name
                )))
            } else if s.leaving {
                Err(LockError::Invalid(format!(
                    "lockspace {name:?} is still being left; join it again once it is left"
                )))
            } else if s.lvb_len != opts.lvb_len {
                Err(LockError::Invalid(format!(
                    "node {me} is already in lockspace {name:?} with {}-byte LVBs, not {}",
                    s.lvb_len, opts.lvb_len
                )))
            } else {
                Ok(())
            };
        }
        if self.spaces.len() >= MAX_LOCKSPACES {
            return Err(LockError::Invalid(format!(
                "a node is in at most {MAX_LOCKSPACES} lockspaces"
            )));
        }
        if let Some(v) = self.member.view() {
            if let Some(why) = lvb_conflict(v, me, name, opts.lvb_len) {
                return Err(LockError::Invalid(why));
            }
        }
        self.refused.remove(name);
        let join = self.next_join;
        self.next_join += 1;
        let space = self.new_space(name.to_string(), join, opts.lvb_len);
        self.spaces.insert(id, space);
        self.advertise();
        Ok(())
    }

    /// Leaves lockspace `name`: refused while this node has locks there
    /// (release them first). The node stops taking locks there at once and
    /// goes on serving the others until a view without it commits
    /// ([`LsEvent::Left`]); they release nothing of theirs and put no
    /// recovery hold for it.
    pub fn leave_lockspace(&mut self, now: u64, name: &str) -> Result<(), LockError> {
        let id = lockspace_id(name);
        let s = match self.spaces.get_mut(&id) {
            Some(s) if s.name == name && !s.leaving => s,
            _ => {
                return Err(LockError::Invalid(format!(
                    "node {} is not in lockspace {name:?}",
                    self.member.id()
                )))
            }
        };
        if s.ls.lock_count() > 0 {
            return Err(LockError::Invalid(format!(
                "node {} still has {} locks in lockspace {name:?}; release them before leaving it",
                self.member.id(),
                s.ls.lock_count()
            )));
        }
        if s.known.is_empty() {
            // Never in a view: nobody else knows of it.
            let instance = s.instance;
            self.spaces.remove(&id);
            self.by_instance.remove(&instance);
            self.out.push(Output::Lockspace {
                name: name.to_string(),
                event: LsEvent::Left,
            });
        } else {
            s.leaving = true;
        }
        self.advertise();
        self.pump(now);
        Ok(())
    }

    pub fn tick(&mut self, now: u64) {
        self.member.tick(now);
        self.pump(now);
        for s in self.spaces.values_mut() {
            s.ls.tick(now);
        }
        self.pump(now);
    }

    pub fn receive(&mut self, now: u64, msg: Message) {
        match msg.body {
            Body::Heartbeat { .. }
            | Body::HeartbeatAck { .. }
            | Body::Excluded { .. }
            | Body::Leave { .. }
            | Body::Propose { .. }
            | Body::Accept { .. }
            | Body::Commit { .. } => self.member.receive(now, msg),
            _ if self.member.is_leaving() => {}
            _ => {
                // The lease first: a grant arriving after it ran out must
                // not be believed.
                self.member.tick_lease(now);
                self.pump(now);
                match self.spaces.get_mut(&msg.lockspace) {
                    Some(s) => s.ls.receive(msg),
                    None => self.stray += 1,
                }
            }
        }
        self.pump(now);
    }

    pub fn lock(
        &mut self,
        now: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
    ) -> Result<u64, LockError> {
        self.lock_for(now, name, mode, flags, None)
    }

    /// `lock` with a timeout (with `Flags::TIMEOUT`).
    pub fn lock_for(
        &mut self,
        now: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        timeout: Option<u64>,
    ) -> Result<u64, LockError> {
        self.lock_as(now, 0, name, mode, flags, timeout)
    }

    /// `lock` on behalf of an owner (see [`Lockspace::lock_as`]), in the
    /// default lockspace.
    pub fn lock_as(
        &mut self,
        now: u64,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        timeout: Option<u64>,
    ) -> Result<u64, LockError> {
        self.lock_in(now, DEFAULT_LOCKSPACE, owner, name, mode, flags, timeout)
    }

    /// A new lock in lockspace `ls` (which this node must have joined).
    /// The id it returns is unique across this node's lockspaces.
    #[allow(clippy::too_many_arguments)]
    pub fn lock_in(
        &mut self,
        now: u64,
        ls: &str,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        timeout: Option<u64>,
    ) -> Result<u64, LockError> {
        if self.member.is_leaving() {
            return Err(LockError::Invalid(format!("node {} has left", self.id())));
        }
        let id = lockspace_id(ls);
        match self.spaces.get(&id) {
            Some(s) if s.name == ls && !s.leaving => {}
            Some(s) if s.name == ls => {
                return Err(LockError::Invalid(format!(
                    "node {} is leaving lockspace {ls:?}",
                    self.id()
                )))
            }
            _ => {
                let why = match self.refused.get(ls) {
                    Some(r) => format!(" (the join was refused: {r})"),
                    None => String::new(),
                };
                return Err(LockError::Invalid(format!(
                    "node {} has not joined lockspace {ls:?}{why}",
                    self.id()
                )));
            }
        }
        self.member.tick_lease(now);
        self.pump(now);
        let r = match self.spaces.get_mut(&id) {
            Some(s) => {
                s.ls.set_clock(now);
                s.ls.lock_as(owner, name, mode, flags, timeout)
            }
            // The lease ran out meanwhile and the lockspace was reset: it
            // is still there (only leaving ones are dropped).
            None => Err(LockError::Invalid(format!(
                "lockspace {ls:?} is gone on node {}",
                self.id()
            ))),
        };
        self.pump(now);
        r
    }

    fn space_of(&self, lkid: u64) -> Option<&Space> {
        let id = self.by_instance.get(&(lkid >> LKID_BITS))?;
        self.spaces.get(id)
    }

    /// Runs `f` on the lockspace that issued `lkid`.
    fn with_lock<T>(
        &mut self,
        now: u64,
        lkid: u64,
        f: impl FnOnce(&mut Lockspace) -> Result<T, LockError>,
    ) -> Result<T, LockError> {
        self.member.tick_lease(now);
        self.pump(now);
        let unknown = LockError::UnknownLock(crate::resource::LockId {
            node: self.id(),
            lkid,
        });
        let id = self.by_instance.get(&(lkid >> LKID_BITS)).copied();
        let r = match id.and_then(|id| self.spaces.get_mut(&id)) {
            Some(s) => {
                s.ls.set_clock(now);
                f(&mut s.ls)
            }
            None => Err(unknown),
        };
        self.pump(now);
        r
    }

    pub fn convert(
        &mut self,
        now: u64,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.convert_for(now, lkid, mode, flags, lvb, None)
    }

    /// `convert` with a timeout (with `Flags::TIMEOUT`).
    pub fn convert_for(
        &mut self,
        now: u64,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
        timeout: Option<u64>,
    ) -> Result<(), LockError> {
        self.with_lock(now, lkid, |ls| {
            ls.convert_for(lkid, mode, flags, lvb, timeout)
        })
    }

    pub fn unlock(
        &mut self,
        now: u64,
        lkid: u64,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.with_lock(now, lkid, |ls| ls.unlock(lkid, flags, lvb))
    }

    pub fn cancel(&mut self, now: u64, lkid: u64) -> Result<(), LockError> {
        self.with_lock(now, lkid, |ls| ls.cancel(lkid))
    }

    /// Leaves the cluster cleanly: refused while this node has locks in
    /// any lockspace (release them first); afterwards the node takes no
    /// lock traffic and the others drop it without waiting out its lease.
    pub fn leave(&mut self, now: u64) -> Result<(), LockError> {
        let n = self.lock_count();
        if n > 0 {
            return Err(LockError::Invalid(format!(
                "node {} still has {n} locks; release them before leaving",
                self.id(),
            )));
        }
        self.member.leave();
        self.pump(now);
        Ok(())
    }

    /// See [`Lockspace::set_recovery_hold`]; for every lockspace, kept
    /// across lost leases.
    pub fn set_recovery_hold(&mut self, hold: bool) {
        self.hold = hold;
        for s in self.spaces.values_mut() {
            s.ls.set_recovery_hold(hold);
        }
    }

    /// See [`Lockspace::set_deadlock_detection`]; for every lockspace, kept
    /// across lost leases.
    pub fn set_deadlock_detection(&mut self, interval: u64) {
        self.deadlock_interval = interval;
        for s in self.spaces.values_mut() {
            s.ls.set_deadlock_detection(interval);
        }
    }

    /// See [`Lockspace::set_toss_time`]; for every lockspace.
    pub fn set_toss_time(&mut self, t: u64) {
        self.toss_time = Some(t);
        for s in self.spaces.values_mut() {
            s.ls.set_toss_time(t);
        }
    }

    /// See [`Lockspace::recovery_done`], in the default lockspace.
    pub fn recovery_done(&mut self, now: u64, node: NodeId, incarnation: u64) {
        let _ = self.recovery_done_in(now, DEFAULT_LOCKSPACE, node, incarnation);
    }

    /// See [`Lockspace::recovery_done`]: the user of lockspace `ls` (a file
    /// system) finished recovering that incarnation of `node`.
    pub fn recovery_done_in(
        &mut self,
        now: u64,
        ls: &str,
        node: NodeId,
        incarnation: u64,
    ) -> Result<(), LockError> {
        self.member.tick_lease(now);
        self.pump(now);
        let r = match self.spaces.get_mut(&lockspace_id(ls)) {
            Some(s) if s.name == ls => {
                s.ls.recovery_done(node, incarnation);
                Ok(())
            }
            _ => Err(LockError::Invalid(format!(
                "node {} is not in lockspace {ls:?}",
                self.id()
            ))),
        };
        self.pump(now);
        r
    }

    /// A committed view: each lockspace this node is in recovers with its
    /// own members; a lockspace being left is dropped once the view has
    /// this node out of it.
    fn apply_view(&mut self, view: &View, left_nodes: &[Member]) {
        let me = self.id();
        let Some(mine) = view.member(me).cloned() else {
            return;
        };
        let ids: Vec<u32> = self.spaces.keys().copied().collect();
        let mut refused = false;
        for lsid in ids {
            let Some(s) = self.spaces.get_mut(&lsid) else {
                continue;
            };
            if mine.join_of(lsid) != Some(s.join) {
                let conflict = if s.leaving || !s.known.is_empty() {
                    None
                } else {
                    lvb_conflict(view, me, &s.name, s.lvb_len)
                };
                if let Some(reason) = conflict {
                    // Still joining, and the members use another LVB
                    // length: give the join up. Only locks asked for
                    // meanwhile are here, none granted.
                    let (name, instance) = (s.name.clone(), s.instance);
                    let lkids: Vec<u64> = s.ls.locks.keys().copied().collect();
                    self.spaces.remove(&lsid);
                    self.by_instance.remove(&instance);
                    for lkid in lkids {
                        self.out.push(Output::Callback(Callback::Failed {
                            lkid,
                            error: LockError::Invalid(reason.clone()),
                        }));
                    }
                    if self.refused.len() >= MAX_LOCKSPACES {
                        self.refused.pop_first();
                    }
                    self.refused.insert(name.clone(), reason.clone());
                    self.out.push(Output::Lockspace {
                        name,
                        event: LsEvent::Refused { reason },
                    });
                    refused = true;
                } else if s.leaving {
                    let (name, instance) = (s.name.clone(), s.instance);
                    self.spaces.remove(&lsid);
                    self.by_instance.remove(&instance);
                    self.out.push(Output::Lockspace {
                        name,
                        event: LsEvent::Left,
                    });
                } else if !s.known.is_empty() {
                    // In an earlier view, not in this one: it cannot
                    // happen (views record what each member accepted), but
                    // if it did, the others have dropped this node's locks.
                    let (name, join, lvb_len) = (s.name.clone(), s.join, s.lvb_len);
                    self.by_instance.remove(&s.instance);
                    let fresh = self.new_space(name.clone(), join, lvb_len);
                    self.spaces.insert(lsid, fresh);
                    self.out.push(Output::Lockspace {
                        name,
                        event: LsEvent::Lost {
                            reason: format!(
                                "view {} has this node out of the lockspace",
                                view.generation
                            ),
                        },
                    });
                }
                continue;
            }
            let members = view.of_lockspace(lsid);
            let departed: Vec<Member> = s
                .known
                .values()
                .filter(|k| {
                    !members.iter().any(|m| {
                        m.id == k.id
                            && m.incarnation == k.incarnation
                            && m.join_of(lsid) == k.join_of(lsid)
                    })
                })
                .cloned()
                .collect();
            let left: Vec<Member> = departed
                .iter()
                .filter(|d| {
                    view.contains(d.id, d.incarnation)
                        || left_nodes
                            .iter()
                            .any(|l| l.id == d.id && l.incarnation == d.incarnation)
                })
                .cloned()
                .collect();
            let joined = members.iter().any(|m| {
                s.known.get(&m.id).is_none_or(|k| {
                    k.incarnation != m.incarnation || k.join_of(lsid) != m.join_of(lsid)
                })
            });
            if !departed.is_empty() || joined {
                self.out.push(Output::Lockspace {
                    name: s.name.clone(),
                    event: LsEvent::RecoverPrep {
                        generation: view.generation,
                        departed: departed.clone(),
                        left: left.clone(),
                    },
                });
                s.announced = true;
            }
            s.known = members.iter().map(|m| (m.id, m.clone())).collect();
            let ls_view = View {
                generation: view.generation,
                members,
            };
            let d: Vec<NodeId> = departed.iter().map(|m| m.id).collect();
            let l: Vec<NodeId> = left.iter().map(|m| m.id).collect();
            s.ls.recover(&ls_view, &d, &l);
            Self::drain_space(s, &mut self.out);
        }
        if refused {
            self.advertise();
        }
    }

    /// A lost lease: every lockspace starts over (those being left are
    /// dropped).
    fn lose_all(&mut self) {
        let spaces = std::mem::take(&mut self.spaces);
        self.by_instance.clear();
        for (id, s) in spaces {
            if s.leaving {
                self.out.push(Output::Lockspace {
                    name: s.name,
                    event: LsEvent::Left,
                });
                continue;
            }
            // Whatever the old lockspace still wanted to say is void.
            let fresh = self.new_space(s.name, s.join, s.lvb_len);
            self.spaces.insert(id, fresh);
        }
        self.advertise();
    }

    fn drain_space(s: &mut Space, out: &mut Vec<Output>) {
        for o in s.ls.drain() {
            match o {
                Output::Callback(Callback::Recovered { generation }) => {
                    if std::mem::take(&mut s.announced) {
                        out.push(Output::Lockspace {
                            name: s.name.clone(),
                            event: LsEvent::RecoverDone { generation },
                        });
                    }
                }
                o => out.push(o),
            }
        }
    }

    /// Moves membership outputs into the lockspaces and everything out.
    fn pump(&mut self, now: u64) {
        for o in self.member.drain() {
            match o {
                MemberOutput::Send { to, msg } => self.out.push(Output::Send { to, msg }),
                MemberOutput::Event(e) => {
                    match &e {
                        MemberEvent::Committed { view, left, .. } => {
                            self.apply_view(view, left);
                        }
                        MemberEvent::Lost { .. } => self.lose_all(),
                    }
                    self.out.push(Output::Membership(e));
                }
            }
        }
        let q = self.member.quorate(now);
        for s in self.spaces.values_mut() {
            if q != s.ls.is_quorate() {
                s.ls.set_quorate(q);
            }
            Self::drain_space(s, &mut self.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::Timing;

    fn cfg() -> MemberConfig {
        MemberConfig {
            nodes: vec![1, 2, 3],
            timing: Timing {
                heartbeat: 10,
                failure_timeout: 50,
                lease: 100,
            },
            two_node: false,
        }
    }

    fn node(id: NodeId) -> Node {
        Node::with_lockspaces(id, 1, 0, cfg(), 32, &[]).expect("node")
    }

    #[test]
    fn lvb_lengths_are_multiples_of_8_within_bounds() {
        let mut n = node(3);
        for bad in [0, 4, 12, 33, 1025, 1032, 4096] {
            let e = n
                .join_lockspace_with("fsA", LsOptions { lvb_len: bad })
                .expect_err("bad LVB length accepted");
            let t = e.to_string();
            assert!(
                t.contains("multiple of 8") && t.contains("node 3") && t.contains("\"fsA\""),
                "{t}"
            );
            assert!(n.lockspace_named("fsA").is_none());
        }
        for (name, good) in [("a", 8), ("b", 64), ("c", 1024)] {
            n.join_lockspace_with(name, LsOptions { lvb_len: good })
                .expect("good LVB length");
            assert_eq!(n.lockspace_named(name).map(Lockspace::lvb_len), Some(good));
        }
        // The node's default is checked as well.
        for bad in [0, 20, 2048] {
            let e = Node::with_lockspaces(1, 1, 0, cfg(), bad, &[]).err();
            assert!(e.is_some_and(|e| e.contains("multiple of 8")), "{bad}");
        }
    }

    #[test]
    fn join_without_a_length_uses_the_default_and_a_second_join_must_match() {
        let mut n = node(2);
        n.join_lockspace("plain").expect("join");
        n.join_lockspace_with("fs", LsOptions { lvb_len: 64 })
            .expect("join fs");
        assert_eq!(n.default_lvb_len(), 32);
        assert_eq!(n.lockspace_named("plain").map(Lockspace::lvb_len), Some(32));
        // Joining again with the same length does nothing; another is refused.
        n.join_lockspace_with("fs", LsOptions { lvb_len: 64 })
            .expect("same again");
        let e = n.join_lockspace("fs").expect_err("another length");
        assert!(e.to_string().contains("64-byte"), "{e}");
        // Heartbeats and accepts carry each length.
        let mut adv: Vec<(u32, u16)> = n
            .membership()
            .lockspaces()
            .iter()
            .map(|j| (j.id, j.lvb_len))
            .collect();
        adv.sort_unstable();
        let mut want = vec![(lockspace_id("plain"), 32), (lockspace_id("fs"), 64)];
        want.sort_unstable();
        assert_eq!(adv, want);
    }

    #[test]
    fn a_conflicting_view_names_the_lockspace_both_lengths_and_the_nodes() {
        let id = lockspace_id("fsA");
        let m = |node: NodeId, slot: u32, joins: Vec<LsJoin>| Member {
            id: node,
            incarnation: 1,
            slot,
            lockspaces: joins,
        };
        let view = View::new(
            7,
            vec![
                m(1, 1, vec![LsJoin::new(id, 1, 32)]),
                m(2, 2, vec![LsJoin::new(id, 4, 32)]),
                m(3, 3, vec![]),
            ],
        )
        .expect("view");
        let why = lvb_conflict(&view, 3, "fsA", 64).expect("conflict");
        for part in ["node 3", "\"fsA\"", "64-byte", "32-byte", "[1, 2]"] {
            assert!(why.contains(part), "{part}: {why}");
        }
        assert_eq!(lvb_conflict(&view, 3, "fsA", 32), None);
        assert_eq!(lvb_conflict(&view, 3, "fsB", 64), None);
        // Its own earlier join does not count against a node.
        assert_eq!(lvb_conflict(&view, 1, "fsA", 64).map(|_| ()), Some(()));
        let alone = View::new(7, vec![m(1, 1, vec![LsJoin::new(id, 1, 32)])]).expect("view");
        assert_eq!(lvb_conflict(&alone, 1, "fsA", 64), None);
    }
}
