//! The `rdlmfs-nbd` server: exports one [`BlockDevice`] to many clients over
//! TCP and Unix sockets, and fences named clients.
//!
//! Each client connection has its own thread and is served in order (the
//! device does positional I/O, so connections run in parallel; clients that
//! want more parallelism open more connections, which `NBD_FLAG_CAN_MULTI_CONN`
//! allows: the server keeps no cache of its own, so a flush on any
//! connection covers writes completed on all of them).
//!
//! Fencing. A client may name itself with the `OPT_RDLMFS_CLIENT_ID` option.
//! [`Fences::fence`] marks an id fenced: from the moment it returns, every
//! request of that client is answered `EPERM` and nothing it sends reaches
//! the disk, and a reconnect with that id is refused at the handshake. The
//! guarantee rests on one lock per client id: each request holds it shared
//! from the "is it fenced?" check until its I/O is done, and `fence` takes it
//! exclusively, so it waits out I/O already under way and no new I/O starts.
//!
//! Robustness: every request is checked (magic, command, flags, range,
//! alignment, payload size) before it touches the disk; a malformed stream
//! closes that client's connection only, and a client that vanishes
//! mid-request costs nothing but its thread.

use super::proto::*;
use super::{write_all_vectored, Stream};
use crate::error::{Error, NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM};
use crate::BlockDevice;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The export's name; a client asking for "" also gets it.
    pub export_name: String,
    pub read_only: bool,
    pub tcp: Option<SocketAddr>,
    pub unix: Option<PathBuf>,
    /// Unix socket for `fence` / `unfence` / `clients`.
    pub admin: Option<PathBuf>,
    /// Refuse clients that do not name themselves (so every client can be
    /// fenced).
    pub require_client_id: bool,
    /// Bound on the handshake; a client idle longer is dropped.
    pub handshake_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: String::new(),
            read_only: false,
            tcp: Some(SocketAddr::from((
                [127, 0, 0, 1],
                crate::uri::NBD_DEFAULT_PORT,
            ))),
            unix: None,
            admin: None,
            require_client_id: false,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// The fence table: client id → fenced?
#[derive(Default)]
pub struct Fences {
    clients: Mutex<HashMap<String, Arc<RwLock<bool>>>>,
}

impl Fences {
    fn entry(&self, id: &str) -> Arc<RwLock<bool>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Fences `id`; returns once no I/O of that client is in progress.
    pub fn fence(&self, id: &str) {
        *self.entry(id).write().unwrap_or_else(|p| p.into_inner()) = true;
        tracing::warn!(client = id, "client fenced");
    }

    pub fn unfence(&self, id: &str) {
        *self.entry(id).write().unwrap_or_else(|p| p.into_inner()) = false;
        tracing::info!(client = id, "client unfenced");
    }

    pub fn is_fenced(&self, id: &str) -> bool {
        *self.entry(id).read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every fenced client id, sorted.
    pub fn fenced(&self) -> Vec<String> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = clients
            .iter()
            .filter(|(_, f)| *f.read().unwrap_or_else(|p| p.into_inner()))
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }
}

/// (peer, client id, a handle on the socket for shutdown)
type LiveConn = (String, Option<String>, Stream);

struct Shared {
    dev: Arc<dyn BlockDevice>,
    cfg: ServerConfig,
    fences: Fences,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// Live connections, so shutdown can close them and `clients` list them.
    live: Mutex<HashMap<u64, LiveConn>>,
}

/// A running server; dropping it stops it.
pub struct ServerHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    tcp_addr: Option<SocketAddr>,
}

impl ServerHandle {
    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    pub fn fences(&self) -> &Fences {
        &self.shared.fences
    }

