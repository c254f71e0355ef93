//! The NBD wire format: constants, and total encoders/decoders for the
//! handshake and transmission messages. No I/O lives here; the client and
//! server read fixed-size headers from their sockets and hand the bytes to
//! these functions, which return an error for anything malformed.
//!
//! Reference: the NBD protocol document (`doc/proto.md` of the nbd project).
//! rdlmfs speaks the fixed newstyle handshake, `NBD_OPT_GO`/`NBD_OPT_INFO`
//! with `NBD_INFO_EXPORT` and `NBD_INFO_BLOCK_SIZE`, the `NBD_OPT_EXPORT_NAME`
//! fallback, simple replies only (no structured replies), and the commands
//! READ, WRITE, DISC, FLUSH, TRIM with the FUA flag.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// rdlmfs extension: the client names itself (a UTF-8 id, 1..=255 bytes) so
/// the server can fence it. Servers that do not know it answer
/// `NBD_REP_ERR_UNSUP` as the fixed newstyle handshake requires, and the
/// client carries on without fencing. The number is outside the range the
/// protocol document has assigned.
pub const OPT_RDLMFS_CLIENT_ID: u32 = 0x5244_4c4d; // "RDLM"

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands and command flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// Largest payload either side sends or accepts in one request (the protocol
/// document's recommended ceiling).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload or option reply accepted during the handshake.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest export name (the protocol document's limit).
pub const MAX_EXPORT_NAME: usize = 4096;
/// Longest client id for `OPT_RDLMFS_CLIENT_ID`.
pub const MAX_CLIENT_ID: usize = 255;

pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const OPTION_HEADER_LEN: usize = 16;
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

/// Why bytes from the peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic {found:#x} in {what} (expected {expected:#x})")]
    BadMagic {
        what: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("{what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub cmd: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
        let magic = be32(&b[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request",
                found: magic.into(),
                expected: REQUEST_MAGIC.into(),
            });
        }
        Ok(Request {
            flags: be16(&b[4..6]),
            cmd: be16(&b[6..8]),
            handle: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            len: be32(&b[24..28]),
        })
    }
}

/// A simple reply header (the payload of a successful READ follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub handle: u64,
}

impl SimpleReply {
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut b = [0u8; SIMPLE_REPLY_LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<SimpleReply, ProtoError> {
        let magic = be32(&b[0..4]);
        if magic == STRUCTURED_REPLY_MAGIC {
            return Err(ProtoError::Malformed {
                what: "reply",
                detail: "structured reply received but never negotiated".into(),
            });
        }
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "reply",
                found: magic.into(),
                expected: SIMPLE_REPLY_MAGIC.into(),
            });
        }
        Ok(SimpleReply {
            error: be32(&b[4..8]),
            handle: be64(&b[8..16]),
        })
    }
}

/// The header of an option the client sends: `IHAVEOPT`, option, length.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Decodes an option header; returns (option, payload length).
pub fn decode_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<(u32, u32), ProtoError> {
    let magic = be64(&b[0..8]);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "option",
            found: magic,
            expected: IHAVEOPT,
        });
    }
    Ok((be32(&b[8..12]), be32(&b[12..16])))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply: u32,
    pub len: u32,
}

pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    v.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub fn decode_option_reply_header(
    b: &[u8; OPTION_REPLY_HEADER_LEN],
) -> Result<OptionReplyHeader, ProtoError> {
    let magic = be64(&b[0..8]);
    if magic != OPTION_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "option reply",
            found: magic,
            expected: OPTION_REPLY_MAGIC,
        });
    }
    let h = OptionReplyHeader {
        option: be32(&b[8..12]),
        reply: be32(&b[12..16]),
        len: be32(&b[16..20]),
    };
    if h.len > MAX_OPTION_LEN {
        return Err(ProtoError::Malformed {
            what: "option reply",
            detail: format!("length {} exceeds the {MAX_OPTION_LEN}-byte limit", h.len),
        });
    }
    Ok(h)
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

