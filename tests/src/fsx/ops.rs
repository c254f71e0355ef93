//! The operations of rdlmfs-fsx, their text form in an operation log, and
//! their effect on the shadow copy. No I/O here: `run.rs` performs them.
//!
//! Log line format, one operation per line (blank lines and `#` comments
//! ignored):
//!
//! ```text
//! <op number> <path index> <name> <arguments...>
//! 17 1 write 4096 1000
//! 18 0 truncate 5000
//! 19 0 copy 0 70000 512
//! ```

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read { off: u64, len: u64 },
    Write { off: u64, len: u64 },
    MapRead { off: u64, len: u64 },
    MapWrite { off: u64, len: u64 },
    Truncate { size: u64 },
    Fallocate { off: u64, len: u64, keep_size: bool },
    PunchHole { off: u64, len: u64 },
    ZeroRange { off: u64, len: u64, keep_size: bool },
    Copy { src: u64, dst: u64, len: u64 },
    Fsync,
    Fdatasync,
    Reopen,
    SeekData { off: u64 },
    SeekHole { off: u64 },
}

/// One operation as it appears in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedOp {
    pub num: u64,
    pub path: usize,
    pub op: Op,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::MapRead { .. } => "mapread",
            Op::MapWrite { .. } => "mapwrite",
            Op::Truncate { .. } => "truncate",
            Op::Fallocate { .. } => "fallocate",
            Op::PunchHole { .. } => "punch",
            Op::ZeroRange { .. } => "zero",
            Op::Copy { .. } => "copy",
            Op::Fsync => "fsync",
            Op::Fdatasync => "fdatasync",
            Op::Reopen => "reopen",
            Op::SeekData { .. } => "seekdata",
            Op::SeekHole { .. } => "seekhole",
        }
    }

    /// Whether the operation may change the file's contents or size.
    pub fn modifies(&self) -> bool {
        matches!(
            self,
            Op::Write { .. }
                | Op::MapWrite { .. }
                | Op::Truncate { .. }
                | Op::Fallocate { .. }
                | Op::PunchHole { .. }
                | Op::ZeroRange { .. }
                | Op::Copy { .. }
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.name();
        match *self {
            Op::Read { off, len }
            | Op::Write { off, len }
            | Op::MapRead { off, len }
            | Op::MapWrite { off, len }
            | Op::PunchHole { off, len } => write!(f, "{n} {off} {len}"),
            Op::Truncate { size } => write!(f, "{n} {size}"),
            Op::Fallocate {
                off,
                len,
                keep_size,
            }
            | Op::ZeroRange {
                off,
                len,
                keep_size,
            } => write!(
                f,
                "{n} {off} {len} {}",
                if keep_size { "keep" } else { "extend" }
            ),
            Op::Copy { src, dst, len } => write!(f, "{n} {src} {dst} {len}"),
            Op::SeekData { off } | Op::SeekHole { off } => write!(f, "{n} {off}"),
            Op::Fsync | Op::Fdatasync | Op::Reopen => write!(f, "{n}"),
        }
    }
}

impl fmt::Display for LoggedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.num, self.path, self.op)
    }
}

/// Parses one log line; `None` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<LoggedOp>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        w.get(i)
            .ok_or_else(|| format!("missing argument {i} in {line:?}"))?
            .parse::<u64>()
            .map_err(|e| format!("bad number {:?} in {line:?}: {e}", w[i]))
    };
    let keep = |i: usize| -> Result<bool, String> {
        match w.get(i) {
            Some(&"keep") => Ok(true),
            Some(&"extend") => Ok(false),
            other => Err(format!("expected keep|extend, got {other:?} in {line:?}")),
        }
    };
    let arity = |n: usize| -> Result<(), String> {
        if w.len() == n {
            Ok(())
        } else {
            Err(format!("{:?} takes {} arguments: {line:?}", w[2], n - 3))
        }
    };
    if w.len() < 3 {
        return Err(format!("expected '<num> <path> <op> [args]', got {line:?}"));
    }
    let path = usize::try_from(num(1)?).map_err(|e| e.to_string())?;
    let op = match w[2] {
        "read" | "write" | "mapread" | "mapwrite" | "punch" => {
            arity(5)?;
            let (off, len) = (num(3)?, num(4)?);
            match w[2] {
                "read" => Op::Read { off, len },
                "write" => Op::Write { off, len },
                "mapread" => Op::MapRead { off, len },
                "mapwrite" => Op::MapWrite { off, len },
                _ => Op::PunchHole { off, len },
            }
        }
        "truncate" => {
            arity(4)?;
            Op::Truncate { size: num(3)? }
        }
        "fallocate" | "zero" => {
            arity(6)?;
            let (off, len, keep_size) = (num(3)?, num(4)?, keep(5)?);
            if w[2] == "zero" {
                Op::ZeroRange {
                    off,
                    len,
                    keep_size,
                }
            } else {
                Op::Fallocate {
                    off,
                    len,
                    keep_size,
                }
            }
        }
        "copy" => {
            arity(6)?;
            Op::Copy {
                src: num(3)?,
                dst: num(4)?,
                len: num(5)?,
            }
        }
        "seekdata" | "seekhole" => {
            arity(4)?;
            let off = num(3)?;
            if w[2] == "seekdata" {
                Op::SeekData { off }
            } else {
                Op::SeekHole { off }
            }
        }
        "fsync" | "fdatasync" | "reopen" => {
            arity(3)?;
            match w[2] {
                "fsync" => Op::Fsync,
                "fdatasync" => Op::Fdatasync,
                _ => Op::Reopen,
            }
        }
        other => return Err(format!("unknown operation {other:?} in {line:?}")),
    };
    Ok(Some(LoggedOp {
        num: num(0)?,
        path,
        op,
    }))
}

