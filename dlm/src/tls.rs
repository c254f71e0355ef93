//! Who a node is, in certificates: the cluster CA, node certificates, and
//! the rustls configurations for mutual TLS between nodes.
//!
//! Every node certificate is signed by the cluster's CA and names exactly
//! one node with the DNS subject alternative name
//! `node-<id>.<cluster>.rdlm`. A server checks a client's certificate
//! against the cluster CA only (client certificates are required) and then
//! reads the node id out of it with [`node_id_from_cert`]; a client checks
//! the server's certificate against the CA *and* against the name of the
//! node it meant to dial. So a connection that claims to come from node 3
//! can be held to that claim. Only TLS 1.3 is offered (QUIC needs it), with
//! ALPN [`ALPN`], and always the `ring` crypto provider, passed explicitly
//! (nothing here depends on a process-wide default provider).
//!
//! This module owns certificate generation and parsing and the TLS
//! configurations. It reads certificate and key files (paths come from the
//! cluster file) but writes none — the `rdlm` command does — and it knows
//! nothing of QUIC, connections or messages.

use crate::config::{valid_cluster_name, ClusterConfig};
use crate::resource::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The application protocol both sides must agree on.
pub const ALPN: &[u8] = b"rdlm/1";
/// Subject common name prefix of a cluster CA; the cluster name follows.
const CA_CN_PREFIX: &str = "rdlm CA ";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cluster name {0:?} is not 1..=63 of a-z, 0-9 and '-' (not first or last)")]
    ClusterName(String),
    #[error("node id 0 is reserved; node ids start at 1")]
    ZeroNode,
    #[error("{what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no usable PEM: {detail}")]
    Pem { what: String, detail: String },
    #[error("{what}: not a valid X.509 certificate: {detail}")]
    Parse { what: String, detail: String },
    #[error("{what} is not a CA certificate")]
    NotCa { what: String },
    #[error("the CA key does not belong to the CA certificate {what}")]
    KeyMismatch { what: String },
    #[error("the CA certificate {what} is for cluster {found:?}, not {expected:?}")]
    CaCluster {
        what: String,
        found: String,
        expected: String,
    },
    #[error("{what} names no node of cluster {cluster:?} (expected a DNS name node-<id>.{cluster}.rdlm)")]
    NoNodeName { what: String, cluster: String },
    #[error("{what} names several nodes of cluster {cluster:?}: {ids:?}")]
    SeveralNodes {
        what: String,
        cluster: String,
        ids: Vec<NodeId>,
    },
    #[error("{what} is node {found}'s certificate, not node {expected}'s")]
    WrongNode {
        what: String,
        expected: NodeId,
        found: NodeId,
    },
    #[error("node {0} is not in the cluster file")]
    UnknownNode(NodeId),
    #[error("{what} is not signed by the cluster CA: {source}")]
    Untrusted {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider every configuration here is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The DNS name node `node` of `cluster` has in its certificate, and the
/// TLS server name a client dials it by.
pub fn node_name(cluster: &str, node: NodeId) -> String {
    format!("node-{node}.{cluster}.rdlm")
}

fn check_cluster(cluster: &str) -> Result<(), TlsError> {
    if valid_cluster_name(cluster) {
        Ok(())
    } else {
        Err(TlsError::ClusterName(cluster.to_string()))
    }
}

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Generate { what, source }
}

