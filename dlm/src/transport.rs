//! The network driver: QUIC connections between the nodes of a cluster,
//! carrying [`midcomms`] frames, on tokio and quinn.
//!
//! This module owns sockets, connections, streams, reconnect timers and the
//! tasks that run them. It carries opaque payloads: it knows nothing of
//! locks, and it decides nothing about membership — heartbeats and failure
//! detection belong to the membership layer, which uses the
//! [`Incoming::Connected`] / [`Incoming::Disconnected`] reports as hints
//! only. Sequence numbers, acks and incarnations are midcomms' business; this
//! module feeds it and writes what it asks for.
//!
//! How it works:
//! - One UDP endpoint per node, bound to the node's address from the
//!   cluster file, serving and dialling with the node's certificate
//!   ([`tls`]: TLS 1.3, ALPN `rdlm/1`, client certificates
//!   required, both sides checked against the cluster CA only).
//! - One connection per pair of nodes: **the lower id dials the higher id**.
//!   So two nodes never race to dial each other and no duplicate has to be
//!   resolved. A connection dialled by the higher id is refused. When a new
//!   connection from a lower id arrives while an old one is still up (the
//!   dialer restarted, or saw the old one die first), the new one replaces
//!   the old: the dialer only dials when it believes it has no connection.
//! - Per connection, the dialer opens one bidirectional stream; each
//!   direction carries frames back to back (each frame's header states its
//!   length, checked before the body is read). The first frame each way is
//!   the hello. The acceptor reads the dialer's hello before handing the
//!   connection to the peer's task, and refuses the connection if the node
//!   id in the hello differs from the one in the client certificate — so a
//!   node with node 2's certificate cannot speak as node 3. The dialer
//!   checks the server's certificate names the node it dialled (rustls
//!   checks the server name; the id is read again from the certificate).
//! - One task per peer runs that peer's connections one after another, so
//!   everything reported about a peer ([`Incoming`]) is in order. The
//!   dialling side retries with a backoff from 20 ms doubling up to the
//!   heartbeat interval (at least 100 ms), so a reachable peer is back
//!   within about one heartbeat. Writes go through a per-connection writer
//!   task; its queue is bounded by midcomms' unacked limit.
//! - QUIC keep-alives go every heartbeat interval and a connection idle for
//!   the failure timeout is closed, so a peer that vanished without closing
//!   (killed, unplugged) is noticed and redialled. So when the higher id of
//!   a pair is killed and restarted, the lower id redials it, and reports
//!   the restart, only once its old connection has timed out; when the
//!   lower id restarts, it dials at once and its new connection replaces
//!   the old one on the other side.
//! - Ack frames owed are flushed every heartbeat interval.
//! - Delivery to the owner goes through a bounded channel; when the owner
//!   does not keep up, reading stops, QUIC flow control holds the sender,
//!   and the sender's midcomms buffer fills until `send` fails with a
//!   backlog error. Nothing is dropped silently.

use crate::config::ClusterConfig;
use crate::midcomms::{self, frame_len, Frame, Limits, LinkId, Midcomms, MidcommsError};
use crate::resource::NodeId;
use crate::tls::{self, Identity, TlsError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// What the owner of a [`Transport`] receives, in order per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The next payload from `from`: each exactly once, in the order sent,
    /// within one incarnation of each side.
    Message { from: NodeId, payload: Vec<u8> },
    /// `from` restarted: it now runs as `incarnation`. Nothing its old
    /// incarnation sent will arrive any more; payloads sent to the old
    /// incarnation and not acknowledged are dropped.
    PeerRestarted { from: NodeId, incarnation: u64 },
    /// A connection to `peer` is up and both hellos have crossed it.
    Connected { peer: NodeId },
    /// The connection to `peer` is gone; reconnection is under way.
    Disconnected { peer: NodeId },
}

