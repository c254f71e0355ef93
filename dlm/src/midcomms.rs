//! Reliable, ordered delivery to each peer across reconnects — the part the
//! Linux DLM calls midcomms — as a sans-I/O state machine: no sockets, no
//! clocks, no threads. The driver (`transport`) tells it when a connection
//! to a peer (a *link*) comes up or goes down and hands it every frame read
//! from a link; it hands the driver frames to write and [`Event`]s.
//!
//! The rules:
//! - Every payload sent to a peer gets the next sequence number for that
//!   peer (from 1) and is kept until the peer acknowledges it. The unacked
//!   buffer is bounded ([`Limits`]); a send that would exceed it fails with
//!   [`MidcommsError::Backlog`] — nothing is ever dropped silently.
//! - Acknowledgements are cumulative ("I have delivered everything up to
//!   n"): piggybacked on every data frame, and sent as an ack frame after
//!   every `ack_every` deliveries, when the sender asks (it does when its
//!   buffer is half full), or when the driver calls [`Midcomms::flush_acks`]
//!   (on a timer).
//! - A link starts with a hello from each side carrying the sender's node
//!   id and *incarnation* (a nonzero u64 chosen at process start), the
//!   incarnation it knows for the other side, and its cumulative ack. No
//!   data or ack frame is written on a link before the peer's hello has been
//!   read from it; then every unacked payload is sent again. The receiver
//!   delivers sequence number `delivered + 1` only, drops anything at or
//!   below `delivered` as a duplicate, and treats a gap as a protocol
//!   violation (links are ordered; a gap means a bug or a hostile peer).
//! - Every data and ack frame carries both incarnations, the sender's and
//!   the one it believes the receiver has; a frame whose incarnations are
//!   not the current pair is refused. When a hello shows a peer with a new
//!   incarnation (it restarted), everything about it is reset — its unacked
//!   payloads are dropped (they were for a process that no longer exists;
//!   the count is reported), both sequence spaces start again at 1 — and
//!   [`Event::PeerRestarted`] is emitted. The last [`RETIRED_KEPT`]
//!   incarnations of each peer are refused for good, so a stale connection
//!   cannot bring an old process back.
//! - Any protocol violation ends the link it came from (the driver closes
//!   the connection; the peer reconnects and nothing is lost, since
//!   anything unacknowledged is resent).
//!
//! This module owns the frame format and the sequence, ack and incarnation
//! state. Payloads are opaque bytes (the lock messages of `wire` are encoded
//! by the caller); it knows nothing of locks, membership, QUIC or TLS. It
//! trusts the driver to have authenticated the peer of a link (the driver
//! checks the certificate against the hello's node id); it checks the hello
//! names the peer the driver says it is.
//!
//! Frame layout (big-endian), [`HEADER_LEN`] = 44 bytes then the body:
//! `magic u16 "RM" | version u8 | kind u8 | flags u8 | 3 zero bytes |
//! incarnation u64 | peer_incarnation u64 | seq u64 | ack u64 | body_len u32`.
//! Kinds: 1 hello (body: from u32, to u32; seq 0), 2 data (body: payload;
//! seq >= 1), 3 ack (no body; seq 0). Flag bit 0 asks for an ack.

use crate::resource::NodeId;
use std::collections::{BTreeMap, VecDeque};

pub const MAGIC: u16 = 0x524d; // "RM"
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 44;
/// Largest payload of one data frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
const HELLO_BODY_LEN: usize = 8;
const KIND_HELLO: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_ACK: u8 = 3;
const FLAG_ACK_REQUESTED: u8 = 1;
/// How many past incarnations of each peer are remembered and refused.
pub const RETIRED_KEPT: usize = 16;

/// Identifies one link (connection) to a peer; never reused within one
/// [`Midcomms`].
pub type LinkId = u64;

/// One frame on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        from: NodeId,
        to: NodeId,
        incarnation: u64,
        /// The incarnation the sender knows for the receiver; 0 if none.
        peer_incarnation: u64,
        /// Cumulative ack, meaningful only if `peer_incarnation` is the
        /// receiver's current one.
        ack: u64,
    },
    Data {
        incarnation: u64,
        peer_incarnation: u64,
        seq: u64,
        ack: u64,
        ack_requested: bool,
        payload: Vec<u8>,
    },
    Ack {
        incarnation: u64,
        peer_incarnation: u64,
        ack: u64,
        ack_requested: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("frame version {0} not supported (this node speaks {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("body length {stated} stated, {actual} present")]
    Length { stated: usize, actual: usize },
    #[error("body of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("malformed {kind} frame: {detail}")]
    Malformed { kind: &'static str, detail: String },
}

fn kind_name(k: u8) -> &'static str {
    match k {
        KIND_HELLO => "hello",
        KIND_DATA => "data",
        KIND_ACK => "ack",
        _ => "unknown",
    }
}

#[allow(clippy::too_many_arguments)]
fn encode_raw(
    kind: u8,
    flags: u8,
    incarnation: u64,
    peer_incarnation: u64,
    seq: u64,
    ack: u64,
    body: &[&[u8]],
) -> Vec<u8> {
    let len: usize = body.iter().map(|b| b.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&peer_incarnation.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ack.to_be_bytes());
    // Payload sizes are checked against MAX_PAYLOAD before they get here.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for b in body {
        out.extend_from_slice(b);
    }
    out
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks a frame header (the first [`HEADER_LEN`] bytes) far enough to
/// know the whole frame's length, which it returns. A stream reader reads
/// the header, calls this, then reads the rest — so a corrupt stream can
/// never make it allocate more than one maximal frame.
pub fn frame_len(header: &[u8]) -> Result<usize, FrameError> {
    if header.len() < HEADER_LEN {
        return Err(FrameError::Short(header.len()));
    }
    let magic = u16::from_be_bytes([header[0], header[1]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if header[2] != VERSION {
        return Err(FrameError::Version(header[2]));
    }
    if !matches!(header[3], KIND_HELLO | KIND_DATA | KIND_ACK) {
        return Err(FrameError::UnknownKind(header[3]));
    }
    let stated = be_u32(header, 40) as usize;
    if stated > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(stated));
    }
    Ok(HEADER_LEN + stated)
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Hello {
                from,
                to,
                incarnation,
                peer_incarnation,
                ack,
            } => encode_raw(
                KIND_HELLO,
                0,
                *incarnation,
                *peer_incarnation,
                0,
                *ack,
                &[&from.to_be_bytes(), &to.to_be_bytes()],
            ),
            Frame::Data {
                incarnation,
                peer_incarnation,
                seq,
                ack,
                ack_requested,
                payload,
            } => encode_raw(
                KIND_DATA,
                if *ack_requested {
                    FLAG_ACK_REQUESTED
                } else {
                    0
                },
                *incarnation,
                *peer_incarnation,
                *seq,
                *ack,
                &[payload],
            ),
            Frame::Ack {
                incarnation,
                peer_incarnation,
                ack,
                ack_requested,
            } => encode_raw(
                KIND_ACK,
                if *ack_requested {
                    FLAG_ACK_REQUESTED
                } else {
                    0
                },
                *incarnation,
                *peer_incarnation,
                0,
                *ack,
                &[],
            ),
        }
    }

    /// Decodes one whole frame. Total: any bytes give a frame or an error.
    pub fn decode(b: &[u8]) -> Result<Frame, FrameError> {
        let total = frame_len(b)?;
        if b.len() != total {
            return Err(FrameError::Length {
                stated: total - HEADER_LEN,
                actual: b.len() - HEADER_LEN,
            });
        }
        let kind = b[3];
        let flags = b[4];
        if flags & !FLAG_ACK_REQUESTED != 0 {
            return Err(FrameError::Flags(flags));
        }
        if b[5..8] != [0, 0, 0] {
            return Err(FrameError::Reserved);
        }
        let incarnation = be_u64(b, 8);
        let peer_incarnation = be_u64(b, 16);
        let seq = be_u64(b, 24);
        let ack = be_u64(b, 32);
        let body = &b[HEADER_LEN..];
        let bad = |detail: String| FrameError::Malformed {
            kind: kind_name(kind),
            detail,
        };
        if incarnation == 0 {
            return Err(bad("sender incarnation 0".into()));
        }
        let ack_requested = flags & FLAG_ACK_REQUESTED != 0;
        match kind {
            KIND_HELLO => {
                if body.len() != HELLO_BODY_LEN {
                    return Err(bad(format!(
                        "body of {} bytes, expected {HELLO_BODY_LEN}",
                        body.len()
                    )));
                }
                if seq != 0 || flags != 0 {
                    return Err(bad("seq and flags must be 0".into()));
                }
                Ok(Frame::Hello {
                    from: be_u32(body, 0),
                    to: be_u32(body, 4),
                    incarnation,
                    peer_incarnation,
                    ack,
                })
            }
            KIND_DATA => {
                if seq == 0 {
                    return Err(bad("sequence number 0".into()));
                }
                if peer_incarnation == 0 {
                    return Err(bad("receiver incarnation 0".into()));
                }
                Ok(Frame::Data {
                    incarnation,
                    peer_incarnation,
                    seq,
                    ack,
                    ack_requested,
                    payload: body.to_vec(),
                })
            }
            KIND_ACK => {
                if !body.is_empty() || seq != 0 {
                    return Err(bad("an ack has no body and seq 0".into()));
                }
                if peer_incarnation == 0 {
                    return Err(bad("receiver incarnation 0".into()));
                }
                Ok(Frame::Ack {
                    incarnation,
                    peer_incarnation,
                    ack,
                    ack_requested,
                })
            }
            k => Err(FrameError::UnknownKind(k)),
        }
    }
}

