//! Test mounts: a FUSE file-system process started by a test, and its
//! mount. A [`TestMount`] owns exactly one child process (started from the
//! binary it is given, normally `rdlmfs-testfs`) and the mount that child
//! makes; it never touches other processes or mounts. Starting waits, with
//! a bound, until the mount shows in `/proc/self/mounts`; dropping — also
//! while a test panics — unmounts lazily, kills the child by its PID and
//! reaps it, and on panic prints where the child's log is.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`TestMount::start`] waits for the mount to appear.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`TestMount::stop`] waits for the process to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A FUSE mount served by a child process, torn down on drop.
#[derive(Debug)]
pub struct TestMount {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
    /// Set once the child has been reaped, so that drop has nothing to do.
    done: bool,
}

impl TestMount {
    /// Starts `binary --backing BACKING --mountpoint MOUNTPOINT --mode MODE
    /// EXTRA_ARGS...` with stdout and stderr going to `log`, and returns once
    /// the mount is in place (at most [`MOUNT_TIMEOUT`]). Fails, with the log
    /// in the message, when the child exits first or the time runs out.
    /// `mountpoint` must be an existing directory; `log` is truncated.
    pub fn start(
        binary: &Path,
        backing: &Path,
        mountpoint: &Path,
        mode: &str,
        extra_args: &[&str],
        log: &Path,
    ) -> io::Result<TestMount> {
        let mountpoint = mountpoint.canonicalize().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mountpoint {}: {e}", mountpoint.display()),
            )
        })?;
        // Counting, rather than asking "is it mounted", also works when a
        // mount is stacked on an earlier one at the same place.
        let before = fuse_mounts_at(&mountpoint)?;
        let out = File::create(log)
            .map_err(|e| io::Error::new(e.kind(), format!("log {}: {e}", log.display())))?;
        let err = out.try_clone()?;
        let child = Command::new(binary)
            .arg("--backing")
            .arg(backing)
            .arg("--mountpoint")
            .arg(&mountpoint)
            .arg("--mode")
            .arg(mode)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("start {}: {e}", binary.display())))?;
        let mut m = TestMount {
            child,
            mountpoint,
            log: log.to_path_buf(),
            done: false,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(status) = m.child.try_wait()? {
                m.done = true;
                return Err(io::Error::other(format!(
                    "{} exited ({status}) before mounting {}; log {}:\n{}",
                    binary.display(),
                    m.mountpoint.display(),
                    m.log.display(),
                    m.log_text()
                )));
            }
            if fuse_mounts_at(&m.mountpoint)? > before {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                // Drop kills and reaps the child; the message needs the log first.
                let msg = format!(
                    "{} did not mount {} within {MOUNT_TIMEOUT:?}; log {}:\n{}",
                    binary.display(),
                    m.mountpoint.display(),
                    m.log.display(),
                    m.log_text()
                );
                return Err(io::Error::new(io::ErrorKind::TimedOut, msg));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID of the file-system process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The mountpoint, canonicalised.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Where the process's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log as written so far (empty if unreadable).
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Asks the process to unmount and exit (SIGTERM) and waits for it (at
    /// most [`STOP_TIMEOUT`]). Fails if it does not exit in time (it is then
    /// killed) or leaves its mount behind.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(io::Error::other)?;
        // SAFETY: signalling our own unreaped child, so the PID is still its.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                self.done = true;
                break status;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "pid {pid} did not exit within {STOP_TIMEOUT:?} of SIGTERM; log {}",
                        self.log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // A lazy unmount may still be finishing in the kernel; it is gone
        // from the mount table at once, so no wait is needed here.
        if fuse_mounts_at(&self.mountpoint)? > 0 {
            detach(&self.mountpoint);
            return Err(io::Error::other(format!(
                "pid {pid} exited ({status}) but left {} mounted; log {}",
                self.mountpoint.display(),
                self.log.display()
            )));
        }
        if status.signal().is_some() || !status.success() {
            return Err(io::Error::other(format!(
                "pid {pid} exited with {status} after SIGTERM; log {}:\n{}",
                self.log.display(),
                self.log_text()
            )));
        }
        Ok(status)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if !self.done {
            // Unmount first so that nothing new enters the mount; lazily,
            // because the test may still hold files open in it.
            if fuse_mounts_at(&self.mountpoint).unwrap_or(1) > 0 {
                detach(&self.mountpoint);
            }
            // Child::kill signals the PID of a child we have not reaped, so
            // it cannot hit a recycled PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.done = true;
        }
        if std::thread::panicking() {
            eprintln!(
                "test mount {} (pid {}) log: {}",
                self.mountpoint.display(),
                self.child.id(),
                self.log.display()
            );
        }
    }
}

/// Lazily unmounts `mountpoint`: umount2(MNT_DETACH) when allowed (root),
/// else `fusermount3 -u -z`. Errors are ignored; callers check the table.
fn detach(mountpoint: &Path) {
    if let Ok(p) = CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: p is a valid NUL-terminated string.
        if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } == 0 {
            return;
        }
    }
    let _ = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// How many FUSE mounts `/proc/self/mounts` lists at `mountpoint` (which
/// must be canonical, as the table holds canonical paths).
pub fn fuse_mounts_at(mountpoint: &Path) -> io::Result<usize> {
    let table = std::fs::read("/proc/self/mounts")?;
    let want = mountpoint.as_os_str().as_bytes();
    Ok(table
        .split(|&b| b == b'\n')
        .filter(|line| {
            let mut fields = line.split(|&b| b == b' ');
            let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
            let is_fuse = fstype.is_some_and(|t| t == b"fuse" || t.starts_with(b"fuse."));
            is_fuse && target.is_some_and(|t| unescape(t) == want)
        })
        .count())
}

/// Undoes the octal escapes (`\040` for a space, ...) of the mount tables.
pub(crate) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits {
            Some(d) if field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push(d.iter().fold(0u8, |v, c| (v << 3) | (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_mount_table_fields() {
        assert_eq!(unescape(br"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape(br"/x\134y"), br"/x\y");
        assert_eq!(unescape(br"/plain"), b"/plain");
        assert_eq!(unescape(br"/trail\04"), br"/trail\04");
    }

    #[test]
    fn nothing_is_mounted_on_a_fresh_directory() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            fuse_mounts_at(&d.path().canonicalize().unwrap()).unwrap(),
            0
        );
    }
}
