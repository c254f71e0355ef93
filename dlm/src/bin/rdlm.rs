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
//! And it runs and uses a node:
//! - `rdlm node --cluster FILE --id N [--socket PATH]`: the node daemon;
//!   programs on this machine take cluster locks through its socket
//!   (default: `node-N.sock` beside the cluster file);
//! - `rdlm lock NAME [--mode EX] [--timeout SECS | --nonblock] -- COMMAND`:
//!   holds a cluster-wide lock while COMMAND runs (flock(1) for the
//!   cluster); exits 1 if the lock was not obtained, else with COMMAND's
//!   status;
//! - `rdlm status` (members, quorum, generation) and `rdlm dump`
//!   (resources mastered on this node: queues, LVBs, grant numbers).
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
use rdlm::client::{Client, ClientError, Reply, Request};
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
    /// Run node N of a cluster (until SIGINT or SIGTERM).
    Node(NodeArgs),
    /// Hold a cluster-wide lock while a command runs.
    Lock(LockArgs),
    /// Show membership, quorum and generation as this node sees them.
    Status(QueryArgs),
    /// Show the resources this node masters: queues, LVBs, grant numbers.
    Dump(QueryArgs),
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// The cluster file.
    #[arg(long)]
    cluster: PathBuf,
    /// This node's id in it.
    #[arg(long)]
    id: NodeId,
    /// Local client socket (default: node-N.sock beside the cluster file).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also join this lockspace (repeatable; "default" is always joined).
    /// NAME:LEN gives it LEN-byte LVBs (a multiple of 8 in 8..=1024;
    /// default: the cluster file's lvb_len); every member of a lockspace
    /// must use the same length.
    #[arg(long = "lockspace", value_name = "NAME[:LEN]")]
    lockspaces: Vec<rdlm::daemon::LockspaceArg>,
}

#[derive(Debug, Args)]
struct SocketArgs {
    /// The node daemon's socket.
    #[arg(long, env = "RDLM_SOCKET")]
    socket: PathBuf,
}

#[derive(Debug, Args)]
struct LockArgs {
    /// Resource name (1 to 64 bytes).
    name: String,
    /// NL, CR, CW, PR, PW or EX.
    #[arg(long, default_value = "EX")]
    mode: String,
    /// Give up after this many seconds (exit 1).
    #[arg(long, conflicts_with = "nonblock")]
    timeout: Option<f64>,
    /// Fail at once (exit 1) if the lock is not free.
    #[arg(long)]
    nonblock: bool,
    /// The lockspace (the daemon must be in it; default: "default").
    #[arg(long)]
    lockspace: Option<String>,
    #[command(flatten)]
    socket: SocketArgs,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Daemon(String),
    /// The lock was not obtained (exit 1, like flock(1)).
    #[error("{0}")]
    NotObtained(String),
    /// COMMAND ran; exit with its status.
    #[error("command exited with {0}")]
    Exit(u8),
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
        Err(CliError::Exit(code)) => ExitCode::from(code),
        Err(CliError::NotObtained(why)) => {
            eprintln!("rdlm: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("rdlm: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Ca(a) => ca(a),
        Command::Keygen(a) => keygen(a),
        Command::Gencluster(a) => gencluster(a),
        Command::Node(a) => node(a),
        Command::Lock(a) => lock(a),
        Command::Status(a) => status(a),
        Command::Dump(a) => dump(a),
    }
}

fn node(a: NodeArgs) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cluster = ClusterConfig::load(&a.cluster)?;
    if cluster.node(a.id).is_none() {
        return Err(CliError::Usage(format!(
            "{}: no node {} (nodes: {:?})",
            a.cluster.display(),
            a.id,
            cluster.node_ids().collect::<Vec<_>>()
        )));
    }
    let socket = a
        .socket
        .unwrap_or_else(|| cluster.base_dir.join(format!("node-{}.sock", a.id)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err(&a.cluster))?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        rdlm::daemon::run_in(cluster, a.id, socket, &a.lockspaces, shutdown)
            .await
            .map_err(|e| CliError::Daemon(e.to_string()))
    })
}

