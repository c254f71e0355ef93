//! rdlm — the distributed lock manager of rdlmfs (not built yet).
//!
//! This crate will own lockspaces, resources and locks in the six VMS modes,
//! mastery through a resource directory, deadlock detection, membership and
//! recovery, as a sans-I/O core driven by a tokio/quinn transport. It knows
//! nothing of disks or file systems. Until that issue lands it exports
//! nothing, so nothing can depend on a lock manager that does not exist.
