//! `rdlmfs status MOUNTPOINT`: what a mount process is doing — cluster
//! members and quorum, journal slots, the glocks it holds and in which
//! modes, cache hit rates.
//!
//! Owns: the status socket of a mount (a Unix socket under
//! [`SOCKET_DIR`], named by the mount's device number, so any spelling of
//! the mountpoint finds it), the report's text, and the client side. May
//! not touch: anything the report reads (it only reads). Finding the socket
//! reads `/proc/self/mountinfo`, never the mount itself, so `status` answers
//! even when the file system is stuck waiting for the cluster.

use crate::fence::GatedDevice;
use crate::glock::Glocks;
use crate::mount::Fs;
use crate::plock::Plocks;
use crate::process::unescape_mount_field;
use rdlm::api::BlockingDlm;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// Where mount processes put their status sockets.
pub const SOCKET_DIR: &str = "/run/rdlmfs";

/// How long the report waits for the file system (busy with a long
/// operation) before it reports without its numbers.
const FS_WAIT: Duration = Duration::from_secs(1);

/// How long a client waits for the report.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The device number ("major:minor") of the mount at `mountpoint`, from
/// /proc/self/mountinfo.
pub fn mount_device(mountpoint: &Path) -> Result<String, String> {
    let want = mountpoint
        .canonicalize()
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // Fields: id parent major:minor root mountpoint options ... - fstype source
    let mut found = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && unescape_mount_field(f[4]) == want.as_os_str().as_bytes() {
            // The last mount at a path is the one on top.
            found = Some(f[2].to_string());
        }
    }
    found.ok_or_else(|| format!("nothing is mounted at {}", want.display()))
}

/// The status socket of the mount with device number `dev`.
pub fn socket_path(dev: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{}.sock", dev.replace(':', "-")))
}

/// Asks the mount process serving `mountpoint` for its report.
pub fn query(mountpoint: &Path) -> Result<String, String> {
    let dev = mount_device(mountpoint)?;
    let path = socket_path(&dev);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        format!(
            "{}: no rdlmfs status socket at {} ({e}); is it an rdlmfs mount?",
            mountpoint.display(),
            path.display()
        )
    })?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| format!("status socket: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("reading the status of {}: {e}", mountpoint.display()))?;
    Ok(out)
}

/// What the report reads.
pub struct Source {
    pub fs: Arc<Mutex<Option<Fs>>>,
    pub glocks: Glocks,
    pub mountpoint: PathBuf,
    pub device: String,
    /// For a cluster mount.
    pub cluster: Option<ClusterSource>,
}

pub struct ClusterSource {
    pub dlm: BlockingDlm,
    pub lockspace: String,
    pub jid: u32,
    pub plocks: Arc<Plocks>,
    pub gate: Arc<GatedDevice>,
    /// Where the kernel has this mount's directories (`dcache.rs`).
    pub dcache: Option<Arc<crate::dcache::Dcache>>,
}

fn pct(hits: u64, misses: u64) -> String {
    let all = hits + misses;
    if all == 0 {
        "-".into()
    } else {
        format!("{:.1}%", hits as f64 * 100.0 / all as f64)
    }
}

