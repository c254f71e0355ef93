//! Messages between lock manager nodes and their byte encoding.
//!
//! Every message is one frame: a fixed header (magic, protocol version,
//! type, generation, sender, lockspace id, body length) and a body whose
//! length the header states exactly. The lockspace id names the lockspace
//! a lock, directory, recovery or deadlock message concerns (0 for
//! membership messages, which concern the whole cluster). Lockspace lists
//! (heartbeats, accepts, views) give each lockspace's id, join id and LVB
//! length. Decoding is total: any byte string yields a
//! message or a [`WireError`] naming what was wrong; nothing panics, nothing
//! allocates more than the frame limit. No I/O here.

use crate::member::{LsJoin, Member, View, MAX_NODES};
use crate::mode::Mode;
use crate::resource::{LockError, LockId, NodeId, MAX_NAME};

pub const MAGIC: u16 = 0x524c; // "RL"
/// 4: lockspace lists carry each lockspace's LVB length.
pub const VERSION: u8 = 4;
pub const HEADER_LEN: usize = 20;
/// Most lockspaces one node is in (bounds heartbeats and views).
pub const MAX_LOCKSPACES: usize = 16;
/// Largest body accepted (names, LVBs, texts and lists are all bounded).
pub const MAX_BODY: usize = 65536;
/// Most wait-for edges one node reports in a deadlock detection round (a
/// round with more is skipped, not misjudged).
pub const MAX_EDGES: usize = 1500;
/// Longest cycle a deadlock report carries.
pub const MAX_CYCLE: usize = 64;
/// Largest LVB carried.
pub const MAX_LVB: usize = 1024;
/// Smallest LVB length a lockspace may have.
pub const MIN_LVB: usize = 8;
/// Longest error text carried.
pub const MAX_TEXT: usize = 512;
/// Most departed incarnations one recovery message lists (bounded by the
/// body limit: 12 bytes each).
pub const MAX_HOLDS: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// To a directory node: who masters `name`?
    Lookup {
        name: Vec<u8>,
    },
    /// The directory's answer. `floor`: when the asker becomes the master
    /// of a name whose resource was freed in this generation, the last
    /// grant number handed out for it (fencing tokens only grow).
    LookupReply {
        name: Vec<u8>,
        master: NodeId,
        floor: u64,
    },
    /// To a master: a new lock, on behalf of `owner` (0: the lock alone).
    Request {
        lkid: u64,
        name: Vec<u8>,
        mode: Mode,
        flags: u32,
        owner: u64,
    },
    Convert {
        lkid: u64,
        name: Vec<u8>,
        mode: Mode,
        flags: u32,
        lvb: Option<Vec<u8>>,
    },
    Unlock {
        lkid: u64,
        name: Vec<u8>,
        flags: u32,
        lvb: Option<Vec<u8>>,
    },
    Cancel {
        lkid: u64,
        name: Vec<u8>,
    },
    /// From a master: a request was granted.
    Granted {
        lkid: u64,
        name: Vec<u8>,
        mode: Mode,
        seq: u64,
        demoted: bool,
        lvb_valid: bool,
        lvb: Option<Vec<u8>>,
    },
    /// From a master: a request failed.
    Failed {
        lkid: u64,
        name: Vec<u8>,
        error: LockError,
    },
    /// From a master: an unlock completed.
    Unlocked {
        lkid: u64,
        name: Vec<u8>,
    },
    /// From a master: the lock blocks a request for `mode`.
    Blocking {
        lkid: u64,
        name: Vec<u8>,
        mode: Mode,
    },

    // Membership (the header's generation is the sender's committed one,
    // or for Propose/Accept/Commit the proposed one).
    /// "I am alive": sent to every configured node each heartbeat period.
    /// `lockspaces`: the lockspaces the sender is in or joining, each with
    /// the id of that join (what the coordinator proposes views from).
    Heartbeat {
        incarnation: u64,
        hb: u64,
        lockspaces: Vec<LsJoin>,
    },
    /// "You are in my membership": renews the sender's part of the
    /// receiver's lease, for that incarnation only.
    HeartbeatAck {
        hb: u64,
        incarnation: u64,
    },
    /// "This incarnation of you was excluded; start over as a new one."
    /// "This incarnation of me leaves: it holds no locks and will act on
    /// none, so it may be dropped without waiting out its lease."
    Leave {
        incarnation: u64,
    },
    Excluded {
        incarnation: u64,
    },
    /// From a coordinator: the next membership.
    Propose {
        members: Vec<(NodeId, u64)>,
    },
    /// To the coordinator: accepted; what the acceptor accepted before and
    /// the last membership it committed.
    /// `lockspaces`: the acceptor's lockspaces now (the view records these).
    Accept {
        incarnation: u64,
        previous: Vec<(NodeId, u64)>,
        committed: Option<View>,
        lockspaces: Vec<LsJoin>,
    },
    /// From the coordinator: every proposed member accepted.
    Commit {
        view: View,
    },

    // Lockspace recovery (generation-strict).
    /// To the new directory node: the sender masters `name`.
    DirEntry {
        name: Vec<u8>,
    },
    /// The sender has sent all its directory entries.
    DirDone,
    /// To the directory node (generation-strict): the sender no longer
    /// masters `name` (it freed the unused resource); drop the entry if it
    /// still names the sender.
    Remove {
        name: Vec<u8>,
        /// The resource's last grant number.
        seq: u64,
    },
    /// To the new master of a resource whose master left: one of the
    /// sender's locks on it.
    RecoverLock {
        lkid: u64,
        name: Vec<u8>,
        owner: u64,
        mode: Mode,
        /// Grant sequence number of the lock's current grant.
        seq: u64,
        /// What `lvb` is: a copy the lock was granted with, or a value the
        /// lock wrote in a down-conversion or unlock the old master may
        /// never have seen.
        lvb_source: LvbSource,
        lvb_valid: bool,
        lvb: Option<Vec<u8>>,
    },
    /// The sender has sent all its locks for recovery.
    LocksDone,
    /// The sender has rebuilt every resource it now masters; the departed
    /// incarnations whose recovery it knows pending, and those it knows
    /// done (so every member ends with the same holds).
    RecoveryDone {
        pending: Vec<(NodeId, u64)>,
        released: Vec<(NodeId, u64)>,
    },
    /// The user finished recovering this incarnation of `node` (replayed
    /// its journal): grants held for it may go ahead.
    ReleaseHold {
        node: NodeId,
        incarnation: u64,
    },

    // Deadlock detection (generation-strict).
    /// From the detector: report your wait-for edges.
    EdgesRequest {
        round: u64,
    },
    /// To the detector: the waits on the resources the sender masters
    /// (`complete` is false when there were more than MAX_EDGES).
    Edges {
        round: u64,
        complete: bool,
        edges: Vec<WaitEdge>,
    },
    /// From the detector to a master: fail this waiting request, it closes
    /// a cycle.
    Victim {
        lock: LockId,
        cycle: Vec<LockId>,
    },
}

