//! Shared helpers for the file system's library tests: a formatted image
//! in a temporary directory, mounting it, and fsck.

#![allow(dead_code)]

use blockdev::file::{FileDevice, FileOptions};
use blockdev::BlockDevice;
use rdlmfs::acl::Cred;
use rdlmfs::format::MkfsOptions;
use rdlmfs::{Fs, MountOptions};
use rdlmfs_mkfs::fsck::{check, FsckOptions};
use rdlmfs_mkfs::{format, FormatParams};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MIB: u64 = 1 << 20;

pub fn image(dir: &Path, size: u64, bs: u32) -> PathBuf {
    let p = dir.join("fs.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let dev = open_dev(&p);
    let opts = MkfsOptions {
        block_size: bs,
        journals: 2,
        journal_mib: Some(4),
        ..MkfsOptions::default()
    };
    format(&*dev, &FormatParams::new(opts), &mut |_| {}).expect("format");
    p
}

pub fn open_dev(p: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(p, FileOptions::default()).expect("open image"))
}

pub fn mount(p: &Path) -> Fs {
    Fs::mount(open_dev(p), MountOptions::default()).expect("mount")
}

pub fn root() -> Cred {
    Cred::root()
}

pub fn user(uid: u32) -> Cred {
    Cred {
        uid,
        gid: uid,
        groups: vec![],
    }
}

/// fsck -n: returns the findings (empty = clean).
pub fn fsck(p: &Path) -> Vec<String> {
    let dev = open_dev(p);
    let r = check(&*dev, FsckOptions { repair: false }, &mut |_, _, _| {}).expect("fsck runs");
    r.findings.iter().map(|f| f.detail.clone()).collect()
}