/// The byte an operation writes at an offset: the operation number (mod
/// 256) plus a fixed per-offset byte, so a wrong byte can be traced back to
/// the operation that wrote it.
pub fn data_byte(opnum: u64, salt: &[u8], offset: u64) -> u8 {
    let s = salt[(offset % salt.len() as u64) as usize];
    (opnum as u8).wrapping_add(s)
}

/// Which operation (mod 256) wrote `byte` at `offset`, for failure reports.
pub fn op_of_byte(byte: u8, salt: &[u8], offset: u64) -> u8 {
    byte.wrapping_sub(salt[(offset % salt.len() as u64) as usize])
}

/// The in-memory copy of what the file must contain.
#[derive(Debug, Clone, Default)]
pub struct Shadow {
    pub data: Vec<u8>,
}

impl Shadow {
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn resize(&mut self, size: u64) {
        self.data.resize(size as usize, 0);
    }

    pub fn write(&mut self, off: u64, bytes: &[u8]) {
        let end = off as usize + bytes.len();
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[off as usize..end].copy_from_slice(bytes);
    }

    pub fn zero(&mut self, off: u64, len: u64) {
        let end = ((off + len) as usize).min(self.data.len());
        if (off as usize) < end {
            self.data[off as usize..end].fill(0);
        }
    }

    /// First offset at or after `off` holding a non-zero byte.
    pub fn next_nonzero(&self, off: u64) -> Option<u64> {
        self.data
            .get(off as usize..)?
            .iter()
            .position(|&b| b != 0)
            .map(|p| off + p as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_roundtrip() {
        let ops = [
            Op::Read { off: 1, len: 2 },
            Op::Write { off: 3, len: 4 },
            Op::MapRead { off: 5, len: 6 },
            Op::MapWrite { off: 7, len: 8 },
            Op::Truncate { size: 9 },
            Op::Fallocate {
                off: 1,
                len: 2,
                keep_size: true,
            },
            Op::PunchHole { off: 3, len: 4 },
            Op::ZeroRange {
                off: 5,
                len: 6,
                keep_size: false,
            },
            Op::Copy {
                src: 1,
                dst: 2,
                len: 3,
            },
            Op::Fsync,
            Op::Fdatasync,
            Op::Reopen,
            Op::SeekData { off: 4 },
            Op::SeekHole { off: 5 },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let l = LoggedOp {
                num: i as u64 + 1,
                path: i % 3,
                op,
            };
            assert_eq!(parse_line(&l.to_string()).unwrap(), Some(l));
        }
    }

    #[test]
    fn garbage_lines_are_errors() {
        for bad in [
            "x",
            "1 0",
            "1 0 write 5",
            "1 0 write a b",
            "1 0 frob 1 2",
            "1 0 zero 1 2 maybe",
            "1 0 fsync extra",
            "-1 0 fsync",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_line("# comment").unwrap(), None);
        assert_eq!(parse_line("   ").unwrap(), None);
    }

    #[test]
    fn bytes_name_their_operation() {
        let salt = [7u8, 200, 13];
        for off in 0..10 {
            assert_eq!(
                op_of_byte(data_byte(300, &salt, off), &salt, off),
                300u64 as u8
            );
        }
    }
}
