//! rdlmfs — the file system (not built yet).
//!
//! This crate will own the on-disk format, the journal, glocks on the DLM,
//! the block and inode caches and the FUSE adapter. It reaches the shared
//! disk only through `blockdev::BlockDevice` and other nodes only through
//! `rdlm`. Until that issue lands it exports nothing.
