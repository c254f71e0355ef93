//! One resource as its master sees it: the grant, convert and wait queues,
//! the lock value block, and the rules that decide who gets what.
//!
//! This is the part of the lock manager that the kernel DLM keeps in
//! `lock.c` (`_can_be_granted`, `grant_pending_locks`, `do_request`,
//! `do_convert`, `do_unlock`, `do_cancel`). It is a pure data structure:
//! calls in, [`Event`]s out (completions and blocking callbacks addressed to
//! lock ids), time only as an argument. It may not know about nodes beyond
//! the `node` field of a [`LockId`], about messages, or about directories;
//! the master node wraps it.
//!
//! Rules, in the VAXcluster tradition:
//! - A new request is granted at once only if nobody is converting or
//!   waiting and its mode is compatible with every holder; otherwise it
//!   waits in FIFO order (or fails at once with `NOQUEUE`).
//! - A down-conversion is granted at once. An up-conversion is granted in
//!   place if compatible with every other holder (and, with `QUECVT`, only
//!   if no one else is converting); otherwise it joins the convert queue,
//!   which is served before the wait queue.
//! - Two converters whose held modes block each other's requested modes
//!   are a conversion deadlock: the new converter fails with `Deadlock`, or
//!   with `CONVDEADLK` is demoted to NL and told so when it is granted.
//! - Every holder that blocks a queued request gets a blocking callback
//!   with the mode that request needs, once per mode.
//! - Each grant carries a sequence number that only grows (a fencing token).
//! - The LVB is returned with grants that ask for it (`VALBLK`) and written
//!   by an unlock or down-conversion from PW or EX that carries one.

use crate::mode::Mode;
use std::collections::VecDeque;
use std::fmt;

pub type NodeId = u32;

/// A lock: the node that owns it and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockId {
    pub node: NodeId,
    pub lkid: u64,
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:x}", self.node, self.lkid)
    }
}

/// Request flags (the subset of the kernel DLM's that rdlm implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

impl Flags {
    pub const NONE: Flags = Flags(0);
    /// Fail with `WouldBlock` instead of queueing.
    pub const NOQUEUE: Flags = Flags(1 << 0);
    /// This is a conversion of an existing lock.
    pub const CONVERT: Flags = Flags(1 << 1);
    /// Return the LVB with the grant; write it on unlock or down-conversion.
    pub const VALBLK: Flags = Flags(1 << 2);
    /// Queue the conversion behind other converters (strict FIFO).
    pub const QUECVT: Flags = Flags(1 << 3);
    /// Resolve a conversion deadlock by demoting this lock to NL.
    pub const CONVDEADLK: Flags = Flags(1 << 4);
    /// With NOQUEUE: still send blocking callbacks to the holders.
    pub const NOQUEUEBAST: Flags = Flags(1 << 5);
    /// Fail the request with `TimedOut` if not granted by its deadline.
    pub const TIMEOUT: Flags = Flags(1 << 6);
    /// Invalidate the LVB on unlock or down-conversion from PW/EX.
    pub const IVVALBLK: Flags = Flags(1 << 7);
    /// Grant even while the resource is held for a departed node's
    /// recovery (the journal and recovery-control locks of a file system).
    pub const NOEXP: Flags = Flags(1 << 8);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Why a request did not end in a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("not grantable at once and NOQUEUE was given")]
    WouldBlock,
    #[error("conversion deadlock with lock {with}")]
    Deadlock { with: LockId },
    #[error("cancelled")]
    Cancelled,
    #[error("timed out waiting for the grant")]
    TimedOut,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("lock {0} is busy: {1}")]
    Busy(LockId, &'static str),
    #[error("unknown lock {0}")]
    UnknownLock(LockId),
    /// Deadlock detection found this request in a cycle of waits across
    /// resources and chose it as the victim; `cycle` lists the waiting
    /// locks that formed it.
    #[error("deadlock: waits form a cycle through locks {}", fmt_locks(cycle))]
    Cycle { cycle: Vec<LockId> },
    /// The node asked does not master the resource (a master assignment
    /// from an older membership that never took effect). The owner looks
    /// the master up again; users never see this.
    #[error("not the master of this resource")]
    NotMaster,
}

