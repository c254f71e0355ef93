//! Interoperability with real NBD programs: our client against nbd-server,
//! nbdkit and qemu-nbd; our server against qemu-img, nbdinfo, nbdcopy and
//! the `nbd` crate's client. Data written through one side is read back
//! byte-identical through another.

mod common;

use blockdev::{BlockDevice, DeviceUri, NbdDevice, NbdOptions};
use common::*;
use std::process::Command;
use std::time::Duration;

const IMG_LEN: usize = 8 << 20;
const T: Duration = Duration::from_secs(60);

fn connect(uri: &str) -> NbdDevice {
    NbdDevice::connect(&DeviceUri::parse(uri).unwrap(), NbdOptions::default())
        .unwrap_or_else(|e| panic!("connect {uri}: {e}"))
}

/// Writes a pattern through our client at scattered offsets, reads it back
/// on a second connection, and checks the image file itself.
fn exercise_client(uri: &str, image: &std::path::Path) {
    let dev = connect(uri);
    assert_eq!(dev.size(), IMG_LEN as u64, "size seen through {uri}");
    let mut expect = std::fs::read(image).unwrap();
    let writes: [(usize, usize); 4] = [
        (0, 4096),
        (65536, 1 << 20),
        (IMG_LEN - 8192, 8192),
        (3 << 20, 512),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pattern(len, 100 + i as u8);
        if i % 2 == 0 {
            dev.write_at(off as u64, &data).unwrap();
        } else {
            dev.write_fua_at(off as u64, &data).unwrap();
        }
        expect[off..off + len].copy_from_slice(&data);
    }
    dev.flush().unwrap();
    // Larger than any single request: exercises chunking.
    let mut all = vec![0u8; IMG_LEN];
    dev.read_at(0, &mut all).unwrap();
    assert!(all == expect, "read-back through {uri} differs");
    drop(dev);
    let again = connect(uri);
    let mut all2 = vec![0u8; IMG_LEN];
    again.read_at(0, &mut all2).unwrap();
    assert!(
        all2 == expect,
        "read-back on a new connection through {uri} differs"
    );
    drop(again);
    assert!(
        std::fs::read(image).unwrap() == expect,
        "image file differs after writes through {uri}"
    );
}

#[test]
fn our_client_against_nbd_server() {
    let s = Scratch::new("nbd-server");
    let img = s.image("disk.img", IMG_LEN, 1);
    let port = free_port();
    let conf = s.path("nbd-server.conf");
    std::fs::write(
        &conf,
        format!(
            "[generic]\nport = {port}\nlistenaddr = 127.0.0.1\n\n[disk]\nexportname = {}\nflush = true\nfua = true\ntrim = true\n",
            img.display()
        ),
    )
    .unwrap();
    // nbd-server daemonises (its -d mode serves a single connection), so it
    // is tracked, and killed, through its pid file.
    let pidfile = s.path("nbd-server.pid");
    let _daemon = PidFileGuard {
        pidfile: pidfile.clone(),
    };
    run_ok(
        Command::new("nbd-server")
            .arg("-C")
            .arg(&conf)
            .arg("-p")
            .arg(&pidfile),
        T,
    );
    let pid = _daemon.pid(T);
    wait_tcp_pid(pid, ([127, 0, 0, 1], port).into(), T);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    exercise_client(&uri, &img);
    // An unknown export is a clear error, not a hang or a zero-sized disk.
    let err = NbdDevice::connect(
        &DeviceUri::parse(&format!("nbd://127.0.0.1:{port}/nope")).unwrap(),
        NbdOptions::default(),
    )
    .err()
    .expect("unknown export accepted");
    assert!(err.to_string().contains("nope"), "{err}");
    let dev = connect(&uri);
    assert!(dev.export_info().used_go, "nbd-server supports NBD_OPT_GO");
    dev.trim(0, 4096).unwrap();
}

