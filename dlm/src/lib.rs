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
//!
//! Not built yet: membership changes and recovery, deadlock detection across
//! nodes, the QUIC transport and driver, and the `rdlm` command. The crate
//! knows nothing of disks or file systems.

pub mod lockspace;
pub mod member;
pub mod mode;
pub mod node;
mod recover;
pub mod resource;
pub mod wire;

pub use lockspace::{Callback, Lockspace, Output};
pub use member::{MemberConfig, MemberEvent, Timing, View};
pub use node::Node;
pub use mode::Mode;
pub use resource::{Event, Flags, LockError, LockId, NodeId, Resource};
