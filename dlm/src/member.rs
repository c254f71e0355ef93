//! Membership: which incarnations of which configured nodes form the
//! cluster now, agreed by all of them, and each node's *lease* — the time
//! until which it may go on believing the locks it holds.
//!
//! A deterministic state machine like the rest of the core: messages and
//! `now` in, messages and [`MemberEvent`]s out. It owns heartbeats, failure
//! detection, proposals and commits, slot numbers and the lease; it knows
//! nothing of locks (the [`crate::node::Node`] glue hands views to the
//! lockspace).
//!
//! The protocol, and why it is safe:
//! - Every node heartbeats every configured node. A node *acknowledges* a
//!   heartbeat only from an incarnation that is in the membership it last
//!   accepted. A node's lease runs to `send time of a heartbeat + lease`
//!   once a majority of the configured nodes (itself included) acknowledged
//!   that heartbeat. When the lease runs out the node drops every lock it
//!   believes it holds and starts over as a new incarnation.
//! - The coordinator is the lowest node id among those a node hears (within
//!   the failure timeout), if they are a majority. It proposes the set it
//!   hears under a generation above any it has seen; each proposed node
//!   accepts a proposal newer than any it accepted, and from then on never
//!   acknowledges an incarnation that the proposal dropped (it remembers
//!   them as excluded and tells them so).
//! - When all proposed members accepted, the coordinator commits — at once
//!   if nobody is being dropped, otherwise only after waiting out a lease.
//!   The wait is what makes dropping a node safe: the dropped node's last
//!   renewal needed an acknowledgement from a majority, which shares a node
//!   with the new majority; that node acknowledged before it accepted, so
//!   the dropped node's lease ended before the commit. Only then may the
//!   new membership purge and re-grant the dropped node's locks.
//! - Two proposals of one generation cannot both commit (each needs all of
//!   a majority, and a node accepts a generation once). Stale messages are
//!   recognised by generation and incarnation.
//! - Two-node mode (quorum 1) keeps running on either side of a partition;
//!   its safety then rests on storage fencing alone.
//!
//! Slots: each member keeps its slot (from 1) as long as the same
//! incarnation stays; newcomers take the lowest free one. The file system
//! uses the slot as its journal id. Slots are cluster-wide, whatever
//! lockspaces a node is in.
//!
//! Lockspaces: each node tells the lockspaces it is in (each under a join
//! id) in its heartbeats and accepts; a view records, for every member,
//! what it said when it accepted, and the coordinator proposes a new view
//! when what it hears differs from the committed one. So joins and leaves
//! of lockspaces are agreed like membership itself. Each join carries the
//! lockspace's LVB length; a view leaves out a join whose length differs
//! from the lockspace's ([`agree_lvb_lens`]).
//!
//! Clocks: all times are one node's own monotonic clock; no clock is
//! compared with another node's. Rates may drift by less than `heartbeat /
//! lease`, which the commit wait adds as margin.

use crate::resource::NodeId;
use crate::wire::{Body, Message};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most nodes in one cluster.
pub const MAX_NODES: usize = 64;

/// A lockspace a node is in: the lockspace id, the id of that join, and
/// the lockspace's LVB length as the node joined it. A node that leaves a
/// lockspace and joins it again does so under a new join id, as a
/// restarted node comes back under a new incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LsJoin {
    pub id: u32,
    pub join: u64,
    /// Bytes; all members of one lockspace have the same (see
    /// [`agree_lvb_lens`]).
    pub lvb_len: u16,
}

impl LsJoin {
    pub fn new(id: u32, join: u64, lvb_len: u16) -> LsJoin {
        LsJoin { id, join, lvb_len }
    }
}

/// One member of a view: a node, which run of it, its slot, and the
/// lockspaces it is in (sorted by lockspace id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub incarnation: u64,
    pub slot: u32,
    pub lockspaces: Vec<LsJoin>,
}

impl Member {
    /// The join id under which this member is in lockspace `ls`.
    pub fn join_of(&self, ls: u32) -> Option<u64> {
        self.lockspaces.iter().find(|j| j.id == ls).map(|j| j.join)
    }

