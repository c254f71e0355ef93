//! Bad input and failure: hostile servers, hostile clients, lost
//! connections, and fencing. Every case must end in a clear error (never a
//! hang, never a zero-filled buffer reported as data) and a server must keep
//! serving its other clients.

mod common;

use blockdev::nbd::proto::*;
use blockdev::nbd::server::{self, ServerConfig};
use blockdev::{BlockDevice, DeviceUri, Error, FileDevice, FileOptions, NbdDevice, NbdOptions};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn quick_opts() -> NbdOptions {
    NbdOptions {
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(2),
        reconnect_attempts: 1,
        ..NbdOptions::default()
    }
}

/// A fake server: runs `script` on every accepted connection, until dropped.
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl FakeServer {
    fn start(script: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> FakeServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, acc2) = (stop.clone(), accepted.clone());
        let script = Arc::new(script);
        thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(T)).unwrap();
                        let n = acc2.fetch_add(1, Ordering::SeqCst);
                        let sc = script.clone();
                        thread::spawn(move || sc(n, s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeServer {
            addr,
            stop,
            accepted,
        }
    }
    fn uri(&self) -> DeviceUri {
        DeviceUri::parse(&format!("nbd://{}/", self.addr)).unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Server side of a correct GO handshake for a 1 MiB export.
fn fake_handshake(s: &mut TcpStream, flags: u16) -> bool {
    let mut g = NBDMAGIC.to_be_bytes().to_vec();
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    if s.write_all(&g).is_err() {
        return false;
    }
    let mut cf = [0u8; 4];
    if s.read_exact(&mut cf).is_err() {
        return false;
    }
    let mut h = [0u8; OPTION_HEADER_LEN];
    if s.read_exact(&mut h).is_err() {
        return false;
    }
    let (opt, len) = decode_option_header(&h).unwrap();
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    assert_eq!(opt, OPT_GO);
    let info = Info::Export {
        size: 1 << 20,
        flags: TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | flags,
    };
    s.write_all(&encode_option_reply(OPT_GO, REP_INFO, &info.encode()))
        .unwrap();
    s.write_all(&encode_option_reply(OPT_GO, REP_ACK, &[]))
        .unwrap();
    true
}

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut h = [0u8; REQUEST_LEN];
    s.read_exact(&mut h).ok()?;
    let r = Request::decode(&h).ok()?;
    if r.cmd == CMD_WRITE {
        let mut p = vec![0u8; r.len as usize];
        s.read_exact(&mut p).ok()?;
    }
    Some(r)
}

#[test]
fn garbage_greeting_is_a_clear_handshake_error() {
    let srv = FakeServer::start(|_, mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    });
    let err = NbdDevice::connect(&srv.uri(), quick_opts())
        .err()
        .expect("garbage accepted");
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("not an NBD server"), "{err}");
}

#[test]
fn oversized_option_reply_is_refused() {
    let srv = FakeServer::start(|_, mut s| {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&FLAG_FIXED_NEWSTYLE.to_be_bytes());
        s.write_all(&g).unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        let mut hdr = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        hdr.extend_from_slice(&OPT_GO.to_be_bytes());
        hdr.extend_from_slice(&REP_INFO.to_be_bytes());
        hdr.extend_from_slice(&(1u32 << 30).to_be_bytes());
        let _ = s.write_all(&hdr);
        thread::sleep(Duration::from_millis(500));
    });
    let err = NbdDevice::connect(&srv.uri(), quick_opts())
        .err()
        .expect("oversized reply accepted");
    assert!(err.to_string().contains("exceeds"), "{err}");
}

/// Runs a read against a server that misbehaves after the handshake and
/// returns the error it must produce.
fn read_error_against(misbehave: fn(&mut TcpStream, Request)) -> Error {
    let srv = FakeServer::start(move |_, mut s| {
        if !fake_handshake(&mut s, 0) {
            return;
        }
        if let Some(r) = read_request(&mut s) {
            misbehave(&mut s, r);
        }
        thread::sleep(Duration::from_secs(5));
    });
    let dev = NbdDevice::connect(&srv.uri(), quick_opts()).unwrap();
    let mut buf = vec![0xeeu8; 4096];
    let err = dev.read_at(0, &mut buf).expect_err("read succeeded");
    assert!(
        srv.accepted.load(Ordering::SeqCst) >= 2,
        "the client did not try to reconnect"
    );
    err
}

