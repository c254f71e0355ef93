//! `rdlmfs-fsx`: see `rdlmfs_tests::fsx` and `rdlmfs-fsx --help`.

use clap::Parser;

fn main() {
    let args = rdlmfs_tests::fsx::Args::parse();
    std::process::exit(rdlmfs_tests::fsx::run::main_with(args));
}
