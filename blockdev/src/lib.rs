//! The shared disk of rdlmfs.
//!
//! This crate owns everything between the file system and the bytes on the
//! shared device: the [`BlockDevice`] trait that every layer above uses, and
//! its implementations:
//!
//! - [`FileDevice`]: a local regular file or block device (`pread`/`pwrite`,
//!   `flush` = `fdatasync`, trim = hole punching).
//! - [`NbdDevice`]: a client of the NBD protocol (fixed newstyle, `NBD_OPT_GO`
//!   with fallback to `NBD_OPT_EXPORT_NAME`, pipelined requests over one or
//!   more connections, bounded reconnects).
//! - [`nbd::server`]: the `rdlmfs-nbd` server, which exports a file to many
//!   clients and can *fence* a named client.
//! - [`FaultDevice`]: a wrapper for tests that holds unflushed writes in memory
//!   so a simulated power cut can drop or reorder them, and injects errors and
//!   latency.
//!
//! It knows nothing of file systems or locks: the only promises it makes are
//! the ones written on [`BlockDevice`].

pub mod error;
pub mod fault;
pub mod file;
pub mod nbd;
pub mod uri;

pub use error::{Error, Op, Result};
pub use fault::{CrashPolicy, FaultDevice, FaultRule};
pub use file::{FileDevice, FileOptions};
pub use nbd::client::{NbdDevice, NbdOptions};
pub use uri::DeviceUri;

use std::sync::Arc;

/// What a backend can do beyond plain reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Writes are refused.
    pub read_only: bool,
    /// The backend has a native forced-unit-access write. Without it
    /// [`BlockDevice::write_fua_at`] still works, as a write followed by a
    /// flush.
    pub fua: bool,
    /// [`BlockDevice::trim`] is supported.
    pub trim: bool,
}

/// A shared disk addressed in bytes, accessed in whole blocks.
///
/// Contract, for every implementation:
/// - `offset` and the buffer length of every read, write and trim are
///   multiples of [`block_size`](Self::block_size), and the range lies inside
///   [`size`](Self::size); anything else is refused with
///   [`Error::Misaligned`] or [`Error::OutOfRange`] before any I/O happens.
/// - A write that returned `Ok` is visible to every later read from any
///   thread. It is *durable* only after a later [`flush`](Self::flush)
///   returned `Ok`, or at once if it was written with
///   [`write_fua_at`](Self::write_fua_at).
/// - After a trim, the trimmed range reads as either its old contents or
///   zeroes until it is written again (NBD's TRIM gives no more).
/// - A read either fills the whole buffer with the device's data or returns
///   an error: never a partial or zero-filled buffer in place of an error.
/// - All methods may be called from many threads at once.
pub trait BlockDevice: Send + Sync {
    /// Human-readable name used in error messages and logs (a path or URI).
    fn name(&self) -> &str;
    /// Size of the device in bytes (a multiple of `block_size`).
    fn size(&self) -> u64;
    /// The I/O granularity: every offset and length is a multiple of this.
    fn block_size(&self) -> u32;
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes `buf` at `offset`; visible at once, durable after `flush`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Writes `buf` at `offset` and returns only once it is durable.
    fn write_fua_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_at(offset, buf)?;
        self.flush()
    }
    /// Durability barrier: every write that completed before this call
    /// started is durable when it returns `Ok`.
    fn flush(&self) -> Result<()>;
    /// Tells the device the range's contents are no longer needed.
    fn trim(&self, offset: u64, len: u64) -> Result<()>;
}

impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        (**self).write_at(offset, buf)
    }
    fn write_fua_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        (**self).write_fua_at(offset, buf)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        (**self).trim(offset, len)
    }
}

/// Checks a request against the device's geometry; every backend calls this
/// before it touches the disk or the network.
pub fn check_range(dev: &dyn BlockDevice, op: Op, offset: u64, len: u64) -> Result<()> {
    let bs = u64::from(dev.block_size());
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(Error::Misaligned {
            device: dev.name().to_string(),
            op,
            offset,
            len,
            block_size: dev.block_size(),
        });
    }
    match offset.checked_add(len) {
        Some(end) if end <= dev.size() => Ok(()),
        _ => Err(Error::OutOfRange {
            device: dev.name().to_string(),
            op,
            offset,
            len,
            size: dev.size(),
        }),
    }
}

/// Opens a device by path or URI: `nbd://host[:port][/export]`,
/// `nbd+unix:///export?socket=PATH`, or a local path.
pub fn open(spec: &str, read_only: bool) -> Result<Arc<dyn BlockDevice>> {
    open_as(spec, read_only, None)
}

/// [`open`], telling an NBD server `client_id` so that it can fence this
/// client (ignored for files and by servers that do not know client ids).
pub fn open_as(
    spec: &str,
    read_only: bool,
    client_id: Option<String>,
) -> Result<Arc<dyn BlockDevice>> {
    match DeviceUri::parse(spec)? {
        DeviceUri::File(path) => Ok(Arc::new(FileDevice::open(
            &path,
            FileOptions {
                read_only,
                ..FileOptions::default()
            },
        )?)),
        uri @ (DeviceUri::NbdTcp { .. } | DeviceUri::NbdUnix { .. }) => {
            Ok(Arc::new(NbdDevice::connect(
                &uri,
                NbdOptions {
                    read_only,
                    client_id,
                    ..NbdOptions::default()
                },
            )?))
        }
    }
}