/// A new cluster CA: a self-signed certificate that may sign node
/// certificates only (path length 0), and its key. Returns
/// `(cert_pem, key_pem)`.
pub fn generate_ca(cluster: &str) -> Result<(String, String), TlsError> {
    check_cluster(cluster)?;
    let key = KeyPair::generate().map_err(gen_err("generating the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "rdlm");
    dn.push(DnType::CommonName, format!("{CA_CN_PREFIX}{cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(gen_err("signing the CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new certificate and key for node `node` of `cluster`, signed by the CA
/// (`ca_cert_pem`, `ca_key_pem`). Refuses a CA key that does not belong to
/// the CA certificate, and a CA made for another cluster. Returns
/// `(cert_pem, key_pem)`.
pub fn generate_node_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    node: NodeId,
    cluster: &str,
) -> Result<(String, String), TlsError> {
    check_cluster(cluster)?;
    if node == 0 {
        return Err(TlsError::ZeroNode);
    }
    let what = "the CA certificate";
    let ca_der =
        CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: what.into(),
            detail: e.to_string(),
        })?;
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(gen_err("reading the CA key"))?;
    check_ca(&ca_der, &ca_key, cluster, what)?;
    let issuer =
        Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(gen_err("reading the CA certificate"))?;

    let key = KeyPair::generate().map_err(gen_err("generating the node key"))?;
    let mut params = CertificateParams::new(vec![node_name(cluster, node)])
        .map_err(gen_err("naming the node certificate"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "rdlm");
    dn.push(DnType::CommonName, format!("node {node} of {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a server (it is dialled) and a client (it dials).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err(format!("signing node {node}'s certificate")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Checks that `ca` is a CA certificate for `cluster` whose public key is
/// `key`'s: signing with the wrong key would give certificates nobody
/// accepts, and that is better said now than at the first connection.
fn check_ca(
    ca: &CertificateDer<'_>,
    key: &KeyPair,
    cluster: &str,
    what: &str,
) -> Result<(), TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(ca).map_err(|e| TlsError::Parse {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !x509.is_ca() {
        return Err(TlsError::NotCa { what: what.into() });
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::KeyMismatch { what: what.into() });
    }
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("");
    match cn.strip_prefix(CA_CN_PREFIX) {
        Some(found) if found != cluster => Err(TlsError::CaCluster {
            what: what.into(),
            found: found.to_string(),
            expected: cluster.to_string(),
        }),
        // A CA made elsewhere (not by `generate_ca`) carries no cluster
        // name; node names still carry it, so nothing is lost.
        _ => Ok(()),
    }
}

/// The node id a certificate names for `cluster`: its one DNS name of the
/// form `node-<id>.<cluster>.rdlm`. The certificate must already have been
/// verified against the cluster CA (rustls does that during the handshake);
/// this only reads the name. A certificate naming no node of this cluster,
/// or several, is refused.
pub fn node_id_from_cert(cert: &CertificateDer<'_>, cluster: &str) -> Result<NodeId, TlsError> {
    let what = "peer certificate";
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Parse {
        what: what.into(),
        detail: e.to_string(),
    })?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| TlsError::Parse {
            what: what.into(),
            detail: e.to_string(),
        })?;
    let suffix = format!(".{cluster}.rdlm");
    let mut ids: Vec<NodeId> = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            if let Some(id) = parse_node_name(dns, &suffix) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(TlsError::NoNodeName {
            what: what.into(),
            cluster: cluster.into(),
        }),
        _ => Err(TlsError::SeveralNodes {
            what: what.into(),
            cluster: cluster.into(),
            ids,
        }),
    }
}

/// `node-<id><suffix>` with `id` in canonical decimal (no sign, no leading
/// zero, not 0), so that one id has exactly one name.
fn parse_node_name(dns: &str, suffix: &str) -> Option<NodeId> {
    let digits = dns.strip_prefix("node-")?.strip_suffix(suffix)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One node's TLS material: the cluster CA, its certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    pub cluster: String,
    pub node: NodeId,
    pub ca: CertificateDer<'static>,
    /// The node's certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads node `node`'s certificate and key and the CA named by the
    /// cluster file, and checks that they fit together (see
    /// [`Identity::from_pem`]).
    pub fn load(config: &ClusterConfig, node: NodeId) -> Result<Identity, TlsError> {
        let entry = config.node(node).ok_or(TlsError::UnknownNode(node))?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        warn_if_key_readable(&entry.key);
        Identity::from_pem(
            &config.name,
            node,
            &read(&config.ca)?,
            &read(&entry.cert)?,
            &read(&entry.key)?,
        )
        .map_err(|e| match e {
            // Name the files, which is what the operator can act on.
            TlsError::Pem { what, detail } => TlsError::Pem {
                what: format!("{what} ({}, {})", entry.cert.display(), entry.key.display()),
                detail,
            },
            e => e,
        })
    }

    /// Builds an identity from PEM text and checks it: the certificate must
    /// name node `node` of `cluster` and be signed by the CA, so a node
    /// started with another node's files, or with a foreign CA, fails here
    /// rather than at every connection.
    pub fn from_pem(
        cluster: &str,
        node: NodeId,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Identity, TlsError> {
        check_cluster(cluster)?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the CA certificate".into(),
            detail: e.to_string(),
        })?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: format!("node {node}'s certificate"),
                detail: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Pem {
                what: format!("node {node}'s certificate"),
                detail: "no CERTIFICATE section".into(),
            });
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: format!("node {node}'s key"),
            detail: e.to_string(),
        })?;
        let found = node_id_from_cert(leaf, cluster).map_err(|e| match e {
            TlsError::NoNodeName { cluster, .. } => TlsError::NoNodeName {
                what: format!("the certificate given for node {node}"),
                cluster,
            },
            e => e,
        })?;
        if found != node {
            return Err(TlsError::WrongNode {
                what: format!("the certificate given for node {node}"),
                expected: node,
                found,
            });
        }
        let id = Identity {
            cluster: cluster.to_string(),
            node,
            ca,
            chain,
            key,
        };
        // Verify our own chain as a peer would.
        let verifier = id.client_verifier()?;
        verifier
            .verify_client_cert(&id.chain[0], &id.chain[1..], UnixTime::now())
            .map_err(|source| TlsError::Untrusted {
                what: format!("node {node}'s certificate"),
                source,
            })?;
        Ok(id)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|source| TlsError::Rustls {
                what: "adding the cluster CA as the only trust anchor".into(),
                source,
            })?;
        Ok(Arc::new(roots))
    }

    fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        Ok(
            WebPkiClientVerifier::builder_with_provider(self.roots()?, crypto_provider())
                .build()?,
        )
    }

    /// The server side: TLS 1.3, ALPN `rdlm/1`, this node's certificate,
    /// and client certificates required and verified against the cluster
    /// CA only.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let what = |s: &str| format!("node {}'s TLS server configuration: {s}", self.node);
        let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: what("protocol versions"),
                source,
            })?
            .with_client_cert_verifier(self.client_verifier()?)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: what("certificate and key"),
                source,
            })?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// The client side: TLS 1.3, ALPN `rdlm/1`, this node's certificate
    /// for client authentication, and servers verified against the cluster
    /// CA and the name of the node dialled (given per connection as the
    /// server name, see [`node_name`]).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let what = |s: &str| format!("node {}'s TLS client configuration: {s}", self.node);
        let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: what("protocol versions"),
                source,
            })?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: what("certificate and key"),
                source,
            })?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// Verifies `cert` as the server certificate of node `node` (as a
    /// client dialling it would). Used by tests; meant for an `rdlm check`.
    pub fn verify_server_cert(
        &self,
        cert: &CertificateDer<'_>,
        node: NodeId,
    ) -> Result<(), TlsError> {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots()?,
            crypto_provider(),
        )
        .build()
        .map_err(TlsError::Verifier)?;
        let name =
            ServerName::try_from(node_name(&self.cluster, node)).map_err(|e| TlsError::Rustls {
                what: "server name".into(),
                source: rustls::Error::General(e.to_string()),
            })?;
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|source| TlsError::Untrusted {
                what: format!("certificate presented as node {node}'s"),
                source,
            })
    }
}

