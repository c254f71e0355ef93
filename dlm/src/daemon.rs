//! The node daemon (`rdlm node`): the thin async driver around the
//! sans-I/O [`Node`]. It owns what the core may not: the clock, the QUIC
//! transport, the timer, and the Unix socket through which local programs
//! take locks ([`crate::client`]).
//!
//! One task owns the `Node`; everything else (peer traffic, client
//! connections, the timer) reaches it through channels, so the core's
//! single-threaded determinism is kept. Locks belong to client
//! connections: a connection that closes has its locks released (pending
//! ones cancelled, and released if the grant wins the race).

use crate::client::{MemberInfo, Reply, Request, ResourceInfo, StatusInfo, MAX_LINE};
use crate::config::ClusterConfig;
use crate::lockspace::{Callback, LsEvent, Output};
use crate::member::MemberEvent;
use crate::mode::Mode;
use crate::node::{LsOptions, Node, DEFAULT_LOCKSPACE};
use crate::outbox::Outbox;
use crate::resource::{Flags, NodeId};
use crate::transport::{generation_floor_now, new_incarnation, Incoming, Transport};
use crate::wire::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("node {node}: {detail}")]
    Setup { node: NodeId, detail: String },
    #[error("node {node}: socket {path}: {source}")]
    Socket {
        node: NodeId,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

type ClientId = u64;

/// How long an unused resource is kept (the kernel's 10 s `toss_secs`).
const TOSS_MS: u64 = 10_000;

enum ClientEvent {
    Connected(ClientId, mpsc::UnboundedSender<String>),
    Line(ClientId, String),
    Gone(ClientId),
}

struct Daemon {
    cluster: ClusterConfig,
    node: Node,
    transport: Transport,
    start: Instant,
    clients: BTreeMap<ClientId, mpsc::UnboundedSender<String>>,
    owner: BTreeMap<u64, ClientId>,
    /// Locks whose client went away: released as soon as they can be.
    orphans: BTreeSet<u64>,
    /// Messages held while a peer's backlog is full.
    outbox: Outbox,
}

/// A lockspace `rdlm node --lockspace` joins at start: `NAME`, or
/// `NAME:LEN` for LVBs of LEN bytes (default: the cluster file's
/// `lvb_len`). A name ending in `:` and digits must be given with a length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockspaceArg {
    pub name: String,
    pub lvb_len: Option<usize>,
}

impl std::str::FromStr for LockspaceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<LockspaceArg, String> {
        match s.rsplit_once(':') {
            Some((name, len)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                let n: usize = len
                    .parse()
                    .map_err(|_| format!("lockspace {name:?}: LVB length {len} is too large"))?;
                crate::wire::check_lvb_len(n).map_err(|e| format!("lockspace {name:?}: {e}"))?;
                Ok(LockspaceArg {
                    name: name.to_string(),
                    lvb_len: Some(n),
                })
            }
            _ => Ok(LockspaceArg {
                name: s.to_string(),
                lvb_len: None,
            }),
        }
    }
}

/// Runs node `me` (in the default lockspace) until `shutdown` resolves.
pub async fn run(
    cluster: ClusterConfig,
    me: NodeId,
    socket: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_in(cluster, me, socket, &[], shutdown).await
}