#[test]
fn reply_with_bad_magic_fails_the_read() {
    let err = read_error_against(|s, r| {
        let mut b = SimpleReply {
            error: 0,
            handle: r.handle,
        }
        .encode();
        b[0] ^= 0xff;
        let _ = s.write_all(&b);
        let _ = s.write_all(&[0u8; 4096]);
    });
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn reply_with_wrong_handle_fails_the_read() {
    let err = read_error_against(|s, r| {
        let b = SimpleReply {
            error: 0,
            handle: r.handle ^ 0x5555,
        }
        .encode();
        let _ = s.write_all(&b);
        let _ = s.write_all(&[0u8; 4096]);
    });
    assert!(err.to_string().contains("unknown handle"), "{err}");
}

#[test]
fn truncated_reply_fails_the_read_instead_of_returning_zeroes() {
    let err = read_error_against(|s, r| {
        let b = SimpleReply {
            error: 0,
            handle: r.handle,
        }
        .encode();
        let _ = s.write_all(&b);
        let _ = s.write_all(&[0u8; 1000]);
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn silent_server_times_out() {
    let err = read_error_against(|_, _| {});
    assert!(err.to_string().contains("no reply"), "{err}");
}

#[test]
fn server_error_is_reported_with_its_name() {
    let srv = FakeServer::start(|_, mut s| {
        if !fake_handshake(&mut s, 0) {
            return;
        }
        while let Some(r) = read_request(&mut s) {
            let b = SimpleReply {
                error: 5,
                handle: r.handle,
            }
            .encode();
            if s.write_all(&b).is_err() {
                return;
            }
        }
    });
    let dev = NbdDevice::connect(&srv.uri(), quick_opts()).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = dev.read_at(8192, &mut buf).expect_err("EIO ignored");
    assert!(matches!(err, Error::Server { errno: 5, .. }), "{err}");
    assert!(
        err.to_string().contains("EIO") && err.to_string().contains("8192"),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
}

// ---------------------------------------------------------------------------
// Our server against hostile clients.

fn serve_image(s: &Scratch, len: usize) -> (server::ServerHandle, std::path::PathBuf, Vec<u8>) {
    let img = s.image("disk.img", len, 21);
    let dev = FileDevice::open(&img, FileOptions::default()).unwrap();
    let sock = s.path("srv.sock");
    let h = server::start(
        Arc::new(dev),
        ServerConfig {
            tcp: None,
            unix: Some(sock.clone()),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let orig = std::fs::read(&img).unwrap();
    (h, sock, orig)
}

/// A raw client after a GO handshake, for sending requests by hand.
fn raw_client(sock: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let go = InfoRequest {
        name: String::new(),
        infos: vec![INFO_BLOCK_SIZE],
    };
    s.write_all(&encode_option(OPT_GO, &go.encode())).unwrap();
    loop {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let h = decode_option_reply_header(&h).unwrap();
        let mut d = vec![0u8; h.len as usize];
        s.read_exact(&mut d).unwrap();
        if h.reply == REP_ACK {
            return s;
        }
        assert_eq!(h.reply, REP_INFO);
    }
}

fn raw_request(
    s: &mut UnixStream,
    cmd: u16,
    flags: u16,
    offset: u64,
    len: u32,
    payload: &[u8],
) -> u32 {
    let r = Request {
        flags,
        cmd,
        handle: 77,
        offset,
        len,
    };
    s.write_all(&r.encode()).unwrap();
    s.write_all(payload).unwrap();
    let mut h = [0u8; SIMPLE_REPLY_LEN];
    s.read_exact(&mut h).unwrap();
    let rep = SimpleReply::decode(&h).unwrap();
    assert_eq!(rep.handle, 77);
    if rep.error == 0 && cmd == CMD_READ {
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).unwrap();
    }
    rep.error
}

#[test]
fn our_server_survives_hostile_clients() {
    let s = Scratch::new("hostile");
    const LEN: usize = 1 << 20;
    let (_h, sock, orig) = serve_image(&s, LEN);
    let good = NbdDevice::connect(
        &DeviceUri::parse(&unix_uri(&sock, "")).unwrap(),
        quick_opts(),
    )
    .unwrap();
    let data = pattern(4096, 22);
    good.write_at(0, &data).unwrap();

    // Garbage instead of client flags and options.
    let mut g = UnixStream::connect(&sock).unwrap();
    g.set_read_timeout(Some(T)).unwrap();
    let _ = g.write_all(&pattern(4096, 23));
    let mut sink = Vec::new();
    let _ = g.read_to_end(&mut sink); // the server closes it

    // Bad requests each get the right NBD error on a live connection.
    let mut r = raw_client(&sock);
    assert_eq!(
        raw_request(&mut r, CMD_READ, 0, LEN as u64, 4096, &[]),
        22,
        "read past the end"
    );
    assert_eq!(
        raw_request(&mut r, CMD_READ, 0, u64::MAX - 100, 4096, &[]),
        22,
        "offset overflow"
    );
    assert_eq!(
        raw_request(&mut r, CMD_WRITE, 0, LEN as u64, 512, &[1u8; 512]),
        28,
        "write past the end"
    );
    assert_eq!(
        raw_request(&mut r, CMD_WRITE, 0, 100, 512, &[1u8; 512]),
        22,
        "misaligned write"
    );
    assert_eq!(
        raw_request(&mut r, CMD_READ, 0, 0, 100, &[]),
        22,
        "misaligned read length"
    );
    assert_eq!(raw_request(&mut r, 42, 0, 0, 0, &[]), 22, "unknown command");
    assert_eq!(
        raw_request(&mut r, CMD_READ, 0x80, 0, 512, &[]),
        22,
        "unknown flag"
    );
    assert_eq!(
        raw_request(&mut r, CMD_READ, 0, 0, MAX_PAYLOAD + 512, &[]),
        22,
        "oversized read"
    );
    assert_eq!(
        raw_request(&mut r, CMD_READ, 0, 0, 512, &[]),
        0,
        "a good read after all that"
    );
    // A request with a bad magic ends that connection only.
    r.write_all(&[0xffu8; REQUEST_LEN]).unwrap();
    let _ = r.read_to_end(&mut sink);

    // A client that vanishes halfway through a write's payload.
    let mut v = raw_client(&sock);
    let req = Request {
        flags: 0,
        cmd: CMD_WRITE,
        handle: 1,
        offset: 8192,
        len: 4096,
    };
    v.write_all(&req.encode()).unwrap();
    v.write_all(&[9u8; 100]).unwrap();
    drop(v);
    thread::sleep(Duration::from_millis(200));

    // The good client is unaffected and nothing hostile reached the disk.
    let mut back = vec![0u8; 4096];
    good.read_at(0, &mut back).unwrap();
    assert_eq!(back, data);
    good.flush().unwrap();
    let img = std::fs::read(s.path("disk.img")).unwrap();
    assert_eq!(&img[..4096], &data[..]);
    assert!(
        img[4096..] == orig[4096..],
        "a hostile request changed the image"
    );
}

// ---------------------------------------------------------------------------
// Connection loss and fencing.

/// A TCP proxy whose live connections can be cut on demand.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: std::path::PathBuf) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (conns.clone(), stop.clone());
        thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((down, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let up = UnixStream::connect(&target).unwrap();
                c2.lock().unwrap().push(down.try_clone().unwrap());
                let (mut d1, mut u1) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut d2, mut u2) = (down, up);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut d1, &mut u1);
                    let _ = u1.shutdown(std::net::Shutdown::Both);
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut d2);
                    let _ = d2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy { addr, conns, stop }
    }
    fn cut_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut_all();
    }
}

#[test]
fn lost_connection_is_reopened_and_unflushed_writes_are_reported() {
    let s = Scratch::new("reconnect");
    let (_h, sock, _) = serve_image(&s, 1 << 20);
    let proxy = Proxy::start(sock);
    let dev = NbdDevice::connect(
        &DeviceUri::parse(&format!("nbd://{}/", proxy.addr)).unwrap(),
        NbdOptions {
            connections: 1,
            reconnect_attempts: 3,
            ..quick_opts()
        },
    )
    .unwrap();
    let a = pattern(4096, 31);
    let b = pattern(4096, 32);
    dev.write_at(0, &a).unwrap();
    proxy.cut_all();
    // The next request finds the connection dead, reconnects and completes.
    dev.write_at(4096, &b).unwrap();
    // The first write completed on the lost connection before any flush:
    // the flush must not vouch for it...
    let err = dev
        .flush()
        .expect_err("flush vouched for a write of a lost connection");
    assert!(
        matches!(err, Error::DurabilityUnknown { writes: 1, .. }),
        "{err}"
    );
    // ...and once reported, flushing goes on normally.
    dev.flush().unwrap();
    let mut back = vec![0u8; 8192];
    dev.read_at(0, &mut back).unwrap();
    assert_eq!(&back[..4096], &a[..]);
    assert_eq!(&back[4096..], &b[..]);
}

#[test]
fn fenced_client_is_cut_off_and_others_are_not() {
    let s = Scratch::new("fence");
    let img = s.image("disk.img", 1 << 20, 41);
    let (mut srv, sock, admin) = start_rdlmfs_nbd(&s, &img, "srv", &["--require-client-id"]);
    let uri = DeviceUri::parse(&unix_uri(&sock, "")).unwrap();
    let node = |id: &str| {
        NbdDevice::connect(
            &uri,
            NbdOptions {
                client_id: Some(id.to_string()),
                ..quick_opts()
            },
        )
        .unwrap()
    };
    // Without an id this server refuses the client.
    let err = NbdDevice::connect(&uri, quick_opts())
        .err()
        .expect("anonymous client accepted");
    assert!(err.to_string().contains("client id"), "{err}");

    let n1 = node("node1");
    let n2 = node("node2");
    assert!(n1.export_info().fenceable);
    n1.write_at(0, &pattern(4096, 42)).unwrap();
    n1.flush().unwrap();
    let listed = run_ok(
        Command::new(rdlmfs_nbd())
            .args(["clients", "--admin"])
            .arg(&admin),
        T,
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("node1"));

    run_ok(
        Command::new(rdlmfs_nbd())
            .args(["fence", "--client", "node1", "--admin"])
            .arg(&admin),
        T,
    );
    let before = std::fs::read(&img).unwrap();
    let err = n1
        .write_at(4096, &pattern(4096, 43))
        .expect_err("fenced write accepted");
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    assert_eq!(err.errno(), libc::EPERM);
    assert!(n1.flush().is_err(), "fenced flush accepted");
    let mut buf = vec![0u8; 4096];
    assert!(n1.read_at(0, &mut buf).is_err(), "fenced read accepted");
    // Reconnecting under the fenced id is refused at the handshake.
    let err = NbdDevice::connect(
        &uri,
        NbdOptions {
            client_id: Some("node1".into()),
            ..quick_opts()
        },
    )
    .err()
    .expect("fenced client reconnected");
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    // The other client carries on, and the fenced write never landed.
    let c = pattern(4096, 44);
    n2.write_at(8192, &c).unwrap();
    n2.flush().unwrap();
    let after = std::fs::read(&img).unwrap();
    assert_eq!(
        &after[4096..8192],
        &before[4096..8192],
        "a fenced write reached the disk"
    );
    assert_eq!(&after[8192..12288], &c[..]);
    srv.assert_running();
}

#[test]
fn old_server_gets_export_name_and_only_the_commands_it_offers() {
    // A fixed-newstyle server that knows no NBD_OPT_GO, pads with 124 zero
    // bytes, and offers neither FLUSH, FUA nor TRIM: the client must fall
    // back to NBD_OPT_EXPORT_NAME and never send what was not offered.
    let violations = Arc::new(AtomicUsize::new(0));
    let v2 = violations.clone();
    let srv = FakeServer::start(move |_, mut s| {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&FLAG_FIXED_NEWSTYLE.to_be_bytes());
        if s.write_all(&g).is_err() {
            return;
        }
        let mut cf = [0u8; 4];
        if s.read_exact(&mut cf).is_err() {
            return;
        }
        let mut disk = vec![0u8; 1 << 20];
        loop {
            let mut h = [0u8; OPTION_HEADER_LEN];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let (opt, len) = decode_option_header(&h).unwrap();
            let mut d = vec![0u8; len as usize];
            s.read_exact(&mut d).unwrap();
            if opt != OPT_EXPORT_NAME {
                s.write_all(&encode_option_reply(opt, REP_ERR_UNSUP, &[]))
                    .unwrap();
                continue;
            }
            let mut e = (disk.len() as u64).to_be_bytes().to_vec();
            e.extend_from_slice(&TFLAG_HAS_FLAGS.to_be_bytes());
            e.extend_from_slice(&[0u8; 124]);
            s.write_all(&e).unwrap();
            break;
        }
        loop {
            let mut h = [0u8; REQUEST_LEN];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let r = Request::decode(&h).unwrap();
            let (off, len) = (r.offset as usize, r.len as usize);
            let mut err = 0;
            if r.flags != 0 || !matches!(r.cmd, CMD_READ | CMD_WRITE | CMD_DISC) {
                v2.fetch_add(1, Ordering::SeqCst);
                err = 22;
            }
            match r.cmd {
                CMD_DISC => return,
                CMD_WRITE => {
                    s.read_exact(&mut disk[off..off + len]).unwrap();
                }
                _ => {}
            }
            let rep = SimpleReply {
                error: err,
                handle: r.handle,
            }
            .encode();
            s.write_all(&rep).unwrap();
            if r.cmd == CMD_READ && err == 0 {
                s.write_all(&disk[off..off + len]).unwrap();
            }
        }
    });
    let dev = NbdDevice::connect(&srv.uri(), quick_opts()).unwrap();
    assert!(!dev.export_info().used_go);
    assert_eq!(dev.size(), 1 << 20);
    let caps = dev.capabilities();
    assert!(!caps.fua && !caps.trim);
    let data = pattern(8192, 51);
    dev.write_fua_at(4096, &data).unwrap();
    dev.flush().unwrap();
    assert!(matches!(dev.trim(0, 4096), Err(Error::Unsupported { .. })));
    let mut back = vec![0u8; 8192];
    dev.read_at(4096, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "client sent a command or flag the server did not offer"
    );
}

#[test]
fn flush_notices_every_lost_connection_that_held_writes() {
    let s = Scratch::new("reconnect-multi");
    let (_h, sock, _) = serve_image(&s, 1 << 20);
    let proxy = Proxy::start(sock);
    let dev = NbdDevice::connect(
        &DeviceUri::parse(&format!("nbd://{}/", proxy.addr)).unwrap(),
        NbdOptions {
            connections: 4,
            reconnect_attempts: 3,
            ..quick_opts()
        },
    )
    .unwrap();
    assert_eq!(dev.connections(), 4);
    for i in 0..8u64 {
        dev.write_at(i * 4096, &pattern(4096, i as u8)).unwrap();
    }
    proxy.cut_all();
    let err = dev
        .flush()
        .expect_err("flush vouched for writes of lost connections");
    assert!(
        matches!(err, Error::DurabilityUnknown { writes: 8, .. }),
        "every write of every lost connection must be counted: {err}"
    );
    dev.flush().unwrap();
}

#[test]
fn eight_readers_are_pipelined_on_one_connection() {
    // The server answers nothing until it holds eight requests at once: a
    // client that serialised its readers behind one socket would never get
    // there and the reads would fail on the I/O timeout.
    let srv = FakeServer::start(|_, mut s| {
        if !fake_handshake(&mut s, 0) {
            return;
        }
        let mut held = Vec::new();
        while held.len() < 8 {
            match read_request(&mut s) {
                Some(r) => held.push(r),
                None => return,
            }
        }
        for r in held.iter().rev() {
            let mut out = SimpleReply {
                error: 0,
                handle: r.handle,
            }
            .encode()
            .to_vec();
            out.extend(std::iter::repeat_n((r.offset / 4096) as u8, r.len as usize));
            if s.write_all(&out).is_err() {
                return;
            }
        }
        thread::sleep(Duration::from_secs(5));
    });
    let dev = Arc::new(
        NbdDevice::connect(
            &srv.uri(),
            NbdOptions {
                io_timeout: Duration::from_secs(10),
                ..quick_opts()
            },
        )
        .unwrap(),
    );
    assert_eq!(dev.connections(), 1, "the fake server offers no multi-conn");
    let readers: Vec<_> = (0..8u64)
        .map(|i| {
            let d = dev.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                d.read_at(i * 4096, &mut buf).map(|_| buf)
            })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let buf = r
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("reader {i}: {e}"));
        assert!(
            buf.iter().all(|&b| b == i as u8),
            "reader {i} got another reader's data"
        );
    }
}
