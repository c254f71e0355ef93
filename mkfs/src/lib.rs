//! mkfs.rdlmfs as a library: formatting a device, recognising file systems
//! already on it, and a read-only structural check of an image.
//!
//! Owns: what mkfs writes and in which order ([`format()`]), the signature
//! probe ([`signature::detect`]), and the checker ([`verify::verify`]) that
//! tests use to decode a whole image, and fsck ([`fsck::check`]), which
//! reports every problem instead of the first and repairs what it can.
//! May not touch: the byte layout of anything (that is `rdlmfs::format`'s;
//! this crate only fills in its types) or a mounted file system.
//!
//! The binaries `mkfs.rdlmfs` (`src/bin/mkfs.rs`) and `fsck.rdlmfs`
//! (`src/bin/fsck.rs`) are thin command lines over these functions.

pub mod fsck;
pub mod signature;
pub mod tree;
pub mod verify;
mod writer;

pub use writer::{format, FormatParams, FormatReport, Progress};

use rdlmfs::format::io::IoError;
use rdlmfs::format::{FormatError, LayoutError};

/// Why formatting failed. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    #[error("{device}: {source}")]
    Layout {
        device: String,
        #[source]
        source: LayoutError,
    },
    #[error(transparent)]
    Device(#[from] blockdev::Error),
    #[error(transparent)]
    Io(#[from] IoError),
    /// A structure mkfs built did not encode: a bug in mkfs, reported rather
    /// than written.
    #[error("{device}: internal error: {what} does not encode: {source}")]
    Encode {
        device: String,
        what: String,
        #[source]
        source: FormatError,
    },
    #[error("{device}: {detail}")]
    Geometry { device: String, detail: String },
}
