//! `rdlmfs-nbd`: the NBD server of rdlmfs, and its admin commands.
//!
//! ```text
//! rdlmfs-nbd serve IMAGE [--listen 127.0.0.1:10809] [--unix PATH] [--admin PATH]
//!                        [--export NAME] [--read-only] [--direct] [--require-client-id]
//! rdlmfs-nbd fence   --admin PATH --client ID
//! rdlmfs-nbd unfence --admin PATH --client ID
//! rdlmfs-nbd clients --admin PATH
//! ```

use blockdev::nbd::server::{self, ServerConfig};
use blockdev::{BlockDevice, FileDevice, FileOptions};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "rdlmfs-nbd",
    version,
    about = "NBD server for rdlmfs shared disks, with client fencing"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export a file or block device to NBD clients.
    Serve {
        /// The image file or block device to export.
        image: PathBuf,
        /// TCP address to listen on ("none" to serve only the Unix socket).
        #[arg(long, default_value = "127.0.0.1:10809")]
        listen: String,
        /// Also (or only) listen on this Unix socket.
        #[arg(long)]
        unix: Option<PathBuf>,
        /// Admin socket for fence / unfence / clients.
        #[arg(long)]
        admin: Option<PathBuf>,
        /// Export name (clients asking for "" get it too).
        #[arg(long, default_value = "")]
        export: String,
        /// Export read-only.
        #[arg(long)]
        read_only: bool,
        /// Open the image with O_DIRECT.
        #[arg(long)]
        direct: bool,
        /// Refuse clients that do not send a client id (so all can be fenced).
        #[arg(long)]
        require_client_id: bool,
        /// Exit after this many seconds (for bounded test and benchmark runs).
        #[arg(long)]
        exit_after: Option<u64>,
    },
    /// Cut a client off: its requests fail with EPERM and nothing it sends
    /// reaches the disk. Returns once no I/O of that client is in progress.
    Fence {
        #[arg(long)]
        admin: PathBuf,
        #[arg(long)]
        client: String,
    },
    /// Let a fenced client connect again.
    Unfence {
        #[arg(long)]
        admin: PathBuf,
        #[arg(long)]
        client: String,
    },
    /// List connected clients: connection, peer, client id, state.
    Clients {
        #[arg(long)]
        admin: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve {
            image,
            listen,
            unix,
            admin,
            export,
            read_only,
            direct,
            require_client_id,
            exit_after,
        } => serve(
            image,
            listen,
            unix,
            admin,
            export,
            read_only,
            direct,
            require_client_id,
            exit_after,
        ),
        Cmd::Fence { admin, client } => {
            server::admin_request(&admin, &format!("fence {client}")).map(|_| {
                println!("client {client} fenced");
            })
        }
        .map_err(|e| e.to_string()),
        Cmd::Unfence { admin, client } => {
            server::admin_request(&admin, &format!("unfence {client}")).map(|_| {
                println!("client {client} unfenced");
            })
        }
        .map_err(|e| e.to_string()),
        Cmd::Clients { admin } => server::admin_request(&admin, "clients")
            .map(|out| {
                for l in out.lines().filter(|l| *l != "ok") {
                    println!("{l}");
                }
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdlmfs-nbd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    image: PathBuf,
    listen: String,
    unix: Option<PathBuf>,
    admin: Option<PathBuf>,
    export: String,
    read_only: bool,
    direct: bool,
    require_client_id: bool,
    exit_after: Option<u64>,
) -> Result<(), String> {
    let tcp: Option<SocketAddr> = if listen == "none" {
        None
    } else {
        Some(
            listen
                .parse()
                .map_err(|e| format!("--listen {listen:?}: {e} (expected ADDRESS:PORT or none)"))?,
        )
    };
    // Block the termination signals before any thread starts, so that they
    // are delivered only to the sigwait below.
    let signals = termination_signals();
    // SAFETY: pthread_sigmask on a properly initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let dev = FileDevice::open(
        &image,
        FileOptions {
            read_only,
            direct,
            exclusive: true,
            block_size: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    let handle = server::start(
        dev.clone(),
        ServerConfig {
            export_name: export,
            read_only,
            tcp,
            unix,
            admin,
            require_client_id,
            ..ServerConfig::default()
        },
    )
    .map_err(|e| format!("{}: cannot listen: {e}", image.display()))?;
    if let Some(a) = handle.tcp_addr() {
        // Tests and scripts read the bound port from this line.
        println!("listening on {a}");
    }
    if let Some(secs) = exit_after {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            // SAFETY: sending a signal to ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        });
    }
    let mut sig: libc::c_int = 0;
    // SAFETY: waits for one of the blocked signals.
    unsafe { libc::sigwait(&signals, &mut sig) };
    tracing::info!(signal = sig, "shutting down");
    handle.shutdown();
    dev.flush().map_err(|e| e.to_string())?;
    Ok(())
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}
