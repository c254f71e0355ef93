//! Helpers shared by the format's unit and property tests: a geometry, and
//! the two hostile-input checks every block structure must pass.

use super::block::{self, decode_block, MetaBlock};
use super::Geometry;
use std::fmt::Debug;

/// A geometry large enough for any address the tests use.
pub fn geo(bs: u32) -> Geometry {
    Geometry {
        block_size: bs,
        fs_id: 0x5eed_f00d_cafe_0001,
        total_blocks: 1 << 40,
        hash_key: *b"0123456789abcdef",
    }
}

/// For an encoded block: flipping any single bit must give an error, never
/// a value (the CRC32C catches every single-bit error). To keep tests fast
/// on 64 KiB blocks, flips `stride`-spaced bits plus the whole header.
pub fn assert_bit_flips_fail<T: MetaBlock + Debug>(
    g: &Geometry,
    blkno: u64,
    enc: &[u8],
    stride: usize,
) {
    let bits = enc.len() * 8;
    let mut positions: Vec<usize> = (0..block::HEADER_SIZE * 8).collect();
    positions.extend((block::HEADER_SIZE * 8..bits).step_by(stride.max(1)));
    let mut buf = enc.to_vec();
    for p in positions {
        buf[p / 8] ^= 1 << (p % 8);
        let r = decode_block::<T>(g, blkno, &buf);
        assert!(r.is_err(), "bit {p} flipped still decoded: {r:?}");
        buf[p / 8] ^= 1 << (p % 8);
    }
}

/// Random bytes with a correct header and checksum: decoding must not
/// panic (it may succeed or fail). Returns whether it decoded.
pub fn decode_sealed_garbage<T: MetaBlock + Debug>(g: &Geometry, blkno: u64, body: &[u8]) -> bool {
    let mut buf = vec![0u8; g.bs()];
    let n = body.len().min(buf.len() - block::HEADER_SIZE);
    buf[block::HEADER_SIZE..block::HEADER_SIZE + n].copy_from_slice(&body[..n]);
    block::write_header(&mut buf, T::TYPE, T::VERSION, blkno, g.fs_id);
    block::seal(&mut buf);
    decode_block::<T>(g, blkno, &buf).is_ok()
}

/// Pure garbage (no header fixing): must be an error.
pub fn assert_garbage_fails<T: MetaBlock + Debug>(g: &Geometry, blkno: u64, bytes: &[u8]) {
    let mut buf = vec![0u8; g.bs()];
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    let r = decode_block::<T>(g, blkno, &buf);
    assert!(r.is_err(), "garbage decoded: {r:?}");
}
