//! The cluster file: which nodes exist, where they listen, which TLS
//! material proves who they are, and the timing every node must agree on.
//!
//! This module owns the file's format (TOML), its defaults and every rule a
//! valid cluster file obeys; it reads files only in [`ClusterConfig::load`]
//! and opens no certificate or key (the `tls` module does, given the paths
//! resolved here). It may not decide anything about membership beyond the
//! static quorum size.
//!
//! ```toml
//! [cluster]
//! name = "alpha"              # 1..=63 of a-z 0-9 '-', not starting or ending with '-'
//! lvb_len = 32                # bytes; 8..=1024 and a multiple of 8; lockspaces
//!                             # joined without a length of their own use it
//! heartbeat_ms = 200          # 10..=3600000
//! failure_timeout_ms = 1500   # > heartbeat_ms
//! lease_ms = 3000             # > failure_timeout_ms and >= 2 * heartbeat_ms
//! two_node = false            # only with exactly two nodes; quorum is then 1
//! ca = "ca.pem"
//!
//! [[node]]
//! id = 1                      # nonzero, unique
//! address = "127.0.0.1:7001"  # host:port ([v6]:port), unique
//! cert = "node-1.pem"         # relative paths are resolved against the
//! key = "node-1.key"          # directory of the cluster file
//! ```
//!
//! Unknown keys are refused, so a misspelt setting is an error rather than a
//! silently ignored default. Certificate and key files are not opened here:
//! a generator may write the cluster file before the keys, and the transport
//! reports a missing file with its path when it starts.

use crate::member::{MemberConfig, Timing};
use crate::resource::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LVB_LEN: usize = 32;
/// Bounds of `lvb_len`; the upper one is what `wire` carries.
pub const MIN_LVB_LEN: usize = crate::wire::MIN_LVB;
pub const MAX_LVB_LEN: usize = crate::wire::MAX_LVB;
pub const DEFAULT_HEARTBEAT_MS: u64 = 200;
pub const DEFAULT_FAILURE_TIMEOUT_MS: u64 = 1500;
pub const DEFAULT_LEASE_MS: u64 = 3000;
/// Shortest heartbeat accepted: below this, scheduling noise alone would
/// look like failures.
pub const MIN_HEARTBEAT_MS: u64 = 10;
/// Longest of any timing setting (one hour), so that sums and products of
/// them never overflow.
pub const MAX_TIMING_MS: u64 = 3_600_000;
/// Most nodes in one cluster file.
pub const MAX_NODES: usize = 256;
/// Longest cluster name: it is one DNS label in the node certificates.
pub const MAX_NAME_LEN: usize = 63;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// `host:port` as written (IPv6 literals in brackets).
    pub address: String,
    /// The node's certificate (PEM), resolved against the cluster file's
    /// directory.
    pub cert: PathBuf,
    /// The node's private key (PEM), resolved likewise.
    pub key: PathBuf,
}

/// A validated cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub lvb_len: usize,
    pub heartbeat_ms: u64,
    pub failure_timeout_ms: u64,
    pub lease_ms: u64,
    pub two_node: bool,
    /// The cluster CA certificate (PEM), resolved.
    pub ca: PathBuf,
    /// In file order.
    pub nodes: Vec<NodeConfig>,
    /// The directory relative paths were resolved against; [`to_toml`]
    /// writes paths under it relative again.
    ///
    /// [`to_toml`]: ClusterConfig::to_toml
    pub base_dir: PathBuf,
}