    /// Stops accepting, closes every connection, and joins the threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for (_, (_, _, s)) in self
            .shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            s.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for p in [&self.shared.cfg.unix, &self.shared.cfg.admin]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// How often accept loops look at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Binds the configured sockets and starts serving `dev`.
pub fn start(dev: Arc<dyn BlockDevice>, cfg: ServerConfig) -> io::Result<ServerHandle> {
    if cfg.tcp.is_none() && cfg.unix.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nothing to listen on: give a TCP address or a Unix socket",
        ));
    }
    let tcp = cfg.tcp.map(TcpListener::bind).transpose()?;
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    let unix = cfg.unix.as_deref().map(bind_unix).transpose()?;
    let admin = cfg.admin.as_deref().map(bind_unix).transpose()?;
    let shared = Arc::new(Shared {
        dev,
        cfg,
        fences: Fences::default(),
        stop: AtomicBool::new(false),
        next_conn: AtomicU64::new(1),
        live: Mutex::new(HashMap::new()),
    });
    let mut threads = Vec::new();
    if let Some(l) = tcp {
        l.set_nonblocking(true)?;
        let sh = shared.clone();
        threads.push(thread::spawn(move || {
            accept_loop(&sh, || {
                l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                })
            })
        }));
    }
    if let Some(l) = unix {
        l.set_nonblocking(true)?;
        let sh = shared.clone();
        threads.push(thread::spawn(move || {
            accept_loop(&sh, || l.accept().map(|(s, _)| Stream::Unix(s)))
        }));
    }
    if let Some(l) = admin {
        l.set_nonblocking(true)?;
        let sh = shared.clone();
        threads.push(thread::spawn(move || admin_loop(&sh, l)));
    }
    tracing::info!(
        device = %shared.dev.name(),
        size = shared.dev.size(),
        export = %shared.cfg.export_name,
        tcp = ?tcp_addr,
        unix = ?shared.cfg.unix,
        read_only = shared.cfg.read_only,
        "serving"
    );
    Ok(ServerHandle {
        shared,
        threads,
        tcp_addr,
    })
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    // A stale socket from a dead server is replaced; a live one is not.
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn accept_loop(sh: &Arc<Shared>, mut accept: impl FnMut() -> io::Result<Stream>) {
    let mut conn_threads: Vec<JoinHandle<()>> = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) {
        match accept() {
            Ok(s) => {
                let sh2 = sh.clone();
                conn_threads.retain(|t| !t.is_finished());
                conn_threads.push(thread::spawn(move || serve_connection(&sh2, s)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    for t in conn_threads {
        let _ = t.join();
    }
}

fn serve_connection(sh: &Arc<Shared>, stream: Stream) {
    let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    let peer = stream.peer();
    let span = tracing::info_span!("client", conn = id, peer = %peer);
    let _e = span.enter();
    // Accepted sockets may inherit non-blocking mode from the listener.
    let nonblocking_off = match &stream {
        Stream::Tcp(s) => s.set_nonblocking(false),
        Stream::Unix(s) => s.set_nonblocking(false),
    };
    let ctl = match nonblocking_off.and_then(|_| stream.try_clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up connection");
            return;
        }
    };
    sh.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, (peer.clone(), None, ctl));
    tracing::info!("connected");
    let mut conn = Connection {
        sh: sh.clone(),
        stream,
        conn_id: id,
        client_id: None,
        fence: None,
        no_zeroes: false,
    };
    let outcome = conn.run();
    match outcome {
        Ok(()) => tracing::info!("disconnected"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::info!("client went away")
        }
        Err(e) => tracing::warn!(error = %e, "connection closed"),
    }
    sh.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

fn protocol_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

struct Connection {
    sh: Arc<Shared>,
    stream: Stream,
    conn_id: u64,
    client_id: Option<String>,
    fence: Option<Arc<RwLock<bool>>>,
    no_zeroes: bool,
}

enum Negotiated {
    Transmission,
    Closed,
}

impl Connection {
    fn run(&mut self) -> io::Result<()> {
        self.stream
            .set_read_timeout(Some(self.sh.cfg.handshake_timeout))?;
        self.stream
            .set_write_timeout(Some(self.sh.cfg.handshake_timeout))?;
        match self.handshake()? {
            Negotiated::Closed => return Ok(()),
            Negotiated::Transmission => {}
        }
        // In transmission a client may idle as long as it likes.
        self.stream.set_read_timeout(None)?;
        self.transmission()
    }

    fn flags(&self) -> u16 {
        let caps = self.sh.dev.capabilities();
        let ro = self.sh.cfg.read_only || caps.read_only;
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN;
        if ro {
            f |= TFLAG_READ_ONLY;
        } else if caps.trim {
            f |= TFLAG_SEND_TRIM;
        }
        f
    }

    fn read_only(&self) -> bool {
        self.flags() & TFLAG_READ_ONLY != 0
    }

    fn reply_opt(&mut self, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&encode_option_reply(option, reply, data))
    }

    fn export_matches(&self, name: &str) -> bool {
        name == self.sh.cfg.export_name || name.is_empty()
    }

    /// Why this client may not have the export, if it may not.
    fn refusal(&self) -> Option<String> {
        match &self.client_id {
            Some(id) if self.sh.fences.is_fenced(id) => Some(format!("client {id:?} is fenced")),
            None if self.sh.cfg.require_client_id => {
                Some("this server requires clients to send a client id".into())
            }
            _ => None,
        }
    }

    fn handshake(&mut self) -> io::Result<Negotiated> {
        let mut greeting = Vec::with_capacity(18);
        greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
        greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.stream.write_all(&greeting)?;
        let mut cf = [0u8; 4];
        self.stream.read_exact(&mut cf)?;
        let cflags = u32::from_be_bytes(cf);
        if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(protocol_error(format!("unknown client flags {cflags:#x}")));
        }
        self.no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
        loop {
            let mut h = [0u8; OPTION_HEADER_LEN];
            self.stream.read_exact(&mut h)?;
            let (option, len) =
                decode_option_header(&h).map_err(|e| protocol_error(e.to_string()))?;
            if len > MAX_OPTION_LEN {
                return Err(protocol_error(format!(
                    "option {option} with {len}-byte payload exceeds the limit"
                )));
            }
            let mut data = vec![0u8; len as usize];
            self.stream.read_exact(&mut data)?;
            match option {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    if !self.export_matches(&name) {
                        tracing::warn!(export = %name, "unknown export requested; closing");
                        return Ok(Negotiated::Closed);
                    }
                    if let Some(why) = self.refusal() {
                        tracing::warn!(reason = %why, "export refused; closing");
                        return Ok(Negotiated::Closed);
                    }
                    let mut v = Vec::with_capacity(134);
                    v.extend_from_slice(&self.sh.dev.size().to_be_bytes());
                    v.extend_from_slice(&self.flags().to_be_bytes());
                    if !self.no_zeroes {
                        v.extend_from_slice(&[0u8; 124]);
                    }
                    self.stream.write_all(&v)?;
                    tracing::info!(export = %name, "transmission (NBD_OPT_EXPORT_NAME)");
                    return Ok(Negotiated::Transmission);
                }
                OPT_GO | OPT_INFO => {
                    let req = match InfoRequest::decode(&data) {
                        Ok(r) => r,
                        Err(e) => {
                            self.reply_opt(option, REP_ERR_INVALID, e.to_string().as_bytes())?;
                            continue;
                        }
                    };
                    if !self.export_matches(&req.name) {
                        let msg = format!("no export named {:?}", req.name);
                        self.reply_opt(option, REP_ERR_UNKNOWN, msg.as_bytes())?;
                        continue;
                    }
                    if let Some(why) = self.refusal() {
                        tracing::warn!(reason = %why, "export refused");
                        self.reply_opt(option, REP_ERR_POLICY, why.as_bytes())?;
                        continue;
                    }
                    let export = Info::Export {
                        size: self.sh.dev.size(),
                        flags: self.flags(),
                    }
                    .encode();
                    self.reply_opt(option, REP_INFO, &export)?;
                    let bs = self.sh.dev.block_size();
                    let block = Info::BlockSize {
                        min: bs,
                        preferred: bs.max(4096),
                        max: MAX_PAYLOAD,
                    }
                    .encode();
                    self.reply_opt(option, REP_INFO, &block)?;
                    self.reply_opt(option, REP_ACK, &[])?;
                    if option == OPT_GO {
                        tracing::info!(export = %req.name, "transmission (NBD_OPT_GO)");
                        return Ok(Negotiated::Transmission);
                    }
                }
                OPT_RDLMFS_CLIENT_ID => {
                    let id = match std::str::from_utf8(&data) {
                        Ok(s) if !s.is_empty() && s.len() <= MAX_CLIENT_ID => s.to_string(),
                        _ => {
                            self.reply_opt(
                                option,
                                REP_ERR_INVALID,
                                b"client id must be 1..=255 bytes of UTF-8",
                            )?;
                            continue;
                        }
                    };
                    if self.sh.fences.is_fenced(&id) {
                        tracing::warn!(client = %id, "fenced client tried to connect");
                        let msg = format!("client {id:?} is fenced");
                        self.reply_opt(option, REP_ERR_POLICY, msg.as_bytes())?;
                        continue;
                    }
                    tracing::info!(client = %id, "client named itself");
                    self.fence = Some(self.sh.fences.entry(&id));
                    if let Some(e) = self
                        .sh
                        .live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&self.conn_id)
                    {
                        e.1 = Some(id.clone());
                    }
                    self.client_id = Some(id);
                    self.reply_opt(option, REP_ACK, &[])?;
                }
                OPT_LIST => {
                    let name = self.sh.cfg.export_name.clone();
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    self.reply_opt(option, REP_SERVER, &d)?;
                    self.reply_opt(option, REP_ACK, &[])?;
                }
                OPT_ABORT => {
                    let _ = self.reply_opt(option, REP_ACK, &[]);
                    return Ok(Negotiated::Closed);
                }
                _ => {
                    let msg = format!("option {option} is not supported");
                    self.reply_opt(option, REP_ERR_UNSUP, msg.as_bytes())?;
                }
            }
        }
    }

    fn transmission(&mut self) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let mut h = [0u8; REQUEST_LEN];
            match self.stream.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client went away",
                    ))
                }
                Err(e) => return Err(e),
            }
            if self.sh.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let req = Request::decode(&h).map_err(|e| protocol_error(e.to_string()))?;
            if req.cmd == CMD_WRITE {
                if req.len > MAX_PAYLOAD {
                    // The payload cannot be skipped safely: drop the client.
                    return Err(protocol_error(format!(
                        "write of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                        req.len
                    )));
                }
                buf.resize(req.len as usize, 0);
                self.stream.read_exact(&mut buf)?;
            }
            if req.cmd == CMD_DISC {
                tracing::info!("client sent NBD_CMD_DISC");
                return Ok(());
            }
            let (error, data_len) = self.execute(&req, &mut buf);
            if error != 0 {
                tracing::debug!(
                    cmd = req.cmd,
                    offset = req.offset,
                    len = req.len,
                    error,
                    "request refused"
                );
            }
            let reply = SimpleReply {
                error,
                handle: req.handle,
            }
            .encode();
            if data_len > 0 {
                write_all_vectored(&mut self.stream, &[&reply, &buf[..data_len]])?;
            } else {
                self.stream.write_all(&reply)?;
            }
        }
    }

    /// Runs one request; returns (NBD error, bytes of `buf` to send back).
    fn execute(&mut self, req: &Request, buf: &mut Vec<u8>) -> (u32, usize) {
        let allowed_flags = match req.cmd {
            CMD_WRITE => CMD_FLAG_FUA,
            CMD_TRIM => CMD_FLAG_FUA,
            CMD_READ | CMD_FLUSH => 0,
            _ => return (NBD_EINVAL, 0),
        };
        if req.flags & !allowed_flags != 0 {
            return (NBD_EINVAL, 0);
        }
        // Hold the fence lock shared across the check and the I/O: `fence`
        // takes it exclusively, so it waits for this request to finish.
        let fence = self.fence.clone();
        let guard = fence
            .as_ref()
            .map(|f| f.read().unwrap_or_else(|p| p.into_inner()));
        if guard.as_deref().copied().unwrap_or(false) {
            return (NBD_EPERM, 0);
        }
        let dev = &self.sh.dev;
        let size = dev.size();
        let bs = u64::from(dev.block_size());
        let in_range = req
            .offset
            .checked_add(u64::from(req.len))
            .is_some_and(|end| end <= size);
        let aligned = req.offset.is_multiple_of(bs) && u64::from(req.len).is_multiple_of(bs);
        match req.cmd {
            CMD_READ => {
                if req.len > MAX_PAYLOAD || !in_range || !aligned {
                    return (NBD_EINVAL, 0);
                }
                buf.resize(req.len as usize, 0);
                match dev.read_at(req.offset, buf) {
                    Ok(()) => (0, req.len as usize),
                    Err(e) => (self.io_failed(e), 0),
                }
            }
            CMD_WRITE | CMD_TRIM => {
                if self.read_only() {
                    return (NBD_EPERM, 0);
                }
                if !in_range {
                    return (NBD_ENOSPC, 0);
                }
                if !aligned {
                    return (NBD_EINVAL, 0);
                }
                let fua = req.flags & CMD_FLAG_FUA != 0;
                let res = if req.cmd == CMD_WRITE {
                    if fua {
                        dev.write_fua_at(req.offset, buf)
                    } else {
                        dev.write_at(req.offset, buf)
                    }
                } else {
                    match dev.trim(req.offset, u64::from(req.len)) {
                        Err(Error::Unsupported { .. }) => return (NBD_ENOTSUP, 0),
                        Ok(()) if fua => dev.flush(),
                        r => r,
                    }
                };
                match res {
                    Ok(()) => (0, 0),
                    Err(e) => (self.io_failed(e), 0),
                }
            }
            CMD_FLUSH => match dev.flush() {
                Ok(()) => (0, 0),
                Err(e) => (self.io_failed(e), 0),
            },
            _ => (NBD_EINVAL, 0),
        }
    }

    fn io_failed(&self, e: Error) -> u32 {
        tracing::error!(error = %e, "I/O error on the exported device");
        match e.errno() {
            libc::ENOSPC => NBD_ENOSPC,
            libc::EPERM | libc::EROFS => NBD_EPERM,
            libc::EINVAL => NBD_EINVAL,
            _ => NBD_EIO,
        }
    }
}

