//! Lockspace recovery: what every member does when the membership layer
//! commits a new view, until grants resume.
//!
//! Like the kernel DLM's `recoverd` (`dlm_recover_directory`,
//! `dlm_recover_masters`, `dlm_recover_locks`, `recover_lvb`), in three
//! steps separated by barriers. Each barrier is a message from every member
//! to every member; per-peer FIFO delivery makes "I have your Done" imply "I
//! have everything you sent before it".
//!
//! 1. Stop and purge (at once, on the new view): grants stop; held-back
//!    traffic from departed nodes is dropped; their locks are purged from
//!    the resources mastered here (an LVB is flagged not valid when a
//!    departed node held PW/EX, since it may have changed what the LVB
//!    describes); every grant number from now on is above `generation <<
//!    32`, so fencing tokens only grow across recovery. Operations that were
//!    sent to a departed master are queued to be sent again, and the cache
//!    of known masters is emptied (except resources mastered here). The directory
//!    is rebuilt from scratch: every master sends a `DirEntry` for each
//!    resource it masters to that name's new directory node, then `DirDone`.
//! 2. Remaster (once `DirDone` came from everyone): for each resource this
//!    node holds granted locks on whose master left, it looks the name up
//!    again (the first asker becomes the new master) and sends the master a
//!    `RecoverLock` for each such lock, then `LocksDone`.
//!    A lock reports the mode the new master may count on: its granted mode;
//!    the target of a down-conversion or NL for an unlock the old master may
//!    or may not have seen (the holder stopped relying on more when it sent
//!    them); the held mode of an up-conversion (a lattice-stronger grant the
//!    old master may have made is compatible with less). PR<->CW
//!    conversions are refused by the API for exactly this reason.
//! 3. Rebuild (once `LocksDone` came from everyone): each new master builds
//!    its resources from the reports. The LVB is the copy with the highest
//!    grant number; it is valid only if some survivor holds PR, PW or EX
//!    (then nobody else can have written since that copy) and that copy was
//!    valid. Then it sends `RecoveryDone`.
//! 4. Resume (once `RecoveryDone` came from everyone): held-back traffic
//!    runs, and the queued operations are sent (to the new masters).
//!
//! A newer view arriving mid-way restarts at step 1. Resources already
//! rebuilt stay; reports not yet built into resources are dropped and sent
//! again (the names stay in `unrecovered` until a recovery finishes
//! everywhere), and a master that has the resource ignores them.

use crate::lockspace::{Callback, Lockspace, Op, Output};
use crate::member::View;
use crate::mode::Mode;
use crate::resource::{Flags, LockId, NodeId, Resource};
use crate::wire::{Body, LvbSource, Message};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One lock as a survivor reported it.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    lock: LockId,
    owner: u64,
    mode: Mode,
    seq: u64,
    source: LvbSource,
    lvb_valid: bool,
    lvb: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub(crate) struct Recovery {
    dir_done: BTreeSet<NodeId>,
    pub(crate) dir_complete: bool,
    /// Lookups that arrived before the directory was complete.
    pub(crate) held_lookups: Vec<(NodeId, Vec<u8>)>,
    /// Names being looked up again in step 2.
    lookups: BTreeSet<Vec<u8>>,
    /// This node's granted locks on each name in `lookups`, so that each
    /// answer finds its locks without a scan of every lock: a node holding
    /// ten thousand locks whose master left would otherwise spend seconds
    /// here (quadratic), long enough to miss its own lease renewals.
    held_by_name: BTreeMap<Vec<u8>, Vec<u64>>,
    locks_done_sent: bool,
    locks_done: BTreeSet<NodeId>,
    /// Resources this node is the new master of, and what it was told.
    rebuilding: BTreeMap<Vec<u8>, Vec<Report>>,
    rebuilt: bool,
    recovery_done: BTreeSet<NodeId>,
    /// Holds as the members reported them in `RecoveryDone`.
    pending: BTreeSet<(NodeId, u64)>,
    released: BTreeSet<(NodeId, u64)>,
}