impl InfoRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v.extend_from_slice(&(self.infos.len() as u16).to_be_bytes());
        for i in &self.infos {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<InfoRequest, ProtoError> {
        let bad = |detail: String| ProtoError::Malformed {
            what: "NBD_OPT_GO/INFO payload",
            detail,
        };
        if b.len() < 6 {
            return Err(bad(format!("{} bytes is too short", b.len())));
        }
        let name_len = be32(&b[0..4]) as usize;
        if name_len > MAX_EXPORT_NAME || 4 + name_len + 2 > b.len() {
            return Err(bad(format!("export name length {name_len} does not fit")));
        }
        let name = std::str::from_utf8(&b[4..4 + name_len])
            .map_err(|_| bad("export name is not UTF-8".into()))?
            .to_string();
        let rest = &b[4 + name_len..];
        let n = be16(&rest[0..2]) as usize;
        if rest.len() != 2 + 2 * n {
            return Err(bad(format!(
                "{n} info requests need {} bytes, got {}",
                2 * n,
                rest.len() - 2
            )));
        }
        let infos = (0..n).map(|i| be16(&rest[2 + 2 * i..4 + 2 * i])).collect();
        Ok(InfoRequest { name, infos })
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    BlockSize { min: u32, preferred: u32, max: u32 },
    Other(u16),
}

impl Info {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        match *self {
            Info::Export { size, flags } => {
                v.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                v.extend_from_slice(&size.to_be_bytes());
                v.extend_from_slice(&flags.to_be_bytes());
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            } => {
                v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                v.extend_from_slice(&min.to_be_bytes());
                v.extend_from_slice(&preferred.to_be_bytes());
                v.extend_from_slice(&max.to_be_bytes());
            }
            Info::Other(t) => v.extend_from_slice(&t.to_be_bytes()),
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<Info, ProtoError> {
        let bad = |detail: String| ProtoError::Malformed {
            what: "NBD_REP_INFO",
            detail,
        };
        if b.len() < 2 {
            return Err(bad("missing info type".into()));
        }
        match be16(&b[0..2]) {
            INFO_EXPORT if b.len() == 12 => Ok(Info::Export {
                size: be64(&b[2..10]),
                flags: be16(&b[10..12]),
            }),
            INFO_BLOCK_SIZE if b.len() == 14 => {
                let (min, preferred, max) = (be32(&b[2..6]), be32(&b[6..10]), be32(&b[10..14]));
                // The protocol document: min and preferred are powers of two,
                // preferred >= min, max a multiple of min (or 0xffffffff).
                let sane = min.is_power_of_two()
                    && min <= 65536
                    && preferred.is_power_of_two()
                    && preferred >= min
                    && max >= min
                    && (max % min == 0 || max == u32::MAX);
                if !sane {
                    return Err(bad(format!(
                        "block size constraints min {min} preferred {preferred} max {max} are inconsistent"
                    )));
                }
                Ok(Info::BlockSize {
                    min,
                    preferred,
                    max,
                })
            }
            t @ (INFO_EXPORT | INFO_BLOCK_SIZE) => {
                Err(bad(format!("info type {t} with wrong length {}", b.len())))
            }
            t => Ok(Info::Other(t)),
        }
    }
}

/// Names an option reply type for error messages.
pub fn rep_name(rep: u32) -> &'static str {
    match rep {
        REP_ACK => "NBD_REP_ACK",
        REP_SERVER => "NBD_REP_SERVER",
        REP_INFO => "NBD_REP_INFO",
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP (option not supported)",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY (refused by server policy)",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID (invalid option)",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM (not available on this platform)",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD (server requires TLS)",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN (server is shutting down)",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        _ => "unknown reply type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_roundtrip() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            cmd: CMD_WRITE,
            handle: 0xdead_beef,
            offset: 4096,
            len: 512,
        };
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn block_size_info_is_validated() {
        let ok = Info::BlockSize {
            min: 512,
            preferred: 4096,
            max: 32 << 20,
        };
        assert_eq!(Info::decode(&ok.encode()).unwrap(), ok);
        let bad = Info::BlockSize {
            min: 3,
            preferred: 4096,
            max: 1 << 20,
        };
        assert!(Info::decode(&bad.encode()).is_err());
    }

    proptest! {
        // Decoders are total: any bytes give a value or an error, never a panic.
        #[test]
        fn decoders_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = InfoRequest::decode(&bytes);
            let _ = Info::decode(&bytes);
            if bytes.len() >= REQUEST_LEN {
                let mut a = [0u8; REQUEST_LEN];
                a.copy_from_slice(&bytes[..REQUEST_LEN]);
                let _ = Request::decode(&a);
            }
            if bytes.len() >= OPTION_REPLY_HEADER_LEN {
                let mut a = [0u8; OPTION_REPLY_HEADER_LEN];
                a.copy_from_slice(&bytes[..OPTION_REPLY_HEADER_LEN]);
                let _ = decode_option_reply_header(&a);
            }
        }

        #[test]
        fn info_request_roundtrip(name in "[a-z0-9/]{0,40}", infos in proptest::collection::vec(any::<u16>(), 0..8)) {
            let r = InfoRequest { name, infos };
            prop_assert_eq!(InfoRequest::decode(&r.encode()).unwrap(), r);
        }
    }
}