fn lock(a: LockArgs) -> Result<(), CliError> {
    let mut c = Client::connect(&a.socket.socket)?;
    let timeout_ms = a.timeout.map(|t| (t.max(0.0) * 1000.0) as u64);
    if let Some(t) = timeout_ms {
        // The daemon enforces the timeout; this only guards a hung daemon.
        c.set_timeout(Some(std::time::Duration::from_millis(t + 10_000)))?;
    }
    let lkid = match c.call(&Request::Lock {
        name: a.name.clone(),
        mode: a.mode.clone(),
        lockspace: a.lockspace.clone(),
        noqueue: a.nonblock,
        timeout_ms,
    })? {
        Reply::Accepted { lkid } => lkid,
        Reply::Error { error } => return Err(CliError::Usage(error)),
        other => return Err(CliError::Daemon(format!("unexpected reply {other:?}"))),
    };
    loop {
        match c.next_reply()? {
            Reply::Granted { lkid: l, .. } if l == lkid => break,
            Reply::Failed { lkid: l, error } if l == lkid => {
                return Err(CliError::NotObtained(format!(
                    "lock {:?} ({}) not obtained: {error}",
                    a.name, a.mode
                )))
            }
            Reply::Lost { reason } => {
                return Err(CliError::NotObtained(format!(
                    "lock {:?} not obtained: the node lost its membership ({reason})",
                    a.name
                )))
            }
            _ => {}
        }
    }
    c.set_timeout(None)?;
    let status = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .status();
    // Release before reporting, whatever the command did.
    c.set_timeout(Some(std::time::Duration::from_secs(30)))?;
    c.send(&Request::Unlock { lkid })?;
    loop {
        match c.next_reply()? {
            Reply::Unlocked { lkid: l } if l == lkid => break,
            Reply::Error { error } => return Err(CliError::Daemon(error)),
            Reply::Lost { .. } => break,
            _ => {}
        }
    }
    let status = status.map_err(|source| CliError::Io {
        path: PathBuf::from(&a.command[0]),
        source,
    })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::Exit(code.clamp(1, 255) as u8)),
        None => Err(CliError::Exit(128)),
    }
}

fn query(a: &QueryArgs, req: Request) -> Result<Reply, CliError> {
    let mut c = Client::connect(&a.socket.socket)?;
    c.set_timeout(Some(std::time::Duration::from_secs(10)))?;
    match c.call(&req)? {
        Reply::Error { error } => Err(CliError::Daemon(error)),
        r => Ok(r),
    }
}

fn status(a: QueryArgs) -> Result<(), CliError> {
    let Reply::Status(s) = query(&a, Request::Status)? else {
        return Err(CliError::Daemon("unexpected reply to status".into()));
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!(
        "cluster {}, node {} (incarnation {:#x})",
        s.cluster, s.node, s.incarnation
    );
    match s.generation {
        Some(g) => println!(
            "generation {g}, {} (quorum {} of {} configured){}",
            if s.quorate { "quorate" } else { "NOT quorate" },
            s.quorum,
            s.configured.len(),
            if s.recovering { ", recovering" } else { "" }
        ),
        None => println!(
            "not a member yet (quorum {} of {} configured)",
            s.quorum,
            s.configured.len()
        ),
    }
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| format!("{} (slot {})", m.id, m.slot))
        .collect();
    println!("members: {}", members.join(", "));
    println!(
        "locks held here: {}, resources mastered here: {}",
        s.locks, s.mastered
    );
    Ok(())
}

fn dump(a: QueryArgs) -> Result<(), CliError> {
    let Reply::Dump { resources } = query(&a, Request::Dump)? else {
        return Err(CliError::Daemon("unexpected reply to dump".into()));
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resources).unwrap_or_default()
        );
        return Ok(());
    }
    for r in resources {
        println!(
            "{:?} seq {:#x} lvb {} {}",
            r.name,
            r.grant_seq,
            if r.lvb_valid { "valid" } else { "NOT valid" },
            r.lvb_hex
        );
        for (what, v) in [
            ("granted", &r.granted),
            ("converting", &r.converting),
            ("waiting", &r.waiting),
        ] {
            for l in v {
                println!("  {what:10} {l}");
            }
        }
    }
    Ok(())
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