impl Lockspace {
    /// Where recovery stands, for dumps and failing tests.
    pub fn recovery_status(&self) -> Option<String> {
        self.recovery.as_ref().map(|r| {
            format!(
                "generation {}: DirDone from {:?}, lookups left {}, LocksDone sent {} and from {:?}, rebuilding {}",
                self.generation,
                r.dir_done,
                r.lookups.len(),
                r.locks_done_sent,
                r.locks_done,
                r.rebuilding.len()
            )
        })
    }

    pub(crate) fn begin_recovery(&mut self, view: &View, departed: &[NodeId], left: &[NodeId]) {
        assert!(
            view.generation > self.generation,
            "view {} is not newer than {}",
            view.generation,
            self.generation
        );
        assert!(view.member(self.id).is_some(), "view without this node");
        self.stats.recoveries += 1;
        let departed: BTreeSet<NodeId> = departed.iter().copied().collect();
        // Departed without a clean leave: their recovery is the user's.
        let gone_incarnations: Vec<(NodeId, u64)> = departed
            .iter()
            .filter(|d| !left.contains(d))
            .filter_map(|d| self.incarnations.get(d).map(|i| (*d, i.0)))
            .collect();
        self.generation = view.generation;
        self.members = view.ids();
        for m in &view.members {
            let joined = match self.incarnations.get(&m.id) {
                Some(&(inc, j)) if inc == m.incarnation && !departed.contains(&m.id) => j,
                _ => view.generation,
            };
            self.incarnations.insert(m.id, (m.incarnation, joined));
        }
        self.incarnations.retain(|id, _| view.member(*id).is_some());

        // 1. Stop and purge.
        self.recovery = Some(Recovery::default());
        if self.hold_on_recovery {
            for h in gone_incarnations {
                if !self.released.contains(&h) {
                    self.pending_hold.insert(h);
                }
            }
            // Before the purge, which would otherwise grant at once.
            self.apply_holds();
        }
        let gone = |from: NodeId| departed.contains(&from);
        // A departed node may be back as a new incarnation: what it sent in
        // this generation or later is from the new one.
        let g = self.generation;
        self.held.retain(|m| !gone(m.from) || m.generation >= g);
        self.future.retain(|m| !gone(m.from) || m.generation >= g);
        let floor = u64::from(self.generation) << 32;
        let names: Vec<Vec<u8>> = self.mastered.keys().cloned().collect();
        for name in &names {
            let mut events = Vec::new();
            if let Some(r) = self.mastered.get_mut(name) {
                for &d in &departed {
                    events.extend(r.purge_node(d));
                }
                r.raise_seq_floor(floor);
            }
            for e in events {
                self.deliver_event(name, e);
            }
            self.touch(name);
        }
        // Requests that waited for a lookup recovery drops go back.
        self.early_to_owners();
        // Granted locks whose master left: their resources need new ones.
        let lost: Vec<Vec<u8>> = self
            .locks
            .values()
            .filter(|l| {
                l.granted.is_some()
                    && l.master
                        .is_some_and(|m| gone(m) || !self.members.contains(&m))
            })
            .map(|l| l.name.clone())
            .collect();
        self.unrecovered.extend(lost);
        // Every other cached master is forgotten too: an assignment the
        // master never took up (its lookup answer was lost to the view
        // change) must not survive into the new view, where the rebuilt
        // directory may hand the name to someone else. Owners look up
        // again; the directory now knows only real masters.
        let mastered = &self.mastered;
        let me = self.id;
        self.masters
            .retain(|name, m| *m == me && mastered.contains_key(name));
        // Operations sent to a departed master go again, before anything
        // queued later for the same lock.
        let mut again: VecDeque<(u64, Op)> = VecDeque::new();
        for (&lkid, l) in self.locks.iter_mut() {
            if let (Some(op), Some(to)) = (&l.op, l.sent_to) {
                if gone(to) || !self.members.contains(&to) {
                    again.push_back((lkid, op.clone()));
                    l.sent_to = None;
                    if l.cancel_to.is_some() {
                        again.push_back((lkid, Op::Cancel));
                        l.cancel_to = None;
                    }
                }
            }
        }
        self.stats.ops_resent += again.len() as u64;
        for (_, ops) in std::mem::take(&mut self.awaiting_lookup) {
            again.extend(ops);
        }
        again.extend(self.deferred.drain(..));
        self.deferred = again;

        // The directory starts over from what the masters say.
        self.directory.clear();
        self.toss.new_generation();
        let mastered: Vec<Vec<u8>> = self.mastered.keys().cloned().collect();
        for name in mastered {
            let dir = self.dir_node(&name);
            if dir == self.id {
                self.directory.insert(name, self.id);
            } else {
                self.send(dir, Body::DirEntry { name });
            }
        }
        self.send_to_all(Body::DirDone);
        self.mark_dir_done(self.id);

        // Messages that waited for this generation.
        let waiting: Vec<Message> = self.future.drain(..).collect();
        for m in waiting {
            self.receive(m);
        }
    }

