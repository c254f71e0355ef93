//! Errors of the block layer. Every variant names the device and, where
//! there is one, the operation and byte range, so a message read in a log
//! says which disk, which block and why.

use std::fmt;

/// The operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    Connect,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::Connect => "connect",
        })
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{device}: {op} of {len} bytes at offset {offset}: {source}")]
    Io {
        device: String,
        op: Op,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },

    #[error("{device}: {op} at offset {offset} length {len} is not aligned to the {block_size}-byte block size")]
    Misaligned {
        device: String,
        op: Op,
        offset: u64,
        len: u64,
        block_size: u32,
    },

    #[error("{device}: {op} at offset {offset} length {len} lies beyond the end of the {size}-byte device")]
    OutOfRange {
        device: String,
        op: Op,
        offset: u64,
        len: u64,
        size: u64,
    },

    #[error("{device}: the device is read-only; {op} refused")]
    ReadOnly { device: String, op: Op },

    #[error("{device}: {op} is not supported by this device")]
    Unsupported { device: String, op: Op },

    /// The NBD server answered a command with an error.
    #[error("{device}: server refused {op} at offset {offset} length {len}: {}", errno_name(*errno))]
    Server {
        device: String,
        op: Op,
        offset: u64,
        len: u64,
        errno: u32,
    },

    /// The peer broke the protocol (bad magic, unknown handle, truncated
    /// reply, an answer we did not ask for).
    #[error("{device}: protocol error: {detail}")]
    Protocol { device: String, detail: String },

    /// Negotiation failed: the server refused the export or an option.
    #[error("{device}: handshake failed: {detail}")]
    Handshake { device: String, detail: String },

    /// The connection was lost and could not be re-established within the
    /// retry bound; the operation did not complete.
    #[error("{device}: {op} at offset {offset} length {len} failed: connection lost after {attempts} attempt(s): {detail}")]
    ConnectionLost {
        device: String,
        op: Op,
        offset: u64,
        len: u64,
        attempts: u32,
        detail: String,
    },

    /// A connection that carried completed but unflushed writes was lost;
    /// whether those writes are durable cannot be known, so the flush that
    /// would have vouched for them fails.
    #[error("{device}: flush cannot vouch for {writes} write(s) completed on a connection that was lost before they were flushed")]
    DurabilityUnknown { device: String, writes: u64 },

    /// The server fenced this client: nothing it sends reaches the disk.
    #[error("{device}: this client has been fenced by the server; remount required")]
    Fenced { device: String },

    #[error("{device}: injected fault: {op} at offset {offset}")]
    Injected { device: String, op: Op, offset: u64 },

    #[error("{device}: the device has crashed (simulated power cut)")]
    Crashed { device: String },

    #[error("invalid device address {spec:?}: {detail}")]
    InvalidUri { spec: String, detail: String },

    #[error("{device}: {detail}")]
    Busy { device: String, detail: String },
}

impl Error {
    /// The errno a POSIX caller (the FUSE layer) should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Misaligned { .. } | Error::OutOfRange { .. } | Error::InvalidUri { .. } => {
                libc::EINVAL
            }
            Error::ReadOnly { .. } => libc::EROFS,
            Error::Unsupported { .. } => libc::EOPNOTSUPP,
            Error::Server { errno, .. } => match *errno {
                NBD_EPERM => libc::EPERM,
                NBD_ENOMEM => libc::ENOMEM,
                NBD_EINVAL => libc::EINVAL,
                NBD_ENOSPC => libc::ENOSPC,
                NBD_EOVERFLOW => libc::EOVERFLOW,
                NBD_ENOTSUP => libc::EOPNOTSUPP,
                NBD_ESHUTDOWN => libc::ESHUTDOWN,
                _ => libc::EIO,
            },
            Error::Fenced { .. } => libc::EPERM,
            Error::Busy { .. } => libc::EBUSY,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Names an NBD error number the way the protocol document does.
pub fn errno_name(errno: u32) -> String {
    match errno {
        NBD_EPERM => "EPERM (operation not permitted)".into(),
        NBD_EIO => "EIO (input/output error)".into(),
        NBD_ENOMEM => "ENOMEM (out of memory)".into(),
        NBD_EINVAL => "EINVAL (invalid argument)".into(),
        NBD_ENOSPC => "ENOSPC (no space left, or beyond the end of the export)".into(),
        NBD_EOVERFLOW => "EOVERFLOW (request too large)".into(),
        NBD_ENOTSUP => "ENOTSUP (operation not supported)".into(),
        NBD_ESHUTDOWN => "ESHUTDOWN (server is shutting down)".into(),
        other => format!("unknown NBD error {other}"),
    }
}
