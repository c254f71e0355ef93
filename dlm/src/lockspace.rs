//! One node's part of a lockspace: its own locks, the resources it masters,
//! the directory entries that hash to it, and the routing between them.
//!
//! A deterministic state machine with no I/O: API calls and received
//! [`Message`]s in, [`Output`]s (messages to send, callbacks to deliver)
//! out. The driver owns sockets, timers and threads.
//!
//! Mastery follows the kernel DLM: `hash(name)` picks a directory node among
//! the members; the directory records the master, which is the first node
//! that asked. A node that is its own directory node for a name, or already
//! knows the master, sends no lookup; a node that masters a resource runs
//! its lock operations on it without any message. Per-peer FIFO delivery is
//! assumed (one ordered stream per peer, as QUIC gives).
//!
//! Not here yet: membership changes and recovery (the member list is fixed
//! for a lockspace's life), resource freeing, and deadlock detection across
//! nodes.

use crate::mode::Mode;
use crate::resource::{Event, Flags, LockError, LockId, NodeId, Resource, MAX_NAME};
use crate::wire::{Body, Message};
use std::collections::HashMap;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send { to: NodeId, msg: Message },
    Callback(Callback),
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
}

#[derive(Debug, Clone)]
enum Op {
    Request {
        mode: Mode,
        flags: Flags,
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
struct LocalLock {
    name: Vec<u8>,
    granted: Option<Mode>,
    /// A request, conversion or unlock is on its way to the master.
    pending: bool,
    /// An unlock is on its way: blocking callbacks no longer concern it.
    releasing: bool,
}

/// Counters for `rdlm dump`-style reporting and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub lookups_sent: u64,
    pub stale_dropped: u64,
}

pub struct Lockspace {
    id: NodeId,
    members: Vec<NodeId>,
    generation: u32,
    lvb_len: usize,
    next_lkid: u64,
    mastered: HashMap<Vec<u8>, Resource>,
    directory: HashMap<Vec<u8>, NodeId>,
    masters: HashMap<Vec<u8>, NodeId>,
    awaiting_lookup: HashMap<Vec<u8>, Vec<(u64, Op)>>,
    locks: HashMap<u64, LocalLock>,
    out: Vec<Output>,
    stats: Stats,
}

/// FNV-1a: stable across processes and versions, unlike std's hasher.
pub fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Lockspace {
    /// `members` must contain `id`; `generation` is carried on every message
    /// and messages of another generation are dropped.
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
        Ok(Lockspace {
            id,
            members,
            generation,
            lvb_len,
            next_lkid: 1,
            mastered: HashMap::new(),
            directory: HashMap::new(),
            masters: HashMap::new(),
            awaiting_lookup: HashMap::new(),
            locks: HashMap::new(),
            out: Vec::new(),
            stats: Stats::default(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes what the last calls produced.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// The directory node for a resource name.
    pub fn dir_node(&self, name: &[u8]) -> NodeId {
        self.members[(name_hash(name) % self.members.len() as u64) as usize]
    }

    /// The master of `name`, if this node knows it.
    pub fn master_of(&self, name: &[u8]) -> Option<NodeId> {
        self.masters.get(name).copied()
    }

    /// Number of this node's locks (granted or pending).
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Resources mastered here that still have locks.
    pub fn mastered_in_use(&self) -> usize {
        self.mastered.values().filter(|r| !r.is_unused()).count()
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

    /// A new lock on `name`; the result arrives as a callback.
    pub fn lock(&mut self, name: &[u8], mode: Mode, flags: Flags) -> Result<u64, LockError> {
        self.check_name(name)?;
        if flags.contains(Flags::TIMEOUT) {
            return Err(LockError::Invalid(
                "TIMEOUT needs the driver's clock; not supported yet".into(),
            ));
        }
        let lkid = self.next_lkid;
        self.next_lkid += 1;
        self.locks.insert(
            lkid,
            LocalLock {
                name: name.to_vec(),
                granted: None,
                pending: true,
                releasing: false,
            },
        );
        self.dispatch(name.to_vec(), lkid, Op::Request { mode, flags });
        Ok(lkid)
    }

    fn idle_lock(&mut self, lkid: u64, what: &'static str) -> Result<Vec<u8>, LockError> {
        let id = LockId {
            node: self.id,
            lkid,
        };
        let l = self
            .locks
            .get_mut(&lkid)
            .ok_or(LockError::UnknownLock(id))?;
        if l.pending || l.granted.is_none() {
            return Err(LockError::Busy(id, what));
        }
        l.pending = true;
        Ok(l.name.clone())
    }

    pub fn convert(
        &mut self,
        lkid: u64,
        mode: Mode,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.check_lvb(&lvb)?;
        if flags.contains(Flags::TIMEOUT) {
            return Err(LockError::Invalid(
                "TIMEOUT needs the driver's clock; not supported yet".into(),
            ));
        }
        let name = self.idle_lock(lkid, "wait for the pending operation before converting")?;
        self.dispatch(
            name,
            lkid,
            Op::Convert {
                mode,
                flags: flags | Flags::CONVERT,
                lvb,
            },
        );
        Ok(())
    }

    pub fn unlock(
        &mut self,
        lkid: u64,
        flags: Flags,
        lvb: Option<Vec<u8>>,
    ) -> Result<(), LockError> {
        self.check_lvb(&lvb)?;
        let name = self.idle_lock(lkid, "cancel the pending operation before unlocking")?;
        if let Some(l) = self.locks.get_mut(&lkid) {
            l.releasing = true;
        }
        self.dispatch(name, lkid, Op::Unlock { flags, lvb });
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
        if !l.pending {
            return Err(LockError::Busy(id, "nothing is pending to cancel"));
        }
        let name = l.name.clone();
        self.dispatch(name, lkid, Op::Cancel);
        Ok(())
    }

    fn send(&mut self, to: NodeId, body: Body) {
        self.stats.messages_sent += 1;
        self.out.push(Output::Send {
            to,
            msg: Message {
                generation: self.generation,
                from: self.id,
                body,
            },
        });
    }

    fn dispatch(&mut self, name: Vec<u8>, lkid: u64, op: Op) {
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
            let master = *self.directory.entry(name.clone()).or_insert(self.id);
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
        let body = match op {
            Op::Request { mode, flags } => Body::Request {
                lkid,
                name,
                mode,
                flags: flags.0,
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
        let res = match self.mastered.get_mut(&name) {
            Some(r) => Ok(r),
            None if matches!(op, Op::Request { .. }) => match Resource::new(&name, lvb_len) {
                Ok(r) => Ok(self.mastered.entry(name.clone()).or_insert(r)),
                Err(e) => Err(e),
            },
            None => Err(LockError::UnknownLock(id)),
        };
        let is_cancel = matches!(op, Op::Cancel);
        let result = res.and_then(|r| match op {
            Op::Request { mode, flags } => r.request(id, mode, flags, None),
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
    }

    /// Sends a master-side event to the lock's owner (or handles it here).
    fn deliver_event(&mut self, name: &[u8], e: Event) {
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
        if owner == self.id {
            self.completion(body);
        } else {
            self.send(owner, body);
        }
    }

    /// A completion or blocking callback for one of our locks.
    fn completion(&mut self, body: Body) {
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
                l.pending = false;
                Callback::Granted {
                    lkid,
                    mode,
                    lvb,
                    lvb_valid,
                    seq,
                    demoted,
                }
            }
            Body::Failed { lkid, error, .. } => {
                let Some(l) = self.locks.get_mut(&lkid) else {
                    return;
                };
                if !l.pending {
                    // The answer to a cancel that lost the race with a grant.
                    return;
                }
                l.pending = false;
                l.releasing = false;
                if l.granted.is_none() {
                    self.locks.remove(&lkid);
                }
                Callback::Failed { lkid, error }
            }
            Body::Unlocked { lkid, .. } => {
                if self.locks.remove(&lkid).is_none() {
                    return;
                }
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

    /// A message from a peer.
    pub fn receive(&mut self, msg: Message) {
        if msg.generation != self.generation || !self.members.contains(&msg.from) {
            self.stats.stale_dropped += 1;
            return;
        }
        let from = msg.from;
        match msg.body {
            Body::Lookup { name } => {
                // The first node to ask becomes the master.
                let master = *self.directory.entry(name.clone()).or_insert(from);
                self.send(from, Body::LookupReply { name, master });
            }
            Body::LookupReply { name, master } => {
                if !self.members.contains(&master) {
                    self.stats.stale_dropped += 1;
                    return;
                }
                self.masters.insert(name.clone(), master);
                for (lkid, op) in self.awaiting_lookup.remove(&name).unwrap_or_default() {
                    self.route(master, name.clone(), lkid, op);
                }
            }
            Body::Request {
                lkid,
                name,
                mode,
                flags,
            } => self.master_apply(
                from,
                name,
                lkid,
                Op::Request {
                    mode,
                    flags: Flags(flags),
                },
            ),
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
            body @ (Body::Granted { .. }
            | Body::Failed { .. }
            | Body::Unlocked { .. }
            | Body::Blocking { .. }) => self.completion(body),
        }
    }
}
