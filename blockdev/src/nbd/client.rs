//! The NBD client: [`NbdDevice`] implements [`BlockDevice`] over one or more
//! NBD connections.
//!
//! Concurrency. Each connection is pipelined: any number of threads may have
//! a request in flight on it, matched to replies by handle. There is no
//! reader thread. Whichever waiting thread finds the socket's read side free
//! becomes the *reader* and reads replies, handing each to its owner, until
//! its own reply arrives; then it passes the role to another waiter (the
//! leader/follower pattern). At queue depth 1 the thread that sent a request
//! reads its own reply straight into the caller's buffer, with no thread
//! hand-off, which is what keeps single-request latency at the level of a
//! synchronous client. When the server advertises `NBD_FLAG_CAN_MULTI_CONN`
//! (a flush on one connection covers writes on all), requests are spread
//! over several connections; otherwise one connection is used, as the
//! protocol requires.
//!
//! Failure. A connection that breaks (reset, EOF, no reply within
//! `io_timeout`, a reply the protocol does not allow) is dead: every request
//! on it fails, and the device reconnects, with a bounded number of attempts,
//! and resends the requests that did not complete. A read therefore returns
//! the device's data or an error, never a zeroed buffer. Writes that
//! completed on a connection that died before a flush may not be durable; the
//! next flush reports that with [`Error::DurabilityUnknown`] instead of
//! vouching for them.

use super::proto::{self, *};
use super::{write_all_vectored, Stream};
use crate::error::{Error, Op, Result, NBD_EPERM};
use crate::uri::DeviceUri;
use crate::{check_range, BlockDevice, Capabilities};
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Connections to open when the server allows several (multi-conn).
    pub connections: usize,
    /// Identity sent to the server so that it can fence this client.
    pub client_id: Option<String>,
    /// Refuse writes locally, and accept read-only exports.
    pub read_only: bool,
    /// Bound on connecting and on each handshake step.
    pub connect_timeout: Duration,
    /// A connection with a request outstanding and no reply for this long is
    /// declared dead.
    pub io_timeout: Duration,
    /// How many times one operation reconnects before giving up.
    pub reconnect_attempts: u32,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            connections: 4,
            client_id: None,
            read_only: false,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            reconnect_attempts: 3,
        }
    }
}

/// What the handshake learned about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_payload: u32,
    /// Negotiated with `NBD_OPT_GO` (false: `NBD_OPT_EXPORT_NAME` fallback).
    pub used_go: bool,
    /// The server accepted our client id, so it can fence us.
    pub fenceable: bool,
}

impl ExportInfo {
    fn has(&self, flag: u16) -> bool {
        self.flags & TFLAG_HAS_FLAGS != 0 && self.flags & flag != 0
    }
}

/// How one request on one connection ended.
#[derive(Debug)]
enum CallError {
    /// The server answered with an NBD error number.
    Server(u32),
    /// The connection is dead; the request did not complete.
    Lost(String),
}

pub struct NbdDevice {
    uri: DeviceUri,
    name: String,
    opts: NbdOptions,
    info: ExportInfo,
    block_size: u32,
    size: u64,
    max_request: u32,
    conns: Vec<RwLock<Arc<Conn>>>,
    /// Serialises reconnects so one dead connection is replaced once.
    reconnect_lock: Mutex<()>,
    next_conn: AtomicUsize,
    /// Completed writes whose connection died before a flush covered them.
    lost_unflushed: AtomicU64,
}

