//! `rdlm` — the lock manager's command.
//!
//! Today it makes the TLS material and cluster files a cluster needs:
//! - `rdlm ca --cluster NAME --out DIR`: a new cluster CA (`ca.pem`,
//!   `ca.key`);
//! - `rdlm keygen --ca DIR --node N --cluster NAME --out DIR`: node N's
//!   certificate and key (`node-N.pem`, `node-N.key`), signed by the CA in
//!   DIR;
//! - `rdlm gencluster --nodes N --base-port P --dir DIR --cluster NAME`: a
//!   CA, every node's certificate and key, and a valid `cluster.toml` with
//!   loopback addresses (node i on port P + i - 1) — for tests and trying
//!   things out.
//!
//! Keys are written with mode 0600, certificates and cluster files 0644.
//! Nothing existing is overwritten without `--force`, and all targets are
//! checked before anything is written, so a refused command leaves no
//! half-made set. This file owns argument parsing and file writing only;
//! certificates come from `rdlm::tls`, cluster files from `rdlm::config`.
//! Subcommands that run a node (node, lock, status, dump) are added to
//! [`Command`] and dispatched in [`run`]; those needing tokio build their
//! runtime there.

use clap::{Args, Parser, Subcommand};
use rdlm::config::{self, ClusterConfig, ConfigError, NodeConfig};
use rdlm::resource::NodeId;
use rdlm::tls::{self, TlsError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "rdlm", version, about = "The rdlmfs distributed lock manager")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key.
    Ca(CaArgs),
    /// Create node N's certificate and key, signed by the cluster CA.
    Keygen(KeygenArgs),
    /// Create a CA, all node certificates and keys, and cluster.toml with
    /// loopback addresses.
    Gencluster(GenclusterArgs),
}

#[derive(Debug, Args)]
struct CaArgs {
    /// Cluster name (a-z, 0-9, '-'; it is part of every node's name).
    #[arg(long)]
    cluster: String,
    /// Directory to write ca.pem and ca.key into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Directory holding ca.pem and ca.key.
    #[arg(long)]
    ca: PathBuf,
    /// Node id (1 or more).
    #[arg(long)]
    node: NodeId,
    /// Cluster name; must be the one the CA was made for.
    #[arg(long)]
    cluster: String,
    /// Directory to write node-N.pem and node-N.key into (created if
    /// missing).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct GenclusterArgs {
    /// Number of nodes (ids 1..=N).
    #[arg(long)]
    nodes: u32,
    /// UDP port of node 1; node i listens on base-port + i - 1.
    #[arg(long)]
    base_port: u16,
    /// Directory to write everything into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Cluster name.
    #[arg(long)]
    cluster: String,
    /// Address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Two-node mode (quorum 1); needs --nodes 2.
    #[arg(long)]
    two_node: bool,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists; pass --force to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdlm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Ca(a) => ca(a),
        Command::Keygen(a) => keygen(a),
        Command::Gencluster(a) => gencluster(a),
    }
}

/// One file to write.
struct Output {
    path: PathBuf,
    contents: String,
    secret: bool,
}

impl Output {
    fn public(path: PathBuf, contents: String) -> Output {
        Output {
            path,
            contents,
            secret: false,
        }
    }
    fn secret(path: PathBuf, contents: String) -> Output {
        Output {
            path,
            contents,
            secret: true,
        }
    }
}

/// Refuses if any target exists (without `force`), then writes them all.
fn write_all(dir: &Path, outputs: &[Output], force: bool) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if !force {
        if let Some(o) = outputs.iter().find(|o| o.path.exists()) {
            return Err(CliError::Exists(o.path.clone()));
        }
    }
    for o in outputs {
        write_file(
            &o.path,
            &o.contents,
            if o.secret { 0o600 } else { 0o644 },
            force,
        )?;
        println!("wrote {}", o.path.display());
    }
    Ok(())
}

