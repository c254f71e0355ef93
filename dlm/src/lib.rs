//! rdlm — the distributed lock manager of rdlmfs.
//!
//! Built so far, all as deterministic state machines with no I/O:
//! - [`mode`]: the six VMS modes and their compatibility;
//! - [`resource`]: what a master does with requests — grant, convert and
//!   wait queues, conversions, flags, LVB rules, blocking callbacks, fencing
//!   sequence numbers, purging a node's locks;
//! - [`lockspace`]: one node's part of a lockspace — its locks, the
//!   resources it masters, the directory entries that hash to it, master
//!   lookup and routing;
//! - [`wire`]: the versioned, length-checked messages between nodes.
//! - [`midcomms`]: per-peer reliable, ordered, exactly-once delivery across
//!   reconnects and restarts (sequence numbers, cumulative acks,
//!   incarnations), also without I/O;
//! - [`config`]: the cluster file (nodes, addresses, TLS paths, timing);
//! - [`tls`]: the cluster CA, node certificates, mutual-TLS configurations;
//! - [`transport`]: the tokio/quinn driver — one QUIC connection per peer
//!   carrying midcomms frames (does I/O);
//! - `src/bin/rdlm.rs`: the `rdlm` command — CA, node keys, cluster files.
//!
//! Not built yet: membership changes and recovery, deadlock detection across
//! nodes, the QUIC transport and driver, and the `rdlm` command. The crate
//! knows nothing of disks or file systems.

pub mod config;
pub mod lockspace;
pub mod midcomms;
pub mod mode;
pub mod resource;
pub mod tls;
pub mod transport;
pub mod wire;

pub use lockspace::{Callback, Lockspace, Output};
pub use mode::Mode;
pub use resource::{Event, Flags, LockError, LockId, NodeId, Resource};
