//! rdlm — the distributed lock manager of rdlmfs.
//!
//! Built so far: the lock semantics a resource's master applies, as a pure
//! state machine — [`mode`] (the six VMS modes and their compatibility) and
//! [`resource`] (grant, convert and wait queues, conversions, flags, LVB
//! rules, blocking callbacks, fencing sequence numbers, purging a node's
//! locks). Not built yet: lockspaces with a resource directory and
//! mastery, deadlock detection across nodes, the QUIC transport,
//! membership and recovery, and the `rdlm` command. The crate knows nothing
//! of disks or file systems.

pub mod mode;
pub mod resource;

pub use mode::Mode;
pub use resource::{Event, Flags, LockError, LockId, NodeId, Resource};
