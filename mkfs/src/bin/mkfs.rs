//! `mkfs.rdlmfs`: the command line over `rdlmfs_mkfs::format`. Cargo
//! builds it as `mkfs-rdlmfs` (a target name cannot contain a dot); it is
//! installed as `mkfs.rdlmfs` and calls itself that whatever its file name.
//!
//! Owns: flags, messages, the confirmation question, progress display and
//! exit codes (0 done, 1 refused or failed, 2 bad usage). May not touch:
//! what is written (the library decides) — every path that exits early
//! does so before the first write.

use blockdev::BlockDevice;
use clap::Parser;
use rdlmfs::format::layout::{
    human_bytes, plan, Layout, MkfsOptions, MAX_JOURNAL_MIB, MAX_RGRP_MIB, MIN_JOURNAL_MIB,
    MIN_RGRP_MIB,
};
use rdlmfs::format::superblock::{check_label, uuid_string, LockProto, LockTable};
use rdlmfs::format::MAX_JOURNALS;
use rdlmfs_mkfs::{format, signature, FormatParams, Progress};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

/// Make an rdlmfs file system on DEVICE (a path or an nbd:// URI).
#[derive(Parser, Debug)]
#[command(name = "mkfs.rdlmfs", version, disable_help_flag = false)]
struct Cli {
    /// Block size in bytes: a power of two from 512 to 65536.
    #[arg(short = 'b', long = "block-size", value_name = "BYTES", default_value_t = 4096, value_parser = parse_block_size)]
    block_size: u32,

    /// Number of journals: one per node that will mount it (1..=256).
    #[arg(short = 'j', long = "journals", value_name = "N", default_value_t = 1, value_parser = parse_journals)]
    journals: u32,

    /// Size of each journal in MiB (1..=1024; default from the device size).
    #[arg(short = 'J', long = "journal-size", value_name = "MiB", value_parser = parse_journal_mib)]
    journal_mib: Option<u64>,

    /// Size of each resource group in MiB (1..=2048; default from the device size).
    #[arg(short = 'r', long = "rgrp-size", value_name = "MiB", value_parser = parse_rgrp_mib)]
    rgrp_mib: Option<u64>,

    /// Lock table "cluster:fsname" (required with lock_dlm).
    #[arg(short = 't', long = "lock-table", value_name = "CLUSTER:FSNAME", value_parser = parse_lock_table)]
    lock_table: Option<String>,

    /// Locking protocol: lock_dlm or lock_nolock.
    #[arg(short = 'p', long = "lock-proto", value_name = "PROTO", default_value = "lock_dlm", value_parser = parse_proto)]
    lock_proto: LockProto,

    /// File system label (at most 64 bytes).
    #[arg(short = 'L', long = "label", value_name = "LABEL", value_parser = parse_label)]
    label: Option<String>,

    /// Don't ask for confirmation.
    #[arg(short = 'O')]
    no_ask: bool,

    /// Dry run: compute and print the layout, write nothing.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,

    /// Overwrite a device that already holds a file system.
    #[arg(short = 'f', long = "force")]
    force: bool,

    /// Quiet: no summary and no progress.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,

    /// The device: a path, nbd://host[:port][/export] or nbd+unix:///export?socket=PATH.
    #[arg(value_name = "DEVICE")]
    device: String,
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !v.is_power_of_two() || !(512..=65536).contains(&v) {
        return Err(format!("{v} is not a power of two between 512 and 65536"));
    }
    Ok(v)
}

fn parse_journals(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v == 0 || v > MAX_JOURNALS {
        return Err(format!("{v} journals: give 1..={MAX_JOURNALS}"));
    }
    Ok(v)
}

fn parse_journal_mib(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if !(MIN_JOURNAL_MIB..=MAX_JOURNAL_MIB).contains(&v) {
        return Err(format!(
            "{v} MiB: journal size must be {MIN_JOURNAL_MIB}..={MAX_JOURNAL_MIB} MiB"
        ));
    }
    Ok(v)
}

fn parse_rgrp_mib(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if !(MIN_RGRP_MIB..=MAX_RGRP_MIB).contains(&v) {
        return Err(format!(
            "{v} MiB: resource group size must be {MIN_RGRP_MIB}..={MAX_RGRP_MIB} MiB"
        ));
    }
    Ok(v)
}

fn parse_lock_table(s: &str) -> Result<String, String> {
    LockTable::parse(s).map(|t| t.to_string())
}

fn parse_proto(s: &str) -> Result<LockProto, String> {
    s.parse()
}

