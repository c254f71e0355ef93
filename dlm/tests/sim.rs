//! Deterministic simulation of 3–9 lock manager nodes (membership, lease,
//! lockspace and recovery — the whole sans-I/O core) over a simulated
//! network with latency, per-pair FIFO delivery (what the transport's
//! reliable streams give), partitions (messages wait until the cut heals,
//! as the transport resends them), crashes (a crashed process's queues are
//! lost; what it already sent may or may not arrive) and restarts as new
//! incarnations. Each seed uses 2 or 3 lockspaces: nodes start in a random
//! set of them and join and leave them at random (a leave only without
//! locks there). Clients on every node request, convert, cancel and release
//! locks on a few contended resources per lockspace (the same names in
//! each); unused resources are freed after a short toss time, so frees race
//! with lookups all the time; every message crosses the codec.
//!
//! Safety, checked after every step and per lockspace, over what every
//! live node *believes* (a node believes a lock from its grant until it
//! sends the release, or until the node learns its lease is gone):
//! - no two incompatible modes are believed on one resource at once;
//! - no grant sequence number (fencing token) is handed out twice on a
//!   resource;
//! - a valid LVB granted in PR/PW/EX is never older than one seen before;
//! - no node holds a recovery hold for an incarnation in its view (a clean
//!   lockspace leave puts none).
//!
//! Liveness: once the network heals and every node is back, all nodes agree
//! on one view (every lockspace join and leave done), and after the clients
//! let go every operation completes and no lock is left; then every node
//! takes and drops PR locks on many names, and once the toss time is past
//! no node keeps a resource, a directory entry or a cached master.
//!
//! A failing seed is printed; `RDLM_SIM_SEED=<seed>` replays exactly that
//! one, `RDLM_SIM_TRACE=1` prints every event, `RDLM_SIM_SEEDS=<n>` runs
//! more seeds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdlm::wire::Message;
use rdlm::{Callback, Flags, Lockspace, MemberConfig, MemberEvent, Mode, Node, Output, Timing};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const NAMES: [&[u8]; 4] = [b"inode/1", b"inode/2", b"rgrp/0", b"journal/3"];
/// The lockspaces a seed may use (2 or 3 of them); the same names in two
/// lockspaces are two resources.
const LOCKSPACES: [&str; 3] = ["fsA", "fsB", "fsC"];

/// A resource of the simulation: lockspace index * NAMES.len() + name index.
fn res_name(res: usize) -> String {
    format!(
        "{}/{}",
        LOCKSPACES[res / NAMES.len()],
        String::from_utf8_lossy(NAMES[res % NAMES.len()])
    )
}
const LVB: usize = 32;
/// Deadlock detection rounds, in simulated milliseconds.
const DEADLOCK_EVERY: u64 = 25;
const TIMING: Timing = Timing {
    heartbeat: 10,
    failure_timeout: 50,
    lease: 100,
};