    fn send_to_all(&mut self, body: Body) {
        for to in self.members.clone() {
            if to != self.id {
                self.send(to, body.clone());
            }
        }
    }

    pub(crate) fn recovery_message(&mut self, from: NodeId, body: Body) {
        if self.recovery.is_none() {
            // Every recovery message precedes the sender's LocksDone, which
            // we needed before finishing.
            self.stats.protocol_errors += 1;
            return;
        }
        match body {
            Body::DirEntry { name } => {
                self.directory.insert(name, from);
            }
            Body::DirDone => self.mark_dir_done(from),
            Body::RecoverLock {
                lkid,
                name,
                owner,
                mode,
                seq,
                lvb_source,
                lvb_valid,
                lvb,
            } => {
                if self.mastered.contains_key(&name) {
                    // Rebuilt here in a recovery that a newer view cut short
                    // after this node had every report: it has this lock.
                    return;
                }
                // An LVB of another length breaks the protocol: the lock
                // is rebuilt, its LVB copy is not stored.
                let (lvb_source, lvb_valid, lvb) = if self.foreign_lvb(from, &lvb).is_some() {
                    self.stats.protocol_errors += 1;
                    (LvbSource::None, false, None)
                } else {
                    (lvb_source, lvb_valid, lvb)
                };
                if let Some(r) = self.recovery.as_mut() {
                    r.rebuilding.entry(name).or_default().push(Report {
                        lock: LockId { node: from, lkid },
                        owner,
                        mode,
                        seq,
                        source: lvb_source,
                        lvb_valid,
                        lvb,
                    });
                }
            }
            Body::LocksDone => {
                if let Some(r) = self.recovery.as_mut() {
                    r.locks_done.insert(from);
                }
                self.try_rebuild();
            }
            Body::RecoveryDone { pending, released } => {
                if let Some(r) = self.recovery.as_mut() {
                    r.recovery_done.insert(from);
                    r.pending.extend(pending);
                    r.released.extend(released);
                }
                self.try_finish();
            }
            _ => {}
        }
    }

    fn mark_dir_done(&mut self, from: NodeId) {
        let members = self.members.clone();
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        r.dir_done.insert(from);
        if r.dir_complete || !members.iter().all(|m| r.dir_done.contains(m)) {
            return;
        }
        r.dir_complete = true;
        let held = std::mem::take(&mut r.held_lookups);
        // 2. Remaster what lost its master and is held here. One pass over
        // the locks: this runs with every lock of the node at hand.
        let mut held_by_name: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
        for (&lkid, l) in &self.locks {
            if l.granted.is_some() && self.unrecovered.contains(&l.name) {
                held_by_name.entry(l.name.clone()).or_default().push(lkid);
            }
        }
        let names: BTreeSet<Vec<u8>> = held_by_name.keys().cloned().collect();
        if let Some(r) = self.recovery.as_mut() {
            r.lookups = names.clone();
            r.held_by_name = held_by_name;
        }
        for (from, name) in held {
            self.answer_lookup(from, name);
        }
        for name in names {
            let dir = self.dir_node(&name);
            if dir == self.id {
                self.answer_lookup(self.id, name);
            } else {
                self.stats.lookups_sent += 1;
                self.send(dir, Body::Lookup { name });
            }
        }
        self.maybe_locks_done();
    }