impl NbdDevice {
    /// Connects to `uri` and negotiates the export.
    pub fn connect(uri: &DeviceUri, opts: NbdOptions) -> Result<NbdDevice> {
        let name = uri.to_string();
        let (first, info) = Conn::open(uri, &name, &opts)?;
        let mut conns = vec![RwLock::new(Arc::new(first))];
        let want = if info.has(TFLAG_CAN_MULTI_CONN) {
            opts.connections.clamp(1, 64)
        } else {
            1
        };
        while conns.len() < want {
            match Conn::open(uri, &name, &opts) {
                Ok((c, i)) if i.size == info.size && i.flags == info.flags => {
                    conns.push(RwLock::new(Arc::new(c)))
                }
                Ok(_) => {
                    tracing::warn!(device = %name, "extra connection saw a different export; using {}", conns.len());
                    break;
                }
                Err(e) => {
                    tracing::warn!(device = %name, error = %e, "server refused extra connection; using {}", conns.len());
                    break;
                }
            }
        }
        let block_size = info.min_block.max(512);
        let max_request = info.max_payload.min(MAX_PAYLOAD) / block_size * block_size;
        tracing::info!(
            device = %name,
            size = info.size,
            flags = format_args!("{:#x}", info.flags),
            block_size,
            connections = conns.len(),
            negotiation = if info.used_go { "NBD_OPT_GO" } else { "NBD_OPT_EXPORT_NAME" },
            fenceable = info.fenceable,
            "connected to NBD export"
        );
        Ok(NbdDevice {
            uri: uri.clone(),
            name,
            size: info.size - info.size % u64::from(block_size),
            info,
            block_size,
            max_request: max_request.max(block_size),
            opts,
            conns,
            reconnect_lock: Mutex::new(()),
            next_conn: AtomicUsize::new(0),
            lost_unflushed: AtomicU64::new(0),
        })
    }

    /// The export as negotiated.
    pub fn export_info(&self) -> ExportInfo {
        self.info
    }

    /// Number of connections in use.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn read_only(&self) -> bool {
        self.opts.read_only || self.info.has(TFLAG_READ_ONLY)
    }

    fn conn(&self, idx: usize) -> Arc<Conn> {
        self.conns[idx]
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces connection `idx` if it is still the dead one we saw.
    fn reconnect(&self, idx: usize, dead: &Arc<Conn>) -> Result<()> {
        let _g = self
            .reconnect_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&self.conn(idx), dead) {
            return Ok(()); // someone else already replaced it
        }
        let (c, info) = Conn::open(&self.uri, &self.name, &self.opts)?;
        if info.size != self.info.size || info.flags != self.info.flags {
            return Err(Error::Handshake {
                device: self.name.clone(),
                detail: format!(
                    "after reconnecting the export changed (size {} flags {:#x}, was size {} flags {:#x})",
                    info.size, info.flags, self.info.size, self.info.flags
                ),
            });
        }
        tracing::warn!(device = %self.name, connection = idx, "reconnected");
        *self.conns[idx].write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
        Ok(())
    }

    /// Runs one request, reconnecting and resending on connection loss.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        op: Op,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
        mut read_buf: Option<&mut [u8]>,
        conn_idx: Option<usize>,
    ) -> Result<()> {
        let mut attempts = 0u32;
        loop {
            let idx = conn_idx.unwrap_or_else(|| {
                self.next_conn.fetch_add(1, Ordering::Relaxed) % self.conns.len()
            });
            let conn = self.conn(idx);
            let res = conn.call(
                cmd,
                flags,
                offset,
                len,
                payload,
                read_buf.as_deref_mut(),
                self.opts.io_timeout,
            );
            let detail = match res {
                Ok(()) => return Ok(()),
                Err(CallError::Server(errno)) => {
                    if errno == NBD_EPERM && self.info.fenceable {
                        return Err(Error::Fenced {
                            device: self.name.clone(),
                        });
                    }
                    return Err(Error::Server {
                        device: self.name.clone(),
                        op,
                        offset,
                        len: u64::from(len),
                        errno,
                    });
                }
                Err(CallError::Lost(detail)) => detail,
            };
            self.lost_unflushed
                .fetch_add(conn.take_unflushed(), Ordering::Relaxed);
            attempts += 1;
            tracing::warn!(device = %self.name, %op, offset, len, attempt = attempts, reason = %detail, "NBD connection lost");
            let lost = |detail: String| Error::ConnectionLost {
                device: self.name.clone(),
                op,
                offset,
                len: u64::from(len),
                attempts,
                detail,
            };
            if attempts > self.opts.reconnect_attempts {
                return Err(lost(detail));
            }
            thread::sleep(Duration::from_millis(50 << attempts.min(6)));
            match self.reconnect(idx, &conn) {
                Ok(()) => {}
                Err(e @ Error::Fenced { .. }) => return Err(e),
                Err(e) if attempts >= self.opts.reconnect_attempts => {
                    return Err(lost(format!("{detail}; reconnect failed: {e}")))
                }
                Err(e) => tracing::warn!(device = %self.name, error = %e, "reconnect failed"),
            }
        }
    }

    fn write_impl(&self, offset: u64, buf: &[u8], fua: bool) -> Result<()> {
        check_range(self, Op::Write, offset, buf.len() as u64)?;
        if self.read_only() {
            return Err(Error::ReadOnly {
                device: self.name.clone(),
                op: Op::Write,
            });
        }
        let native_fua = fua && self.info.has(TFLAG_SEND_FUA);
        let flags = if native_fua { CMD_FLAG_FUA } else { 0 };
        for (i, chunk) in buf.chunks(self.max_request as usize).enumerate() {
            let off = offset + i as u64 * u64::from(self.max_request);
            self.submit(
                Op::Write,
                CMD_WRITE,
                flags,
                off,
                chunk.len() as u32,
                Some(chunk),
                None,
                None,
            )?;
        }
        if fua && !native_fua {
            self.flush()?;
        }
        Ok(())
    }
}

