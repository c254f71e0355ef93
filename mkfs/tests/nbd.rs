//! mkfs.rdlmfs through NBD: the in-process rdlmfs-nbd server exports a
//! temporary image, the binary formats nbd://127.0.0.1:PORT/, and the image
//! file then decodes completely.

mod common;

use blockdev::nbd::server::{self, ServerConfig};
use blockdev::{BlockDevice, FileDevice, FileOptions};
use common::*;
use rdlmfs_mkfs::verify::verify;
use std::net::SocketAddr;
use std::sync::Arc;

fn serve(p: &std::path::Path) -> server::ServerHandle {
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(p, FileOptions::default()).expect("open image"));
    server::start(
        dev,
        ServerConfig {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            handshake_timeout: std::time::Duration::from_secs(10),
            ..ServerConfig::default()
        },
    )
    .expect("start NBD server")
}

#[test]
fn formats_over_nbd() {
    let s = Scratch::new("nbd");
    for (bs, size) in [("4096", 256 * MIB), ("512", 64 * MIB)] {
        let p = s.image(&format!("nbd{bs}.img"), size);
        let srv = serve(&p);
        let port = srv.tcp_addr().expect("bound address").port();
        let uri = format!("nbd://127.0.0.1:{port}/");
        let out = mkfs(
            &[
                "-b",
                bs,
                "-j",
                "2",
                "-p",
                "lock_dlm",
                "-t",
                "nbdc:nbdfs",
                &uri,
            ],
            T,
        );
        assert_ok(&out, "mkfs over NBD");
        assert!(text(&out).0.contains(&uri), "{}", text(&out).0);
        // A second run through NBD sees the file system it just made.
        let out = mkfs(&["-n", "-p", "lock_nolock", &uri], T);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out).1.contains("rdlmfs file system"),
            "{}",
            text(&out).1
        );
        srv.shutdown();

        let dev = FileDevice::open(&p, FileOptions::default()).expect("open image");
        let v = verify(&dev).unwrap_or_else(|e| panic!("verify after NBD mkfs: {e}"));
        assert_eq!(v.superblock.block_size.to_string(), bs);
        assert_eq!(v.superblock.lock_table, "nbdc:nbdfs");
        assert_eq!(v.journals.len(), 2);
        assert_eq!(v.root_entries.len(), 2);
    }
}
