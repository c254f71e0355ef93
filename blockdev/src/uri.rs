//! Device addresses: a local path, `nbd://host[:port][/export]`, or
//! `nbd+unix:///export?socket=PATH` (the forms of the NBD URI standard that
//! rdlmfs supports; TLS forms are refused with a clear error).

use crate::error::{Error, Result};
use std::path::PathBuf;

/// The default NBD TCP port.
pub const NBD_DEFAULT_PORT: u16 = 10809;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceUri {
    File(PathBuf),
    NbdTcp {
        host: String,
        port: u16,
        export: String,
    },
    NbdUnix {
        socket: PathBuf,
        export: String,
    },
}

impl DeviceUri {
    pub fn parse(spec: &str) -> Result<DeviceUri> {
        let bad = |detail: &str| Error::InvalidUri {
            spec: spec.to_string(),
            detail: detail.to_string(),
        };
        if let Some(rest) = spec.strip_prefix("nbd://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return Err(bad("missing host (expected nbd://host[:port][/export])"));
            }
            if path.contains('?') {
                return Err(bad("query parameters are only supported with nbd+unix://"));
            }
            let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad port"))?;
            Ok(DeviceUri::NbdTcp {
                host,
                port,
                export: percent_decode(path).ok_or_else(|| bad("bad percent-encoding"))?,
            })
        } else if let Some(rest) = spec.strip_prefix("nbd+unix://") {
            let rest = rest
                .strip_prefix('/')
                .ok_or_else(|| bad("expected nbd+unix:///export?socket=PATH (no host part)"))?;
            let (path, query) = rest
                .split_once('?')
                .ok_or_else(|| bad("missing ?socket=PATH"))?;
            let mut socket = None;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("socket", v)) if !v.is_empty() => {
                        socket = Some(percent_decode(v).ok_or_else(|| bad("bad percent-encoding"))?)
                    }
                    _ => return Err(bad(&format!("unknown or empty query parameter {pair:?}"))),
                }
            }
            let socket = socket.ok_or_else(|| bad("missing ?socket=PATH"))?;
            Ok(DeviceUri::NbdUnix {
                socket: PathBuf::from(socket),
                export: percent_decode(path).ok_or_else(|| bad("bad percent-encoding"))?,
            })
        } else if spec.starts_with("nbds") || spec.starts_with("nbd+") {
            Err(bad(
                "TLS and other NBD transports are not supported; use nbd:// or nbd+unix://",
            ))
        } else if spec.contains("://") {
            Err(bad("unknown scheme"))
        } else if spec.is_empty() {
            Err(bad("empty device path"))
        } else {
            Ok(DeviceUri::File(PathBuf::from(spec)))
        }
    }

    /// The export name to ask an NBD server for (empty for files).
    pub fn export(&self) -> &str {
        match self {
            DeviceUri::File(_) => "",
            DeviceUri::NbdTcp { export, .. } | DeviceUri::NbdUnix { export, .. } => export,
        }
    }
}

impl std::fmt::Display for DeviceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceUri::File(p) => write!(f, "{}", p.display()),
            DeviceUri::NbdTcp { host, port, export } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{export}")
            }
            DeviceUri::NbdTcp { host, port, export } => write!(f, "nbd://{host}:{port}/{export}"),
            DeviceUri::NbdUnix { socket, export } => {
                write!(f, "nbd+unix:///{export}?socket={}", socket.display())
            }
        }
    }
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => NBD_DEFAULT_PORT,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_string(), NBD_DEFAULT_PORT)),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_forms() {
        assert_eq!(
            DeviceUri::parse("nbd://127.0.0.1").unwrap(),
            DeviceUri::NbdTcp {
                host: "127.0.0.1".into(),
                port: 10809,
                export: "".into()
            }
        );
        assert_eq!(
            DeviceUri::parse("nbd://localhost:1234/disk%20a").unwrap(),
            DeviceUri::NbdTcp {
                host: "localhost".into(),
                port: 1234,
                export: "disk a".into()
            }
        );
        assert_eq!(
            DeviceUri::parse("nbd://[::1]:99/x").unwrap(),
            DeviceUri::NbdTcp {
                host: "::1".into(),
                port: 99,
                export: "x".into()
            }
        );
        assert_eq!(
            DeviceUri::parse("nbd+unix:///e?socket=/run/s.sock").unwrap(),
            DeviceUri::NbdUnix {
                socket: "/run/s.sock".into(),
                export: "e".into()
            }
        );
        assert_eq!(
            DeviceUri::parse("/dev/sdb").unwrap(),
            DeviceUri::File("/dev/sdb".into())
        );
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "nbd://",
            "nbd://host:notaport/x",
            "nbd://host:99999",
            "nbd+unix:///e",
            "nbd+unix://host/e?socket=/s",
            "nbd+unix:///e?sock=/s",
            "nbds://host/x",
            "http://x",
            "",
            "nbd://h/a%zz",
        ] {
            assert!(DeviceUri::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
