//! rdlm — the distributed lock manager of rdlmfs.
//!
//! The protocol core, as deterministic state machines with no I/O
//! (messages and time in; messages, callbacks and events out):
//! - [`mode`]: the six VMS modes and their compatibility;
//! - [`resource`]: what a master does with requests — grant, convert and
//!   wait queues, conversions, flags, LVB rules, blocking callbacks, fencing
//!   sequence numbers, purging a node's locks, recovery holds;
//! - [`lockspace`]: one node's part of a lockspace — its locks, the
//!   resources it masters, the directory entries that hash to it, master
//!   lookup and routing, owner-side timeouts; `recover.rs` holds what it
//!   does when its members change (directory rebuild, remastering, LVB
//!   recovery, holds until the user's own recovery is done); `toss.rs`
//!   frees resources nobody uses (toss list, `Remove`, the lookup/remove
//!   race);
//! - [`member`]: heartbeats, leases, proposals and commits of views (with
//!   the lockspaces each member is in), slots;
//! - [`node`]: membership and the lockspaces joined (join, leave, events
//!   per lockspace), what a driver runs;
//! - [`wire`]: the versioned, length-checked messages between nodes;
//! - [`midcomms`]: per-peer reliable, ordered, exactly-once delivery across
//!   reconnects and restarts (sequence numbers, cumulative acks,
//!   incarnations).
//!
//! The drivers, which do I/O:
//! - [`config`]: the cluster file (nodes, addresses, TLS paths, timing);
//! - [`tls`]: the cluster CA, node certificates, mutual-TLS configurations;
//! - [`transport`]: the tokio/quinn driver — one QUIC connection per peer
//!   carrying midcomms frames; [`outbox`]: messages held, in order, while
//!   a peer's backlog is full;
//! - [`daemon`]: `rdlm node`, the async driver of a [`Node`] with a local
//!   client socket; [`client`]: that socket's protocol and a blocking
//!   client;
//! - [`api`]: the in-process node for a program that is a cluster member
//!   (the file system): an async handle, a blocking wrapper for worker
//!   threads, and events modelled on lock_dlm's recover_prep / recover_slot
//!   / recover_done;
//! - `src/bin/rdlm.rs`: the `rdlm` command.
//!
//! The crate knows nothing of disks or file systems.

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
mod deadlock;
pub mod lockspace;
pub mod member;
pub mod midcomms;
pub mod mode;
pub mod node;
pub mod outbox;
mod recover;
pub mod resource;
pub mod tls;
mod toss;
pub mod transport;
pub mod wire;

pub use lockspace::{Callback, Lockspace, LsEvent, Output};
pub use member::{MemberConfig, MemberEvent, Timing, View};
pub use mode::Mode;
pub use node::Node;
pub use node::{lockspace_id, LsOptions, DEFAULT_LOCKSPACE};
pub use resource::{Event, Flags, LockError, LockId, NodeId, Resource};
pub use toss::MAX_TOSS;
