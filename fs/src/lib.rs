//! rdlmfs: the file system.
//!
//! - [`format`]: the on-disk format (byte layout, checksums, versions);
//! - [`buf`]: metadata block cache and the running transaction;
//! - [`log`]: the journal writer; [`recovery`]: finding a journal's head
//!   and replaying it;
//! - [`rgrp`]: the block allocator; [`bmap`]: pointer trees;
//!   [`inode`]: inodes and file contents; [`dir`]: directories;
//!   [`xattr`]: extended attributes; [`acl`]: POSIX ACLs and permission
//!   checks;
//! - [`glock`]: the lock interface every lock goes through and the table of
//!   cached glocks; [`lock_dlm`]: glocks as DLM locks; [`glops`]: what a
//!   demote writes back and invalidates per kind of glock; [`demote`]: the
//!   demote worker;
//! - [`mount`]: the mounted file system, commit policy, unmount;
//! - [`ops`]: the POSIX operations (what FUSE calls);
//! - [`fuse`]: the FUSE adapter; [`cluster`]: joining the cluster for a
//!   `lock_dlm` mount; [`fence`]: keeping a dead or cut-off node off the
//!   disk; [`failover`]: recovering a dead node's journal while mounted;
//!   [`plock`]: fcntl record locks and flock(2) across the cluster;
//!   [`iopen`]: who may free an unlinked inode in a cluster; [`lvb`]: the
//!   lock value blocks of inode and rgrp glocks; [`prefetch`]: asking for
//!   the glocks of listed entries once lookups follow a listing;
//! - [`process`]: termination signals and the kernel's mount tables, for
//!   the mount process and `cluster up`;
//! - [`status`]: `rdlmfs status`, a mount's report over its socket;
//! - [`up`]: `rdlmfs cluster up`, a whole cluster on one machine.

pub mod acl;
pub mod bmap;
pub mod buf;
pub mod cluster;
pub mod dcache;
pub mod demote;
pub mod dir;
pub mod error;
pub mod failover;
pub mod fence;
pub mod format;
pub mod fuse;
pub mod glock;
pub mod glops;
pub mod inode;
pub mod iopen;
pub mod lock_dlm;
pub mod log;
pub mod lvb;
pub mod mount;
pub mod ops;
pub mod plock;
pub mod prefetch;
pub mod process;
pub mod recovery;
pub mod rgrp;
pub mod status;
pub mod up;
pub mod xattr;

pub use error::{FsError, Result};
pub use mount::{AtimeMode, Fs, MountOptions};