impl BlockDevice for NbdDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only(),
            fua: self.info.has(TFLAG_SEND_FUA),
            trim: self.info.has(TFLAG_SEND_TRIM) && !self.read_only(),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self, Op::Read, offset, buf.len() as u64)?;
        let max = self.max_request as usize;
        for (i, chunk) in buf.chunks_mut(max).enumerate() {
            let off = offset + (i * max) as u64;
            let len = chunk.len() as u32;
            self.submit(Op::Read, CMD_READ, 0, off, len, None, Some(chunk), None)?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_impl(offset, buf, false)
    }

    fn write_fua_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_impl(offset, buf, true)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only() {
            return Ok(());
        }
        // Snapshot what each connection has completed but not flushed, so a
        // write that completes while the flush is in flight stays counted.
        let snapshot: Vec<(Arc<Conn>, u64)> = (0..self.conns.len())
            .map(|i| {
                let c = self.conn(i);
                let n = c.unflushed.load(Ordering::Acquire);
                (c, n)
            })
            .collect();
        if self.info.has(TFLAG_SEND_FLUSH) {
            // Under multi-conn one flush would cover every connection, but
            // only a request on a connection shows whether it is still alive:
            // a connection that died with completed writes must be noticed
            // here, or this flush would vouch for writes the server may have
            // lost. So every connection holding unflushed writes is flushed
            // (the server's later fdatasyncs find nothing left to write).
            let mut targets: Vec<usize> = snapshot
                .iter()
                .enumerate()
                .filter(|(_, (_, n))| *n > 0)
                .map(|(i, _)| i)
                .collect();
            if targets.is_empty() {
                targets.push(0);
            }
            for idx in targets {
                self.submit(Op::Flush, CMD_FLUSH, 0, 0, 0, None, None, Some(idx))?;
            }
        }
        // Without SEND_FLUSH the server has no volatile cache: a write is
        // durable when its reply arrives, and the protocol forbids FLUSH.
        for (c, n) in snapshot {
            // Saturating: a connection that died meanwhile already handed
            // its count to `lost_unflushed` and was reset to zero.
            let _ = c
                .unflushed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(n))
                });
        }
        let lost = self.lost_unflushed.swap(0, Ordering::AcqRel);
        if lost > 0 {
            return Err(Error::DurabilityUnknown {
                device: self.name.clone(),
                writes: lost,
            });
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self, Op::Trim, offset, len)?;
        if self.read_only() {
            return Err(Error::ReadOnly {
                device: self.name.clone(),
                op: Op::Trim,
            });
        }
        if !self.info.has(TFLAG_SEND_TRIM) {
            return Err(Error::Unsupported {
                device: self.name.clone(),
                op: Op::Trim,
            });
        }
        // TRIM carries no payload, but its length is still a u32 and some
        // servers bound it by the payload limit: cut it like a write.
        let step = u64::from(self.max_request);
        let mut off = offset;
        while off < offset + len {
            let n = step.min(offset + len - off) as u32;
            self.submit(Op::Trim, CMD_TRIM, 0, off, n, None, None, None)?;
            off += u64::from(n);
        }
        Ok(())
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        for i in 0..self.conns.len() {
            self.conn(i).disconnect();
        }
    }
}