impl Source {
    /// The report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "mount:    {} on {}",
            self.device,
            self.mountpoint.display()
        );
        let _ = writeln!(o, "locking:  {}", self.glocks.protocol());
        if let Some(c) = &self.cluster {
            self.render_cluster(c, &mut o);
        }
        let gs = self.glocks.stats();
        let list = self.glocks.list();
        let _ = writeln!(
            o,
            "glocks:   {} held; {} requests answered from held glocks, {} granted by the lock manager, {} waits, {} given up for other nodes, {} released, {} given up to stay under the limit",
            list.len(),
            gs.cached,
            gs.acquired,
            gs.waits,
            gs.demoted.saturating_sub(gs.shrunk),
            gs.released,
            gs.shrunk
        );
        if gs.cached + gs.acquired > 0 {
            let _ = writeln!(
                o,
                "          glock hit rate {}",
                pct(gs.cached, gs.acquired)
            );
        }
        for (name, mode) in &list {
            let _ = writeln!(o, "          {:<24} {mode:?}", name.to_string());
        }
        let deadline = Instant::now() + FS_WAIT;
        let stats = loop {
            match self.fs.try_lock() {
                Ok(g) => break g.as_ref().map(Fs::stats),
                Err(TryLockError::Poisoned(p)) => break p.into_inner().as_ref().map(Fs::stats),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::WouldBlock) => {
                    let _ = writeln!(o, "caches:   (the file system is busy; no numbers)");
                    return o;
                }
            }
        };
        match stats {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "caches:   metadata blocks {} cached, hit rate {} ({} hits, {} misses, {} evicted); {} inodes cached",
                    s.cached_blocks,
                    pct(s.cache.hits, s.cache.misses),
                    s.cache.hits,
                    s.cache.misses,
                    s.cache.evictions,
                    s.cached_inodes
                );
                let _ = writeln!(
                    o,
                    "journal:  {} commits, {} blocks logged, {} checkpoints",
                    s.log.commits, s.log.blocks, s.log.checkpoints
                );
                if self.cluster.is_some() {
                    let _ = writeln!(
                        o,
                        "LVBs:     {} inodes kept across a re-grant, {} stats answered from an LVB, {} dinodes read after a grant",
                        s.lvb.kept, s.lvb.attrs, s.lvb.read
                    );
                    let _ = writeln!(
                        o,
                        "rgrps:    {} kept across a re-grant, {} read, {} passed over as full without loading",
                        s.rgrp_lvb.kept, s.rgrp_lvb.read, s.rgrp_lvb.skipped_full
                    );
                }
                if let Some(d) = self.cluster.as_ref().and_then(|c| c.dcache.as_ref()) {
                    let d = d.stats();
                    let _ = writeln!(
                        o,
                        "dentries: {} moved directories let go of at their old place, {} not within the wait",
                        d.unaliased, d.timed_out
                    );
                }
            }
            None => {
                let _ = writeln!(o, "caches:   (unmounting)");
            }
        }
        o
    }

    fn render_cluster(&self, c: &ClusterSource, o: &mut String) {
        if c.gate.is_shut() {
            let _ = writeln!(
                o,
                "FENCED:   this node lost the cluster; every operation fails until it is remounted"
            );
        }
        let _ = writeln!(
            o,
            "lockspace: {} (this node's journal: {})",
            c.lockspace, c.jid
        );
        match c.dlm.status() {
            Ok(st) => {
                let _ = writeln!(
                    o,
                    "node:     {} (incarnation {:#x}), slot {}, {}",
                    st.node,
                    st.incarnation,
                    st.slot.map_or("-".into(), |s| s.to_string()),
                    if st.quorate { "quorate" } else { "NOT quorate" }
                );
                if let Some(v) = &st.view {
                    let _ = writeln!(o, "members:  generation {}", v.generation);
                    for m in &v.members {
                        let _ = writeln!(
                            o,
                            "          node {:<3} slot {:<3} journal {}",
                            m.id,
                            m.slot,
                            m.slot.saturating_sub(1)
                        );
                    }
                }
                if let Some(ls) = st.lockspaces.iter().find(|l| l.name == c.lockspace) {
                    let _ = writeln!(
                        o,
                        "          lockspace members {:?}{}, {} locks here, {} resources mastered here",
                        ls.members,
                        if ls.recovering { " (recovering)" } else { "" },
                        ls.locks,
                        ls.resources
                    );
                    for (node, inc) in &ls.pending_recovery {
                        let _ = writeln!(
                            o,
                            "          waiting for the recovery of node {node} (incarnation {inc:#x})"
                        );
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(o, "node:     (lock manager status: {e})");
            }
        }
        let _ = writeln!(
            o,
            "locks:    {} record lock ranges (fcntl and flock) held",
            c.plocks.held()
        );
    }

    /// Serves the report on the status socket until the process ends.
    /// Returns the socket path (removed by [`remove_socket`]).
    pub fn serve(self) -> Result<PathBuf, String> {
        let dev = mount_device(&self.mountpoint)?;
        std::fs::create_dir_all(SOCKET_DIR).map_err(|e| format!("{SOCKET_DIR}: {e}"))?;
        let path = socket_path(&dev);
        // A socket left by a process that died at this device number.
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::thread::Builder::new()
            .name("rdlmfs-status".into())
            .spawn(move || {
                for conn in l.incoming() {
                    match conn {
                        Ok(mut s) => {
                            let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
                            let _ = s.write_all(self.render().as_bytes());
                        }
                        Err(e) => tracing::warn!(error = %e, "status socket"),
                    }
                }
            })
            .map_err(|e| format!("status thread: {e}"))?;
        Ok(path)
    }
}

/// Removes a status socket at unmount.
pub fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_come_from_the_device_number() {
        assert_eq!(socket_path("0:52"), Path::new(SOCKET_DIR).join("0-52.sock"));
    }
}