fn parse_label(s: &str) -> Result<String, String> {
    check_label(s).map(|_| s.to_string())
}

/// Exit codes.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

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
            // clap prints help/version to stdout with exit 0, errors with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("mkfs.rdlmfs: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), (u8, String)> {
    let opts = MkfsOptions {
        block_size: cli.block_size,
        journals: cli.journals,
        journal_mib: cli.journal_mib,
        rgrp_mib: cli.rgrp_mib,
        lock_proto: cli.lock_proto,
        lock_table: cli.lock_table.clone().unwrap_or_default(),
        label: cli.label.clone().unwrap_or_default(),
    };
    // Option errors are usage errors, found before the device is opened.
    opts.validate().map_err(|e| (EXIT_USAGE, e.to_string()))?;

    let dev = blockdev::open(&cli.device, cli.dry_run)
        .map_err(|e| (EXIT_FAILED, format!("cannot open {}: {e}", cli.device)))?;
    let layout =
        plan(dev.size(), &opts).map_err(|e| (EXIT_FAILED, format!("{}: {e}", dev.name())))?;
    rdlmfs::format::io::check_block_size(dev.as_ref(), opts.block_size)
        .map_err(|e| (EXIT_FAILED, e.to_string()))?;

    match signature::detect(dev.as_ref()) {
        Ok(None) => {}
        Ok(Some(what)) if cli.force => {
            if !cli.quiet {
                let verb = if cli.dry_run {
                    "would overwrite"
                } else {
                    "overwriting"
                };
                eprintln!("mkfs.rdlmfs: {} holds {what}; {verb} it (-f)", dev.name());
            }
        }
        Ok(Some(what)) => {
            return Err((
                EXIT_FAILED,
                format!(
                    "{} holds {what}; refusing to overwrite it (use -f to force)",
                    dev.name()
                ),
            ))
        }
        Err(e) => return Err((EXIT_FAILED, format!("cannot read {}: {e}", dev.name()))),
    }

    let params = FormatParams::new(opts);
    if !cli.quiet {
        print_summary(dev.as_ref(), &layout, &params, cli.dry_run);
    }
    if cli.dry_run {
        if !cli.quiet {
            println!("Dry run: nothing was written.");
        }
        return Ok(());
    }
    if !cli.no_ask && std::io::stdin().is_terminal() && !confirm(dev.name())? {
        return Err((EXIT_FAILED, "aborted; nothing was written".into()));
    }

    let started = Instant::now();
    let bar = progress_bar(cli.quiet);
    let mut on_progress = |p: Progress| {
        if let Some(b) = &bar {
            b.set_length(p.total.max(1));
            b.set_position(p.done);
            b.set_message(p.stage);
        }
    };
    let report = format(dev.as_ref(), &params, &mut on_progress)
        .map_err(|e| (EXIT_FAILED, e.to_string()))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if !cli.quiet {
        println!(
            "Done: wrote {} in {} writes, {:.3} s.",
            human_bytes(report.bytes_written),
            report.write_calls,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn confirm(device: &str) -> Result<bool, (u8, String)> {
    print!("This will destroy any data on {device}.\nAre you sure you want to proceed? [y/n] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| (EXIT_FAILED, format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
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

fn print_summary(dev: &dyn BlockDevice, l: &Layout, p: &FormatParams, dry_run: bool) {
    let o = &p.options;
    let bs = u64::from(o.block_size);
    let journal_rgrps = l.journals.len();
    println!(
        "{}",
        if dry_run {
            "Would create:"
        } else {
            "Creating:"
        }
    );
    println!("  Device:              {}", dev.name());
    println!("  Block size:          {}", o.block_size);
    println!(
        "  Device size:         {} ({} blocks)",
        human_bytes(l.device_bytes),
        l.device_bytes / bs
    );
    println!(
        "  File system size:    {} ({} blocks)",
        human_bytes(l.fs_bytes()),
        l.total_blocks
    );
    println!(
        "  Journals:            {} of {} ({} blocks each)",
        l.journals.len(),
        human_bytes(l.journal_bytes),
        l.journal_bytes / bs
    );
    println!(
        "  Resource groups:     {} ({} for journals, {} of up to {})",
        l.rgrps.len(),
        journal_rgrps,
        l.regular_rgrps(),
        human_bytes(l.rgrp_bytes)
    );
    println!("  Locking protocol:    {}", o.lock_proto);
    println!("  Lock table:          {:?}", o.lock_table);
    println!("  Label:               {:?}", o.label);
    println!("  UUID:                {}", uuid_string(&p.uuid));
}
