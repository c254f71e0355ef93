//! Deterministic simulation of 3–6 lockspace nodes over a simulated
//! network: every message is encoded and decoded, delivery is FIFO per
//! (sender, receiver) pair (as one QUIC stream per peer gives) with the
//! pairs interleaved at random, and clients on every node request, convert,
//! cancel and release locks on a few contended resources.
//!
//! Safety: at every step, the modes the nodes *believe* they hold on a
//! resource are pairwise compatible. Liveness: once the clients stop and
//! let go, every operation completes and no lock is left anywhere.
//! A failing seed is printed; `RDLM_SIM_SEED=<seed>` replays just that one.
//! (No node failures or partitions yet: membership and recovery are not
//! built.)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdlm::wire::Message;
use rdlm::{Callback, Flags, Lockspace, Mode, Output};
use std::collections::{BTreeMap, VecDeque};

const NAMES: [&[u8]; 3] = [b"inode/1", b"inode/2", b"rgrp/0"];
const LVB: usize = 32;

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

struct Sim {
    rng: StdRng,
    nodes: Vec<Lockspace>,
    /// (from, to) -> frames in flight, FIFO.
    net: BTreeMap<(u32, u32), VecDeque<Vec<u8>>>,
    /// (node, lkid) -> (resource, belief)
    beliefs: BTreeMap<(u32, u64), (usize, Belief)>,
    lvb_seen: BTreeMap<usize, u64>,
    ops: u64,
    grants: u64,
}

