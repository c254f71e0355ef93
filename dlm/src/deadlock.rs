//! Deadlock detection across nodes: finding cycles of owners waiting for
//! each other through several resources, which no single master can see.
//!
//! Periodic global collection, as simple as it can be while sound enough:
//! the lowest member (the detector) asks every member for the wait-for
//! edges on the resources it masters (`Resource::wait_edges`), builds the
//! graph of *owners* (a lock's owner is a transaction of its node, given
//! with `lock_as`; owner 0 means the lock alone, which cannot close a
//! cycle across resources), and looks for cycles. Edges are gathered at
//! slightly different times, so a cycle seen once may be a phantom; a cycle
//! whose waiting locks are all still waiting in the next round is real
//! (locks in a true deadlock wait for ever), and only then is a victim
//! chosen: the waiting request of the highest owner in the cycle, which
//! its master fails with `LockError::Cycle` naming the cycle's locks.
//! Conversion deadlocks on one resource are caught at request time by the
//! resource itself.
//!
//! Owns the detector's round state; may not change locks except by failing
//! a chosen victim's pending request.

use crate::lockspace::Lockspace;
use crate::resource::{LockError, LockId, NodeId};
use crate::wire::{Body, WaitEdge, MAX_EDGES};
use std::collections::{BTreeMap, BTreeSet};

/// An owner in the wait-for graph.
type Owner = (NodeId, u64);

fn owner_of(lock: LockId, owner: u64) -> Owner {
    if owner == 0 {
        // The lock alone: a key no real owner uses.
        (lock.node, lock.lkid | 1 << 63)
    } else {
        (lock.node, owner)
    }
}

/// The round being collected: its number, when it started, the edges each
/// master reported, and whether every report was complete.
type Round = (u64, u64, BTreeMap<NodeId, Vec<WaitEdge>>, bool);

#[derive(Debug, Default)]
pub(crate) struct Detector {
    pub(crate) interval: u64,
    next_round_at: u64,
    round: u64,
    collecting: Option<Round>,
    /// Cycles seen in the last round, by their sorted waiting locks.
    suspects: BTreeSet<Vec<LockId>>,
    pub(crate) victims: u64,
}

impl Lockspace {
    /// Runs deadlock detection every `interval` (driver time units; 0 turns
    /// it off). Only the lowest member of the view acts on it.
    pub fn set_deadlock_detection(&mut self, interval: u64) {
        self.detector.interval = interval;
    }

    /// Victims chosen by this node as detector.
    pub fn deadlock_victims(&self) -> u64 {
        self.detector.victims
    }

    fn local_edges(&self) -> (Vec<WaitEdge>, bool) {
        let mut edges = Vec::new();
        for r in self.mastered.values() {
            for (waiter, waiter_owner, holder, holder_owner) in r.wait_edges() {
                edges.push(WaitEdge {
                    waiter,
                    waiter_owner,
                    holder,
                    holder_owner,
                });
            }
        }
        let complete = edges.len() <= MAX_EDGES;
        edges.truncate(MAX_EDGES);
        (edges, complete)
    }

    pub(crate) fn deadlock_tick(&mut self, now: u64) {
        let d = &self.detector;
        if d.interval == 0 || self.members.first() != Some(&self.id) || self.blocked() {
            return;
        }
        if let Some((_, started, _, _)) = &d.collecting {
            if now < started + 4 * d.interval {
                return;
            }
            // Someone did not answer (a view change is coming): start over.
        } else if now < d.next_round_at {
            return;
        }
        self.detector.round += 1;
        self.detector.next_round_at = now + self.detector.interval;
        let round = self.detector.round;
        let (edges, complete) = self.local_edges();
        let mut got = BTreeMap::new();
        got.insert(self.id, edges);
        self.detector.collecting = Some((round, now, got, complete));
        for to in self.members.clone() {
            if to != self.id {
                self.send(to, Body::EdgesRequest { round });
            }
        }
        self.try_judge();
    }

