//! Fencing: keeping a node that may no longer write away from the shared
//! disk.
//!
//! Owns: this node's own I/O gate ([`GatedDevice`], shut when the lock
//! manager says the node lost its lease, so nothing more reaches the disk
//! from here), the NBD client id under which the server knows this mount
//! ([`client_id`]), and asking the `rdlmfs-nbd` server to refuse a dead
//! node's I/O ([`fence_at_server`]). May not touch: when a node counts as
//! dead (the lock manager decides) or what recovery does next
//! (`failover.rs`).
//!
//! Two fences, because either alone has a gap. The server fence stops a
//! node that is partitioned but still running, whatever it believes; it
//! needs a server that knows client ids. Self-fencing works with any
//! server but only as well as the node's own clock: the lock manager
//! commits a view without a node only after that node's lease ran out, and
//! the node shuts its gate when it notices, so a survivor replays only
//! once the dead node's writes have stopped.

use blockdev::{BlockDevice, Capabilities, Error as DevError, Result as DevResult};
use rdlm::api::LeaseWatch;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The NBD client id of one incarnation of a node. A new incarnation (a
/// remount) gets a new id, so a fenced one never needs to be unfenced.
pub fn client_id(cluster: &str, node: u32, incarnation: u64) -> String {
    format!("{cluster}/node{node}/{incarnation}")
}

/// Asks the `rdlmfs-nbd` server whose admin socket is `admin` to refuse
/// every I/O of `client`; returns once none is in progress.
pub fn fence_at_server(admin: &Path, client: &str) -> Result<(), String> {
    blockdev::nbd::server::admin_request(admin, &format!("fence {client}"))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "fencing client {client:?} at the NBD server's admin socket {}: {e}",
                admin.display()
            )
        })
}

/// A device whose I/O stops for good once [`GatedDevice::shut`] is called
/// or the node's lease runs out, whichever comes first.
pub struct GatedDevice {
    inner: Arc<dyn BlockDevice>,
    shut: AtomicBool,
    lease: Option<LeaseWatch>,
}

impl GatedDevice {
    /// `lease`: the lock manager's view of this node's lease, checked
    /// before every I/O and every operation (a process stopped past its
    /// lease must not act on anything when it resumes, not even once
    /// before the lock manager's own thread notices).
    pub fn new(inner: Arc<dyn BlockDevice>, lease: Option<LeaseWatch>) -> Arc<GatedDevice> {
        Arc::new(GatedDevice {
            inner,
            shut: AtomicBool::new(false),
            lease,
        })
    }

    /// No I/O from now on; every call fails as fenced. I/O already inside
    /// the device finishes (it started while the lease was valid).
    pub fn shut(&self, reason: &str) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            device = self.inner.name(),
            reason,
            "fenced: this node does no more I/O to the shared disk; remount"
        );
    }

    pub fn is_shut(&self) -> bool {
        if self.shut.load(Ordering::SeqCst) {
            return true;
        }
        if self.lease.as_ref().is_some_and(LeaseWatch::expired) {
            self.shut("this node's cluster lease ran out");
            return true;
        }
        false
    }

    fn gate(&self) -> DevResult<()> {
        if self.is_shut() {
            return Err(DevError::Fenced {
                device: self.inner.name().to_string(),
            });
        }
        Ok(())
    }
}

impl BlockDevice for GatedDevice {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        self.gate()?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> DevResult<()> {
        self.gate()?;
        self.inner.write_at(offset, buf)
    }
    fn write_fua_at(&self, offset: u64, buf: &[u8]) -> DevResult<()> {
        self.gate()?;
        self.inner.write_fua_at(offset, buf)
    }
    fn flush(&self) -> DevResult<()> {
        self.gate()?;
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> DevResult<()> {
        self.gate()?;
        self.inner.trim(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::file::{FileDevice, FileOptions};

    #[test]
    fn a_shut_gate_refuses_every_io() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let dev: Arc<dyn BlockDevice> =
            Arc::new(FileDevice::open(&p, FileOptions::default()).unwrap());
        let g = GatedDevice::new(dev, None);
        let bs = g.block_size() as usize;
        g.write_at(0, &vec![7; bs]).unwrap();
        g.shut("test");
        assert!(matches!(
            g.write_at(0, &vec![8; bs]),
            Err(DevError::Fenced { .. })
        ));
        let mut buf = vec![0; bs];
        assert!(g.read_at(0, &mut buf).is_err());
        assert!(g.flush().is_err());
        assert_eq!(std::fs::read(&p).unwrap()[0], 7);
    }
}