/// A waiting lock and a lock it waits for, with their owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaitEdge {
    pub waiter: LockId,
    pub waiter_owner: u64,
    pub holder: LockId,
    pub holder_owner: u64,
}

/// Where a recovered lock's LVB copy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvbSource {
    None = 0,
    Granted = 1,
    Written = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub generation: u32,
    pub from: NodeId,
    /// The lockspace (see [`crate::node::lockspace_id`]); 0 for membership.
    pub lockspace: u32,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("protocol version {0} not supported (this node speaks {VERSION})")]
    Version(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("body length {stated} stated, {actual} present")]
    Length { stated: usize, actual: usize },
    #[error("body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// A lockspace's LVB length must be a multiple of 8 in
/// [`MIN_LVB`]`..=`[`MAX_LVB`] (the cluster file's `lvb_len` and every
/// lockspace's own obey the same rule).
pub fn check_lvb_len(n: usize) -> Result<(), String> {
    if (MIN_LVB..=MAX_LVB).contains(&n) && n.is_multiple_of(8) {
        Ok(())
    } else {
        Err(format!(
            "an LVB length must be a multiple of 8 in {MIN_LVB}..={MAX_LVB}, got {n}"
        ))
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, b: &Option<Vec<u8>>) {
        match b {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
}

impl Writer {
    fn lock(&mut self, l: LockId) {
        self.u32(l.node);
        self.u64(l.lkid);
    }
    fn locks(&mut self, v: &[LockId]) {
        let v = &v[..v.len().min(MAX_CYCLE)];
        self.0.extend_from_slice(&(v.len() as u16).to_be_bytes());
        for l in v {
            self.lock(*l);
        }
    }
    fn ids(&mut self, m: &[(NodeId, u64)]) {
        self.0.extend_from_slice(&(m.len() as u16).to_be_bytes());
        for (id, inc) in m {
            self.u32(*id);
            self.u64(*inc);
        }
    }
    fn view(&mut self, v: &View) {
        self.u32(v.generation);
        self.0
            .extend_from_slice(&(v.members.len() as u16).to_be_bytes());
        for m in &v.members {
            self.u32(m.id);
            self.u64(m.incarnation);
            self.u32(m.slot);
            self.joins(&m.lockspaces);
        }
    }
    fn joins(&mut self, v: &[LsJoin]) {
        let v = &v[..v.len().min(MAX_LOCKSPACES)];
        self.u8(v.len() as u8);
        for j in v {
            self.u32(j.id);
            self.u64(j.join);
            self.0.extend_from_slice(&j.lvb_len.to_be_bytes());
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, detail: impl Into<String>) -> WireError {
        WireError::Malformed {
            what: self.what,
            detail: detail.into(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(self.err(format!(
                "truncated: needed {n} more bytes, {} left",
                self.b.len()
            )));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self, max: usize, field: &str) -> Result<Vec<u8>, WireError> {
        let n = {
            let b = self.take(2)?;
            usize::from(u16::from_be_bytes([b[0], b[1]]))
        };
        if n > max {
            return Err(self.err(format!("{field} of {n} bytes exceeds {max}")));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn name(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.bytes(MAX_NAME, "resource name")?;
        if n.is_empty() {
            return Err(self.err("empty resource name"));
        }
        Ok(n)
    }
    fn mode(&mut self) -> Result<Mode, WireError> {
        let v = self.u8()?;
        Mode::from_u8(v).ok_or_else(|| self.err(format!("unknown mode {v}")))
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err(format!("boolean {v}"))),
        }
    }
    fn opt_lvb(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        Ok(if self.bool()? {
            Some(self.bytes(MAX_LVB, "LVB")?)
        } else {
            None
        })
    }
    fn count(&mut self, max: usize, field: &str) -> Result<usize, WireError> {
        let b = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if n > max {
            return Err(self.err(format!("{n} {field} exceed {max}")));
        }
        Ok(n)
    }
    fn ids(&mut self) -> Result<Vec<(NodeId, u64)>, WireError> {
        self.ids_up_to(MAX_NODES)
    }
    fn lock(&mut self) -> Result<LockId, WireError> {
        Ok(LockId {
            node: self.u32()?,
            lkid: self.u64()?,
        })
    }
    fn locks(&mut self) -> Result<Vec<LockId>, WireError> {
        let n = self.count(MAX_CYCLE, "locks in a cycle")?;
        (0..n).map(|_| self.lock()).collect()
    }
    fn ids_up_to(&mut self, max: usize) -> Result<Vec<(NodeId, u64)>, WireError> {
        let n = self.count(max, "node incarnations")?;
        (0..n).map(|_| Ok((self.u32()?, self.u64()?))).collect()
    }
    fn view(&mut self) -> Result<View, WireError> {
        let generation = self.u32()?;
        let n = self.count(MAX_NODES, "members")?;
        let members = (0..n)
            .map(|_| {
                Ok(Member {
                    id: self.u32()?,
                    incarnation: self.u64()?,
                    slot: self.u32()?,
                    lockspaces: self.joins()?,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        View::new(generation, members).map_err(|e| self.err(e))
    }
    fn joins(&mut self) -> Result<Vec<LsJoin>, WireError> {
        let n = usize::from(self.u8()?);
        if n > MAX_LOCKSPACES {
            return Err(self.err(format!("{n} lockspaces exceed {MAX_LOCKSPACES}")));
        }
        let v = (0..n)
            .map(|_| {
                let (id, join) = (self.u32()?, self.u64()?);
                let b = self.take(2)?;
                Ok(LsJoin::new(id, join, u16::from_be_bytes([b[0], b[1]])))
            })
            .collect::<Result<Vec<LsJoin>, WireError>>()?;
        for (i, a) in v.iter().enumerate() {
            if a.id == 0 {
                return Err(self.err("lockspace id 0"));
            }
            if v[..i].iter().any(|b| b.id == a.id) {
                return Err(self.err(format!("lockspace {:#x} listed twice", a.id)));
            }
            check_lvb_len(usize::from(a.lvb_len))
                .map_err(|e| self.err(format!("lockspace {:#x}: {e}", a.id)))?;
        }
        Ok(v)
    }
    fn lvb_source(&mut self) -> Result<LvbSource, WireError> {
        match self.u8()? {
            0 => Ok(LvbSource::None),
            1 => Ok(LvbSource::Granted),
            2 => Ok(LvbSource::Written),
            v => Err(self.err(format!("unknown LVB source {v}"))),
        }
    }
    fn end(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("{} trailing bytes", self.b.len())))
        }
    }
}

fn type_of(b: &Body) -> u8 {
    match b {
        Body::Lookup { .. } => 1,
        Body::LookupReply { .. } => 2,
        Body::Request { .. } => 3,
        Body::Convert { .. } => 4,
        Body::Unlock { .. } => 5,
        Body::Cancel { .. } => 6,
        Body::Granted { .. } => 7,
        Body::Failed { .. } => 8,
        Body::Unlocked { .. } => 9,
        Body::Blocking { .. } => 10,
        Body::Heartbeat { .. } => 11,
        Body::HeartbeatAck { .. } => 12,
        Body::Excluded { .. } => 13,
        Body::Leave { .. } => 26,
        Body::Propose { .. } => 14,
        Body::Accept { .. } => 15,
        Body::Commit { .. } => 16,
        Body::DirEntry { .. } => 17,
        Body::DirDone => 18,
        Body::RecoverLock { .. } => 19,
        Body::LocksDone => 20,
        Body::RecoveryDone { .. } => 21,
        Body::ReleaseHold { .. } => 22,
        Body::EdgesRequest { .. } => 23,
        Body::Edges { .. } => 24,
        Body::Victim { .. } => 25,
        Body::Remove { .. } => 27,
    }
}

fn encode_error(w: &mut Writer, e: &LockError) {
    match e {
        LockError::WouldBlock => w.u8(1),
        LockError::Deadlock { with } => {
            w.u8(2);
            w.u32(with.node);
            w.u64(with.lkid);
        }
        LockError::Cancelled => w.u8(3),
        LockError::TimedOut => w.u8(4),
        LockError::Invalid(t) => {
            w.u8(5);
            let t = t.as_bytes();
            w.bytes(&t[..t.len().min(MAX_TEXT)]);
        }
        LockError::Busy(id, why) => {
            w.u8(6);
            w.u32(id.node);
            w.u64(id.lkid);
            w.bytes(why.as_bytes());
        }
        LockError::UnknownLock(id) => {
            w.u8(7);
            w.u32(id.node);
            w.u64(id.lkid);
        }
        LockError::NotMaster => w.u8(8),
        LockError::Cycle { cycle } => {
            w.u8(9);
            w.locks(cycle);
        }
    }
}

fn decode_error(r: &mut Reader<'_>) -> Result<LockError, WireError> {
    Ok(match r.u8()? {
        1 => LockError::WouldBlock,
        2 => LockError::Deadlock {
            with: LockId {
                node: r.u32()?,
                lkid: r.u64()?,
            },
        },
        3 => LockError::Cancelled,
        4 => LockError::TimedOut,
        5 => LockError::Invalid(
            String::from_utf8_lossy(&r.bytes(MAX_TEXT, "error text")?).into_owned(),
        ),
        6 => {
            let id = LockId {
                node: r.u32()?,
                lkid: r.u64()?,
            };
            let _why = r.bytes(MAX_TEXT, "error text")?;
            LockError::Busy(id, "busy on the master")
        }
        7 => LockError::UnknownLock(LockId {
            node: r.u32()?,
            lkid: r.u64()?,
        }),
        8 => LockError::NotMaster,
        9 => LockError::Cycle { cycle: r.locks()? },
        v => return Err(r.err(format!("unknown error code {v}"))),
    })
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        match &self.body {
            Body::Lookup { name } => w.bytes(name),
            Body::LookupReply {
                name,
                master,
                floor,
            } => {
                w.bytes(name);
                w.u32(*master);
                w.u64(*floor);
            }
            Body::Request {
                lkid,
                name,
                mode,
                flags,
                owner,
            } => {
                w.u64(*lkid);
                w.bytes(name);
                w.u8(*mode as u8);
                w.u32(*flags);
                w.u64(*owner);
            }
            Body::Convert {
                lkid,
                name,
                mode,
                flags,
                lvb,
            } => {
                w.u64(*lkid);
                w.bytes(name);
                w.u8(*mode as u8);
                w.u32(*flags);
                w.opt(lvb);
            }
            Body::Unlock {
                lkid,
                name,
                flags,
                lvb,
            } => {
                w.u64(*lkid);
                w.bytes(name);
                w.u32(*flags);
                w.opt(lvb);
            }
            Body::Cancel { lkid, name } | Body::Unlocked { lkid, name } => {
                w.u64(*lkid);
                w.bytes(name);
            }
            Body::Granted {
                lkid,
                name,
                mode,
                seq,
                demoted,
                lvb_valid,
                lvb,
            } => {
                w.u64(*lkid);
                w.bytes(name);
                w.u8(*mode as u8);
                w.u64(*seq);
                w.u8(u8::from(*demoted));
                w.u8(u8::from(*lvb_valid));
                w.opt(lvb);
            }
            Body::Failed { lkid, name, error } => {
                w.u64(*lkid);
                w.bytes(name);
                encode_error(&mut w, error);
            }
            Body::Blocking { lkid, name, mode } => {
                w.u64(*lkid);
                w.bytes(name);
                w.u8(*mode as u8);
            }
            Body::Heartbeat {
                incarnation,
                hb,
                lockspaces,
            } => {
                w.u64(*incarnation);
                w.u64(*hb);
                w.joins(lockspaces);
            }
            Body::HeartbeatAck { hb, incarnation } => {
                w.u64(*hb);
                w.u64(*incarnation);
            }
            Body::Excluded { incarnation } | Body::Leave { incarnation } => w.u64(*incarnation),
            Body::Propose { members } => w.ids(members),
            Body::Accept {
                incarnation,
                previous,
                committed,
                lockspaces,
            } => {
                w.u64(*incarnation);
                w.ids(previous);
                match committed {
                    Some(v) => {
                        w.u8(1);
                        w.view(v);
                    }
                    None => w.u8(0),
                }
                w.joins(lockspaces);
            }
            Body::Commit { view } => w.view(view),
            Body::DirEntry { name } => w.bytes(name),
            Body::Remove { name, seq } => {
                w.bytes(name);
                w.u64(*seq);
            }
            Body::DirDone | Body::LocksDone => {}
            Body::RecoveryDone { pending, released } => {
                w.ids(pending);
                w.ids(released);
            }
            Body::ReleaseHold { node, incarnation } => {
                w.u32(*node);
                w.u64(*incarnation);
            }
            Body::EdgesRequest { round } => w.u64(*round),
            Body::Edges {
                round,
                complete,
                edges,
            } => {
                w.u64(*round);
                w.u8(u8::from(*complete));
                w.0.extend_from_slice(&(edges.len() as u16).to_be_bytes());
                for e in edges {
                    w.lock(e.waiter);
                    w.u64(e.waiter_owner);
                    w.lock(e.holder);
                    w.u64(e.holder_owner);
                }
            }
            Body::Victim { lock, cycle } => {
                w.lock(*lock);
                w.locks(cycle);
            }
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
                w.u64(*lkid);
                w.bytes(name);
                w.u64(*owner);
                w.u8(*mode as u8);
                w.u64(*seq);
                w.u8(*lvb_source as u8);
                w.u8(u8::from(*lvb_valid));
                w.opt(lvb);
            }
        }
        let body = w.0;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(VERSION);
        out.push(type_of(&self.body));
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.lockspace.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes one whole frame.
    pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
        if frame.len() < HEADER_LEN {
            return Err(WireError::Short(frame.len()));
        }
        let magic = u16::from_be_bytes([frame[0], frame[1]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if frame[2] != VERSION {
            return Err(WireError::Version(frame[2]));
        }
        let ty = frame[3];
        let generation = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let from = u32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
        let lockspace = u32::from_be_bytes([frame[12], frame[13], frame[14], frame[15]]);
        let stated = u32::from_be_bytes([frame[16], frame[17], frame[18], frame[19]]) as usize;
        if stated > MAX_BODY {
            return Err(WireError::TooLarge(stated));
        }
        let body = &frame[HEADER_LEN..];
        if body.len() != stated {
            return Err(WireError::Length {
                stated,
                actual: body.len(),
            });
        }
        let mut r = Reader {
            b: body,
            what: "message body",
        };
        let body = match ty {
            1 => Body::Lookup { name: r.name()? },
            2 => Body::LookupReply {
                name: r.name()?,
                master: r.u32()?,
                floor: r.u64()?,
            },
            3 => Body::Request {
                lkid: r.u64()?,
                name: r.name()?,
                mode: r.mode()?,
                flags: r.u32()?,
                owner: r.u64()?,
            },
            4 => Body::Convert {
                lkid: r.u64()?,
                name: r.name()?,
                mode: r.mode()?,
                flags: r.u32()?,
                lvb: r.opt_lvb()?,
            },
            5 => Body::Unlock {
                lkid: r.u64()?,
                name: r.name()?,
                flags: r.u32()?,
                lvb: r.opt_lvb()?,
            },
            6 => Body::Cancel {
                lkid: r.u64()?,
                name: r.name()?,
            },
            7 => Body::Granted {
                lkid: r.u64()?,
                name: r.name()?,
                mode: r.mode()?,
                seq: r.u64()?,
                demoted: r.bool()?,
                lvb_valid: r.bool()?,
                lvb: r.opt_lvb()?,
            },
            8 => Body::Failed {
                lkid: r.u64()?,
                name: r.name()?,
                error: decode_error(&mut r)?,
            },
            9 => Body::Unlocked {
                lkid: r.u64()?,
                name: r.name()?,
            },
            10 => Body::Blocking {
                lkid: r.u64()?,
                name: r.name()?,
                mode: r.mode()?,
            },
            11 => Body::Heartbeat {
                incarnation: r.u64()?,
                hb: r.u64()?,
                lockspaces: r.joins()?,
            },
            12 => Body::HeartbeatAck {
                hb: r.u64()?,
                incarnation: r.u64()?,
            },
            26 => Body::Leave {
                incarnation: r.u64()?,
            },
            13 => Body::Excluded {
                incarnation: r.u64()?,
            },
            14 => Body::Propose { members: r.ids()? },
            15 => Body::Accept {
                incarnation: r.u64()?,
                previous: r.ids()?,
                committed: if r.bool()? { Some(r.view()?) } else { None },
                lockspaces: r.joins()?,
            },
            16 => Body::Commit { view: r.view()? },
            17 => Body::DirEntry { name: r.name()? },
            18 => Body::DirDone,
            27 => Body::Remove {
                name: r.name()?,
                seq: r.u64()?,
            },
            19 => Body::RecoverLock {
                lkid: r.u64()?,
                name: r.name()?,
                owner: r.u64()?,
                mode: r.mode()?,
                seq: r.u64()?,
                lvb_source: r.lvb_source()?,
                lvb_valid: r.bool()?,
                lvb: r.opt_lvb()?,
            },
            20 => Body::LocksDone,
            21 => Body::RecoveryDone {
                pending: r.ids_up_to(MAX_HOLDS)?,
                released: r.ids_up_to(MAX_HOLDS)?,
            },
            22 => Body::ReleaseHold {
                node: r.u32()?,
                incarnation: r.u64()?,
            },
            23 => Body::EdgesRequest { round: r.u64()? },
            24 => {
                let round = r.u64()?;
                let complete = r.bool()?;
                let n = r.count(MAX_EDGES, "wait-for edges")?;
                let edges = (0..n)
                    .map(|_| {
                        Ok(WaitEdge {
                            waiter: r.lock()?,
                            waiter_owner: r.u64()?,
                            holder: r.lock()?,
                            holder_owner: r.u64()?,
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                Body::Edges {
                    round,
                    complete,
                    edges,
                }
            }
            25 => Body::Victim {
                lock: r.lock()?,
                cycle: r.locks()?,
            },
            t => return Err(WireError::UnknownType(t)),
        };
        r.end()?;
        let membership = matches!(
            body,
            Body::Heartbeat { .. }
                | Body::HeartbeatAck { .. }
                | Body::Excluded { .. }
                | Body::Leave { .. }
                | Body::Propose { .. }
                | Body::Accept { .. }
                | Body::Commit { .. }
        );
        if membership != (lockspace == 0) {
            return Err(WireError::Malformed {
                what: "header",
                detail: format!("lockspace {lockspace:#x} on a message of type {ty}"),
            });
        }
        Ok(Message {
            generation,
            from,
            lockspace,
            body,
        })
    }
}
