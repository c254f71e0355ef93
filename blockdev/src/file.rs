//! The local backend: a regular file or a block device.
//!
//! Reads and writes are positional (`pread`/`pwrite`), so any number of
//! threads share one descriptor without a lock. `flush` is `fdatasync`; a FUA
//! write is `pwritev2(RWF_DSYNC)`, which makes just that write durable; trim
//! punches a hole in a regular file and issues `BLKDISCARD` on a block device.
//!
//! With `exclusive`, the file is `flock`ed (shared when read-only, exclusive
//! when read-write) so two servers can never export one image read-write at
//! once; the lock dies with the process.

use crate::error::{Error, Op, Result};
use crate::{check_range, BlockDevice, Capabilities};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    pub read_only: bool,
    /// Open with `O_DIRECT`, bypassing the page cache. Unaligned buffers go
    /// through an aligned bounce buffer.
    pub direct: bool,
    /// Take an `flock` so no other exclusive opener can use the file.
    pub exclusive: bool,
    /// The block size to enforce; `None` picks 512 (4096 with `direct`), or
    /// the device's logical sector size for a block device.
    pub block_size: Option<u32>,
}

pub struct FileDevice {
    file: File,
    name: String,
    size: u64,
    block_size: u32,
    read_only: bool,
    direct: bool,
    is_block_device: bool,
}

/// `_IO(0x12, 104)`: logical sector size of a block device.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `_IO(0x12, 119)`: discard a byte range of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// Alignment of the bounce buffer used for `O_DIRECT`.
const DIRECT_ALIGN: usize = 4096;

impl FileDevice {
    pub fn open(path: &Path, opts: FileOptions) -> Result<FileDevice> {
        let name = path.display().to_string();
        let io_err = |op, source| Error::Io {
            device: name.clone(),
            op,
            offset: 0,
            len: 0,
            source,
        };
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|e| io_err(Op::Connect, e))?;
        if opts.exclusive {
            let how = if opts.read_only {
                libc::LOCK_SH
            } else {
                libc::LOCK_EX
            };
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                let detail = if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    "already exported by another process (the file is locked); refusing to share it"
                        .to_string()
                } else {
                    format!("cannot lock: {e}")
                };
                return Err(Error::Busy {
                    device: name,
                    detail,
                });
            }
        }
        let meta = file.metadata().map_err(|e| io_err(Op::Connect, e))?;
        let is_block_device = meta.file_type().is_block_device();
        let (raw_size, native_bs) = if is_block_device {
            let size = {
                use std::io::{Seek, SeekFrom};
                (&file)
                    .seek(SeekFrom::End(0))
                    .map_err(|e| io_err(Op::Connect, e))?
            };
            let mut ssz: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET as _, &mut ssz) };
            let bs = if rc == 0 && ssz > 0 { ssz as u32 } else { 512 };
            (size, bs)
        } else if meta.is_file() {
            (meta.len(), if opts.direct { 4096 } else { 512 })
        } else {
            return Err(Error::Busy {
                device: name,
                detail: "not a regular file or block device".into(),
            });
        };
        let block_size = opts.block_size.unwrap_or(native_bs);
        if !block_size.is_power_of_two() || block_size < native_bs || block_size > 65536 {
            return Err(Error::InvalidUri {
                spec: name,
                detail: format!(
                    "block size {block_size} must be a power of two between {native_bs} and 65536"
                ),
            });
        }
        let size = raw_size - raw_size % u64::from(block_size);
        if size != raw_size {
            tracing::warn!(
                device = %name,
                raw_size,
                size,
                "device size is not a multiple of the block size; the tail is unused"
            );
        }
        Ok(FileDevice {
            file,
            name,
            size,
            block_size,
            read_only: opts.read_only,
            direct: opts.direct,
            is_block_device,
        })
    }

    fn io_error(&self, op: Op, offset: u64, len: u64, source: std::io::Error) -> Error {
        Error::Io {
            device: self.name.clone(),
            op,
            offset,
            len,
            source,
        }
    }

    fn needs_bounce(&self, ptr: *const u8) -> bool {
        self.direct && !(ptr as usize).is_multiple_of(DIRECT_ALIGN)
    }

    fn pwrite_all(&self, offset: u64, buf: &[u8], dsync: bool) -> std::io::Result<()> {
        if !dsync {
            return self.file.write_all_at(buf, offset);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let iov = libc::iovec {
                iov_base: buf[done..].as_ptr() as *mut libc::c_void,
                iov_len: buf.len() - done,
            };
            // SAFETY: one iovec over a live slice; the kernel only reads it.
            let n = unsafe {
                libc::pwritev2(
                    self.file.as_raw_fd(),
                    &iov,
                    1,
                    (offset + done as u64) as libc::off_t,
                    libc::RWF_DSYNC,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn write_impl(&self, offset: u64, buf: &[u8], dsync: bool) -> Result<()> {
        check_range(self, Op::Write, offset, buf.len() as u64)?;
        if self.read_only {
            return Err(Error::ReadOnly {
                device: self.name.clone(),
                op: Op::Write,
            });
        }
        let res = if self.needs_bounce(buf.as_ptr()) {
            let mut bounce = AlignedBuf::new(buf.len());
            bounce.as_mut().copy_from_slice(buf);
            self.pwrite_all(offset, bounce.as_ref(), dsync)
        } else {
            self.pwrite_all(offset, buf, dsync)
        };
        res.map_err(|e| self.io_error(Op::Write, offset, buf.len() as u64, e))
    }
}

impl BlockDevice for FileDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
            fua: true,
            trim: !self.read_only,
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self, Op::Read, offset, buf.len() as u64)?;
        let len = buf.len() as u64;
        // read_exact_at turns a short read (the file shrank under us) into
        // UnexpectedEof: an error, never a zero-filled tail.
        let res = if self.needs_bounce(buf.as_ptr()) {
            let mut bounce = AlignedBuf::new(buf.len());
            let r = self.file.read_exact_at(bounce.as_mut(), offset);
            if r.is_ok() {
                buf.copy_from_slice(bounce.as_ref());
            }
            r
        } else {
            self.file.read_exact_at(buf, offset)
        };
        res.map_err(|e| self.io_error(Op::Read, offset, len, e))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_impl(offset, buf, false)
    }

    fn write_fua_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_impl(offset, buf, true)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.io_error(Op::Flush, 0, 0, e))
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self, Op::Trim, offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly {
                device: self.name.clone(),
                op: Op::Trim,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let rc = if self.is_block_device {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKDISCARD reads two u64 through the pointer.
            unsafe { libc::ioctl(fd, BLKDISCARD as _, range.as_ptr()) }
        } else {
            // SAFETY: plain syscall on a descriptor we own.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            }
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Err(Error::Unsupported {
                device: self.name.clone(),
                op: Op::Trim,
            });
        }
        Err(self.io_error(Op::Trim, offset, len, e))
    }
}