fn admin_loop(sh: &Arc<Shared>, l: UnixListener) {
    while !sh.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, _)) => {
                if let Err(e) = admin_session(sh, s) {
                    tracing::warn!(error = %e, "admin session failed");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// One admin request per line: `fence ID`, `unfence ID`, `clients`.
/// Every answer ends with a line `ok` or `error: ...`.
fn admin_session(sh: &Arc<Shared>, s: UnixStream) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut line = String::new();
    BufReader::new(s.take(4096)).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let answer = match (words.next(), words.next(), words.next()) {
        (Some("fence"), Some(id), None) => {
            sh.fences.fence(id);
            "ok\n".to_string()
        }
        (Some("unfence"), Some(id), None) => {
            sh.fences.unfence(id);
            "ok\n".to_string()
        }
        (Some("clients"), None, None) => {
            let live = sh.live.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = String::new();
            let mut ids: Vec<_> = live.iter().collect();
            ids.sort_by_key(|(k, _)| **k);
            for (conn, (peer, client, _)) in ids {
                let client = client.as_deref().unwrap_or("-");
                let state = if client != "-" && sh.fences.is_fenced(client) {
                    "fenced"
                } else {
                    "active"
                };
                out.push_str(&format!("{conn} {peer} {client} {state}\n"));
            }
            out.push_str("ok\n");
            out
        }
        _ => format!("error: unknown request {:?}\n", line.trim()),
    };
    w.write_all(answer.as_bytes())
}

/// Sends one admin request to a running server and returns its answer.
pub fn admin_request(socket: &Path, request: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the server's admin socket {}: {e}",
                socket.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.lines().last() {
        Some("ok") => Ok(out),
        Some(l) => Err(io::Error::other(l.to_string())),
        None => Err(io::Error::other(
            "the server closed the admin socket without answering",
        )),
    }
}