    /// A lookup answered during recovery: report our locks to the master.
    pub(crate) fn recovery_lookup_reply(&mut self, name: Vec<u8>, master: NodeId) {
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if !r.lookups.remove(&name) {
            // A lookup from before the view changed, or one whose answer we
            // no longer need.
            self.stats.stale_dropped += 1;
            return;
        }
        let lkids = r.held_by_name.remove(&name).unwrap_or_default();
        self.masters.insert(name.clone(), master);
        for lkid in &lkids {
            if let Some(l) = self.locks.get_mut(lkid) {
                if l.name == name && l.granted.is_some() {
                    l.master = Some(master);
                }
            }
        }
        let reports: Vec<Report> = lkids
            .iter()
            .filter_map(|lkid| self.locks.get(lkid).map(|l| (*lkid, l)))
            .filter(|(_, l)| l.name == name)
            .filter_map(|(lkid, l)| {
                let g = l.granted?;
                let (mode, source, lvb_valid, lvb) = match &l.op {
                    Some(Op::Convert { mode, flags, lvb }) if *mode <= g => {
                        match written(g, *flags, lvb) {
                            Some((valid, v)) => (*mode, LvbSource::Written, valid, v),
                            None => held_copy(*mode, l.lvb_valid, &l.lvb),
                        }
                    }
                    Some(Op::Unlock { flags, lvb }) => match written(g, *flags, lvb) {
                        Some((valid, v)) => (Mode::NL, LvbSource::Written, valid, v),
                        None => (Mode::NL, LvbSource::None, false, None),
                    },
                    _ => held_copy(g, l.lvb_valid, &l.lvb),
                };
                Some(Report {
                    lock: LockId {
                        node: self.id,
                        lkid,
                    },
                    owner: l.owner,
                    mode,
                    seq: l.seq,
                    source,
                    lvb_valid,
                    lvb,
                })
            })
            .collect();
        for rep in reports {
            if master == self.id && self.mastered.contains_key(&name) {
                // Rebuilt here by a recovery a newer view cut short.
                continue;
            }
            if master == self.id {
                if let Some(r) = self.recovery.as_mut() {
                    r.rebuilding.entry(name.clone()).or_default().push(rep);
                }
            } else {
                self.send(
                    master,
                    Body::RecoverLock {
                        lkid: rep.lock.lkid,
                        name: name.clone(),
                        owner: rep.owner,
                        mode: rep.mode,
                        seq: rep.seq,
                        lvb_source: rep.source,
                        lvb_valid: rep.lvb_valid,
                        lvb: rep.lvb,
                    },
                );
            }
        }
        self.maybe_locks_done();
    }

    fn maybe_locks_done(&mut self) {
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        if !r.dir_complete || !r.lookups.is_empty() || r.locks_done_sent {
            return;
        }
        r.locks_done_sent = true;
        r.locks_done.insert(self.id);
        self.send_to_all(Body::LocksDone);
        self.try_rebuild();
    }

