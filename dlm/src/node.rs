//! One node of the lock manager: membership and the lockspace joined
//! together, still without I/O. This is what the driver (and the
//! simulation) runs: every input carries the time, every output is a
//! message to send, a lock callback, or a membership event.
//!
//! It owns the rules that tie the two layers: a committed view starts
//! lockspace recovery; the lease decides whether the lockspace may grant
//! or act on grants; a lost lease (or an excluded incarnation) throws the
//! lockspace away — every lock this node believed it held is gone — and
//! the node rejoins as a new incarnation.

use crate::lockspace::{Lockspace, Output};
use crate::member::{MemberConfig, MemberEvent, MemberOutput, Membership, View};
use crate::mode::Mode;
use crate::resource::{Flags, LockError, NodeId};
use crate::wire::{Body, Message};

pub struct Node {
    member: Membership,
    ls: Lockspace,
    lvb_len: usize,
    hold: bool,
    deadlock_interval: u64,
    out: Vec<Output>,
}

impl Node {
    pub fn new(
        id: NodeId,
        incarnation: u64,
        generation_floor: u32,
        cfg: MemberConfig,
        lvb_len: usize,
    ) -> Result<Node, String> {
        Ok(Node {
            member: Membership::new(id, incarnation, generation_floor, cfg)?,
            ls: Lockspace::joining(id, lvb_len),
            lvb_len,
            hold: false,
            deadlock_interval: 0,
            out: Vec::new(),
        })
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

    pub fn lockspace(&self) -> &Lockspace {
        &self.ls
    }

    pub fn quorate(&self, now: u64) -> bool {
        self.member.quorate(now)
    }

    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn tick(&mut self, now: u64) {
        self.member.tick(now);
        self.pump(now);
        self.ls.tick(now);
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
                self.ls.receive(msg);
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

    /// `lock` on behalf of an owner (see [`Lockspace::lock_as`]).
    pub fn lock_as(
        &mut self,
        now: u64,
        owner: u64,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        timeout: Option<u64>,
    ) -> Result<u64, LockError> {
        if self.member.is_leaving() {
            return Err(LockError::Invalid(format!("node {} has left", self.id())));
        }
        self.member.tick_lease(now);
        self.pump(now);
        self.ls.set_clock(now);
        let r = self.ls.lock_as(owner, name, mode, flags, timeout);
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
        self.member.tick_lease(now);
        self.pump(now);
        self.ls.set_clock(now);
        let r = self.ls.convert_for(lkid, mode, flags, lvb, timeout);
        self.pump(now);
        r
    }

    pub fn unlock(
        &mut self,
        now: u64,
        lkid: u64,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.member.tick_lease(now);
        self.pump(now);
        let r = self.ls.unlock(lkid, flags, lvb);
        self.pump(now);
        r
    }

    pub fn cancel(&mut self, now: u64, lkid: u64) -> Result<(), LockError> {
        self.member.tick_lease(now);
        self.pump(now);
        let r = self.ls.cancel(lkid);
        self.pump(now);
        r
    }

    /// Leaves the cluster cleanly: refused while this node has locks
    /// (release them first); afterwards the node takes no lock traffic and
    /// the others drop it without waiting out its lease.
    pub fn leave(&mut self, now: u64) -> Result<(), LockError> {
        if self.ls.lock_count() > 0 {
            return Err(LockError::Invalid(format!(
                "node {} still has {} locks; release them before leaving",
                self.id(),
                self.ls.lock_count()
            )));
        }
        self.member.leave();
        self.pump(now);
        Ok(())
    }

    /// See [`Lockspace::set_recovery_hold`]; kept across lost leases.
    pub fn set_recovery_hold(&mut self, hold: bool) {
        self.hold = hold;
        self.ls.set_recovery_hold(hold);
    }

    /// See [`Lockspace::set_deadlock_detection`]; kept across lost leases.
    pub fn set_deadlock_detection(&mut self, interval: u64) {
        self.deadlock_interval = interval;
        self.ls.set_deadlock_detection(interval);
    }

    /// See [`Lockspace::recovery_done`].
    pub fn recovery_done(&mut self, now: u64, node: NodeId, incarnation: u64) {
        self.member.tick_lease(now);
        self.pump(now);
        self.ls.recovery_done(node, incarnation);
        self.pump(now);
    }

    /// Moves membership outputs into the lockspace and everything out.
    fn pump(&mut self, now: u64) {
        for o in self.member.drain() {
            match o {
                MemberOutput::Send { to, msg } => self.out.push(Output::Send { to, msg }),
                MemberOutput::Event(e) => {
                    match &e {
                        MemberEvent::Committed {
                            view,
                            departed,
                            left,
                        } => {
                            let ids: Vec<NodeId> = departed.iter().map(|m| m.id).collect();
                            let clean: Vec<NodeId> = left.iter().map(|m| m.id).collect();
                            self.ls.recover(view, &ids, &clean);
                        }
                        MemberEvent::Lost { .. } => {
                            // Whatever the old lockspace still wanted to say
                            // is void.
                            self.ls = Lockspace::joining(self.id(), self.lvb_len);
                            self.ls.set_recovery_hold(self.hold);
                            self.ls.set_deadlock_detection(self.deadlock_interval);
                        }
                    }
                    self.out.extend(self.ls.drain());
                    self.out.push(Output::Membership(e));
                }
            }
        }
        let q = self.member.quorate(now);
        if q != self.ls.is_quorate() {
            self.ls.set_quorate(q);
        }
        self.out.extend(self.ls.drain());
    }
}
