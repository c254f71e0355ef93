//! The POSIX operations: what a FUSE request (or a test) asks of a mounted
//! file system, with POSIX's rules — permissions, errno cases, which
//! timestamps change, setuid/setgid clearing, sticky directories, link
//! counts, unlinked-but-open files.
//!
//! Owns: those rules. May not touch: block layout (everything goes through
//! `inode.rs`, `dir.rs`, `xattr.rs`, `bmap.rs`) or FUSE types (`fuse.rs`
//! translates). Every changing operation begins with
//! [`Fs::begin_change`], takes the inode glocks it needs in lock order, and
//! ends in [`Fs::end_change`], which commits when the transaction is large
//! or old and withdraws the file system if a fatal error left the
//! transaction half-built.

use crate::acl::{self, Acl, Cred, MAY_EXEC, MAY_READ, MAY_WRITE};
use crate::error::{errno as e, FsError, Result};
use crate::format::dinode::MAX_SYMLINK_LEN;
use crate::format::dir::valid_name;
use crate::format::rgrp::BlockState;
use crate::format::{
    formal_addr, formal_ino, formal_matches, Dinode, DinodeContent, DinodeFlags, FileType,
    Timestamp, MAX_NAME_LEN,
};
use crate::glock::{GlockMode, GlockName};
use crate::inode::now;
use crate::mount::{AtimeMode, Fs};
use crate::xattr::{XATTR_CREATE, XATTR_REPLACE};

/// What `stat` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// In 512-byte units.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub kind: FileType,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub generation: u64,
}

/// A time to set: now, or a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// setattr's request; None = leave unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// Through an open file handle (truncate needs no write permission).
    pub via_handle: bool,
}

/// rename(2) flags.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// fallocate(2) modes.
pub const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
pub const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return e(libc::ENAMETOOLONG);
    }
    if !valid_name(name) || name == b"." || name == b".." {
        return e(libc::EINVAL);
    }
    Ok(())
}

impl Fs {
    pub fn root(&self) -> u64 {
        self.sb.root_dir
    }

    /// Runs a changing operation: refuses on a read-only or withdrawn
    /// mount, withdraws on a fatal error, commits when due. A
    /// [`FsError::GlockWait`] goes back to the caller untouched (it undoes
    /// the operation and runs it again). With one node, inodes the
    /// operation doomed are freed here; in a cluster the caller frees them
    /// ([`Fs::free_doomed`]) once the operation is done.
    fn change<T>(&mut self, f: impl FnOnce(&mut Fs) -> Result<T>) -> Result<T> {
        self.begin_change()?;
        let r = f(self);
        match &r {
            Err(FsError::GlockWait { .. }) => return r,
            Err(err) if err.is_fatal() => self.withdraw(err),
            _ => {
                if let Err(err) = self.end_change() {
                    self.withdraw(&err);
                    return Err(err);
                }
            }
        }
        if r.is_ok() && !self.glocks.is_clustered() {
            self.free_doomed()?;
        }
        r
    }

    pub(crate) fn end_change(&mut self) -> Result<()> {
        self.maybe_commit()
    }

    fn ex(&mut self, inos: &[u64]) -> Result<()> {
        let mut names: Vec<(GlockName, GlockMode)> = inos
            .iter()
            .map(|i| (GlockName::inode(*i), GlockMode::Exclusive))
            .collect();
        self.glocks.hold_all(&mut names)
    }

    /// A user-visible inode (system files are hidden).
    fn user_dinode(&mut self, ino: u64) -> Result<Dinode> {
        if !self.geo.is_valid_addr(ino) {
            return e(libc::ENOENT);
        }
        if self.glocks.is_clustered() {
            // Checking the bitmap would take the rgrp glock from whoever
            // allocates there. The inode glock covers the dinode: a block
            // that is no dinode any more (freed and reused), or one nobody
            // links or opens (freed: its last contents are written with
            // link count 0, see Rgrps::take_dead_dinodes), is a file
            // another node deleted — gone, as a path lookup would find it.
            // What this node itself freed (the on-disk copy shows link
            // count 0 only once that commits) it knows from its own
            // bitmaps: a request racing the unlink here must not revive it.
            if let Some(st) = self.rgrps.known_state(ino) {
                if !matches!(st, BlockState::Dinode | BlockState::Unlinked) {
                    self.forget_dead_dinode(ino);
                    return e(libc::ENOENT);
                }
            }
            let di = match self.dinode(ino) {
                Err(FsError::Io(crate::format::io::IoError::Format { .. })) => {
                    self.forget_dead_dinode(ino);
                    return e(libc::ENOENT);
                }
                r => r?,
            };
            if di.nlink == 0 && !self.opens.contains_key(&ino) {
                self.forget_dead_dinode(ino);
                return e(libc::ENOENT);
            }
            if Fs::is_system(&di) {
                return e(libc::ENOENT);
            }
            return Ok(di);
        }
        match self.rgrps.state(&mut self.cache, &*self.dev, ino)? {
            Some(BlockState::Dinode) | Some(BlockState::Unlinked) => {}
            _ => return e(libc::ENOENT),
        }
        let di = self.dinode(ino)?;
        if Fs::is_system(&di) {
            return e(libc::ENOENT);
        }
        Ok(di)
    }

    /// Drops every copy of a deleted inode's dinode this node has. Its
    /// block is free: another node may reuse it (as a data or xattr block
    /// of another inode) under the rgrp's glock alone, without ever asking
    /// for this inode's glock — which this node may keep cached after a
    /// stale lookup read the dead dinode. A copy left in the buffer cache
    /// would then be read in place of the block's new contents.
    fn forget_dead_dinode(&mut self, ino: u64) {
        self.inodes.remove(&ino);
        self.released_inodes.remove(&ino);
        self.cache.invalidate(ino);
    }