fn fmt_locks(v: &[LockId]) -> String {
    v.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// What a call produced, addressed to locks (the master turns these into
/// messages or local callbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Completion: the request or conversion is granted.
    Granted {
        lock: LockId,
        mode: Mode,
        /// The LVB, when the request asked for it.
        lvb: Option<Vec<u8>>,
        /// False when the LVB may have been lost (VALNOTVALID).
        lvb_valid: bool,
        /// Grant sequence number of this resource (fencing token).
        seq: u64,
        /// A conversion deadlock demoted the lock to NL before this grant.
        demoted: bool,
    },
    /// Completion: the request failed. A failed conversion leaves the lock
    /// granted in its previous mode.
    Failed { lock: LockId, error: LockError },
    /// Completion of an unlock.
    Unlocked { lock: LockId },
    /// Blocking callback: a queued request needs `mode`, which this holder
    /// blocks.
    Blocking { lock: LockId, mode: Mode },
}

#[derive(Debug, Clone)]
struct Lkb {
    id: LockId,
    /// Who waits when this lock waits (deadlock detection); 0: the lock
    /// alone.
    owner: u64,
    /// Mode held (None while a new request waits).
    grmode: Option<Mode>,
    /// Mode requested (equals grmode when nothing is pending).
    rqmode: Mode,
    flags: Flags,
    deadline: Option<u64>,
    /// Strongest mode this holder was told about since its grant changed.
    highbast: Option<Mode>,
    demoted: bool,
}

/// A resource's master state.
#[derive(Debug, Clone)]
pub struct Resource {
    name: Vec<u8>,
    lvb: Vec<u8>,
    lvb_valid: bool,
    /// Bumped on every LVB write, so recovery can pick the newest copy.
    lvb_seq: u64,
    grant_seq: u64,
    granted: Vec<Lkb>,
    converting: VecDeque<Lkb>,
    waiting: VecDeque<Lkb>,
    /// Departed nodes that held PW/EX here and whose recovery the user
    /// has not finished: only NOEXP requests are granted meanwhile.
    held_for: std::collections::BTreeSet<NodeId>,
}

/// Longest resource name.
pub const MAX_NAME: usize = 64;

