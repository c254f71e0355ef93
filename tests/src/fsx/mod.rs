//! rdlmfs-fsx: random operations on one file, checked against an in-memory
//! shadow copy after every operation (in the spirit of xfstests' fsx), through
//! one or several paths to the same file (Lustre's multi-path fsx), which is
//! how cross-node coherence of a cluster file system is tested.
//!
//! This module owns the command line ([`Args`]), the operation generator and
//! the checks; [`ops`] owns the operation set and log format; [`run`] owns
//! the system calls. It works on any mounted file system and knows nothing of
//! rdlmfs.

pub mod ops;
pub mod run;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Exit codes, distinct per kind of failure (as fsx's).
pub const EXIT_OK: i32 = 0;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_BAD_DATA: i32 = 110;
pub const EXIT_BAD_SIZE: i32 = 120;
pub const EXIT_SYSCALL: i32 = 130;
pub const EXIT_BAD_SEEK: i32 = 140;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PathChoice {
    /// Operation n goes through path n mod k.
    Rotate,
    /// Each operation picks a path at random (from the seed).
    Random,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rdlmfs-fsx",
    version,
    about = "Random file operations checked against a shadow copy, through one or several paths to one file",
    after_help = "Exit codes: 0 ok, 2 usage, 110 bad data, 120 bad size, 130 failed system call, 140 SEEK_DATA/SEEK_HOLE inconsistent.\n\
                  Example (cross-node coherence): rdlmfs-fsx -N 10000 /mnt/node1/f /mnt/node2/f /mnt/node3/f"
)]
pub struct Args {
    /// The file, and optionally more paths to the same file (one per node).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Number of operations (0 = until --duration ends or forever).
    #[arg(short = 'N', long = "ops", default_value_t = 10000)]
    pub num_ops: u64,
    /// Random seed (printed when not given).
    #[arg(short = 'S', long)]
    pub seed: Option<u64>,
    /// Maximum file length.
    #[arg(short = 'l', long = "max-len", default_value_t = 256 * 1024)]
    pub max_len: u64,
    /// Maximum size of one operation.
    #[arg(short = 'o', long = "max-op", default_value_t = 64 * 1024)]
    pub max_op: u64,
    /// Alignment of read offsets and lengths.
    #[arg(short = 'r', long = "read-align", default_value_t = 1)]
    pub read_align: u64,
    /// Alignment of write offsets and lengths.
    #[arg(short = 'w', long = "write-align", default_value_t = 1)]
    pub write_align: u64,
    /// Alignment of truncate sizes.
    #[arg(short = 't', long = "trunc-align", default_value_t = 1)]
    pub trunc_align: u64,
    /// Leave out mmap reads.
    #[arg(short = 'R', long = "no-mmap-read")]
    pub no_mmap_read: bool,
    /// Leave out mmap writes.
    #[arg(short = 'W', long = "no-mmap-write")]
    pub no_mmap_write: bool,
    /// Leave out fallocate.
    #[arg(short = 'F', long = "no-fallocate")]
    pub no_fallocate: bool,
    /// Leave out punch hole.
    #[arg(short = 'H', long = "no-punch")]
    pub no_punch: bool,
    /// Leave out zero range.
    #[arg(short = 'z', long = "no-zero")]
    pub no_zero: bool,
    /// Leave out copy_file_range.
    #[arg(short = 'E', long = "no-copy")]
    pub no_copy: bool,
    /// Leave out SEEK_DATA/SEEK_HOLE checks.
    #[arg(long = "no-seek")]
    pub no_seek: bool,
    /// Close and reopen the file once every N operations on average (0 = never).
    #[arg(short = 'c', long = "reopen", default_value_t = 0)]
    pub reopen_every: u64,
    /// Re-read the whole file through every path after every operation.
    #[arg(short = 'X', long = "reread")]
    pub reread: bool,
    /// How each operation picks its path.
    #[arg(short = 'I', long = "paths", value_enum, default_value_t = PathChoice::Rotate)]
    pub path_choice: PathChoice,
    /// Quiet: print only failures.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Log every operation as it runs.
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Directory for the operation log and the good/bad copies (default:
    /// the directory of the first path).
    #[arg(short = 'P', long = "log-dir")]
    pub log_dir: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// On failure, print this many of the last operations.
    #[arg(long = "show-last", default_value_t = 30)]
    pub show_last: usize,
    /// Write every operation to FILE (always also written to the log dir).
    #[arg(long = "record-ops", value_name = "FILE")]
    pub record_ops: Option<PathBuf>,
    /// Run exactly the operations in FILE instead of random ones.
    #[arg(long = "replay-ops", visible_alias = "replay", value_name = "FILE")]
    pub replay_ops: Option<PathBuf>,
}

impl Args {
    /// Checks the flags; the error says which flag and why.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, v) in [
            ("-r", self.read_align),
            ("-w", self.write_align),
            ("-t", self.trunc_align),
        ] {
            if v == 0 {
                return Err(format!("{flag}: alignment must be at least 1"));
            }
        }
        if self.max_len == 0 || self.max_len > 1 << 34 {
            return Err("-l: maximum file length must be between 1 and 16 GiB".into());
        }
        if self.max_op == 0 {
            return Err("-o: maximum operation size must be at least 1".into());
        }
        if self.max_op > self.max_len {
            return Err(format!(
                "-o {}: operation size cannot exceed the maximum file length -l {}",
                self.max_op, self.max_len
            ));
        }
        for (flag, a) in [
            ("-r", self.read_align),
            ("-w", self.write_align),
            ("-t", self.trunc_align),
        ] {
            if a > self.max_len {
                return Err(format!(
                    "{flag} {a}: alignment exceeds the maximum file length"
                ));
            }
        }
        Ok(())
    }
}