    pub(crate) fn deadlock_message(&mut self, from: NodeId, body: Body) {
        match body {
            Body::EdgesRequest { round } => {
                let (edges, complete) = if self.blocked() {
                    (Vec::new(), false)
                } else {
                    self.local_edges()
                };
                self.send(
                    from,
                    Body::Edges {
                        round,
                        complete,
                        edges,
                    },
                );
            }
            Body::Edges {
                round,
                complete,
                edges,
            } => {
                if let Some((r, _, got, all_complete)) = self.detector.collecting.as_mut() {
                    if *r == round {
                        got.insert(from, edges);
                        *all_complete &= complete;
                    }
                }
                self.try_judge();
            }
            Body::Victim { lock, cycle } => {
                let names: Vec<Vec<u8>> = self.mastered.keys().cloned().collect();
                for name in names {
                    let events = match self.mastered.get_mut(&name) {
                        Some(r) => match r.fail_waiter(
                            lock,
                            LockError::Cycle {
                                cycle: cycle.clone(),
                            },
                        ) {
                            Ok(ev) => ev,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    for e in events {
                        self.deliver_event(&name, e);
                    }
                    return;
                }
            }
            _ => {}
        }
    }

    fn try_judge(&mut self) {
        let members = self.members.clone();
        let ready = matches!(&self.detector.collecting, Some((_, _, got, _)) if members.iter().all(|m| got.contains_key(m)));
        if !ready {
            return;
        }
        let Some((_, _, got, complete)) = self.detector.collecting.take() else {
            return;
        };
        if !complete {
            // Somebody was recovering or had too many edges: no judgement.
            self.detector.suspects.clear();
            return;
        }
        // Owner graph: owner -> (owner it waits for, waiting lock, master).
        let mut graph: BTreeMap<Owner, BTreeSet<(Owner, LockId, NodeId)>> = BTreeMap::new();
        for (master, edges) in &got {
            for e in edges {
                let a = owner_of(e.waiter, e.waiter_owner);
                let b = owner_of(e.holder, e.holder_owner);
                if a != b {
                    graph.entry(a).or_default().insert((b, e.waiter, *master));
                }
            }
        }
        let cycles = find_cycles(&graph);
        let mut suspects = BTreeSet::new();
        for cycle in cycles {
            let mut waiting: Vec<LockId> = cycle.iter().map(|(_, l, _)| *l).collect();
            waiting.sort_unstable();
            waiting.dedup();
            if self.detector.suspects.contains(&waiting) {
                // Seen in two rounds: real. The highest owner gives way.
                if let Some(&(_, lock, master)) = cycle.iter().max_by_key(|(o, _, _)| *o) {
                    self.detector.victims += 1;
                    let body = Body::Victim {
                        lock,
                        cycle: waiting.clone(),
                    };
                    if master == self.id {
                        let me = self.id;
                        self.deadlock_message(me, body);
                    } else {
                        self.send(master, body);
                    }
                }
            } else {
                suspects.insert(waiting);
            }
        }
        self.detector.suspects = suspects;
    }
}

/// Simple cycles found by depth-first search, one per back edge; each is a
/// list of (waiting owner, its waiting lock, that lock's master).
fn find_cycles(
    graph: &BTreeMap<Owner, BTreeSet<(Owner, LockId, NodeId)>>,
) -> Vec<Vec<(Owner, LockId, NodeId)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        Grey,
        Black,
    }
    let mut color: BTreeMap<Owner, Color> = BTreeMap::new();
    let mut cycles = Vec::new();
    for &start in graph.keys() {
        if color.contains_key(&start) {
            continue;
        }
        // Iterative DFS: the path holds (owner, edge taken to get here).
        let mut path: Vec<(Owner, Option<(LockId, NodeId)>)> = vec![(start, None)];
        let mut iters: Vec<Vec<(Owner, LockId, NodeId)>> = vec![graph
            .get(&start)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()];
        color.insert(start, Color::Grey);
        while let Some(it) = iters.last_mut() {
            let Some((to, lock, master)) = it.pop() else {
                // Every edge of the top vertex explored.
                iters.pop();
                if let Some((o, _)) = path.pop() {
                    color.insert(o, Color::Black);
                }
                continue;
            };
            match color.get(&to) {
                Some(Color::Grey) => {
                    // Back edge: the cycle is the path from `to` on, plus
                    // this edge.
                    if let Some(pos) = path.iter().position(|(o, _)| *o == to) {
                        let mut cycle: Vec<(Owner, LockId, NodeId)> = Vec::new();
                        for w in pos..path.len() {
                            let edge = if w + 1 < path.len() {
                                path[w + 1].1
                            } else {
                                Some((lock, master))
                            };
                            if let Some((l, m)) = edge {
                                cycle.push((path[w].0, l, m));
                            }
                        }
                        cycles.push(cycle);
                    }
                }
                Some(Color::Black) => {}
                None => {
                    color.insert(to, Color::Grey);
                    path.push((to, Some((lock, master))));
                    iters.push(
                        graph
                            .get(&to)
                            .map(|s| s.iter().copied().collect())
                            .unwrap_or_default(),
                    );
                }
            }
        }
    }
    cycles
}