/// Counters, for status output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Connections refused because the peer could not prove who it was
    /// (TLS verification failed, certificate and hello disagree, wrong
    /// direction, unknown node).
    pub refused: u64,
    /// Connections that got as far as exchanging hellos.
    pub established: u64,
    /// Links closed because the peer broke the frame protocol.
    pub protocol_errors: u64,
    /// Dial attempts that failed for other reasons (peer down, timeout).
    pub dial_failures: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is not in the cluster file")]
    NotInConfig(NodeId),
    #[error("node {0} is this node")]
    ToSelf(NodeId),
    #[error("node {node}: {source}")]
    Tls {
        node: NodeId,
        #[source]
        source: TlsError,
    },
    #[error("node {node}: QUIC configuration: {detail}")]
    Quic { node: NodeId, detail: String },
    #[error("node {node}: cannot resolve address {address}: {detail}")]
    Resolve {
        node: NodeId,
        address: String,
        detail: String,
    },
    #[error("node {node}: cannot listen on {addr}: {source}")]
    Bind {
        node: NodeId,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Midcomms(#[from] MidcommsError),
    #[error("the transport is shut down")]
    Closed,
}

/// QUIC application close codes this module uses.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;
const CLOSE_REPLACED: u32 = 3;
const CLOSE_DROPPED: u32 = 4;

const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// A link that lived this long resets the dial backoff.
const STABLE_LINK: Duration = Duration::from_secs(1);
const EVENT_CAPACITY: usize = 1024;
/// Accepted connections waiting for their peer's task.
const ACCEPT_QUEUE: usize = 4;

/// A fresh incarnation for this process: nanoseconds since the Unix epoch
/// (never 0). Two starts of one node get different values unless the clock
/// goes back by exactly the time between them.
pub fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mix in the process id so two processes started in the same
    // nanosecond (tests) still differ.
    (nanos ^ (u64::from(std::process::id()) << 48)).max(1)
}

/// The lowest generation a starting node may propose: wall-clock seconds,
/// so that a cluster restarted after every node went down never reuses a
/// generation (and so a fencing token) of its previous life.
pub fn generation_floor_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX / 2)) as u32)
        .unwrap_or(0)
}

struct LinkSlot {
    id: LinkId,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    conn: quinn::Connection,
}

struct State {
    mid: Midcomms,
    links: HashMap<NodeId, LinkSlot>,
}

