//! Asking for the inode glocks of listed entries before their lookups
//! come, in a cluster, only when lookups do follow a listing.
//!
//! Owns: what this node remembers of recent directory listings, the rule
//! that starts a prefetch, and the threads that run one. May not touch:
//! the file system (it only asks [`Glocks`] for Shared glocks) or the
//! kernel's caches.
//!
//! `ls -l` of a directory another node filled waits, per entry, for one
//! lock manager round trip and one demote on that node; asked for ahead of
//! time those overlap. But a plain `ls`, or a program that lists a
//! directory to open one file, would then take every entry's glock, and
//! make the node that created them write back and give them up, for
//! nothing. So, like the kernel's READDIRPLUS_AUTO (which switches to
//! READDIRPLUS once lookups follow a readdir), a listing is remembered,
//! and only when [`LOOKUPS_TO_START`] lookups in the directory follow it
//! are the glocks of the rest asked for — in name order, the order `ls`
//! sorts and stats them in.

use crate::glock::{GlockMode, GlockName, Glocks};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Lookups in a listed directory that start the prefetch of its listing.
pub const LOOKUPS_TO_START: u32 = 8;
/// Directories whose last listing is remembered (the oldest is dropped).
pub const MAX_LISTINGS: usize = 8;
/// Entries remembered per listing; a longer listing's tail is not
/// prefetched.
pub const MAX_LISTED: usize = 1 << 17;
/// Most threads prefetching at once on one node.
pub const MAX_THREADS: usize = 4;
/// Threads one prefetch is split over.
const THREADS_PER_PREFETCH: usize = 2;

#[derive(Default)]
struct Listing {
    /// (name, dinode address) of entries listed and not yet prefetched.
    entries: Vec<(Vec<u8>, u64)>,
    /// Lookups in the directory since its listing began.
    lookups: u32,
    /// The prefetch ran: later batches of the same listing go at once.
    started: bool,
}

#[derive(Default)]
struct Listings {
    by_dir: HashMap<u64, Listing>,
    /// Directories in the order their listings began (oldest first).
    order: VecDeque<u64>,
}

/// One mount's prefetcher.
pub struct Prefetch {
    glocks: Glocks,
    listings: Mutex<Listings>,
    running: Arc<AtomicUsize>,
    /// Glocks asked for so far (for tests and `status`).
    asked: Arc<AtomicUsize>,
}