/// A heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN)
            .expect("O_DIRECT buffer layout: size fits isize");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len, layout }
    }
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in new().
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn read_write_roundtrip_and_bounds() {
        let img = image(1 << 20);
        let dev = FileDevice::open(img.path(), FileOptions::default()).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        let data = vec![0xabu8; 8192];
        dev.write_at(4096, &data).unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; 8192];
        dev.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(matches!(
            dev.read_at(100, &mut back),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            dev.write_at((1 << 20) - 4096, &data),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.read_at(u64::MAX - 511, &mut back[..512]),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn fua_trim_and_direct_io() {
        let img = image(1 << 20);
        let dev = FileDevice::open(
            img.path(),
            FileOptions {
                direct: true,
                ..FileOptions::default()
            },
        );
        // tmpfs has no O_DIRECT; fall back to buffered for this test there.
        let dev = match dev {
            Ok(d) => d,
            Err(_) => FileDevice::open(img.path(), FileOptions::default()).unwrap(),
        };
        // Deliberately unaligned buffer: exercises the bounce path.
        let mut raw = vec![7u8; 4096 + 1];
        dev.write_fua_at(0, &raw[1..]).unwrap();
        let mut back = vec![0u8; 4097];
        dev.read_at(0, &mut back[1..]).unwrap();
        assert_eq!(&back[1..], &raw[1..]);
        match dev.trim(0, 4096) {
            Ok(()) | Err(Error::Unsupported { .. }) => {}
            Err(e) => panic!("trim failed: {e}"),
        }
        dev.read_at(0, &mut back[1..]).unwrap();
        assert!(back[1..].iter().all(|&b| b == 0 || b == 7));
        raw[0] = 0;
    }

    #[test]
    fn exclusive_lock_refuses_a_second_exporter() {
        let img = image(1 << 16);
        let opts = FileOptions {
            exclusive: true,
            ..FileOptions::default()
        };
        let _first = FileDevice::open(img.path(), opts.clone()).unwrap();
        let err = FileDevice::open(img.path(), opts)
            .err()
            .expect("second open succeeded");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        assert!(err.to_string().contains("already exported"), "{err}");
    }

    #[test]
    fn read_only_refuses_writes() {
        let img = image(1 << 16);
        let dev = FileDevice::open(
            img.path(),
            FileOptions {
                read_only: true,
                ..FileOptions::default()
            },
        )
        .unwrap();
        assert!(matches!(
            dev.write_at(0, &[0u8; 512]),
            Err(Error::ReadOnly { .. })
        ));
    }
}
