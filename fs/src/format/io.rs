//! The one part of the format that touches a device: reading the
//! superblock, and reading or writing whole metadata blocks by address.
//!
//! Owns: turning a block address into a byte range and a device error or a
//! format error into one [`IoError`] that names both. May not touch: caching,
//! ordering, durability decisions (callers flush), or any locking.

use super::block::{decode_block, encode_to_vec, MetaBlock};
use super::superblock::Superblock;
use super::{FormatError, Geometry, MIN_BLOCK_SIZE, SB_OFFSET};
use blockdev::BlockDevice;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Device(#[from] blockdev::Error),
    #[error("{device}: {source}")]
    Format {
        device: String,
        #[source]
        source: FormatError,
    },
    #[error("{device}: {detail}")]
    Geometry { device: String, detail: String },
}

impl IoError {
    /// The format error, if this is one.
    pub fn format_error(&self) -> Option<&FormatError> {
        match self {
            IoError::Format { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn fmt_err(dev: &dyn BlockDevice, e: FormatError) -> IoError {
    IoError::Format {
        device: dev.name().to_string(),
        source: e,
    }
}

/// Byte offset of block `blkno`, or an error if it overflows or lies
/// outside the device.
fn offset_of(dev: &dyn BlockDevice, bs: u32, blkno: u64) -> Result<u64, IoError> {
    let off = blkno.checked_mul(u64::from(bs));
    match off {
        Some(o)
            if o.checked_add(u64::from(bs))
                .is_some_and(|end| end <= dev.size()) =>
        {
            Ok(o)
        }
        _ => Err(IoError::Geometry {
            device: dev.name().to_string(),
            detail: format!(
                "block {blkno} of {bs} bytes lies outside the {}-byte device",
                dev.size()
            ),
        }),
    }
}

/// Checks that the device can do I/O in units of `bs`.
pub fn check_block_size(dev: &dyn BlockDevice, bs: u32) -> Result<(), IoError> {
    let dbs = dev.block_size();
    if dbs == 0 || bs < dbs || !bs.is_multiple_of(dbs) {
        return Err(IoError::Geometry {
            device: dev.name().to_string(),
            detail: format!(
                "file system block size {bs} is not a multiple of the device's {dbs}-byte block size"
            ),
        });
    }
    Ok(())
}

/// Reads and fully checks the superblock.
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<Superblock, IoError> {
    let probe_len = u64::from(dev.block_size().max(MIN_BLOCK_SIZE));
    if dev.size() < SB_OFFSET + probe_len {
        return Err(IoError::Geometry {
            device: dev.name().to_string(),
            detail: format!(
                "the device is {} bytes, too small to hold a superblock at byte {SB_OFFSET}",
                dev.size()
            ),
        });
    }
    let mut first = vec![0u8; probe_len as usize];
    dev.read_at(SB_OFFSET, &mut first)?;
    let bs = Superblock::probe(&first).map_err(|e| fmt_err(dev, e))?;
    check_block_size(dev, bs)?;
    let mut buf = vec![0u8; bs as usize];
    dev.read_at(offset_of(dev, bs, SB_OFFSET / u64::from(bs))?, &mut buf)?;
    Superblock::decode(&buf).map_err(|e| fmt_err(dev, e))
}

/// Reads block `blkno` into `buf` (one block).
pub fn read_block(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    blkno: u64,
    buf: &mut [u8],
) -> Result<(), IoError> {
    debug_assert_eq!(buf.len(), geo.bs());
    dev.read_at(offset_of(dev, geo.block_size, blkno)?, buf)?;
    Ok(())
}

/// Reads and decodes block `blkno` as a `T`.
pub fn read_meta<T: MetaBlock>(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    blkno: u64,
) -> Result<T, IoError> {
    let mut buf = vec![0u8; geo.bs()];
    read_block(dev, geo, blkno, &mut buf)?;
    decode_block(geo, blkno, &buf).map_err(|e| fmt_err(dev, e))
}

/// Encodes `v` and writes it as block `blkno` (not flushed).
pub fn write_meta<T: MetaBlock>(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    blkno: u64,
    v: &T,
) -> Result<(), IoError> {
    let buf = encode_to_vec(v, geo, blkno).map_err(|e| fmt_err(dev, e))?;
    dev.write_at(offset_of(dev, geo.block_size, blkno)?, &buf)?;
    Ok(())
}
