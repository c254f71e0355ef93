//! POSIX record locks (fcntl F_SETLK/F_SETLKW/F_GETLK) and flock(2)
//! across the cluster: GFS2 hands these to dlm_controld's plock code; we
//! build them on our own lock manager.
//!
//! Owns: each node's table of the byte-range locks its processes hold, its
//! publication in the lock manager, the conflict check, and the waits.
//! May not touch: glocks or the file system (a record lock protects the
//! application's data, not ours), or the FUSE replies (the adapter
//! answers).
//!
//! How it works. A lock manager cannot lock byte ranges, so the ranges
//! live in lock value blocks, in a lockspace of their own with 1 KiB LVBs
//! (`<lock table>+`):
//!
//! - `R(inode, node)`: the LVB holds `node`'s ranges on the inode. Only
//!   that node writes it (EX, then down to NL with the new value); others
//!   read it with a short CR lock.
//! - `M(inode)`: a mutex. A node takes it EX to check for conflicts and add
//!   a lock, so two nodes cannot both find the range free. Removing ranges
//!   needs no mutex: a reader that still sees them only waits longer.
//!
//! A lock request holds `M`, reads every other member's `R`, checks the
//! ranges of other owners (this node's included), and publishes its new
//! table before it lets `M` go. A conflicting F_SETLK gets EAGAIN; an
//! F_SETLKW retries after a short sleep, growing to [`MAX_BACKOFF`], on a
//! thread of its own. A node's ranges count only while it is a member of
//! the lockspace in the same incarnation that wrote them (the LVB carries
//! it), so a dead node's locks go with it.
//!
//! flock(2) arrives the same way (the kernel passes flocks as whole-file
//! locks owned by the open file, and the FUSE library cannot tell them
//! apart), so here flocks and fcntl locks of different owners conflict
//! with each other, as with Lustre's `flock` mount option; on one Linux
//! machine they would not.
//!
//! Limits: [`MAX_RANGES`] ranges per node and inode (more: ENOLCK);
//! [`MAX_WAITERS`] blocked requests per node (more: ENOLCK). No deadlock
//! detection across nodes: two processes waiting for each other wait
//! until one is interrupted.

use rdlm::api::{BlockingDlm, DlmError};
use rdlm::{Flags, Mode, NodeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// LVB bytes of the plock lockspace.
pub const PLOCK_LVB_LEN: usize = 1024;

const HEADER: usize = 16;
const ENTRY: usize = 32;
const LAYOUT: u8 = 1;

/// Most ranges one node may hold on one inode (all its processes).
pub const MAX_RANGES: usize = (PLOCK_LVB_LEN - HEADER) / ENTRY;

/// Most blocked lock requests waiting at once on one node.
pub const MAX_WAITERS: usize = 256;

/// Longest sleep between two tries of a blocked request.
pub const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// The end of a range that runs to the end of any file.
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// A locked byte range, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
    /// The kernel's lock owner (a process's file table for fcntl, an open
    /// file for flock).
    pub owner: u64,
    /// The process that took it (what F_GETLK reports).
    pub pid: u32,
    pub write: bool,
}

impl Range {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether this range stops `owner` from locking `start..=end`.
    fn blocks(&self, owner: u64, start: u64, end: u64, write: bool) -> bool {
        self.owner != owner && self.overlaps(start, end) && (write || self.write)
    }
}

/// `owner`'s new table after it sets `start..=end` to `kind` (None:
/// unlocks). Its ranges there are replaced, the parts outside kept, and
/// touching ranges of the same kind merged, as POSIX requires.
pub fn apply(
    table: &[Range],
    owner: u64,
    pid: u32,
    start: u64,
    end: u64,
    kind: Option<bool>,
) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(table.len() + 2);
    for r in table {
        if r.owner != owner || !r.overlaps(start, end) {
            out.push(*r);
            continue;
        }
        if r.start < start {
            out.push(Range {
                end: start - 1,
                ..*r
            });
        }
        if r.end > end {
            out.push(Range {
                start: end + 1,
                ..*r
            });
        }
    }
    if let Some(write) = kind {
        let mut new = Range {
            start,
            end,
            owner,
            pid,
            write,
        };
        // Merge with this owner's ranges of the same kind that touch it.
        out.retain(|r| {
            let touches = r.owner == owner
                && r.write == write
                && r.start <= new.end.saturating_add(1)
                && new.start <= r.end.saturating_add(1);
            if touches {
                new.start = new.start.min(r.start);
                new.end = new.end.max(r.end);
            }
            !touches
        });
        out.push(new);
    }
    out.sort_by_key(|r| (r.start, r.owner));
    out
}