impl State {
    /// Hands midcomms' transmits to the writers of their links. Called
    /// under the lock after every midcomms call, so frames reach each
    /// writer in midcomms' order.
    fn dispatch(&mut self) {
        while let Some(t) = self.mid.poll_transmit() {
            if let Some(slot) = self.links.get(&t.to) {
                if slot.id == t.link {
                    // A closed writer means the link is ending; its reader
                    // will tell midcomms.
                    let _ = slot.writer.send(t.frame);
                }
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    established: AtomicU64,
    protocol_errors: AtomicU64,
    dial_failures: AtomicU64,
}

struct Shared {
    me: NodeId,
    config: ClusterConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    state: Mutex<State>,
    counters: Counters,
    shutdown: watch::Sender<bool>,
    heartbeat: Duration,
    failure_timeout: Duration,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves midcomms in a
        // state that is still consistent (every method finishes its
        // updates before returning), so go on rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection with its stream, before it becomes a link.
struct LinkIo {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The peer's hello, already read by the acceptor.
    first: Option<Vec<u8>>,
}

/// The network side of one node. Dropping it stops everything (without
/// waiting); [`Transport::shutdown`] stops it and waits.
pub struct Transport {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.shared.me)
            .field("cluster", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Starts node `me` of `config` as `incarnation` (see
    /// [`new_incarnation`]; a restarted process must use a new one). Binds
    /// the node's address, starts dialling the peers with higher ids and
    /// accepting those with lower ids. Must be called within a tokio
    /// runtime. The owner must keep draining the receiver: while it is
    /// full, reading stops (see the module docs); once it is dropped, the
    /// transport stops reconnecting.
    pub async fn start(
        config: &ClusterConfig,
        me: NodeId,
        incarnation: u64,
    ) -> Result<(Transport, mpsc::Receiver<Incoming>), TransportError> {
        let entry = config.node(me).ok_or(TransportError::NotInConfig(me))?;
        let identity = Identity::load(config, me)
            .map_err(|source| TransportError::Tls { node: me, source })?;
        let quic_err = |detail: String| TransportError::Quic { node: me, detail };
        let heartbeat = Duration::from_millis(config.heartbeat_ms);
        let failure_timeout = Duration::from_millis(config.failure_timeout_ms);
        let transport_config =
            |incoming_bidi: u32| -> Result<Arc<quinn::TransportConfig>, TransportError> {
                let mut t = quinn::TransportConfig::default();
                t.keep_alive_interval(Some(heartbeat));
                t.max_idle_timeout(Some(
                    quinn::IdleTimeout::try_from(failure_timeout)
                        .map_err(|e| quic_err(format!("idle timeout: {e}")))?,
                ));
                // The dialer opens exactly one stream; nobody opens more.
                t.max_concurrent_bidi_streams(VarInt::from_u32(incoming_bidi));
                t.max_concurrent_uni_streams(VarInt::from_u32(0));
                Ok(Arc::new(t))
            };
        let server_tls = identity
            .server_config()
            .map_err(|source| TransportError::Tls { node: me, source })?;
        let client_tls = identity
            .client_config()
            .map_err(|source| TransportError::Tls { node: me, source })?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(Arc::new(server_tls))
                .map_err(|e| quic_err(format!("server TLS: {e}")))?,
        ));
        server_config.transport_config(transport_config(1)?);
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(Arc::new(client_tls))
                .map_err(|e| quic_err(format!("client TLS: {e}")))?,
        ));
        client_config.transport_config(transport_config(0)?);

        let addr = resolve(&entry.address)
            .await
            .map_err(|detail| TransportError::Resolve {
                node: me,
                address: entry.address.clone(),
                detail,
            })?;
        let endpoint = quinn::Endpoint::server(server_config, addr).map_err(|source| {
            TransportError::Bind {
                node: me,
                addr,
                source,
            }
        })?;
        let mid = Midcomms::new(me, incarnation, Limits::default())?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            me,
            config: config.clone(),
            endpoint,
            client_config,
            state: Mutex::new(State {
                mid,
                links: HashMap::new(),
            }),
            counters: Counters::default(),
            shutdown,
            heartbeat,
            failure_timeout,
        });
        info!(
            node = me,
            cluster = %config.name,
            %addr,
            incarnation = format_args!("{incarnation:#x}"),
            "transport listening"
        );

        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let mut tasks = Vec::new();
        let mut accept_routes = HashMap::new();
        for peer in config.node_ids().filter(|&p| p != me) {
            let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
            if peer < me {
                accept_routes.insert(peer, tx);
            }
            tasks.push(tokio::spawn(peer_task(
                shared.clone(),
                peer,
                rx,
                events_tx.clone(),
            )));
        }
        tasks.push(tokio::spawn(accept_loop(shared.clone(), accept_routes)));
        tasks.push(tokio::spawn(ack_timer(shared.clone())));
        Ok((Transport { shared, tasks }, events_rx))
    }

    pub fn me(&self) -> NodeId {
        self.shared.me
    }

    pub fn incarnation(&self) -> u64 {
        self.shared.state().mid.incarnation()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addr().ok()
    }

    /// Queues `payload` for node `to`: written now if connected, else when
    /// connected again; kept until `to` acknowledges it. Fails if `to` is
    /// this node or not in the cluster file, if the payload is larger than
    /// [`midcomms::MAX_PAYLOAD`], or if too much is already unacknowledged
    /// for `to` (backlog) — the payload is then not queued.
    pub fn send(&self, to: NodeId, payload: Vec<u8>) -> Result<(), TransportError> {
        if *self.shared.shutdown.borrow() {
            return Err(TransportError::Closed);
        }
        if to == self.shared.me {
            return Err(TransportError::ToSelf(to));
        }
        if self.shared.config.node(to).is_none() {
            return Err(TransportError::NotInConfig(to));
        }
        let mut st = self.shared.state();
        st.mid.send(to, payload)?;
        st.dispatch();
        Ok(())
    }

    /// [`Transport::send`], unless the backlog to `to` is full: then the
    /// payload comes back (Ok(Some)) for the caller to send later.
    pub fn send_or_hold(
        &self,
        to: NodeId,
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        if !self.shared.state().mid.has_room(to, payload.len()) {
            return Ok(Some(payload));
        }
        self.send(to, payload).map(|()| None)
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.shared.counters;
        TransportStats {
            refused: c.refused.load(Ordering::Relaxed),
            established: c.established.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            dial_failures: c.dial_failures.load(Ordering::Relaxed),
        }
    }

    /// Midcomms' view of `peer` (sequence numbers, backlog).
    pub fn peer_stats(&self, peer: NodeId) -> Option<midcomms::PeerStats> {
        self.shared.state().mid.peer_stats(peer)
    }

    /// Closes every current connection from this side, losing whatever is
    /// in flight on them; they are re-established as usual and midcomms
    /// resends what was not acknowledged. For tests, and for an operator
    /// who knows the network changed under the node.
    pub fn drop_connections(&self) {
        let st = self.shared.state();
        for slot in st.links.values() {
            slot.conn
                .close(VarInt::from_u32(CLOSE_DROPPED), b"connections dropped");
        }
    }

    /// Stops every task, closes every connection (peers see the close at
    /// once rather than after their idle timeout) and waits, within the
    /// failure timeout, for the closes to be sent.
    pub async fn shutdown(mut self) {
        self.stop();
        // The tasks see the signal and end their links cleanly; any still
        // running after a grace period (stuck handing an event to an owner
        // that stopped reading) is aborted.
        let grace = tokio::time::Instant::now() + self.shared.heartbeat;
        for mut t in self.tasks.drain(..) {
            if tokio::time::timeout_at(grace, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        let _ = tokio::time::timeout(
            self.shared.failure_timeout,
            self.shared.endpoint.wait_idle(),
        )
        .await;
    }

    fn stop(&self) {
        let _ = self.shared.shutdown.send(true);
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `host:port` to one socket address (the first the resolver gives).
async fn resolve(address: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| e.to_string())?;
    addrs.next().ok_or_else(|| "no addresses".to_string())
}

/// Why reading a frame failed.
enum ReadFailure {
    /// The stream or connection ended or broke.
    Stream(String),
    /// The peer sent something that is not a frame.
    Garbage(midcomms::FrameError),
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::Stream(e) => f.write_str(e),
            ReadFailure::Garbage(e) => write!(f, "bad frame header: {e}"),
        }
    }
}