/// [`run`], joining `lockspaces` besides the default one from the start
/// (clients may join more with `join_lockspace`).
pub async fn run_in(
    cluster: ClusterConfig,
    me: NodeId,
    socket: PathBuf,
    lockspaces: &[LockspaceArg],
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let setup = |detail: String| DaemonError::Setup { node: me, detail };
    let incarnation = new_incarnation();
    let mut node = Node::new(
        me,
        incarnation,
        generation_floor_now(),
        cluster.member_config(),
        cluster.lvb_len,
    )
    .map_err(setup)?;
    for ls in lockspaces {
        let r = match ls.lvb_len {
            Some(lvb_len) => node.join_lockspace_with(&ls.name, LsOptions { lvb_len }),
            None => node.join_lockspace(&ls.name),
        };
        r.map_err(|e| setup(format!("lockspace {:?}: {e}", ls.name)))?;
    }
    node.set_toss_time(TOSS_MS);
    // Each client connection is one owner: its waits can close a cycle.
    node.set_deadlock_detection((cluster.heartbeat_ms * 5).max(100));
    let (transport, mut incoming) = Transport::start(&cluster, me, incarnation)
        .await
        .map_err(|e| setup(e.to_string()))?;
    if UnixStream::connect(&socket).await.is_ok() {
        return Err(setup(format!(
            "{} is in use by a running daemon",
            socket.display()
        )));
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| DaemonError::Socket {
        node: me,
        path: socket.display().to_string(),
        source,
    })?;
    info!(
        node = me,
        incarnation,
        socket = %socket.display(),
        cluster = %cluster.name,
        "node started"
    );
    let tick_every = Duration::from_millis((cluster.heartbeat_ms / 4).max(1));
    let mut d = Daemon {
        cluster,
        node,
        transport,
        start: Instant::now(),
        clients: BTreeMap::new(),
        owner: BTreeMap::new(),
        orphans: BTreeSet::new(),
        outbox: Outbox::new(),
    };
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<ClientEvent>();
    let mut next_client: ClientId = 1;
    // A one-node cluster has no peers, and its transport may close its
    // channel at once; with peers a closed channel is fatal.
    let alone = d.cluster.nodes.len() == 1;
    let mut transport_open = true;
    let mut timer = tokio::time::interval(tick_every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = timer.tick() => {
                let now = d.now();
                d.node.tick(now);
            }
            inc = incoming.recv(), if transport_open => match inc {
                Some(Incoming::Message { from, payload }) => match Message::decode(&payload) {
                    Ok(msg) if msg.from == from => {
                        let now = d.now();
                        d.node.receive(now, msg);
                    }
                    Ok(msg) => warn!(peer = from, claimed = msg.from, "message naming another sender dropped"),
                    Err(e) => warn!(peer = from, error = %e, "undecodable message dropped"),
                },
                Some(Incoming::PeerRestarted { from, incarnation }) => {
                    info!(peer = from, incarnation, "peer restarted");
                }
                Some(Incoming::Connected { peer }) => debug!(peer, "connected"),
                Some(Incoming::Disconnected { peer }) => debug!(peer, "disconnected"),
                None if alone => transport_open = false,
                None => {
                    warn!(node = me, "transport stopped");
                    break;
                }
            },
            acc = listener.accept() => match acc {
                Ok((stream, _)) => {
                    let id = next_client;
                    next_client += 1;
                    spawn_client(id, stream, ev_tx.clone());
                }
                Err(e) => warn!(error = %e, "accepting a client failed"),
            },
            Some(ev) = ev_rx.recv() => d.client_event(ev),
        }
        d.outbox.send_held(&d.transport, me);
        d.flush();
    }
    // A clean leave when nothing is held here: the others drop this node
    // at once instead of waiting out its lease.
    let now = d.now();
    if d.node.leave(now).is_ok() {
        d.flush();
        // Messages held for a full backlog go first (the leave is behind
        // them), bounded by a few heartbeats.
        let deadline = Instant::now() + Duration::from_millis(d.cluster.heartbeat_ms.max(20) * 10);
        while !d.outbox.send_held(&d.transport, me) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        info!(node = me, "left the cluster");
        tokio::time::sleep(Duration::from_millis(d.cluster.heartbeat_ms.max(20))).await;
    }
    info!(node = me, "node stopping");
    let _ = std::fs::remove_file(&socket);
    d.transport.shutdown().await;
    Ok(())
}