fn down(from: Mode, to: Mode) -> bool {
    to <= from && !(from == Mode::PR && to == Mode::CW)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(3..=6u32);
        let members: Vec<u32> = (1..=n).collect();
        let nodes = members
            .iter()
            .map(|&id| Lockspace::new(id, &members, 7, LVB).unwrap())
            .collect();
        Sim {
            rng,
            nodes,
            net: BTreeMap::new(),
            beliefs: BTreeMap::new(),
            lvb_seen: BTreeMap::new(),
            ops: 0,
            grants: 0,
        }
    }

    fn collect(&mut self, idx: usize) -> Result<(), String> {
        let node = self.nodes[idx].id();
        for o in self.nodes[idx].drain() {
            match o {
                Output::Send { to, msg } => {
                    // Every message crosses the wire format.
                    self.net
                        .entry((node, to))
                        .or_default()
                        .push_back(msg.encode());
                }
                Output::Callback(cb) => self.callback(node, cb)?,
            }
        }
        Ok(())
    }

    fn callback(&mut self, node: u32, cb: Callback) -> Result<(), String> {
        if std::env::var_os("RDLM_SIM_TRACE").is_some() {
            eprintln!("  node {node} <- {cb:?}");
        }
        match cb {
            Callback::Granted {
                lkid,
                mode,
                lvb,
                lvb_valid,
                ..
            } => {
                self.grants += 1;
                let e = self
                    .beliefs
                    .get_mut(&(node, lkid))
                    .ok_or(format!("grant for unknown lock {node}:{lkid}"))?;
                e.1 = Belief::Held {
                    mode,
                    pending: false,
                };
                // LVB: a counter the writers bump. A grant in a mode that
                // excludes writers (PR, PW, EX) must show the newest value;
                // NL/CR/CW may legitimately see a writer move on before
                // their grant is delivered.
                let excludes_writers = !mode.compatible(Mode::PW);
                if let (Some(v), true) = (lvb, excludes_writers) {
                    let c = u64::from_be_bytes(v[..8].try_into().unwrap());
                    let seen = self.lvb_seen.entry(e.0).or_default();
                    if lvb_valid && c < *seen {
                        return Err(format!(
                            "LVB of resource {} went back from {seen} to {c}",
                            e.0
                        ));
                    }
                    *seen = (*seen).max(c);
                }
            }
            Callback::Failed { lkid, .. } => {
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
        }
        Ok(())
    }

    fn deliver_one(&mut self) -> Result<bool, String> {
        let keys: Vec<(u32, u32)> = self
            .net
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return Ok(false);
        }
        let k = keys[self.rng.gen_range(0..keys.len())];
        let frame = self
            .net
            .get_mut(&k)
            .and_then(|q| q.pop_front())
            .ok_or("empty queue")?;
        let msg = Message::decode(&frame).map_err(|e| format!("decode: {e}"))?;
        if std::env::var_os("RDLM_SIM_TRACE").is_some() {
            eprintln!("{} -> {}: {:?}", k.0, k.1, msg.body);
        }
        let idx = (k.1 - 1) as usize;
        self.nodes[idx].receive(msg);
        self.collect(idx)?;
        Ok(true)
    }

    fn client_step(&mut self) -> Result<(), String> {
        let idx = self.rng.gen_range(0..self.nodes.len());
        let node = self.nodes[idx].id();
        let mine: Vec<(u64, usize, Belief)> = self
            .beliefs
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|((_, l), (r, b))| (*l, *r, *b))
            .collect();
        let mode = Mode::from_u8(self.rng.gen_range(0..6)).unwrap();
        if mine.len() < 3 && self.rng.gen_bool(0.4) {
            let r = self.rng.gen_range(0..NAMES.len());
            let flags = if self.rng.gen_bool(0.2) {
                Flags::NOQUEUE | Flags::VALBLK
            } else {
                Flags::VALBLK
            };
            let lkid = self.nodes[idx]
                .lock(NAMES[r], mode, flags)
                .map_err(|e| e.to_string())?;
            self.beliefs.insert((node, lkid), (r, Belief::Requesting));
            if std::env::var_os("RDLM_SIM_TRACE").is_some() {
                eprintln!(
                    "node {node}: lock {lkid} {} {mode} {flags:?}",
                    String::from_utf8_lossy(NAMES[r])
                );
            }
            self.ops += 1;
        } else if let Some(&(lkid, r, b)) = mine.get(self.rng.gen_range(0..mine.len().max(1))) {
            match b {
                Belief::Held {
                    mode: held,
                    pending: false,
                } => {
                    if std::env::var_os("RDLM_SIM_TRACE").is_some() {
                        eprintln!("node {node}: lock {lkid} held {held}, next action (unlock or convert to {mode})");
                    }
                    // Writers bump the LVB counter when they let go.
                    let lvb = held.writes_lvb().then(|| {
                        let mut v = vec![0u8; LVB];
                        let next = self.lvb_seen.get(&r).copied().unwrap_or(0) + 1;
                        v[..8].copy_from_slice(&next.to_be_bytes());
                        v
                    });
                    if self.rng.gen_bool(0.5) {
                        self.nodes[idx]
                            .unlock(lkid, Flags::VALBLK, lvb)
                            .map_err(|e| e.to_string())?;
                        self.beliefs.insert((node, lkid), (r, Belief::Releasing));
                    } else {
                        self.nodes[idx]
                            .convert(
                                lkid,
                                mode,
                                Flags::VALBLK,
                                if down(held, mode) { lvb } else { None },
                            )
                            .map_err(|e| e.to_string())?;
                        // A down-conversion stops relying on the stronger
                        // mode the moment it is sent. Between PR and CW,
                        // neither mode's guarantee covers the other, so
                        // while converting a careful client relies only on
                        // what both give: CR.
                        let incomparable =
                            matches!((held, mode), (Mode::PR, Mode::CW) | (Mode::CW, Mode::PR));
                        let believed = if down(held, mode) {
                            mode
                        } else if incomparable {
                            Mode::CR
                        } else {
                            held
                        };
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
                    }
                    self.ops += 1;
                }
                Belief::Requesting | Belief::Held { pending: true, .. }
                    if self.rng.gen_bool(0.3) =>
                {
                    self.nodes[idx].cancel(lkid).map_err(|e| e.to_string())?;
                    if std::env::var_os("RDLM_SIM_TRACE").is_some() {
                        eprintln!("node {node}: cancel {lkid}");
                    }
                    self.ops += 1;
                }
                _ => {}
            }
        }
        self.collect(idx)
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
                            "resource {}: node {} lock {} believes {am} while node {} lock {} believes {bm}",
                            String::from_utf8_lossy(NAMES[r]),
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

    fn drain_network(&mut self) -> Result<(), String> {
        let mut n = 0;
        while self.deliver_one()? {
            self.check_safety()?;
            n += 1;
            if n > 1_000_000 {
                return Err("network never went quiet".into());
            }
        }
        Ok(())
    }

    fn run(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            if self.rng.gen_bool(0.55) {
                self.deliver_one()?;
            } else {
                self.client_step()?;
            }
            self.check_safety()?;
        }
        // Everyone lets go: cancel what is pending, release what is held,
        // until nothing is left.
        for _round in 0..20 {
            self.drain_network()?;
            let all: Vec<((u32, u64), Belief)> =
                self.beliefs.iter().map(|(k, (_, b))| (*k, *b)).collect();
            if all.is_empty() {
                break;
            }
            for ((node, lkid), b) in all {
                let idx = (node - 1) as usize;
                match b {
                    Belief::Held { pending: false, .. } => {
                        self.nodes[idx]
                            .unlock(lkid, Flags::NONE, None)
                            .map_err(|e| e.to_string())?;
                        if let Some(e) = self.beliefs.get_mut(&(node, lkid)) {
                            e.1 = Belief::Releasing;
                        }
                    }
                    Belief::Requesting | Belief::Held { pending: true, .. } => {
                        let _ = self.nodes[idx].cancel(lkid);
                    }
                    Belief::Releasing => {}
                }
                self.collect(idx)?;
            }
        }
        self.drain_network()?;
        if !self.beliefs.is_empty() {
            return Err(format!("operations never completed: {:?}", self.beliefs));
        }
        for n in &self.nodes {
            if n.lock_count() != 0 || n.mastered_in_use() != 0 {
                return Err(format!(
                    "node {} still has locks after everyone let go",
                    n.id()
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn simulated_nodes_never_hold_conflicting_locks_and_always_finish() {
    let seeds: Vec<u64> = match std::env::var("RDLM_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RDLM_SIM_SEED must be a number")],
        Err(_) => (0..300).collect(),
    };
    let (mut ops, mut grants) = (0, 0);
    for seed in &seeds {
        let mut sim = Sim::new(*seed);
        if let Err(e) = sim.run(3000) {
            panic!("seed {seed}: {e}\nreplay: RDLM_SIM_SEED={seed} cargo test -p rdlm --test sim");
        }
        ops += sim.ops;
        grants += sim.grants;
    }
    eprintln!(
        "{} seeds, {ops} client operations, {grants} grants",
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
