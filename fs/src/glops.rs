//! What giving a glock up means for each kind of glock (GFS2's glops):
//! what must reach the disk first (`go_sync`) and which of this node's
//! caches stop being trustworthy (`go_inval`).
//!
//! Owns: those two rules per [`GlockKind`], and which LVB a holder leaves
//! (`go_lvb`; the layouts are `lvb.rs`'s). May not touch: the order of the
//! demote (that is `demote.rs`), the kernel's caches (the FUSE adapter
//! invalidates them), or the lock module.
//!
//! Replay safety — the rule GFS2 and OCFS2 both follow in their own way:
//! before this node gives up an Exclusive glock, every block it journaled
//! under it is written in place *and* the on-disk log tail has moved past
//! it. Otherwise, if this node died later, a survivor replaying its
//! journal would put back an old copy over what the next holder wrote. We
//! commit, checkpoint everything and write a log header whose tail is the
//! head: simple and always correct, at the price of checkpointing blocks of
//! other glocks too (GFS2 flushes only the glock's own AIL list).

use crate::error::Result;
use crate::glock::{GlockKind, GlockMode, GlockName};
use crate::mount::Fs;

impl Fs {
    /// Makes everything changed under `name` durable and in place, with
    /// the log tail past it (see the module doc). `held` is the mode this
    /// node holds: a Shared holder changed nothing.
    pub fn go_sync(&mut self, name: GlockName, held: GlockMode) -> Result<()> {
        if held != GlockMode::Exclusive || self.is_read_only() {
            return Ok(());
        }
        match name.kind {
            GlockKind::Inode | GlockKind::Rgrp | GlockKind::Rename | GlockKind::Iopen => {
                self.commit()?;
                self.checkpoint_and_mark_tail()
            }
            GlockKind::Control | GlockKind::Journal => Ok(()),
        }
    }

    /// The LVB this node leaves in `name` when it lets go of it in `held`
    /// (after [`Fs::go_sync`]): an Exclusive holder of an inode or rgrp
    /// glock describes what it covers (`lvb.rs`); None (an empty LVB, or
    /// none written) otherwise.
    pub fn go_lvb(&mut self, name: GlockName, held: GlockMode) -> Option<Vec<u8>> {
        match (name.kind, held) {
            (GlockKind::Inode, GlockMode::Exclusive) => self.inode_lvb(name.number),
            (GlockKind::Rgrp, GlockMode::Exclusive) => {
                self.rgrps.lvb(&mut self.cache, &*self.dev, name.number)
            }
            _ => None,
        }
    }

    /// Drops this node's copies of what `name` covers: they may change
    /// once another node holds it Exclusive.
    pub fn go_inval(&mut self, name: GlockName) {
        match name.kind {
            GlockKind::Inode => {
                // Kept aside for the next grant (`lvb.rs`); the demote
                // still holds the glock, so the buffer cache's copy is
                // current if the inode cache had none.
                let kept = self.inodes.remove(&name.number).or_else(|| {
                    self.cache
                        .read_meta::<crate::format::Dinode>(&*self.dev, name.number)
                        .ok()
                });
                if let Some(di) = kept.filter(|d| d.nlink > 0) {
                    self.keep_released(name.number, di);
                }
                // The inode's own blocks (their headers name it); other
                // inodes' blocks stay cached under their own glocks.
                self.cache.invalidate_inode(name.number);
            }
            GlockKind::Rgrp => {
                self.rgrps.forget_rgrp(name.number);
                match self.rgrps.header_blocks(name.number) {
                    Some(r) => self.cache.invalidate_range(r),
                    None => self.cache.invalidate_clean(),
                }
            }
            _ => {}
        }
    }
}