/// Encodes one node's table (at most [`MAX_RANGES`]) for its LVB.
pub fn encode(incarnation: u64, table: &[Range]) -> Vec<u8> {
    assert!(table.len() <= MAX_RANGES, "{} ranges", table.len());
    let mut b = vec![0u8; PLOCK_LVB_LEN];
    b[0] = LAYOUT;
    b[2..4].copy_from_slice(&(table.len() as u16).to_le_bytes());
    b[8..16].copy_from_slice(&incarnation.to_le_bytes());
    for (k, r) in table.iter().enumerate() {
        let o = HEADER + k * ENTRY;
        b[o..o + 8].copy_from_slice(&r.start.to_le_bytes());
        b[o + 8..o + 16].copy_from_slice(&r.end.to_le_bytes());
        b[o + 16..o + 24].copy_from_slice(&r.owner.to_le_bytes());
        b[o + 24..o + 28].copy_from_slice(&r.pid.to_le_bytes());
        b[o + 28] = u8::from(r.write);
    }
    b
}

/// Decodes a node's table: the incarnation that wrote it and its ranges.
/// None for anything malformed (treated as no ranges: the writer is not
/// a member any more, or wrote nothing yet).
pub fn decode(b: &[u8]) -> Option<(u64, Vec<Range>)> {
    if b.len() != PLOCK_LVB_LEN || b[0] != LAYOUT {
        return None;
    }
    let u64_at = |o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let n = usize::from(u16::from_le_bytes([b[2], b[3]]));
    if n > MAX_RANGES {
        return None;
    }
    let mut v = Vec::with_capacity(n);
    for k in 0..n {
        let o = HEADER + k * ENTRY;
        let r = Range {
            start: u64_at(o),
            end: u64_at(o + 8),
            owner: u64_at(o + 16),
            pid: u32::from_le_bytes([b[o + 24], b[o + 25], b[o + 26], b[o + 27]]),
            write: match b[o + 28] {
                0 => false,
                1 => true,
                _ => return None,
            },
        };
        if r.start > r.end {
            return None;
        }
        v.push(r);
    }
    Some((u64_at(8), v))
}

/// What F_SETLK asks for: `kind` Some(write) locks `start..=end` for
/// `owner` (process `pid`), None unlocks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub kind: Option<bool>,
}

/// One inode's locks on this node.
#[derive(Default)]
struct InodeLocks {
    ranges: Vec<Range>,
    /// Our NL lock on R(inode, us), which keeps our published table.
    own: Option<u64>,
}

#[derive(Default)]
struct Shared {
    inodes: HashMap<u64, Arc<Mutex<InodeLocks>>>,
    /// Bumped when an owner's locks on an inode are dropped (close): a
    /// request of that owner still waiting gives up.
    drops: HashMap<(u64, u64), u64>,
    waiters: usize,
}

/// The record locks of one cluster mount.
pub struct Plocks {
    dlm: BlockingDlm,
    lockspace: String,
    me: NodeId,
    shared: Mutex<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a lock request found.
enum Attempt {
    Done,
    Blocked,
}

impl Plocks {
    /// The plock lockspace of a file system whose lockspace is `fs_ls`:
    /// its name and a `+` (a lock table is at most 63 bytes, a lockspace
    /// name 64).
    pub fn lockspace_of(fs_ls: &str) -> String {
        format!("{fs_ls}+")
    }

    pub fn new(dlm: BlockingDlm, lockspace: String) -> Plocks {
        let me = dlm.dlm().node_id();
        Plocks {
            dlm,
            lockspace,
            me,
            shared: Mutex::new(Shared::default()),
        }
    }

    fn mutex_name(ino: u64) -> [u8; 9] {
        let mut n = [0u8; 9];
        n[0] = b'M';
        n[1..].copy_from_slice(&ino.to_be_bytes());
        n
    }