// ---------------------------------------------------------------------------
// One connection.

struct Pending {
    /// Payload length the reply carries on success (READ only).
    read_len: u32,
    /// The thread that owns the request, parked until the result is in.
    owner: Thread,
    /// The owner is in the wait loop (not still sending its request).
    waiting: bool,
    /// For a READ reply someone else read: the data.
    result: Option<std::result::Result<Option<Vec<u8>>, CallError>>,
}

struct ConnState {
    pending: HashMap<u64, Pending>,
    /// Some thread is reading replies from the socket.
    reader_busy: bool,
    /// Why the connection died, once it has.
    dead: Option<String>,
}

struct Conn {
    name: String,
    writer: Mutex<Stream>,
    /// Buffered, so one system call can bring in several replies when many
    /// requests are in flight.
    reader: Mutex<BufReader<Stream>>,
    /// A third handle on the socket, used only to shut it down so a reader
    /// blocked in `read` wakes up even while a writer holds `writer`.
    ctl: Stream,
    state: Mutex<ConnState>,
    next_handle: AtomicU64,
    /// Writes completed on this connection and not yet covered by a flush.
    unflushed: AtomicU64,
}

/// How long a waiter sleeps before re-checking, in case a wake-up is lost to
/// a race; correctness never depends on it.
const PARK_SLICE: Duration = Duration::from_millis(50);

/// Size of the reply read buffer.
const READ_BUFFER: usize = 256 << 10;