/// A key file others can read is worth a warning, not a refusal: the
/// operator may have reasons (a shared secrets mount), but usually not.
fn warn_if_key_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    key = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "private key is readable by group or others"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        cert: String,
        key: String,
    }

    fn ca(cluster: &str) -> Ca {
        let (cert, key) = generate_ca(cluster).expect("CA");
        Ca { cert, key }
    }

    fn node(ca: &Ca, id: NodeId, cluster: &str) -> (String, String) {
        generate_node_cert(&ca.cert, &ca.key, id, cluster).expect("node cert")
    }

    fn leaf(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }

    #[test]
    fn node_certificates_name_their_node() {
        let ca = ca("alpha");
        let (cert, key) = node(&ca, 3, "alpha");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        assert_eq!(node_id_from_cert(&leaf(&cert), "alpha").expect("id"), 3);
        // Another cluster's name does not match.
        let e = node_id_from_cert(&leaf(&cert), "beta").expect_err("other cluster");
        assert!(matches!(e, TlsError::NoNodeName { .. }), "{e}");
        let id = Identity::from_pem("alpha", 3, &ca.cert, &cert, &key).expect("identity");
        assert_eq!(id.node, 3);
        id.server_config().expect("server config");
        id.client_config().expect("client config");
        id.verify_server_cert(&leaf(&cert), 3)
            .expect("valid as node 3");
        let e = id
            .verify_server_cert(&leaf(&cert), 2)
            .expect_err("not node 2");
        assert!(matches!(e, TlsError::Untrusted { .. }), "{e}");
    }

    #[test]
    fn node_name_parsing_is_strict() {
        let s = ".alpha.rdlm";
        assert_eq!(parse_node_name("node-12.alpha.rdlm", s), Some(12));
        for bad in [
            "node-0.alpha.rdlm",
            "node-012.alpha.rdlm",
            "node-+1.alpha.rdlm",
            "node-.alpha.rdlm",
            "node-1x.alpha.rdlm",
            "node-1.alpha.rdlm.evil",
            "node-1.xalpha.rdlm",
            "node-99999999999.alpha.rdlm",
            "nod-1.alpha.rdlm",
        ] {
            assert_eq!(parse_node_name(bad, s), None, "{bad}");
        }
    }

    #[test]
    fn several_or_no_node_names_are_refused() {
        let ca = ca("alpha");
        let ca_der = leaf(&ca.cert);
        let ca_key = KeyPair::from_pem(&ca.key).expect("key");
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).expect("issuer");
        let sign = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let params = CertificateParams::new(names).expect("params");
            params.signed_by(&key, &issuer).expect("sign").der().clone()
        };
        let two = sign(vec![node_name("alpha", 1), node_name("alpha", 2)]);
        let e = node_id_from_cert(&two, "alpha").expect_err("two nodes");
        assert!(
            matches!(e, TlsError::SeveralNodes { ref ids, .. } if ids == &[1, 2]),
            "{e}"
        );
        // The same node twice is one node.
        let same = sign(vec![node_name("alpha", 4), node_name("alpha", 4)]);
        assert_eq!(node_id_from_cert(&same, "alpha").expect("one node"), 4);
        let none = sign(vec!["example.com".into()]);
        assert!(matches!(
            node_id_from_cert(&none, "alpha"),
            Err(TlsError::NoNodeName { .. })
        ));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        assert!(matches!(
            node_id_from_cert(&garbage, "alpha"),
            Err(TlsError::Parse { .. })
        ));
    }

    #[test]
    fn identity_checks() {
        let ca1 = ca("alpha");
        let ca2 = ca("alpha");
        let (c2, k2) = node(&ca1, 2, "alpha");
        // Another node's files.
        let e = Identity::from_pem("alpha", 3, &ca1.cert, &c2, &k2).expect_err("node 2's cert");
        assert!(
            matches!(
                e,
                TlsError::WrongNode {
                    expected: 3,
                    found: 2,
                    ..
                }
            ),
            "{e}"
        );
        // Signed by another CA.
        let (c2b, k2b) = node(&ca2, 2, "alpha");
        let e = Identity::from_pem("alpha", 2, &ca1.cert, &c2b, &k2b).expect_err("foreign CA");
        assert!(matches!(e, TlsError::Untrusted { .. }), "{e}");
        // Garbage.
        let e = Identity::from_pem("alpha", 2, "nonsense", &c2, &k2).expect_err("no CA");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        let e = Identity::from_pem("alpha", 2, &ca1.cert, "", &k2).expect_err("no cert");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        let e = Identity::from_pem("alpha", 2, &ca1.cert, &c2, &c2).expect_err("no key");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        let e = Identity::from_pem("Alpha", 2, &ca1.cert, &c2, &k2).expect_err("bad cluster");
        assert!(matches!(e, TlsError::ClusterName(_)), "{e}");
    }

    #[test]
    fn generation_checks_the_ca() {
        let a = ca("alpha");
        let b = ca("alpha");
        let e = generate_node_cert(&a.cert, &b.key, 1, "alpha").expect_err("wrong key");
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        let e = generate_node_cert(&a.cert, &a.key, 1, "beta").expect_err("wrong cluster");
        assert!(
            matches!(e, TlsError::CaCluster { ref found, .. } if found == "alpha"),
            "{e}"
        );
        let (leaf_pem, _) = node(&a, 1, "alpha");
        let e = generate_node_cert(&leaf_pem, &a.key, 2, "alpha").expect_err("not a CA");
        assert!(matches!(e, TlsError::NotCa { .. }), "{e}");
        assert!(matches!(
            generate_node_cert(&a.cert, &a.key, 0, "alpha"),
            Err(TlsError::ZeroNode)
        ));
        assert!(matches!(
            generate_node_cert(&a.cert, "junk", 1, "alpha"),
            Err(TlsError::Generate { .. })
        ));
        assert!(matches!(generate_ca("a.b"), Err(TlsError::ClusterName(_))));
    }
}