    /// The LVB length of lockspace `ls` as this member joined it.
    pub fn lvb_len_of(&self, ls: u32) -> Option<usize> {
        self.lockspaces
            .iter()
            .find(|j| j.id == ls)
            .map(|j| usize::from(j.lvb_len))
    }
}

/// A committed membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub generation: u32,
    /// Sorted by id; ids and slots unique; slots from 1.
    pub members: Vec<Member>,
}

impl View {
    pub fn new(generation: u32, mut members: Vec<Member>) -> Result<View, String> {
        if members.is_empty() || members.len() > MAX_NODES {
            return Err(format!(
                "a view has 1..={MAX_NODES} members, got {}",
                members.len()
            ));
        }
        members.sort_by_key(|m| m.id);
        let mut slots = BTreeSet::new();
        for (i, m) in members.iter().enumerate() {
            if i > 0 && members[i - 1].id == m.id {
                return Err(format!("node {} appears twice", m.id));
            }
            if m.slot == 0 || !slots.insert(m.slot) {
                return Err(format!("node {} has slot {}, zero or taken", m.id, m.slot));
            }
            if m.lockspaces.windows(2).any(|w| w[0].id >= w[1].id) {
                return Err(format!(
                    "node {} lists its lockspaces unsorted or twice",
                    m.id
                ));
            }
        }
        Ok(View {
            generation,
            members,
        })
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn contains(&self, id: NodeId, incarnation: u64) -> bool {
        self.member(id)
            .is_some_and(|m| m.incarnation == incarnation)
    }

    fn pairs(&self) -> Vec<(NodeId, u64)> {
        self.members.iter().map(|m| (m.id, m.incarnation)).collect()
    }

    /// The members in lockspace `ls`, as a view of their own (same
    /// generation).
    pub fn of_lockspace(&self, ls: u32) -> Vec<Member> {
        self.members
            .iter()
            .filter(|m| m.join_of(ls).is_some())
            .cloned()
            .collect()
    }
}

/// Members of one lockspace agree on its LVB length (the Linux DLM checks
/// `lvblen` when a node joins). In a membership about to be proposed or
/// committed — `members` as (node, incarnation, lockspaces) — each
/// lockspace keeps the length it has: that of its members in `base` that
/// stay in it (same incarnation and join), or, for a lockspace none of
/// them stays in, that of the lowest node id listing it. A join with
/// another length is left out of the view; the joining node sees that and
/// gives the join up (see [`crate::node::Node::join_lockspace_with`]),
/// and the members are not disturbed.
pub fn agree_lvb_lens(base: Option<&View>, members: &mut [(NodeId, u64, Vec<LsJoin>)]) {
    let mut agreed: BTreeMap<u32, u16> = BTreeMap::new();
    for (id, incarnation, joins) in members.iter() {
        let Some(old) = base
            .and_then(|b| b.member(*id))
            .filter(|m| m.incarnation == *incarnation)
        else {
            continue;
        };
        for j in joins {
            if let Some(o) = old.lockspaces.iter().find(|o| o.id == j.id) {
                if o.join == j.join {
                    agreed.entry(j.id).or_insert(o.lvb_len);
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| members[i].0);
    for i in order {
        for j in &members[i].2 {
            agreed.entry(j.id).or_insert(j.lvb_len);
        }
    }
    for m in members.iter_mut() {
        m.2.retain(|j| agreed.get(&j.id) == Some(&j.lvb_len));
    }
}

/// Timing, in the driver's time units (milliseconds in the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: u64,
    /// A node not heard from for this long is considered gone.
    pub failure_timeout: u64,
    /// How long one majority acknowledgement keeps a node's locks valid.
    pub lease: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// Every configured node id (the static cluster file).
    pub nodes: Vec<NodeId>,
    pub timing: Timing,
    /// Quorum of one in a two-node cluster (safety from fencing only).
    pub two_node: bool,
}

impl MemberConfig {
    pub fn quorum(&self) -> usize {
        if self.two_node {
            1
        } else {
            self.nodes.len() / 2 + 1
        }
    }

    pub fn validate(&self, me: NodeId) -> Result<(), String> {
        let set: BTreeSet<_> = self.nodes.iter().collect();
        if set.len() != self.nodes.len() || self.nodes.len() > MAX_NODES {
            return Err(format!(
                "node ids must be unique and at most {MAX_NODES}: {:?}",
                self.nodes
            ));
        }
        if !set.contains(&me) {
            return Err(format!("node {me} is not configured ({:?})", self.nodes));
        }
        if self.two_node && self.nodes.len() != 2 {
            return Err("two-node mode needs exactly two nodes".into());
        }
        let t = self.timing;
        if t.heartbeat == 0 || t.heartbeat * 2 > t.failure_timeout || t.failure_timeout > t.lease {
            return Err(format!(
                "need 0 < 2 x heartbeat ({}) <= failure timeout ({}) <= lease ({})",
                t.heartbeat, t.failure_timeout, t.lease
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A new view is in force. `departed`: members of the previous view
    /// this node knew that are not in this one (by id and incarnation),
    /// with their slots — the journals a survivor must recover.
    /// `left`: those of `departed` that left cleanly (they held no locks,
    /// so there is nothing of theirs to recover).
    Committed {
        view: View,
        departed: Vec<Member>,
        left: Vec<Member>,
    },
    /// The lease ran out, or this incarnation was excluded: every lock this
    /// node believed it held is gone. It goes on as `incarnation`.
    Lost { incarnation: u64, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOutput {
    Send { to: NodeId, msg: Message },
    Event(MemberEvent),
}

#[derive(Debug, Clone)]
struct Heard {
    at: u64,
    incarnation: u64,
    lockspaces: Vec<LsJoin>,
}

/// What an acceptor accepted before, what it last committed, and its
/// lockspaces when it accepted.
type Acceptance = (Vec<(NodeId, u64)>, Option<View>, Vec<LsJoin>);

#[derive(Debug, Clone)]
struct Proposal {
    generation: u32,
    members: Vec<(NodeId, u64)>,
    started: u64,
    accepts: BTreeMap<NodeId, Acceptance>,
    commit_at: Option<u64>,
}

/// Heartbeats remembered for counting acknowledgements.
const HEARTBEATS_KEPT: usize = 64;

pub struct Membership {
    id: NodeId,
    incarnation: u64,
    cfg: MemberConfig,
    heard: BTreeMap<NodeId, Heard>,
    committed: Option<View>,
    /// The latest accepted proposal: whom this node acknowledges.
    accepted: Option<(u32, Vec<(NodeId, u64)>)>,
    /// Incarnations dropped by a proposal this node accepted: never
    /// acknowledged again.
    excluded: BTreeSet<(NodeId, u64)>,
    /// Incarnations that left cleanly (they hold no locks): not alive, and
    /// dropping them needs no lease wait.
    left: BTreeSet<(NodeId, u64)>,
    /// This incarnation is leaving: it acknowledges and accepts nothing.
    leaving: bool,
    /// The lockspaces this node is in or joining (sorted), as heartbeats
    /// and accepts tell them.
    lockspaces: Vec<LsJoin>,
    max_generation: u32,
    hb: u64,
    next_heartbeat: u64,
    /// (heartbeat number, send time, acknowledgers)
    sent: VecDeque<(u64, u64, BTreeSet<NodeId>)>,
    lease_until: Option<u64>,
    proposal: Option<Proposal>,
    /// First tick. A new incarnation only listens for one lease: any lease
    /// its previous incarnation helped renew has run out before it
    /// acknowledges, accepts or proposes anything (and a cluster starting
    /// together hears everyone before it forms a view).
    started: Option<u64>,
    out: Vec<MemberOutput>,
}

impl Membership {
    /// `generation_floor`: the lowest generation this node may propose. The
    /// driver passes the wall clock in seconds, so that a cluster whose
    /// nodes all went down together never reuses a generation (and so a
    /// fencing token) that a node cut off from it may still remember.
    pub fn new(
        id: NodeId,
        incarnation: u64,
        generation_floor: u32,
        cfg: MemberConfig,
    ) -> Result<Membership, String> {
        cfg.validate(id)?;
        Ok(Membership {
            id,
            incarnation,
            cfg,
            heard: BTreeMap::new(),
            committed: None,
            accepted: None,
            excluded: BTreeSet::new(),
            left: BTreeSet::new(),
            leaving: false,
            lockspaces: Vec::new(),
            max_generation: generation_floor,
            hb: 0,
            next_heartbeat: 0,
            sent: VecDeque::new(),
            lease_until: None,
            proposal: None,
            started: None,
            out: Vec::new(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn view(&self) -> Option<&View> {
        self.committed.as_ref()
    }

    pub fn config(&self) -> &MemberConfig {
        &self.cfg
    }

    /// May this node act on its locks at `now`? (It is a member and a
    /// majority acknowledged it within the lease.)
    pub fn quorate(&self, now: u64) -> bool {
        self.committed.is_some() && self.lease_until.is_some_and(|t| now < t)
    }

    pub fn lease_until(&self) -> Option<u64> {
        self.lease_until
    }

    /// Nodes heard from within the failure timeout, with the incarnation
    /// heard (this node included).
    pub fn alive(&self, now: u64) -> Vec<(NodeId, u64)> {
        let mut v: Vec<(NodeId, u64)> = self
            .heard
            .iter()
            .filter(|(id, h)| {
                **id != self.id
                    && now < h.at + self.cfg.timing.failure_timeout
                    && !self.excluded.contains(&(**id, h.incarnation))
                    && !self.left.contains(&(**id, h.incarnation))
            })
            .map(|(id, h)| (*id, h.incarnation))
            .collect();
        v.push((self.id, self.incarnation));
        v.sort_unstable();
        v
    }

    pub fn drain(&mut self) -> Vec<MemberOutput> {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, to: NodeId, generation: u32, body: Body) {
        self.out.push(MemberOutput::Send {
            to,
            msg: Message {
                generation,
                from: self.id,
                lockspace: 0,
                body,
            },
        });
    }

    fn generation(&self) -> u32 {
        self.committed.as_ref().map_or(0, |v| v.generation)
    }

    /// Gives up this incarnation: locks are gone, a new run begins.
    fn lose(&mut self, reason: String, now: u64) {
        self.incarnation += 1;
        self.started = Some(now);
        self.committed = None;
        self.accepted = None;
        self.lease_until = None;
        self.sent.clear();
        self.proposal = None;
        self.out.push(MemberOutput::Event(MemberEvent::Lost {
            incarnation: self.incarnation,
            reason,
        }));
    }

    /// Checks the lease; call with every input.
    fn check_lease(&mut self, now: u64) {
        if let (Some(_), Some(t)) = (&self.committed, self.lease_until) {
            if now >= t {
                self.lose(
                    format!(
                        "lease expired at {t}: no majority acknowledged a heartbeat in time (now {now})"
                    ),
                    now,
                );
            }
        }
    }

    /// Leaves the cluster cleanly. The caller must hold no locks and act
    /// on none from now on (the node stops taking lock traffic): that
    /// promise is what lets the others drop this incarnation at once
    /// instead of waiting out its lease.
    pub fn leave(&mut self) {
        self.leaving = true;
        self.proposal = None;
        let (g, inc) = (self.generation(), self.incarnation);
        for to in self.cfg.nodes.clone() {
            if to != self.id {
                self.send(to, g, Body::Leave { incarnation: inc });
            }
        }
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The lockspaces this node is in or joining: the coordinator proposes
    /// a new view when they differ from the committed one, and the view
    /// records what each member said when it accepted.
    pub fn set_lockspaces(&mut self, mut v: Vec<LsJoin>) {
        v.sort_unstable();
        v.dedup_by_key(|j| j.id);
        self.lockspaces = v;
    }

    pub fn lockspaces(&self) -> &[LsJoin] {
        &self.lockspaces
    }

    /// The lockspaces `id` was last heard to be in.
    fn wanted(&self, id: NodeId) -> &[LsJoin] {
        if id == self.id {
            return &self.lockspaces;
        }
        self.heard.get(&id).map_or(&[], |h| &h.lockspaces)
    }

    /// Only checks the lease (before acting on a lock message or call).
    pub fn tick_lease(&mut self, now: u64) {
        self.check_lease(now);
    }

    /// Time passes: heartbeats, lease, coordination.
    pub fn tick(&mut self, now: u64) {
        self.check_lease(now);
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.cfg.timing.heartbeat;
            self.hb += 1;
            let mut ackers = BTreeSet::new();
            ackers.insert(self.id);
            if ackers.len() >= self.cfg.quorum() {
                self.lease_until = Some(now + self.cfg.timing.lease);
            }
            self.sent.push_back((self.hb, now, ackers));
            if self.sent.len() > HEARTBEATS_KEPT {
                self.sent.pop_front();
            }
            let (g, inc, hb) = (self.max_generation, self.incarnation, self.hb);
            for to in self.cfg.nodes.clone() {
                if to != self.id {
                    self.send(
                        to,
                        g,
                        Body::Heartbeat {
                            incarnation: inc,
                            hb,
                            lockspaces: self.lockspaces.clone(),
                        },
                    );
                }
            }
        }
        self.coordinate(now);
    }

    /// Past the listening period of a new incarnation?
    fn settled(&self, now: u64) -> bool {
        self.started
            .is_some_and(|s| now >= s + self.cfg.timing.lease)
    }

    fn coordinate(&mut self, now: u64) {
        self.started.get_or_insert(now);
        if !self.settled(now) || self.leaving {
            return;
        }
        let alive = self.alive(now);
        let coordinator =
            alive.first().map(|(id, _)| *id) == Some(self.id) && alive.len() >= self.cfg.quorum();
        if let Some(p) = &self.proposal {
            if !coordinator && p.commit_at.is_none() {
                self.proposal = None;
            } else if let Some(at) = p.commit_at {
                if now >= at {
                    self.commit();
                }
                return;
            } else if now >= p.started + self.cfg.timing.failure_timeout {
                // Someone did not answer; start again with whoever is there.
                self.proposal = None;
            } else {
                return;
            }
        }
        if !coordinator {
            return;
        }
        let current = self.committed.as_ref().map(View::pairs);
        // What a view of the same members would record now (joins with a
        // disagreeing LVB length left out, so a refused join does not make
        // the coordinator propose again and again).
        let same_lockspaces = self.committed.as_ref().is_some_and(|v| {
            let mut now: Vec<(NodeId, u64, Vec<LsJoin>)> = v
                .members
                .iter()
                .map(|m| {
                    let mut w = self.wanted(m.id).to_vec();
                    w.sort_unstable();
                    (m.id, m.incarnation, w)
                })
                .collect();
            agree_lvb_lens(Some(v), &mut now);
            v.members.iter().zip(&now).all(|(m, w)| m.lockspaces == w.2)
        });
        if current.as_ref() == Some(&alive) && same_lockspaces {
            return;
        }
        let generation = self.max_generation.max(self.generation()) + 1;
        self.max_generation = generation;
        self.proposal = Some(Proposal {
            generation,
            members: alive.clone(),
            started: now,
            accepts: BTreeMap::new(),
            commit_at: None,
        });
        for (to, _) in &alive {
            if *to != self.id {
                self.send(
                    *to,
                    generation,
                    Body::Propose {
                        members: alive.clone(),
                    },
                );
            }
        }
        self.on_propose(now, self.id, generation, alive);
    }

    fn on_propose(&mut self, now: u64, from: NodeId, generation: u32, members: Vec<(NodeId, u64)>) {
        let newest = self
            .accepted
            .as_ref()
            .map_or(0, |a| a.0)
            .max(self.generation());
        if !self.settled(now)
            || self.leaving
            || generation <= newest
            || !members.contains(&(self.id, self.incarnation))
            || members.iter().any(|m| self.excluded.contains(m))
        {
            return;
        }
        self.max_generation = self.max_generation.max(generation);
        let previous = self.accepted.take().map(|a| a.1).unwrap_or_default();
        for p in &previous {
            if !members.contains(p) {
                self.excluded.insert(*p);
            }
        }
        self.accepted = Some((generation, members));
        let body = Body::Accept {
            incarnation: self.incarnation,
            previous,
            committed: self.committed.clone(),
            lockspaces: self.lockspaces.clone(),
        };
        if from == self.id {
            let msg = Message {
                generation,
                from,
                lockspace: 0,
                body,
            };
            self.on_accept(now, msg);
        } else {
            self.send(from, generation, body);
        }
    }

    fn on_accept(&mut self, now: u64, msg: Message) {
        let Body::Accept {
            incarnation,
            previous,
            committed,
            lockspaces,
        } = msg.body
        else {
            return;
        };
        if let Some(h) = self.heard.get_mut(&msg.from) {
            if h.incarnation == incarnation {
                h.lockspaces.clone_from(&lockspaces);
            }
        }
        let Some(p) = self.proposal.as_mut() else {
            return;
        };
        if p.generation != msg.generation || !p.members.contains(&(msg.from, incarnation)) {
            return;
        }
        // Sorted, as views keep them (a peer's list is unique but may
        // come in any order).
        let mut lockspaces = lockspaces;
        lockspaces.sort_unstable();
        p.accepts
            .insert(msg.from, (previous, committed, lockspaces));
        if p.accepts.len() < p.members.len() || p.commit_at.is_some() {
            return;
        }
        // Everyone accepted. Wait out a lease if anyone an acceptor may
        // have acknowledged is being dropped.
        let left = &self.left;
        let dropped = |m: &(NodeId, u64)| !p.members.contains(m) && !left.contains(m);
        let dropping = p.accepts.values().any(|(prev, com, _)| {
            prev.iter().any(dropped) || com.as_ref().is_some_and(|v| v.pairs().iter().any(dropped))
        });
        let t = self.cfg.timing;
        p.commit_at = Some(if dropping {
            now + t.lease + t.heartbeat
        } else {
            now
        });
        if !dropping {
            self.commit();
        }
    }

    fn commit(&mut self) {
        let Some(p) = self.proposal.take() else {
            return;
        };
        // Slots carry over from the newest view any acceptor committed.
        let base = p
            .accepts
            .values()
            .filter_map(|(_, c, _)| c.as_ref())
            .max_by_key(|v| v.generation)
            .cloned();
        let mut members = Vec::new();
        let mut used = BTreeSet::new();
        let mut newcomers = Vec::new();
        let mut entries: Vec<(NodeId, u64, Vec<LsJoin>)> = p
            .members
            .iter()
            .map(|&(id, incarnation)| {
                let joins = p.accepts.get(&id).map(|a| a.2.clone()).unwrap_or_default();
                (id, incarnation, joins)
            })
            .collect();
        agree_lvb_lens(base.as_ref(), &mut entries);
        for (id, incarnation, lockspaces) in entries {
            match base.as_ref().and_then(|b| b.member(id)) {
                Some(m) if m.incarnation == incarnation => {
                    used.insert(m.slot);
                    members.push(Member {
                        lockspaces,
                        ..m.clone()
                    });
                }
                _ => newcomers.push((id, incarnation, lockspaces)),
            }
        }
        let mut slot = 1;
        for (id, incarnation, lockspaces) in newcomers {
            while used.contains(&slot) {
                slot += 1;
            }
            used.insert(slot);
            members.push(Member {
                id,
                incarnation,
                slot,
                lockspaces,
            });
        }
        let view = match View::new(p.generation, members) {
            Ok(v) => v,
            Err(_) => return, // cannot happen: ids and slots made unique above
        };
        for (to, _) in &p.members {
            if *to != self.id {
                self.send(*to, p.generation, Body::Commit { view: view.clone() });
            }
        }
        self.on_commit(view);
    }

    fn on_commit(&mut self, view: View) {
        if view.generation <= self.generation() || !view.contains(self.id, self.incarnation) {
            return;
        }
        self.max_generation = self.max_generation.max(view.generation);
        let departed: Vec<Member> = self
            .committed
            .as_ref()
            .map(|old| {
                old.members
                    .iter()
                    .filter(|m| !view.contains(m.id, m.incarnation))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if self
            .accepted
            .as_ref()
            .is_none_or(|a| a.0 <= view.generation)
        {
            self.accepted = Some((view.generation, view.pairs()));
        }
        self.committed = Some(view.clone());
        let left = departed
            .iter()
            .filter(|m: &&Member| self.left.contains(&(m.id, m.incarnation)))
            .cloned()
            .collect();
        self.out.push(MemberOutput::Event(MemberEvent::Committed {
            view,
            departed,
            left,
        }));
    }

    /// A membership message from a peer.
    pub fn receive(&mut self, now: u64, msg: Message) {
        self.check_lease(now);
        if !self.cfg.nodes.contains(&msg.from) || msg.from == self.id {
            return;
        }
        let from = msg.from;
        match msg.body {
            Body::Heartbeat {
                incarnation,
                hb,
                lockspaces,
            } => {
                self.heard.insert(
                    from,
                    Heard {
                        at: now,
                        incarnation,
                        lockspaces,
                    },
                );
                self.max_generation = self.max_generation.max(msg.generation);
                let g = self.generation();
                if !self.settled(now) || self.leaving {
                    // Listening only (or gone).
                } else if self.excluded.contains(&(from, incarnation)) {
                    self.send(from, g, Body::Excluded { incarnation });
                } else if self
                    .accepted
                    .as_ref()
                    .is_some_and(|a| a.1.contains(&(from, incarnation)))
                {
                    self.send(from, g, Body::HeartbeatAck { hb, incarnation });
                }
            }
            Body::HeartbeatAck { hb, incarnation } => {
                // Acknowledgements may arrive before our commit does: the
                // acknowledger accepted a membership with us in it.
                if incarnation != self.incarnation {
                    return;
                }
                let quorum = self.cfg.quorum();
                let lease = self.cfg.timing.lease;
                if let Some((_, at, ackers)) = self.sent.iter_mut().find(|s| s.0 == hb) {
                    ackers.insert(from);
                    if ackers.len() >= quorum {
                        let until = *at + lease;
                        self.lease_until = Some(self.lease_until.map_or(until, |t| t.max(until)));
                    }
                }
            }
            Body::Leave { incarnation } => {
                self.left.insert((from, incarnation));
            }
            Body::Excluded { incarnation } if incarnation == self.incarnation => {
                self.lose(
                    format!("node {from} excluded incarnation {incarnation}"),
                    now,
                );
            }
            Body::Propose { members } => self.on_propose(now, from, msg.generation, members),
            Body::Accept { .. } => self.on_accept(now, msg),
            Body::Commit { view } if view.generation == msg.generation => self.on_commit(view),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, slot: u32, joins: Vec<LsJoin>) -> Member {
        Member {
            id,
            incarnation: 1,
            slot,
            lockspaces: joins,
        }
    }

    #[test]
    fn a_lockspace_keeps_the_lvb_length_of_its_members() {
        let (a, b) = (10, 20);
        let base = View::new(
            5,
            vec![
                member(2, 1, vec![LsJoin::new(a, 1, 64)]),
                member(3, 2, vec![]),
            ],
        )
        .expect("view");
        // Node 1 (lowest id) joins `a` with another length: left out, the
        // member staying in it decides. Nodes 1 and 3 both join `b`, new:
        // the lowest id decides.
        let mut next = vec![
            (1, 1, vec![LsJoin::new(a, 1, 32), LsJoin::new(b, 2, 32)]),
            (2, 1, vec![LsJoin::new(a, 1, 64)]),
            (3, 1, vec![LsJoin::new(a, 2, 64), LsJoin::new(b, 3, 128)]),
        ];
        agree_lvb_lens(Some(&base), &mut next);
        assert_eq!(next[0].2, [LsJoin::new(b, 2, 32)]);
        assert_eq!(next[1].2, [LsJoin::new(a, 1, 64)]);
        assert_eq!(next[2].2, [LsJoin::new(a, 2, 64)]);
        // Once its members are gone (a new incarnation of node 2 counts as
        // new), a lockspace may start over with another length.
        let mut later = vec![
            (1, 1, vec![LsJoin::new(a, 5, 32)]),
            (2, 2, vec![LsJoin::new(a, 1, 64)]),
        ];
        agree_lvb_lens(Some(&base), &mut later);
        assert_eq!(later[0].2, [LsJoin::new(a, 5, 32)]);
        assert!(later[1].2.is_empty());
        // Without a base, the lowest id decides whatever the order.
        let mut fresh = vec![
            (3, 1, vec![LsJoin::new(a, 1, 8)]),
            (2, 1, vec![LsJoin::new(a, 1, 16)]),
        ];
        agree_lvb_lens(None, &mut fresh);
        assert!(fresh[0].2.is_empty());
        assert_eq!(fresh[1].2, [LsJoin::new(a, 1, 16)]);
    }
}
