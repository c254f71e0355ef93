//! `rdlmfs-stress`: concurrency stress tests users run against their
//! clusters. This file owns the command line (flags, help, exit codes for
//! usage errors) and hands the work to `rdlmfs_tests::stress`.
//!
//! Exit codes: 0 ok, 1 the paths show different trees (`meta`), 2 an
//! operation failed in a way the model says is impossible (an impossible
//! errno, a hang, a ping-pong value mismatch or lock error), 3 usage or
//! setup error.

use clap::{Args, Parser, Subcommand};
use rdlmfs_tests::stress::{self, meta, pingpong};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "rdlmfs-stress",
    version,
    about = "Concurrency stress tests for a cluster file system, through one path per node",
    after_help = "Exit codes: 0 ok, 1 tree mismatch between paths, 2 impossible errno / hang / \
                  lock data mismatch, 3 usage or setup error."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Random metadata and data operations from concurrent workers, then a
    /// check that every path shows the same tree.
    ///
    /// Give the same directory through each node's mount (DIR...); worker i
    /// works through DIR[i % n]. The run works in DIR/stress.<seed>/ and
    /// removes it at the end unless --keep.
    Meta(MetaArgs),
    /// ctdb-style fcntl byte-range lock ping-pong between processes.
    ///
    /// Give the same file through each node's mount (FILE...); process i
    /// uses FILE[i % n]. The file is created if missing and its first
    /// --locks bytes (and a few after them) are overwritten.
    PingPong(PingPongArgs),
    /// Internal: one ping-pong process, started by `ping-pong`.
    #[command(hide = true)]
    PingPongChild(ChildArgs),
}

#[derive(Args)]
struct MetaArgs {
    /// Concurrent workers (threads).
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: u32,
    /// Operations per worker [default: 1000, or unlimited with --duration].
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    ops: Option<u64>,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECONDS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Seed of the run [default: random, printed].
    #[arg(short = 'S', long)]
    seed: Option<u64>,
    /// Stop creating names when the tree holds about this many.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    max_entries: u64,
    /// Deepest entry, in path components below the tree root.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    depth: u32,
    /// Largest file size writes and truncates produce, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    max_file_size: u64,
    /// Leave DIR/stress.<seed>/ in place at the end.
    #[arg(long)]
    keep: bool,
    /// Print every operation and its result.
    #[arg(short, long)]
    verbose: bool,
    /// Report an operation that takes longer than this as hung (exit 2).
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_secs)]
    stall_timeout: Duration,
    /// The same directory through each node's mount.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

#[derive(Args)]
struct PingPongArgs {
    /// Processes [default: the number of FILEs; must be > 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    procs: Option<u32>,
    /// Lock bytes in the ring; more than --procs [default: procs + 1].
    #[arg(long)]
    locks: Option<u32>,
    /// Check and increment a counter in each locked byte (ctdb's -rw).
    #[arg(long)]
    rw: bool,
    /// Run for this many seconds [default: 5 unless --count is given].
    #[arg(long, value_name = "SECONDS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Handoffs per process, then stop.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// No lock handoff for this long is reported as a deadlock (exit 2).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_secs)]
    stall_timeout: Duration,
    /// Testing only: skip the check that all FILEs are one file.
    #[arg(long, hide = true)]
    unsafe_skip_same_file_check: bool,
    /// The same file through each node's mount.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct ChildArgs {
    #[arg(long)]
    index: usize,
    #[arg(long)]
    procs: usize,
    #[arg(long)]
    locks: usize,
    #[arg(long)]
    rw: bool,
    #[arg(long)]
    count: Option<u64>,
    #[arg(long)]
    shm_fd: i32,
    #[arg(long)]
    parent: u32,
    file: PathBuf,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        return Err(format!("`{s}`: seconds must be positive"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() {
    // Like other Unix tools, die quietly when the reader of our output goes
    // away (`| head`) instead of panicking in println!.
    // SAFETY: setting a signal disposition to its default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version are not errors; everything else is a usage
            // error, which is exit 3 here (clap's own default is 2, which
            // this tool reserves for impossible errors).
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                stress::EXIT_SETUP
            } else {
                0
            });
        }
    };
    let code = match cli.cmd {
        Cmd::Meta(a) => {
            let (seed, extra) = match a.seed {
                Some(s) => (s, Vec::new()),
                None => {
                    let s = rand::random::<u64>();
                    (s, vec!["--seed".to_string(), s.to_string()])
                }
            };
            let rerun = stress::command_line(&args, &extra);
            let ops = match (a.ops, a.duration) {
                (None, None) => Some(1000),
                (ops, _) => ops,
            };
            meta::run(
                meta::MetaOptions {
                    dirs: a.dirs,
                    workers: a.workers as usize,
                    ops,
                    duration: a.duration,
                    seed,
                    max_entries: a.max_entries,
                    depth: a.depth as usize,
                    max_file_size: a.max_file_size,
                    keep: a.keep,
                    verbose: a.verbose,
                    stall_timeout: a.stall_timeout,
                },
                &rerun,
            )
        }
        Cmd::PingPong(a) => {
            let rerun = stress::command_line(&args, &[]);
            let procs = a.procs.map_or(a.files.len(), |p| p as usize);
            let duration = match (a.duration, a.count) {
                (None, None) => Some(Duration::from_secs(5)),
                (d, _) => d,
            };
            pingpong::run(
                pingpong::PingPongOptions {
                    locks: a.locks.map_or(procs + 1, |l| l as usize),
                    files: a.files,
                    procs,
                    rw: a.rw,
                    duration,
                    count: a.count,
                    stall_timeout: a.stall_timeout,
                    skip_same_file_check: a.unsafe_skip_same_file_check,
                },
                &rerun,
            )
        }
        Cmd::PingPongChild(a) => pingpong::child_main(pingpong::ChildOptions {
            index: a.index,
            procs: a.procs,
            locks: a.locks,
            rw: a.rw,
            count: a.count,
            shm_fd: a.shm_fd,
            parent: a.parent,
            file: a.file,
        }),
    };
    std::process::exit(code);
}