/// (node, lock id on that node)
type NodeLock = (u32, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Belief {
    /// Request sent, nothing held yet.
    Requesting,
    Held {
        mode: Mode,
        pending: bool,
    },
    /// Unlock sent: nothing relied on any more.
    Releasing,
}

fn cb_lkid(cb: &Callback) -> u64 {
    match cb {
        Callback::Granted { lkid, .. }
        | Callback::Failed { lkid, .. }
        | Callback::Unlocked { lkid }
        | Callback::Blocking { lkid, .. } => *lkid,
        Callback::Recovered { .. } => 0,
    }
}

fn trace() -> bool {
    std::env::var_os("RDLM_SIM_TRACE").is_some()
}

fn down(from: Mode, to: Mode) -> bool {
    to <= from
}

struct Frame {
    at: u64,
    bytes: Vec<u8>,
}

struct Sim {
    rng: StdRng,
    now: u64,
    cfg: MemberConfig,
    nodes: Vec<Option<Node>>,
    next_incarnation: u64,
    net: BTreeMap<(u32, u32), VecDeque<Frame>>,
    /// Directed pairs whose traffic waits.
    cut: BTreeSet<(u32, u32)>,
    /// (node, lkid) -> (resource, belief)
    beliefs: BTreeMap<(u32, u64), (usize, Belief)>,
    lvb_seen: BTreeMap<usize, u64>,
    tokens: BTreeSet<(usize, u64)>,
    ops: u64,
    grants: u64,
    faults: u64,
    views: u64,
    lost: u64,
    /// Recovery holds on (a file system's mode) for this seed.
    hold: bool,
    /// resource -> dead incarnation -> the writer mode it died holding.
    dead_writers: BTreeMap<usize, BTreeMap<(u32, u64), Mode>>,
    /// Locks requested with NOEXP.
    noexp: BTreeSet<(u32, u64)>,
    releases: u64,
    deadlocks: u64,
    leaves: u64,
    /// How many of LOCKSPACES this seed uses.
    spaces: usize,
    ls_joins: u64,
    ls_leaves: u64,
    /// How long unused resources are kept (simulated ms) in this seed.
    toss: u64,
    /// Locks of the last phase (many names): granted yet?
    extra: BTreeMap<(u32, u64), bool>,
    freed: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(3..=9u32);
        let cfg = MemberConfig {
            nodes: (1..=n).collect(),
            timing: TIMING,
            two_node: false,
        };
        let hold = rng.gen_bool(0.5);
        let spaces = rng.gen_range(2..=LOCKSPACES.len());
        let toss = rng.gen_range(20..300);
        let mut sim = Sim {
            rng,
            now: 0,
            cfg,
            nodes: Vec::new(),
            next_incarnation: 1,
            net: BTreeMap::new(),
            cut: BTreeSet::new(),
            beliefs: BTreeMap::new(),
            lvb_seen: BTreeMap::new(),
            tokens: BTreeSet::new(),
            ops: 0,
            grants: 0,
            faults: 0,
            views: 0,
            lost: 0,
            hold,
            dead_writers: BTreeMap::new(),
            noexp: BTreeSet::new(),
            releases: 0,
            deadlocks: 0,
            leaves: 0,
            spaces,
            ls_joins: 0,
            ls_leaves: 0,
            toss,
            extra: BTreeMap::new(),
            freed: 0,
        };
        for id in 1..=n {
            let node = sim.make_node(id, u64::from(id) << 32, 0);
            sim.nodes.push(Some(node));
        }
        sim
    }

    /// A new process of node `id`, in a random non-empty set of the
    /// seed's lockspaces.
    fn make_node(&mut self, id: u32, inc: u64, floor: u32) -> Node {
        let mut names: Vec<&str> = LOCKSPACES[..self.spaces]
            .iter()
            .copied()
            .filter(|_| self.rng.gen_bool(0.7))
            .collect();
        if names.is_empty() {
            names.push(LOCKSPACES[self.rng.gen_range(0..self.spaces)]);
        }
        let mut node =
            Node::with_lockspaces(id, inc, floor, self.cfg.clone(), LVB, &names).unwrap();
        node.set_recovery_hold(self.hold);
        node.set_deadlock_detection(DEADLOCK_EVERY);
        node.set_toss_time(self.toss);
        node
    }

    /// The seed's lockspaces node `id` may take locks in (joined, not
    /// being left).
    fn joined(&self, id: u32) -> Vec<usize> {
        let Some(n) = self.nodes[(id - 1) as usize].as_ref() else {
            return Vec::new();
        };
        (0..self.spaces)
            .filter(|i| {
                n.lockspaces()
                    .any(|(name, _, leaving)| name == LOCKSPACES[*i] && !leaving)
            })
            .collect()
    }

    fn n(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn collect(&mut self, id: u32) -> Result<(), String> {
        let outs = match self.nodes[(id - 1) as usize].as_mut() {
            Some(node) => node.drain(),
            None => return Ok(()),
        };
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    let lat = if self.rng.gen_bool(0.02) {
                        self.rng.gen_range(5..30)
                    } else {
                        self.rng.gen_range(0..3)
                    };
                    let q = self.net.entry((id, to)).or_default();
                    let at = q.back().map_or(0, |f| f.at).max(self.now + lat);
                    q.push_back(Frame {
                        at,
                        bytes: msg.encode(),
                    });
                }
                Output::Callback(cb) => self.callback(id, cb)?,
                Output::Lockspace { .. } => {}
                Output::Membership(e) => {
                    if trace() {
                        eprintln!("[{}] node {id}: {e:?}", self.now);
                    }
                    match e {
                        MemberEvent::Committed { .. } => self.views += 1,
                        MemberEvent::Lost { incarnation, .. } => {
                            self.lost += 1;
                            self.died(id, incarnation - 1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Incarnation `inc` of node `id` crashed or lost its lease: what it
    /// held in PW/EX must not be granted against until its recovery is
    /// declared done.
    fn died(&mut self, id: u32, inc: u64) {
        if self.hold {
            for ((n, _), (r, b)) in &self.beliefs {
                if let (true, Belief::Held { mode, .. }) = (*n == id, b) {
                    if mode.writes_lvb() {
                        self.dead_writers
                            .entry(*r)
                            .or_default()
                            .insert((id, inc), *mode);
                    }
                }
            }
        }
        self.beliefs.retain(|(n, _), _| *n != id);
        self.noexp.retain(|(n, _)| *n != id);
        self.extra.retain(|(n, _), _| *n != id);
    }

    /// Recovery holds are for departed incarnations only: a member that
    /// left a lockspace cleanly (and is still in the view) is never held
    /// for.
    fn check_holds(&self) -> Result<(), String> {
        for n in self.nodes.iter().flatten() {
            let Some(v) = n.view() else { continue };
            for (name, l, _) in n.lockspaces() {
                if let Some(p) = l.pending_recovery().find(|p| v.contains(p.0, p.1)) {
                    return Err(format!(
                        "at {}: node {} holds {name} for node {}/{}, a member of its view",
                        self.now,
                        n.id(),
                        p.0,
                        p.1
                    ));
                }
            }
        }
        Ok(())
    }

    /// A node joins or leaves one of the seed's lockspaces (a leave is
    /// refused while it has locks there).
    fn ls_step(&mut self) -> Result<(), String> {
        let live = self.live();
        if live.is_empty() {
            return Ok(());
        }
        let id = live[self.rng.gen_range(0..live.len())];
        let ls = self.rng.gen_range(0..self.spaces);
        let now = self.now;
        let joined = self.joined(id).contains(&ls);
        let Some(n) = self.nodes[(id - 1) as usize].as_mut() else {
            return Ok(());
        };
        if joined {
            if n.leave_lockspace(now, LOCKSPACES[ls]).is_ok() {
                if trace() {
                    eprintln!("[{now}] node {id}: LEAVE {}", LOCKSPACES[ls]);
                }
                self.ls_leaves += 1;
            }
        } else if n.join_lockspace(LOCKSPACES[ls]).is_ok() {
            if trace() {
                eprintln!("[{now}] node {id}: JOIN {}", LOCKSPACES[ls]);
            }
            self.ls_joins += 1;
        }
        self.collect(id)
    }

    /// Whether any live node still knows that incarnation `d` of a node
    /// left (or has yet to learn it): if none does, the cluster forgot, and
    /// recovery falls to the next first mounter.
    fn known(&self, ls: usize, d: (u32, u64)) -> bool {
        self.nodes.iter().flatten().any(|n| {
            n.view().is_some_and(|v| v.contains(d.0, d.1))
                || n.lockspace_named(LOCKSPACES[ls])
                    .is_some_and(|l| l.pending_recovery().any(|p| *p == d))
        })
    }

    /// Plays the file system: a survivor "replays the journals" of the
    /// departed nodes it knows of and says so.
    fn release_recovered(&mut self) -> Result<(), String> {
        let now = self.now;
        let ls = self.rng.gen_range(0..self.spaces);
        let name = LOCKSPACES[ls];
        let ready: Vec<u32> = self
            .live()
            .into_iter()
            .filter(|id| {
                self.nodes[(*id - 1) as usize].as_ref().is_some_and(|n| {
                    n.quorate(now)
                        && n.lockspace_named(name).is_some_and(|l| {
                            !l.is_recovering() && l.pending_recovery().next().is_some()
                        })
                })
            })
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let by = ready[self.rng.gen_range(0..ready.len())];
        let Some(n) = self.nodes[(by - 1) as usize].as_mut() else {
            return Ok(());
        };
        let pending: Vec<(u32, u64)> = n
            .lockspace_named(name)
            .map(|l| l.pending_recovery().copied().collect())
            .unwrap_or_default();
        for d in pending {
            if trace() {
                eprintln!(
                    "[{now}] node {by}: recovery of node {}/{} in {name} done",
                    d.0, d.1
                );
            }
            n.recovery_done_in(now, name, d.0, d.1)
                .map_err(|e| e.to_string())?;
            for (res, m) in self.dead_writers.iter_mut() {
                if res / NAMES.len() == ls {
                    m.remove(&d);
                }
            }
            self.releases += 1;
        }
        self.collect(by)
    }

    fn callback(&mut self, node: u32, cb: Callback) -> Result<(), String> {
        if trace() {
            eprintln!("[{}]   node {node} <- {cb:?}", self.now);
        }
        let key = (node, cb_lkid(&cb));
        if let Some(granted) = self.extra.get_mut(&key) {
            match cb {
                Callback::Granted { .. } => *granted = true,
                Callback::Unlocked { .. } => {
                    self.extra.remove(&key);
                }
                Callback::Failed { error, .. } => {
                    return Err(format!("PR lock {node}:{} failed: {error}", key.1))
                }
                _ => {}
            }
            return Ok(());
        }
        match cb {
            Callback::Granted {
                lkid,
                mode,
                lvb,
                lvb_valid,
                seq,
                ..
            } => {
                self.grants += 1;
                let e = self
                    .beliefs
                    .get_mut(&(node, lkid))
                    .ok_or(format!("grant for unknown lock {node}:{lkid}"))?;
                // A down-conversion gives no new access: holds let it by.
                let down_conversion =
                    matches!(e.1, Belief::Held { mode: before, .. } if mode <= before);
                e.1 = Belief::Held {
                    mode,
                    pending: false,
                };
                let r = e.0;
                if !self.noexp.remove(&(node, lkid)) && !down_conversion {
                    let blocking: Vec<((u32, u64), Mode)> = self
                        .dead_writers
                        .get(&r)
                        .map(|m| {
                            m.iter()
                                .filter(|(_, dm)| !mode.compatible(**dm))
                                .map(|(d, dm)| (*d, *dm))
                                .collect()
                        })
                        .unwrap_or_default();
                    for (d, dm) in blocking {
                        if self.known(r / NAMES.len(), d) {
                            return Err(format!(
                                "{} granted {mode} to {node}:{lkid} while node {}/{}, dead holding {dm}, was not recovered",
                                res_name(r),
                                d.0,
                                d.1
                            ));
                        }
                        // Forgotten by every live node: not the DLM's to hold.
                        if let Some(m) = self.dead_writers.get_mut(&r) {
                            m.remove(&d);
                        }
                    }
                }
                if !self.tokens.insert((r, seq)) {
                    return Err(format!(
                        "grant sequence {seq:#x} of {} handed out twice",
                        res_name(r)
                    ));
                }
                // LVB: a counter the writers bump. A grant in a mode that
                // excludes writers (PR, PW, EX) must show the newest value
                // unless flagged not valid.
                if let (Some(v), true) = (lvb, !mode.compatible(Mode::PW)) {
                    let c = u64::from_be_bytes(v[..8].try_into().unwrap());
                    let seen = self.lvb_seen.entry(r).or_default();
                    if lvb_valid && c < *seen {
                        return Err(format!(
                            "LVB of {} went back from {seen} to {c}",
                            res_name(r)
                        ));
                    }
                    if lvb_valid {
                        *seen = (*seen).max(c);
                    }
                }
            }
            Callback::Failed { lkid, error } => {
                if matches!(error, rdlm::LockError::Cycle { .. }) {
                    self.deadlocks += 1;
                }
                let e = self
                    .beliefs
                    .get_mut(&(node, lkid))
                    .ok_or(format!("failure for unknown lock {node}:{lkid}"))?;
                match e.1 {
                    Belief::Requesting => {
                        self.beliefs.remove(&(node, lkid));
                    }
                    Belief::Held { mode, .. } => {
                        e.1 = Belief::Held {
                            mode,
                            pending: false,
                        }
                    }
                    Belief::Releasing => return Err(format!("unlock of {node}:{lkid} failed")),
                }
            }
            Callback::Unlocked { lkid } => {
                if self.beliefs.remove(&(node, lkid)).is_none() {
                    return Err(format!("unlock completion for unknown lock {node}:{lkid}"));
                }
            }
            Callback::Blocking { lkid, .. } => {
                if !matches!(
                    self.beliefs.get(&(node, lkid)),
                    Some((_, Belief::Held { .. }))
                ) {
                    return Err(format!(
                        "blocking callback to {node}:{lkid}, which holds nothing"
                    ));
                }
            }
            Callback::Recovered { .. } => {}
        }
        Ok(())
    }

    fn deliverable(&self) -> Vec<(u32, u32)> {
        self.net
            .iter()
            .filter(|(k, q)| !self.cut.contains(k) && q.front().is_some_and(|f| f.at <= self.now))
            .map(|(k, _)| *k)
            .collect()
    }

    fn deliver(&mut self, k: (u32, u32)) -> Result<(), String> {
        let frame = self
            .net
            .get_mut(&k)
            .and_then(|q| q.pop_front())
            .ok_or("empty queue")?;
        let msg = Message::decode(&frame.bytes).map_err(|e| format!("decode: {e}"))?;
        if trace()
            && !matches!(
                msg.body,
                rdlm::wire::Body::Heartbeat { .. } | rdlm::wire::Body::HeartbeatAck { .. }
            )
        {
            eprintln!(
                "[{}] {} -> {}: g{} {:?}",
                self.now, k.0, k.1, msg.generation, msg.body
            );
        }
        let now = self.now;
        if let Some(node) = self.nodes[(k.1 - 1) as usize].as_mut() {
            node.receive(now, msg);
            self.collect(k.1)?;
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<(), String> {
        self.now += self.rng.gen_range(1..=4);
        if self.rng.gen_bool(0.05) {
            self.release_recovered()?;
        }
        for id in 1..=self.n() {
            let now = self.now;
            if let Some(node) = self.nodes[(id - 1) as usize].as_mut() {
                node.tick(now);
                self.collect(id)?;
            }
        }
        Ok(())
    }

    fn live(&self) -> Vec<u32> {
        (1..=self.n())
            .filter(|id| self.nodes[(*id - 1) as usize].is_some())
            .collect()
    }

    fn fault(&mut self) {
        self.faults += 1;
        let n = self.n();
        let what = self.rng.gen_range(0..7);
        let id = self.rng.gen_range(1..=n);
        match what {
            0 if self.nodes[(id - 1) as usize].is_some() => {
                if trace() {
                    eprintln!("[{}] CRASH node {id}", self.now);
                }
                let inc = self.nodes[(id - 1) as usize]
                    .as_ref()
                    .map_or(0, |n| n.incarnation());
                self.nodes[(id - 1) as usize] = None;
                self.died(id, inc);
                let keep_sent = self.rng.gen_bool(0.5);
                self.net
                    .retain(|(from, to), _| *to != id && (keep_sent || *from != id));
            }
            1 | 0 => {
                if self.nodes[(id - 1) as usize].is_none() {
                    if trace() {
                        eprintln!("[{}] RESTART node {id}", self.now);
                    }
                    let inc = (u64::from(id) << 32) + self.next_incarnation * 1000;
                    self.next_incarnation += 1;
                    let node = self.make_node(id, inc, self.now as u32);
                    self.nodes[(id - 1) as usize] = Some(node);
                    // The transport discards what the old process had not
                    // yet received or sent.
                    self.net.retain(|(from, to), _| *to != id && *from != id);
                }
            }
            2 => {
                if trace() {
                    eprintln!("[{}] ISOLATE node {id}", self.now);
                }
                for o in 1..=n {
                    if o != id {
                        self.cut.insert((id, o));
                        self.cut.insert((o, id));
                    }
                }
            }
            3 => {
                let side: BTreeSet<u32> = (1..=n).filter(|_| self.rng.gen_bool(0.5)).collect();
                if trace() {
                    eprintln!("[{}] SPLIT {side:?}", self.now);
                }
                for a in 1..=n {
                    for b in 1..=n {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
            4 => {
                let o = self.rng.gen_range(1..=n);
                if o != id {
                    if trace() {
                        eprintln!("[{}] CUT {id} -> {o}", self.now);
                    }
                    self.cut.insert((id, o));
                }
            }
            5 => {
                if trace() {
                    eprintln!("[{}] HEAL", self.now);
                }
                self.cut.clear();
            }
            _ => {
                // A clean leave, possible only with no locks; the process
                // then exits (what it sent may still arrive).
                let now = self.now;
                let left = self.nodes[(id - 1) as usize]
                    .as_mut()
                    .is_some_and(|n| n.leave(now).is_ok());
                if left {
                    if trace() {
                        eprintln!("[{now}] LEAVE node {id}");
                    }
                    let _ = self.collect(id);
                    self.nodes[(id - 1) as usize] = None;
                    self.net.retain(|(_, to), _| *to != id);
                    self.leaves += 1;
                }
            }
        }
    }

    fn client_step(&mut self) -> Result<(), String> {
        let live = self.live();
        let node = live[self.rng.gen_range(0..live.len())];
        let now = self.now;
        let mine: Vec<(u64, usize, Belief)> = self
            .beliefs
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|((_, l), (r, b))| (*l, *r, *b))
            .collect();
        let mode = Mode::from_u8(self.rng.gen_range(0..6)).unwrap();
        let flags = if self.rng.gen_bool(0.2) {
            Flags::NOQUEUE | Flags::VALBLK
        } else {
            Flags::VALBLK
        };
        let joined = self.joined(node);
        let ls = joined
            .get(self.rng.gen_range(0..joined.len().max(1)))
            .copied();
        let r = self.rng.gen_range(0..NAMES.len()) + ls.unwrap_or(0) * NAMES.len();
        let pick = self.rng.gen_range(0..mine.len().max(1));
        let unlock = self.rng.gen_bool(0.5);
        let cancel = self.rng.gen_bool(0.3);
        let next_lvb = self.lvb_seen.get(&r).copied().unwrap_or(0);
        let Some(ls_node) = self.nodes[(node - 1) as usize].as_mut() else {
            return Ok(());
        };
        let timeout = self.rng.gen_bool(0.1).then(|| self.rng.gen_range(1..40));
        let new_lock = mine.len() < 3 && (mine.is_empty() || self.rng.gen_bool(0.4));
        if let (true, Some(ls)) = (new_lock, ls) {
            let flags = if timeout.is_some() {
                flags | Flags::TIMEOUT
            } else {
                flags
            };
            let noexp = self.rng.gen_bool(0.1);
            let flags = if noexp { flags | Flags::NOEXP } else { flags };
            // All of a node's locks in a lockspace belong to one owner, so
            // waits between nodes can form cycles for deadlock detection to
            // break (it works within one lockspace).
            let lkid = ls_node
                .lock_in(
                    now,
                    LOCKSPACES[ls],
                    u64::from(node) * 16 + ls as u64,
                    NAMES[r % NAMES.len()],
                    mode,
                    flags,
                    timeout,
                )
                .map_err(|e| e.to_string())?;
            if trace() {
                eprintln!(
                    "[{now}] node {node}: lock {lkid} {} {mode} {flags:?}",
                    res_name(r)
                );
            }
            // Before collecting: a locally mastered lock is answered at once.
            self.beliefs.insert((node, lkid), (r, Belief::Requesting));
            if noexp {
                self.noexp.insert((node, lkid));
            }
            self.collect(node)?;
            self.ops += 1;
            return Ok(());
        }
        let Some(&(lkid, r, b)) = mine.get(pick) else {
            return Ok(());
        };
        match b {
            Belief::Held {
                mode: held,
                pending: false,
            } => {
                let next = self.lvb_seen.get(&r).copied().unwrap_or(0).max(next_lvb) + 1;
                // Writers bump the LVB counter when they let go.
                let lvb = held.writes_lvb().then(|| {
                    let mut v = vec![0u8; LVB];
                    v[..8].copy_from_slice(&next.to_be_bytes());
                    v
                });
                if unlock {
                    if trace() {
                        eprintln!("[{now}] node {node}: unlock {lkid} (held {held})");
                    }
                    self.beliefs.insert((node, lkid), (r, Belief::Releasing));
                    ls_node
                        .unlock(now, lkid, Flags::VALBLK, lvb)
                        .map_err(|e| e.to_string())?;
                } else {
                    if held.incomparable(mode) {
                        return Ok(());
                    }
                    if trace() {
                        eprintln!("[{now}] node {node}: convert {lkid} {held} -> {mode}");
                    }
                    // A down-conversion stops relying on the stronger mode
                    // the moment it is sent.
                    let believed = if down(held, mode) { mode } else { held };
                    self.beliefs.insert(
                        (node, lkid),
                        (
                            r,
                            Belief::Held {
                                mode: believed,
                                pending: true,
                            },
                        ),
                    );
                    ls_node
                        .convert(
                            now,
                            lkid,
                            mode,
                            Flags::VALBLK,
                            if down(held, mode) { lvb } else { None },
                        )
                        .map_err(|e| e.to_string())?;
                }
                self.ops += 1;
            }
            Belief::Requesting | Belief::Held { pending: true, .. } if cancel => {
                if trace() {
                    eprintln!("[{now}] node {node}: cancel {lkid}");
                }
                // A cancel may find nothing pending any more; that is fine.
                let _ = ls_node.cancel(now, lkid);
                self.ops += 1;
            }
            _ => {}
        }
        self.collect(node)
    }

    fn check_safety(&self) -> Result<(), String> {
        let mut by_res: BTreeMap<usize, Vec<(NodeLock, Mode)>> = BTreeMap::new();
        for (k, (r, b)) in &self.beliefs {
            if let Belief::Held { mode, .. } = b {
                by_res.entry(*r).or_default().push((*k, *mode));
            }
        }
        for (r, held) in by_res {
            for (i, (a, am)) in held.iter().enumerate() {
                for (b, bm) in &held[i + 1..] {
                    if !am.compatible(*bm) {
                        return Err(format!(
                            "at {}: resource {}: node {} lock {} believes {am} while node {} lock {} believes {bm}",
                            self.now,
                            res_name(r),
                            a.0,
                            a.1,
                            b.0,
                            b.1
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        let ready = self.deliverable();
        let x: f64 = self.rng.gen();
        if faults && x < 0.002 {
            self.fault();
        } else if faults && x < 0.004 {
            self.ls_step()?;
        } else if x < 0.25 && !self.live().is_empty() && faults {
            self.client_step()?;
        } else if !ready.is_empty() && x < 0.995 {
            // Nodes are fast and the network has latency: time moves on
            // mostly when nothing has arrived.
            let k = ready[self.rng.gen_range(0..ready.len())];
            self.deliver(k)?;
        } else {
            self.advance()?;
            self.check_holds()?;
        }
        self.check_safety()
    }

    /// Runs without faults or clients until `done` holds, for at most
    /// `limit` simulated milliseconds.
    fn settle(&mut self, limit: u64, done: impl Fn(&Sim) -> bool) -> Result<bool, String> {
        let until = self.now + limit;
        while self.now < until {
            if done(self) {
                return Ok(true);
            }
            self.step(false)?;
        }
        Ok(done(self))
    }

    fn state(&self) -> String {
        let views: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| {
                format!(
                    "node {} inc {}: {:?} recovering={:?} quorate={} lease={:?} stats={:?}",
                    n.id(),
                    n.incarnation(),
                    n.view().map(|v| (v.generation, v.ids())),
                    n.lockspaces()
                        .map(|(name, l, leaving)| format!(
                            "{name}{} g{} {:?} {:?} locks {} holds {:?} resources {} dir {}",
                            if leaving { " (leaving)" } else { "" },
                            l.generation(),
                            l.members(),
                            l.recovery_status(),
                            l.lock_count(),
                            l.pending_recovery().collect::<Vec<_>>(),
                            l.resource_count(),
                            l.directory_len(),
                        ))
                        .collect::<Vec<_>>(),
                    n.quorate(self.now),
                    n.membership().lease_until(),
                    n.lockspaces()
                        .map(|(_, l, _)| l.stats())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        format!("now {}\n{}", self.now, views.join("\n"))
    }

    fn agreed(&self) -> bool {
        let mut views = BTreeSet::new();
        for n in self.nodes.iter() {
            let Some(n) = n else { return false };
            let Some(v) = n.view() else { return false };
            // Every lockspace of every node is in the view (joins and
            // leaves done) and recovered.
            if v.members.len() != self.nodes.len()
                || n.lockspaces().any(|(_, l, leaving)| {
                    leaving || l.is_recovering() || l.generation() != v.generation
                })
                || !n.quorate(self.now)
            {
                return false;
            }
            views.insert(v.generation);
        }
        views.len() == 1
    }

    fn run(&mut self, steps: usize) -> Result<(), String> {
        // Start: everyone joins.
        if !self.settle(5_000, Sim::agreed)? {
            return Err(format!(
                "the first membership never formed:\n{}",
                self.state()
            ));
        }
        for _ in 0..steps {
            self.step(true)?;
        }
        // Heal and bring everyone back.
        self.cut.clear();
        for id in 1..=self.n() {
            if self.nodes[(id - 1) as usize].is_none() {
                let inc = (u64::from(id) << 32) + self.next_incarnation * 1000;
                self.next_incarnation += 1;
                let node = self.make_node(id, inc, self.now as u32);
                self.nodes[(id - 1) as usize] = Some(node);
                self.net.retain(|(from, to), _| *to != id && *from != id);
            }
        }
        if !self.settle(20_000, Sim::agreed)? {
            return Err(format!(
                "no agreement 20 s after healing:\n{}",
                self.state()
            ));
        }
        // Everyone lets go: cancel what is pending, release what is held.
        for _round in 0..30 {
            self.settle(500, |s| {
                s.deliverable().is_empty() && s.net.values().all(|q| q.is_empty())
            })?;
            let all: Vec<((u32, u64), Belief)> =
                self.beliefs.iter().map(|(k, (_, b))| (*k, *b)).collect();
            if all.is_empty() {
                break;
            }
            let now = self.now;
            for ((node, lkid), b) in all {
                let Some(n) = self.nodes[(node - 1) as usize].as_mut() else {
                    continue;
                };
                match b {
                    Belief::Held { pending: false, .. } => {
                        n.unlock(now, lkid, Flags::NONE, None)
                            .map_err(|e| e.to_string())?;
                        if let Some(e) = self.beliefs.get_mut(&(node, lkid)) {
                            e.1 = Belief::Releasing;
                        }
                    }
                    Belief::Requesting | Belief::Held { pending: true, .. } => {
                        let _ = n.cancel(now, lkid);
                    }
                    Belief::Releasing => {}
                }
                self.collect(node)?;
            }
        }
        self.settle(2_000, |s| s.beliefs.is_empty())?;
        if !self.beliefs.is_empty() {
            return Err(format!("operations never completed: {:?}", self.beliefs));
        }
        // A node may have had to start over meanwhile (an exclusion left by
        // a proposal that never committed): let that recovery finish.
        if !self.settle(20_000, Sim::agreed)? {
            return Err(format!("no agreement after letting go:\n{}", self.state()));
        }
        // Messages still in flight (latency) land.
        self.settle(200, |_| false)?;
        for n in self.nodes.iter().flatten() {
            for (name, ls, _) in n.lockspaces() {
                if ls.lock_count() != 0 || ls.mastered_in_use() != 0 {
                    let left: Vec<String> = ls
                        .resources()
                        .filter(|r| !r.is_unused())
                        .map(|r| {
                            format!("{}: {:?}", String::from_utf8_lossy(r.name()), r.holders())
                        })
                        .collect();
                    return Err(format!(
                        "node {} still has locks in {name} after everyone let go ({} own, {} mastered: {left:?})",
                        n.id(),
                        ls.lock_count(),
                        ls.mastered_in_use()
                    ));
                }
            }
        }
        self.many_names_then_nothing()
    }

    /// Every node takes PR locks on many names in each of its lockspaces
    /// and lets go: once the toss time is past, no node keeps a resource, a
    /// directory entry or a cached master.
    fn many_names_then_nothing(&mut self) -> Result<(), String> {
        let now = self.now;
        for id in 1..=self.n() {
            for ls in self.joined(id) {
                let Some(n) = self.nodes[(id - 1) as usize].as_mut() else {
                    continue;
                };
                for i in 0..40u32 {
                    // Half the names are this node's alone, half shared.
                    let name = if i % 2 == 0 {
                        format!("many/{id}/{i}")
                    } else {
                        format!("many/{i}")
                    };
                    let lkid = n
                        .lock_in(
                            now,
                            LOCKSPACES[ls],
                            0,
                            name.as_bytes(),
                            Mode::PR,
                            Flags::NONE,
                            None,
                        )
                        .map_err(|e| e.to_string())?;
                    self.extra.insert((id, lkid), false);
                }
                self.collect(id)?;
            }
        }
        if !self.settle(10_000, |s| s.extra.values().all(|g| *g))? {
            let waiting: Vec<&(u32, u64)> = self
                .extra
                .iter()
                .filter(|(_, g)| !**g)
                .map(|(k, _)| k)
                .take(10)
                .collect();
            return Err(format!(
                "many PR locks never granted ({waiting:?}...):\n{}",
                self.state()
            ));
        }
        let now = self.now;
        let all: Vec<(u32, u64)> = self.extra.keys().copied().collect();
        for (id, lkid) in all {
            if let Some(n) = self.nodes[(id - 1) as usize].as_mut() {
                n.unlock(now, lkid, Flags::NONE, None)
                    .map_err(|e| e.to_string())?;
                self.collect(id)?;
            }
        }
        if !self.settle(10_000, |s| s.extra.is_empty())? {
            return Err(format!("many unlocks never completed:\n{}", self.state()));
        }
        let empty = |s: &Sim| {
            s.nodes.iter().flatten().all(|n| {
                n.lockspaces().all(|(_, l, _)| {
                    l.resource_count() == 0 && l.directory_len() == 0 && l.cached_masters() == 0
                })
            })
        };
        if !self.settle(self.toss * 4 + 2_000, empty)? {
            let left: Vec<String> = self
                .nodes
                .iter()
                .flatten()
                .flat_map(|n| {
                    n.lockspaces().map(move |(name, l, _)| {
                        format!(
                            "node {} {name}: {} resources, {} directory entries, {} cached masters, {} tossed",
                            n.id(),
                            l.resource_count(),
                            l.directory_len(),
                            l.cached_masters(),
                            l.tossed()
                        )
                    })
                })
                .collect();
            return Err(format!(
                "unused resources not freed {} ms after the toss time:\n{}",
                self.toss * 4 + 2_000,
                left.join("\n")
            ));
        }
        self.freed = self
            .nodes
            .iter()
            .flatten()
            .flat_map(|n| n.lockspaces().map(|(_, l, _)| l.stats().resources_freed))
            .sum();
        Ok(())
    }
}

#[test]
fn simulated_cluster_never_holds_conflicting_locks_and_always_finishes() {
    let seeds: Vec<u64> = match std::env::var("RDLM_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RDLM_SIM_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("RDLM_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (0..n).collect()
        }
    };
    let (mut ops, mut grants, mut faults, mut views, mut lost, mut releases, mut deadlocks) =
        (0, 0, 0, 0, 0, 0, 0);
    let (mut leaves, mut ls_joins, mut ls_leaves, mut freed) = (0, 0, 0, 0);
    for seed in &seeds {
        let mut sim = Sim::new(*seed);
        if let Err(e) = sim.run(20_000) {
            panic!("seed {seed}: {e}\nreplay: RDLM_SIM_SEED={seed} RDLM_SIM_TRACE=1 cargo test --release -p rdlm --test sim");
        }
        ops += sim.ops;
        grants += sim.grants;
        faults += sim.faults;
        views += sim.views;
        lost += sim.lost;
        releases += sim.releases;
        deadlocks += sim.deadlocks;
        leaves += sim.leaves;
        ls_joins += sim.ls_joins;
        ls_leaves += sim.ls_leaves;
        freed += sim.freed;
    }
    eprintln!(
        "{} seeds: {ops} client operations, {grants} grants, {faults} faults, {views} views committed, {lost} leases lost, {releases} recovery holds released, {deadlocks} deadlocks broken, {leaves} clean leaves, {ls_joins} lockspace joins, {ls_leaves} lockspace leaves, {freed} resources freed (by the live processes)",
        seeds.len()
    );
}

#[test]
fn a_resource_used_by_one_node_costs_no_messages_after_the_lookup() {
    let members = [1, 2, 3];
    let mut nodes: Vec<Lockspace> = members
        .iter()
        .map(|&i| Lockspace::new(i, &members, 1, LVB).unwrap())
        .collect();
    // Pick a name whose directory is node 2, used only by node 1.
    let name = (0..1000u32)
        .map(|i| format!("inode/{i}").into_bytes())
        .find(|n| nodes[0].dir_node(n) == 2)
        .unwrap();
    let lkid = nodes[0].lock(&name, Mode::EX, Flags::NONE).unwrap();
    let out = nodes[0].drain();
    assert!(
        matches!(&out[..], [Output::Send { to: 2, .. }]),
        "one lookup to the directory: {out:?}"
    );
    let Output::Send { msg, .. } = &out[0] else {
        unreachable!()
    };
    nodes[1].receive(msg.clone());
    let reply = nodes[1].drain();
    let Output::Send { msg, .. } = &reply[0] else {
        panic!("{reply:?}")
    };
    nodes[0].receive(msg.clone());
    assert_eq!(
        nodes[0].master_of(&name),
        Some(1),
        "the first asker became master"
    );
    let out = nodes[0].drain();
    assert!(
        matches!(&out[..], [Output::Callback(Callback::Granted { .. })]),
        "{out:?}"
    );
    let before = nodes[0].stats().messages_sent;
    for _ in 0..100 {
        nodes[0].convert(lkid, Mode::PR, Flags::NONE, None).unwrap();
        nodes[0].convert(lkid, Mode::EX, Flags::NONE, None).unwrap();
    }
    nodes[0].unlock(lkid, Flags::NONE, None).unwrap();
    let l2 = nodes[0].lock(&name, Mode::PR, Flags::NONE).unwrap();
    nodes[0].unlock(l2, Flags::NONE, None).unwrap();
    assert_eq!(
        nodes[0].stats().messages_sent,
        before,
        "locally mastered operations sent messages"
    );
    let out = nodes[0].drain();
    assert!(out.iter().all(|o| matches!(o, Output::Callback(_))));
}

#[test]
fn stale_generation_and_strangers_are_dropped() {
    let mut n = Lockspace::new(1, &[1, 2], 5, LVB).unwrap();
    for (generation, from) in [(4, 2), (5, 9)] {
        n.receive(Message {
            generation,
            from,
            lockspace: n.lockspace_id(),
            body: rdlm::wire::Body::Lookup {
                name: b"x".to_vec(),
            },
        });
    }
    assert!(n.drain().is_empty());
    assert_eq!(n.stats().stale_dropped, 2);
    assert!(Lockspace::new(3, &[1, 2], 1, LVB).is_err());
    assert!(n.lock(b"", Mode::EX, Flags::NONE).is_err());
    assert!(n.lock(&[b'a'; 65], Mode::EX, Flags::NONE).is_err());
    assert!(n.unlock(42, Flags::NONE, None).is_err());
}

#[test]
fn a_request_with_a_timeout_fails_with_timed_out_at_its_deadline() {
    let members = [1, 2];
    let mut a = Lockspace::new(1, &members, 1, LVB).unwrap();
    let mut b = Lockspace::new(2, &members, 1, LVB).unwrap();
    let name = (0..100u32)
        .map(|i| format!("inode/{i}").into_bytes())
        .find(|n| a.dir_node(n) == 1)
        .unwrap();
    a.lock(&name, Mode::EX, Flags::NONE).unwrap();
    assert!(matches!(
        a.drain()[..],
        [Output::Callback(Callback::Granted { .. })]
    ));
    assert!(b.lock_for(&name, Mode::PR, Flags::TIMEOUT, None).is_err());
    b.tick(100);
    let lkid = b
        .lock_for(&name, Mode::PR, Flags::TIMEOUT, Some(50))
        .unwrap();
    // Deliver everything between the two, with b's clock at `now`.
    let pump = |a: &mut Lockspace, b: &mut Lockspace| -> Vec<Callback> {
        let mut cbs = Vec::new();
        loop {
            let mut moved = false;
            for (from, to) in [(0, 1), (1, 0)] {
                let out = if from == 0 { a.drain() } else { b.drain() };
                for o in out {
                    match o {
                        Output::Send { msg, .. } => {
                            moved = true;
                            if to == 0 {
                                a.receive(msg)
                            } else {
                                b.receive(msg)
                            }
                        }
                        Output::Callback(cb) if from == 1 => cbs.push(cb),
                        _ => {}
                    }
                }
            }
            if !moved {
                return cbs;
            }
        }
    };
    assert!(pump(&mut a, &mut b).is_empty(), "granted next to EX");
    b.tick(149);
    assert!(pump(&mut a, &mut b).is_empty(), "timed out early");
    b.tick(150);
    let cbs = pump(&mut a, &mut b);
    assert_eq!(
        cbs,
        [Callback::Failed {
            lkid,
            error: rdlm::LockError::TimedOut
        }]
    );
    assert_eq!(b.lock_count(), 0);
}
