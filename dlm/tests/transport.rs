//! The QUIC transport between real endpoints on 127.0.0.1: delivery in
//! order, refusal of peers that cannot prove who they are, connections cut
//! under load, restarts. Ports are chosen free at run time; every wait is
//! bounded.

use rdlm::config::ClusterConfig;
use rdlm::midcomms::Frame;
use rdlm::midcomms::MidcommsError;
use rdlm::resource::NodeId;
use rdlm::tls::{self, Identity};
use rdlm::transport::{new_incarnation, Incoming, Transport, TransportError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A cluster directory: CA, node certificates and keys, cluster.toml with
/// loopback addresses on free ports.
struct Cluster {
    dir: tempfile::TempDir,
    config: ClusterConfig,
    ca_cert: String,
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a free port");
    s.local_addr().expect("local addr").port()
}

fn cluster(ids: &[NodeId]) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "test";
    let (ca_cert, ca_key) = tls::generate_ca(name).expect("CA");
    std::fs::write(dir.path().join("ca.pem"), &ca_cert).expect("write");
    let mut text = format!(
        "[cluster]\nname = \"{name}\"\nheartbeat_ms = 50\nfailure_timeout_ms = 500\nlease_ms = 1000\nca = \"ca.pem\"\n"
    );
    for &id in ids {
        let (cert, key) = tls::generate_node_cert(&ca_cert, &ca_key, id, name).expect("node cert");
        std::fs::write(dir.path().join(format!("node-{id}.pem")), cert).expect("write");
        write_key(&dir.path().join(format!("node-{id}.key")), &key);
        text.push_str(&format!(
            "\n[[node]]\nid = {id}\naddress = \"127.0.0.1:{}\"\ncert = \"node-{id}.pem\"\nkey = \"node-{id}.key\"\n",
            free_port()
        ));
    }
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).expect("write");
    let config = ClusterConfig::load(&path).expect("cluster file");
    Cluster {
        dir,
        config,
        ca_cert,
    }
}

fn write_key(path: &Path, key: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    f.write_all(key.as_bytes()).expect("write key");
}

impl Cluster {
    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).expect("read PEM")
    }

    fn addr(&self, id: NodeId) -> std::net::SocketAddr {
        self.config
            .node(id)
            .expect("node")
            .address
            .parse()
            .expect("socket address")
    }

    async fn start(&self, id: NodeId) -> (Transport, mpsc::Receiver<Incoming>) {
        self.start_as(id, new_incarnation()).await
    }

    /// Starts node `id`, retrying while its port is still held by a
    /// previous endpoint that is shutting down.
    async fn start_as(&self, id: NodeId, inc: u64) -> (Transport, mpsc::Receiver<Incoming>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match Transport::start(&self.config, id, inc).await {
                Ok(t) => return t,
                Err(TransportError::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("start node {id}: {e}"),
            }
        }
    }
}

