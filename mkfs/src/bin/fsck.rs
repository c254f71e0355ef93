//! `fsck.rdlmfs`: the command line over `rdlmfs_mkfs::fsck`. Cargo builds it
//! as `fsck-rdlmfs` (a target name cannot contain a dot); it is installed as
//! `fsck.rdlmfs` and calls itself that whatever its file name.
//!
//! Owns: flags, the lock_dlm refusal, messages, progress display and exit
//! codes (as e2fsck: 0 clean, 1 errors fixed, 4 errors left uncorrected,
//! 8 operational error, 16 usage error). May not touch: what is checked or
//! written (the library decides). Without `-y` the device is opened read
//! only, so nothing can be written. There is no interactive prompt: without
//! `-y` problems are only reported.

use clap::Parser;
use rdlmfs::format::superblock::LockProto;
use rdlmfs_mkfs::fsck::{self, FsckOptions, FsckReport};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Check an rdlmfs file system on DEVICE (a path or an nbd:// URI).
#[derive(Parser, Debug)]
#[command(name = "fsck.rdlmfs", version)]
struct Cli {
    /// Read only: report problems, open the device read-only, write nothing.
    #[arg(short = 'n', conflicts_with = "yes")]
    no: bool,

    /// Repair every problem this version knows how to repair.
    #[arg(short = 'y')]
    yes: bool,

    /// Repair a lock_dlm file system even though fsck cannot yet check
    /// that no other node has it mounted.
    #[arg(long = "force-cluster")]
    force_cluster: bool,

    /// Quiet: print problems only, no progress or summary.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,

    /// The device: a path, nbd://host[:port][/export] or nbd+unix:///export?socket=PATH.
    #[arg(value_name = "DEVICE")]
    device: String,
}

const EXIT_CLEAN: u8 = 0;
const EXIT_FIXED: u8 = 1;
const EXIT_UNCORRECTED: u8 = 4;
const EXIT_OPERATIONAL: u8 = 8;
const EXIT_USAGE: u8 = 16;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("fsck.rdlmfs: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: &Cli) -> Result<u8, (u8, String)> {
    let repair = cli.yes;
    let dev = blockdev::open(&cli.device, !repair)
        .map_err(|e| (EXIT_OPERATIONAL, format!("cannot open {}: {e}", cli.device)))?;
    let op = |e: fsck::FsckError| {
        let code = if e.is_damage() {
            EXIT_UNCORRECTED
        } else {
            EXIT_OPERATIONAL
        };
        (code, e.to_string())
    };
    let sb = fsck::read_sb(dev.as_ref()).map_err(op)?;
    if repair && sb.lock_proto == LockProto::Dlm && !cli.force_cluster {
        return Err((
            EXIT_OPERATIONAL,
            format!(
                "{}: the file system uses lock_dlm ({:?}) and may be mounted elsewhere in the cluster; \
                 fsck cannot check that yet (the DLM check is not built), so it will not repair it. \
                 Make sure no node has it mounted and use --force-cluster, or run with -n to only report",
                dev.name(),
                sb.lock_table
            ),
        ));
    }
    let bar = progress_bar(cli.quiet);
    let mut on_progress = |stage: &'static str, done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(done);
            b.set_message(stage);
        }
    };
    let report = fsck::check(dev.as_ref(), FsckOptions { repair }, &mut on_progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report.map_err(op)?;
    print_report(dev.name(), &report, repair, cli.quiet);
    Ok(if report.is_clean() {
        EXIT_CLEAN
    } else if repair && report.unfixed() == 0 {
        EXIT_FIXED
    } else {
        EXIT_UNCORRECTED
    })
}

fn print_report(device: &str, r: &FsckReport, repair: bool, quiet: bool) {
    for f in &r.findings {
        let tag = if f.fixed {
            "FIXED"
        } else if f.fixable && !repair {
            "fixable with -y"
        } else {
            "NOT FIXED"
        };
        println!("{device}: {} [{tag}]", f.detail);
    }
    if let Some(why) = &r.repair_skipped {
        println!("{device}: nothing repaired: {why}");
    }
    if quiet {
        return;
    }
    for j in &r.journals {
        let state = match j.head {
            Some((_, seq, true)) => format!("clean (sequence {seq})"),
            Some((_, seq, false)) => format!("DIRTY (sequence {seq}): replay is done by the mount"),
            None => "no valid head".into(),
        };
        println!("{device}: journal{}: {} blocks, {state}", j.jid, j.blocks);
    }
    let verdict = if r.is_clean() {
        "clean".to_string()
    } else if r.unfixed() == 0 {
        format!("{} problems, all fixed", r.findings.len())
    } else {
        format!("{} problems, {} not fixed", r.findings.len(), r.unfixed())
    };
    println!(
        "{device}: {verdict}; {} dinodes, {} blocks in use{}",
        r.dinodes,
        r.blocks_used,
        if r.blocks_written > 0 {
            format!(", {} blocks written", r.blocks_written)
        } else {
            String::new()
        }
    );
}

/// A progress bar on stderr, only when stderr is a terminal.
fn progress_bar(quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let b =
        indicatif::ProgressBar::with_draw_target(Some(1), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len}") {
        b.set_style(style.progress_chars("=> "));
    }
    Some(b)
}