fn spawn_client(id: ClientId, stream: UnixStream, events: mpsc::UnboundedSender<ClientEvent>) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _ = events.send(ClientEvent::Connected(id, tx));
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut reader = BufReader::new(read);
        loop {
            let mut line = String::new();
            match (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_line(&mut line)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if events.send(ClientEvent::Line(id, line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = events.send(ClientEvent::Gone(id));
    });
}

fn flags(noqueue: bool, timeout: Option<u64>) -> Flags {
    let mut f = Flags::NONE;
    if noqueue {
        f = f | Flags::NOQUEUE;
    }
    if timeout.is_some() {
        f = f | Flags::TIMEOUT;
    }
    f
}

impl Daemon {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn reply(&self, client: ClientId, r: &Reply) {
        if let (Some(tx), Ok(mut line)) = (self.clients.get(&client), serde_json::to_string(r)) {
            line.push('\n');
            let _ = tx.send(line);
        }
    }

    fn client_event(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Connected(id, tx) => {
                self.clients.insert(id, tx);
            }
            ClientEvent::Gone(id) => {
                self.clients.remove(&id);
                let mine: Vec<u64> = self
                    .owner
                    .iter()
                    .filter(|(_, c)| **c == id)
                    .map(|(l, _)| *l)
                    .collect();
                for lkid in mine {
                    self.orphans.insert(lkid);
                    self.release_orphan(lkid);
                }
            }
            ClientEvent::Line(id, line) => {
                let reply = match serde_json::from_str::<Request>(line.trim_end()) {
                    Ok(req) => self.request(id, req),
                    Err(e) => Reply::Error {
                        error: if line.len() > MAX_LINE {
                            format!("request longer than {MAX_LINE} bytes")
                        } else {
                            format!("bad request: {e}")
                        },
                    },
                };
                self.reply(id, &reply);
            }
        }
    }

    fn owned(&self, client: ClientId, lkid: u64) -> Result<(), String> {
        match self.owner.get(&lkid) {
            Some(c) if *c == client => Ok(()),
            _ => Err(format!("lock {lkid} is not held by this connection")),
        }
    }

    fn request(&mut self, client: ClientId, req: Request) -> Reply {
        let now = self.now();
        let result: Result<Reply, String> = (|| match req {
            Request::Lock {
                name,
                mode,
                lockspace,
                noqueue,
                timeout_ms,
            } => {
                let mode: Mode = mode.parse()?;
                let ls = lockspace.as_deref().unwrap_or(DEFAULT_LOCKSPACE);
                let lkid = self
                    .node
                    .lock_in(
                        now,
                        ls,
                        0,
                        name.as_bytes(),
                        mode,
                        flags(noqueue, timeout_ms),
                        timeout_ms,
                    )
                    .map_err(|e| e.to_string())?;
                self.owner.insert(lkid, client);
                Ok(Reply::Accepted { lkid })
            }
            Request::Convert {
                lkid,
                mode,
                noqueue,
                timeout_ms,
            } => {
                self.owned(client, lkid)?;
                let mode: Mode = mode.parse()?;
                self.node
                    .convert_for(
                        now,
                        lkid,
                        mode,
                        flags(noqueue, timeout_ms),
                        None,
                        timeout_ms,
                    )
                    .map_err(|e| e.to_string())?;
                Ok(Reply::Accepted { lkid })
            }
            Request::Unlock { lkid } => {
                self.owned(client, lkid)?;
                self.node
                    .unlock(now, lkid, Flags::NONE, None)
                    .map_err(|e| e.to_string())?;
                Ok(Reply::Accepted { lkid })
            }
            Request::Cancel { lkid } => {
                self.owned(client, lkid)?;
                self.node.cancel(now, lkid).map_err(|e| e.to_string())?;
                Ok(Reply::Accepted { lkid })
            }
            Request::Status => Ok(Reply::Status(self.status(now))),
            Request::JoinLockspace { lockspace, lvb_len } => {
                match lvb_len {
                    Some(lvb_len) => self
                        .node
                        .join_lockspace_with(&lockspace, LsOptions { lvb_len }),
                    None => self.node.join_lockspace(&lockspace),
                }
                .map_err(|e| e.to_string())?;
                info!(lockspace = %lockspace, "joining lockspace");
                Ok(Reply::Done)
            }
            Request::LeaveLockspace { lockspace } => {
                self.node
                    .leave_lockspace(now, &lockspace)
                    .map_err(|e| e.to_string())?;
                info!(lockspace = %lockspace, "leaving lockspace");
                Ok(Reply::Done)
            }
            Request::Dump => Ok(Reply::Dump {
                resources: self.dump(),
            }),
        })();
        result.unwrap_or_else(|error| Reply::Error { error })
    }

    fn status(&self, now: u64) -> StatusInfo {
        let view = self.node.view();
        StatusInfo {
            cluster: self.cluster.name.clone(),
            node: self.node.id(),
            incarnation: self.node.incarnation(),
            generation: view.map(|v| v.generation),
            members: view
                .map(|v| {
                    v.members
                        .iter()
                        .map(|m| MemberInfo {
                            id: m.id,
                            slot: m.slot,
                            incarnation: m.incarnation,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            configured: self.cluster.nodes.iter().map(|n| n.id).collect(),
            quorum: self.node.membership().config().quorum(),
            quorate: self.node.quorate(now),
            recovering: self.node.lockspaces().any(|(_, l, _)| l.is_recovering()),
            locks: self.node.lock_count(),
            mastered: self
                .node
                .lockspaces()
                .map(|(_, l, _)| l.mastered_in_use())
                .sum(),
            lockspaces: self
                .node
                .lockspaces()
                .map(|(n, _, _)| n.to_string())
                .collect(),
        }
    }

    fn dump(&self) -> Vec<ResourceInfo> {
        self.node
            .lockspaces()
            .flat_map(|(ls, l, _)| l.resources().map(move |r| (ls, r)))
            .map(|(ls, r)| {
                let (lvb, valid, _) = r.lvb();
                let mut info = ResourceInfo {
                    lockspace: ls.to_string(),
                    name: String::from_utf8_lossy(r.name()).into_owned(),
                    lvb_valid: valid,
                    lvb_hex: lvb.iter().map(|b| format!("{b:02x}")).collect(),
                    grant_seq: r.grant_seq(),
                    granted: Vec::new(),
                    converting: Vec::new(),
                    waiting: Vec::new(),
                };
                for (id, gr, rq) in r.holders() {
                    match (gr, rq) {
                        (Some(g), None) => info.granted.push(format!("{id} {g}")),
                        (Some(g), Some(q)) => info.converting.push(format!("{id} {g} -> {q}")),
                        (None, q) => info.waiting.push(format!(
                            "{id} -> {}",
                            q.map_or("?".into(), |q| q.to_string())
                        )),
                    }
                }
                info
            })
            .collect()
    }

    fn release_orphan(&mut self, lkid: u64) {
        let now = self.now();
        if self.node.unlock(now, lkid, Flags::NONE, None).is_err() {
            // Pending: cancel it; if the grant wins, the grant releases it.
            let _ = self.node.cancel(now, lkid);
        }
    }

    /// Everything the core produced: messages out, callbacks to clients.
    fn flush(&mut self) {
        loop {
            let outs = self.node.drain();
            if outs.is_empty() {
                return;
            }
            for o in outs {
                match o {
                    Output::Send { to, msg } => {
                        if let Err(e) = self.outbox.send(&self.transport, to, msg.encode()) {
                            warn!(peer = to, error = %e, "send failed");
                        }
                    }
                    Output::Callback(cb) => self.callback(cb),
                    Output::Membership(e) => self.membership(e),
                    Output::Lockspace { name, event } => match event {
                        LsEvent::RecoverPrep {
                            generation,
                            departed,
                            ..
                        } => info!(
                            lockspace = %name,
                            generation,
                            departed = ?departed.iter().map(|m| m.id).collect::<Vec<_>>(),
                            "lockspace recovery starts"
                        ),
                        LsEvent::RecoverDone { generation } => {
                            info!(lockspace = %name, generation, "lockspace recovered; grants resume")
                        }
                        LsEvent::Left => info!(lockspace = %name, "left lockspace"),
                        LsEvent::Lost { reason } => {
                            warn!(lockspace = %name, %reason, "every lock in the lockspace is gone")
                        }
                        LsEvent::Refused { reason } => {
                            warn!(lockspace = %name, %reason, "lockspace join refused")
                        }
                    },
                }
            }
        }
    }

    fn callback(&mut self, cb: Callback) {
        let (lkid, reply, gone) = match cb {
            Callback::Granted {
                lkid, mode, seq, ..
            } => (
                lkid,
                Reply::Granted {
                    lkid,
                    mode: mode.to_string(),
                    seq,
                },
                false,
            ),
            Callback::Failed { lkid, error } => (
                lkid,
                Reply::Failed {
                    lkid,
                    error: error.to_string(),
                },
                !self.node.has_lock(lkid),
            ),
            Callback::Unlocked { lkid } => (lkid, Reply::Unlocked { lkid }, true),
            Callback::Blocking { lkid, mode } => (
                lkid,
                Reply::Blocking {
                    lkid,
                    mode: mode.to_string(),
                },
                false,
            ),
            Callback::Recovered { generation } => {
                info!(generation, "lockspace recovered; grants resume");
                return;
            }
        };
        if gone {
            self.orphans.remove(&lkid);
            if let Some(c) = self.owner.remove(&lkid) {
                self.reply(c, &reply);
            }
        } else if self.orphans.contains(&lkid) {
            if !matches!(reply, Reply::Blocking { .. }) {
                self.release_orphan(lkid);
            }
        } else if let Some(&c) = self.owner.get(&lkid) {
            self.reply(c, &reply);
        }
    }

    fn membership(&mut self, e: MemberEvent) {
        match e {
            MemberEvent::Committed {
                view,
                departed,
                left,
            } => {
                info!(
                    generation = view.generation,
                    members = ?view.ids(),
                    departed = ?departed.iter().map(|m| (m.id, m.slot)).collect::<Vec<_>>(),
                    left_cleanly = ?left.iter().map(|m| m.id).collect::<Vec<_>>(),
                    "membership committed"
                );
            }
            MemberEvent::Lost {
                incarnation,
                reason,
            } => {
                warn!(incarnation, %reason, "lease lost: every lock of this node is gone");
                let reply = Reply::Lost { reason };
                for c in self.clients.keys() {
                    self.reply(*c, &reply);
                }
                self.owner.clear();
                self.orphans.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LockspaceArg;

    #[test]
    fn lockspace_args_take_an_optional_lvb_length() {
        let p = |s: &str| s.parse::<LockspaceArg>();
        assert_eq!(
            p("fs:64"),
            Ok(LockspaceArg {
                name: "fs".into(),
                lvb_len: Some(64)
            })
        );
        assert_eq!(
            p("scripts"),
            Ok(LockspaceArg {
                name: "scripts".into(),
                lvb_len: None
            })
        );
        // Only a trailing number is a length.
        assert_eq!(p("a:b").map(|a| a.name), Ok("a:b".into()));
        assert_eq!(p("a:").map(|a| a.lvb_len), Ok(None));
        for bad in ["fs:60", "fs:0", "fs:2048", "fs:99999999999999999999999"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("\"fs\""), "{bad}: {e}");
        }
    }
}
