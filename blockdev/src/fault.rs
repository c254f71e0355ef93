//! A fault-injecting wrapper for tests: volatile write cache, power cuts,
//! injected errors and latency.
//!
//! [`FaultDevice`] models a disk with a volatile write cache. Writes land in
//! an in-memory cache (per block, every version written since the last
//! flush) and reads see them at once; only [`flush`](BlockDevice::flush) or a
//! FUA write puts data on the inner device, which plays the stable media.
//! [`FaultDevice::crash`] is the power cut: the cache is lost, except that,
//! depending on the [`CrashPolicy`], any block may have reached the media in
//! any of the versions written since the last flush (a real cache destages in
//! any order, a block at a time). After a crash every call fails with
//! [`Error::Crashed`]; the test reopens the inner device to "reboot".
//!
//! It may not be used in production code paths: it holds data in memory.

use crate::error::{Error, Op, Result};
use crate::{check_range, BlockDevice, Capabilities};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// What survives a power cut of the volatile cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Nothing that was not flushed.
    DropAll,
    /// Everything: the cache destaged completely just before the cut.
    KeepAll,
    /// Each cached block independently: not at all, or as any one of the
    /// versions written since the last flush. Reproducible from the seed.
    Random { seed: u64 },
}

/// An injected failure: `op` (or any op when `None`) fails once `skip`
/// matching calls have passed, `times` times (forever when `None`), each
/// time with `probability`, only for calls touching `range` when given.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub op: Option<Op>,
    pub skip: u64,
    pub times: Option<u64>,
    pub probability: f64,
    pub range: Option<(u64, u64)>,
}

impl FaultRule {
    /// Fails the next call of `op`, once.
    pub fn once(op: Op) -> FaultRule {
        FaultRule {
            op: Some(op),
            skip: 0,
            times: Some(1),
            probability: 1.0,
            range: None,
        }
    }
}

/// What a crash did, for test messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Blocks that had unflushed versions.
    pub cached_blocks: u64,
    /// Of those, blocks that reached the media in some version.
    pub persisted_blocks: u64,
}

struct State {
    /// block index → versions written since the last flush, oldest first.
    cache: BTreeMap<u64, Vec<Vec<u8>>>,
    crashed: bool,
    rules: Vec<(FaultRule, u64, u64)>, // (rule, calls seen, failures done)
    latency: Option<Duration>,
    /// Crash by itself before the write that would be number `n` (counting
    /// writes, FUA writes and trims since it was set).
    crash_point: Option<(u64, CrashPolicy)>,
    writes_seen: u64,
    rng: StdRng,
}

pub struct FaultDevice<D: BlockDevice> {
    inner: D,
    name: String,
    state: Mutex<State>,
}