/// Why a cluster file was refused. Its `Display` names the file, the node
/// when one is at fault, and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{problem}", node.map(|n| format!("node {n}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file's path, or "cluster file" for text parsed from elsewhere.
    pub file: String,
    /// The node the problem belongs to, if any.
    pub node: Option<NodeId>,
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("not a valid cluster file: {0}")]
    Syntax(String),
    #[error(
        "cluster.name {0:?} is not 1..={MAX_NAME_LEN} of a-z, 0-9 and '-' (not first or last)"
    )]
    Name(String),
    #[error("cluster.lvb_len {0} is not a multiple of 8 in {MIN_LVB_LEN}..={MAX_LVB_LEN}")]
    LvbLen(usize),
    #[error("cluster.{field} = {value} is outside {min}..={MAX_TIMING_MS}")]
    TimingRange {
        field: &'static str,
        value: u64,
        min: u64,
    },
    #[error("cluster.heartbeat_ms ({heartbeat}) must be less than cluster.failure_timeout_ms ({failure})")]
    HeartbeatNotBelowFailure { heartbeat: u64, failure: u64 },
    #[error("cluster.failure_timeout_ms ({failure}) must be less than cluster.lease_ms ({lease})")]
    FailureNotBelowLease { failure: u64, lease: u64 },
    #[error("cluster.lease_ms ({lease}) must be at least two heartbeats (2 * {heartbeat})")]
    LeaseTooShort { lease: u64, heartbeat: u64 },
    #[error("cluster.two_node needs exactly 2 nodes, the file has {0}")]
    TwoNode(usize),
    #[error("cluster.ca is empty")]
    EmptyCa,
    #[error("no [[node]] entries")]
    NoNodes,
    #[error("{0} nodes, more than the {MAX_NODES} allowed")]
    TooManyNodes(usize),
    #[error("id 0 is reserved; node ids start at 1")]
    ZeroId,
    #[error("duplicate id (entries {first} and {second} of [[node]])")]
    DuplicateId { first: usize, second: usize },
    #[error("address {address:?} is not host:port: {why}")]
    BadAddress { address: String, why: String },
    #[error("duplicate address {address} (also node {other})")]
    DuplicateAddress { address: String, other: NodeId },
    #[error("{0} is empty")]
    EmptyPath(&'static str),
    #[error("path {0} is not valid UTF-8 and cannot be written to TOML")]
    NonUtf8Path(PathBuf),
}

impl ConfigError {
    fn new(file: &str, node: Option<NodeId>, problem: Problem) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            node,
            problem,
        }
    }
}

/// The file as written, before validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    #[serde(default = "default_lvb_len")]
    lvb_len: usize,
    #[serde(default = "default_heartbeat")]
    heartbeat_ms: u64,
    #[serde(default = "default_failure")]
    failure_timeout_ms: u64,
    #[serde(default = "default_lease")]
    lease_ms: u64,
    #[serde(default)]
    two_node: bool,
    ca: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: NodeId,
    address: String,
    cert: String,
    key: String,
}

fn default_lvb_len() -> usize {
    DEFAULT_LVB_LEN
}
fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_MS
}
fn default_failure() -> u64 {
    DEFAULT_FAILURE_TIMEOUT_MS
}
fn default_lease() -> u64 {
    DEFAULT_LEASE_MS
}

/// Label used for text that did not come from a named file.
const TEXT_LABEL: &str = "cluster file";