/// Reads one frame: the header, then the body the header announces (after
/// checking it is within bounds).
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, ReadFailure> {
    let mut header = [0u8; midcomms::HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| ReadFailure::Stream(format!("reading a frame header: {e}")))?;
    let total = frame_len(&header).map_err(ReadFailure::Garbage)?;
    let mut frame = vec![0u8; total];
    frame[..midcomms::HEADER_LEN].copy_from_slice(&header);
    recv.read_exact(&mut frame[midcomms::HEADER_LEN..])
        .await
        .map_err(|e| ReadFailure::Stream(format!("reading a frame body: {e}")))?;
    Ok(frame)
}

/// Whether a connection error is a TLS verification failure, and whose.
fn tls_failure(e: &ConnectionError) -> Option<&'static str> {
    let is_crypto = |code: quinn::TransportErrorCode| u64::from(code) & !0xff == 0x100;
    match e {
        ConnectionError::TransportError(t) if is_crypto(t.code) => Some("refused by us"),
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => {
            Some("refused by the peer")
        }
        _ => None,
    }
}

/// The node id in the verified certificate of the other side of `conn`,
/// and a check that ALPN agreed on `rdlm/1`.
fn peer_node_id(conn: &quinn::Connection, cluster: &str) -> Result<NodeId, String> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() != Some(tls::ALPN) {
        return Err(format!("application protocol {alpn:?}, expected rdlm/1"));
    }
    let certs = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| "no peer certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "empty certificate chain".to_string())?;
    tls::node_id_from_cert(leaf, cluster).map_err(|e| e.to_string())
}

