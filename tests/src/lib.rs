//! The stress testers users run against a cluster, and (later) the
//! multi-process cluster harness of rdlmfs.
//!
//! - [`fsx`]: `rdlmfs-fsx`, random data operations on one file checked
//!   against a shadow copy, through one or several paths (nodes).
//! - [`stress`]: `rdlmfs-stress`, concurrent metadata operations through
//!   several paths checked by comparing the trees each path shows, and the
//!   fcntl lock ping-pong.
//! - [`mount`]: mounting and reliably unmounting FUSE file systems in tests
//!   (used with `rdlmfs-testfs`, the deliberately breakable passthrough that
//!   proves the checkers can fail).
//!
//! The shared-disk tests of the `blockdev` crate live beside that crate.

pub mod cluster;
pub mod fsx;
pub mod mount;
pub mod stress;