    fn table_name(ino: u64, node: NodeId) -> [u8; 13] {
        let mut n = [0u8; 13];
        n[0] = b'R';
        n[1..9].copy_from_slice(&ino.to_be_bytes());
        n[9..].copy_from_slice(&node.to_be_bytes());
        n
    }

    fn inode(&self, ino: u64) -> Arc<Mutex<InodeLocks>> {
        lock(&self.shared).inodes.entry(ino).or_default().clone()
    }

    fn err(&self, what: &str, ino: u64, e: DlmError) -> i32 {
        tracing::error!(ino, lockspace = %self.lockspace, error = %e, "record lock: {what}");
        libc::EIO
    }

    /// Whether another blocked request may wait (see [`MAX_WAITERS`]).
    pub fn may_wait(&self) -> bool {
        lock(&self.shared).waiters < MAX_WAITERS
    }

    /// This node's incarnation now (a lost lease makes a new one, whose
    /// tables the others must not confuse with the old one's).
    fn incarnation(&self, ino: u64) -> Result<u64, i32> {
        self.dlm
            .status()
            .map(|st| st.incarnation)
            .map_err(|e| self.err("membership", ino, e))
    }

    /// Every other member's ranges on `ino`, as published, and this node's
    /// incarnation (from the same look at the membership).
    fn others(&self, ino: u64) -> Result<(Vec<Range>, u64), i32> {
        let st = self
            .dlm
            .status()
            .map_err(|e| self.err("membership", ino, e))?;
        let members: Vec<NodeId> = st
            .lockspaces
            .iter()
            .find(|l| l.name == self.lockspace)
            .map(|l| l.members.clone())
            .unwrap_or_default();
        let incarnation_of = |n: NodeId| {
            st.view
                .as_ref()
                .and_then(|v| v.members.iter().find(|m| m.id == n))
                .map(|m| m.incarnation)
        };
        let mut out = Vec::new();
        for n in members.into_iter().filter(|n| *n != self.me) {
            let Some(inc) = incarnation_of(n) else {
                continue;
            };
            let g = self
                .dlm
                .lock_in(
                    &self.lockspace,
                    0,
                    &Self::table_name(ino, n),
                    Mode::CR,
                    Flags::VALBLK,
                    true,
                    None,
                )
                .map_err(|e| self.err("reading a node's ranges", ino, e))?;
            if let Err(e) = self.dlm.unlock(g.lkid, None) {
                return Err(self.err("reading a node's ranges", ino, e));
            }
            let table = g
                .lvb
                .filter(|_| g.lvb_valid)
                .and_then(|b| decode(&b))
                .filter(|(written_by, _)| *written_by == inc);
            if let Some((_, ranges)) = table {
                out.extend(ranges);
            }
        }
        Ok((out, st.incarnation))
    }

    /// Makes `ranges` this node's published table of `ino`, written by
    /// incarnation `me_inc`.
    fn publish(
        &self,
        ino: u64,
        il: &mut InodeLocks,
        ranges: Vec<Range>,
        me_inc: u64,
    ) -> Result<(), i32> {
        let lvb = encode(me_inc, &ranges);
        let lkid = match il.own {
            Some(lkid) => {
                self.dlm
                    .convert(lkid, Mode::EX, Flags::VALBLK, None, None)
                    .map_err(|e| self.err("publishing ranges", ino, e))?;
                lkid
            }
            None => {
                self.dlm
                    .lock_in(
                        &self.lockspace,
                        0,
                        &Self::table_name(ino, self.me),
                        Mode::EX,
                        Flags::VALBLK,
                        true,
                        None,
                    )
                    .map_err(|e| self.err("publishing ranges", ino, e))?
                    .lkid
            }
        };
        if ranges.is_empty() {
            il.own = None;
            il.ranges = ranges;
            return self
                .dlm
                .unlock(lkid, Some(lvb))
                .map_err(|e| self.err("publishing ranges", ino, e));
        }
        il.own = Some(lkid);
        self.dlm
            .convert(lkid, Mode::NL, Flags::VALBLK, Some(lvb), None)
            .map_err(|e| self.err("publishing ranges", ino, e))?;
        il.ranges = ranges;
        Ok(())
    }