impl ClusterConfig {
    /// Reads and validates the cluster file at `path`; relative paths in it
    /// are resolved against the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterConfig, ConfigError> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&label, None, Problem::Io(e)))?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::parse_labelled(&text, &base, &label)
    }

    /// Parses and validates cluster file text; relative paths are resolved
    /// against `base_dir`.
    pub fn parse(text: &str, base_dir: impl AsRef<Path>) -> Result<ClusterConfig, ConfigError> {
        Self::parse_labelled(text, base_dir.as_ref(), TEXT_LABEL)
    }

    fn parse_labelled(text: &str, base: &Path, label: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| ConfigError::new(label, None, Problem::Syntax(e.to_string())))?;
        let c = raw.cluster;
        if c.ca.is_empty() {
            return Err(ConfigError::new(label, None, Problem::EmptyCa));
        }
        let mut nodes = Vec::with_capacity(raw.node.len());
        for n in raw.node {
            for (field, v) in [("cert", &n.cert), ("key", &n.key)] {
                if v.is_empty() {
                    return Err(ConfigError::new(
                        label,
                        Some(n.id),
                        Problem::EmptyPath(field),
                    ));
                }
            }
            nodes.push(NodeConfig {
                id: n.id,
                address: n.address,
                cert: base.join(&n.cert),
                key: base.join(&n.key),
            });
        }
        let cfg = ClusterConfig {
            name: c.name,
            lvb_len: c.lvb_len,
            heartbeat_ms: c.heartbeat_ms,
            failure_timeout_ms: c.failure_timeout_ms,
            lease_ms: c.lease_ms,
            two_node: c.two_node,
            ca: base.join(&c.ca),
            nodes,
            base_dir: base.to_path_buf(),
        };
        cfg.validate_labelled(label)?;
        Ok(cfg)
    }

    /// Checks every rule of a cluster file (for configurations built in
    /// code, such as by a generator).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_labelled(TEXT_LABEL)
    }

    fn validate_labelled(&self, label: &str) -> Result<(), ConfigError> {
        let err = |node: Option<NodeId>, p: Problem| Err(ConfigError::new(label, node, p));
        if !valid_cluster_name(&self.name) {
            return err(None, Problem::Name(self.name.clone()));
        }
        if crate::wire::check_lvb_len(self.lvb_len).is_err() {
            return err(None, Problem::LvbLen(self.lvb_len));
        }
        for (field, value, min) in [
            ("heartbeat_ms", self.heartbeat_ms, MIN_HEARTBEAT_MS),
            (
                "failure_timeout_ms",
                self.failure_timeout_ms,
                MIN_HEARTBEAT_MS,
            ),
            ("lease_ms", self.lease_ms, MIN_HEARTBEAT_MS),
        ] {
            if !(min..=MAX_TIMING_MS).contains(&value) {
                return err(None, Problem::TimingRange { field, value, min });
            }
        }
        if self.heartbeat_ms >= self.failure_timeout_ms {
            return err(
                None,
                Problem::HeartbeatNotBelowFailure {
                    heartbeat: self.heartbeat_ms,
                    failure: self.failure_timeout_ms,
                },
            );
        }
        if self.failure_timeout_ms >= self.lease_ms {
            return err(
                None,
                Problem::FailureNotBelowLease {
                    failure: self.failure_timeout_ms,
                    lease: self.lease_ms,
                },
            );
        }
        if self.lease_ms < 2 * self.heartbeat_ms {
            return err(
                None,
                Problem::LeaseTooShort {
                    lease: self.lease_ms,
                    heartbeat: self.heartbeat_ms,
                },
            );
        }
        if self.ca.as_os_str().is_empty() {
            return err(None, Problem::EmptyCa);
        }
        if self.nodes.is_empty() {
            return err(None, Problem::NoNodes);
        }
        if self.nodes.len() > MAX_NODES {
            return err(None, Problem::TooManyNodes(self.nodes.len()));
        }
        if self.two_node && self.nodes.len() != 2 {
            return err(None, Problem::TwoNode(self.nodes.len()));
        }
        let mut ids: HashMap<NodeId, usize> = HashMap::new();
        let mut addrs: HashMap<String, NodeId> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.id == 0 {
                return err(Some(0), Problem::ZeroId);
            }
            if let Some(&first) = ids.get(&n.id) {
                return err(
                    Some(n.id),
                    Problem::DuplicateId {
                        first: first + 1,
                        second: i + 1,
                    },
                );
            }
            ids.insert(n.id, i);
            let key = match normalize_address(&n.address) {
                Ok(k) => k,
                Err(why) => {
                    return err(
                        Some(n.id),
                        Problem::BadAddress {
                            address: n.address.clone(),
                            why,
                        },
                    )
                }
            };
            if let Some(&other) = addrs.get(&key) {
                return err(
                    Some(n.id),
                    Problem::DuplicateAddress {
                        address: n.address.clone(),
                        other,
                    },
                );
            }
            addrs.insert(key, n.id);
            if n.cert.as_os_str().is_empty() {
                return err(Some(n.id), Problem::EmptyPath("cert"));
            }
            if n.key.as_os_str().is_empty() {
                return err(Some(n.id), Problem::EmptyPath("key"));
            }
        }
        Ok(())
    }

    /// Votes needed to go on: a majority of the configured nodes, or 1 in
    /// two-node mode (where fencing, not votes, breaks ties).
    /// What the membership layer needs of this file.
    pub fn member_config(&self) -> MemberConfig {
        MemberConfig {
            nodes: self.nodes.iter().map(|n| n.id).collect(),
            timing: Timing {
                heartbeat: self.heartbeat_ms,
                failure_timeout: self.failure_timeout_ms,
                lease: self.lease_ms,
            },
            two_node: self.two_node,
        }
    }

    pub fn quorum(&self) -> usize {
        if self.two_node {
            1
        } else {
            self.nodes.len() / 2 + 1
        }
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node ids in file order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().map(|n| n.id)
    }

    /// The cluster file text for this configuration. Paths under
    /// `base_dir` are written relative to it, others as they are, so a
    /// generated directory can be moved as a whole.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let rel = |p: &Path| -> Result<String, ConfigError> {
            let shown = p.strip_prefix(&self.base_dir).unwrap_or(p);
            shown.to_str().map(str::to_string).ok_or_else(|| {
                ConfigError::new(TEXT_LABEL, None, Problem::NonUtf8Path(p.to_path_buf()))
            })
        };
        let raw = RawFile {
            cluster: RawCluster {
                name: self.name.clone(),
                lvb_len: self.lvb_len,
                heartbeat_ms: self.heartbeat_ms,
                failure_timeout_ms: self.failure_timeout_ms,
                lease_ms: self.lease_ms,
                two_node: self.two_node,
                ca: rel(&self.ca)?,
            },
            node: self
                .nodes
                .iter()
                .map(|n| {
                    Ok(RawNode {
                        id: n.id,
                        address: n.address.clone(),
                        cert: rel(&n.cert)?,
                        key: rel(&n.key)?,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        toml::to_string(&raw)
            .map_err(|e| ConfigError::new(TEXT_LABEL, None, Problem::Syntax(e.to_string())))
    }
}

impl fmt::Display for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} at {}", self.id, self.address)
    }
}