// ---- the real mount: `rdlmfs mount` in a separate process ----

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a mount or an unmount may take before a test gives up.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `rdlmfs mount --foreground`. Dropping it (also when a test
/// panics) detaches the mount and kills the server by PID, and prints
/// where its log is.
pub struct Mounted {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

pub fn mounted_at(p: &Path) -> bool {
    let want = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

fn detach(mnt: &Path) {
    if let Ok(p) = CString::new(mnt.as_os_str().as_bytes()) {
        // SAFETY: p is a valid NUL-terminated path.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

fn mount_command(dev: &OsStr, mnt: &Path, opts: &str, log: &Path) -> Command {
    let out = std::fs::File::create(log).expect("create the mount log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdlmfs"));
    cmd.arg("mount").arg(dev).arg(mnt).arg("--foreground");
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts);
    }
    cmd.stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .stdin(Stdio::null());
    cmd
}

impl Mounted {
    pub fn start(dev: impl AsRef<OsStr>, mnt: &Path, log: &Path) -> Mounted {
        Mounted::start_with(dev, mnt, log, "")
    }

    /// Mounts `dev` (a path or an nbd:// URI) at `mnt` with `-o opts`
    /// (none if empty) and waits until the kernel shows the mount.
    pub fn start_with(dev: impl AsRef<OsStr>, mnt: &Path, log: &Path, opts: &str) -> Mounted {
        std::fs::create_dir_all(mnt).unwrap();
        let mnt = mnt.canonicalize().unwrap();
        let child = mount_command(dev.as_ref(), &mnt, opts, log)
            .spawn()
            .expect("start rdlmfs");
        let mut m = Mounted {
            child: Some(child),
            mnt,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !mounted_at(&m.mnt) {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "rdlmfs exited ({st}); log: {}\n{}",
                    m.log.display(),
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no mount after {MOUNT_TIMEOUT:?}; log: {}",
                m.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Starts `rdlmfs mount DEV MNT --foreground ARGS...` and returns at
    /// once (cluster nodes must start together to reach quorum); see
    /// [`Mounted::wait_mounted`].
    pub fn spawn_args(dev: impl AsRef<OsStr>, mnt: &Path, log: &Path, args: &[String]) -> Mounted {
        std::fs::create_dir_all(mnt).unwrap();
        let mnt = mnt.canonicalize().unwrap();
        let mut cmd = mount_command(dev.as_ref(), &mnt, "", log);
        cmd.args(args);
        let child = cmd.spawn().expect("start rdlmfs");
        Mounted {
            child: Some(child),
            mnt,
            log: log.to_path_buf(),
        }
    }

    /// [`Mounted::spawn_args`] with the server in network namespace `ns`
    /// (`nsenter --net`, which execs: the child's PID is the server's).
    /// Only the network is separate: the mount is visible here.
    pub fn spawn_in_netns(
        ns: &str,
        dev: impl AsRef<OsStr>,
        mnt: &Path,
        log: &Path,
        args: &[String],
    ) -> Mounted {
        std::fs::create_dir_all(mnt).unwrap();
        let mnt = mnt.canonicalize().unwrap();
        let out = std::fs::File::create(log).expect("create the mount log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_rdlmfs"))
            .arg("mount")
            .arg(dev.as_ref())
            .arg(&mnt)
            .arg("--foreground")
            .args(args)
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("start rdlmfs under nsenter");
        Mounted {
            child: Some(child),
            mnt,
            log: log.to_path_buf(),
        }
    }

    /// Waits (bounded by `timeout`) until the kernel shows the mount.
    pub fn wait_mounted(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !mounted_at(&self.mnt) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "rdlmfs exited ({st}); log: {}\n{}",
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no mount after {timeout:?}; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// SIGTERM: the server unmounts, commits and exits 0.
    pub fn stop(mut self) {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        let st = loop {
            match c.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => {
                    detach(&self.mnt);
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!(
                        "rdlmfs did not exit after SIGTERM ({other:?}); log: {}",
                        self.log.display()
                    );
                }
            }
        };
        if !st.success() || mounted_at(&self.mnt) {
            detach(&self.mnt);
            panic!(
                "rdlmfs exited with {st} (still mounted: {}); log: {}\n{}",
                mounted_at(&self.mnt),
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` to the server process (by its PID).
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("running");
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(c.id() as i32, sig) };
    }

    /// A crash: SIGKILL, then the kernel's side of the mount is detached.
    /// Nothing is unmounted cleanly.
    pub fn kill(mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
        detach(&self.mnt);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            detach(&self.mnt);
            let _ = c.kill();
            let _ = c.wait();
            // The temporary directory holding the log goes away with the
            // test, so show the log's end here.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("rdlmfs log {} (last lines):", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
}

/// Runs a mount that must be refused: waits (bounded) for the server to
/// exit, asserts it never mounted, returns its exit status and its output.
pub fn mount_refused(
    dev: impl AsRef<OsStr>,
    mnt: &Path,
    log: &Path,
    opts: &str,
) -> (ExitStatus, String) {
    std::fs::create_dir_all(mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let mut c = mount_command(dev.as_ref(), &mnt, opts, log)
        .spawn()
        .expect("start rdlmfs");
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        if mounted_at(&mnt) {
            detach(&mnt);
            let _ = c.kill();
            let _ = c.wait();
            panic!(
                "the mount was expected to be refused but it mounted; log: {}",
                log.display()
            );
        }
        match c.try_wait() {
            Ok(Some(st)) => {
                let out = std::fs::read_to_string(log).unwrap_or_default();
                assert!(!mounted_at(&mnt), "mounted; log: {}", log.display());
                return (st, out);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => {
                let _ = c.kill();
                let _ = c.wait();
                detach(&mnt);
                panic!(
                    "rdlmfs neither mounted nor exited ({other:?}); log: {}",
                    log.display()
                );
            }
        }
    }
}

/// The errno of a failed call (0 if it succeeded).
pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// The errno of a libc call returning -1 on failure (0 if it succeeded).
pub fn libc_errno(r: libc::c_int) -> i32 {
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// Runs `f` on a thread of its own whose credentials are those of an
/// unprivileged user (uid, gid, no supplementary groups, no
/// capabilities). Credentials are per thread in the kernel; the raw
/// system calls change only this thread (glibc's wrappers would change
/// every thread of the test process).
pub fn as_user<T: Send>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: plain credential system calls on the current thread.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()),
                    0,
                    "setgroups"
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresgid, gid, gid, gid),
                    0,
                    "setresgid"
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                    0,
                    "setresuid"
                );
                assert_eq!(libc::syscall(libc::SYS_geteuid) as u32, uid);
                assert_eq!(libc::syscall(libc::SYS_getegid) as u32, gid);
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Nanoseconds since the epoch, from the same clock the file system uses.
pub fn now_ns() -> i128 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    d.as_nanos() as i128
}

/// (atime, mtime, ctime) in nanoseconds since the epoch, as stat shows them.
pub fn times(p: &Path) -> (i128, i128, i128) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (
        ns(m.atime(), m.atime_nsec()),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec()),
    )
}

/// statvfs of a mounted file system.
pub fn statvfs(p: &Path) -> libc::statvfs {
    let c = cpath(p);
    // SAFETY: an out-parameter of the right type and a valid path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs");
    s
}
