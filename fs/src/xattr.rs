//! Extended attributes: the chain of xattr blocks hanging off a dinode.
//!
//! Owns: reading an inode's attributes, and rewriting the chain after a
//! set or remove (packing entries into as few blocks as fit, reusing the
//! existing blocks first, freeing the rest). May not touch: which names a
//! caller may read or write (namespaces and permissions are `ops.rs`'s),
//! or what ACL values mean (`acl.rs`).

use crate::error::{FsError, Result};
use crate::format::rgrp::BlockState;
use crate::format::xattr::max_value_len;
use crate::format::{XattrBlock, XattrEntry};
use crate::mount::Fs;

/// setxattr flags.
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

impl Fs {
    /// Every attribute of `ino` with the blocks holding them.
    fn xattr_chain(&mut self, ino: u64) -> Result<(Vec<u64>, Vec<XattrEntry>)> {
        let di = self.dinode(ino)?;
        let mut addr = di.xattr;
        let mut blocks = Vec::new();
        let mut entries = Vec::new();
        while addr != 0 {
            if blocks.len() > 1 << 16 || blocks.contains(&addr) {
                return Err(self.corrupt(format!("inode {ino}: xattr chain loops")));
            }
            let b: XattrBlock = self.cache.read_meta(&*self.dev, addr)?;
            if b.owner != ino {
                return Err(self.corrupt(format!(
                    "xattr block {addr} belongs to inode {}, reached from inode {ino}",
                    b.owner
                )));
            }
            blocks.push(addr);
            entries.extend(b.entries);
            addr = b.next;
        }
        Ok((blocks, entries))
    }

    pub(crate) fn xattr_get(&mut self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let (_, entries) = self.xattr_chain(ino)?;
        Ok(entries
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.value))
    }

    pub(crate) fn xattr_names(&mut self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let (_, entries) = self.xattr_chain(ino)?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }

    /// Sets (value Some) or removes (None) attribute `name`, honouring
    /// XATTR_CREATE / XATTR_REPLACE. Writes the dinode (ctime is the
    /// caller's).
    pub(crate) fn xattr_set(
        &mut self,
        ino: u64,
        name: &[u8],
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<()> {
        if name.is_empty() || name.len() > crate::format::MAX_NAME_LEN || name.contains(&0) {
            return Err(FsError::Errno(libc::ERANGE));
        }
        if let Some(v) = value {
            if v.len() > max_value_len(self.geo.block_size) {
                return Err(FsError::Errno(libc::E2BIG));
            }
        }
        let (blocks, mut entries) = self.xattr_chain(ino)?;
        let pos = entries.iter().position(|e| e.name == name);
        match (value, pos) {
            (None, None) => return Err(FsError::Errno(libc::ENODATA)),
            (None, Some(i)) => {
                entries.remove(i);
            }
            (Some(_), Some(_)) if flags & XATTR_CREATE != 0 => {
                return Err(FsError::Errno(libc::EEXIST))
            }
            (Some(_), None) if flags & XATTR_REPLACE != 0 => {
                return Err(FsError::Errno(libc::ENODATA))
            }
            (Some(v), Some(i)) => entries[i].value = v.to_vec(),
            (Some(v), None) => entries.push(XattrEntry {
                name: name.to_vec(),
                value: v.to_vec(),
            }),
        }
        // Pack greedily into blocks.
        let bs = self.geo.block_size;
        let mut packs: Vec<Vec<XattrEntry>> = Vec::new();
        for e in entries {
            match packs.last_mut() {
                Some(p)
                    if XattrBlock::fits(bs, &[p.as_slice(), std::slice::from_ref(&e)].concat()) =>
                {
                    p.push(e)
                }
                _ => packs.push(vec![e]),
            }
        }
        let mut di = self.dinode(ino)?;
        let mut addrs = blocks.clone();
        while addrs.len() < packs.len() {
            let (a, _, _) =
                self.rgrps
                    .alloc(&mut self.cache, &*self.dev, BlockState::Data, Some(ino), 1)?;
            di.blocks += 1;
            addrs.push(a);
        }
        let spare: Vec<u64> = addrs.split_off(packs.len());
        if !spare.is_empty() {
            di.blocks = di.blocks.saturating_sub(spare.len() as u64).max(1);
            self.rgrps.free(&mut self.cache, &*self.dev, spare)?;
        }
        for (k, p) in packs.into_iter().enumerate() {
            let next = addrs.get(k + 1).copied().unwrap_or(0);
            self.cache.write_meta(
                addrs[k],
                &XattrBlock {
                    owner: ino,
                    next,
                    entries: p,
                },
            )?;
        }
        di.xattr = addrs.first().copied().unwrap_or(0);
        self.put_dinode(ino, &mut di)
    }
}
