//! What the mount process and `rdlmfs cluster up` share with the system
//! around them: the termination signals they wait for, and the kernel's
//! mount tables.
//!
//! Owns: blocking and waiting for SIGTERM/SIGINT/SIGHUP, and reading
//! `/proc/self/mounts` and `/proc/self/mountinfo` fields (which escape
//! space, tab, newline and backslash as `\ooo`). May not touch: what a
//! caller does on a signal or with a mount.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// SIGTERM, SIGINT and SIGHUP: block them in every thread, then take them
/// with [`wait_signal`].
pub fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Waits at most `timeout` for one of `set`; the signal, if one came.
pub fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: set is initialised; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// A mount-table field with its `\ooo` escapes undone.
pub fn unescape_mount_field(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i + 1..i + 4) {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push(d.iter().fold(0u8, |v, c| (v << 3) | (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// How many mounts the kernel shows at `p` (stacked mounts count each).
pub fn mounts_at(p: &Path) -> usize {
    let want = p.as_os_str().as_bytes();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| unescape_mount_field(m) == want)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape_mount_field(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mount_field(r"/mnt/x\134y"), br"/mnt/x\y");
        assert_eq!(unescape_mount_field(r"/a\\"), br"/a\\");
        assert_eq!(unescape_mount_field("/plain"), b"/plain");
        assert_eq!(unescape_mount_field(r"/end\04"), br"/end\04");
        assert_eq!(unescape_mount_field(r"/not\089"), br"/not\089");
    }
}