async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    match timeout(WAIT, rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("transport closed"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// Waits for a specific event, returning everything seen before it.
async fn wait_for(rx: &mut mpsc::Receiver<Incoming>, want: &Incoming) -> Vec<Incoming> {
    let mut seen = Vec::new();
    loop {
        let e = next(rx).await;
        if &e == want {
            return seen;
        }
        seen.push(e);
    }
}

/// Receives messages numbered `start..end` from each node in `from`,
/// checking each sender's arrive in order, exactly once (payload = u32
/// big-endian index + filler). Returns the other events seen.
async fn receive_numbered(
    rx: &mut mpsc::Receiver<Incoming>,
    from: &[NodeId],
    start: u32,
    end: u32,
) -> Vec<Incoming> {
    let mut next_index: HashMap<NodeId, u32> = from.iter().map(|&f| (f, start)).collect();
    let mut other = Vec::new();
    while next_index.values().any(|&i| i < end) {
        match next(rx).await {
            Incoming::Message { from: f, payload } => {
                let want = next_index
                    .get_mut(&f)
                    .unwrap_or_else(|| panic!("message from unexpected node {f}"));
                let got = u32::from_be_bytes(payload[..4].try_into().expect("index"));
                assert_eq!(
                    got, *want,
                    "from node {f}: out of order, lost or duplicated"
                );
                assert_eq!(payload, numbered(got), "payload contents");
                *want += 1;
            }
            e => other.push(e),
        }
    }
    other
}

fn numbered(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.resize(4 + (i as usize % 100), i as u8);
    p
}

/// Sends messages numbered `range`, waiting and retrying when the backlog
/// is full (the payload was then not queued). Calls `each(i)` after
/// message `i` is queued.
async fn send_numbered_with(
    t: &Transport,
    to: NodeId,
    range: std::ops::Range<u32>,
    mut each: impl FnMut(u32),
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for i in range {
        loop {
            match t.send(to, numbered(i)) {
                Ok(()) => break,
                Err(TransportError::Midcomms(MidcommsError::Backlog { .. })) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "backlog never drained"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("send {i} to {to}: {e}"),
            }
        }
        each(i);
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

async fn send_numbered(t: &Transport, to: NodeId, range: std::ops::Range<u32>) {
    send_numbered_with(t, to, range, |_| {}).await
}

async fn wait_all_acked(pairs: &[(&Transport, NodeId)]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for (t, peer) in pairs {
        while t.peer_stats(*peer).expect("peer").unacked_frames > 0 {
            assert!(tokio::time::Instant::now() < deadline, "acks never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_messages_in_order() {
    init_logs();
    let c = cluster(&[1, 2]);
    let (t1, mut rx1) = c.start(1).await;
    // Sent before node 2 even exists: kept and delivered once it does.
    send_numbered(&t1, 2, 0..10).await;
    let (t2, mut rx2) = c.start(2).await;
    assert_eq!(next(&mut rx1).await, Incoming::Connected { peer: 2 });
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    let (a, b, ..) = tokio::join!(
        receive_numbered(&mut rx1, &[2], 0, 2000),
        receive_numbered(&mut rx2, &[1], 0, 2000),
        send_numbered(&t1, 2, 10..2000),
        send_numbered(&t2, 1, 0..2000),
    );
    assert!(
        a.is_empty() && b.is_empty(),
        "unexpected events: {a:?} {b:?}"
    );
    // Everything gets acknowledged (acks flush every heartbeat).
    wait_all_acked(&[(&t1, 2), (&t2, 1)]).await;
    // Sending to oneself or to a stranger is refused.
    assert!(matches!(t1.send(1, vec![]), Err(TransportError::ToSelf(1))));
    assert!(matches!(
        t1.send(9, vec![]),
        Err(TransportError::NotInConfig(9))
    ));
    let too_big = vec![0; rdlm::midcomms::MAX_PAYLOAD + 1];
    assert!(matches!(
        t1.send(2, too_big),
        Err(TransportError::Midcomms(
            MidcommsError::PayloadTooLarge { .. }
        ))
    ));
    assert_eq!(t1.stats().refused + t2.stats().refused, 0);
    assert_eq!(t1.stats().protocol_errors + t2.stats().protocol_errors, 0);
    t1.shutdown().await;
    // The survivor is told.
    assert_eq!(next(&mut rx2).await, Incoming::Disconnected { peer: 1 });
    t2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_in_order() {
    init_logs();
    let c = cluster(&[1, 2, 3]);
    let mut nodes = Vec::new();
    for id in [3, 1, 2] {
        let (t, rx) = c.start(id).await;
        nodes.push((id, t, rx));
    }
    nodes.sort_by_key(|(id, _, _)| *id);
    let n = 500;
    for (id, t, _) in &nodes {
        for to in [1, 2, 3] {
            if to != *id {
                send_numbered(t, to, 0..n).await;
            }
        }
    }
    for (id, _, rx) in &mut nodes {
        let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|p| p != id).collect();
        let events = receive_numbered(rx, &others, 0, n).await;
        assert_eq!(events.len(), 2, "node {id}: {events:?}");
        for e in &events {
            assert!(matches!(e, Incoming::Connected { .. }), "node {id}: {e:?}");
        }
    }
    for (_, t, _) in nodes {
        assert_eq!(t.stats().refused, 0);
        t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_under_load_lose_and_repeat_nothing() {
    init_logs();
    let c = cluster(&[1, 2]);
    let (t1, mut rx1) = c.start(1).await;
    let (t2, mut rx2) = c.start(2).await;
    assert_eq!(next(&mut rx1).await, Incoming::Connected { peer: 2 });
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    let n = 20_000;
    // Each side cuts every connection from its end now and then while
    // both streams are in full flow: whatever was in flight is lost.
    let (e1, e2, ..) = tokio::join!(
        receive_numbered(&mut rx1, &[2], 0, n),
        receive_numbered(&mut rx2, &[1], 0, n),
        send_numbered_with(&t1, 2, 0..n, |i| {
            if i % 3000 == 1500 {
                t1.drop_connections();
            }
        }),
        send_numbered_with(&t2, 1, 0..n, |i| {
            if i % 3000 == 0 && i > 0 {
                t2.drop_connections();
            }
        }),
    );
    let cuts1 = e1
        .iter()
        .filter(|e| **e == Incoming::Disconnected { peer: 2 })
        .count();
    let cuts2 = e2
        .iter()
        .filter(|e| **e == Incoming::Disconnected { peer: 1 })
        .count();
    assert!(cuts1 >= 1 && cuts2 >= 1, "no cut was seen: {e1:?} {e2:?}");
    for e in e1.iter().chain(&e2) {
        assert!(
            matches!(
                e,
                Incoming::Connected { .. } | Incoming::Disconnected { .. }
            ),
            "{e:?}"
        );
    }
    wait_all_acked(&[(&t1, 2), (&t2, 1)]).await;
    // The last connection is up: one more message each way.
    send_numbered(&t1, 2, n..n + 1).await;
    send_numbered(&t2, 1, n..n + 1).await;
    receive_numbered(&mut rx1, &[2], n, n + 1).await;
    receive_numbered(&mut rx2, &[1], n, n + 1).await;
    let dup =
        t1.peer_stats(2).expect("peer").duplicates + t2.peer_stats(1).expect("peer").duplicates;
    tracing::info!(cuts1, cuts2, duplicates_dropped = dup, "cut test done");
    assert_eq!(t1.stats().protocol_errors + t2.stats().protocol_errors, 0);
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peers_are_reported() {
    init_logs();
    let c = cluster(&[1, 2]);
    let (t1, mut rx1) = c.start(1).await;
    let inc_a = new_incarnation();
    let (t2, mut rx2) = c.start_as(2, inc_a).await;
    assert_eq!(next(&mut rx1).await, Incoming::Connected { peer: 2 });
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    t1.send(2, b"to the first node 2".to_vec()).expect("send");
    assert_eq!(
        next(&mut rx2).await,
        Incoming::Message {
            from: 1,
            payload: b"to the first node 2".to_vec()
        }
    );
    // Node 2 (the side that is dialled) stops and comes back as a new
    // incarnation on the same address.
    t2.shutdown().await;
    drop(rx2);
    assert_eq!(next(&mut rx1).await, Incoming::Disconnected { peer: 2 });
    // Meant for the old incarnation; it must never reach the new one.
    t1.send(2, b"while node 2 is down".to_vec()).expect("send");
    let inc_b = new_incarnation();
    assert_ne!(inc_a, inc_b);
    let (t2, mut rx2) = c.start_as(2, inc_b).await;
    let before = wait_for(
        &mut rx1,
        &Incoming::PeerRestarted {
            from: 2,
            incarnation: inc_b,
        },
    )
    .await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(next(&mut rx1).await, Incoming::Connected { peer: 2 });
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    t1.send(2, b"to the second node 2".to_vec()).expect("send");
    t2.send(1, b"from the second node 2".to_vec())
        .expect("send");
    assert_eq!(
        next(&mut rx2).await,
        Incoming::Message {
            from: 1,
            payload: b"to the second node 2".to_vec()
        },
        "the payload sent to the old incarnation must not arrive"
    );
    assert_eq!(
        next(&mut rx1).await,
        Incoming::Message {
            from: 2,
            payload: b"from the second node 2".to_vec()
        }
    );
    // Now node 1 (the dialling side) restarts.
    t1.shutdown().await;
    drop(rx1);
    assert_eq!(next(&mut rx2).await, Incoming::Disconnected { peer: 1 });
    let inc_c = new_incarnation();
    let (t1, mut rx1) = c.start_as(1, inc_c).await;
    let before = wait_for(
        &mut rx2,
        &Incoming::PeerRestarted {
            from: 1,
            incarnation: inc_c,
        },
    )
    .await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    // The new node 1 meets node 2 for the first time: no restart for it.
    assert_eq!(next(&mut rx1).await, Incoming::Connected { peer: 2 });
    t1.shutdown().await;
    t2.shutdown().await;
}

/// rustls client settings for an intruder: `ca_pem` as trust anchor,
/// `cert_pem`/`key_pem` as its certificate — whatever those are.
fn raw_client(ca_pem: &str, cert_pem: &str, key_pem: &str) -> quinn::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA"))
        .expect("root");
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(cfg))
            .expect("QUIC client config"),
    ))
}

/// An intruder dials node `to` at `addr` with `client`; if the handshake
/// succeeds it writes `hello` on a new stream. Returns how the connection
/// ended.
async fn intruder_dial(
    client: quinn::ClientConfig,
    to: NodeId,
    addr: std::net::SocketAddr,
    hello: Frame,
) -> Result<quinn::ConnectionError, quinn::ConnectionError> {
    intruder_send(client, to, addr, hello.encode()).await
}

/// Like [`intruder_dial`], writing arbitrary bytes.
async fn intruder_send(
    client: quinn::ClientConfig,
    to: NodeId,
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
) -> Result<quinn::ConnectionError, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let connecting = endpoint
        .connect_with(client, addr, &tls::node_name("test", to))
        .expect("connect");
    let conn = timeout(WAIT, connecting).await.expect("handshake ends")?;
    let (mut send, _recv) = conn.open_bi().await?;
    let _ = send.write_all(&bytes).await;
    let closed = timeout(WAIT, conn.closed())
        .await
        .expect("the node never closed the connection");
    endpoint.close(0u32.into(), b"");
    Ok(closed)
}

async fn wait_refused(t: &Transport, at_least: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while t.stats().refused < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal counted: {:?}",
            t.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that no event but the allowed ones arrives for a while.
async fn quiet_except(rx: &mut mpsc::Receiver<Incoming>, how_long: Duration, allowed: &[Incoming]) {
    let end = tokio::time::Instant::now() + how_long;
    while let Ok(Some(e)) = tokio::time::timeout_at(end, rx.recv()).await {
        assert!(allowed.contains(&e), "unexpected event {e:?}");
    }
}

fn hello(from: NodeId, to: NodeId) -> Frame {
    Frame::Hello {
        from,
        to,
        incarnation: 5,
        peer_incarnation: 0,
        ack: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    init_logs();
    let c = cluster(&[1, 2]);
    let (t2, mut rx2) = c.start(2).await;
    // A rogue CA issues a certificate for node 1 of the same cluster.
    let (rogue_ca, rogue_key) = tls::generate_ca("test").expect("rogue CA");
    let (cert, key) =
        tls::generate_node_cert(&rogue_ca, &rogue_key, 1, "test").expect("rogue cert");
    // Our own code will not even start with it, given the real CA.
    let e = Identity::from_pem("test", 1, &c.ca_cert, &cert, &key).expect_err("untrusted");
    assert!(matches!(e, tls::TlsError::Untrusted { .. }), "{e}");
    // An intruder that trusts the real CA (its certificate is public) but
    // holds only the rogue certificate: node 2 refuses it in the handshake.
    let r = intruder_dial(
        raw_client(&c.ca_cert, &cert, &key),
        2,
        c.addr(2),
        hello(1, 2),
    )
    .await;
    // In TLS 1.3 the client may finish its side of the handshake before
    // the server has checked the client certificate, so the refusal shows
    // either as a failed handshake or as a close with a TLS alert.
    let crypto = |code: quinn::TransportErrorCode| u64::from(code) & !0xff == 0x100;
    match &r {
        Err(quinn::ConnectionError::ConnectionClosed(c))
        | Ok(quinn::ConnectionError::ConnectionClosed(c))
            if crypto(c.error_code) => {}
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
    wait_refused(&t2, 1).await;
    quiet_except(&mut rx2, Duration::from_millis(300), &[]).await;
    // The genuine node 1 still gets in.
    let (t1, mut rx1) = c.start(1).await;
    assert_eq!(next(&mut rx1).await, Incoming::Connected { peer: 2 });
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    assert_eq!(t1.stats().refused, 0);
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_claim_another_nodes_id() {
    init_logs();
    let c = cluster(&[1, 2, 3, 4]);
    let (t4, mut rx4) = c.start(4).await;
    // Node 2's genuine certificate, used to claim to be node 3.
    let node2 = raw_client(&c.ca_cert, &c.pem("node-2.pem"), &c.pem("node-2.key"));
    let r = intruder_dial(node2.clone(), 4, c.addr(4), hello(3, 4)).await;
    match r {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(1),
                "closed as refused: {close:?}"
            );
        }
        other => panic!("expected node 4 to refuse and close, got {other:?}"),
    }
    wait_refused(&t4, 1).await;
    // Node 2's certificate claiming to be node 2 but with a hello for the
    // wrong node is refused too.
    let r = intruder_dial(node2, 4, c.addr(4), hello(2, 3)).await;
    assert!(
        matches!(r, Ok(quinn::ConnectionError::ApplicationClosed(_))),
        "{r:?}"
    );
    wait_refused(&t4, 2).await;

    // The other direction: something listening at node 3's address with
    // node 2's certificate. Node 1 dials node 3 there and refuses it.
    let node2_identity = Identity::from_pem(
        "test",
        2,
        &c.ca_cert,
        &c.pem("node-2.pem"),
        &c.pem("node-2.key"),
    )
    .expect("node 2 identity");
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(
            node2_identity.server_config().expect("server config"),
        ))
        .expect("QUIC server config"),
    ));
    let fake3 = quinn::Endpoint::server(server, c.addr(3)).expect("bind node 3's address");
    let accepter = {
        let fake3 = fake3.clone();
        tokio::spawn(async move {
            while let Some(incoming) = fake3.accept().await {
                // Let the handshake run; node 1 must abort it.
                tokio::spawn(async move {
                    let _ = incoming.await;
                });
            }
        })
    };
    let (t1, mut rx1) = c.start(1).await;
    wait_refused(&t1, 1).await;
    // Node 1 and node 4 meet normally; neither ever hears of node 2 or 3.
    let allowed1 = [Incoming::Connected { peer: 4 }];
    let allowed4 = [Incoming::Connected { peer: 1 }];
    quiet_except(&mut rx1, Duration::from_millis(500), &allowed1).await;
    quiet_except(&mut rx4, Duration::from_millis(500), &allowed4).await;
    assert_eq!(t1.peer_stats(4).map(|s| s.established), Some(true));
    // Node 4 dialling node 1 with its own genuine certificate breaks the
    // rule that the lower id dials: refused as well.
    let node4 = raw_client(&c.ca_cert, &c.pem("node-4.pem"), &c.pem("node-4.key"));
    match intruder_dial(node4, 1, c.addr(1), hello(4, 1)).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(1), "{close:?}");
        }
        other => panic!("expected node 1 to refuse, got {other:?}"),
    }
    quiet_except(&mut rx1, Duration::from_millis(100), &[]).await;
    assert!(!t1.peer_stats(3).is_some_and(|s| s.established));
    fake3.close(0u32.into(), b"");
    accepter.abort();
    t1.shutdown().await;
    t4.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_hello_closes_the_link() {
    init_logs();
    let c = cluster(&[1, 2]);
    let (t2, mut rx2) = c.start(2).await;
    // Node 1's genuine material, but the stream goes bad after the hello.
    let node1 = raw_client(&c.ca_cert, &c.pem("node-1.pem"), &c.pem("node-1.key"));
    let mut bytes = hello(1, 2).encode();
    bytes.extend_from_slice(b"this is not a frame header at all, not even close");
    let r = intruder_send(node1.clone(), 2, c.addr(2), bytes).await;
    match r {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(2),
                "closed as a protocol violation: {close:?}"
            );
        }
        other => panic!("expected node 2 to close the link, got {other:?}"),
    }
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    assert_eq!(next(&mut rx2).await, Incoming::Disconnected { peer: 1 });
    assert_eq!(t2.stats().protocol_errors, 1);
    // A data frame that skips a sequence number is a violation too.
    let mut bytes = hello(1, 2).encode();
    bytes.extend_from_slice(
        &Frame::Data {
            incarnation: 5,
            peer_incarnation: t2.incarnation(),
            seq: 2,
            ack: 0,
            ack_requested: false,
            payload: b"skipped one".to_vec(),
        }
        .encode(),
    );
    let r = intruder_send(node1, 2, c.addr(2), bytes).await;
    assert!(
        matches!(r, Ok(quinn::ConnectionError::ApplicationClosed(_))),
        "{r:?}"
    );
    assert_eq!(next(&mut rx2).await, Incoming::Connected { peer: 1 });
    assert_eq!(next(&mut rx2).await, Incoming::Disconnected { peer: 1 });
    assert_eq!(t2.stats().protocol_errors, 2);
    t2.shutdown().await;
}