async fn accept_loop(shared: Arc<Shared>, routes: HashMap<NodeId, mpsc::Sender<LinkIo>>) {
    let mut shutdown = shared.shutdown.subscribe();
    let routes = Arc::new(routes);
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(handle_incoming(shared.clone(), incoming, routes.clone()));
    }
}

/// Handshake, identity check and hello of one accepted connection, then
/// hand it to the peer's task. Everything is bounded by the failure
/// timeout, so a silent client cannot hold a task.
async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    routes: Arc<HashMap<NodeId, mpsc::Sender<LinkIo>>>,
) {
    let me = shared.me;
    let addr = incoming.remote_address();
    let limit = shared.failure_timeout;
    let conn = match tokio::time::timeout(limit, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if let Some(who) = tls_failure(&e) {
                shared.refused();
                warn!(node = me, %addr, "refused a connection: TLS verification failed ({who}): {e}");
            } else {
                debug!(node = me, %addr, "incoming connection failed: {e}");
            }
            return;
        }
        Err(_) => {
            debug!(node = me, %addr, "incoming handshake timed out");
            return;
        }
    };
    let refuse = |conn: &quinn::Connection, claimed: Option<NodeId>, why: &str| {
        shared.refused();
        warn!(
            node = me,
            %addr,
            claimed = claimed.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            "refused a connection: {why}"
        );
        conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
    };
    let cert_id = match peer_node_id(&conn, &shared.config.name) {
        Ok(id) => id,
        Err(why) => return refuse(&conn, None, &format!("peer certificate: {why}")),
    };
    let opened = tokio::time::timeout(limit, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let first = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv, first))
    })
    .await;
    let (send, recv, first) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            debug!(node = me, %addr, cert = cert_id, "no hello: {e}");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no hello");
            return;
        }
        Err(_) => {
            debug!(node = me, %addr, cert = cert_id, "no hello within the failure timeout");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no hello");
            return;
        }
    };
    let (from, to) = match Frame::decode(&first) {
        Ok(Frame::Hello { from, to, .. }) => (from, to),
        Ok(_) => return refuse(&conn, Some(cert_id), "the first frame is not a hello"),
        Err(e) => return refuse(&conn, Some(cert_id), &format!("undecodable hello: {e}")),
    };
    if from != cert_id {
        return refuse(
            &conn,
            Some(from),
            &format!("it claims to be node {from} but its certificate names node {cert_id}"),
        );
    }
    if to != me {
        return refuse(
            &conn,
            Some(from),
            &format!("its hello is addressed to node {to}"),
        );
    }
    let Some(route) = routes.get(&from) else {
        let why = if shared.config.node(from).is_none() {
            format!("node {from} is not in the cluster file")
        } else {
            format!("node {from} dialled node {me}, but the lower id dials")
        };
        return refuse(&conn, Some(from), &why);
    };
    debug!(node = me, peer = from, %addr, "accepted a connection");
    let io = LinkIo {
        conn,
        send,
        recv,
        first: Some(first),
    };
    // The peer task takes connections one at a time; if it is gone the
    // transport is shutting down.
    let _ = route.send(io).await;
}

async fn dial(shared: &Shared, peer: NodeId) -> Result<LinkIo, (bool, String)> {
    let entry = shared
        .config
        .node(peer)
        .ok_or_else(|| (false, "not in the cluster file".to_string()))?;
    let addr = resolve(&entry.address)
        .await
        .map_err(|e| (false, format!("resolving {}: {e}", entry.address)))?;
    let name = tls::node_name(&shared.config.name, peer);
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &name)
        .map_err(|e| (false, format!("connecting to {addr}: {e}")))?;
    let conn = match tokio::time::timeout(shared.failure_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err((
                tls_failure(&e).is_some(),
                format!("handshake with {addr}: {e}"),
            ))
        }
        Err(_) => return Err((false, format!("handshake with {addr} timed out"))),
    };
    // rustls checked the server name; read the id again so that a CA
    // that issued odd certificates cannot slip another node in.
    match peer_node_id(&conn, &shared.config.name) {
        Ok(id) if id == peer => {}
        Ok(id) => {
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return Err((true, format!("{addr} presented node {id}'s certificate")));
        }
        Err(why) => {
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return Err((true, format!("{addr}: {why}")));
        }
    }
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| (false, format!("opening the stream to {addr}: {e}")))?;
    Ok(LinkIo {
        conn,
        send,
        recv,
        first: None,
    })
}