/// Writes `contents` with `mode`. Without `force` the file must not exist
/// (checked by the open itself, so a race cannot overwrite a key). With
/// `force` the new file is written beside the old and renamed over it, so
/// the old one is replaced whole and a key never sits with wider
/// permissions than `mode`.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CliError> {
    let target = if force {
        let mut name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(format!(".tmp-{}", std::process::id()));
        path.with_file_name(name)
    } else {
        path.to_path_buf()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists && !force {
                CliError::Exists(path.to_path_buf())
            } else {
                CliError::Io {
                    path: target.clone(),
                    source: e,
                }
            }
        })?;
    f.write_all(contents.as_bytes()).map_err(io_err(&target))?;
    f.sync_all().map_err(io_err(&target))?;
    if force {
        std::fs::rename(&target, path).map_err(io_err(path))?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn check_cluster(name: &str) -> Result<(), CliError> {
    if config::valid_cluster_name(name) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "cluster name {name:?} must be 1..={} of a-z, 0-9 and '-', not starting or ending with '-'",
            config::MAX_NAME_LEN
        )))
    }
}

fn ca(a: CaArgs) -> Result<(), CliError> {
    check_cluster(&a.cluster)?;
    let (cert, key) = tls::generate_ca(&a.cluster)?;
    write_all(
        &a.out,
        &[
            Output::public(a.out.join("ca.pem"), cert),
            Output::secret(a.out.join("ca.key"), key),
        ],
        a.force,
    )
}

fn node_files(dir: &Path, node: NodeId) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("node-{node}.pem")),
        dir.join(format!("node-{node}.key")),
    )
}

fn keygen(a: KeygenArgs) -> Result<(), CliError> {
    check_cluster(&a.cluster)?;
    if a.node == 0 {
        return Err(CliError::Usage("node ids start at 1".into()));
    }
    let ca_cert = read(&a.ca.join("ca.pem"))?;
    let ca_key = read(&a.ca.join("ca.key"))?;
    let (cert, key) = tls::generate_node_cert(&ca_cert, &ca_key, a.node, &a.cluster)?;
    let (cert_path, key_path) = node_files(&a.out, a.node);
    write_all(
        &a.out,
        &[
            Output::public(cert_path, cert),
            Output::secret(key_path, key),
        ],
        a.force,
    )
}

fn gencluster(a: GenclusterArgs) -> Result<(), CliError> {
    check_cluster(&a.cluster)?;
    if a.nodes == 0 || a.nodes as usize > config::MAX_NODES {
        return Err(CliError::Usage(format!(
            "--nodes must be 1..={}",
            config::MAX_NODES
        )));
    }
    let last = u32::from(a.base_port) + a.nodes - 1;
    if a.base_port == 0 || last > u32::from(u16::MAX) {
        return Err(CliError::Usage(format!(
            "ports {}..={last} do not fit in 1..=65535",
            a.base_port
        )));
    }
    let host = if a.host.contains(':') && !a.host.starts_with('[') {
        format!("[{}]", a.host)
    } else {
        a.host.clone()
    };
    let nodes: Vec<NodeConfig> = (1..=a.nodes)
        .map(|id| {
            let (cert, key) = node_files(&a.dir, id);
            NodeConfig {
                id,
                address: format!("{host}:{}", u32::from(a.base_port) + id - 1),
                cert,
                key,
            }
        })
        .collect();
    let cfg = ClusterConfig {
        name: a.cluster.clone(),
        lvb_len: config::DEFAULT_LVB_LEN,
        heartbeat_ms: config::DEFAULT_HEARTBEAT_MS,
        failure_timeout_ms: config::DEFAULT_FAILURE_TIMEOUT_MS,
        lease_ms: config::DEFAULT_LEASE_MS,
        two_node: a.two_node,
        ca: a.dir.join("ca.pem"),
        nodes,
        base_dir: a.dir.clone(),
    };
    // Refuse a bad cluster before making any key.
    cfg.validate()?;
    let toml = cfg.to_toml()?;

    let (ca_cert, ca_key) = tls::generate_ca(&a.cluster)?;
    let mut outputs = vec![
        Output::public(a.dir.join("ca.pem"), ca_cert.clone()),
        Output::secret(a.dir.join("ca.key"), ca_key.clone()),
    ];
    for n in &cfg.nodes {
        let (cert, key) = tls::generate_node_cert(&ca_cert, &ca_key, n.id, &a.cluster)?;
        outputs.push(Output::public(n.cert.clone(), cert));
        outputs.push(Output::secret(n.key.clone(), key));
    }
    let header = format!(
        "# rdlm cluster {:?}: {} nodes, generated by `rdlm gencluster`.\n\
         # Relative paths are resolved against this file's directory.\n\n",
        a.cluster, a.nodes
    );
    outputs.push(Output::public(a.dir.join("cluster.toml"), header + &toml));
    write_all(&a.dir, &outputs, a.force)
}
