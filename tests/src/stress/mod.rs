//! `rdlmfs-stress`: concurrency stress tools users run against a cluster.
//!
//! - [`meta`]: fsstress-style random metadata and data operations from
//!   several workers, each through one of several paths to the same
//!   directory (one path per node's mount), then a check that every path
//!   shows the same tree. Its errno model lives in [`model`], the tree walk
//!   and diff in [`tree`].
//! - [`pingpong`]: ctdb-style `fcntl` byte-range lock ping-pong between real
//!   processes, optionally checking that data written under a lock is what
//!   the next holder reads.
//!
//! This file owns what both share: exit codes, errno names, and the shell
//! command line printed so a failure can be rerun.

pub mod meta;
pub mod model;
pub mod pingpong;
pub mod tree;

use std::ffi::OsString;

/// Everything was checked and nothing was wrong.
pub const EXIT_OK: i32 = 0;
/// `meta`: the paths do not all show the same tree.
pub const EXIT_MISMATCH: i32 = 1;
/// An operation failed in a way the model says cannot happen (an impossible
/// errno, a hung operation, a ping-pong value mismatch, a lock error).
pub const EXIT_IMPOSSIBLE: i32 = 2;
/// Bad command line, or the run could not be set up.
pub const EXIT_SETUP: i32 = 3;

/// The symbolic name of an errno value ("ENOENT"), for reports. Negative
/// values are our own codes for failures that carry no errno.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        E_SHORT => "short I/O",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// Our code for an I/O call that failed without an errno (a read or write
/// that moved zero bytes). No file system may do that here.
pub const E_SHORT: i32 = -1;

/// The errno of an `io::Error`, or [`E_SHORT`] when it carries none.
pub fn io_errno(err: &std::io::Error) -> i32 {
    err.raw_os_error().unwrap_or(E_SHORT)
}

/// Quotes one argument for a POSIX shell, only when it needs it, so the
/// printed command line can be pasted back as is.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The command line this process was started with, quoted for a shell, with
/// `extra` arguments appended (e.g. the seed that was drawn at random).
pub fn command_line(args: &[OsString], extra: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .chain(extra.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}