/// Bounds of one peer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most payloads sent and not yet acknowledged, per peer.
    pub max_unacked_frames: usize,
    /// Most payload bytes sent and not yet acknowledged, per peer.
    pub max_unacked_bytes: usize,
    /// Send an ack frame after this many deliveries not yet acknowledged.
    pub ack_every: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_unacked_frames: 4096,
            max_unacked_bytes: 16 << 20,
            ack_every: 16,
        }
    }
}

/// A frame for the driver to write on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: NodeId,
    pub link: LinkId,
    pub frame: Vec<u8>,
}

/// What the owner learns from received frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next payload from `from`, exactly once and in order.
    Deliver { from: NodeId, payload: Vec<u8> },
    /// Both hellos have crossed the link: `node` (at `incarnation`) is
    /// reachable.
    Established { node: NodeId, incarnation: u64 },
    /// `node` has a new incarnation: it restarted. Nothing from its old
    /// incarnation will be delivered any more, and the `dropped` payloads
    /// sent to the old incarnation and never acknowledged are gone.
    PeerRestarted {
        node: NodeId,
        incarnation: u64,
        dropped: usize,
    },
}

/// A peer broke the protocol on a link. The link is dead in [`Midcomms`]
/// already; the driver should close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("undecodable frame: {0}")]
    Frame(#[from] FrameError),
    #[error("hello from node {claimed} on a link to node {expected}")]
    HelloFrom { claimed: NodeId, expected: NodeId },
    #[error("hello addressed to node {to}, this is node {me}")]
    HelloTo { to: NodeId, me: NodeId },
    #[error("second hello on one link")]
    SecondHello,
    #[error("{0} frame before the peer's hello")]
    BeforeHello(&'static str),
    #[error("frame from incarnation {got:#x}, the peer announced {expected:#x} on this link")]
    SenderIncarnation { expected: u64, got: u64 },
    #[error("frame meant for incarnation {got:#x}, this node is {mine:#x}")]
    WrongRecipient { mine: u64, got: u64 },
    #[error("incarnation {0:#x} of this peer has been replaced already")]
    RetiredIncarnation(u64),
    #[error("sequence gap: expected {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("ack {ack} for a sequence number never sent (highest sent {highest})")]
    AckUnsent { ack: u64, highest: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MidcommsError {
    #[error("incarnation 0 is reserved")]
    ZeroIncarnation,
    #[error("node {0} is this node")]
    SelfPeer(NodeId),
    #[error("payload of {len} bytes for node {to} exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge { to: NodeId, len: usize },
    #[error(
        "backlog to node {to} is full: {frames} payloads / {bytes} bytes unacknowledged \
         (limits {max_frames} / {max_bytes})"
    )]
    Backlog {
        to: NodeId,
        frames: usize,
        bytes: usize,
        max_frames: usize,
        max_bytes: usize,
    },
    #[error("node {peer}, link {link}: {violation}")]
    Protocol {
        peer: NodeId,
        link: LinkId,
        violation: Violation,
    },
}

/// A snapshot of one peer's state, for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub incarnation: Option<u64>,
    pub established: bool,
    pub next_seq: u64,
    pub unacked_frames: usize,
    pub unacked_bytes: usize,
    pub delivered: u64,
    pub duplicates: u64,
}

#[derive(Debug)]
struct Link {
    id: LinkId,
    /// The incarnation the peer's hello announced on this link, once read.
    peer_hello: Option<u64>,
}

#[derive(Debug)]
struct Peer {
    node: NodeId,
    incarnation: Option<u64>,
    retired: VecDeque<u64>,
    next_seq: u64,
    unacked: VecDeque<(u64, Vec<u8>)>,
    unacked_bytes: usize,
    delivered: u64,
    ack_sent: u64,
    duplicates: u64,
    link: Option<Link>,
}

impl Peer {
    fn new(node: NodeId) -> Peer {
        Peer {
            node,
            incarnation: None,
            retired: VecDeque::new(),
            next_seq: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            delivered: 0,
            ack_sent: 0,
            duplicates: 0,
            link: None,
        }
    }

    fn established(&self) -> Option<(LinkId, u64)> {
        let l = self.link.as_ref()?;
        Some((l.id, l.peer_hello?))
    }

    fn take_ack(&mut self, ack: u64) -> Result<(), Violation> {
        if ack >= self.next_seq {
            return Err(Violation::AckUnsent {
                ack,
                highest: self.next_seq - 1,
            });
        }
        while let Some((seq, p)) = self.unacked.front() {
            if *seq > ack {
                break;
            }
            self.unacked_bytes -= p.len();
            self.unacked.pop_front();
        }
        Ok(())
    }

    fn wants_ack(&self, limits: &Limits) -> bool {
        self.unacked.len() * 2 >= limits.max_unacked_frames
            || self.unacked_bytes * 2 >= limits.max_unacked_bytes
    }
}

/// Per-peer reliable delivery for one node. See the module documentation.
#[derive(Debug)]
pub struct Midcomms {
    me: NodeId,
    incarnation: u64,
    limits: Limits,
    peers: BTreeMap<NodeId, Peer>,
    next_link: LinkId,
    transmits: VecDeque<Transmit>,
}