impl Conn {
    fn open(uri: &DeviceUri, name: &str, opts: &NbdOptions) -> Result<(Conn, ExportInfo)> {
        let connect_err = |source: std::io::Error| Error::Io {
            device: name.to_string(),
            op: Op::Connect,
            offset: 0,
            len: 0,
            source,
        };
        let mut stream = match uri {
            DeviceUri::NbdTcp { host, port, .. } => {
                let addrs = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(connect_err)?;
                let mut last = None;
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, opts.connect_timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match found {
                    Some(s) => s,
                    None => {
                        return Err(connect_err(last.unwrap_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address")
                        })))
                    }
                };
                s.set_nodelay(true).map_err(connect_err)?;
                Stream::Tcp(s)
            }
            DeviceUri::NbdUnix { socket, .. } => {
                Stream::Unix(UnixStream::connect(socket).map_err(connect_err)?)
            }
            DeviceUri::File(_) => {
                return Err(Error::InvalidUri {
                    spec: name.to_string(),
                    detail: "not an NBD address".into(),
                })
            }
        };
        stream
            .set_read_timeout(Some(opts.connect_timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(opts.connect_timeout))
            .map_err(connect_err)?;
        let info = handshake(&mut stream, name, uri.export(), opts)?;
        if info.has(TFLAG_READ_ONLY) && !opts.read_only {
            return Err(Error::Handshake {
                device: name.to_string(),
                detail: "the export is read-only but a read-write device was asked for".into(),
            });
        }
        stream
            .set_read_timeout(Some(opts.io_timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(opts.io_timeout))
            .map_err(connect_err)?;
        let reader = stream.try_clone().map_err(connect_err)?;
        let ctl = stream.try_clone().map_err(connect_err)?;
        Ok((
            Conn {
                name: name.to_string(),
                writer: Mutex::new(stream),
                reader: Mutex::new(BufReader::with_capacity(READ_BUFFER, reader)),
                ctl,
                state: Mutex::new(ConnState {
                    pending: HashMap::new(),
                    reader_busy: false,
                    dead: None,
                }),
                next_handle: AtomicU64::new(1),
                unflushed: AtomicU64::new(0),
            },
            info,
        ))
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one request and waits for its reply.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
        read_buf: Option<&mut [u8]>,
        io_timeout: Duration,
    ) -> std::result::Result<(), CallError> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.state();
            if let Some(why) = &st.dead {
                return Err(CallError::Lost(why.clone()));
            }
            st.pending.insert(
                handle,
                Pending {
                    read_len: if cmd == CMD_READ { len } else { 0 },
                    owner: thread::current(),
                    waiting: false,
                    result: None,
                },
            );
        }
        let header = Request {
            flags,
            cmd,
            handle,
            offset,
            len,
        }
        .encode();
        let sent = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            match payload {
                Some(p) => write_all_vectored(&mut *w, &[&header, p]),
                None => w.write_all(&header),
            }
        };
        if let Err(e) = sent {
            self.kill(format!("sending request failed: {e}"));
        }
        let res = self.wait(handle, read_buf, io_timeout);
        if res.is_ok() && cmd == CMD_WRITE {
            self.unflushed.fetch_add(1, Ordering::AcqRel);
        }
        res
    }

    fn wait(
        &self,
        handle: u64,
        mut own_buf: Option<&mut [u8]>,
        io_timeout: Duration,
    ) -> std::result::Result<(), CallError> {
        let started = Instant::now();
        let mut st = self.state();
        loop {
            let Some(p) = st.pending.get_mut(&handle) else {
                // Only a dead connection clears the table.
                let why = st.dead.clone().unwrap_or_else(|| "request vanished".into());
                return Err(CallError::Lost(why));
            };
            p.waiting = true;
            if let Some(res) = p.result.take() {
                st.pending.remove(&handle);
                return match res {
                    Ok(Some(data)) => {
                        if let Some(b) = own_buf.as_deref_mut() {
                            b.copy_from_slice(&data);
                        }
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            if let Some(why) = &st.dead {
                let why = why.clone();
                st.pending.remove(&handle);
                return Err(CallError::Lost(why));
            }
            if !st.reader_busy {
                st.reader_busy = true;
                drop(st);
                return self.read_until(handle, own_buf);
            }
            if started.elapsed() > io_timeout * 2 {
                // The reader is stuck past its own socket timeout: give up on
                // the connection rather than wait forever.
                drop(st);
                self.kill(format!("no reply within {io_timeout:?}"));
                st = self.state();
                continue;
            }
            drop(st);
            thread::park_timeout(PARK_SLICE);
            st = self.state();
        }
    }

    /// As the reader: reads replies, delivering each to its owner, until the
    /// one for `handle` arrives.
    fn read_until(
        &self,
        handle: u64,
        mut own_buf: Option<&mut [u8]>,
    ) -> std::result::Result<(), CallError> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match self.read_one(&mut r, handle, own_buf.as_deref_mut()) {
                Ok(Some(own)) => {
                    drop(r);
                    let mut st = self.state();
                    st.reader_busy = false;
                    st.pending.remove(&handle);
                    // Hand the reader role to someone still waiting.
                    if let Some(next) = st
                        .pending
                        .values()
                        .find(|p| p.waiting && p.result.is_none())
                    {
                        next.owner.unpark();
                    }
                    return own;
                }
                Ok(None) => continue,
                Err(why) => {
                    drop(r);
                    self.kill(why.clone());
                    self.state().pending.remove(&handle);
                    return Err(CallError::Lost(why));
                }
            }
        }
    }

    /// Reads one reply. Returns `Some(result)` when it was ours, `None` when it
    /// was delivered to another waiter, and `Err` when the stream is broken.
    #[allow(clippy::type_complexity)]
    fn read_one(
        &self,
        r: &mut BufReader<Stream>,
        own: u64,
        own_buf: Option<&mut [u8]>,
    ) -> std::result::Result<Option<std::result::Result<(), CallError>>, String> {
        let mut hdr = [0u8; SIMPLE_REPLY_LEN];
        r.read_exact(&mut hdr)
            .map_err(|e| describe_read_error(&e))?;
        let reply = SimpleReply::decode(&hdr).map_err(|e| e.to_string())?;
        let read_len = {
            let st = self.state();
            match st.pending.get(&reply.handle) {
                Some(p) if p.result.is_none() => p.read_len,
                Some(_) => return Err(format!("duplicate reply for handle {:#x}", reply.handle)),
                None => return Err(format!("reply for unknown handle {:#x}", reply.handle)),
            }
        };
        let data = if reply.error == 0 && read_len > 0 {
            if reply.handle == own {
                if let Some(buf) = own_buf {
                    r.read_exact(buf).map_err(|e| describe_read_error(&e))?;
                }
                None
            } else {
                let mut v = vec![0u8; read_len as usize];
                r.read_exact(&mut v).map_err(|e| describe_read_error(&e))?;
                Some(v)
            }
        } else {
            None
        };
        let result = if reply.error != 0 {
            Err(CallError::Server(reply.error))
        } else {
            Ok(data)
        };
        if reply.handle == own {
            return Ok(Some(result.map(|_| ())));
        }
        let mut st = self.state();
        if let Some(p) = st.pending.get_mut(&reply.handle) {
            p.result = Some(result);
            p.owner.unpark();
        }
        Ok(None)
    }

    /// Marks the connection dead and fails everything outstanding on it.
    fn kill(&self, why: String) {
        let mut st = self.state();
        if st.dead.is_none() {
            tracing::warn!(device = %self.name, reason = %why, "NBD connection failed");
            st.dead = Some(why.clone());
        }
        for p in st.pending.values_mut() {
            if p.result.is_none() {
                p.result = Some(Err(CallError::Lost(why.clone())));
            }
            p.owner.unpark();
        }
        st.reader_busy = false;
        drop(st);
        // Wake a reader blocked in read(); the socket is useless now.
        self.ctl.shutdown();
    }

    /// Unflushed writes of a dead connection, handed to the device once.
    fn take_unflushed(&self) -> u64 {
        self.unflushed.swap(0, Ordering::AcqRel)
    }

    fn disconnect(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let disc = Request {
            flags: 0,
            cmd: CMD_DISC,
            handle: 0,
            offset: 0,
            len: 0,
        }
        .encode();
        let _ = w.write_all(&disc);
        w.shutdown();
    }
}