#[test]
fn our_client_against_nbdkit() {
    let s = Scratch::new("nbdkit");
    let img = s.image("disk.img", IMG_LEN, 2);
    let sock = s.path("nbdkit.sock");
    let mut srv = ChildGuard::spawn(
        "nbdkit",
        Command::new("nbdkit")
            .arg("-f")
            .arg("--exit-with-parent")
            .arg("-U")
            .arg(&sock)
            .arg("file")
            .arg(format!("file={}", img.display())),
        s.path("nbdkit.log"),
    );
    wait_unix(&mut srv, &sock, T);
    let uri = unix_uri(&sock, "");
    exercise_client(&uri, &img);
    let dev = connect(&uri);
    assert!(
        dev.connections() > 1,
        "nbdkit's file plugin allows multi-conn"
    );
    dev.trim(1 << 20, 1 << 20).unwrap();
}

#[test]
fn our_client_against_qemu_nbd() {
    let s = Scratch::new("qemu-nbd");
    let img = s.image("disk.img", IMG_LEN, 3);
    let port = free_port();
    let mut srv = ChildGuard::spawn(
        "qemu-nbd",
        Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-t",
                "-b",
                "127.0.0.1",
                "-x",
                "disk",
                "--cache=writeback",
            ])
            .arg("-p")
            .arg(port.to_string())
            .arg(&img),
        s.path("qemu-nbd.log"),
    );
    wait_tcp(&mut srv, ([127, 0, 0, 1], port).into(), T);
    // qemu-nbd serves one client at a time by default: our client must cope
    // with a server that neither offers multi-conn nor accepts a second
    // connection, and pipeline on one.
    exercise_client(&format!("nbd://127.0.0.1:{port}/disk"), &img);
}

#[test]
fn qemu_img_reads_and_writes_our_server() {
    let s = Scratch::new("qemu-img");
    let img = s.image("disk.img", IMG_LEN, 4);
    let src = s.image("src.img", IMG_LEN, 5);
    // Over TCP, as nbd://host:port/export.
    let port = free_port();
    let (mut srv, _sock, _admin) = start_rdlmfs_nbd_on(
        &s,
        &img,
        "srv",
        &format!("127.0.0.1:{port}"),
        &["--export", "disk"],
    );
    wait_tcp(&mut srv, ([127, 0, 0, 1], port).into(), T);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    // qemu-img writes our export...
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
        T,
    );
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(&src).unwrap(),
        "qemu-img's write did not land byte-identical"
    );
    // ...our client reads what it wrote...
    let dev = connect(&uri);
    let mut got = vec![0u8; IMG_LEN];
    dev.read_at(0, &mut got).unwrap();
    assert!(got == std::fs::read(&src).unwrap());
    // ...and qemu-img reads what our client writes.
    let ours = pattern(IMG_LEN, 6);
    dev.write_at(0, &ours).unwrap();
    dev.flush().unwrap();
    drop(dev);
    let out = s.path("out.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&out),
        T,
    );
    assert!(
        std::fs::read(&out).unwrap() == ours,
        "qemu-img read back different bytes"
    );
}