impl Midcomms {
    pub fn new(me: NodeId, incarnation: u64, limits: Limits) -> Result<Midcomms, MidcommsError> {
        if incarnation == 0 {
            return Err(MidcommsError::ZeroIncarnation);
        }
        Ok(Midcomms {
            me,
            incarnation,
            limits,
            peers: BTreeMap::new(),
            next_link: 1,
            transmits: VecDeque::new(),
        })
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn peer(&mut self, node: NodeId) -> Result<&mut Peer, MidcommsError> {
        if node == self.me {
            return Err(MidcommsError::SelfPeer(node));
        }
        Ok(self.peers.entry(node).or_insert_with(|| Peer::new(node)))
    }

    /// The next frame to write, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn data_frame(
        &self,
        p: &Peer,
        link: LinkId,
        peer_inc: u64,
        seq: u64,
        payload: &[u8],
    ) -> Transmit {
        let flags = if p.wants_ack(&self.limits) {
            FLAG_ACK_REQUESTED
        } else {
            0
        };
        Transmit {
            to: p.node,
            link,
            frame: encode_raw(
                KIND_DATA,
                flags,
                self.incarnation,
                peer_inc,
                seq,
                p.delivered,
                &[payload],
            ),
        }
    }

    fn ack_frame(&self, p: &Peer, link: LinkId, peer_inc: u64, ask: bool) -> Transmit {
        Transmit {
            to: p.node,
            link,
            frame: Frame::Ack {
                incarnation: self.incarnation,
                peer_incarnation: peer_inc,
                ack: p.delivered,
                ack_requested: ask,
            }
            .encode(),
        }
    }

    /// Whether [`Midcomms::send`] of `len` bytes to `to` would fit the
    /// backlog limits now (a peer never heard of has an empty backlog).
    pub fn has_room(&self, to: NodeId, len: usize) -> bool {
        self.peers.get(&to).is_none_or(|p| {
            p.unacked.len() < self.limits.max_unacked_frames
                && p.unacked_bytes + len <= self.limits.max_unacked_bytes
        })
    }