    pub fn attr_of(&self, ino: u64, di: &Dinode) -> Attr {
        let rdev = di.rdev;
        Attr {
            ino,
            size: di.size,
            blocks: di.blocks * u64::from(self.geo.block_size) / 512,
            atime: di.atime,
            mtime: di.mtime,
            ctime: di.ctime,
            kind: di.file_type().unwrap_or(FileType::Regular),
            perm: (di.mode & 0o7777) as u16,
            nlink: di.nlink,
            uid: di.uid,
            gid: di.gid,
            rdev: rdev as u32,
            blksize: self.geo.block_size,
            generation: di.generation,
        }
    }

    fn access_acl(&mut self, ino: u64, di: &Dinode) -> Result<Option<Acl>> {
        if di.xattr == 0 {
            return Ok(None);
        }
        match self.xattr_get(ino, acl::ACL_ACCESS)? {
            Some(v) => Ok(Acl::decode(&v).ok()),
            None => Ok(None),
        }
    }

    fn may(&mut self, ino: u64, di: &Dinode, cred: &Cred, want: u32) -> Result<()> {
        let a = self.access_acl(ino, di)?;
        if acl::permitted(di.mode, di.uid, di.gid, a.as_ref(), cred, want) {
            Ok(())
        } else {
            e(libc::EACCES)
        }
    }

    fn dir_for(&mut self, dir: u64, cred: &Cred, want: u32) -> Result<Dinode> {
        let d = self.user_dinode(dir)?;
        if !d.is_dir() {
            return e(libc::ENOTDIR);
        }
        self.may(dir, &d, cred, want)?;
        Ok(d)
    }

    /// Sticky directories: only the owner of the file or the directory
    /// (or root) may remove or rename an entry.
    fn sticky_ok(dir: &Dinode, victim: &Dinode, cred: &Cred) -> bool {
        dir.mode & libc::S_ISVTX == 0
            || cred.is_root()
            || cred.uid == dir.uid
            || cred.uid == victim.uid
    }

    /// Checks that the dinode at `addr` is the inode a directory entry of
    /// `dir` names by formal number `formal` (see
    /// [`crate::format::formal_ino`]). A mismatch means the entry outlived
    /// its inode and the block was reused: the directory is corrupt.
    fn check_entry(&self, dir: u64, formal: u64, addr: u64, di: &Dinode) -> Result<()> {
        if formal_matches(formal, addr, di.generation) {
            return Ok(());
        }
        Err(self.corrupt(format!(
            "directory {dir}: an entry names inode {formal:#x}, but block {addr} holds generation {} ({:#x})",
            di.generation,
            formal_ino(addr, di.generation)
        )))
    }

    /// The dinode address of the inode that formal number `formal` (a
    /// FUSE node id, see [`crate::format::formal_ino`]) names, once checked
    /// that it still lives there: ENOENT if the block holds no inode any
    /// more, ESTALE if it holds another one — the named inode was deleted
    /// (on any node) and its block reused. The kernel retries a path walk
    /// that meets ESTALE with fresh lookups.
    pub fn resolve(&mut self, formal: u64) -> Result<u64> {
        let addr = formal_addr(formal);
        let generation = match self.lvb_getattr(addr)? {
            Some(a) => a.generation,
            None => self.user_dinode(addr)?.generation,
        };
        if !formal_matches(formal, addr, generation) {
            tracing::debug!(formal, addr, generation, "stale inode number");
            return e(libc::ESTALE);
        }
        Ok(addr)
    }

    /// The attributes of `ino` from its glock's LVB, if that can answer
    /// ([`Fs::lvb_attrs`]): a cluster node listing a directory another
    /// node filled reads no dinodes. Anything unusual (not a plain linked
    /// inode as far as this node knows) goes the full way.
    fn lvb_getattr(&mut self, ino: u64) -> Result<Option<Attr>> {
        if !self.glocks.is_clustered() || !self.geo.is_valid_addr(ino) {
            return Ok(None);
        }
        if let Some(st) = self.rgrps.known_state(ino) {
            if st != BlockState::Dinode {
                return Ok(None);
            }
        }
        let Some((generation, a)) = self.lvb_attrs(ino)? else {
            return Ok(None);
        };
        if a.nlink == 0 {
            return Ok(None);
        }
        Ok(Some(Attr {
            ino,
            size: a.size,
            blocks: a.blocks * u64::from(self.geo.block_size) / 512,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            kind: FileType::from_mode(a.mode).unwrap_or(FileType::Regular),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: 0,
            blksize: self.geo.block_size,
            generation,
        }))
    }

