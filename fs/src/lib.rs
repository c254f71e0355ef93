//! rdlmfs — the file system.
//!
//! This crate owns the on-disk format ([`format`]) and will own the journal,
//! glocks on the DLM, the block and inode caches and the FUSE adapter. It
//! reaches the shared disk only through `blockdev::BlockDevice` and other
//! nodes only through `rdlm`. Today only the on-disk format is built; the
//! tools in `rdlmfs-mkfs` (mkfs.rdlmfs, later fsck.rdlmfs) use its types.

pub mod format;