    /// Queues `payload` for `to`. It is written at once if a link to `to`
    /// is established, else when one is; it stays buffered until `to`
    /// acknowledges it.
    pub fn send(&mut self, to: NodeId, payload: Vec<u8>) -> Result<(), MidcommsError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(MidcommsError::PayloadTooLarge {
                to,
                len: payload.len(),
            });
        }
        let limits = self.limits;
        let p = self.peer(to)?;
        if p.unacked.len() + 1 > limits.max_unacked_frames
            || p.unacked_bytes + payload.len() > limits.max_unacked_bytes
        {
            return Err(MidcommsError::Backlog {
                to,
                frames: p.unacked.len(),
                bytes: p.unacked_bytes,
                max_frames: limits.max_unacked_frames,
                max_bytes: limits.max_unacked_bytes,
            });
        }
        let seq = p.next_seq;
        p.next_seq += 1;
        p.unacked_bytes += payload.len();
        p.unacked.push_back((seq, payload));
        let Some(p) = self.peers.get(&to) else {
            return Ok(());
        };
        let t = match (p.established(), p.unacked.back()) {
            (Some((link, peer_inc)), Some((_, payload))) => {
                self.data_frame(p, link, peer_inc, seq, payload)
            }
            _ => return Ok(()),
        };
        self.transmits.push_back(t);
        if let Some(p) = self.peers.get_mut(&to) {
            p.ack_sent = p.delivered;
        }
        Ok(())
    }

    fn purge_transmits(&mut self, link: LinkId) {
        self.transmits.retain(|t| t.link != link);
    }

    /// A new link (connection) to `peer` is up; any previous one is dead
    /// from now on (frames from it are ignored). Queues this side's hello,
    /// which must be the first frame written on the link.
    pub fn link_up(&mut self, peer: NodeId) -> Result<LinkId, MidcommsError> {
        let id = self.next_link;
        self.next_link += 1;
        let (me, inc) = (self.me, self.incarnation);
        let p = self.peer(peer)?;
        let old = p.link.replace(Link {
            id,
            peer_hello: None,
        });
        let known = p.incarnation.unwrap_or(0);
        let ack = if known != 0 { p.delivered } else { 0 };
        p.ack_sent = ack;
        let hello = Frame::Hello {
            from: me,
            to: peer,
            incarnation: inc,
            peer_incarnation: known,
            ack,
        }
        .encode();
        if let Some(old) = old {
            self.purge_transmits(old.id);
        }
        self.transmits.push_back(Transmit {
            to: peer,
            link: id,
            frame: hello,
        });
        Ok(id)
    }

    /// The link is gone. Returns whether it was the current, established
    /// link to `peer` (so the owner can say the peer is unreachable).
    pub fn link_down(&mut self, peer: NodeId, link: LinkId) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        match &p.link {
            Some(l) if l.id == link => {
                let was = l.peer_hello.is_some();
                p.link = None;
                self.purge_transmits(link);
                was
            }
            _ => false,
        }
    }

    /// Whether `link` is the current link to `peer`.
    pub fn is_current(&self, peer: NodeId, link: LinkId) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.link.as_ref())
            .is_some_and(|l| l.id == link)
    }

    /// Handles one frame read from `link` to `peer`; events are appended to
    /// `events` in order. Frames from a link that is not the current one
    /// are ignored. On a protocol violation the link is dead (its queued
    /// frames are discarded) and the error says why.
    pub fn receive(
        &mut self,
        peer: NodeId,
        link: LinkId,
        bytes: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), MidcommsError> {
        if !self.is_current(peer, link) {
            return Ok(());
        }
        let result = Frame::decode(bytes)
            .map_err(Violation::from)
            .and_then(|f| self.on_frame(peer, link, f, events));
        result.map_err(|violation| {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.link = None;
            }
            self.purge_transmits(link);
            MidcommsError::Protocol {
                peer,
                link,
                violation,
            }
        })
    }

    fn on_frame(
        &mut self,
        peer: NodeId,
        link: LinkId,
        frame: Frame,
        events: &mut Vec<Event>,
    ) -> Result<(), Violation> {
        let (me, my_inc, limits) = (self.me, self.incarnation, self.limits);
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        let announced = p.link.as_ref().and_then(|l| l.peer_hello);
        let (inc, peer_inc) = match &frame {
            Frame::Hello {
                from,
                to,
                incarnation,
                peer_incarnation,
                ack,
            } => {
                if announced.is_some() {
                    return Err(Violation::SecondHello);
                }
                if *from != peer {
                    return Err(Violation::HelloFrom {
                        claimed: *from,
                        expected: peer,
                    });
                }
                if *to != me {
                    return Err(Violation::HelloTo { to: *to, me });
                }
                if p.retired.contains(incarnation) {
                    return Err(Violation::RetiredIncarnation(*incarnation));
                }
                match p.incarnation {
                    Some(old) if old != *incarnation => {
                        let dropped = p.unacked.len();
                        p.retired.push_back(old);
                        if p.retired.len() > RETIRED_KEPT {
                            p.retired.pop_front();
                        }
                        p.incarnation = Some(*incarnation);
                        p.next_seq = 1;
                        p.unacked.clear();
                        p.unacked_bytes = 0;
                        p.delivered = 0;
                        p.ack_sent = 0;
                        events.push(Event::PeerRestarted {
                            node: peer,
                            incarnation: *incarnation,
                            dropped,
                        });
                    }
                    Some(_) => {}
                    None => p.incarnation = Some(*incarnation),
                }
                // The hello's ack is about our sequence space only if the
                // peer knows this incarnation of us.
                if *peer_incarnation == my_inc {
                    p.take_ack(*ack)?;
                }
                if let Some(l) = p.link.as_mut() {
                    l.peer_hello = Some(*incarnation);
                }
                events.push(Event::Established {
                    node: peer,
                    incarnation: *incarnation,
                });
                // Everything not yet acknowledged goes out again, in order.
                let pending: Vec<Transmit> = {
                    let p = &self.peers[&peer];
                    p.unacked
                        .iter()
                        .map(|(seq, payload)| self.data_frame(p, link, *incarnation, *seq, payload))
                        .collect()
                };
                if let Some(p) = self.peers.get_mut(&peer) {
                    if !pending.is_empty() {
                        p.ack_sent = p.delivered;
                    }
                }
                self.transmits.extend(pending);
                return Ok(());
            }
            Frame::Data {
                incarnation,
                peer_incarnation,
                ..
            }
            | Frame::Ack {
                incarnation,
                peer_incarnation,
                ..
            } => (*incarnation, *peer_incarnation),
        };
        let Some(expected) = announced else {
            return Err(Violation::BeforeHello(match frame {
                Frame::Data { .. } => "data",
                _ => "ack",
            }));
        };
        if inc != expected {
            return Err(Violation::SenderIncarnation { expected, got: inc });
        }
        if peer_inc != my_inc {
            return Err(Violation::WrongRecipient {
                mine: my_inc,
                got: peer_inc,
            });
        }
        let (ack, ask) = match &frame {
            Frame::Data {
                ack, ack_requested, ..
            }
            | Frame::Ack {
                ack, ack_requested, ..
            } => (*ack, *ack_requested),
            Frame::Hello { .. } => (0, false),
        };
        p.take_ack(ack)?;
        let mut owe_ack = ask;
        if let Frame::Data { seq, payload, .. } = frame {
            if seq <= p.delivered {
                p.duplicates += 1;
            } else if seq == p.delivered + 1 {
                p.delivered = seq;
                events.push(Event::Deliver {
                    from: peer,
                    payload,
                });
                owe_ack |= p.delivered - p.ack_sent >= limits.ack_every;
            } else {
                return Err(Violation::Gap {
                    expected: p.delivered + 1,
                    got: seq,
                });
            }
        }
        if owe_ack {
            p.ack_sent = p.delivered;
            let p = &self.peers[&peer];
            let t = self.ack_frame(p, link, expected, false);
            self.transmits.push_back(t);
        }
        Ok(())
    }

    /// Queues an ack frame to every peer owed one (deliveries not yet
    /// acknowledged). The driver calls this on a timer, so one-way traffic
    /// does not leave the sender's buffer full.
    pub fn flush_acks(&mut self) {
        let mut out = Vec::new();
        for p in self.peers.values() {
            if let Some((link, peer_inc)) = p.established() {
                if p.delivered > p.ack_sent {
                    out.push(self.ack_frame(p, link, peer_inc, false));
                }
            }
        }
        for t in out {
            if let Some(p) = self.peers.get_mut(&t.to) {
                p.ack_sent = p.delivered;
            }
            self.transmits.push_back(t);
        }
    }

    /// Asks every established peer we have unacknowledged payloads for to
    /// acknowledge now.
    pub fn request_acks(&mut self) {
        let mut out = Vec::new();
        for p in self.peers.values() {
            if let Some((link, peer_inc)) = p.established() {
                if !p.unacked.is_empty() {
                    out.push(self.ack_frame(p, link, peer_inc, true));
                }
            }
        }
        for t in out {
            if let Some(p) = self.peers.get_mut(&t.to) {
                p.ack_sent = p.delivered;
            }
            self.transmits.push_back(t);
        }
    }

    pub fn peer_stats(&self, node: NodeId) -> Option<PeerStats> {
        self.peers.get(&node).map(|p| PeerStats {
            incarnation: p.incarnation,
            established: p.established().is_some(),
            next_seq: p.next_seq,
            unacked_frames: p.unacked.len(),
            unacked_bytes: p.unacked_bytes,
            delivered: p.delivered,
            duplicates: p.duplicates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = 1;
    const B: NodeId = 2;

    fn mc(me: NodeId, inc: u64) -> Midcomms {
        Midcomms::new(me, inc, Limits::default()).expect("midcomms")
    }

    fn drain(m: &mut Midcomms) -> Vec<Transmit> {
        std::iter::from_fn(|| m.poll_transmit()).collect()
    }

    /// Feeds every frame in `frames` to `to`, returning its events; panics
    /// on a violation.
    fn feed(to: &mut Midcomms, from: NodeId, link: LinkId, frames: &[Transmit]) -> Vec<Event> {
        let mut ev = Vec::new();
        for t in frames {
            to.receive(from, link, &t.frame, &mut ev)
                .expect("no violation");
        }
        ev
    }

    /// Brings a link up between `a` and `b` and exchanges hellos; returns
    /// (a's link id, b's link id, a's events, b's events).
    fn connect(a: &mut Midcomms, b: &mut Midcomms) -> (LinkId, LinkId, Vec<Event>, Vec<Event>) {
        let la = a.link_up(b.me()).expect("link");
        let lb = b.link_up(a.me()).expect("link");
        let ta = drain(a);
        let tb = drain(b);
        let eb = feed(b, a.me(), lb, &ta);
        let ea = feed(a, b.me(), la, &tb);
        (la, lb, ea, eb)
    }

    fn payloads(ev: &[Event]) -> Vec<Vec<u8>> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Deliver { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn frames_round_trip() {
        for f in [
            Frame::Hello {
                from: 1,
                to: 2,
                incarnation: 7,
                peer_incarnation: 0,
                ack: 0,
            },
            Frame::Hello {
                from: u32::MAX,
                to: 9,
                incarnation: u64::MAX,
                peer_incarnation: 3,
                ack: 12,
            },
            Frame::Data {
                incarnation: 1,
                peer_incarnation: 2,
                seq: 1,
                ack: 0,
                ack_requested: true,
                payload: vec![],
            },
            Frame::Data {
                incarnation: 1,
                peer_incarnation: 2,
                seq: u64::MAX,
                ack: 5,
                ack_requested: false,
                payload: vec![0xab; MAX_PAYLOAD],
            },
            Frame::Ack {
                incarnation: 4,
                peer_incarnation: 5,
                ack: 6,
                ack_requested: true,
            },
        ] {
            let b = f.encode();
            assert_eq!(frame_len(&b[..HEADER_LEN]), Ok(b.len()));
            assert_eq!(Frame::decode(&b), Ok(f));
        }
    }

    #[test]
    fn decoding_refuses_bad_frames() {
        let data = Frame::Data {
            incarnation: 1,
            peer_incarnation: 2,
            seq: 3,
            ack: 0,
            ack_requested: false,
            payload: b"xyz".to_vec(),
        }
        .encode();
        let with = |at: usize, v: u8| {
            let mut b = data.clone();
            b[at] = v;
            Frame::decode(&b)
        };
        assert_eq!(Frame::decode(&data[..10]), Err(FrameError::Short(10)));
        assert!(matches!(with(0, 0), Err(FrameError::BadMagic(_))));
        assert_eq!(with(2, 2), Err(FrameError::Version(2)));
        assert_eq!(with(3, 9), Err(FrameError::UnknownKind(9)));
        assert_eq!(with(4, 2), Err(FrameError::Flags(2)));
        assert_eq!(with(6, 1), Err(FrameError::Reserved));
        let mut zero_inc = data.clone();
        zero_inc[8..16].fill(0);
        assert!(matches!(
            Frame::decode(&zero_inc),
            Err(FrameError::Malformed { .. })
        ));
        let mut zero_seq = data.clone();
        zero_seq[24..32].fill(0);
        assert!(matches!(
            Frame::decode(&zero_seq),
            Err(FrameError::Malformed { .. })
        ));
        let mut zero_peer = data.clone();
        zero_peer[16..24].fill(0);
        assert!(matches!(
            Frame::decode(&zero_peer),
            Err(FrameError::Malformed { .. })
        ));
        assert_eq!(
            Frame::decode(&data[..data.len() - 1]),
            Err(FrameError::Length {
                stated: 3,
                actual: 2
            })
        );
        let mut long = data.clone();
        long.push(0);
        assert!(matches!(
            Frame::decode(&long),
            Err(FrameError::Length { .. })
        ));
        let mut huge = data.clone();
        huge[40..44].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        assert_eq!(frame_len(&huge), Err(FrameError::TooLarge(MAX_PAYLOAD + 1)));
        // A hello with a body of the wrong size, or a nonzero seq.
        let hello = Frame::Hello {
            from: 1,
            to: 2,
            incarnation: 1,
            peer_incarnation: 0,
            ack: 0,
        }
        .encode();
        let mut h = hello.clone();
        h[24..32].copy_from_slice(&1u64.to_be_bytes());
        assert!(matches!(
            Frame::decode(&h),
            Err(FrameError::Malformed { .. })
        ));
        let mut h = hello.clone();
        h.push(0);
        h[40..44].copy_from_slice(&9u32.to_be_bytes());
        assert!(matches!(
            Frame::decode(&h),
            Err(FrameError::Malformed { .. })
        ));
        let ack = Frame::Ack {
            incarnation: 1,
            peer_incarnation: 2,
            ack: 0,
            ack_requested: false,
        }
        .encode();
        let mut a = ack.clone();
        a[24..32].copy_from_slice(&1u64.to_be_bytes());
        assert!(matches!(
            Frame::decode(&a),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn in_order_exactly_once_with_acks() {
        let mut a = mc(A, 10);
        let mut b = mc(B, 20);
        // Sent before any link: buffered.
        a.send(B, b"early".to_vec()).expect("send");
        assert!(drain(&mut a).is_empty());
        let (la, lb, ea, eb) = connect(&mut a, &mut b);
        assert_eq!(
            ea,
            vec![Event::Established {
                node: B,
                incarnation: 20
            }]
        );
        assert_eq!(
            eb[0],
            Event::Established {
                node: A,
                incarnation: 10
            }
        );
        // The early payload went out when the link was established.
        let t = drain(&mut a);
        assert_eq!(t.len(), 1);
        let ev = feed(&mut b, A, lb, &t);
        assert_eq!(payloads(&ev), vec![b"early".to_vec()]);
        for i in 0..40u8 {
            a.send(B, vec![i]).expect("send");
        }
        let t = drain(&mut a);
        assert_eq!(t.len(), 40);
        let ev = feed(&mut b, A, lb, &t);
        assert_eq!(
            payloads(&ev),
            (0..40u8).map(|i| vec![i]).collect::<Vec<_>>()
        );
        // b acked after every 16 deliveries: two ack frames so far.
        let acks = drain(&mut b);
        assert_eq!(acks.len(), 2);
        feed(&mut a, B, la, &acks);
        assert_eq!(a.peer_stats(B).expect("peer").unacked_frames, 41 - 32);
        b.flush_acks();
        let acks = drain(&mut b);
        assert_eq!(acks.len(), 1);
        feed(&mut a, B, la, &acks);
        assert_eq!(a.peer_stats(B).expect("peer").unacked_frames, 0);
        // Nothing more owed.
        b.flush_acks();
        assert!(drain(&mut b).is_empty());
        // Duplicates are dropped.
        let ev = feed(&mut b, A, lb, &t);
        assert!(payloads(&ev).is_empty());
        assert_eq!(b.peer_stats(A).expect("peer").duplicates, 40);
    }

    #[test]
    fn reconnect_resends_only_the_unacked() {
        let mut a = mc(A, 10);
        let mut b = mc(B, 20);
        let (_, lb, _, _) = connect(&mut a, &mut b);
        for i in 0..5u8 {
            a.send(B, vec![i]).expect("send");
        }
        let t = drain(&mut a);
        // b gets the first three; the link dies with the rest in flight.
        let ev = feed(&mut b, A, lb, &t[..3]);
        assert_eq!(payloads(&ev).len(), 3);
        drain(&mut b);
        assert!(a.link_down(B, 1));
        b.link_down(A, lb);
        // Frames from the dead link are ignored.
        let mut ev = Vec::new();
        b.receive(A, lb, &t[3].frame, &mut ev).expect("ignored");
        assert!(ev.is_empty());
        let (_, lb2, _, eb) = connect(&mut a, &mut b);
        assert!(payloads(&eb).is_empty());
        // a learnt from b's hello that 3 were delivered: resends 2.
        let t = drain(&mut a);
        assert_eq!(t.len(), 2);
        let ev = feed(&mut b, A, lb2, &t);
        assert_eq!(payloads(&ev), vec![vec![3], vec![4]]);
    }

    #[test]
    fn restart_resets_and_is_reported() {
        let mut a = mc(A, 10);
        let mut b = mc(B, 20);
        let (_, lb, _, _) = connect(&mut a, &mut b);
        for i in 0..3u8 {
            a.send(B, vec![i]).expect("send");
        }
        let old_frames = drain(&mut a);
        feed(&mut b, A, lb, &old_frames[..1]);
        // a restarts before the rest arrive.
        let mut a2 = mc(A, 11);
        b.link_down(A, lb);
        a2.send(B, b"new".to_vec()).expect("send");
        let (_, lb2, _, eb) = connect(&mut a2, &mut b);
        assert!(eb.contains(&Event::PeerRestarted {
            node: A,
            incarnation: 11,
            dropped: 0
        }));
        // An old frame replayed on the new link is refused, not delivered.
        let mut ev = Vec::new();
        let e = b
            .receive(A, lb2, &old_frames[1].frame, &mut ev)
            .expect_err("old incarnation");
        assert!(matches!(
            e,
            MidcommsError::Protocol {
                violation: Violation::SenderIncarnation {
                    expected: 11,
                    got: 10
                },
                ..
            }
        ));
        assert!(ev.is_empty());
        // The new incarnation's payload arrives on the next link.
        let (_, lb3, _, _) = connect(&mut a2, &mut b);
        let mut ev = feed(&mut b, A, lb3, &drain(&mut a2));
        assert_eq!(payloads(&ev), vec![b"new".to_vec()]);
        // A hello from the old incarnation is refused for good.
        let mut a_old = mc(A, 10);
        let l = b.link_up(A).expect("link");
        a_old.link_up(B).expect("link");
        let e = b
            .receive(A, l, &drain(&mut a_old)[0].frame, &mut ev)
            .expect_err("retired");
        assert!(matches!(
            e,
            MidcommsError::Protocol {
                violation: Violation::RetiredIncarnation(10),
                ..
            }
        ));
    }

    #[test]
    fn restart_of_the_receiver_drops_what_it_never_acked() {
        let mut a = mc(A, 10);
        let mut b = mc(B, 20);
        connect(&mut a, &mut b);
        for i in 0..4u8 {
            a.send(B, vec![i]).expect("send");
        }
        drain(&mut a);
        let mut b2 = mc(B, 21);
        a.link_down(B, 1);
        let (_, _, ea, _) = connect(&mut a, &mut b2);
        assert_eq!(
            ea[0],
            Event::PeerRestarted {
                node: B,
                incarnation: 21,
                dropped: 4
            }
        );
        let st = a.peer_stats(B).expect("peer");
        assert_eq!(
            (st.unacked_frames, st.next_seq, st.incarnation),
            (0, 1, Some(21))
        );
    }

    #[test]
    fn backlog_is_an_error_not_a_drop() {
        let limits = Limits {
            max_unacked_frames: 3,
            max_unacked_bytes: 10,
            ack_every: 16,
        };
        let mut a = Midcomms::new(A, 1, limits).expect("midcomms");
        assert!(a.has_room(B, 10), "an unknown peer has an empty backlog");
        a.send(B, vec![0; 4]).expect("1");
        a.send(B, vec![0; 4]).expect("2");
        assert!(a.has_room(B, 2) && !a.has_room(B, 3));
        let e = a.send(B, vec![0; 4]).expect_err("bytes");
        assert!(
            matches!(
                e,
                MidcommsError::Backlog {
                    frames: 2,
                    bytes: 8,
                    ..
                }
            ),
            "{e}"
        );
        a.send(B, vec![0; 2]).expect("3");
        assert!(!a.has_room(B, 0), "three frames: full");
        let e = a.send(B, vec![]).expect_err("frames");
        assert!(matches!(e, MidcommsError::Backlog { frames: 3, .. }), "{e}");
        assert!(matches!(
            a.send(B, vec![0; MAX_PAYLOAD + 1]),
            Err(MidcommsError::PayloadTooLarge { .. })
        ));
        assert_eq!(a.send(A, vec![]), Err(MidcommsError::SelfPeer(A)));
        assert_eq!(
            Midcomms::new(A, 0, limits).map(|_| ()),
            Err(MidcommsError::ZeroIncarnation)
        );
        // Once acknowledged, there is room again.
        let mut b = mc(B, 2);
        let (la, lb, _, _) = connect(&mut a, &mut b);
        let t = drain(&mut a);
        assert_eq!(t.len(), 3);
        let frame = Frame::decode(&t[2].frame).expect("frame");
        assert!(
            matches!(
                frame,
                Frame::Data {
                    ack_requested: true,
                    ..
                }
            ),
            "a full buffer asks for an ack"
        );
        feed(&mut b, A, lb, &t);
        let acks = drain(&mut b);
        assert!(!acks.is_empty(), "asked-for acks are sent at once");
        feed(&mut a, B, la, &acks);
        a.send(B, vec![0; 10]).expect("room again");
    }

    fn violation(setup: impl FnOnce(&mut Midcomms, &mut Midcomms, LinkId) -> Vec<u8>) -> Violation {
        let mut a = mc(A, 10);
        let mut b = mc(B, 20);
        let lb = b.link_up(A).expect("link");
        a.link_up(B).expect("link");
        let frame = setup(&mut a, &mut b, lb);
        let mut ev = Vec::new();
        match b.receive(A, lb, &frame, &mut ev) {
            Err(MidcommsError::Protocol {
                violation,
                link,
                peer,
            }) => {
                assert_eq!((peer, link), (A, lb));
                assert!(!b.is_current(A, lb), "the link is dead after a violation");
                assert!(drain(&mut b).iter().all(|t| t.link != lb));
                violation
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn violations() {
        let hello = |from, to, inc| {
            Frame::Hello {
                from,
                to,
                incarnation: inc,
                peer_incarnation: 0,
                ack: 0,
            }
            .encode()
        };
        let data = |inc, peer_inc, seq, ack| {
            Frame::Data {
                incarnation: inc,
                peer_incarnation: peer_inc,
                seq,
                ack,
                ack_requested: false,
                payload: vec![1],
            }
            .encode()
        };
        assert!(matches!(
            violation(|_, _, _| b"garbage".to_vec()),
            Violation::Frame(FrameError::Short(7))
        ));
        assert_eq!(
            violation(|_, _, _| hello(3, B, 10)),
            Violation::HelloFrom {
                claimed: 3,
                expected: A
            }
        );
        assert_eq!(
            violation(|_, _, _| hello(A, 3, 10)),
            Violation::HelloTo { to: 3, me: B }
        );
        assert_eq!(
            violation(|_, _, _| data(10, 20, 1, 0)),
            Violation::BeforeHello("data")
        );
        let after_hello = |frame: Vec<u8>| {
            violation(move |_, b, lb| {
                let mut ev = Vec::new();
                b.receive(A, lb, &hello(A, B, 10), &mut ev).expect("hello");
                frame
            })
        };
        assert_eq!(after_hello(hello(A, B, 10)), Violation::SecondHello);
        assert_eq!(
            after_hello(data(11, 20, 1, 0)),
            Violation::SenderIncarnation {
                expected: 10,
                got: 11
            }
        );
        assert_eq!(
            after_hello(data(10, 19, 1, 0)),
            Violation::WrongRecipient { mine: 20, got: 19 }
        );
        assert_eq!(
            after_hello(data(10, 20, 2, 0)),
            Violation::Gap {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(
            after_hello(data(10, 20, 1, 1)),
            Violation::AckUnsent { ack: 1, highest: 0 }
        );
        // A hello acking what was never sent to this incarnation.
        assert_eq!(
            violation(|_, _, _| Frame::Hello {
                from: A,
                to: B,
                incarnation: 10,
                peer_incarnation: 20,
                ack: 5
            }
            .encode()),
            Violation::AckUnsent { ack: 5, highest: 0 }
        );
    }

    #[test]
    fn a_new_link_replaces_the_old() {
        let mut a = mc(A, 10);
        let mut b = mc(B, 20);
        let (_, lb, _, _) = connect(&mut a, &mut b);
        a.send(B, b"x".to_vec()).expect("send");
        let t = drain(&mut a);
        let lb2 = b.link_up(A).expect("link");
        assert!(!b.is_current(A, lb));
        // The old link's hello-less frames are ignored; its queued frames
        // are gone.
        let mut ev = Vec::new();
        b.receive(A, lb, &t[0].frame, &mut ev).expect("ignored");
        assert!(ev.is_empty());
        assert!(drain(&mut b).iter().all(|t| t.link == lb2));
        assert!(!b.link_down(A, lb), "the old link is not current");
    }
}

#[cfg(test)]
mod sim {
    //! Property test: nodes exchanging payloads over links that are cut
    //! (everything in flight lost), re-established, fed replayed frames,
    //! and nodes that restart. Checked: per pair of incarnations, payloads
    //! are delivered exactly once and in order; nothing from a replaced
    //! incarnation is delivered after the restart is known; after the
    //! network heals, every payload is delivered or was reported dropped
    //! by a restart, and every buffer drains.

    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    #[derive(Debug, Clone)]
    enum Op {
        Send { from: usize, to: usize, len: usize },
        Step { from: usize, to: usize, n: usize },
        Connect { a: usize, b: usize },
        Cut { a: usize, b: usize },
        Replay { from: usize, to: usize, pick: usize },
        Restart { node: usize },
        FlushAcks { node: usize },
        RequestAcks { node: usize },
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        let pair = (0..n, 1..n).prop_map(move |(a, d)| (a, (a + d) % n));
        prop_oneof![
            20 => (pair.clone(), 0..40usize).prop_map(|((from, to), len)| Op::Send { from, to, len }),
            20 => (pair.clone(), 1..6usize).prop_map(|((from, to), n)| Op::Step { from, to, n }),
            4 => pair.clone().prop_map(|(a, b)| Op::Connect { a, b }),
            2 => pair.clone().prop_map(|(a, b)| Op::Cut { a, b }),
            2 => (pair.clone(), any::<usize>()).prop_map(|((from, to), pick)| Op::Replay { from, to, pick }),
            1 => (0..n).prop_map(|node| Op::Restart { node }),
            2 => (0..n).prop_map(|node| Op::FlushAcks { node }),
            1 => (0..n).prop_map(|node| Op::RequestAcks { node }),
        ]
    }

    struct SimLink {
        /// Link id at each end, by node index.
        ids: HashMap<usize, LinkId>,
        /// Frames in flight, by (from, to).
        queues: HashMap<(usize, usize), VecDeque<Vec<u8>>>,
    }

    struct Node {
        mid: Midcomms,
        inc: u64,
        /// Payloads sent by this incarnation, by destination index.
        sent: HashMap<usize, u64>,
        /// Indices reported dropped (sender side), by destination.
        dropped: HashMap<usize, HashSet<u64>>,
        /// Latest incarnation known for each peer (from events).
        known: HashMap<usize, u64>,
    }

    struct Sim {
        nodes: Vec<Node>,
        links: HashMap<(usize, usize), SimLink>,
        next_inc: u64,
        limits: Limits,
        /// Frames delivered so far, by (from, to), for replays.
        history: HashMap<(usize, usize), Vec<Vec<u8>>>,
        /// Per (sender inc, receiver inc): last index delivered.
        last_in_pair: HashMap<(u64, u64), u64>,
        /// Per (sender inc, receiver node): highest index delivered to any
        /// incarnation of the receiver, and the set of all.
        delivered: HashMap<(u64, usize), (u64, HashSet<u64>)>,
        deliveries: usize,
    }

    fn id(i: usize) -> NodeId {
        i as NodeId + 1
    }

    fn key(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    fn payload(inc: u64, to: usize, index: u64, len: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(20 + len);
        p.extend_from_slice(&inc.to_be_bytes());
        p.extend_from_slice(&(to as u32).to_be_bytes());
        p.extend_from_slice(&index.to_be_bytes());
        p.resize(20 + len, index as u8);
        p
    }

    impl Sim {
        fn new(n: usize, limits: Limits) -> Sim {
            let mut s = Sim {
                nodes: Vec::new(),
                links: HashMap::new(),
                next_inc: 100,
                limits,
                history: HashMap::new(),
                last_in_pair: HashMap::new(),
                delivered: HashMap::new(),
                deliveries: 0,
            };
            for i in 0..n {
                let node = s.fresh(i);
                s.nodes.push(node);
            }
            s
        }

        fn fresh(&mut self, i: usize) -> Node {
            self.next_inc += 1;
            Node {
                mid: Midcomms::new(id(i), self.next_inc, self.limits).expect("midcomms"),
                inc: self.next_inc,
                sent: HashMap::new(),
                dropped: HashMap::new(),
                known: HashMap::new(),
            }
        }

        /// Moves node `i`'s transmits into link queues.
        fn pump(&mut self, i: usize) {
            while let Some(t) = self.nodes[i].mid.poll_transmit() {
                let to = t.to as usize - 1;
                let link = self
                    .links
                    .get_mut(&key(i, to))
                    .expect("transmit for a link the simulation does not have");
                assert_eq!(link.ids[&i], t.link, "transmit for a stale link");
                link.queues.entry((i, to)).or_default().push_back(t.frame);
            }
        }

        fn connect(&mut self, a: usize, b: usize) {
            if self.links.contains_key(&key(a, b)) {
                return;
            }
            let la = self.nodes[a].mid.link_up(id(b)).expect("link_up");
            let lb = self.nodes[b].mid.link_up(id(a)).expect("link_up");
            self.links.insert(
                key(a, b),
                SimLink {
                    ids: HashMap::from([(a, la), (b, lb)]),
                    queues: HashMap::new(),
                },
            );
            self.pump(a);
            self.pump(b);
        }

        fn cut(&mut self, a: usize, b: usize) {
            if let Some(link) = self.links.remove(&key(a, b)) {
                self.nodes[a].mid.link_down(id(b), link.ids[&a]);
                self.nodes[b].mid.link_down(id(a), link.ids[&b]);
            }
        }

        fn send(&mut self, from: usize, to: usize, len: usize) {
            let n = &mut self.nodes[from];
            let index = n.sent.get(&to).copied().unwrap_or(0);
            match n.mid.send(id(to), payload(n.inc, to, index, len)) {
                Ok(()) => {
                    n.sent.insert(to, index + 1);
                }
                Err(MidcommsError::Backlog { .. }) => {}
                Err(e) => panic!("send: {e}"),
            }
            self.pump(from);
        }

        /// Hands one frame to `to` as if read from its link to `from`.
        /// A violation cuts the link, as the driver does; it is allowed only
        /// for replayed frames.
        fn deliver(&mut self, from: usize, to: usize, frame: &[u8], replayed: bool) {
            let Some(link) = self.links.get(&key(from, to)) else {
                return;
            };
            let lid = link.ids[&to];
            let mut events = Vec::new();
            let r = self.nodes[to]
                .mid
                .receive(id(from), lid, frame, &mut events);
            self.check_events(to, &events);
            match r {
                Ok(()) => self.pump(to),
                Err(e) => {
                    assert!(replayed, "violation on a genuine frame: {e}");
                    self.cut(from, to);
                }
            }
        }

        fn step(&mut self, from: usize, to: usize) -> bool {
            let Some(frame) = self
                .links
                .get_mut(&key(from, to))
                .and_then(|l| l.queues.get_mut(&(from, to)))
                .and_then(|q| q.pop_front())
            else {
                return false;
            };
            self.history
                .entry((from, to))
                .or_default()
                .push(frame.clone());
            self.deliver(from, to, &frame, false);
            true
        }

        fn check_events(&mut self, at: usize, events: &[Event]) {
            let my_inc = self.nodes[at].inc;
            for e in events {
                match e {
                    Event::Established { node, incarnation } => {
                        let p = *node as usize - 1;
                        if let Some(k) = self.nodes[at].known.get(&p) {
                            assert_eq!(
                                k, incarnation,
                                "established with a new incarnation unannounced"
                            );
                        }
                        self.nodes[at].known.insert(p, *incarnation);
                    }
                    Event::PeerRestarted {
                        node,
                        incarnation,
                        dropped,
                    } => {
                        let p = *node as usize - 1;
                        assert_ne!(self.nodes[at].known.get(&p), Some(incarnation));
                        self.nodes[at].known.insert(p, *incarnation);
                        // The dropped payloads are the last `dropped` sent.
                        let n = &mut self.nodes[at];
                        let sent = n.sent.get(&p).copied().unwrap_or(0);
                        let d = n.dropped.entry(p).or_default();
                        for i in sent - *dropped as u64..sent {
                            d.insert(i);
                        }
                    }
                    Event::Deliver { from, payload } => {
                        let s = *from as usize - 1;
                        let s_inc = u64::from_be_bytes(payload[0..8].try_into().expect("8"));
                        let dest = u32::from_be_bytes(payload[8..12].try_into().expect("4"));
                        let index = u64::from_be_bytes(payload[12..20].try_into().expect("8"));
                        assert_eq!(dest as usize, at, "delivered to the wrong node");
                        assert_eq!(
                            self.nodes[at].known.get(&s),
                            Some(&s_inc),
                            "delivery from an incarnation that is not the current one"
                        );
                        if let Some(last) = self.last_in_pair.get(&(s_inc, my_inc)) {
                            assert_eq!(index, last + 1, "out of order or duplicate");
                        }
                        self.last_in_pair.insert((s_inc, my_inc), index);
                        let (max, all) = self
                            .delivered
                            .entry((s_inc, at))
                            .or_insert((0, HashSet::new()));
                        assert!(
                            all.is_empty() || index > *max,
                            "payload {index} after {max}: delivered twice or out of order across incarnations"
                        );
                        *max = index;
                        all.insert(index);
                        self.deliveries += 1;
                    }
                }
            }
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Send { from, to, len } => self.send(from, to, len),
                Op::Step { from, to, n } => {
                    for _ in 0..n {
                        self.step(from, to);
                    }
                }
                Op::Connect { a, b } => self.connect(a, b),
                Op::Cut { a, b } => self.cut(a, b),
                Op::Replay { from, to, pick } => {
                    // Hellos are not replayed: a stale hello read before the
                    // real one would be taken for it (TLS rules that out on
                    // real links); data and ack frames must be harmless.
                    let Some(h) = self.history.get(&(from, to)) else {
                        return;
                    };
                    let h: Vec<&Vec<u8>> = h.iter().filter(|f| f[3] != KIND_HELLO).collect();
                    if h.is_empty() {
                        return;
                    }
                    let frame = h[pick % h.len()].clone();
                    self.deliver(from, to, &frame, true);
                }
                Op::Restart { node } => {
                    for other in 0..self.nodes.len() {
                        if other != node {
                            self.cut(node, other);
                        }
                    }
                    let fresh = self.fresh(node);
                    self.nodes[node] = fresh;
                }
                Op::FlushAcks { node } => {
                    self.nodes[node].mid.flush_acks();
                    self.pump(node);
                }
                Op::RequestAcks { node } => {
                    self.nodes[node].mid.request_acks();
                    self.pump(node);
                }
            }
        }

        /// No more faults: connect everyone and run until quiet.
        fn heal(&mut self) {
            let n = self.nodes.len();
            for a in 0..n {
                for b in a + 1..n {
                    self.connect(a, b);
                }
            }
            for _round in 0..10_000 {
                let mut moved = false;
                for a in 0..n {
                    for b in 0..n {
                        if a != b {
                            while self.step(a, b) {
                                moved = true;
                            }
                        }
                    }
                }
                if !moved {
                    for a in 0..n {
                        self.nodes[a].mid.flush_acks();
                        self.pump(a);
                    }
                    let queued = self
                        .links
                        .values()
                        .any(|l| l.queues.values().any(|q| !q.is_empty()));
                    if !queued {
                        return;
                    }
                }
            }
            panic!("the network did not go quiet");
        }

        fn check_complete(&self) {
            for (s, node) in self.nodes.iter().enumerate() {
                for (&to, &count) in &node.sent {
                    let got = self
                        .delivered
                        .get(&(node.inc, to))
                        .map(|(_, all)| all.clone())
                        .unwrap_or_default();
                    let dropped = node.dropped.get(&to).cloned().unwrap_or_default();
                    for i in 0..count {
                        assert!(
                            got.contains(&i) || dropped.contains(&i),
                            "payload {i} from node {} to node {} neither delivered nor reported dropped",
                            id(s),
                            id(to)
                        );
                    }
                    let st = node.mid.peer_stats(id(to)).expect("peer");
                    assert_eq!(st.unacked_frames, 0, "unacked left after healing");
                    assert_eq!(st.unacked_bytes, 0);
                }
            }
        }
    }

    fn limits() -> impl Strategy<Value = Limits> {
        prop_oneof![
            Just(Limits::default()),
            (1..12usize, 20..600usize, 1..5u64).prop_map(|(f, b, a)| Limits {
                max_unacked_frames: f,
                max_unacked_bytes: b,
                ack_every: a,
            }),
        ]
    }

    proptest! {
        // Cheap: 1000 cases unless PROPTEST_CASES says otherwise.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
            ..ProptestConfig::default()
        })]

        #[test]
        fn exactly_once_in_order_across_faults(
            (n, ops) in (2..=3usize).prop_flat_map(|n| (Just(n), prop::collection::vec(op(n), 0..600))),
            limits in limits(),
        ) {
            let mut sim = Sim::new(n, limits);
            for op in &ops {
                sim.apply(op);
            }
            sim.heal();
            sim.check_complete();
            // After healing, one more payload each way still gets through.
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        sim.send(a, b, 1);
                    }
                }
            }
            sim.heal();
            sim.check_complete();
        }

        #[test]
        fn decoding_is_total(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Frame::decode(&bytes);
            let _ = frame_len(&bytes);
        }

        #[test]
        fn decoding_mutated_frames_is_total(
            flips in prop::collection::vec((0..60usize, any::<u8>()), 1..4),
            cut in 0..60usize,
        ) {
            let mut f = Frame::Data {
                incarnation: 1,
                peer_incarnation: 2,
                seq: 3,
                ack: 4,
                ack_requested: false,
                payload: vec![7; 12],
            }
            .encode();
            for (at, v) in flips {
                if at < f.len() {
                    f[at] = v;
                }
            }
            f.truncate(cut.max(1));
            if let Ok(frame) = Frame::decode(&f) {
                prop_assert_eq!(frame.encode(), f);
            }
        }
    }

    #[test]
    fn a_long_run_delivers_everything() {
        let mut sim = Sim::new(3, Limits::default());
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        for _ in 0..20_000 {
            let a = rnd(3);
            let b = (a + 1 + rnd(2)) % 3;
            let op = match rnd(100) {
                0..=39 => Op::Send {
                    from: a,
                    to: b,
                    len: rnd(30),
                },
                40..=84 => Op::Step {
                    from: a,
                    to: b,
                    n: 1 + rnd(8),
                },
                85..=92 => Op::Connect { a, b },
                93..=95 => Op::Cut { a, b },
                96..=97 => Op::Replay {
                    from: a,
                    to: b,
                    pick: rnd(1000),
                },
                98 => Op::FlushAcks { node: a },
                _ => Op::Restart { node: a },
            };
            sim.apply(&op);
        }
        sim.heal();
        sim.check_complete();
        assert!(sim.deliveries > 1000, "only {} deliveries", sim.deliveries);
    }
}