fn describe_read_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "server closed the connection (truncated reply)".into()
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "no reply from the server within the I/O timeout".into()
        }
        _ => format!("reading reply: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Handshake.

fn read_array<const N: usize>(s: &mut Stream, name: &str, what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b).map_err(|e| Error::Handshake {
        device: name.to_string(),
        detail: format!(
            "reading {what}: {}",
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "server closed the connection".to_string()
            } else {
                e.to_string()
            }
        ),
    })?;
    Ok(b)
}

fn read_vec(s: &mut Stream, name: &str, what: &str, len: u32) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    s.read_exact(&mut v).map_err(|e| Error::Handshake {
        device: name.to_string(),
        detail: format!("reading {what}: {e}"),
    })?;
    Ok(v)
}

fn send(s: &mut Stream, name: &str, bytes: &[u8]) -> Result<()> {
    s.write_all(bytes).map_err(|e| Error::Handshake {
        device: name.to_string(),
        detail: format!("sending: {e}"),
    })
}

/// Negotiates an export on a fresh connection (fixed newstyle).
fn handshake(s: &mut Stream, name: &str, export: &str, opts: &NbdOptions) -> Result<ExportInfo> {
    let fail = |detail: String| Error::Handshake {
        device: name.to_string(),
        detail,
    };
    if export.len() > MAX_EXPORT_NAME {
        return Err(fail(format!(
            "export name longer than {MAX_EXPORT_NAME} bytes"
        )));
    }
    let magic = u64::from_be_bytes(read_array::<8>(s, name, "greeting")?);
    if magic != NBDMAGIC {
        return Err(fail(format!("not an NBD server (greeting {magic:#x})")));
    }
    let style = u64::from_be_bytes(read_array::<8>(s, name, "greeting")?);
    if style == OLDSTYLE_MAGIC {
        return Err(fail(
            "server speaks the oldstyle protocol, which is not supported".into(),
        ));
    }
    if style != IHAVEOPT {
        return Err(fail(format!("unknown handshake style {style:#x}")));
    }
    let hflags = u16::from_be_bytes(read_array::<2>(s, name, "handshake flags")?);
    let fixed = hflags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = (if fixed { FLAG_C_FIXED_NEWSTYLE } else { 0 })
        | (if no_zeroes { FLAG_C_NO_ZEROES } else { 0 });
    send(s, name, &cflags.to_be_bytes())?;

    let mut fenceable = false;
    if let Some(id) = &opts.client_id {
        if !fixed {
            return Err(fail("a client id needs a fixed-newstyle server".into()));
        }
        if id.is_empty() || id.len() > MAX_CLIENT_ID {
            return Err(fail(format!("client id must be 1..={MAX_CLIENT_ID} bytes")));
        }
        send(s, name, &encode_option(OPT_RDLMFS_CLIENT_ID, id.as_bytes()))?;
        let (h, data) = read_option_reply(s, name, OPT_RDLMFS_CLIENT_ID)?;
        match h.reply {
            REP_ACK => fenceable = true,
            REP_ERR_UNSUP => {
                tracing::info!(device = %name, "server does not support client ids; it cannot fence this client")
            }
            REP_ERR_POLICY => {
                return Err(Error::Fenced {
                    device: name.to_string(),
                })
            }
            other => {
                return Err(fail(format!(
                    "client id refused: {} {}",
                    rep_name(other),
                    String::from_utf8_lossy(&data)
                )))
            }
        }
    }

    if fixed {
        let go = InfoRequest {
            name: export.to_string(),
            infos: vec![INFO_BLOCK_SIZE],
        };
        send(s, name, &encode_option(OPT_GO, &go.encode()))?;
        let mut export_info: Option<(u64, u16)> = None;
        let mut block = None;
        loop {
            let (h, data) = read_option_reply(s, name, OPT_GO)?;
            match h.reply {
                REP_INFO => match Info::decode(&data).map_err(|e| fail(e.to_string()))? {
                    Info::Export { size, flags } => export_info = Some((size, flags)),
                    Info::BlockSize {
                        min,
                        preferred,
                        max,
                    } => block = Some((min, preferred, max)),
                    Info::Other(_) => {}
                },
                REP_ACK => {
                    let (size, flags) = export_info.ok_or_else(|| {
                        fail("server acknowledged NBD_OPT_GO without NBD_INFO_EXPORT".into())
                    })?;
                    let (min, preferred, max) = block.unwrap_or((1, 4096, MAX_PAYLOAD));
                    return Ok(ExportInfo {
                        size,
                        flags,
                        min_block: min,
                        preferred_block: preferred,
                        max_payload: if max == u32::MAX { MAX_PAYLOAD } else { max },
                        used_go: true,
                        fenceable,
                    });
                }
                REP_ERR_UNSUP => break, // old server: fall back below
                REP_ERR_POLICY if fenceable => {
                    return Err(Error::Fenced {
                        device: name.to_string(),
                    })
                }
                other if other & REP_FLAG_ERROR != 0 => {
                    let msg = String::from_utf8_lossy(&data);
                    return Err(fail(format!(
                        "export {export:?}: {}{}{msg}",
                        rep_name(other),
                        if msg.is_empty() { "" } else { ": " }
                    )));
                }
                other => return Err(fail(format!("unexpected reply {other:#x} to NBD_OPT_GO"))),
            }
        }
    }

    // NBD_OPT_EXPORT_NAME: the server either sends the export data or drops
    // the connection.
    send(s, name, &encode_option(OPT_EXPORT_NAME, export.as_bytes()))?;
    let size = u64::from_be_bytes(read_array::<8>(
        s,
        name,
        "export size (NBD_OPT_EXPORT_NAME; the server may have refused the export name)",
    )?);
    let flags = u16::from_be_bytes(read_array::<2>(s, name, "transmission flags")?);
    if !no_zeroes {
        let _ = read_array::<124>(s, name, "zero padding")?;
    }
    Ok(ExportInfo {
        size,
        flags,
        min_block: 1,
        preferred_block: 4096,
        max_payload: MAX_PAYLOAD,
        used_go: false,
        fenceable,
    })
}

fn read_option_reply(
    s: &mut Stream,
    name: &str,
    option: u32,
) -> Result<(proto::OptionReplyHeader, Vec<u8>)> {
    let raw = read_array::<OPTION_REPLY_HEADER_LEN>(s, name, "option reply")?;
    let h = decode_option_reply_header(&raw).map_err(|e| Error::Handshake {
        device: name.to_string(),
        detail: e.to_string(),
    })?;
    if h.option != option {
        return Err(Error::Handshake {
            device: name.to_string(),
            detail: format!("reply names option {} but we sent {option}", h.option),
        });
    }
    let data = read_vec(s, name, "option reply data", h.len)?;
    Ok((h, data))
}