    fn try_rebuild(&mut self) {
        let members = self.members.clone();
        let ready = self.recovery.as_ref().is_some_and(|r| {
            !r.rebuilt && r.locks_done_sent && members.iter().all(|m| r.locks_done.contains(m))
        });
        if !ready {
            return;
        }
        let rebuilding = match self.recovery.as_mut() {
            Some(r) => {
                r.rebuilt = true;
                r.recovery_done.insert(self.id);
                std::mem::take(&mut r.rebuilding)
            }
            None => return,
        };
        // 3. Rebuild the resources this node now masters.
        let floor = u64::from(self.generation) << 32;
        for (name, reports) in rebuilding {
            // Never replace a resource with fewer locks than it has: one
            // rebuilt by an earlier, interrupted recovery keeps its state.
            if self.mastered.contains_key(&name) {
                continue;
            }
            let locks: Vec<(LockId, u64, Mode)> =
                reports.iter().map(|r| (r.lock, r.owner, r.mode)).collect();
            let newest = reports
                .iter()
                .filter(|r| r.source != LvbSource::None)
                .max_by_key(|r| (r.seq, r.source == LvbSource::Written));
            let someone_excludes_writers = reports
                .iter()
                .any(|r| r.source != LvbSource::None && !r.mode.compatible(Mode::PW));
            let lvb = newest.and_then(|n| {
                n.lvb
                    .as_deref()
                    .map(|v| (v, n.lvb_valid && someone_excludes_writers))
            });
            let max_seq = reports.iter().map(|r| r.seq).max().unwrap_or(0);
            match Resource::recovered(&name, self.lvb_len, &locks, lvb, floor.max(max_seq)) {
                Ok(mut res) => {
                    let held: BTreeSet<NodeId> = self.pending_hold.iter().map(|h| h.0).collect();
                    res.set_holds(&held);
                    self.stats.resources_remastered += 1;
                    self.mastered.insert(name, res);
                }
                Err(_) => self.stats.protocol_errors += 1,
            }
        }
        // Grants resume only when every master has rebuilt: a newer view
        // arriving before that makes everyone report again, and a master
        // that already rebuilt keeps what it has.
        let pending: Vec<(NodeId, u64)> = self.pending_hold.iter().copied().collect();
        let released: Vec<(NodeId, u64)> = self.released.iter().copied().collect();
        if let Some(r) = self.recovery.as_mut() {
            r.pending.extend(pending.iter().copied());
            r.released.extend(released.iter().copied());
        }
        self.send_to_all(Body::RecoveryDone { pending, released });
        self.try_finish();
    }

    fn try_finish(&mut self) {
        let members = self.members.clone();
        let done = self
            .recovery
            .as_ref()
            .is_some_and(|r| r.rebuilt && members.iter().all(|m| r.recovery_done.contains(m)));
        if !done {
            return;
        }
        if let Some(r) = self.recovery.take() {
            // Everyone ends with the same holds.
            self.released.extend(r.released);
            self.pending_hold.extend(r.pending);
            let released = &self.released;
            self.pending_hold.retain(|h| !released.contains(h));
            self.apply_holds();
        }
        self.unrecovered.clear();
        self.out.push(Output::Callback(Callback::Recovered {
            generation: self.generation,
        }));
        self.unblock();
    }
}

/// The LVB an unlock or down-conversion from `held` writes, if it writes
/// one: (valid, value).
fn written(held: Mode, flags: Flags, lvb: &Option<Vec<u8>>) -> Option<(bool, Option<Vec<u8>>)> {
    if !held.writes_lvb() {
        return None;
    }
    if flags.contains(Flags::IVVALBLK) {
        return Some((false, None));
    }
    match lvb {
        Some(v) if flags.contains(Flags::VALBLK) => Some((true, Some(v.clone()))),
        _ => None,
    }
}

/// A granted copy is worth reporting only in a mode no writer can share.
fn held_copy(
    mode: Mode,
    valid: bool,
    lvb: &Option<Vec<u8>>,
) -> (Mode, LvbSource, bool, Option<Vec<u8>>) {
    if !mode.compatible(Mode::PW) && lvb.is_some() {
        (mode, LvbSource::Granted, valid, lvb.clone())
    } else {
        (mode, LvbSource::None, false, None)
    }
}
