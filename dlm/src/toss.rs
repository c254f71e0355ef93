//! Freeing unused resources: the toss list, `Remove`, and the race between
//! a lookup and a remove.
//!
//! Like the kernel DLM: a name this node no longer uses — no lock of its
//! own on it, and if it masters the resource, nobody's lock or waiter on
//! it — is kept for [`Lockspace::set_toss_time`] (so a lock taken again
//! soon costs no lookup) and then freed: a master drops the resource and
//! tells the name's directory node (`Remove`), which drops the entry only
//! if it still names the sender; an owner just forgets the cached master.
//!
//! The race: a node may look a name up, be told "M", and send M a request
//! after M freed the resource. M never creates a resource for a remote
//! request unless it may be the master: if M is itself waiting for the
//! directory's answer on that name, the request waits for it (M is the
//! master only if the directory says so); otherwise M answers `NotMaster`
//! and the owner looks the name up again. A master frees nothing while a
//! request is waiting, and `Remove` travels on the same FIFO as M's later
//! lookup of the same name, so the directory never drops an entry made
//! after the remove was sent.
//!
//! Fencing tokens only grow, also across a free: `Remove` carries the
//! resource's last grant number, the directory keeps it (a tombstone) and
//! hands it to the next master with the lookup answer. Tombstones live for
//! one generation (the next one's grant numbers start above all of this
//! one's); beyond [`MAX_TOSS`] of them the oldest goes, and its number
//! becomes the floor of every name the directory node hands out.
//! The LVB of a freed resource is lost: the next one starts not valid.
//!
//! Memory: per lockspace and node, at most [`MAX_TOSS`] unused names are
//! kept (beyond that the oldest is freed at once) and at most [`MAX_TOSS`]
//! tombstones; in use are only names with locks. Directory entries name
//! real masters, so they are bounded by what the members master.

use crate::lockspace::{Lockspace, Op};
use crate::resource::{LockError, NodeId};
use crate::wire::Body;
use std::collections::VecDeque;

/// Most unused names one lockspace keeps on one node.
pub const MAX_TOSS: usize = 1 << 16;

/// The toss list of one lockspace on one node.
#[derive(Debug, Default)]
pub(crate) struct Toss {
    /// Unused name -> since when.
    pub(crate) since: std::collections::BTreeMap<Vec<u8>, u64>,
    /// The same, oldest first; entries that `since` no longer has (or has
    /// with another time) are stale and skipped.
    order: VecDeque<(u64, Vec<u8>)>,
    /// Requests from other nodes for a name this node is looking up: they
    /// wait for the directory's answer.
    pub(crate) early: std::collections::BTreeMap<Vec<u8>, Vec<(NodeId, u64, Op)>>,
    /// Locks of this node per name.
    pub(crate) local: std::collections::BTreeMap<Vec<u8>, usize>,
    /// At the directory: last grant numbers of resources freed in this
    /// generation.
    tombs: std::collections::BTreeMap<Vec<u8>, u64>,
    tomb_order: VecDeque<Vec<u8>>,
    /// The highest grant number of a tombstone dropped for space.
    tomb_floor: u64,
    /// Grant-number floors for resources this node is about to create.
    pub(crate) floors: std::collections::BTreeMap<Vec<u8>, u64>,
}

impl Toss {
    /// A new generation: every grant number from now on is above the old
    /// ones, so tombstones and floors are moot.
    pub(crate) fn new_generation(&mut self) {
        self.tombs.clear();
        self.tomb_order.clear();
        self.tomb_floor = 0;
        self.floors.clear();
    }

    fn bury(&mut self, name: Vec<u8>, seq: u64) {
        self.tombs.insert(name.clone(), seq);
        self.tomb_order.push_back(name);
        while self.tombs.len() > MAX_TOSS {
            let Some(old) = self.tomb_order.pop_front() else {
                break;
            };
            if let Some(s) = self.tombs.remove(&old) {
                self.tomb_floor = self.tomb_floor.max(s);
            }
        }
        if self.tomb_order.len() > 2 * self.tombs.len() + 1024 {
            self.tomb_order = self.tombs.keys().cloned().collect();
        }
    }

    /// The floor for a new master of `name`.
    pub(crate) fn unbury(&mut self, name: &[u8]) -> u64 {
        self.tombs.remove(name).unwrap_or(0).max(self.tomb_floor)
    }
}

impl Lockspace {
    /// Resources mastered here (in use or kept unused).
    pub fn resource_count(&self) -> usize {
        self.mastered.len()
    }

    /// Directory entries held here.
    pub fn directory_len(&self) -> usize {
        self.directory.len()
    }

    /// Names whose master this node knows.
    pub fn cached_masters(&self) -> usize {
        self.masters.len()
    }

    /// Unused names kept for a while.
    pub fn tossed(&self) -> usize {
        self.toss.since.len()
    }

