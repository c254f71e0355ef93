//! Recognising what a device already holds, so mkfs does not destroy a file
//! system by accident.
//!
//! Owns: the list of signatures and where they live. May not touch: the
//! device's contents (it only reads the first 64 KiB + 4 KiB).
//!
//! Known: rdlmfs, GFS2, ext2/3/4, XFS, btrfs, Linux swap, LUKS, a GPT, and an
//! MBR/boot sector (0x55AA at byte 510). This is a guard against mistakes,
//! not a complete blkid: anything it does not know is overwritten.

use blockdev::BlockDevice;
use rdlmfs::format::superblock::{uuid_string, Superblock};
use rdlmfs::format::SB_OFFSET;

/// Bytes read from the start of the device.
const PROBE_LEN: u64 = SB_OFFSET + 4096;

/// Describes the file system or signature found on `dev`, if any.
pub fn detect(dev: &dyn BlockDevice) -> Result<Option<String>, blockdev::Error> {
    let dbs = u64::from(dev.block_size().max(1));
    let len = PROBE_LEN.min(dev.size()) / dbs * dbs;
    if len == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    dev.read_at(0, &mut buf)?;
    Ok(identify(&buf, dev))
}

fn at(buf: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    buf.get(off..off + len)
}

/// Identifies the start of a device (`buf` = its first bytes).
fn identify(buf: &[u8], dev: &dyn BlockDevice) -> Option<String> {
    let sb = SB_OFFSET as usize;
    if let Some(first) = at(buf, sb, 512) {
        if let Ok(bs) = Superblock::probe(first) {
            // Read the whole superblock to describe it; a damaged one is
            // still an rdlmfs that someone may want back.
            let mut whole = vec![0u8; bs as usize];
            let desc = match dev
                .read_at(SB_OFFSET, &mut whole)
                .ok()
                .and_then(|_| Superblock::decode(&whole).ok())
            {
                Some(s) => format!(
                    "an rdlmfs file system (uuid {}, label {:?}, lock table {:?})",
                    uuid_string(&s.uuid),
                    s.label,
                    s.lock_table
                ),
                None => "an rdlmfs superblock (damaged or incomplete)".to_string(),
            };
            return Some(desc);
        }
        if first[..4] == [0x01, 0x16, 0x19, 0x70] && first[4..8] == [0, 0, 0, 1] {
            return Some("a GFS2 file system".into());
        }
    }
    if at(buf, sb + 64, 8) == Some(b"_BHRfS_M") {
        return Some("a btrfs file system".into());
    }
    if at(buf, 0, 4) == Some(b"XFSB") {
        return Some("an XFS file system".into());
    }
    if at(buf, 0, 6) == Some(b"LUKS\xba\xbe") {
        return Some("a LUKS encrypted volume".into());
    }
    if at(buf, 1080, 2) == Some(&[0x53, 0xef]) {
        return Some("an ext2/ext3/ext4 file system".into());
    }
    if matches!(at(buf, 4086, 10), Some(b"SWAPSPACE2") | Some(b"SWAP-SPACE")) {
        return Some("a Linux swap area".into());
    }
    if at(buf, 512, 8) == Some(b"EFI PART") {
        return Some("a GPT partition table".into());
    }
    if at(buf, 510, 2) == Some(&[0x55, 0xaa]) {
        return Some("a partition table or boot sector (0x55AA signature)".into());
    }
    None
}