    pub fn getattr(&mut self, ino: u64) -> Result<Attr> {
        if let Some(a) = self.lvb_getattr(ino)? {
            return Ok(a);
        }
        let di = self.user_dinode(ino)?;
        Ok(self.attr_of(ino, &di))
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8], cred: &Cred) -> Result<Attr> {
        if name.len() > MAX_NAME_LEN {
            return e(libc::ENAMETOOLONG);
        }
        self.dir_for(parent, cred, MAY_EXEC)?;
        let Some((formal, _)) = self.dir_lookup(parent, name)? else {
            return e(libc::ENOENT);
        };
        let ino = formal_addr(formal);
        if let Some(a) = self.lvb_getattr(ino)? {
            if formal_matches(formal, ino, a.generation) {
                return Ok(a);
            }
            // A mismatch is corruption: the full path reports it.
        }
        let di = self.user_dinode(ino)?;
        self.check_entry(parent, formal, ino, &di)?;
        Ok(self.attr_of(ino, &di))
    }

    pub fn access(&mut self, ino: u64, mask: u32, cred: &Cred) -> Result<()> {
        let di = self.user_dinode(ino)?;
        if mask & MAY_WRITE != 0 && self.opts.read_only {
            return e(libc::EROFS);
        }
        if mask == 0 {
            return Ok(());
        }
        self.may(ino, &di, cred, mask & 7)
    }

    pub fn readlink(&mut self, ino: u64) -> Result<Vec<u8>> {
        let di = self.user_dinode(ino)?;
        if di.file_type() != Some(FileType::Symlink) {
            return e(libc::EINVAL);
        }
        self.read_data(ino, &di, 0, di.size as usize)
    }

    // ---- creation ----

    /// Creates a node of any type: regular, FIFO, socket, device, directory
    /// or symlink (`target`).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u64,
        target: Option<&[u8]>,
        cred: &Cred,
    ) -> Result<Attr> {
        self.change(|fs| fs.mknod_inner(parent, name, mode, umask, rdev, target, cred))
    }

    #[allow(clippy::too_many_arguments)]
    fn mknod_inner(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u64,
        target: Option<&[u8]>,
        cred: &Cred,
    ) -> Result<Attr> {
        check_name(name)?;
        let Some(kind) = FileType::from_mode(mode) else {
            return e(libc::EINVAL);
        };
        let pd = self.dir_for(parent, cred, MAY_WRITE | MAY_EXEC)?;
        if pd.nlink == 0 {
            return e(libc::ENOENT);
        }
        self.ex(&[parent])?;
        if self.dir_lookup(parent, name)?.is_some() {
            return e(libc::EEXIST);
        }
        if let Some(t) = target {
            if t.is_empty() {
                return e(libc::ENOENT);
            }
            if t.len() as u64 > MAX_SYMLINK_LEN {
                return e(libc::ENAMETOOLONG);
            }
        }
        if kind == FileType::Directory && pd.nlink == u32::MAX {
            return e(libc::EMLINK);
        }
        let t = now();
        let mut perm = if kind == FileType::Symlink {
            0o777
        } else {
            mode & 0o7777
        };
        // setgid directories pass their group on (and setgid to subdirs).
        let gid = if pd.mode & libc::S_ISGID != 0 {
            if kind == FileType::Directory {
                perm |= libc::S_ISGID;
            }
            pd.gid
        } else {
            cred.gid
        };
        // ACL inheritance replaces the umask.
        let default_acl = if pd.xattr != 0 && kind != FileType::Symlink {
            self.xattr_get(parent, acl::ACL_DEFAULT)?
                .and_then(|v| Acl::decode(&v).ok())
        } else {
            None
        };
        let mut new_acl = None;
        if let Some(d) = &default_acl {
            let (a, bits) = d.inherit(perm);
            perm = (perm & !0o777) | bits;
            if !a.is_minimal() {
                new_acl = Some(a);
            }
        } else if kind != FileType::Symlink {
            perm &= !(umask & 0o777);
        }
        if gid != cred.gid && !cred.in_group(gid) && !cred.is_root() && kind != FileType::Directory
        {
            perm &= !libc::S_ISGID;
        }
        let cap = crate::format::dinode::stuffed_capacity(self.geo.block_size);
        let mut body = vec![0u8; cap];
        let mut size = 0u64;
        let nlink = if kind == FileType::Directory { 2 } else { 1 };
        if let Some(tg) = target {
            if tg.len() <= cap {
                body[..tg.len()].copy_from_slice(tg);
                size = tg.len() as u64;
            }
        }
        let di = Dinode {
            mode: kind.mode_bits() | perm,
            uid: cred.uid,
            gid,
            nlink,
            size,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            flags: DinodeFlags(0),
            generation: 0,
            version: 0,
            rdev: if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
                rdev
            } else {
                0
            },
            xattr: 0,
            goal: 0,
            height: 0,
            depth: 0,
            entries: 0,
            content: DinodeContent::Stuffed(body),
        };
        let (ino, mut di) = if kind == FileType::Directory {
            // The dinode must be valid when first written: allocate, then
            // build "." and ".." with the address known.
            //
            // In a cluster a new directory goes to this node's home rgrp
            // (no goal), not beside its parent (Orlov-style spreading, as
            // GFS2 does for directories): its files follow it, so trees
            // that different nodes create land in different rgrps and
            // their creates do not pass rgrp glocks back and forth. One
            // node keeps directories near their parents.
            let goal = (!self.glocks.is_clustered()).then_some(parent);
            let (ino, _, generation) =
                self.rgrps
                    .alloc(&mut self.cache, &*self.dev, BlockState::Dinode, goal, 1)?;
            let key = self.geo.hash_key;
            let ents = vec![
                crate::format::DirEntry::new(
                    &key,
                    formal_ino(ino, generation),
                    FileType::Directory,
                    b".",
                ),
                crate::format::DirEntry::new(
                    &key,
                    formal_ino(parent, pd.generation),
                    FileType::Directory,
                    b"..",
                ),
            ];
            let mut body = vec![0u8; cap];
            crate::format::dir::encode_entries(&self.geo, ino, "directory", &ents, &mut body)?;
            let mut d = Dinode {
                size: cap as u64,
                entries: 2,
                content: DinodeContent::Stuffed(body),
                generation,
                ..di
            };
            self.put_dinode(ino, &mut d)?;
            (ino, d)
        } else {
            self.new_dinode(parent, di)?
        };
        self.glocks
            .hold(GlockName::inode(ino), GlockMode::Exclusive)?;
        let linked = (|| {
            if let Some(tg) = target {
                if tg.len() > cap {
                    let r = self.write_data(ino, &mut di, 0, tg);
                    // Whatever the tree holds must stay referenced.
                    self.put_dinode(ino, &mut di)?;
                    r?;
                }
            }
            if let Some(a) = new_acl {
                self.xattr_set(ino, acl::ACL_ACCESS, Some(&a.encode()), 0)?;
            }
            if kind == FileType::Directory {
                if let Some(d) = &default_acl {
                    self.xattr_set(ino, acl::ACL_DEFAULT, Some(&d.encode()), 0)?;
                }
            }
            self.dir_add(parent, name, formal_ino(ino, di.generation), kind)
        })();
        match linked {
            // Refused (out of space) after the dinode was allocated: free
            // it again, or it would be an orphan nothing points at.
            Err(err) if !err.is_fatal() && !matches!(err, FsError::GlockWait { .. }) => {
                self.destroy_inode(ino)?;
                return Err(err);
            }
            r => r?,
        }
        let mut pd = self.dinode(parent)?;
        if kind == FileType::Directory {
            pd.nlink += 1;
        }
        pd.mtime = t;
        pd.ctime = t;
        self.put_dinode(parent, &mut pd)?;
        let di = self.dinode(ino)?;
        Ok(self.attr_of(ino, &di))
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8], cred: &Cred) -> Result<Attr> {
        self.change(|fs| {
            check_name(name)?;
            let mut di = fs.user_dinode(ino)?;
            if di.is_dir() {
                return e(libc::EPERM);
            }
            let pd = fs.dir_for(parent, cred, MAY_WRITE | MAY_EXEC)?;
            if pd.nlink == 0 || di.nlink == 0 {
                return e(libc::ENOENT);
            }
            if di.nlink == u32::MAX {
                return e(libc::EMLINK);
            }
            fs.ex(&[parent, ino])?;
            if fs.dir_lookup(parent, name)?.is_some() {
                return e(libc::EEXIST);
            }
            let kind = di.file_type().unwrap_or(FileType::Regular);
            tracing::debug!(ino, nlink = di.nlink, version = di.version, "link");
            fs.dir_add(parent, name, formal_ino(ino, di.generation), kind)?;
            let t = now();
            di.nlink += 1;
            di.ctime = t;
            fs.put_dinode(ino, &mut di)?;
            let mut pd = fs.dinode(parent)?;
            pd.mtime = t;
            pd.ctime = t;
            fs.put_dinode(parent, &mut pd)?;
            Ok(fs.attr_of(ino, &di))
        })
    }

    // ---- removal ----

    pub fn unlink(&mut self, parent: u64, name: &[u8], cred: &Cred) -> Result<()> {
        self.change(|fs| fs.remove(parent, name, cred, false))
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8], cred: &Cred) -> Result<()> {
        if name == b"." {
            return e(libc::EINVAL);
        }
        if name == b".." {
            return e(libc::ENOTEMPTY);
        }
        self.change(|fs| fs.remove(parent, name, cred, true))
    }

    fn remove(&mut self, parent: u64, name: &[u8], cred: &Cred, dir: bool) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            return e(libc::ENAMETOOLONG);
        }
        let pd = self.dir_for(parent, cred, MAY_WRITE | MAY_EXEC)?;
        let Some((formal, _)) = self.dir_lookup(parent, name)? else {
            return e(libc::ENOENT);
        };
        let ino = formal_addr(formal);
        self.ex(&[parent, ino])?;
        let mut di = self.dinode(ino)?;
        self.check_entry(parent, formal, ino, &di)?;
        tracing::debug!(ino, parent, name = %String::from_utf8_lossy(name), nlink = di.nlink, version = di.version, "remove");
        if dir && !di.is_dir() {
            return e(libc::ENOTDIR);
        }
        if !dir && di.is_dir() {
            return e(libc::EISDIR);
        }
        if !Fs::sticky_ok(&pd, &di, cred) {
            return e(libc::EPERM);
        }
        if dir && !self.dir_is_empty(ino)? {
            return e(libc::ENOTEMPTY);
        }
        self.dir_remove(parent, name)?;
        let t = now();
        let mut pd = self.dinode(parent)?;
        if dir {
            pd.nlink = pd.nlink.saturating_sub(1);
        }
        pd.mtime = t;
        pd.ctime = t;
        self.put_dinode(parent, &mut pd)?;
        di.nlink = if dir { 0 } else { di.nlink.saturating_sub(1) };
        di.ctime = t;
        self.put_dinode(ino, &mut di)?;
        if di.nlink == 0 {
            self.drop_last_link(ino)?;
        }
        Ok(())
    }

    /// The last name is gone: the inode goes on the unlinked list (so a
    /// crash cannot leak it) and is freed after this operation, or when
    /// the last opener closes.
    fn drop_last_link(&mut self, ino: u64) -> Result<()> {
        tracing::debug!(ino, "last link dropped");
        self.rgrps
            .set_state(&mut self.cache, &*self.dev, ino, 1, BlockState::Unlinked)?;
        self.unlinked.insert(ino);
        self.write_unlinked_list()?;
        if self.opens.get(&ino).copied().unwrap_or(0) == 0 && self.may_free_unlinked(ino)? {
            self.doomed.insert(ino);
        }
        Ok(())
    }

    // ---- rename ----

    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        cred: &Cred,
    ) -> Result<()> {
        self.change(|fs| fs.rename_inner(parent, name, newparent, newname, flags, cred))
    }

    /// Whether `anc` is `ino` or one of its ancestors (walking "..").
    fn is_ancestor(&mut self, anc: u64, mut ino: u64) -> Result<bool> {
        let root = self.root();
        for _ in 0..100_000 {
            if ino == anc {
                return Ok(true);
            }
            if ino == root {
                return Ok(false);
            }
            match self.dir_lookup(ino, b"..")? {
                Some((p, _)) if formal_addr(p) != ino => ino = formal_addr(p),
                _ => return Ok(false),
            }
        }
        Err(self.corrupt(format!(
            "directory {ino}: \"..\" chain does not reach the root"
        )))
    }

    fn rename_inner(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        cred: &Cred,
    ) -> Result<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return e(libc::EINVAL);
        }
        if name == b"." || name == b".." {
            return e(libc::EBUSY);
        }
        check_name(newname)?;
        if parent != newparent {
            // Serialises directory moves cluster-wide (no loops).
            self.glocks
                .hold(GlockName::rename(), GlockMode::Exclusive)?;
        }
        let pd = self.dir_for(parent, cred, MAY_WRITE | MAY_EXEC)?;
        let npd = self.dir_for(newparent, cred, MAY_WRITE | MAY_EXEC)?;
        let Some((formal, kind)) = self.dir_lookup(parent, name)? else {
            return e(libc::ENOENT);
        };
        let ino = formal_addr(formal);
        // The target: (address, type, formal number).
        let target = self
            .dir_lookup(newparent, newname)?
            .map(|(f, k)| (formal_addr(f), k, f));
        let mut locks = vec![parent, newparent, ino];
        if let Some((t, _, _)) = target {
            locks.push(t);
        }
        locks.sort_unstable();
        locks.dedup();
        self.ex(&locks)?;
        let di = self.dinode(ino)?;
        self.check_entry(parent, formal, ino, &di)?;
        if !Fs::sticky_ok(&pd, &di, cred) {
            return e(libc::EPERM);
        }
        if Some(ino) == target.map(|t| t.0) {
            // Same file (hard links or the same name): nothing to do.
            return Ok(());
        }
        let is_dir = kind == FileType::Directory;
        if is_dir && parent != newparent && self.is_ancestor(ino, newparent)? {
            return e(libc::EINVAL);
        }
        // A directory changing parent needs write permission on itself
        // (its ".." changes).
        if is_dir && parent != newparent {
            self.may(ino, &di, cred, MAY_WRITE)?;
        }
        let t = now();
        if flags & RENAME_EXCHANGE != 0 {
            let Some((tino, tkind, tformal)) = target else {
                return e(libc::ENOENT);
            };
            let tdi = self.dinode(tino)?;
            self.check_entry(newparent, tformal, tino, &tdi)?;
            if !Fs::sticky_ok(&npd, &tdi, cred) {
                return e(libc::EPERM);
            }
            let tdir = tkind == FileType::Directory;
            if tdir && parent != newparent && self.is_ancestor(tino, parent)? {
                return e(libc::EINVAL);
            }
            self.dir_set(parent, name, tformal, tkind)?;
            self.dir_set(newparent, newname, formal, kind)?;
            if parent != newparent {
                if is_dir {
                    let np = formal_ino(newparent, npd.generation);
                    self.dir_set(ino, b"..", np, FileType::Directory)?;
                }
                if tdir {
                    let p = formal_ino(parent, pd.generation);
                    self.dir_set(tino, b"..", p, FileType::Directory)?;
                }
                let delta = i64::from(is_dir) - i64::from(tdir);
                self.adjust_nlink(parent, -delta, t)?;
                self.adjust_nlink(newparent, delta, t)?;
            } else {
                self.adjust_nlink(parent, 0, t)?;
            }
            for i in [ino, tino] {
                let mut d = self.dinode(i)?;
                d.ctime = t;
                self.put_dinode(i, &mut d)?;
            }
            return Ok(());
        }
        if let Some((tino, tkind, tformal)) = target {
            if flags & RENAME_NOREPLACE != 0 {
                return e(libc::EEXIST);
            }
            let mut tdi = self.dinode(tino)?;
            self.check_entry(newparent, tformal, tino, &tdi)?;
            tracing::debug!(
                tino,
                nlink = tdi.nlink,
                version = tdi.version,
                "rename over target"
            );
            if !Fs::sticky_ok(&npd, &tdi, cred) {
                return e(libc::EPERM);
            }
            let tdir = tkind == FileType::Directory;
            if is_dir && !tdir {
                return e(libc::ENOTDIR);
            }
            if !is_dir && tdir {
                return e(libc::EISDIR);
            }
            if tdir && !self.dir_is_empty(tino)? {
                return e(libc::ENOTEMPTY);
            }
            self.dir_set(newparent, newname, formal, kind)?;
            tdi.nlink = if tdir { 0 } else { tdi.nlink.saturating_sub(1) };
            tdi.ctime = t;
            self.put_dinode(tino, &mut tdi)?;
            if tdir {
                self.adjust_nlink(newparent, -1, t)?;
            }
            if tdi.nlink == 0 {
                self.drop_last_link(tino)?;
            }
        } else {
            self.dir_add(newparent, newname, formal, kind)?;
        }
        self.dir_remove(parent, name)?;
        if is_dir && parent != newparent {
            let np = formal_ino(newparent, npd.generation);
            self.dir_set(ino, b"..", np, FileType::Directory)?;
            self.adjust_nlink(parent, -1, t)?;
            self.adjust_nlink(newparent, 1, t)?;
        } else {
            self.adjust_nlink(parent, 0, t)?;
            if parent != newparent {
                self.adjust_nlink(newparent, 0, t)?;
            }
        }
        let mut d = self.dinode(ino)?;
        d.ctime = t;
        self.put_dinode(ino, &mut d)?;
        Ok(())
    }

    /// Changes a directory's link count and stamps mtime/ctime.
    fn adjust_nlink(&mut self, dir: u64, delta: i64, t: Timestamp) -> Result<()> {
        let mut d = self.dinode(dir)?;
        d.nlink = (i64::from(d.nlink) + delta).clamp(0, i64::from(u32::MAX)) as u32;
        d.mtime = t;
        d.ctime = t;
        self.put_dinode(dir, &mut d)
    }

    // ---- attributes ----

    pub fn setattr(&mut self, ino: u64, set: SetAttr, cred: &Cred) -> Result<Attr> {
        self.change(|fs| fs.setattr_inner(ino, set, cred))
    }

    fn setattr_inner(&mut self, ino: u64, set: SetAttr, cred: &Cred) -> Result<Attr> {
        let mut di = self.user_dinode(ino)?;
        self.ex(&[ino])?;
        let owner = cred.is_root() || cred.uid == di.uid;
        let t = now();
        let mut changed = false;
        if let Some(size) = set.size {
            if di.is_dir() {
                return e(libc::EISDIR);
            }
            if di.file_type() != Some(FileType::Regular) {
                return e(libc::EINVAL);
            }
            if !set.via_handle {
                self.may(ino, &di, cred, MAY_WRITE)?;
            }
            if di.flags.contains(DinodeFlags::IMMUTABLE) || di.flags.contains(DinodeFlags::APPEND) {
                return e(libc::EPERM);
            }
            self.set_size(ino, &mut di, size)?;
            di.mtime = t;
            di.ctime = t;
            if !cred.is_root() {
                kill_suid(&mut di);
            }
            changed = true;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let new_uid = set.uid.unwrap_or(di.uid);
            let new_gid = set.gid.unwrap_or(di.gid);
            if !cred.is_root() {
                if new_uid != di.uid || cred.uid != di.uid {
                    return e(libc::EPERM);
                }
                if new_gid != di.gid && !cred.in_group(new_gid) {
                    return e(libc::EPERM);
                }
            }
            if new_uid != di.uid || new_gid != di.gid || set.uid.is_some() || set.gid.is_some() {
                if !di.is_dir() {
                    // chown clears setuid, and setgid when it means
                    // "setgid" (group execute set), as Linux does.
                    di.mode &= !libc::S_ISUID;
                    if di.mode & libc::S_IXGRP != 0 {
                        di.mode &= !libc::S_ISGID;
                    }
                }
                di.uid = new_uid;
                di.gid = new_gid;
                di.ctime = t;
                changed = true;
            }
        }
        if let Some(mode) = set.mode {
            if !owner {
                return e(libc::EPERM);
            }
            let mut perm = mode & 0o7777;
            if !cred.is_root() && !cred.in_group(di.gid) {
                perm &= !libc::S_ISGID;
            }
            di.mode = (di.mode & libc::S_IFMT) | perm;
            di.ctime = t;
            changed = true;
            if di.xattr != 0 {
                if let Some(mut a) = self.access_acl(ino, &di)? {
                    a.apply_mode(perm);
                    self.put_dinode(ino, &mut di)?;
                    self.xattr_set(ino, acl::ACL_ACCESS, Some(&a.encode()), 0)?;
                    di = self.dinode(ino)?;
                }
            }
        }
        for (which, req) in [(0, set.atime), (1, set.mtime)] {
            let Some(req) = req else { continue };
            match req {
                SetTime::Now => {
                    if !owner {
                        self.may(ino, &di, cred, MAY_WRITE)?;
                    }
                }
                SetTime::At(_) => {
                    if !owner {
                        return e(libc::EPERM);
                    }
                }
            }
            let v = match req {
                SetTime::Now => t,
                SetTime::At(x) => x,
            };
            if which == 0 {
                di.atime = v;
            } else {
                di.mtime = v;
            }
            di.ctime = t;
            changed = true;
        }
        if changed {
            self.put_dinode(ino, &mut di)?;
        }
        Ok(self.attr_of(ino, &di))
    }

    /// Truncates or extends a regular file to `size` (the caller writes
    /// the dinode).
    fn set_size(&mut self, ino: u64, di: &mut Dinode, size: u64) -> Result<()> {
        if size > crate::format::dinode::MAX_FILE_SIZE {
            return e(libc::EFBIG);
        }
        if size < di.size {
            let bs = u64::from(self.geo.block_size);
            // Zero the kept part of the last block so a later extension
            // reads zeros.
            let end_of_block = if di.height == 0 {
                di.size
            } else {
                size.div_ceil(bs) * bs
            };
            self.zero_range_in_place(ino, di, size, end_of_block.min(di.size.max(size)))?;
            di.size = size;
            self.truncate_blocks(ino, di)?;
        } else if size > di.size {
            if di.height == 0
                && size > crate::format::dinode::stuffed_capacity(self.geo.block_size) as u64
            {
                self.unstuff(ino, di)?;
            }
            di.size = size;
        }
        Ok(())
    }

    // ---- files ----

    /// Opens (permission check; O_TRUNC comes as a setattr from the kernel).
    pub fn open(&mut self, ino: u64, flags: i32, cred: &Cred) -> Result<()> {
        let di = self.user_dinode(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let mut want = 0;
        if acc == libc::O_RDONLY || acc == libc::O_RDWR {
            want |= MAY_READ;
        }
        if acc == libc::O_WRONLY || acc == libc::O_RDWR {
            want |= MAY_WRITE;
            if di.is_dir() {
                return e(libc::EISDIR);
            }
            if self.opts.read_only {
                return e(libc::EROFS);
            }
        }
        if flags & libc::O_TRUNC != 0 && !di.is_dir() {
            want |= MAY_WRITE;
        }
        self.may(ino, &di, cred, want)?;
        self.iopen_on_first_open(ino)?;
        *self.opens.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    /// The creator of a file has it open without an open() call.
    pub(crate) fn opened_by_create(&mut self, ino: u64) -> Result<()> {
        self.iopen_on_first_open(ino)?;
        *self.opens.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    /// The last close of an unlinked file frees it.
    pub fn release(&mut self, ino: u64) -> Result<()> {
        let n = self.opens.get(&ino).copied().unwrap_or(0);
        if n <= 1 {
            if self.opens.remove(&ino).is_some() {
                self.iopen_on_last_close(ino)?;
            }
            if self.unlinked.contains(&ino) && self.may_free_unlinked(ino)? {
                self.doomed.insert(ino);
                if !self.glocks.is_clustered() {
                    self.check_writable()?;
                    return self.free_doomed();
                }
            }
        } else {
            self.opens.insert(ino, n - 1);
        }
        Ok(())
    }

    pub fn read(&mut self, ino: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        let di = self.user_dinode(ino)?;
        if di.is_dir() {
            return e(libc::EISDIR);
        }
        let data = self.read_data(ino, &di, off, len)?;
        self.touch_atime(ino)?;
        Ok(data)
    }

    fn touch_atime(&mut self, ino: u64) -> Result<()> {
        if self.opts.read_only || self.is_withdrawn() {
            return Ok(());
        }
        let mut di = self.dinode(ino)?;
        if di.flags.contains(DinodeFlags::NOATIME) {
            return Ok(());
        }
        let t = now();
        let due = match self.opts.atime {
            AtimeMode::Noatime => false,
            AtimeMode::Strictatime => true,
            AtimeMode::Relatime => {
                di.atime <= di.mtime || di.atime <= di.ctime || t.sec - di.atime.sec >= 86400
            }
        };
        if due {
            self.change(|fs| {
                di.atime = t;
                fs.put_dinode(ino, &mut di)
            })?;
        }
        Ok(())
    }

    pub fn write(
        &mut self,
        ino: u64,
        off: u64,
        data: &[u8],
        append: bool,
        cred: &Cred,
    ) -> Result<usize> {
        self.change(|fs| {
            let mut di = fs.user_dinode(ino)?;
            if di.is_dir() {
                return e(libc::EISDIR);
            }
            fs.ex(&[ino])?;
            let off = if append || di.flags.contains(DinodeFlags::APPEND) {
                di.size
            } else {
                off
            };
            let (written, err) = fs.write_data_partial(ino, &mut di, off, data);
            match err {
                Some(err) if err.is_fatal() => return Err(err),
                // Undone and run again once the glock is held.
                Some(err @ FsError::GlockWait { .. }) => return Err(err),
                // Nothing written: the dinode may still have grown a tree
                // (its blocks must stay referenced), but no time changes.
                Some(err) if written == 0 => {
                    fs.put_dinode(ino, &mut di)?;
                    return Err(err);
                }
                // Out of space part way: a short write of what fitted.
                _ => {}
            }
            let t = now();
            di.mtime = t;
            di.ctime = t;
            if !cred.is_root() {
                kill_suid(&mut di);
            }
            fs.put_dinode(ino, &mut di)?;
            if di.flags.contains(DinodeFlags::SYNC) {
                fs.commit()?;
            }
            Ok(written)
        })
    }

    /// fsync/fdatasync: data went to the device at write; commit the
    /// metadata and flush.
    pub fn fsync(&mut self, _ino: u64) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.commit()?;
        self.dev
            .flush()
            .map_err(|e| FsError::Io(crate::format::io::IoError::Device(e)))?;
        Ok(())
    }

    pub fn fallocate(&mut self, ino: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        self.change(|fs| {
            let mut di = fs.user_dinode(ino)?;
            if di.file_type() != Some(FileType::Regular) {
                return e(if di.is_dir() {
                    libc::EISDIR
                } else {
                    libc::ENODEV
                });
            }
            if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
                return e(libc::EOPNOTSUPP);
            }
            if len == 0 {
                return e(libc::EINVAL);
            }
            let end = off.checked_add(len).ok_or(FsError::Errno(libc::EFBIG))?;
            if end > crate::format::dinode::MAX_FILE_SIZE {
                return e(libc::EFBIG);
            }
            fs.ex(&[ino])?;
            let bs = u64::from(fs.geo.block_size);
            let t = now();
            if mode & FALLOC_FL_PUNCH_HOLE != 0 {
                if mode & FALLOC_FL_KEEP_SIZE == 0 {
                    return e(libc::EOPNOTSUPP);
                }
                let end = end.min(di.size);
                if off < end {
                    let first_full = off.div_ceil(bs);
                    let last_full = end / bs;
                    if first_full < last_full && di.height > 0 {
                        fs.zero_range_in_place(ino, &mut di, off, first_full * bs)?;
                        fs.zero_range_in_place(ino, &mut di, last_full * bs, end)?;
                        fs.free_range(ino, &mut di, first_full, last_full)?;
                    } else {
                        fs.zero_range_in_place(ino, &mut di, off, end)?;
                    }
                    di.mtime = t;
                    di.ctime = t;
                    fs.put_dinode(ino, &mut di)?;
                }
                return Ok(());
            }
            // Allocate (and zero) every hole in the range; ZERO_RANGE also
            // zeroes allocated blocks.
            let zero_all = mode & FALLOC_FL_ZERO_RANGE != 0;
            let cap = crate::format::dinode::stuffed_capacity(fs.geo.block_size) as u64;
            if di.height == 0 && end > cap {
                fs.unstuff(ino, &mut di)?;
            }
            if di.height == 0 {
                if zero_all {
                    fs.zero_range_in_place(ino, &mut di, off, end)?;
                }
            } else {
                if zero_all {
                    fs.zero_range_in_place(ino, &mut di, off, end)?;
                }
                let mut l = off / bs;
                let last = (end - 1) / bs;
                while l <= last {
                    let want = (last - l + 1).min(256) as u32;
                    let (blk, n, fresh) = fs.alloc_block(ino, &mut di, l, want)?;
                    let n = u64::from(n).min(last - l + 1);
                    if fresh {
                        fs.write_data_blocks(blk, &vec![0u8; (n * bs) as usize])?;
                    }
                    l += n;
                    if fs.cache.dirty_blocks() > 256 {
                        fs.put_dinode(ino, &mut di)?;
                        fs.maybe_commit()?;
                    }
                }
            }
            if mode & FALLOC_FL_KEEP_SIZE == 0 && end > di.size {
                di.size = end;
            }
            di.ctime = t;
            if zero_all {
                di.mtime = t;
            }
            fs.put_dinode(ino, &mut di)
        })
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&mut self, ino: u64, off: u64, whence: i32) -> Result<u64> {
        let di = self.user_dinode(ino)?;
        if off >= di.size {
            return e(libc::ENXIO);
        }
        let bs = u64::from(self.geo.block_size);
        match whence {
            libc::SEEK_DATA => {
                if di.height == 0 {
                    return Ok(off);
                }
                match self.next_allocated(ino, &di, off / bs)? {
                    Some(l) if l * bs < di.size => Ok((l * bs).max(off)),
                    _ => e(libc::ENXIO),
                }
            }
            libc::SEEK_HOLE => {
                if di.height == 0 {
                    return Ok(di.size);
                }
                let mut l = off / bs;
                while l * bs < di.size {
                    if self.map_block(ino, &di, l)?.is_none() {
                        return Ok((l * bs).max(off));
                    }
                    l += 1;
                }
                Ok(di.size)
            }
            _ => e(libc::EINVAL),
        }
    }

    // ---- directories ----

    pub fn opendir(&mut self, ino: u64, cred: &Cred) -> Result<()> {
        self.dir_for(ino, cred, MAY_READ)?;
        Ok(())
    }

    /// Entries after cookie `after`: (cookie, inode, type, name).
    pub fn readdir(
        &mut self,
        ino: u64,
        after: u64,
        want: usize,
    ) -> Result<Vec<crate::dir::Listed>> {
        let di = self.user_dinode(ino)?;
        if !di.is_dir() {
            return e(libc::ENOTDIR);
        }
        let v = self.dir_list(ino, after, want)?;
        self.touch_atime(ino)?;
        Ok(v)
    }

    // ---- xattrs ----

    fn xattr_access(
        &mut self,
        ino: u64,
        di: &Dinode,
        name: &[u8],
        cred: &Cred,
        write: bool,
    ) -> Result<()> {
        if name.starts_with(b"user.") {
            let t = di.file_type();
            if t != Some(FileType::Regular) && t != Some(FileType::Directory) {
                return e(if write { libc::EPERM } else { libc::ENODATA });
            }
            if write
                && di.is_dir()
                && di.mode & libc::S_ISVTX != 0
                && cred.uid != di.uid
                && !cred.is_root()
            {
                return e(libc::EPERM);
            }
            return self.may(ino, di, cred, if write { MAY_WRITE } else { MAY_READ });
        }
        if name.starts_with(b"trusted.") {
            return if cred.is_root() {
                Ok(())
            } else {
                e(libc::EPERM)
            };
        }
        if name.starts_with(b"security.") {
            return if !write || cred.is_root() {
                Ok(())
            } else {
                e(libc::EPERM)
            };
        }
        if name == acl::ACL_ACCESS || name == acl::ACL_DEFAULT {
            if write && !(cred.is_root() || cred.uid == di.uid) {
                return e(libc::EPERM);
            }
            if name == acl::ACL_DEFAULT && !di.is_dir() {
                return e(if write { libc::EACCES } else { libc::ENODATA });
            }
            return Ok(());
        }
        e(libc::EOPNOTSUPP)
    }

    pub fn getxattr(&mut self, ino: u64, name: &[u8], cred: &Cred) -> Result<Vec<u8>> {
        let di = self.user_dinode(ino)?;
        self.xattr_access(ino, &di, name, cred, false)?;
        match self.xattr_get(ino, name)? {
            Some(v) => Ok(v),
            None => e(libc::ENODATA),
        }
    }

    pub fn listxattr(&mut self, ino: u64, cred: &Cred) -> Result<Vec<Vec<u8>>> {
        let _ = self.user_dinode(ino)?;
        let names = self.xattr_names(ino)?;
        Ok(names
            .into_iter()
            .filter(|n| !n.starts_with(b"trusted.") || cred.is_root())
            .collect())
    }

    pub fn setxattr(
        &mut self,
        ino: u64,
        name: &[u8],
        value: Option<&[u8]>,
        flags: i32,
        cred: &Cred,
    ) -> Result<()> {
        self.change(|fs| {
            let mut di = fs.user_dinode(ino)?;
            if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
                return e(libc::EINVAL);
            }
            fs.xattr_access(ino, &di, name, cred, true)?;
            fs.ex(&[ino])?;
            let mut value = value.map(|v| v.to_vec());
            if name == acl::ACL_ACCESS {
                if let Some(v) = &value {
                    let a = Acl::decode(v)?;
                    // The ACL's base entries are the mode bits.
                    di.mode = (di.mode & !0o777) | a.mode_bits();
                    if a.is_minimal() {
                        value = None;
                    }
                }
            } else if name == acl::ACL_DEFAULT {
                if let Some(v) = &value {
                    Acl::decode(v)?;
                }
            }
            // The attribute first: a call that fails (removing one that
            // does not exist) changes nothing, not even ctime.
            match (value.as_deref(), name == acl::ACL_ACCESS) {
                (None, true) => match fs.xattr_set(ino, name, None, 0) {
                    Err(FsError::Errno(libc::ENODATA)) => Ok(()),
                    r => r,
                },
                (v, _) => fs.xattr_set(ino, name, v, flags),
            }?;
            let mode = di.mode;
            let mut di = fs.dinode(ino)?;
            di.mode = mode;
            di.ctime = now();
            fs.put_dinode(ino, &mut di)
        })
    }

    pub fn removexattr(&mut self, ino: u64, name: &[u8], cred: &Cred) -> Result<()> {
        self.setxattr(ino, name, None, 0, cred)
    }

    pub fn sync(&mut self) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.commit()
    }
}

/// Writing to or truncating a file clears setuid, and setgid when group
/// execute is set.
fn kill_suid(di: &mut Dinode) {
    if di.mode & libc::S_ISUID != 0
        || (di.mode & libc::S_ISGID != 0 && di.mode & libc::S_IXGRP != 0)
    {
        di.mode &= !libc::S_ISUID;
        if di.mode & libc::S_IXGRP != 0 {
            di.mode &= !libc::S_ISGID;
        }
    }
}
