//! iopen glocks: who may free an unlinked inode in a cluster (GFS2's
//! iopen glock, used the same way).
//!
//! Owns: the rule that every node with an inode open holds its iopen
//! glock Shared (pinned, given up at its last close), and that an inode
//! whose last link is gone is freed only by a node that gets the iopen
//! glock Exclusive — proof that no node has it open. May not touch: how an
//! inode is freed (`inode.rs`, [`Fs::free_doomed`]) or the open counts'
//! meaning on this node (`ops.rs`).
//!
//! The node that removes the last link tries for Exclusive at once. If
//! another node has the file open, that fails; the inode stays on this
//! node's unlinked list and a *delete waiter* (a thread of the FUSE
//! adapter) queues an Exclusive request, granted when the last other
//! node closes, and then frees it. A node that dies with such inodes on
//! its list leaves them to the next mount of its journal, which tries
//! again the same way.

use crate::error::Result;
use crate::glock::{GlockMode, GlockName};
use crate::mount::Fs;

impl Fs {
    /// The first open of `ino` on this node: hold its iopen glock Shared
    /// until the last close. Must come before the open is counted (it may
    /// make the operation wait and run again).
    pub(crate) fn iopen_on_first_open(&mut self, ino: u64) -> Result<()> {
        if !self.glocks.is_clustered() || self.opens.contains_key(&ino) {
            return Ok(());
        }
        let name = GlockName::iopen(ino);
        self.glocks.hold(name, GlockMode::Shared)?;
        self.glocks.pin(name);
        Ok(())
    }

    /// The last close of `ino` on this node gives its iopen glock up.
    pub(crate) fn iopen_on_last_close(&mut self, ino: u64) -> Result<()> {
        if !self.glocks.is_clustered() {
            return Ok(());
        }
        self.glocks.release(GlockName::iopen(ino))
    }

    /// Whether this node may free unlinked `ino` now: no node has it open
    /// (the iopen glock Exclusive, without waiting). If another node has
    /// it open, a delete waiter is queued and false returned.
    pub(crate) fn may_free_unlinked(&mut self, ino: u64) -> Result<bool> {
        if !self.glocks.is_clustered() {
            return Ok(true);
        }
        if self
            .glocks
            .try_acquire(GlockName::iopen(ino), GlockMode::Exclusive)?
        {
            return Ok(true);
        }
        tracing::debug!(
            ino,
            "unlinked inode open on another node: freeing it after its last close"
        );
        self.delete_waits.insert(ino);
        Ok(false)
    }

    /// Inodes whose freeing waits for other nodes to close them; the
    /// caller starts a delete waiter for each (see the module doc).
    pub fn take_delete_waits(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.delete_waits).into_iter().collect()
    }

    /// The delete waiter's work, once it holds `ino`'s iopen glock
    /// Exclusive: frees the inode if it is still ours to free and nobody
    /// here opened it meanwhile.
    pub fn free_unlinked_when_closed(&mut self, ino: u64) -> Result<()> {
        if self.unlinked.contains(&ino) && !self.opens.contains_key(&ino) {
            self.glocks
                .hold(GlockName::iopen(ino), GlockMode::Exclusive)?;
            self.doomed.insert(ino);
            self.check_writable()?;
            self.free_doomed()
        } else {
            self.glocks.release(GlockName::iopen(ino))
        }
    }
}