/// A cluster name is one DNS label, because node certificates are named
/// `node-<id>.<cluster>.rdlm`. Lower case only, so that names compare
/// byte for byte.
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks `host:port` and returns the form used to compare addresses: IP
/// literals in their canonical form, host names in lower case.
fn normalize_address(addr: &str) -> Result<String, String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port 0".into());
        }
        return Ok(sa.to_string());
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "no ':port'".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number in 1..=65535"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.contains(':') || host.starts_with('[') {
        return Err("IPv6 addresses are written [addr]:port".into());
    }
    let ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(format!("{host:?} is not a valid host name"));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "alpha"
ca = "ca.pem"

[[node]]
id = 1
address = "127.0.0.1:7001"
cert = "node-1.pem"
key = "node-1.key"

[[node]]
id = 2
address = "127.0.0.1:7002"
cert = "/abs/node-2.pem"
key = "node-2.key"

[[node]]
id = 3
address = "host-c.example:7003"
cert = "node-3.pem"
key = "node-3.key"
"#;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(text, "/etc/rdlm")
    }

    /// Replaces the first occurrence of `from` in the good file.
    fn variant(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
        GOOD.replacen(from, to, 1)
    }

    fn problem(text: &str) -> (Option<NodeId>, Problem, String) {
        match parse(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => {
                let shown = e.to_string();
                (e.node, e.problem, shown)
            }
        }
    }

    #[test]
    fn defaults_and_paths() {
        let c = parse(GOOD).expect("good file");
        assert_eq!(c.name, "alpha");
        assert_eq!(c.lvb_len, 32);
        assert_eq!(
            (c.heartbeat_ms, c.failure_timeout_ms, c.lease_ms),
            (200, 1500, 3000)
        );
        assert!(!c.two_node);
        assert_eq!(c.ca, PathBuf::from("/etc/rdlm/ca.pem"));
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes[0].cert, PathBuf::from("/etc/rdlm/node-1.pem"));
        assert_eq!(c.nodes[1].cert, PathBuf::from("/abs/node-2.pem"));
        assert_eq!(c.nodes[1].key, PathBuf::from("/etc/rdlm/node-2.key"));
        assert_eq!(c.quorum(), 2);
        assert_eq!(
            c.node(3).map(|n| n.address.as_str()),
            Some("host-c.example:7003")
        );
        assert!(c.node(4).is_none());
        assert_eq!(c.node_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn quorum_sizes() {
        let mut c = parse(GOOD).expect("good file");
        c.nodes.truncate(1);
        assert_eq!(c.quorum(), 1);
        let mut c = parse(GOOD).expect("good file");
        c.nodes.truncate(2);
        assert_eq!(c.quorum(), 2, "two nodes without two_node need both");
        c.two_node = true;
        assert_eq!(c.quorum(), 1);
        let mut c = parse(GOOD).expect("good file");
        let extra = c.nodes[0].clone();
        for id in 4..=5 {
            c.nodes.push(NodeConfig {
                id,
                address: format!("127.0.0.1:70{id:02}"),
                ..extra.clone()
            });
        }
        assert_eq!(c.nodes.len(), 5);
        assert_eq!(c.quorum(), 3);
    }

    #[test]
    fn round_trip_through_to_toml() {
        let c = parse(GOOD).expect("good file");
        let text = c.to_toml().expect("serializable");
        assert!(text.contains("cert = \"node-1.pem\""), "{text}");
        assert!(text.contains("cert = \"/abs/node-2.pem\""), "{text}");
        let again = ClusterConfig::parse(&text, "/etc/rdlm").expect("reparse");
        assert_eq!(again, c);
    }

    #[test]
    fn load_resolves_against_the_file_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, GOOD).expect("write");
        let c = ClusterConfig::load(&path).expect("load");
        assert_eq!(c.ca, dir.path().join("ca.pem"));
        assert_eq!(c.base_dir, dir.path());

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, variant("7002", "7001")).expect("write");
        let e = ClusterConfig::load(&bad).expect_err("duplicate address");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: node 2: duplicate address 127.0.0.1:7001 (also node 1)",
                bad.display()
            )
        );

        let e = ClusterConfig::load(dir.path().join("missing.toml")).expect_err("missing");
        assert!(matches!(e.problem, Problem::Io(_)), "{e}");
        assert!(e.to_string().contains("missing.toml: cannot read"), "{e}");
    }

    #[test]
    fn syntax_and_unknown_keys() {
        let (_, p, _) = problem("[cluster\nname=");
        assert!(matches!(p, Problem::Syntax(_)));
        let (_, p, shown) = problem(&variant(
            "name = \"alpha\"",
            "name = \"alpha\"\nheartbeat = 5",
        ));
        assert!(matches!(p, Problem::Syntax(_)), "{shown}");
        assert!(shown.contains("heartbeat"), "{shown}");
        let (_, p, _) = problem(&variant("ca = \"ca.pem\"\n", ""));
        assert!(matches!(p, Problem::Syntax(_)), "ca is required");
        let (_, p, _) = problem(&variant("id = 1", "id = -1"));
        assert!(matches!(p, Problem::Syntax(_)));
        let (_, p, _) = problem(&variant("key = \"node-1.key\"\n", ""));
        assert!(matches!(p, Problem::Syntax(_)), "key is required");
    }

    #[test]
    fn cluster_name_rules() {
        for bad in ["", "Alpha", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            let (_, p, shown) = problem(&variant("\"alpha\"", &format!("{bad:?}")));
            assert!(matches!(p, Problem::Name(_)), "{bad:?}: {shown}");
        }
        for good in ["a", "a-1", "0", &"a".repeat(63)] {
            parse(&variant("\"alpha\"", &format!("{good:?}"))).expect(good);
        }
    }

    #[test]
    fn lvb_len_rules() {
        let with = |n: usize| variant("ca = ", &format!("lvb_len = {n}\nca = "));
        for bad in [0, 4, 12, 1025, 1032, 4096] {
            let (_, p, shown) = problem(&with(bad));
            assert!(
                matches!(p, Problem::LvbLen(v) if v == bad),
                "{bad}: {shown}"
            );
        }
        for good in [8, 32, 64, 1024] {
            assert_eq!(parse(&with(good)).expect("good lvb").lvb_len, good);
        }
    }

    #[test]
    fn timing_rules() {
        let with = |hb: u64, ft: u64, lease: u64| {
            variant(
                "ca = ",
                &format!(
                    "heartbeat_ms = {hb}\nfailure_timeout_ms = {ft}\nlease_ms = {lease}\nca = "
                ),
            )
        };
        let (_, p, _) = problem(&with(5, 100, 200));
        assert!(matches!(
            p,
            Problem::TimingRange {
                field: "heartbeat_ms",
                ..
            }
        ));
        let (_, p, _) = problem(&with(100, 200, MAX_TIMING_MS + 1));
        assert!(matches!(
            p,
            Problem::TimingRange {
                field: "lease_ms",
                ..
            }
        ));
        let (_, p, _) = problem(&with(100, 0, 300));
        assert!(matches!(
            p,
            Problem::TimingRange {
                field: "failure_timeout_ms",
                ..
            }
        ));
        let (_, p, shown) = problem(&with(500, 500, 3000));
        assert!(
            matches!(p, Problem::HeartbeatNotBelowFailure { .. }),
            "{shown}"
        );
        assert!(shown.contains("heartbeat_ms (500)"), "{shown}");
        let (_, p, _) = problem(&with(100, 3000, 3000));
        assert!(matches!(p, Problem::FailureNotBelowLease { .. }));
        let (_, p, shown) = problem(&with(100, 101, 102));
        assert!(
            matches!(
                p,
                Problem::LeaseTooShort {
                    lease: 102,
                    heartbeat: 100
                }
            ),
            "{shown}"
        );
        let c = parse(&with(50, 300, 600)).expect("good timing");
        assert_eq!(
            (c.heartbeat_ms, c.failure_timeout_ms, c.lease_ms),
            (50, 300, 600)
        );
    }

    #[test]
    fn two_node_rules() {
        let (_, p, shown) = problem(&variant("ca = ", "two_node = true\nca = "));
        assert!(matches!(p, Problem::TwoNode(3)), "{shown}");
        let two = variant("ca = ", "two_node = true\nca = ");
        let cut = two.find("[[node]]\nid = 3").expect("third node");
        let c = parse(&two[..cut]).expect("two nodes");
        assert!(c.two_node);
        assert_eq!(c.quorum(), 1);
    }

    #[test]
    fn node_list_rules() {
        let cut = GOOD.find("[[node]]").expect("nodes");
        let (_, p, _) = problem(&GOOD[..cut]);
        assert!(matches!(p, Problem::NoNodes));

        let (node, p, shown) = problem(&variant("id = 2", "id = 0"));
        assert!(matches!(p, Problem::ZeroId) && node == Some(0), "{shown}");

        let (node, p, shown) = problem(&variant("id = 3", "id = 1"));
        assert!(
            matches!(
                p,
                Problem::DuplicateId {
                    first: 1,
                    second: 3
                }
            ) && node == Some(1),
            "{shown}"
        );

        let mut c = parse(GOOD).expect("good");
        let n = c.nodes[0].clone();
        c.nodes = (1..=MAX_NODES as u32 + 1)
            .map(|id| NodeConfig {
                id,
                address: format!("10.0.{}.{}:7000", id / 256, id % 256),
                ..n.clone()
            })
            .collect();
        let e = c.validate().expect_err("too many");
        assert!(matches!(e.problem, Problem::TooManyNodes(257)), "{e}");
    }

    #[test]
    fn address_rules() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:x",
            ":7001",
            "::1:7001",
            "[::1]:0",
            "bad_host:7001",
            "-bad:7001",
            "a..b:7001",
        ] {
            let (node, p, shown) = problem(&variant("127.0.0.1:7002", bad));
            assert!(
                matches!(&p, Problem::BadAddress { address, .. } if address == bad)
                    && node == Some(2),
                "{bad}: {shown}"
            );
        }
        for good in [
            "[::1]:7002",
            "localhost:7002",
            "Node-2.Example:7002",
            "10.1.2.3:1",
        ] {
            parse(&variant("127.0.0.1:7002", good)).expect(good);
        }
    }

    #[test]
    fn duplicate_addresses_name_both_nodes() {
        let (node, p, shown) = problem(&variant("127.0.0.1:7002", "127.0.0.1:7001"));
        assert!(matches!(p, Problem::DuplicateAddress { other: 1, .. }) && node == Some(2));
        assert_eq!(
            shown,
            "cluster file: node 2: duplicate address 127.0.0.1:7001 (also node 1)"
        );
        // The same host spelt differently is still the same address.
        let (_, p, shown) = problem(
            &variant("host-c.example:7003", "HOST-C.example:7003")
                .replace("127.0.0.1:7002", "host-c.example:7003"),
        );
        assert!(
            matches!(p, Problem::DuplicateAddress { other: 2, .. }),
            "{shown}"
        );
        let (_, p, shown) = problem(
            &variant("127.0.0.1:7001", "[::1]:7001").replace("127.0.0.1:7002", "[0:0::1]:7001"),
        );
        assert!(
            matches!(p, Problem::DuplicateAddress { other: 1, .. }),
            "{shown}"
        );
    }

    #[test]
    fn empty_paths() {
        let (_, p, _) = problem(&variant("ca = \"ca.pem\"", "ca = \"\""));
        assert!(matches!(p, Problem::EmptyCa));
        let (node, p, shown) = problem(&variant("cert = \"node-3.pem\"", "cert = \"\""));
        assert!(
            matches!(p, Problem::EmptyPath("cert")) && node == Some(3),
            "{shown}"
        );
        let (node, p, _) = problem(&variant("key = \"node-1.key\"", "key = \"\""));
        assert!(matches!(p, Problem::EmptyPath("key")) && node == Some(1));
    }

    #[test]
    fn to_toml_refuses_non_utf8_paths() {
        use std::os::unix::ffi::OsStrExt;
        let mut c = parse(GOOD).expect("good");
        c.nodes[0].key = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/\xff.key"));
        let e = c.to_toml().expect_err("non-UTF-8");
        assert!(matches!(e.problem, Problem::NonUtf8Path(_)), "{e}");
    }
}