impl<D: BlockDevice> FaultDevice<D> {
    pub fn new(inner: D, seed: u64) -> FaultDevice<D> {
        FaultDevice {
            name: format!("fault({})", inner.name()),
            inner,
            state: Mutex::new(State {
                cache: BTreeMap::new(),
                crashed: false,
                rules: Vec::new(),
                latency: None,
                crash_point: None,
                writes_seen: 0,
                rng: StdRng::seed_from_u64(seed),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_rule(&self, rule: FaultRule) {
        self.state().rules.push((rule, 0, 0));
    }

    pub fn clear_rules(&self) {
        self.state().rules.clear();
    }

    pub fn set_latency(&self, latency: Option<Duration>) {
        self.state().latency = latency;
    }

    /// Arms an automatic power cut before the `n`th write-like call from now.
    pub fn crash_after_writes(&self, n: u64, policy: CrashPolicy) {
        let mut st = self.state();
        st.writes_seen = 0;
        st.crash_point = Some((n, policy));
    }

    pub fn is_crashed(&self) -> bool {
        self.state().crashed
    }

    /// Blocks currently held only in the volatile cache.
    pub fn cached_blocks(&self) -> u64 {
        self.state().cache.len() as u64
    }

    /// Cuts the power now.
    pub fn crash(&self, policy: CrashPolicy) -> Result<CrashReport> {
        let mut st = self.state();
        self.crash_locked(&mut st, policy)
    }

    fn crash_locked(&self, st: &mut State, policy: CrashPolicy) -> Result<CrashReport> {
        if st.crashed {
            return Err(self.crashed());
        }
        st.crashed = true;
        let cache = std::mem::take(&mut st.cache);
        let mut rng = match policy {
            CrashPolicy::Random { seed } => Some(StdRng::seed_from_u64(seed)),
            _ => None,
        };
        let mut report = CrashReport {
            cached_blocks: cache.len() as u64,
            persisted_blocks: 0,
        };
        let bs = u64::from(self.inner.block_size());
        for (block, versions) in cache {
            let pick = match (policy, rng.as_mut()) {
                (CrashPolicy::DropAll, _) => None,
                (CrashPolicy::KeepAll, _) => versions.last(),
                (CrashPolicy::Random { .. }, Some(r)) => match r.gen_range(0..=versions.len()) {
                    0 => None,
                    i => versions.get(i - 1),
                },
                (CrashPolicy::Random { .. }, None) => None,
            };
            if let Some(data) = pick {
                self.inner.write_at(block * bs, data)?;
                report.persisted_blocks += 1;
            }
        }
        self.inner.flush()?;
        tracing::info!(device = %self.name, ?policy, ?report, "simulated power cut");
        Ok(report)
    }

    /// The media, to reopen after a crash.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    fn crashed(&self) -> Error {
        Error::Crashed {
            device: self.name.clone(),
        }
    }

    /// Applies latency, crash state, the crash point and fault rules.
    fn gate(&self, op: Op, offset: u64, len: u64) -> Result<MutexGuard<'_, State>> {
        let latency = self.state().latency;
        if let Some(d) = latency {
            std::thread::sleep(d);
        }
        let mut st = self.state();
        if st.crashed {
            return Err(self.crashed());
        }
        if matches!(op, Op::Write | Op::Trim) {
            st.writes_seen += 1;
            if let Some((n, policy)) = st.crash_point {
                if st.writes_seen >= n {
                    self.crash_locked(&mut st, policy)?;
                    return Err(self.crashed());
                }
            }
        }
        let State { rules, rng, .. } = &mut *st;
        for (rule, seen, failed) in rules.iter_mut() {
            if rule.op.is_some_and(|o| o != op) {
                continue;
            }
            if let Some((a, b)) = rule.range {
                if offset >= b || offset + len.max(1) <= a {
                    continue;
                }
            }
            *seen += 1;
            if *seen <= rule.skip || rule.times.is_some_and(|t| *failed >= t) {
                continue;
            }
            if rng.gen_bool(rule.probability.clamp(0.0, 1.0)) {
                *failed += 1;
                return Err(Error::Injected {
                    device: self.name.clone(),
                    op,
                    offset,
                });
            }
        }
        Ok(st)
    }
}

impl<D: BlockDevice> BlockDevice for FaultDevice<D> {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fua: true,
            trim: true,
            ..self.inner.capabilities()
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self, Op::Read, offset, buf.len() as u64)?;
        let st = self.gate(Op::Read, offset, buf.len() as u64)?;
        self.inner.read_at(offset, buf)?;
        let bs = self.inner.block_size() as usize;
        let first = offset / bs as u64;
        let last = first + (buf.len() / bs) as u64;
        for (block, versions) in st.cache.range(first..last) {
            if let Some(v) = versions.last() {
                let at = (block - first) as usize * bs;
                buf[at..at + bs].copy_from_slice(v);
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(self, Op::Write, offset, buf.len() as u64)?;
        if self.inner.capabilities().read_only {
            return Err(Error::ReadOnly {
                device: self.name.clone(),
                op: Op::Write,
            });
        }
        let mut st = self.gate(Op::Write, offset, buf.len() as u64)?;
        let bs = self.inner.block_size() as usize;
        let first = offset / bs as u64;
        for (i, chunk) in buf.chunks(bs).enumerate() {
            st.cache
                .entry(first + i as u64)
                .or_default()
                .push(chunk.to_vec());
        }
        Ok(())
    }

    fn write_fua_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(self, Op::Write, offset, buf.len() as u64)?;
        let mut st = self.gate(Op::Write, offset, buf.len() as u64)?;
        // The FUA write supersedes cached versions of its blocks: drop them
        // so neither reads nor a crash can bring them back over it.
        let bs = self.inner.block_size() as u64;
        let first = offset / bs;
        for b in first..first + buf.len() as u64 / bs {
            st.cache.remove(&b);
        }
        self.inner.write_fua_at(offset, buf)
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.gate(Op::Flush, 0, 0)?;
        let bs = u64::from(self.inner.block_size());
        // Destage block by block; an error leaves the rest cached, as a disk
        // whose flush failed would.
        while let Some((&block, versions)) = st.cache.iter().next() {
            if let Some(v) = versions.last() {
                self.inner.write_at(block * bs, v)?;
            }
            st.cache.remove(&block);
        }
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self, Op::Trim, offset, len)?;
        // Modelled as a cached write of zeroes: the contract allows a
        // trimmed range to read as zeroes or as its old contents, and a
        // crash may keep either.
        let mut st = self.gate(Op::Trim, offset, len)?;
        let bs = u64::from(self.inner.block_size());
        let zero = vec![0u8; bs as usize];
        for b in offset / bs..(offset + len) / bs {
            st.cache.entry(b).or_default().push(zero.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileDevice, FileOptions};

    fn dev() -> (tempfile::NamedTempFile, FaultDevice<FileDevice>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 512).unwrap();
        let d = FileDevice::open(f.path(), FileOptions::default()).unwrap();
        (f, FaultDevice::new(d, 1))
    }

    #[test]
    fn unflushed_writes_are_visible_then_lost_on_drop_all() {
        let (_f, d) = dev();
        d.write_at(0, &[1u8; 512]).unwrap();
        d.flush().unwrap();
        d.write_at(0, &[2u8; 512]).unwrap();
        let mut b = [0u8; 512];
        d.read_at(0, &mut b).unwrap();
        assert_eq!(b, [2u8; 512]);
        d.crash(CrashPolicy::DropAll).unwrap();
        assert!(matches!(d.read_at(0, &mut b), Err(Error::Crashed { .. })));
        d.inner().read_at(0, &mut b).unwrap();
        assert_eq!(b, [1u8; 512]);
    }

    #[test]
    fn fua_write_is_durable_and_supersedes_cache() {
        let (_f, d) = dev();
        d.write_at(512, &[3u8; 512]).unwrap();
        d.write_fua_at(512, &[4u8; 512]).unwrap();
        d.crash(CrashPolicy::KeepAll).unwrap();
        let mut b = [0u8; 512];
        d.inner().read_at(512, &mut b).unwrap();
        assert_eq!(b, [4u8; 512]);
    }

    #[test]
    fn rules_inject_errors_and_crash_points_fire() {
        let (_f, d) = dev();
        d.add_rule(FaultRule::once(Op::Flush));
        assert!(matches!(
            d.flush(),
            Err(Error::Injected { op: Op::Flush, .. })
        ));
        d.flush().unwrap();
        d.crash_after_writes(2, CrashPolicy::DropAll);
        d.write_at(0, &[1u8; 512]).unwrap();
        assert!(matches!(
            d.write_at(0, &[1u8; 512]),
            Err(Error::Crashed { .. })
        ));
        assert!(d.is_crashed());
    }

    #[test]
    fn latency_is_added_to_every_call() {
        let (_f, d) = dev();
        d.set_latency(Some(Duration::from_millis(30)));
        let started = std::time::Instant::now();
        d.write_at(0, &[1u8; 512]).unwrap();
        d.flush().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