impl Resource {
    pub fn new(name: &[u8], lvb_len: usize) -> Result<Resource, LockError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(LockError::Invalid(format!(
                "resource names are 1..={MAX_NAME} bytes, got {}",
                name.len()
            )));
        }
        Ok(Resource {
            name: name.to_vec(),
            lvb: vec![0; lvb_len],
            // Nobody has written it: a reader must not take zeros for a
            // value (the resource may have been lost with its master).
            lvb_valid: false,
            lvb_seq: 0,
            grant_seq: 0,
            granted: Vec::new(),
            converting: VecDeque::new(),
            waiting: VecDeque::new(),
            held_for: std::collections::BTreeSet::new(),
        })
    }

    /// A resource rebuilt by recovery from what the surviving holders
    /// reported (its master left). `locks` are granted modes; `lvb` is the
    /// newest copy any survivor had and whether it can be trusted; every
    /// grant from now on is numbered above `seq_floor`.
    pub fn recovered(
        name: &[u8],
        lvb_len: usize,
        locks: &[(LockId, u64, Mode)],
        lvb: Option<(&[u8], bool)>,
        seq_floor: u64,
    ) -> Result<Resource, LockError> {
        let mut r = Resource::new(name, lvb_len)?;
        for (i, (a, _, am)) in locks.iter().enumerate() {
            if let Some((b, _, bm)) = locks[i + 1..]
                .iter()
                .find(|(b, _, bm)| b == a || !am.compatible(*bm))
            {
                return Err(LockError::Invalid(format!(
                    "recovery of {:?}: {a} reports {am} and {b} reports {bm}",
                    String::from_utf8_lossy(name)
                )));
            }
        }
        for &(id, owner, mode) in locks {
            r.granted.push(Lkb {
                id,
                owner,
                grmode: Some(mode),
                rqmode: mode,
                flags: Flags::NONE,
                deadline: None,
                highbast: None,
                demoted: false,
            });
        }
        if let Some((v, valid)) = lvb {
            r.check_lvb_arg(Some(v))?;
            r.lvb.copy_from_slice(v);
            r.lvb_valid = valid;
        }
        r.grant_seq = seq_floor;
        r.check();
        Ok(r)
    }

    /// Holds grants (except NOEXP) while `nodes` is not empty: the
    /// lockspace's departed nodes whose recovery is not done.
    pub fn set_holds(&mut self, nodes: &std::collections::BTreeSet<NodeId>) -> Vec<Event> {
        let mut out = Vec::new();
        let was_held = !self.held_for.is_empty();
        self.held_for.clone_from(nodes);
        if was_held && self.held_for.is_empty() {
            self.grant_pending(&mut out);
        }
        self.check();
        out
    }

    pub fn held_for(&self) -> impl Iterator<Item = &NodeId> {
        self.held_for.iter()
    }

    /// Whether `node` holds PW or EX here (granted or while converting).
    pub fn held_by_writer(&self, node: NodeId) -> bool {
        self.granted
            .iter()
            .chain(self.converting.iter())
            .any(|l| l.id.node == node && l.grmode.is_some_and(Mode::writes_lvb))
    }

    fn may_grant(&self, flags: Flags) -> bool {
        self.held_for.is_empty() || flags.contains(Flags::NOEXP)
    }

    /// Grants from now on are numbered above `floor` (a new membership
    /// generation starts a new range, so tokens only grow across recovery).
    pub fn raise_seq_floor(&mut self, floor: u64) {
        self.grant_seq = self.grant_seq.max(floor);
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    pub fn lvb(&self) -> (&[u8], bool, u64) {
        (&self.lvb, self.lvb_valid, self.lvb_seq)
    }

    pub fn grant_seq(&self) -> u64 {
        self.grant_seq
    }

    /// True when no lock exists on the resource (it may be freed).
    pub fn is_unused(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }

    /// Marks the LVB as possibly lost (recovery found a dead PW/EX holder).
    pub fn invalidate_lvb(&mut self) {
        self.lvb_valid = false;
    }

    /// Modes held, in queue order, for dumps and tests: (lock, granted mode,
    /// requested mode if pending).
    pub fn holders(&self) -> Vec<(LockId, Option<Mode>, Option<Mode>)> {
        let g = self.granted.iter().map(|l| (l.id, l.grmode, None));
        let c = self
            .converting
            .iter()
            .map(|l| (l.id, l.grmode, Some(l.rqmode)));
        let w = self.waiting.iter().map(|l| (l.id, None, Some(l.rqmode)));
        g.chain(c).chain(w).collect()
    }

    fn find(&self, id: LockId) -> Option<&Lkb> {
        self.granted
            .iter()
            .chain(self.converting.iter())
            .chain(self.waiting.iter())
            .find(|l| l.id == id)
    }

    /// Is `mode` compatible with every held mode other than `except`'s?
    fn compatible_with_holders(&self, mode: Mode, except: Option<LockId>) -> bool {
        self.granted
            .iter()
            .chain(self.converting.iter())
            .filter(|l| Some(l.id) != except)
            .all(|l| l.grmode.is_none_or(|g| g.compatible(mode)))
    }

    fn check_lvb_arg(&self, lvb: Option<&[u8]>) -> Result<(), LockError> {
        match lvb {
            Some(v) if v.len() != self.lvb.len() => Err(LockError::Invalid(format!(
                "LVB of {} bytes on a lockspace with {}-byte LVBs",
                v.len(),
                self.lvb.len()
            ))),
            _ => Ok(()),
        }
    }

    fn grant(&mut self, mut l: Lkb, out: &mut Vec<Event>) {
        self.grant_seq += 1;
        l.grmode = Some(l.rqmode);
        l.highbast = None;
        out.push(Event::Granted {
            lock: l.id,
            mode: l.rqmode,
            lvb: l.flags.contains(Flags::VALBLK).then(|| self.lvb.clone()),
            lvb_valid: self.lvb_valid,
            seq: self.grant_seq,
            demoted: std::mem::take(&mut l.demoted),
        });
        l.deadline = None;
        self.granted.push(l);
    }

    /// A new lock. `deadline` (with `TIMEOUT`) is in the caller's time units.
    pub fn request(
        &mut self,
        id: LockId,
        mode: Mode,
        flags: Flags,
        deadline: Option<u64>,
    ) -> Result<Vec<Event>, LockError> {
        self.request_as(id, 0, mode, flags, deadline)
    }

    /// A new lock on behalf of `owner` (a transaction: its waits are what
    /// deadlock detection follows; 0 = the lock alone).
    pub fn request_as(
        &mut self,
        id: LockId,
        owner: u64,
        mode: Mode,
        flags: Flags,
        deadline: Option<u64>,
    ) -> Result<Vec<Event>, LockError> {
        if flags.contains(Flags::CONVERT) {
            return Err(LockError::Invalid("CONVERT on a new request".into()));
        }
        if flags.contains(Flags::QUECVT) || flags.contains(Flags::CONVDEADLK) {
            return Err(LockError::Invalid(
                "QUECVT and CONVDEADLK need CONVERT".into(),
            ));
        }
        if flags.contains(Flags::TIMEOUT) != deadline.is_some() {
            return Err(LockError::Invalid(
                "TIMEOUT and a deadline go together".into(),
            ));
        }
        if self.find(id).is_some() {
            return Err(LockError::Invalid(format!("lock {id} already exists")));
        }
        let mut out = Vec::new();
        let l = Lkb {
            id,
            owner,
            grmode: None,
            rqmode: mode,
            flags,
            deadline,
            highbast: None,
            demoted: false,
        };
        let grantable = self.may_grant(flags)
            && self.converting.is_empty()
            && self.waiting.is_empty()
            && self.compatible_with_holders(mode, None);
        if grantable {
            self.grant(l, &mut out);
        } else if flags.contains(Flags::NOQUEUE) {
            if flags.contains(Flags::NOQUEUEBAST) {
                self.bast_blockers(id, mode, &mut out);
            }
            out.push(Event::Failed {
                lock: id,
                error: LockError::WouldBlock,
            });
        } else {
            self.waiting.push_back(l);
            self.send_basts(&mut out);
        }
        self.check();
        Ok(out)
    }

    /// Converts a granted lock to `mode`. `lvb` is written when converting
    /// down from PW/EX with `VALBLK`.
    pub fn convert(
        &mut self,
        id: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<&[u8]>,
        deadline: Option<u64>,
    ) -> Result<Vec<Event>, LockError> {
        if flags.contains(Flags::CONVDEADLK) && flags.contains(Flags::NOQUEUE) {
            return Err(LockError::Invalid("CONVDEADLK with NOQUEUE".into()));
        }
        if flags.contains(Flags::TIMEOUT) != deadline.is_some() {
            return Err(LockError::Invalid(
                "TIMEOUT and a deadline go together".into(),
            ));
        }
        self.check_lvb_arg(lvb)?;
        let Some(pos) = self.granted.iter().position(|l| l.id == id) else {
            return Err(match self.find(id) {
                Some(_) => LockError::Busy(id, "a request or conversion is already pending"),
                None => LockError::UnknownLock(id),
            });
        };
        let mut out = Vec::new();
        let held = self.granted[pos].grmode.unwrap_or(Mode::NL);
        if held.incomparable(mode) {
            return Err(LockError::Invalid(format!(
                "{held} -> {mode}: neither mode covers the other; convert through CR"
            )));
        }
        let down = mode <= held;
        if down {
            let mut l = self.granted.remove(pos);
            self.write_lvb(held, flags, lvb);
            l.rqmode = mode;
            l.flags = flags;
            self.grant(l, &mut out);
            self.grant_pending(&mut out);
            self.check();
            return Ok(out);
        }
        // With QUECVT the conversion may not pass converters already queued.
        let grantable = self.may_grant(flags)
            && (!flags.contains(Flags::QUECVT) || self.converting.is_empty())
            && self.compatible_with_holders(mode, Some(id));
        let mut l = self.granted.remove(pos);
        l.rqmode = mode;
        l.flags = flags;
        l.deadline = deadline;
        if grantable {
            self.grant(l, &mut out);
        } else if flags.contains(Flags::NOQUEUE) {
            if flags.contains(Flags::NOQUEUEBAST) {
                self.bast_blockers(id, mode, &mut out);
            }
            l.rqmode = held;
            self.granted.insert(pos, l);
            out.push(Event::Failed {
                lock: id,
                error: LockError::WouldBlock,
            });
        } else if let Some(other) = self.conversion_deadlock(held, mode) {
            if flags.contains(Flags::CONVDEADLK) {
                // Give up what we hold so the other converter can go on;
                // the caller learns it lost its protection from `demoted`.
                l.grmode = Some(Mode::NL);
                l.demoted = true;
                self.converting.push_back(l);
                self.grant_pending(&mut out);
            } else {
                l.rqmode = held;
                l.deadline = None;
                self.granted.insert(pos, l);
                out.push(Event::Failed {
                    lock: id,
                    error: LockError::Deadlock { with: other },
                });
            }
        } else {
            self.converting.push_back(l);
            self.send_basts(&mut out);
        }
        self.check();
        Ok(out)
    }

    /// A converter already queued whose held mode blocks `want` while our
    /// `held` mode blocks what it wants.
    fn conversion_deadlock(&self, held: Mode, want: Mode) -> Option<LockId> {
        self.converting
            .iter()
            .find(|c| {
                let cg = c.grmode.unwrap_or(Mode::NL);
                !cg.compatible(want) && !c.rqmode.compatible(held)
            })
            .map(|c| c.id)
    }

    fn write_lvb(&mut self, held: Mode, flags: Flags, lvb: Option<&[u8]>) {
        if !held.writes_lvb() {
            return;
        }
        if flags.contains(Flags::IVVALBLK) {
            self.lvb_valid = false;
        } else if let (true, Some(v)) = (flags.contains(Flags::VALBLK), lvb) {
            self.lvb.copy_from_slice(v);
            self.lvb_valid = true;
            self.lvb_seq += 1;
        }
    }

    /// Releases a granted lock (writing the LVB if it held PW/EX).
    pub fn unlock(
        &mut self,
        id: LockId,
        flags: Flags,
        lvb: Option<&[u8]>,
    ) -> Result<Vec<Event>, LockError> {
        self.check_lvb_arg(lvb)?;
        let Some(pos) = self.granted.iter().position(|l| l.id == id) else {
            return Err(match self.find(id) {
                Some(_) => LockError::Busy(id, "cancel the pending request before unlocking"),
                None => LockError::UnknownLock(id),
            });
        };
        let l = self.granted.remove(pos);
        self.write_lvb(l.grmode.unwrap_or(Mode::NL), flags, lvb);
        let mut out = vec![Event::Unlocked { lock: id }];
        self.grant_pending(&mut out);
        self.check();
        Ok(out)
    }

    /// Who waits for whom here: (waiting lock, its owner, blocking lock,
    /// its owner). A queued lock waits for every holder whose mode it
    /// cannot share, and for every lock queued ahead of it that wants a
    /// mode it cannot share (the queues are served in order).
    pub fn wait_edges(&self) -> Vec<(LockId, u64, LockId, u64)> {
        let mut edges = Vec::new();
        let queued: Vec<&Lkb> = self.converting.iter().chain(self.waiting.iter()).collect();
        for (i, w) in queued.iter().enumerate() {
            for h in self.granted.iter().chain(self.converting.iter()) {
                if h.id != w.id && h.grmode.is_some_and(|g| !g.compatible(w.rqmode)) {
                    edges.push((w.id, w.owner, h.id, h.owner));
                }
            }
            for a in &queued[..i] {
                if !a.rqmode.compatible(w.rqmode) {
                    edges.push((w.id, w.owner, a.id, a.owner));
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        edges
    }

    /// Fails a queued request with `error` (deadlock detection chose it as
    /// the victim); a granted lock is left alone.
    pub fn fail_waiter(&mut self, id: LockId, error: LockError) -> Result<Vec<Event>, LockError> {
        let mut out = Vec::new();
        self.cancel_with(id, error, &mut out)?;
        self.grant_pending(&mut out);
        self.check();
        Ok(out)
    }

    /// Cancels a waiting request (the lock disappears) or a pending
    /// conversion (the lock keeps its granted mode).
    pub fn cancel(&mut self, id: LockId) -> Result<Vec<Event>, LockError> {
        let mut out = Vec::new();
        self.cancel_with(id, LockError::Cancelled, &mut out)?;
        self.grant_pending(&mut out);
        self.check();
        Ok(out)
    }

    fn cancel_with(
        &mut self,
        id: LockId,
        error: LockError,
        out: &mut Vec<Event>,
    ) -> Result<(), LockError> {
        if let Some(pos) = self.waiting.iter().position(|l| l.id == id) {
            self.waiting.remove(pos);
        } else if let Some(pos) = self.converting.iter().position(|l| l.id == id) {
            let mut l = self
                .converting
                .remove(pos)
                .ok_or(LockError::UnknownLock(id))?;
            l.rqmode = l.grmode.unwrap_or(Mode::NL);
            l.deadline = None;
            self.granted.push(l);
        } else if self.granted.iter().any(|l| l.id == id) {
            return Err(LockError::Busy(id, "nothing is pending to cancel"));
        } else {
            return Err(LockError::UnknownLock(id));
        }
        out.push(Event::Failed { lock: id, error });
        Ok(())
    }

    /// Fails every pending request whose deadline is at or before `now`.
    pub fn tick(&mut self, now: u64) -> Vec<Event> {
        let expired: Vec<LockId> = self
            .converting
            .iter()
            .chain(self.waiting.iter())
            .filter(|l| l.deadline.is_some_and(|d| d <= now))
            .map(|l| l.id)
            .collect();
        let mut out = Vec::new();
        for id in expired {
            // The id came from the queues just above.
            let _ = self.cancel_with(id, LockError::TimedOut, &mut out);
        }
        if !out.is_empty() {
            self.grant_pending(&mut out);
        }
        self.check();
        out
    }

    /// Removes every lock a node owns (it left or died); returns the events
    /// for the survivors. `invalidate_lvb` is set by recovery when the node
    /// held PW/EX, since its last LVB write may be lost.
    pub fn purge_node(&mut self, node: NodeId) -> Vec<Event> {
        let held_writer = self
            .granted
            .iter()
            .chain(self.converting.iter())
            .any(|l| l.id.node == node && l.grmode.is_some_and(Mode::writes_lvb));
        if held_writer {
            self.lvb_valid = false;
        }
        self.granted.retain(|l| l.id.node != node);
        self.converting.retain(|l| l.id.node != node);
        self.waiting.retain(|l| l.id.node != node);
        let mut out = Vec::new();
        self.grant_pending(&mut out);
        self.check();
        out
    }

    /// Grants what became grantable: converters first (in order, each if
    /// compatible), then waiters strictly in FIFO order once no one is
    /// converting; then tells holders what they block.
    fn grant_pending(&mut self, out: &mut Vec<Event>) {
        loop {
            let mut changed = false;
            let mut i = 0;
            while i < self.converting.len() {
                let (id, want) = (self.converting[i].id, self.converting[i].rqmode);
                if self.may_grant(self.converting[i].flags)
                    && self.compatible_with_holders(want, Some(id))
                {
                    if let Some(l) = self.converting.remove(i) {
                        self.grant(l, out);
                        changed = true;
                    }
                } else {
                    i += 1;
                }
            }
            while self.converting.is_empty() {
                let Some(front) = self.waiting.front() else {
                    break;
                };
                if !self.may_grant(front.flags) || !self.compatible_with_holders(front.rqmode, None)
                {
                    break;
                }
                if let Some(l) = self.waiting.pop_front() {
                    self.grant(l, out);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.send_basts(out);
    }

    /// Blocking callbacks for every queued request, each holder told once
    /// per (stronger) mode.
    fn send_basts(&mut self, out: &mut Vec<Event>) {
        let blocked: Vec<(LockId, Mode)> = self
            .converting
            .iter()
            .chain(self.waiting.iter())
            .map(|l| (l.id, l.rqmode))
            .collect();
        for (id, mode) in blocked {
            self.bast_blockers(id, mode, out);
        }
    }

    fn bast_blockers(&mut self, requester: LockId, mode: Mode, out: &mut Vec<Event>) {
        for h in self.granted.iter_mut().chain(self.converting.iter_mut()) {
            if h.id == requester {
                continue;
            }
            let Some(g) = h.grmode else { continue };
            if g.compatible(mode) || h.highbast.is_some_and(|hb| hb >= mode) {
                continue;
            }
            h.highbast = Some(mode);
            out.push(Event::Blocking { lock: h.id, mode });
        }
    }

    /// The safety invariant, checked after every operation: all held modes
    /// are pairwise compatible, and no lock is in two places.
    fn check(&self) {
        let held: Vec<(LockId, Mode)> = self
            .granted
            .iter()
            .chain(self.converting.iter())
            .filter_map(|l| l.grmode.map(|g| (l.id, g)))
            .collect();
        for (i, (a, am)) in held.iter().enumerate() {
            for (b, bm) in &held[i + 1..] {
                assert!(
                    am.compatible(*bm),
                    "resource {:?}: {a} holds {am} and {b} holds {bm} at once",
                    String::from_utf8_lossy(&self.name)
                );
                assert_ne!(a, b, "lock {a} is queued twice");
            }
        }
        assert!(self.granted.iter().all(|l| l.grmode == Some(l.rqmode)));
        assert!(self.waiting.iter().all(|l| l.grmode.is_none()));
    }
}
