//! The file system's error type: an errno for the caller (FUSE replies with
//! it) and, for anything that is not a plain POSIX refusal, the context a
//! person needs — which device, which block, which inode.
//!
//! Owns: the mapping of every internal failure to one errno. May not touch:
//! logging policy (callers decide what is worth a log line).

use crate::format::io::IoError;
use crate::format::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX refusal (ENOENT, EEXIST, ...): expected, no context needed.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// The device failed or returned metadata that does not decode.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Metadata that decodes but contradicts itself, or an invariant the
    /// file system relies on does not hold.
    #[error("{device}: corrupt file system: {detail}")]
    Corrupt { device: String, detail: String },
    /// The journal has no room for a transaction this large.
    #[error("{device}: journal {jid}: {detail}")]
    Journal {
        device: String,
        jid: u32,
        detail: String,
    },
    /// The device was shut down by an earlier fatal error; nothing more is
    /// written until a remount replays the journal.
    #[error("{device}: withdrawn after an earlier I/O error; unmount and remount to recover")]
    Withdrawn { device: String },
    /// The operation needs a glock this node does not hold (in a cluster):
    /// it must be undone, wait for the glock outside the file system and
    /// run again. Never reaches a user.
    #[error("glock {name} is needed in mode {mode:?}")]
    GlockWait {
        name: crate::glock::GlockName,
        mode: crate::glock::GlockMode,
    },
    /// The lock manager failed or refused (no quorum, node left, ...).
    #[error("{detail}")]
    Lock { detail: String },
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

impl FsError {
    /// The errno FUSE should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Errno(e) => *e,
            FsError::Io(_) | FsError::Corrupt { .. } | FsError::Withdrawn { .. } => libc::EIO,
            FsError::Journal { .. } => libc::EIO,
            // A wait that escaped its retry loop is a bug; fail the request.
            FsError::GlockWait { .. } => libc::EIO,
            FsError::Lock { .. } => libc::EIO,
        }
    }

    /// Whether this error means the device or metadata is broken (as
    /// opposed to a refusal of one request).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            FsError::Errno(_) | FsError::GlockWait { .. } | FsError::Lock { .. }
        )
    }
}

impl From<FormatError> for FsError {
    fn from(e: FormatError) -> FsError {
        FsError::Corrupt {
            device: String::new(),
            detail: e.to_string(),
        }
    }
}

/// Shorthand for a POSIX refusal.
pub fn errno<T>(e: i32) -> Result<T> {
    Err(FsError::Errno(e))
}