    /// Whether this node uses `name` no more (and has something of it to
    /// free).
    fn idle(&self, name: &[u8]) -> bool {
        let used_here = self.toss.local.get(name).is_some_and(|n| *n > 0)
            || self.awaiting_lookup.contains_key(name)
            || self.toss.early.contains_key(name);
        if used_here {
            return false;
        }
        match self.mastered.get(name) {
            Some(r) => r.is_unused(),
            None => self.masters.contains_key(name),
        }
    }

    /// A lock of this node on `name` was created (`+1`) or is gone (`-1`).
    pub(crate) fn count_local(&mut self, name: &[u8], created: bool) {
        if created {
            *self.toss.local.entry(name.to_vec()).or_default() += 1;
            self.toss.since.remove(name);
        } else if let Some(n) = self.toss.local.get_mut(name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.toss.local.remove(name);
            }
        }
    }

    /// Puts `name` on the toss list if this node no longer uses it, or
    /// takes it off if it does.
    pub(crate) fn touch(&mut self, name: &[u8]) {
        if !self.idle(name) {
            self.toss.since.remove(name);
            return;
        }
        if self.toss.since.contains_key(name) {
            return;
        }
        let now = self.now;
        self.toss.since.insert(name.to_vec(), now);
        self.toss.order.push_back((now, name.to_vec()));
        // Stale entries pile up when names are taken and dropped again
        // and again: rebuild the order now and then.
        if self.toss.order.len() > 2 * self.toss.since.len() + 1024 {
            let mut v: Vec<(u64, Vec<u8>)> = self
                .toss
                .since
                .iter()
                .map(|(n, t)| (*t, n.clone()))
                .collect();
            v.sort_unstable();
            self.toss.order = v.into();
        }
    }

    /// Frees what was unused for the toss time (or the oldest beyond
    /// [`MAX_TOSS`]). Nothing is freed while grants are stopped.
    pub(crate) fn toss_tick(&mut self, now: u64) {
        if self.blocked() {
            return;
        }
        while let Some((t, _)) = self.toss.order.front() {
            let over = self.toss.since.len() > MAX_TOSS;
            if !over && t.saturating_add(self.toss_time) > now {
                break;
            }
            let Some((t, name)) = self.toss.order.pop_front() else {
                break;
            };
            if self.toss.since.get(&name) != Some(&t) {
                continue;
            }
            self.toss.since.remove(&name);
            if self.idle(&name) {
                self.free(name);
            }
        }
    }

    /// Drops an unused name: the cached master, and the resource if it is
    /// mastered here (telling the directory).
    fn free(&mut self, name: Vec<u8>) {
        self.masters.remove(&name);
        if !self.mastered.get(&name).is_some_and(|r| r.is_unused()) {
            return;
        }
        let seq = match self.mastered.remove(&name) {
            Some(r) => r.grant_seq(),
            None => return,
        };
        self.stats.resources_freed += 1;
        let dir = self.dir_node(&name);
        if dir == self.id {
            self.receive_remove(self.id, name, seq);
        } else {
            self.send(dir, Body::Remove { name, seq });
        }
    }

    /// At the directory: `from` freed `name`, whose last grant number was
    /// `seq`.
    pub(crate) fn receive_remove(&mut self, from: NodeId, name: Vec<u8>, seq: u64) {
        if self.directory.get(&name) == Some(&from) {
            self.directory.remove(&name);
            self.toss.bury(name, seq);
        }
    }

    /// A request from `from` for a resource not mastered here: it waits
    /// for this node's own lookup of the name, or goes back to the owner.
    pub(crate) fn request_unmastered(&mut self, from: NodeId, name: Vec<u8>, lkid: u64, op: Op) {
        if self.awaiting_lookup.contains_key(&name) {
            self.toss
                .early
                .entry(name)
                .or_default()
                .push((from, lkid, op));
        } else {
            self.not_master(from, name, lkid);
        }
    }

    fn not_master(&mut self, to: NodeId, name: Vec<u8>, lkid: u64) {
        self.send(
            to,
            Body::Failed {
                lkid,
                name,
                error: LockError::NotMaster,
            },
        );
    }

    /// The directory answered this node's lookup of `name`: requests that
    /// waited for it run here if this node is the master, else go back.
    pub(crate) fn early_requests(&mut self, name: &[u8], master: NodeId) {
        let Some(waiting) = self.toss.early.remove(name) else {
            return;
        };
        for (from, lkid, op) in waiting {
            if master == self.id {
                self.master_request(from, name.to_vec(), lkid, op);
            } else {
                self.not_master(from, name.to_vec(), lkid);
            }
        }
    }

    /// A new view: requests waiting for a lookup that recovery dropped go
    /// back to their owners (who send them again after recovery).
    pub(crate) fn early_to_owners(&mut self) {
        let early = std::mem::take(&mut self.toss.early);
        for (name, waiting) in early {
            for (from, lkid, _) in waiting {
                if self.members.contains(&from) {
                    self.not_master(from, name.clone(), lkid);
                }
            }
        }
    }
}
