//! The local client protocol: how programs on a node take cluster locks
//! through that node's daemon, over a Unix socket (as libdlm talks to the
//! kernel through /dev/dlm).
//!
//! One JSON object per line each way. A client sends [`Request`]s; the
//! daemon answers each with a [`Reply`] at once (`accepted` with the lock
//! id, or `error`) and later sends completion and blocking events for the
//! client's locks. Locks belong to the connection: when it closes — the
//! process exited or died — the daemon releases them. Lines are bounded
//! ([`MAX_LINE`]); anything unparsable gets an `error` reply naming what was
//! wrong, and the connection stays usable.
//!
//! [`Client`] is the blocking side, for the `rdlm` command and for threads
//! that may block (FUSE workers).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest request or reply line.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Lock {
        name: String,
        mode: String,
        /// The lockspace (joined by the daemon); the default one if
        /// omitted.
        #[serde(default)]
        lockspace: Option<String>,
        #[serde(default)]
        noqueue: bool,
        /// Give up after this long (the request fails with "timed out").
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Convert {
        lkid: u64,
        mode: String,
        #[serde(default)]
        noqueue: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Unlock {
        lkid: u64,
    },
    Cancel {
        lkid: u64,
    },
    Status,
    Dump,
    /// The node joins `lockspace` (for every client of the daemon), with
    /// `lvb_len`-byte LVBs (default: the cluster file's `lvb_len`).
    JoinLockspace {
        lockspace: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lvb_len: Option<usize>,
    },
    /// The node leaves `lockspace` (refused while it has locks there).
    LeaveLockspace {
        lockspace: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u32,
    pub slot: u32,
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub cluster: String,
    pub node: u32,
    pub incarnation: u64,
    pub generation: Option<u32>,
    pub members: Vec<MemberInfo>,
    pub configured: Vec<u32>,
    pub quorum: usize,
    pub quorate: bool,
    pub recovering: bool,
    pub locks: usize,
    pub mastered: usize,
    /// The lockspaces the node is in (or joining, or leaving).
    #[serde(default)]
    pub lockspaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    #[serde(default)]
    pub lockspace: String,
    pub name: String,
    pub lvb_valid: bool,
    pub lvb_hex: String,
    pub grant_seq: u64,
    /// "node:lkid granted-mode [-> requested-mode]"
    pub granted: Vec<String>,
    pub converting: Vec<String>,
    pub waiting: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Reply {
    /// The request was taken; its outcome follows as another event.
    Accepted {
        lkid: u64,
    },
    Error {
        error: String,
    },
    /// A request without a lock (join, leave) was done.
    Done,
    Granted {
        lkid: u64,
        mode: String,
        seq: u64,
    },
    Failed {
        lkid: u64,
        error: String,
    },
    Unlocked {
        lkid: u64,
    },
    /// Another node needs `mode`, which this lock blocks.
    Blocking {
        lkid: u64,
        mode: String,
    },
    /// The node lost its lease or restarted: every lock is gone.
    Lost {
        reason: String,
    },
    Status(StatusInfo),
    Dump {
        resources: Vec<ResourceInfo>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{socket}: the daemon closed the connection")]
    Closed { socket: String },
    #[error("{socket}: bad reply from the daemon: {detail}")]
    Protocol { socket: String, detail: String },
}

/// A blocking connection to a node daemon.
pub struct Client {
    socket: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let socket = path.display().to_string();
        let io = |source| ClientError::Io {
            socket: socket.clone(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            socket,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Bounds every later wait for a reply (None: wait for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.writer
            .set_read_timeout(t)
            .map_err(|source| ClientError::Io {
                socket: self.socket.clone(),
                source,
            })
    }

    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            detail: e.to_string(),
        })?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io {
                socket: self.socket.clone(),
                source,
            })
    }

    /// The next event or reply from the daemon.
    pub fn next_reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .map_err(|source| ClientError::Io {
                socket: self.socket.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Closed {
                socket: self.socket.clone(),
            });
        }
        serde_json::from_str(line.trim_end()).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            detail: format!("{e}: {:?}", line.chars().take(200).collect::<String>()),
        })
    }

    /// Sends `req` and returns the immediate answer.
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        self.send(req)?;
        self.next_reply()
    }
}