/// Why a link ended.
enum LinkEnd {
    /// Connection lost or closed; reconnect.
    Lost,
    /// A newer connection from the peer arrived.
    Replaced(LinkIo),
    /// The transport is stopping, or the owner dropped the receiver.
    Stop,
}

/// Runs the connections to one peer, one after another.
async fn peer_task(
    shared: Arc<Shared>,
    peer: NodeId,
    mut accepted: mpsc::Receiver<LinkIo>,
    events: mpsc::Sender<Incoming>,
) {
    let me = shared.me;
    let dialer = me < peer;
    let mut shutdown = shared.shutdown.subscribe();
    let backoff_max = shared.heartbeat.max(Duration::from_millis(100));
    let mut backoff = BACKOFF_MIN;
    // The kind of the last dial failure (refused or not), if the last dial failed.
    let mut failing: Option<bool> = None;
    let mut next: Option<LinkIo> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let io = if let Some(io) = next.take() {
            io
        } else if dialer {
            let r = tokio::select! {
                r = dial(&shared, peer) => r,
                _ = shutdown.changed() => return,
            };
            match r {
                Ok(io) => io,
                Err((refused, why)) => {
                    // Each kind of failure is said once per run of them
                    // (at debug level after that): it repeats every backoff
                    // period until the peer is back or an operator acts.
                    let repeated = failing == Some(refused);
                    if refused {
                        shared.refused();
                        if repeated {
                            debug!(
                                node = me,
                                peer, "refused the connection to node {peer} again: {why}"
                            );
                        } else {
                            warn!(
                                node = me,
                                peer, "refused the connection to node {peer}: {why}"
                            );
                        }
                    } else {
                        shared
                            .counters
                            .dial_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if repeated {
                            debug!(node = me, peer, "dial failed: {why}");
                        } else {
                            info!(node = me, peer, "cannot reach node {peer}: {why}; retrying");
                        }
                    }
                    failing = Some(refused);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(backoff_max);
                    continue;
                }
            }
        } else {
            tokio::select! {
                io = accepted.recv() => match io {
                    Some(io) => io,
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        };
        failing = None;
        let started = Instant::now();
        match run_link(&shared, peer, io, &mut accepted, &events, &mut shutdown).await {
            LinkEnd::Stop => return,
            LinkEnd::Replaced(io) => next = Some(io),
            LinkEnd::Lost => {
                if dialer {
                    if started.elapsed() >= STABLE_LINK {
                        backoff = BACKOFF_MIN;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(backoff_max);
                }
            }
        }
    }
}

/// Runs one link until it ends: registers it with midcomms, starts its
/// writer, feeds every frame read to midcomms and forwards the events.
async fn run_link(
    shared: &Shared,
    peer: NodeId,
    io: LinkIo,
    accepted: &mut mpsc::Receiver<LinkIo>,
    events: &mpsc::Sender<Incoming>,
    shutdown: &mut watch::Receiver<bool>,
) -> LinkEnd {
    let me = shared.me;
    // Only the higher id accepts connections (see the module docs).
    let accepts = peer < me;
    let LinkIo {
        conn,
        send,
        mut recv,
        mut first,
    } = io;
    let addr = conn.remote_address();
    let (tx, rx) = mpsc::unbounded_channel();
    let link = {
        let mut st = shared.state();
        let link = match st.mid.link_up(peer) {
            Ok(l) => l,
            Err(e) => {
                warn!(node = me, peer, "cannot start a link: {e}");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"internal error");
                return LinkEnd::Lost;
            }
        };
        if let Some(old) = st.links.insert(
            peer,
            LinkSlot {
                id: link,
                writer: tx,
                conn: conn.clone(),
            },
        ) {
            old.conn
                .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
        }
        st.dispatch();
        link
    };
    let writer = tokio::spawn(write_loop(send, rx));
    let mut buf = Vec::new();
    // Whether the owner was told `Connected` for this link (and so must be
    // told `Disconnected` when it ends).
    let mut established = false;
    let end = 'link: loop {
        let frame = match first.take() {
            Some(f) => Ok(f),
            None => tokio::select! {
                r = read_frame(&mut recv) => r,
                io = accepted.recv(), if accepts => match io {
                    Some(io) => {
                        info!(node = me, peer, "a new connection from node {peer} replaces the old one");
                        break LinkEnd::Replaced(io);
                    }
                    None => break LinkEnd::Stop,
                },
                _ = shutdown.changed() => break LinkEnd::Stop,
            },
        };
        let frame = match frame {
            Ok(f) => f,
            Err(ReadFailure::Stream(e)) => {
                debug!(node = me, peer, %addr, "link ended: {e}");
                break LinkEnd::Lost;
            }
            Err(e @ ReadFailure::Garbage(_)) => {
                shared
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(node = me, peer, %addr, "closing the link: {e}");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
                break LinkEnd::Lost;
            }
        };
        buf.clear();
        let result = {
            let mut st = shared.state();
            let r = st.mid.receive(peer, link, &frame, &mut buf);
            st.dispatch();
            r
        };
        for ev in buf.drain(..) {
            let out = match ev {
                midcomms::Event::Deliver { from, payload } => Incoming::Message { from, payload },
                midcomms::Event::Established { node, incarnation } => {
                    established = true;
                    shared.counters.established.fetch_add(1, Ordering::Relaxed);
                    info!(
                        node = me,
                        peer = node,
                        %addr,
                        incarnation = format_args!("{incarnation:#x}"),
                        "connected"
                    );
                    Incoming::Connected { peer: node }
                }
                midcomms::Event::PeerRestarted {
                    node,
                    incarnation,
                    dropped,
                } => {
                    warn!(
                        node = me,
                        peer = node,
                        incarnation = format_args!("{incarnation:#x}"),
                        dropped,
                        "node {node} restarted; {dropped} unacknowledged payloads for its old incarnation dropped"
                    );
                    Incoming::PeerRestarted {
                        from: node,
                        incarnation,
                    }
                }
            };
            if events.send(out).await.is_err() {
                break 'link LinkEnd::Stop;
            }
        }
        if let Err(e) = result {
            shared
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            warn!(node = me, peer, %addr, "closing the link: {e}");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
            break LinkEnd::Lost;
        }
    };
    {
        let mut st = shared.state();
        // After a protocol violation midcomms has dropped the link already.
        st.mid.link_down(peer, link);
        if st.links.get(&peer).is_some_and(|s| s.id == link) {
            st.links.remove(&peer);
        }
    }
    let code = match end {
        LinkEnd::Replaced(_) => CLOSE_REPLACED,
        LinkEnd::Stop => CLOSE_SHUTDOWN,
        LinkEnd::Lost => CLOSE_DROPPED,
    };
    conn.close(VarInt::from_u32(code), b"link ended");
    writer.abort();
    if established {
        info!(node = me, peer, %addr, "disconnected");
        if !matches!(end, LinkEnd::Stop)
            && events.send(Incoming::Disconnected { peer }).await.is_err()
        {
            return LinkEnd::Stop;
        }
    }
    end
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
            // The reader notices the connection is gone.
            return;
        }
    }
    let _ = send.finish();
}

/// Flushes owed acks every heartbeat interval.
async fn ack_timer(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(shared.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut st = shared.state();
                st.mid.flush_acks();
                st.dispatch();
            }
            _ = shutdown.changed() => return,
        }
    }
}