    /// One try at locking: under M(ino), check and publish.
    fn try_lock(&self, ino: u64, want: Range) -> Result<Attempt, i32> {
        let il = self.inode(ino);
        let mut il = lock(&il);
        let m = self
            .dlm
            .lock_in(
                &self.lockspace,
                0,
                &Self::mutex_name(ino),
                Mode::EX,
                Flags::NONE,
                false,
                None,
            )
            .map_err(|e| self.err("taking the range mutex", ino, e))?;
        let r = (|| {
            let (others, me_inc) = self.others(ino)?;
            let blocked = il
                .ranges
                .iter()
                .chain(others.iter())
                .any(|r| r.blocks(want.owner, want.start, want.end, want.write));
            if blocked {
                return Ok(Attempt::Blocked);
            }
            let new = apply(
                &il.ranges,
                want.owner,
                want.pid,
                want.start,
                want.end,
                Some(want.write),
            );
            if new.len() > MAX_RANGES {
                return Err(libc::ENOLCK);
            }
            self.publish(ino, &mut il, new, me_inc)?;
            Ok(Attempt::Done)
        })();
        if let Err(e) = self.dlm.unlock(m.lkid, None) {
            return Err(self.err("releasing the range mutex", ino, e));
        }
        r
    }

    /// F_SETLK / F_SETLKW (and flock), waiting for other owners' locks
    /// if `wait`. Errnos: EAGAIN when a
    /// lock conflicts and `wait` is false, EINTR when the owner's locks
    /// were dropped (its file closed) while it waited, ENOLCK over the
    /// limits, EIO when the lock manager fails.
    pub fn setlk(&self, ino: u64, req: LockRequest, wait: bool) -> Result<(), i32> {
        let LockRequest {
            owner,
            pid,
            start,
            end,
            kind,
        } = req;
        if start > end {
            return Err(libc::EINVAL);
        }
        let Some(write) = kind else {
            let il = self.inode(ino);
            let mut il = lock(&il);
            let new = apply(&il.ranges, owner, pid, start, end, None);
            if new == il.ranges {
                return Ok(());
            }
            if new.len() > MAX_RANGES {
                // Splitting a range to unlock its middle.
                return Err(libc::ENOLCK);
            }
            let me_inc = self.incarnation(ino)?;
            return self.publish(ino, &mut il, new, me_inc);
        };
        let want = Range {
            start,
            end,
            owner,
            pid,
            write,
        };
        let epoch = lock(&self.shared)
            .drops
            .get(&(ino, owner))
            .copied()
            .unwrap_or(0);
        let mut backoff = Duration::from_millis(1);
        loop {
            match self.try_lock(ino, want)? {
                Attempt::Done => return Ok(()),
                Attempt::Blocked if !wait => return Err(libc::EAGAIN),
                Attempt::Blocked => {}
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let now = lock(&self.shared)
                .drops
                .get(&(ino, owner))
                .copied()
                .unwrap_or(0);
            if now != epoch {
                return Err(libc::EINTR);
            }
        }
    }

    /// Counts a blocked request in (false: too many wait already).
    pub fn begin_wait(&self) -> bool {
        let mut s = lock(&self.shared);
        if s.waiters >= MAX_WAITERS {
            return false;
        }
        s.waiters += 1;
        true
    }

    pub fn end_wait(&self) {
        let mut s = lock(&self.shared);
        s.waiters = s.waiters.saturating_sub(1);
    }

    /// F_GETLK: the first range of another owner that stops `owner` from
    /// locking `start..=end`, if any.
    pub fn getlk(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        write: bool,
    ) -> Result<Option<Range>, i32> {
        let local = lock(&self.inode(ino)).ranges.clone();
        let (others, _) = self.others(ino)?;
        Ok(local
            .into_iter()
            .chain(others)
            .find(|r| r.blocks(owner, start, end, write)))
    }

    /// Drops every lock `owner` holds on `ino` (the file's close: FLUSH
    /// for fcntl locks, RELEASE for flocks), and makes a request of it
    /// still waiting give up.
    pub fn drop_owner(&self, ino: u64, owner: u64) {
        {
            // Every close comes here: an inode nobody ever locked on this
            // node costs a lookup, nothing more.
            let mut s = lock(&self.shared);
            if !s.inodes.contains_key(&ino) {
                return;
            }
            *s.drops.entry((ino, owner)).or_default() += 1;
        }
        let all = LockRequest {
            owner,
            pid: 0,
            start: 0,
            end: OFFSET_MAX,
            kind: None,
        };
        if let Err(e) = self.setlk(ino, all, false) {
            tracing::error!(ino, owner, errno = e, "dropping record locks at close");
        }
    }

    /// Drops every lock this node holds (unmount).
    pub fn release_all(&self) {
        let inodes: Vec<(u64, Arc<Mutex<InodeLocks>>)> = lock(&self.shared)
            .inodes
            .iter()
            .map(|(i, l)| (*i, l.clone()))
            .collect();
        for (ino, il) in inodes {
            let mut il = lock(&il);
            if il.own.is_some() {
                let r = self
                    .incarnation(ino)
                    .and_then(|inc| self.publish(ino, &mut il, Vec::new(), inc));
                if let Err(e) = r {
                    tracing::error!(ino, errno = e, "releasing record locks at unmount");
                }
            }
        }
    }

    /// How many ranges this node holds.
    pub fn held(&self) -> usize {
        let inodes: Vec<Arc<Mutex<InodeLocks>>> =
            lock(&self.shared).inodes.values().cloned().collect();
        inodes.iter().map(|il| lock(il).ranges.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, owner: u64, write: bool) -> Range {
        Range {
            start,
            end,
            owner,
            pid: owner as u32,
            write,
        }
    }

    fn spans(t: &[Range]) -> Vec<(u64, u64, u64, bool)> {
        t.iter()
            .map(|x| (x.start, x.end, x.owner, x.write))
            .collect()
    }

    #[test]
    fn set_split_merge_and_unlock_follow_posix() {
        let t = apply(&[], 1, 1, 10, 19, Some(true));
        // Adjacent, same kind: merged.
        let t = apply(&t, 1, 1, 20, 29, Some(true));
        assert_eq!(spans(&t), vec![(10, 29, 1, true)]);
        // A read lock in the middle splits the write lock.
        let t = apply(&t, 1, 1, 15, 16, Some(false));
        assert_eq!(
            spans(&t),
            vec![(10, 14, 1, true), (15, 16, 1, false), (17, 29, 1, true)]
        );
        // Unlocking across two pieces keeps the rest.
        let t = apply(&t, 1, 1, 12, 15, None);
        assert_eq!(
            spans(&t),
            vec![(10, 11, 1, true), (16, 16, 1, false), (17, 29, 1, true)]
        );
        // Another owner's ranges are untouched.
        let t = apply(&t, 2, 2, 0, OFFSET_MAX, Some(false));
        let t = apply(&t, 1, 1, 0, OFFSET_MAX, None);
        assert_eq!(spans(&t), vec![(0, OFFSET_MAX, 2, false)]);
    }

    #[test]
    fn conflicts_need_another_owner_an_overlap_and_a_writer() {
        let w = r(10, 19, 1, true);
        let rd = r(10, 19, 1, false);
        assert!(w.blocks(2, 15, 30, false));
        assert!(!w.blocks(1, 15, 30, true), "an owner never blocks itself");
        assert!(!w.blocks(2, 20, 30, true), "no overlap");
        assert!(!rd.blocks(2, 0, 100, false), "readers share");
        assert!(rd.blocks(2, 19, 19, true));
    }

    #[test]
    fn tables_round_trip_and_garbage_is_refused() {
        let t: Vec<Range> = (0..MAX_RANGES as u64)
            .map(|k| r(k * 10, k * 10 + 5, k, k % 2 == 0))
            .collect();
        let b = encode(77, &t);
        assert_eq!(decode(&b), Some((77, t)));
        assert_eq!(decode(&[0u8; PLOCK_LVB_LEN]), None);
        assert_eq!(decode(&b[..64]), None);
        let mut bad = b.clone();
        bad[2] = 0xff;
        assert_eq!(decode(&bad), None);
        let mut bad = encode(1, &[r(5, 4, 1, true)]);
        assert_eq!(decode(&bad), None, "start after end");
        bad[HEADER + 28] = 7;
        assert_eq!(decode(&bad), None);
    }
}
