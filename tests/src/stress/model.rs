//! The errno model of `rdlmfs-stress meta`: the operations it performs, and
//! for each one which errno values concurrency can legitimately produce.
//!
//! Workers race on a shared tree without coordinating, so an operation may
//! fail because another worker (possibly on another node) changed the tree
//! between choosing a target and acting on it. Those failures are expected
//! and only counted. Anything outside this model means the file system (or
//! the node's mount) misbehaved, and the run fails with exit code 2.
//!
//! The model is deliberately narrow because the tool arranges for the other
//! usual errors not to happen:
//! - `EACCES`/`EPERM`: every mode keeps owner `rwx` and drops the sticky
//!   bit, a non-root runner only chowns to its own groups, and everything in
//!   the tree is owned by the runner (or the runner is root).
//! - `ENOSPC`/`EDQUOT`/`EFBIG`/`E2BIG`/`ERANGE`/`ENAMETOOLONG`: the tree,
//!   file sizes, xattr values and names are small and bounded; a full file
//!   system is reported rather than hidden.
//! - Symlink targets are relative and downward only (`eN` or `eN/eM`), so
//!   following one never leaves the tree.

use std::fmt;

/// One kind of operation a worker performs. `Readdir` is not chosen as an
/// operation: it is how workers find their targets, and is counted (and
/// checked) separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Create,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    Link,
    Symlink,
    Chmod,
    Chown,
    Utimes,
    Setxattr,
    Removexattr,
    Write,
    Truncate,
    Fsync,
    Readdir,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 16] = [
        Op::Create,
        Op::Mkdir,
        Op::Rmdir,
        Op::Unlink,
        Op::Rename,
        Op::Link,
        Op::Symlink,
        Op::Chmod,
        Op::Chown,
        Op::Utimes,
        Op::Setxattr,
        Op::Removexattr,
        Op::Write,
        Op::Truncate,
        Op::Fsync,
        Op::Readdir,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Symlink => "symlink",
            Op::Chmod => "chmod",
            Op::Chown => "chown",
            Op::Utimes => "utimes",
            Op::Setxattr => "setxattr",
            Op::Removexattr => "removexattr",
            Op::Write => "write",
            Op::Truncate => "truncate",
            Op::Fsync => "fsync",
            Op::Readdir => "readdir",
        }
    }

    /// Operations that add a name to the tree; not chosen while the tree is
    /// at `--max-entries`.
    pub fn creates_entry(self) -> bool {
        matches!(self, Op::Create | Op::Mkdir | Op::Link | Op::Symlink)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether an errno from an operation is explained by concurrency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Expected under concurrency; the reason says which race causes it.
    Possible(&'static str),
    /// The file system or the mount misbehaved; the reason says why the
    /// model rules it out.
    Impossible(&'static str),
}

impl Verdict {
    pub fn is_possible(self) -> bool {
        matches!(self, Verdict::Possible(_))
    }
}

/// Classifies `errno` returned by `op`. Unknown errno values are impossible:
/// a checker that accepts what it does not understand cannot fail.
pub fn classify(op: Op, errno: i32) -> Verdict {
    use Op::*;
    use Verdict::{Impossible, Possible};
    match errno {
        // Always impossible, whatever the operation.
        libc::EIO => Impossible("EIO: the file system or its device failed"),
        libc::ENOTCONN => Impossible("ENOTCONN: the mount lost its file system daemon"),
        libc::ESTALE => Impossible(
            "ESTALE: a coherent cluster file system must not return stale handles to path \
             operations",
        ),
        libc::EBADF => Impossible("EBADF: the tool only uses descriptors it just opened"),
        libc::EFAULT => Impossible("EFAULT: the kernel or file system mishandled a buffer"),

        // Path resolution races: every operation takes a path that another
        // worker may remove, rename or replace at any time.
        libc::ENOENT => Possible("another worker removed or renamed a path component"),
        libc::ENOTDIR => Possible(
            "a path component was replaced by a non-directory, or a directory was renamed onto \
             a non-directory",
        ),
        libc::ELOOP => Possible(
            "random symlink targets can form loops, and a symlink can replace a removed \
             directory in a path",
        ),

        libc::EEXIST => match op {
            Create | Mkdir | Symlink | Link => Possible("another worker created that name first"),
            Rmdir | Rename => {
                Possible("the directory is not empty (POSIX allows EEXIST as well as ENOTEMPTY)")
            }
            Setxattr => Possible("XATTR_CREATE on a name another worker set"),
            _ => Impossible("EEXIST: this operation creates no name"),
        },
        libc::ENOTEMPTY => match op {
            Rmdir => Possible("another worker put an entry in the directory"),
            Rename => Possible("renaming a directory onto a non-empty directory"),
            _ => Impossible("ENOTEMPTY: this operation removes no directory"),
        },
        libc::EISDIR => match op {
            Unlink | Write | Truncate => Possible("the target is (or was replaced by) a directory"),
            Rename => Possible("renaming a non-directory onto a directory"),
            _ => Impossible("EISDIR: this operation accepts directories"),
        },
        libc::EINVAL => match op {
            Rename => Possible("renaming a directory into its own subtree"),
            _ => Impossible("EINVAL: the tool passes only valid arguments"),
        },
        libc::EMLINK => match op {
            Link | Mkdir | Rename => Possible("the file system's link count limit was reached"),
            _ => Impossible("EMLINK: this operation adds no link"),
        },
        libc::EXDEV => match op {
            Rename | Link => Possible(
                "some file systems refuse cross-directory renames or links (overlayfs does for \
                 directories); not a coherence failure",
            ),
            _ => Impossible("EXDEV: this operation spans no directories"),
        },
        libc::EPERM => match op {
            Link => Possible(
                "link(2) refuses directories with EPERM; the source was replaced by a directory",
            ),
            _ => Impossible("EPERM: modes keep owner rwx, chown stays within the runner's rights"),
        },
        libc::ENODATA => match op {
            Setxattr => Possible("XATTR_REPLACE on a name another worker removed"),
            Removexattr => Possible("the xattr was never set or another worker removed it"),
            _ => Impossible("ENODATA: not an xattr operation"),
        },
        libc::ENOTSUP => match op {
            Setxattr | Removexattr => Possible("the file system does not support user.* xattrs"),
            _ => Impossible("ENOTSUP: not an xattr operation"),
        },

        libc::EACCES => Impossible("EACCES: modes always keep owner rwx"),
        libc::ENOSPC | libc::EDQUOT => {
            Impossible("ENOSPC/EDQUOT: the tree is small and bounded; is the file system full?")
        }
        _ => Impossible("not in the model of what concurrency can cause"),
    }
}
