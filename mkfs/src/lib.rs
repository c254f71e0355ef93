//! mkfs.rdlmfs and fsck.rdlmfs (not built yet).
//!
//! This crate will format and check devices using the format types of the
//! `rdlmfs` crate. Until that issue lands it exports nothing.