impl Prefetch {
    pub fn new(glocks: Glocks) -> Prefetch {
        Prefetch {
            glocks,
            listings: Mutex::new(Listings::default()),
            running: Arc::new(AtomicUsize::new(0)),
            asked: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Glocks prefetch threads asked the lock manager for.
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }

    /// A readdir of `dir` returned `entries` (name, dinode address); `first`
    /// if it started at the beginning (a new listing).
    pub fn listed(&self, dir: u64, first: bool, entries: Vec<(Vec<u8>, u64)>) {
        let go = {
            let mut l = self.listings.lock().unwrap_or_else(PoisonError::into_inner);
            if first || !l.by_dir.contains_key(&dir) {
                l.by_dir.remove(&dir);
                l.order.retain(|d| *d != dir);
                while l.order.len() >= MAX_LISTINGS {
                    if let Some(old) = l.order.pop_front() {
                        l.by_dir.remove(&old);
                    }
                }
                l.order.push_back(dir);
                l.by_dir.insert(dir, Listing::default());
            }
            let Some(listing) = l.by_dir.get_mut(&dir) else {
                return;
            };
            if listing.started {
                entries
            } else {
                let room = MAX_LISTED.saturating_sub(listing.entries.len());
                listing.entries.extend(entries.into_iter().take(room));
                Vec::new()
            }
        };
        self.run(go);
    }

    /// A lookup of a name in `dir` came: the listing's prefetch starts once
    /// enough have.
    pub fn looked_up(&self, dir: u64) {
        let go = {
            let mut l = self.listings.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(listing) = l.by_dir.get_mut(&dir) else {
                return;
            };
            listing.lookups += 1;
            if listing.started || listing.lookups < LOOKUPS_TO_START {
                return;
            }
            listing.started = true;
            std::mem::take(&mut listing.entries)
        };
        self.run(go);
    }

    /// Asks for the Shared glocks of `entries`, in name order, on up to
    /// [`THREADS_PER_PREFETCH`] threads; skipped when [`MAX_THREADS`] run
    /// already. A glock this node holds is not asked for again.
    fn run(&self, mut entries: Vec<(Vec<u8>, u64)>) {
        if entries.is_empty() {
            return;
        }
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.1);
        let inodes: Vec<u64> = entries.into_iter().map(|e| e.1).collect();
        // Interleaved, so both threads walk the names from the start.
        for t in 0..THREADS_PER_PREFETCH.min(inodes.len()) {
            if self.running.fetch_add(1, Ordering::SeqCst) >= MAX_THREADS {
                self.running.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let share: Vec<u64> = inodes
                .iter()
                .skip(t)
                .step_by(THREADS_PER_PREFETCH)
                .copied()
                .collect();
            let (glocks, running, asked) = (
                self.glocks.clone(),
                self.running.clone(),
                self.asked.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("rdlmfs-prefetch".into())
                .spawn(move || {
                    for ino in share {
                        let name = GlockName::inode(ino);
                        if glocks.mode(name).is_some() {
                            continue;
                        }
                        asked.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = glocks.acquire(name, GlockMode::Shared) {
                            tracing::debug!(glock = %name, error = %e, "prefetch stopped");
                            break;
                        }
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.running.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glock::LockProtocol;
    use std::time::{Duration, Instant};

    /// Records the glocks asked for.
    #[derive(Default)]
    struct Record(Mutex<Vec<GlockName>>);

    impl LockProtocol for Record {
        fn name(&self) -> &'static str {
            "record"
        }
        fn may_wait(&self) -> bool {
            true
        }
        fn lock(&self, name: GlockName, _: GlockMode) -> crate::error::Result<Option<Vec<u8>>> {
            self.0.lock().unwrap().push(name);
            Ok(None)
        }
        fn try_lock(&self, _: GlockName, _: GlockMode) -> crate::error::Result<bool> {
            Ok(false)
        }
        fn demote_to_shared(&self, _: GlockName, _: Option<Vec<u8>>) -> crate::error::Result<()> {
            Ok(())
        }
        fn unlock(&self, _: GlockName, _: Option<Vec<u8>>) -> crate::error::Result<()> {
            Ok(())
        }
    }

    fn entries(dir: u64, n: u64) -> Vec<(Vec<u8>, u64)> {
        (0..n)
            .map(|i| (format!("f{:05}", n - i).into_bytes(), dir * 1000 + i))
            .collect()
    }

    /// Waits (bounded) until `n` glocks were asked for.
    fn asked(rec: &Record, n: usize) -> Vec<GlockName> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let got = rec.0.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_listing_alone_asks_for_nothing_and_lookups_start_the_rest() {
        let rec = Arc::new(Record::default());
        let p = Prefetch::new(Glocks::new(rec.clone()));
        p.listed(1, true, entries(1, 30));
        p.listed(1, false, entries(2, 30));
        for _ in 0..LOOKUPS_TO_START - 1 {
            p.looked_up(1);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            rec.0.lock().unwrap().is_empty(),
            "a listing without stats prefetched"
        );
        // Lookups elsewhere do not count.
        p.looked_up(7);
        p.looked_up(1);
        let got = asked(&rec, 60);
        assert_eq!(got.len(), 60, "{got:?}");
        assert_eq!(p.asked(), 60);
        // A batch listed after the start goes at once.
        p.listed(1, false, entries(3, 5));
        assert_eq!(asked(&rec, 65).len(), 65);
        // A new listing of the same directory starts counting again.
        p.listed(1, true, entries(4, 10));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rec.0.lock().unwrap().len(), 65);
    }

    #[test]
    fn listings_are_bounded() {
        let rec = Arc::new(Record::default());
        let p = Prefetch::new(Glocks::new(rec.clone()));
        for d in 0..(MAX_LISTINGS as u64 + 3) {
            p.listed(d, true, entries(d + 1, 3));
        }
        let l = p.listings.lock().unwrap();
        assert_eq!(l.by_dir.len(), MAX_LISTINGS);
        assert_eq!(l.order.len(), MAX_LISTINGS);
        assert!(!l.by_dir.contains_key(&0), "the oldest listing stayed");
    }
}