#[test]
fn nbdinfo_and_nbdcopy_against_our_server() {
    let s = Scratch::new("nbdcopy");
    let img = s.image("disk.img", IMG_LEN, 7);
    let src = s.image("src.img", IMG_LEN, 8);
    let (_srv, sock, _admin) = start_rdlmfs_nbd(&s, &img, "srv", &[]);
    let uri = unix_uri(&sock, "");
    let info = run_ok(Command::new("nbdinfo").arg("--json").arg(&uri), T);
    let json = String::from_utf8_lossy(&info.stdout);
    assert!(
        json.contains(&format!("\"export-size\": {IMG_LEN}")),
        "nbdinfo: {json}"
    );
    assert!(
        json.contains("\"block_size_minimum\": 512"),
        "nbdinfo: {json}"
    );
    assert!(json.contains("\"can_flush\": true"), "nbdinfo: {json}");
    assert!(json.contains("\"can_multi_conn\": true"), "nbdinfo: {json}");
    run_ok(
        Command::new("nbdcopy").arg("--flush").arg(&src).arg(&uri),
        T,
    );
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(&src).unwrap(),
        "nbdcopy's write did not land byte-identical"
    );
    // blockdev::open, the entry point the file system uses, reads it too.
    let dev = blockdev::open(&uri, true).unwrap();
    let mut all = vec![0u8; IMG_LEN];
    dev.read_at(0, &mut all).unwrap();
    assert!(all == std::fs::read(&src).unwrap());
    assert!(dev.capabilities().read_only);
    assert!(matches!(
        dev.write_at(0, &all[..4096]),
        Err(blockdev::Error::ReadOnly { .. })
    ));
    let out = s.path("out.img");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&out), T);
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
        "nbdcopy read back different bytes"
    );
}

#[test]
fn export_name_only_client_against_our_server() {
    // The `nbd` crate negotiates with NBD_OPT_EXPORT_NAME and expects the
    // 124 zero bytes: the fallback path of our server.
    use std::io::{Read, Seek, SeekFrom, Write};
    let s = Scratch::new("nbd-crate");
    let img = s.image("disk.img", IMG_LEN, 9);
    let (_srv, sock, _admin) = start_rdlmfs_nbd(&s, &img, "srv", &["--export", "disk"]);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let export = nbd::client::handshake(&mut stream, b"disk").unwrap();
    assert_eq!(export.size, IMG_LEN as u64);
    let mut c = nbd::client::NbdClient::new(&mut stream, &export);
    let data = pattern(8192, 10);
    c.seek(SeekFrom::Start(4096)).unwrap();
    c.write_all(&data).unwrap();
    c.seek(SeekFrom::Start(4096)).unwrap();
    let mut back = vec![0u8; 8192];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    // And our client sees it on the same server.
    let dev = connect(&unix_uri(&sock, "disk"));
    let mut ours = vec![0u8; 8192];
    dev.read_at(4096, &mut ours).unwrap();
    assert_eq!(ours, data);
}

#[test]
fn a_second_read_write_export_of_one_image_is_refused() {
    let s = Scratch::new("lock");
    let img = s.image("disk.img", 1 << 20, 11);
    let (_srv, _sock, _admin) = start_rdlmfs_nbd(&s, &img, "first", &[]);
    let out = run(
        Command::new(rdlmfs_nbd())
            .arg("serve")
            .arg(&img)
            .arg("--listen")
            .arg("none")
            .arg("--unix")
            .arg(s.path("second.sock"))
            .arg("--exit-after")
            .arg("30"),
        T,
    );
    assert!(
        !out.status.success(),
        "second server started on a busy image"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exported"), "unclear error: {err}");
}

#[test]
fn sigterm_flushes_and_exits_cleanly() {
    let s = Scratch::new("sigterm");
    let img = s.image("disk.img", 1 << 20, 12);
    let (mut srv, sock, admin) = start_rdlmfs_nbd(&s, &img, "srv", &[]);
    let dev = connect(&unix_uri(&sock, ""));
    let data = pattern(4096, 13);
    dev.write_at(0, &data).unwrap();
    // SAFETY: signalling the child this test started, by its PID.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGTERM) };
    let status = srv
        .wait_exit(T)
        .expect("rdlmfs-nbd did not exit on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists() && !admin.exists(), "sockets left behind");
    assert_eq!(&std::fs::read(&img).unwrap()[..4096], &data[..]);
    // The client sees a clear error, not a hang.
    let mut buf = vec![0u8; 4096];
    let err = dev
        .read_at(0, &mut buf)
        .expect_err("read from a stopped server");
    assert!(
        matches!(err, blockdev::Error::ConnectionLost { .. }),
        "{err}"
    );
}
